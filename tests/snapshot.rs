//! Backups end to end, on both backends, with the same cluster and the same checks:
//! a Deployment running on node n1, a backup taken, then a pod made and node n2 joined
//! after it; the control plane stopped, its store restored from the backup and the
//! control plane started again. The cluster must come back to the backup: the pod made
//! after it is gone from the API and stopped on its node, the Deployment (the same
//! object) keeps running and answering, and n2, which joined after the backup, registers
//! again by itself.
//!
//! - Embedded store: `wharf snapshot save` from the running cluster and `wharf snapshot
//!   restore` into its data dir (refusing a truncated file and an existing store first).
//!   The restarted control plane also takes scheduled snapshots (`--snapshot-interval`),
//!   which `wharf snapshot ls` lists.
//! - etcd: `etcdctl snapshot save` from the running etcd and `etcdctl snapshot restore`
//!   into a new one, as the README shows an operator.

#![allow(clippy::unwrap_used)]

mod common;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use std::net::SocketAddr;
use std::path::Path;
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

/// The cluster as the backup has it: node n1 running Deployment hello (2 replicas on
/// `port`).
struct Backed {
    node: common::NodeProcess,
    port: u16,
    deployment: Deployment,
}

async fn cluster_to_back_up(tmp: &Path, cp: &common::ControlProcess) -> Backed {
    let kubeconfig = cp.kubeconfig();
    let client = cp.client().await;
    let node =
        common::NodeProcess::start(tmp, &kubeconfig, "n1", "127.0.0.1".parse().unwrap(), &[]).await;
    let port = common::free_port();
    let manifest = tmp.join("hello.yaml");
    std::fs::write(&manifest, common::hello_deployment("hello", 2, port)).unwrap();
    wharf_ok(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]).await;
    ready_replicas(&client, 2).await;
    let deployment = Api::<Deployment>::namespaced(client, "default")
        .get("hello")
        .await
        .unwrap();
    Backed {
        node,
        port,
        deployment,
    }
}

/// What happens after the backup, for the restore to undo: pod extra running on n1
/// (its address returned) and node n2 joined.
async fn changes_after_the_backup(
    tmp: &Path,
    cp: &common::ControlProcess,
) -> (SocketAddr, common::NodeProcess) {
    let kubeconfig = cp.kubeconfig();
    let client = cp.client().await;
    let extra = tmp.join("extra.yaml");
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
    let extra_addr = SocketAddr::new(extra_ip, extra_port);
    common::http_ok(extra_addr, "/", common::POD_TIMEOUT).await;
    let n2 =
        common::NodeProcess::start(tmp, &kubeconfig, "n2", "127.0.0.1".parse().unwrap(), &[]).await;
    common::wait_node_ready(&client, "n2", common::TIMEOUT).await;
    (extra_addr, n2)
}

/// The restored cluster is the backed-up one: see the module doc.
async fn check_restored(
    cp: &common::ControlProcess,
    backed: &Backed,
    extra_addr: SocketAddr,
    n2: &common::NodeProcess,
) {
    let client = cp.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    assert!(pods.get_opt("extra").await.unwrap().is_none());
    let deployment = Api::<Deployment>::namespaced(client.clone(), "default")
        .get("hello")
        .await
        .unwrap();
    assert_eq!(deployment.metadata.uid, backed.deployment.metadata.uid);
    assert_eq!(deployment.spec, backed.deployment.spec);
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
            backed.node.log_tail(30)
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
            SocketAddr::new(common::pod_ip(pod), backed.port),
            "/",
            common::POD_TIMEOUT,
        )
        .await;
    }
    // n2 joined after the backup: its Node is not in the restored store, and the node
    // registers again without a restart.
    let nodes: Api<Node> = Api::all(client);
    let deadline = Instant::now() + common::POD_TIMEOUT;
    loop {
        let ready = nodes.get_opt("n2").await.unwrap().is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n2 did not register again:\n{}",
            n2.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_restored_wharf_snapshot_brings_the_cluster_back_and_nodes_stop_pods_made_after_it() {
    common::build_samples().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("control");
    let listen = format!("127.0.0.1:{}", common::free_port());
    let flags = ["--store", "fjall"];
    let cp = common::ControlProcess::start_on(&data, &listen, &flags).await;
    let kubeconfig = cp.kubeconfig();
    let backed = cluster_to_back_up(tmp.path(), &cp).await;

    let snap = tmp.path().join("before.snap");
    let saved = wharf_ok(&kubeconfig, &["snapshot", "save", snap.to_str().unwrap()]).await;
    assert!(saved.starts_with("saved "), "{saved}");

    let (extra_addr, n2) = changes_after_the_backup(tmp.path(), &cp).await;
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
    check_restored(&cp, &backed, extra_addr, &n2).await;

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
    drop((backed, n2));
    cp.terminate().await;
}

/// The same on etcd, with the operator's tools: `etcdctl snapshot save` from the running
/// etcd, `etcdctl snapshot restore` into a new one (a new cluster: the control plane
/// sees it and moves its revisions past every earlier one, so that the nodes list again).
#[tokio::test]
async fn an_etcdctl_snapshot_restored_into_a_new_etcd_brings_the_cluster_back() {
    use wharf_control::store::local_etcd::LocalEtcd;
    common::build_samples().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("control");
    let listen = format!("127.0.0.1:{}", common::free_port());
    let etcd = tokio::task::spawn_blocking(LocalEtcd::start)
        .await
        .unwrap()
        .unwrap();
    let flags = |url: &str| {
        vec![
            "--store".to_string(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            url.to_string(),
        ]
    };
    let first = flags(&etcd.client_url);
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let cp = common::ControlProcess::start_on(&data, &listen, &first).await;
    let backed = cluster_to_back_up(tmp.path(), &cp).await;
    let snapshot = tmp.path().join("etcd.snap");
    let saved = tokio::time::timeout(
        common::TIMEOUT,
        tokio::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.client_url, "snapshot", "save"])
            .arg(&snapshot)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let (extra_addr, n2) = changes_after_the_backup(tmp.path(), &cp).await;
    cp.terminate().await;
    tokio::task::spawn_blocking(move || drop(etcd))
        .await
        .unwrap();

    let snap = snapshot.clone();
    let restored = tokio::task::spawn_blocking(move || LocalEtcd::restored(&snap))
        .await
        .unwrap()
        .unwrap();
    let second = flags(&restored.client_url);
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let cp = common::ControlProcess::start_on(&data, &listen, &second).await;
    check_restored(&cp, &backed, extra_addr, &n2).await;
    drop((backed, n2));
    cp.terminate().await;
    tokio::task::spawn_blocking(move || drop(restored))
        .await
        .unwrap();
}
