//! Store write benchmark, durability on (every acknowledged write is fsynced).
//!
//! `cargo bench -p wharf-control --bench store`
//!
//! (a) one writer doing sequential creates: the latency of a single fsync'ed commit;
//! (b) 64 concurrent writer tasks doing creates: what group commit buys under load.
//! Prints a markdown table (the "Store writes" section of BENCHMARKS.md).
//! Sizes can be overridden with `WHARF_BENCH_SEQ` and `WHARF_BENCH_CONC`.

use bytes::Bytes;
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wharf_control::store::{FjallStore, Store, StoreConfig};

/// The allocator of the `wharf` binary, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TASKS: usize = 64;

/// A pod about the size the API server stores (~1 KiB of JSON).
fn pod_json(name: &str) -> Bytes {
    let labels: String = (0..8)
        .map(|i| format!(r#""label-{i}":"value-{i}","#))
        .collect();
    Bytes::from(format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"default","labels":{{{labels}"app":"bench"}},"uid":"1c1c0f2e-8b0a-4e8e-9d3a-{name:0>12}"}},"spec":{{"containers":[{{"name":"app","image":"file:///srv/apps/hello.wasm@sha256:0000000000000000000000000000000000000000000000000000000000000000","ports":[{{"containerPort":8080,"protocol":"TCP"}}],"resources":{{"limits":{{"cpu":"500m","memory":"64Mi"}}}}}}],"restartPolicy":"Always","schedulerName":"default-scheduler","nodeName":"node-1"}},"status":{{"phase":"Pending","conditions":[{{"type":"PodScheduled","status":"True"}}]}}}}"#
    ))
}

struct Row {
    scenario: String,
    writes: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    commits: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn sequential(store: &FjallStore, n: usize) -> Result<Row, Box<dyn Error>> {
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let key = format!("core/pods/default/seq-{i}");
        let value = pod_json(&format!("seq-{i}"));
        let t = Instant::now();
        store.create(&key, value).await?;
        latencies.push(t.elapsed());
    }
    Ok(Row {
        scenario: "(a) 1 writer, sequential creates".into(),
        writes: n,
        elapsed: start.elapsed(),
        latencies,
        commits: store.stats().commits,
    })
}

async fn concurrent(store: Arc<FjallStore>, n: usize) -> Result<Row, Box<dyn Error>> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let store = store.clone();
        let count = n / TASKS + usize::from(task < n % TASKS);
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            for i in 0..count {
                let name = format!("c{task}-{i}");
                let key = format!("core/pods/default/{name}");
                let value = pod_json(&name);
                let t = Instant::now();
                store.create(&key, value).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, wharf_control::store::StoreError>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done??);
    }
    Ok(Row {
        scenario: format!("(b) {TASKS} concurrent writers, creates"),
        writes: latencies.len(),
        elapsed: start.elapsed(),
        latencies,
        commits: store.stats().commits,
    })
}

fn main() -> Result<(), Box<dyn Error>> {
    let seq_n = env_usize("WHARF_BENCH_SEQ", 5_000);
    let conc_n = env_usize("WHARF_BENCH_CONC", 20_000);
    // Under target/, on the same disk as the build: a real fsync, not a tmpfs.
    let base = env!("CARGO_TARGET_TMPDIR");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let rows = runtime.block_on(async {
        let dir_a = tempfile::tempdir_in(base)?;
        let store = FjallStore::open(StoreConfig::new(dir_a.path()))?;
        let a = sequential(&store, seq_n).await?;
        drop(store);

        let dir_b = tempfile::tempdir_in(base)?;
        let store = Arc::new(FjallStore::open(StoreConfig::new(dir_b.path()))?);
        let b = concurrent(store, conc_n).await?;
        Ok::<_, Box<dyn Error>>(vec![a, b])
    })?;

    println!("store writes, durability on (fdatasync per commit), data dir under {base}");
    println!();
    println!("| scenario | writes | wall time | writes/s | p50 | p99 | max | writes per fsync |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for mut row in rows {
        row.latencies.sort_unstable();
        let rate = row.writes as f64 / row.elapsed.as_secs_f64();
        println!(
            "| {} | {} | {:.2} s | {:.0} | {} | {} | {} | {:.1} |",
            row.scenario,
            row.writes,
            row.elapsed.as_secs_f64(),
            rate,
            ms(percentile(&row.latencies, 0.50)),
            ms(percentile(&row.latencies, 0.99)),
            ms(row.latencies.last().copied().unwrap_or_default()),
            row.writes as f64 / row.commits.max(1) as f64,
        );
    }
    Ok(())
}
