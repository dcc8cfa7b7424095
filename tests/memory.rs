//! End-to-end: the control plane's memory stays bounded under large objects. 1,000
//! ConfigMaps of SIZE bytes are created, then one of them is updated 10,000 times; the
//! `wharf control` process's resident memory is read from /proc after each phase. What it
//! must hold is the live objects (1,000 x SIZE after the first phase); what it must not
//! hold is every version of every object for watchers (10,000 x SIZE more in the second
//! phase, before the in-memory event window was bounded in bytes).
//!
//! SIZE is 1 MB with `WHARF_MEMORY_OBJECT_BYTES=1000000` (minutes in a release build, far
//! longer in a debug one); the test suite runs it at 100 KB, where the 10,000 versions
//! (1 GB with their previous values) still dwarf the 64 MiB window.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ControlProcess, TIMEOUT};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const MB: usize = 1_000_000;
const DEFAULT_SIZE: usize = 100_000;
const OBJECTS: usize = 1_000;
const UPDATES: usize = 10_000;
/// Requests in flight at once.
const CLIENTS: usize = 16;

/// Resident memory of process `pid`, in bytes (Linux).
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// The size of every object: `WHARF_MEMORY_OBJECT_BYTES`, else [`DEFAULT_SIZE`].
fn object_size() -> usize {
    std::env::var("WHARF_MEMORY_OBJECT_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=MB * 3 / 2 - 1024).contains(n))
        .unwrap_or(DEFAULT_SIZE)
}

fn config_map(name: &str, size: usize) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "data": {"blob": "a".repeat(size)}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_large_objects_and_many_versions() {
    let dir = tempfile::tempdir().unwrap();
    // A short revision log keeps the disk use of the test small; memory is what is measured.
    let cp =
        ControlProcess::start_with(&dir.path().join("control"), &["--watch-history", "1000"]).await;
    let pid = cp.child.id().unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(cp.client().await);
    let baseline = rss(pid);
    let size = object_size();

    let created = futures::stream::iter(0..OBJECTS)
        .map(|i| {
            let cms = cms.clone();
            async move {
                tokio::time::timeout(
                    TIMEOUT,
                    cms.create(
                        &PostParams::default(),
                        &config_map(&format!("big-{i}"), size),
                    ),
                )
                .await
            }
        })
        .buffer_unordered(CLIENTS)
        .filter(|r| futures::future::ready(matches!(r, Ok(Ok(_)))))
        .count()
        .await;
    assert_eq!(created, OBJECTS);
    let after_creates = rss(pid);

    // Every update changes a large object: each version is SIZE (twice that with its
    // previous value) for the event window.
    let updated = futures::stream::iter(0..UPDATES)
        .map(|i| {
            let cms = cms.clone();
            async move {
                let patch = json!({"metadata": {"annotations": {"n": i.to_string()}}});
                // Sixteen writers of one object: the server's compare-and-swap retries can
                // run out (409), and a client then tries again, as clients do.
                let mut last = None;
                for _ in 0..10 {
                    let sent = tokio::time::timeout(
                        TIMEOUT,
                        cms.patch("big-0", &PatchParams::default(), &Patch::Merge(&patch)),
                    )
                    .await;
                    match sent {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(kube::Error::Api(s))) if s.code == 409 => last = Some(s.message),
                        other => return Err(format!("{other:?}")),
                    }
                }
                Err(format!("still conflicting: {last:?}"))
            }
        })
        .buffer_unordered(CLIENTS)
        .collect::<Vec<Result<(), String>>>()
        .await;
    let failed: Vec<&String> = updated.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} updates failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let after_updates = rss(pid);

    let mib = |b: usize| b / (1024 * 1024);
    eprintln!(
        "control plane RSS: {} MiB at start, {} MiB after {OBJECTS} x {size} B creates, {} MiB after {UPDATES} updates of one",
        mib(baseline),
        mib(after_creates),
        mib(after_updates)
    );
    // Within 1 GiB of where it started, live objects included.
    let gib = 1024 * 1024 * 1024;
    assert!(
        after_creates < baseline + gib,
        "{} MiB after the creates",
        mib(after_creates)
    );
    // Ten thousand versions of one object add at most the event window, its parsed copies
    // for watchers and the allocator's slack (a few hundred MiB), not 10,000 x SIZE twice.
    assert!(
        after_updates < after_creates + gib / 2,
        "{} MiB after the updates, {} MiB before",
        mib(after_updates),
        mib(after_creates)
    );
}
