//! Pods on one node, end to end: how fast a pod goes from created to Running (seen through
//! a watch, as a user would see it), how many requests per second a node serves from a
//! `hello-http` pod, and how many idle `hello-http` pods one node holds and what each
//! costs in resident memory.
//!
//! Control plane and node run in this process (as `wharf up` runs them), talking through
//! the in-process API client; pods name their node. The module is compiled once before
//! measuring, so the figures are for a cached module. Run:
//!
//! ```sh
//! cargo bench --bench pods            # WHARF_BENCH_PODS=200 WHARF_BENCH_DENSITY=1000
//! ```

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wharf_control::ControlConfig;
use wharf_node::NodeConfig;
use wharf_runtime::RuntimeConfig;

/// The allocator of the `wharf` binary, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn pod(name: &str, image: &Path) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 0, "containers": [{
            "name": "hello", "image": image.display().to_string(),
            "ports": [{"containerPort": 8080}],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "resources": {"limits": {"memory": "16Mi"}}}]}
    }))
    .unwrap_or_default()
}

fn running(p: &Pod) -> Option<String> {
    let s = p.status.as_ref()?;
    (s.phase.as_deref() == Some("Running"))
        .then(|| s.pod_ip.clone())
        .flatten()
}

/// Creates `names` (all at once when `burst`, else one after another) and returns each
/// pod's time from its create call to the watch event that shows it Running.
async fn start_pods(
    api: &Api<Pod>,
    image: &Path,
    names: &[String],
    burst: bool,
) -> Result<(Vec<Duration>, HashMap<String, String>)> {
    let list = api.list(&Default::default()).await?;
    let rv = list.metadata.resource_version.unwrap_or_default();
    let params = WatchParams::default().labels("app=bench");
    let mut watch = api.watch(&params, &rv).await?.boxed();
    // The server ends a watch after its timeout (kube's default asks for 290 s): a start
    // of thousands of pods may take longer, so the watch resumes from the last event.
    let mut last_rv = rv;
    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    let mut ips = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut pending = names.iter();
    let mut next = |created: &mut HashMap<String, Instant>| -> Option<String> {
        let n = pending.next()?.clone();
        created.insert(n.clone(), Instant::now());
        Some(n)
    };
    let mut waiting = 0usize;
    if burst {
        let mut creates = futures::stream::FuturesUnordered::new();
        while let Some(n) = next(&mut created) {
            let api = api.clone();
            let p = pod(&n, image);
            creates.push(async move { api.create(&PostParams::default(), &p).await });
            waiting += 1;
        }
        while let Some(r) = creates.next().await {
            r?;
        }
    } else if let Some(n) = next(&mut created) {
        api.create(&PostParams::default(), &pod(&n, image)).await?;
        waiting = 1;
    }
    while waiting > 0 {
        if Instant::now() > deadline {
            let listed = api.list(&Default::default()).await?;
            let up = listed.items.iter().filter(|p| running(p).is_some()).count();
            bail!(
                "pods did not start within 10 minutes: the watch saw {} of {} Running, a list shows {up}",
                latencies.len(),
                names.len()
            );
        }
        let received = tokio::time::timeout(Duration::from_secs(60), watch.next())
            .await
            .context("no pod event for 60 s")?;
        let Some(event) = received else {
            watch = api.watch(&params, &last_rv).await?.boxed();
            continue;
        };
        let event = event?;
        match &event {
            WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p) => {
                last_rv = p.metadata.resource_version.clone().unwrap_or(last_rv);
            }
            WatchEvent::Bookmark(b) => last_rv = b.metadata.resource_version.clone(),
            WatchEvent::Error(e) => bail!("the pod watch failed: {e:?}"),
        }
        if let WatchEvent::Added(p) | WatchEvent::Modified(p) = event
            && let Some(ip) = running(&p)
        {
            let name = p.metadata.name.clone().unwrap_or_default();
            if let Some(t0) = created.remove(&name) {
                latencies.push(t0.elapsed());
                ips.insert(name, ip);
                waiting -= 1;
                if !burst && let Some(n) = next(&mut created) {
                    api.create(&PostParams::default(), &pod(&n, image)).await?;
                    waiting += 1;
                }
            }
        }
    }
    latencies.sort();
    Ok((latencies, ips))
}

