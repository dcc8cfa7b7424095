//! Runtime benchmarks with the real sample guests (see BENCHMARKS.md, "Runtime").
//!
//! `cargo bench -p wharf-runtime --bench runtime`
//!
//! 1. Container start-to-exit latency of a cached image, through the public API
//!    (`Runtime::start` + `Container::wait`: log file setup, store, instantiate, run, log
//!    flush): a p1 module (`batch_p1 10`) and a p2 command (`ticker`, one tick).
//! 2. hello-http requests/s served by the runtime on loopback: a hyper client in the same
//!    process, `WHARF_BENCH_CONC` (16) keep-alive connections, `WHARF_BENCH_REQS` (20000)
//!    requests in all.
//! 3. Resident memory per idle HTTP container: start `WHARF_BENCH_PODS` (200) hello-http
//!    containers, each on its own port, and compare VmRSS before and after (and after one
//!    request to each).
//!
//! Runs once with the pooling allocator and once on-demand (1 and 2 only).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use wharf_runtime::{ContainerSpec, ExitReason, Image, Runtime, RuntimeConfig};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples")
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

async fn start_latency(
    rt: &Runtime,
    image: &Image,
    argv: &[&str],
    env: &[(&str, &str)],
    n: usize,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let mut spec = ContainerSpec::new(format!("bench-{}-{i}", image.kind()));
        spec.argv = argv.iter().map(|s| s.to_string()).collect();
        spec.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let t = Instant::now();
        let container = rt.start(spec, image).await.unwrap();
        let status = container.wait().await;
        let elapsed = t.elapsed();
        assert_eq!(status.reason, ExitReason::Completed, "{status:?}");
        if i >= 10 {
            out.push(elapsed); // the first 10 warm up
        }
    }
    out.sort();
    out
}

async fn http_throughput(
    rt: &Runtime,
    image: &Image,
    conc: usize,
    total: usize,
) -> (f64, Duration, Duration) {
    let mut spec = ContainerSpec::new("bench-http");
    spec.http_listen = Some("127.0.0.1:0".parse().unwrap());
    let container = rt.start(spec, image).await.unwrap();
    let url: http::Uri = format!("http://{}/", container.http_addr().unwrap())
        .parse()
        .unwrap();
    let client: Client<_, Empty<Bytes>> = Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(conc)
        .build_http();
    // Warm up.
    for _ in 0..100 {
        let r = client.get(url.clone()).await.unwrap();
        r.into_body().collect().await.unwrap();
    }
    let per_task = total / conc;
    let t = Instant::now();
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let t = Instant::now();
                    let r = client.get(url.clone()).await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.into_body().collect().await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await.unwrap());
    }
    let elapsed = t.elapsed();
    lat.sort();
    container.stop(Duration::from_secs(10)).await;
    (
        (per_task * conc) as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
    )
}

/// One GET on a fresh connection, closed afterwards (so no idle connection state remains).
async fn one_request(addr: std::net::SocketAddr) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::get("/")
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    response.into_body().collect().await.unwrap();
    drop(sender);
    conn.await.unwrap().unwrap();
}

async fn memory_per_container(rt: &Runtime, image: &Image, n: usize) {
    let before = vm_rss_kib();
    let mut containers = Vec::with_capacity(n);
    let t = Instant::now();
    for i in 0..n {
        let mut spec = ContainerSpec::new(format!("bench-idle-{i}"));
        spec.http_listen = Some("127.0.0.1:0".parse().unwrap());
        spec.env = vec![("POD_NAME".into(), format!("idle-{i}"))];
        containers.push(rt.start(spec, image).await.unwrap());
    }
    let started = t.elapsed();
    let after_start = vm_rss_kib();
    for c in &containers {
        one_request(c.http_addr().unwrap()).await;
    }
    let after_request = vm_rss_kib();
    println!(
        "memory: {n} idle HTTP containers started in {} ({} each); VmRSS {} KiB -> {} KiB after start \
         ({:.1} KiB per container) -> {} KiB after one request each on a closed connection ({:.1} KiB per container)",
        ms(started),
        ms(started / n as u32),
        before,
        after_start,
        (after_start.saturating_sub(before)) as f64 / n as f64,
        after_request,
        (after_request.saturating_sub(before)) as f64 / n as f64,
    );
    for c in &containers {
        c.stop(Duration::from_secs(10)).await;
    }
}

async fn run(pooling: bool) {
    let dir = tempfile::Builder::new()
        .prefix("wharf-bench")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let mut config = RuntimeConfig::new(dir.path());
    if !pooling {
        config.pooling = None;
    }
    let rt = Runtime::new(config).unwrap();
    println!("\n== allocator: {:?}", rt.allocator());
    let s = samples();
    let p1 = rt
        .pull(&s.join("batch-p1/batch_p1.wasm").display().to_string())
        .await
        .unwrap();
    let p2 = rt
        .pull(&s.join("ticker/ticker.wasm").display().to_string())
        .await
        .unwrap();
    let http = rt
        .pull(&s.join("hello-http/hello_http.wasm").display().to_string())
        .await
        .unwrap();

    // A pull of an image already compiled by an earlier runtime: load from the disk cache.
    let rt2 = Runtime::new({
        let mut c = RuntimeConfig::new(dir.path());
        c.pooling = None;
        c
    })
    .unwrap();
    let t = Instant::now();
    rt2.pull(&s.join("hello-http/hello_http.wasm").display().to_string())
        .await
        .unwrap();
    println!(
        "pull of a cached image (read, digest, load artifact, pre-link) in a fresh runtime: {}",
        ms(t.elapsed())
    );
    drop(rt2);

    // Memory first, while the heap has not yet been grown (and left grown) by the other
    // measurements: memory freed earlier would be reused and hide the containers' cost.
    if pooling {
        memory_per_container(&rt, &http, env_usize("WHARF_BENCH_PODS", 200)).await;
    }

    let n = env_usize("WHARF_BENCH_STARTS", 200);
    let lat = start_latency(&rt, &p1, &["batch_p1", "10"], &[], n).await;
    println!(
        "p1 module start->exit ({n} runs): p50 {}, p99 {}, max {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat[lat.len() - 1])
    );
    let lat = start_latency(&rt, &p2, &["ticker"], &[("TICKS", "1")], n).await;
    println!(
        "p2 command start->exit ({n} runs): p50 {}, p99 {}, max {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat[lat.len() - 1])
    );

    let conc = env_usize("WHARF_BENCH_CONC", 16);
    let total = env_usize("WHARF_BENCH_REQS", 20_000);
    let (rps, p50, p99) = http_throughput(&rt, &http, conc, total).await;
    println!(
        "hello-http: {rps:.0} req/s ({total} requests, {conc} connections), latency p50 {}, p99 {}",
        ms(p50),
        ms(p99)
    );

    rt.shutdown(Duration::from_secs(10)).await;
}

fn main() {
    let out = std::process::Command::new(samples().join("build.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "samples/build.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        run(true).await;
        run(false).await;
    });
}
