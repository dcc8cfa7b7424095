//! API write throughput and latency on each store backend, beside raw etcd.
//!
//! `cargo bench -p wharf-control --bench api`
//!
//! One load generator (tokio tasks, each awaiting its write before the next) drives:
//! - creates of ~1 KiB ConfigMaps through a control plane's HTTPS API (a `kube::Client`
//!   from the admin kubeconfig, as any client connects), the control plane on the embedded
//!   fjall store, on a one-member etcd and on a three-member etcd (Debian's `etcd`, on
//!   loopback, data dirs on the same disk);
//! - raw etcd puts of the same JSON bytes through `etcd-client` (one gRPC channel, as the
//!   API server holds), against the same etcd, in the same run, before its control plane
//!   starts.
//!
//! At 1 client (sequential: every write pays a whole commit) and at 64 concurrent clients.
//! Prints a markdown table (the "API writes by store backend" section of BENCHMARKS.md).
//!
//! `rbac`: what authorization costs. On fjall, with 1,000 RoleBindings in 100 namespaces,
//! reads and creates at 64 clients by the admin (whose `system:masters` group the
//! authorizer lets through at once: RBAC off, in effect) and by a user RBAC authorizes
//! through a RoleBinding to `edit` (RBAC on: the Node authorizer, then every binding that
//! could apply is evaluated).
//!
//! `failover` (not in the default set: it takes about 20 s a run): two members on one etcd
//! with the default election timings; the one holding the scheduler's and the controller
//! manager's Leases stops without releasing them (its electors and loops aborted, as a
//! SIGKILL stops them) and the time until the other holds both is measured
//! (`WHARF_BENCH_FAILOVERS` runs, default 3).
//!
//! Sizes: `WHARF_BENCH_SEQ` (writes at 1 client, default 1000), `WHARF_BENCH_CONC` (writes
//! at 64 clients, default 10000), `WHARF_BENCH_BACKENDS` (default `fjall,etcd1,etcd3,rbac`).

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;
use std::error::Error;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wharf_control::store::EtcdConfig;
use wharf_control::store::local_etcd::LocalEtcd;
use wharf_control::{ControlConfig, StoreBackend, start};

/// The allocator of the `wharf` binary, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn Error + Send + Sync>;

const CONCURRENT: usize = 64;
/// Bound on one scenario: a stuck backend ends the run with an error, not a hang.
const DEADLINE: Duration = Duration::from_secs(600);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A ConfigMap whose JSON is about 1 KiB.
fn config_map(name: &str) -> ConfigMap {
    let mut data = BTreeMap::new();
    for k in 0..8 {
        data.insert(format!("key-{k}"), "v".repeat(100));
    }
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("app".to_owned(), "bench".to_owned())].into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

struct Stats {
    writes: usize,
    wall: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// Runs `total` writes, `clients` at a time, each timed from call to acknowledgement.
async fn drive<F, Fut>(clients: usize, total: usize, write: F) -> Result<Stats, BoxError>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let started = Instant::now();
    let mut latencies: Vec<Duration> = tokio::time::timeout(
        DEADLINE,
        futures::stream::iter(0..total)
            .map(|i| {
                let op = write(i);
                async move {
                    let t = Instant::now();
                    op.await.map(|()| t.elapsed())
                }
            })
            .buffer_unordered(clients)
            .collect::<Vec<_>>(),
    )
    .await?
    .into_iter()
    .collect::<Result<_, _>>()?;
    let wall = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(Stats {
        writes: total,
        wall,
        p50: at(0.50),
        p99: at(0.99),
        max: latencies.last().copied().unwrap_or_default(),
    })
}

struct Row {
    backend: &'static str,
    path: &'static str,
    clients: usize,
    stats: Stats,
}

