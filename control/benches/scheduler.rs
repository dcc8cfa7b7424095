//! Scheduler throughput over many simulated nodes.
//!
//! `cargo bench -p wharf-control --bench scheduler`
//!
//! For each cluster size: an in-process control plane (`wharf_control::start` on
//! 127.0.0.1:0, a fresh data dir, durability on), N simulated nodes (a Node with
//! allocatable and `Ready=True`, and a Lease; no runtime), then 10,000 pods with requests
//! created as fast as the API takes them (64 concurrent creators on the in-process
//! client). Throughput is pods / (last pod bound - first create), the binds observed
//! through a watch of pods, as kube-scheduler's `scheduler_perf` measures
//! `SchedulingThroughput`. Prints a markdown table (the "Scheduler" section of
//! BENCHMARKS.md).
//!
//! Two setups per size: `scheduler` runs the API server and the scheduler only (what
//! `scheduler_perf` runs: no controller manager), `full` the whole control plane (every
//! controller watching pods too, as `wharf control` runs).
//!
//! Sizes: `WHARF_BENCH_NODES` (comma-separated, default `1000,5000`), `WHARF_BENCH_PODS`
//! (default 10000), `WHARF_BENCH_SETUPS` (default `scheduler,full`),
//! `WHARF_BENCH_BINDS` (bindings in flight, default the scheduler's 16),
//! `WHARF_BENCH_STORE` (`fjall`, the default, or `etcd`: a one-member Debian etcd on
//! loopback, started for each run, data dir on the same disk).

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use std::collections::HashMap;
use std::error::Error;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wharf_control::scheduler::SchedulerConfig;
use wharf_control::store::EtcdConfig;
use wharf_control::store::local_etcd::LocalEtcd;
use wharf_control::{ControlConfig, StoreBackend, start};

/// The allocator of the `wharf` binary, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn Error + Send + Sync>;

const CREATORS: usize = 64;
const NODE_CREATORS: usize = 16;
const DEADLINE: Duration = Duration::from_secs(600);

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// One simulated node: Node, status, Lease. Its pod range is given (the API's IPAM hands
/// out only 64 loopback ranges, for real nodes on one machine).
async fn add_node(client: &kube::Client, i: usize) -> Result<(), BoxError> {
    let name = format!("node-{i:05}");
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "wasm32", "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
        "spec": {"podCIDR": format!("10.{}.{}.0/24", i / 256, i % 256)},
    }))?;
    nodes.create(&PostParams::default(), &node).await?;
    let resources = json!({"cpu": "32", "memory": "128Gi", "pods": "110"});
    let status = json!({"status": {"capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "lastHeartbeatTime": now(), "lastTransitionTime": now()}]}});
    nodes
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now()}}))?;
    leases.create(&PostParams::default(), &lease).await?;
    Ok(())
}

