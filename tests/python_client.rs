//! End-to-end: the official Kubernetes Python client (`pip install kubernetes`) against a
//! `wharf up` cluster, through tests/python/client_e2e.py: create (and 409), watch pods to
//! Running, list every kind into the client's strict models, logs and follow, the scale
//! subresource, a JSON patch, a watch from an expired resourceVersion (410) and a
//! Foreground delete.
//!
//! `scripts/deps` installs the client into the repository's venv (`.venv`), whose Python
//! runs the script; the test fails with that hint if it is missing.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Cluster, build_samples, free_port, sample};
use std::path::Path;
use std::time::Duration;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_works_against_wharf() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    // A short watch history, so that the script can expire a resourceVersion quickly.
    let cluster = Cluster::up_with(dir.path(), 1, &["--watch-history", "40"]).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/python/client_e2e.py");
    let python = root.join(".venv/bin/python3");
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        Command::new(&python)
            .arg(&script)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("HELLO_IMAGE", sample("hello-http", "hello_http"))
            .env("TICKER_IMAGE", sample("ticker", "ticker"))
            .env("PORT", free_port().to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the python client script timed out")
    .unwrap_or_else(|e| {
        panic!(
            "running {}: {e}: run scripts/deps (the Python client's venv)",
            python.display()
        )
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'kubernetes'"),
        "the Python client is not installed: run scripts/deps (it makes .venv)"
    );
    assert!(
        out.status.success() && stdout.contains("all steps passed"),
        "python client script failed\nstdout:\n{stdout}\nstderr:\n{stderr}\ncluster log:\n{}",
        cluster.log_tail(30)
    );
    cluster.terminate().await;
}