fn print_row(r: &Row) {
    let s = &r.stats;
    println!(
        "| {} | {} | {} | {} | {:.2} s | **{:.0}** | {:.2} ms | {:.2} ms | {:.2} ms |",
        r.backend,
        r.path,
        r.clients,
        s.writes,
        s.wall.as_secs_f64(),
        s.writes as f64 / s.wall.as_secs_f64(),
        s.p50.as_secs_f64() * 1e3,
        s.p99.as_secs_f64() * 1e3,
        s.max.as_secs_f64() * 1e3,
    );
}

/// Raw etcd puts of the ConfigMap's JSON bytes at 1 and 64 clients.
async fn raw_etcd(
    backend: &'static str,
    endpoints: &[String],
    seq: usize,
    conc: usize,
) -> Result<Vec<Row>, BoxError> {
    let client = etcd_client::Client::connect(endpoints, None).await?;
    let mut rows = Vec::new();
    for (clients, total) in [(1, seq), (CONCURRENT, conc)] {
        let stats = drive(clients, total, |i| {
            let mut kv = client.kv_client();
            let value = serde_json::to_vec(&config_map(&format!("raw-{clients}-{i}")));
            async move {
                kv.put(format!("/bench/raw-{clients}/{i}"), value?, None)
                    .await?;
                Ok(())
            }
        })
        .await?;
        let row = Row {
            backend,
            path: "raw etcd put",
            clients,
            stats,
        };
        print_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// ConfigMap creates through a control plane's HTTPS API at 1 and 64 clients.
async fn api_creates(
    backend_name: &'static str,
    backend: StoreBackend,
    seq: usize,
    conc: usize,
) -> Result<Vec<Row>, BoxError> {
    let base = env!("CARGO_TARGET_TMPDIR");
    std::fs::create_dir_all(base)?;
    let dir = tempfile::tempdir_in(base)?;
    let mut config = ControlConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse()?;
    config.backend = backend;
    let shutdown = CancellationToken::new();
    let plane = start(config, shutdown.clone()).await?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&plane.kubeconfig)?;
    let client_config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = kube::Client::try_from(client_config)?;
    let api: Arc<Api<ConfigMap>> = Arc::new(Api::namespaced(client, "default"));
    let mut rows = Vec::new();
    for (clients, total) in [(1, seq), (CONCURRENT, conc)] {
        let stats = drive(clients, total, |i| {
            let api = api.clone();
            let cm = config_map(&format!("bench-{clients}-{i}"));
            async move {
                api.create(&PostParams::default(), &cm).await?;
                Ok(())
            }
        })
        .await?;
        let row = Row {
            backend: backend_name,
            path: "API create (HTTPS)",
            clients,
            stats,
        };
        print_row(&row);
        rows.push(row);
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), plane.wait()).await??;
    Ok(rows)
}

