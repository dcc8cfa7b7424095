//! Pod start with its image pulled from the cluster registry: the time from a pod's create
//! to the watch event showing it Running, when its image is not on the node yet (pulled
//! from the control plane's registry, verified, compiled) for a 1 MB and a 10 MB
//! component, and when the image is already on the node.
//!
//! Control plane and node run in this process (as `wharf up` runs them); images are pushed
//! with the `wharf push` binary. Each "not on the node" run pushes a distinct component
//! (hello-http with a custom section of padding, so the sizes are real and no run finds
//! another's image or compiled artifact). Run:
//!
//! ```sh
//! cargo bench --bench images            # WHARF_BENCH_RUNS=5
//! ```

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wharf_control::ControlConfig;
use wharf_node::NodeConfig;
use wharf_node::agent::ClusterRegistry;

/// The allocator of the `wharf` binary, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// `wasm` with a custom section appended so that the whole is `size` bytes (about), its
/// payload derived from `seed` so that each copy is a different image.
fn padded(wasm: &[u8], size: usize, seed: usize) -> Vec<u8> {
    let name = b"wharf-bench-padding";
    let payload_len = size.saturating_sub(wasm.len() + name.len() + 12);
    let mut payload = Vec::with_capacity(payload_len);
    let mut x = seed as u64 | 1;
    while payload.len() < payload_len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        payload.extend_from_slice(&x.to_le_bytes());
    }
    payload.truncate(payload_len);
    let mut content = Vec::new();
    leb128(name.len(), &mut content);
    content.extend_from_slice(name);
    content.extend_from_slice(&payload);
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    leb128(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

fn pod(name: &str, image: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 0, "containers": [{
            "name": "hello", "image": image, "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": 8080}],
            "resources": {"limits": {"memory": "16Mi"}}}]}
    }))
    .unwrap_or_default()
}

/// Creates the pod and returns the time until a watch shows it Running.
async fn start(api: &Api<Pod>, name: &str, image: &str) -> Result<Duration> {
    let rv = api
        .list(&Default::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut watch = api
        .watch(
            &WatchParams::default().fields(&format!("metadata.name={name}")),
            &rv,
        )
        .await?
        .boxed();
    let t0 = Instant::now();
    api.create(&PostParams::default(), &pod(name, image))
        .await?;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(120), watch.next())
            .await
            .context("no pod event for 120 s")?
            .context("watch ended")??;
        if let WatchEvent::Added(p) | WatchEvent::Modified(p) = event
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        {
            return Ok(t0.elapsed());
        }
    }
}

async fn delete(api: &Api<Pod>, name: &str) -> Result<()> {
    api.delete(name, &DeleteParams::default().grace_period(0))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get_opt(name).await?.is_some() {
        if Instant::now() > deadline {
            bail!("pod {name} was not deleted within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn push(kubeconfig: &Path, file: &Path, reference: &str) -> Result<()> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("push")
        .arg(file)
        .arg(reference)
        .output()?;
    if !out.status.success() {
        bail!("wharf push: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

async fn run() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new(root.join("samples/build.sh"))
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("samples/build.sh failed");
    }
    let hello = std::fs::read(root.join("samples/hello-http/hello_http.wasm"))?;
    let runs = env_usize("WHARF_BENCH_RUNS", 5);

    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let mut config = ControlConfig::new(dir.path().join("control"));
    config.listen = "127.0.0.1:0".parse()?;
    let plane = wharf_control::start(config, shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut node_config = NodeConfig::new("node-1", dir.path().join("node-1"));
    // The node serves TLS with a certificate of the cluster CA.
    node_config.agent.cluster_ca_pem = std::fs::read_to_string(&plane.ca_cert).ok();
    let token = plane.admin_token.clone();
    node_config.agent.cluster_registry = Some(ClusterRegistry {
        host: plane.local_addr.to_string(),
        ca_file: plane.ca_cert.clone(),
        credential: std::sync::Arc::new(move || Some(token.clone())),
    });
    let agent = wharf_node::start(node_config, plane.component_client(), shutdown.clone()).await?;
    let api: Api<Pod> = Api::namespaced(plane.client(), "default");

    println!("| pod start, create -> Running via watch | runs | p50 | min | max |");
    println!("|---|---:|---:|---:|---:|");
    for (label, size) in [("1 MB", 1_000_000usize), ("10 MB", 10_000_000)] {
        let mut pulled = Vec::new();
        let mut cached = Vec::new();
        for i in 0..runs {
            let file = dir.path().join(format!("app-{size}-{i}.wasm"));
            std::fs::write(&file, padded(&hello, size, size + i))?;
            let reference = format!("registry.wharf.local/bench-{size}-{i}:1.0");
            push(&plane.kubeconfig, &file, &reference)?;
            let name = format!("pull-{size}-{i}");
            pulled.push(start(&api, &name, &reference).await?);
            delete(&api, &name).await?;
            let name = format!("cached-{size}-{i}");
            cached.push(start(&api, &name, &reference).await?);
            delete(&api, &name).await?;
        }
        for (what, mut times) in [
            (
                format!("{label} component, pulled from the cluster registry and compiled"),
                pulled,
            ),
            (
                format!("{label} component, image already on the node"),
                cached,
            ),
        ] {
            times.sort();
            println!(
                "| {what} | {runs} | {} | {} | {} |",
                ms(times[times.len() / 2]),
                ms(times[0]),
                ms(times[times.len() - 1])
            );
        }
    }
    shutdown.cancel();
    agent.wait(Duration::from_secs(5)).await;
    plane.wait().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn main() -> Result<()> {
    wharf_control::pki::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}
