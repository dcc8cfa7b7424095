//! Backups end to end on the embedded store: `wharf snapshot save` from a running cluster,
//! more objects made after it, the control plane stopped, `wharf snapshot restore` into
//! its data dir (refusing a truncated file and an existing store first), and the cluster
//! started again comes back to the snapshot: the pod made after it is gone from the API
//! and stopped on its node, and the Deployment keeps running. The restarted control plane
//! also takes scheduled snapshots (`--snapshot-interval`), which `wharf snapshot ls` lists.

#![allow(clippy::unwrap_used)]

mod common;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use std::time::{Duration, Instant};

/// Waits until Deployment hello has `n` ready replicas.
async fn ready_replicas(client: &kube::Client, n: i32) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + common::POD_TIMEOUT;
    loop {
        let ready = api
            .get("hello")
            .await
            .ok()
            .and_then(|d| d.status)
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        if ready == n {
            return;
        }
        assert!(Instant::now() < deadline, "hello: {ready} ready, not {n}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wharf_ok(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let out = common::wharf(kubeconfig, args).await;
    assert!(
        out.status.success(),
        "wharf {args:?}: {}{}",
        out.stdout_text(),
        out.stderr_text()
    );
    out.stdout_text()
}

#[tokio::test]
async fn a_restored_snapshot_brings_the_cluster_back_and_nodes_stop_pods_made_after_it() {
    common::build_samples().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("control");
    let listen = format!("127.0.0.1:{}", common::free_port());
    let flags = ["--store", "fjall"];
    let cp = common::ControlProcess::start_on(&data, &listen, &flags).await;
    let kubeconfig = cp.kubeconfig();
    let client = cp.client().await;
    let node = common::NodeProcess::start(
        tmp.path(),
        &kubeconfig,
        "n1",
        "127.0.0.1".parse().unwrap(),
        &[],
    )
    .await;
    let port = common::free_port();
    let manifest = tmp.path().join("hello.yaml");
    std::fs::write(&manifest, common::hello_deployment("hello", 2, port)).unwrap();
    wharf_ok(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]).await;
    ready_replicas(&client, 2).await;

    let snap = tmp.path().join("before.snap");
    let saved = wharf_ok(&kubeconfig, &["snapshot", "save", snap.to_str().unwrap()]).await;
    assert!(saved.starts_with("saved "), "{saved}");

    // After the snapshot: a pod that the restore must take away again.
    let extra = tmp.path().join("extra.yaml");
    // On a port of its own: a Deployment pod that later gets its freed address must not
    // pass for it.
    let extra_port = common::free_port();
    std::fs::write(&extra, common::hello_pod("extra", "n1", extra_port, "")).unwrap();
    wharf_ok(&kubeconfig, &["apply", "-f", extra.to_str().unwrap()]).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + common::POD_TIMEOUT;
    let extra_ip = loop {
        let pod = pods.get("extra").await.unwrap();
        if common::running(&pod)
            && pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .is_some()
        {
            break common::pod_ip(&pod);
        }
        assert!(Instant::now() < deadline, "pod extra not running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let extra_addr = std::net::SocketAddr::new(extra_ip, extra_port);
    common::http_ok(extra_addr, "/", common::POD_TIMEOUT).await;
    cp.terminate().await;

    // Refused, with nothing written: a data dir that still has its store, and a truncated
    // file.
    let restore = |file: std::path::PathBuf| {
        let data = data.clone();
        async move {
            common::wharf(
                std::path::Path::new("/nonexistent"),
                &[
                    "snapshot",
                    "restore",
                    file.to_str().unwrap(),
                    "--data-dir",
                    data.to_str().unwrap(),
                ],
            )
            .await
        }
    };
    let out = restore(snap.clone()).await;
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("exists"),
        "{}",
        out.stderr_text()
    );
    std::fs::rename(data.join("store"), tmp.path().join("store.old")).unwrap();
    let bytes = std::fs::read(&snap).unwrap();
    let truncated = tmp.path().join("truncated.snap");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    let out = restore(truncated).await;
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("truncated snapshot"),
        "{}",
        out.stderr_text()
    );
    assert!(
        !data.join("store").exists(),
        "a refused restore wrote a store"
    );
    let out = restore(snap.clone()).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    assert!(
        out.stdout_text().starts_with("restored "),
        "{}",
        out.stdout_text()
    );

    // The restored cluster, with scheduled snapshots on.
    let snaps = tmp.path().join("snaps");
    let cp = common::ControlProcess::start_on(
        &data,
        &listen,
        &[
            "--store",
            "fjall",
            "--snapshot-interval",
            "1h",
            "--snapshot-dir",
            snaps.to_str().unwrap(),
        ],
    )
    .await;
    let client = cp.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    assert!(pods.get_opt("extra").await.unwrap().is_none());
    // The node lists again (its resourceVersion is from before the restore) and stops the
    // pod that is no longer in the store.
    let deadline = Instant::now() + common::POD_TIMEOUT;
    while common::http_get(extra_addr, "/")
        .await
        .is_ok_and(|(_, body)| body.contains("hello from pod extra"))
    {
        assert!(
            Instant::now() < deadline,
            "pod extra still serving after the restore:\n{}",
            node.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ready_replicas(&client, 2).await;
    let running: Vec<Pod> = pods
        .list(&kube::api::ListParams::default().labels("app=hello"))
        .await
        .unwrap()
        .items;
    for pod in running.iter().filter(|p| common::running(p)) {
        common::http_ok(
            std::net::SocketAddr::new(common::pod_ip(pod), port),
            "/",
            common::POD_TIMEOUT,
        )
        .await;
    }

    // The first scheduled snapshot is taken at start; `ls` shows it.
    let deadline = Instant::now() + common::TIMEOUT;
    let listed = loop {
        let out = wharf_ok(
            &cp.kubeconfig(),
            &["snapshot", "ls", "--snapshot-dir", snaps.to_str().unwrap()],
        )
        .await;
        if out.lines().count() > 1 {
            break out;
        }
        assert!(Instant::now() < deadline, "no scheduled snapshot: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(listed.contains("wharf-snapshot-"), "{listed}");
    assert!(!listed.contains("unusable"), "{listed}");
    drop(node);
    cp.terminate().await;
}