/// Reads and creates by the admin and by an RBAC-authorized user, 1,000 RoleBindings in
/// place.
async fn rbac(conc: usize) -> Result<(), BoxError> {
    let base = env!("CARGO_TARGET_TMPDIR");
    std::fs::create_dir_all(base)?;
    let dir = tempfile::tempdir_in(base)?;
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "bench-user-token,bench-user,1001\n")?;
    let mut config = ControlConfig::new(dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse()?;
    config.token_auth_file = Some(tokens);
    let shutdown = CancellationToken::new();
    let plane = start(config, shutdown.clone()).await?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&plane.kubeconfig)?;
    let admin_config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let admin = kube::Client::try_from(admin_config.clone())?;
    // 1,000 RoleBindings: ten per namespace in 100 namespaces, to other users.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    for n in 0..100 {
        let ns =
            serde_json::from_value(serde_json::json!({"metadata": {"name": format!("team-{n}")}}))?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }
    let bindings: Vec<Result<(), BoxError>> = futures::stream::iter(0..1000)
        .map(|i| {
            let admin = admin.clone();
            async move {
                let ns = format!("team-{}", i % 100);
                let rb: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(admin, &ns);
                let binding = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("view-{i}")},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                    "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": format!("user-{i}")}]}))?;
                rb.create(&PostParams::default(), &binding).await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    bindings.into_iter().collect::<Result<Vec<()>, _>>()?;
    let rb: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(admin.clone(), "default");
    let binding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bench-user-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bench-user"}]}))?;
    rb.create(&PostParams::default(), &binding).await?;
    let mut user_config = admin_config;
    user_config.auth_info.token = Some("bench-user-token".to_owned().into());
    let user = kube::Client::try_from(user_config)?;
    let seed: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    seed.create(&PostParams::default(), &config_map("read-me"))
        .await?;
    println!(
        "\n| who (1,000 RoleBindings) | request | clients | requests | wall | requests/s | p50 | p99 | max |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (who, client) in [
        ("admin (system:masters)", &admin),
        ("user bound to edit (RBAC)", &user),
    ] {
        let api: Arc<Api<ConfigMap>> = Arc::new(Api::namespaced(client.clone(), "default"));
        let reads = drive(CONCURRENT, conc, |_| {
            let api = api.clone();
            async move {
                api.get("read-me").await?;
                Ok(())
            }
        })
        .await?;
        let prefix = if who.starts_with("admin") { "a" } else { "u" };
        let creates = drive(CONCURRENT, conc, |i| {
            let api = api.clone();
            let cm = config_map(&format!("{prefix}-{i}"));
            async move {
                api.create(&PostParams::default(), &cm).await?;
                Ok(())
            }
        })
        .await?;
        for (request, s) in [("get configmap", reads), ("create configmap", creates)] {
            println!(
                "| {who} | {request} | {CONCURRENT} | {} | {:.2} s | **{:.0}** | {:.2} ms | {:.2} ms | {:.2} ms |",
                s.writes,
                s.wall.as_secs_f64(),
                s.writes as f64 / s.wall.as_secs_f64(),
                s.p50.as_secs_f64() * 1e3,
                s.p99.as_secs_f64() * 1e3,
                s.max.as_secs_f64() * 1e3,
            );
        }
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), plane.wait()).await??;
    Ok(())
}

/// Who holds the scheduler's and the controller manager's Leases, through `client`.
async fn holders(client: &kube::Client) -> Result<Vec<Option<String>>, BoxError> {
    use wharf_control::leaderelection::{CONTROLLER_MANAGER_LEASE, SCHEDULER_LEASE};
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-system");
    let mut out = Vec::new();
    for name in [SCHEDULER_LEASE, CONTROLLER_MANAGER_LEASE] {
        let lease = leases.get_opt(name).await?;
        out.push(lease.and_then(|l| l.spec?.holder_identity));
    }
    Ok(out)
}