async fn delete_all(api: &Api<Pod>) -> Result<()> {
    api.delete_collection(
        &DeleteParams::default(),
        &kube::api::ListParams::default().labels("app=bench"),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !api
        .list(&kube::api::ListParams::default().labels("app=bench"))
        .await?
        .items
        .is_empty()
    {
        if Instant::now() > deadline {
            bail!("bench pods were not removed");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `connections` keep-alive clients, `total` GETs in all; requests/s and latencies.
async fn load(addr: &str, connections: usize, total: usize) -> Result<(f64, Vec<Duration>)> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    let per = total / connections;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let addr = addr.to_string();
        tasks.spawn(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let driver = tokio::spawn(conn);
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let req = hyper::Request::get("/")
                    .header("host", &addr)
                    .body(Empty::<bytes::Bytes>::new())?;
                let t = Instant::now();
                let resp = send.send_request(req).await?;
                let status = resp.status();
                resp.into_body().collect().await?;
                if !status.is_success() {
                    bail!("status {status}");
                }
                lat.push(t.elapsed());
            }
            driver.abort();
            anyhow::Ok(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    let rps = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort();
    Ok((rps, all))
}

async fn run() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new(root.join("samples/build.sh"))
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("samples/build.sh failed");
    }
    let image = root.join("samples/hello-http/hello_http.wasm");
    let n_pods = env_usize("WHARF_BENCH_PODS", 200);
    let n_density = env_usize("WHARF_BENCH_DENSITY", 1000);

    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let mut config = ControlConfig::new(dir.path().join("control"));
    config.listen = "127.0.0.1:0".parse()?;
    let plane = wharf_control::start(config, shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let node_dir = dir.path().join("node-1");
    let mut node_config = NodeConfig::new("node-1", &node_dir);
    node_config.runtime = RuntimeConfig::new(node_dir.join("runtime"));
    // The node serves TLS with a certificate of the cluster CA.
    node_config.agent.cluster_ca_pem = std::fs::read_to_string(&plane.ca_cert).ok();
    let agent = wharf_node::start(node_config, plane.component_client(), shutdown.clone()).await?;
    let api: Api<Pod> = Api::namespaced(plane.client(), "default");

    // Compile once: every figure below is for a cached module.
    start_pods(&api, &image, &["warm".to_string()], false).await?;
    delete_all(&api).await?;

    let names: Vec<String> = (0..n_pods).map(|i| format!("seq-{i}")).collect();
    let (seq, _) = start_pods(&api, &image, &names, false).await?;
    delete_all(&api).await?;
    let names: Vec<String> = (0..n_pods).map(|i| format!("burst-{i}")).collect();
    let t = Instant::now();
    let (burst, ips) = start_pods(&api, &image, &names, true).await?;
    let burst_all = t.elapsed();

    let target = format!("{}:8080", ips.values().next().context("no pod")?);
    let _ = load(&target, 4, 2_000).await?; // warm the connection paths
    let (rps, lat) = load(&target, 16, 40_000).await?;
    delete_all(&api).await?;

    let before = rss_kib();
    let names: Vec<String> = (0..n_density).map(|i| format!("idle-{i}")).collect();
    let t = Instant::now();
    let (_, idle_ips) = start_pods(&api, &image, &names, true).await?;
    let density_all = t.elapsed();
    // Every idle pod answers (they are really serving).
    for ip in idle_ips.values().take(20) {
        let (_, _) = load(&format!("{ip}:8080"), 1, 1).await?;
    }
    let after = rss_kib();
    let per_pod = (after.saturating_sub(before)) as f64 / n_density as f64;

    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| pod start, one at a time ({n_pods} pods): create -> Running via watch, p50 / p99 | {} / {} |",
        ms(percentile(&seq, 0.5)),
        ms(percentile(&seq, 0.99))
    );
    println!(
        "| pod start, {n_pods} created at once: p50 / p99 per pod, all Running after | {} / {}, {} |",
        ms(percentile(&burst, 0.5)),
        ms(percentile(&burst, 0.99)),
        ms(burst_all)
    );
    println!(
        "| hello-http served by the node (16 connections, 40,000 requests) | {rps:.0} req/s, p50 {} p99 {} |",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );
    println!(
        "| idle hello-http pods on one node | {n_density} Running {} after their creates began, process RSS {} MiB -> {} MiB, {:.1} KiB per pod |",
        ms(density_all),
        before / 1024,
        after / 1024,
        per_pod
    );

    delete_all(&api).await?;
    shutdown.cancel();
    agent.wait(Duration::from_secs(5)).await;
    plane.wait().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn main() -> Result<()> {
    wharf_control::pki::install_crypto_provider();
    // RUST_LOG=warn (or finer) shows what the control plane and node report while measuring.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}