fn pod(name: &str, node_selector: Option<&str>) -> Result<Pod, BoxError> {
    let mut p = json!({"metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "app", "image": "file:///srv/apps/hello.wasm",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}});
    if let Some(node) = node_selector {
        p["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": node});
    }
    Ok(serde_json::from_value(p)?)
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

struct Row {
    setup_name: &'static str,
    nodes: usize,
    pods: usize,
    setup: Duration,
    created_in: Duration,
    scheduled_in: Duration,
    min_per_node: usize,
    max_per_node: usize,
}

async fn run(setup_name: &'static str, nodes: usize, pods: usize) -> Result<Row, BoxError> {
    let base = env!("CARGO_TARGET_TMPDIR");
    std::fs::create_dir_all(base)?;
    let dir = tempfile::tempdir_in(base)?;
    let mut config = ControlConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse()?;
    // Nobody renews the simulated Leases during the run: keep the lifecycle controller
    // from declaring the nodes dead.
    config.controllers.node_monitor_grace = Duration::from_secs(3600);
    config.controllers.pod_eviction_timeout = Duration::from_secs(3600);
    let mut scheduler = SchedulerConfig::default();
    if let Some(binds) = std::env::var("WHARF_BENCH_BINDS")
        .ok()
        .and_then(|b| b.parse().ok())
    {
        scheduler.parallel_binds = binds;
    }
    config.scheduler = scheduler.clone();
    let alone = setup_name == "scheduler";
    config.run_components = !alone;
    // Kept until the run ends (dropping it stops the etcd member).
    let _etcd = match std::env::var("WHARF_BENCH_STORE").as_deref() {
        Ok("etcd") => {
            let member = tokio::task::spawn_blocking(LocalEtcd::start).await??;
            config.backend = StoreBackend::Etcd(EtcdConfig::new(vec![member.client_url.clone()]));
            Some(member)
        }
        Ok("fjall") | Err(_) => None,
        Ok(other) => return Err(format!("WHARF_BENCH_STORE={other}: fjall or etcd").into()),
    };
    let shutdown = CancellationToken::new();
    let plane = start(config, shutdown.clone()).await?;
    let client = plane.client();
    let mut tasks = JoinSet::new();
    if alone {
        wharf_control::scheduler::start(client.clone(), &scheduler, shutdown.clone(), &mut tasks);
    }

    let setup_start = Instant::now();
    futures::stream::iter(0..nodes)
        .map(|i| {
            let client = client.clone();
            async move { add_node(&client, i).await }
        })
        .buffer_unordered(NODE_CREATORS)
        .try_collect::<Vec<()>>()
        .await?;
    // The scheduler has seen every node once it binds a pod that only the last fits
    // (the node watch delivers in order).
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let last = format!("node-{:05}", nodes - 1);
    api.create(&PostParams::default(), &pod("probe", Some(&last))?)
        .await?;
    let probe = tokio::time::timeout(
        DEADLINE,
        kube::runtime::wait::await_condition(api.clone(), "probe", |p: Option<&Pod>| {
            p.and_then(node_of).is_some()
        }),
    )
    .await??;
    if probe.as_ref().and_then(node_of) != Some(last.as_str()) {
        return Err("the probe pod landed on the wrong node".into());
    }
    let setup = setup_start.elapsed();

    // Observe bindings through a watch from now on.
    let rv = api
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut watch = api.watch(&WatchParams::default(), &rv).await?.boxed();
    let watcher = tokio::spawn(async move {
        let mut bound: HashMap<String, String> = HashMap::new();
        while bound.len() < pods {
            match watch.try_next().await {
                Ok(Some(WatchEvent::Added(p) | WatchEvent::Modified(p))) => {
                    if let (Some(name), Some(node)) = (p.metadata.name.clone(), node_of(&p))
                        && name.starts_with("bench-")
                    {
                        bound.entry(name).or_insert_with(|| node.to_string());
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err::<_, String>("the watch ended".into()),
                Err(e) => return Err(format!("the watch failed: {e}")),
            }
        }
        Ok((Instant::now(), bound))
    });

    let start_at = Instant::now();
    futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            async move {
                let p = pod(&format!("bench-{i:05}"), None)?;
                api.create(&PostParams::default(), &p).await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(CREATORS)
        .try_collect::<Vec<()>>()
        .await?;
    let created_in = start_at.elapsed();
    let (done_at, bound) = tokio::time::timeout(DEADLINE, watcher).await???;
    let scheduled_in = done_at.duration_since(start_at);

    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for node in bound.values() {
        *per_node.entry(node.as_str()).or_default() += 1;
    }
    let min_per_node = if per_node.len() < nodes {
        0
    } else {
        per_node.values().copied().min().unwrap_or(0)
    };
    let max_per_node = per_node.values().copied().max().unwrap_or(0);

    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    plane.wait().await?;
    Ok(Row {
        setup_name,
        nodes,
        pods,
        setup,
        created_in,
        scheduled_in,
        min_per_node,
        max_per_node,
    })
}

fn main() -> Result<(), BoxError> {
    let node_counts = env_list("WHARF_BENCH_NODES", &[1000, 5000]);
    let pods = env_list("WHARF_BENCH_PODS", &[10_000])[0];
    let setups: Vec<&'static str> = match std::env::var("WHARF_BENCH_SETUPS") {
        Ok(v) => ["scheduler", "full"]
            .into_iter()
            .filter(|s| v.split(',').any(|x| x.trim() == *s))
            .collect(),
        Err(_) => vec!["scheduler", "full"],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &nodes in &node_counts {
        for &setup in &setups {
            eprintln!("scheduler bench: {setup}, {nodes} nodes, {pods} pods ...");
            let row = runtime.block_on(run(setup, nodes, pods))?;
            eprintln!(
                "  scheduled in {:.2} s ({:.0} pods/s)",
                row.scheduled_in.as_secs_f64(),
                row.pods as f64 / row.scheduled_in.as_secs_f64()
            );
            rows.push(row);
        }
    }
    println!(
        "| setup | nodes | pods | node setup | all created after | all bound after | scheduling throughput | creates/s | pods per node (min-max) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.1} s | {:.2} s | {:.2} s | **{:.0} pods/s** | {:.0} | {}-{} |",
            r.setup_name,
            r.nodes,
            r.pods,
            r.setup.as_secs_f64(),
            r.created_in.as_secs_f64(),
            r.scheduled_in.as_secs_f64(),
            r.pods as f64 / r.scheduled_in.as_secs_f64(),
            r.pods as f64 / r.created_in.as_secs_f64(),
            r.min_per_node,
            r.max_per_node,
        );
    }
    Ok(())
}