/// Polls until both Leases are held by `identity`; the time it took.
async fn until_held(
    client: &kube::Client,
    identity: &str,
    within: Duration,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    loop {
        if holders(client)
            .await?
            .iter()
            .all(|h| h.as_deref() == Some(identity))
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(format!("{identity} did not take both Leases within {within:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lease failover: two control plane members on one etcd with the default election
/// timings; the member holding both Leases stops without releasing them (its scheduler,
/// controller manager and electors are aborted, as a process killed with SIGKILL stops
/// them), and the time until the other member holds both is measured.
async fn failover(runs: usize) -> Result<(), BoxError> {
    let etcd = tokio::task::spawn_blocking(LocalEtcd::start).await??;
    let base = env!("CARGO_TARGET_TMPDIR");
    std::fs::create_dir_all(base)?;
    println!(
        "\n| run | lease duration / renew deadline / retry period | kill -> other member holds both Leases |\n\
         |---:|---|---:|"
    );
    let defaults = wharf_control::leaderelection::ElectionConfig::default();
    let mut times = Vec::new();
    for run in 1..=runs {
        let member = |name: &str| -> Result<(ControlConfig, tempfile::TempDir), BoxError> {
            let dir = tempfile::tempdir_in(base)?;
            let mut config = ControlConfig::new(dir.path());
            config.listen = "127.0.0.1:0".parse()?;
            let mut etcd_config = EtcdConfig::new(vec![etcd.client_url.clone()]);
            etcd_config.prefix = format!("/failover-{run}");
            config.backend = StoreBackend::Etcd(etcd_config);
            config.election.identity = format!("{name}-{run}");
            Ok((config, dir))
        };
        let (a_config, a_dir) = member("a")?;
        let (b_config, b_dir) = member("b")?;
        let (a_shutdown, b_shutdown) = (CancellationToken::new(), CancellationToken::new());
        let a = start(a_config, a_shutdown.clone()).await?;
        until_held(&a.client(), &format!("a-{run}"), Duration::from_secs(60)).await?;
        // B shares A's CA and keys, as members of one cluster do.
        std::fs::create_dir_all(b_dir.path().join("pki"))?;
        for file in [
            "pki/ca.crt",
            "pki/ca.key",
            "pki/sa.key",
            "pki/encryption-keys.json",
            "admin.token",
        ] {
            std::fs::copy(a_dir.path().join(file), b_dir.path().join(file))?;
        }
        let b = start(b_config, b_shutdown.clone()).await?;
        let b_client = b.client();
        // B is up and trying; A stops without a word.
        tokio::time::sleep(defaults.retry_period).await;
        drop(a);
        let took = until_held(&b_client, &format!("b-{run}"), Duration::from_secs(120)).await?;
        println!(
            "| {run} | {:?} / {:?} / {:?} | {:.2} s |",
            defaults.lease_duration,
            defaults.renew_deadline,
            defaults.retry_period,
            took.as_secs_f64()
        );
        times.push(took);
        a_shutdown.cancel();
        b_shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), b.wait()).await??;
    }
    times.sort();
    if let (Some(min), Some(max)) = (times.first(), times.last()) {
        println!(
            "\nfailover over {runs} runs: {:.2} s to {:.2} s",
            min.as_secs_f64(),
            max.as_secs_f64()
        );
    }
    Ok(())
}

fn etcd_backend(members: &[LocalEtcd]) -> StoreBackend {
    StoreBackend::Etcd(EtcdConfig::new(
        members.iter().map(|m| m.client_url.clone()).collect(),
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seq = env_usize("WHARF_BENCH_SEQ", 1000);
    let conc = env_usize("WHARF_BENCH_CONC", 10000);
    let backends = std::env::var("WHARF_BENCH_BACKENDS")
        .unwrap_or_else(|_| "fjall,etcd1,etcd3,rbac".to_owned());
    println!(
        "| backend | path | clients | writes | wall | writes/s | p50 | p99 | max |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for backend in backends.split(',').map(str::trim) {
        match backend {
            "fjall" => {
                api_creates("fjall", StoreBackend::Fjall, seq, conc).await?;
            }
            "etcd1" | "etcd3" => {
                let (name, size) = if backend == "etcd1" {
                    ("etcd, 1 member", 1)
                } else {
                    ("etcd, 3 members", 3)
                };
                let members =
                    tokio::task::spawn_blocking(move || LocalEtcd::cluster(size)).await??;
                let endpoints: Vec<String> = members.iter().map(|m| m.client_url.clone()).collect();
                raw_etcd(name, &endpoints, seq, conc).await?;
                api_creates(name, etcd_backend(&members), seq, conc).await?;
                drop(members);
            }
            "rbac" => {
                rbac(conc).await?;
            }
            "failover" => {
                failover(env_usize("WHARF_BENCH_FAILOVERS", 3)).await?;
            }
            other => {
                return Err(format!("unknown backend {other:?} in WHARF_BENCH_BACKENDS").into());
            }
        }
    }
    Ok(())
}
