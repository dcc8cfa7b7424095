//! Shared test helpers: building the sample guests (once per test binary run), runtimes in
//! temporary data dirs, bounded awaits, and a tiny HTTP client.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use wharf_runtime::{PoolingConfig, Runtime, RuntimeConfig};

/// The samples directory (`samples/` at the workspace root).
pub fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples")
}

static BUILT: OnceLock<Result<(), String>> = OnceLock::new();

/// Builds every sample through `samples/build.sh`, once per test binary run.
pub async fn build_samples() {
    let result = tokio::task::spawn_blocking(|| {
        BUILT
            .get_or_init(|| {
                let out = std::process::Command::new(samples_dir().join("build.sh"))
                    .output()
                    .map_err(|e| format!("running samples/build.sh: {e}"))?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "samples/build.sh failed ({}):\n{}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    ))
                }
            })
            .clone()
    })
    .await
    .expect("build task");
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Path of a built sample, e.g. `sample("hello-http", "hello_http")`.
pub fn sample(dir: &str, file: &str) -> String {
    samples_dir()
        .join(dir)
        .join(format!("{file}.wasm"))
        .display()
        .to_string()
}

pub fn hello_http() -> String {
    sample("hello-http", "hello_http")
}
pub fn ticker() -> String {
    sample("ticker", "ticker")
}
pub fn batch_p1() -> String {
    sample("batch-p1", "batch_p1")
}
pub fn crasher() -> String {
    sample("crasher", "crasher")
}
pub fn spinner() -> String {
    sample("spinner", "spinner")
}
pub fn hog() -> String {
    sample("hog", "hog")
}

/// A runtime config with a small instance pool (tests run several runtimes at once).
pub fn config(data_dir: &Path) -> RuntimeConfig {
    let mut config = RuntimeConfig::new(data_dir);
    config.pooling = Some(PoolingConfig {
        total_instances: 64,
        max_memory_bytes: 1 << 30,
    });
    config
}

/// A data dir shared by the tests of this binary, so that each sample is compiled once
/// (debug-build Cranelift is slow) rather than once per test. Tests about the cache use
/// their own temporary dirs.
pub fn shared_data_dir() -> PathBuf {
    static CLEANED: OnceLock<()> = OnceLock::new();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wharf-runtime-tests");
    // Keep the compiled artifacts between runs, not the logs of earlier runs' containers.
    CLEANED.get_or_init(|| {
        let _ = std::fs::remove_dir_all(dir.join("logs"));
    });
    std::fs::create_dir_all(&dir).expect("shared data dir");
    dir
}

pub fn shared_runtime() -> Runtime {
    Runtime::new(config(&shared_data_dir())).expect("runtime")
}

/// Awaits `fut`, failing the test if it takes longer than `secs` seconds.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}

/// A unique container id for a test.
pub fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// GETs a URL; returns status and body.
pub async fn get(client: &HttpClient, url: &str) -> (u16, String) {
    let uri: http::Uri = url.parse().expect("url");
    let response = client.get(uri).await.expect("request");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
