//! The control plane on etcd: a whole cluster (`wharf up`) whose state lives in Debian's
//! etcd, started by the test on loopback, runs a Deployment; the objects are in etcd under
//! the cluster's prefix and not in an embedded store.

#![allow(clippy::unwrap_used)]

mod common;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use std::time::Duration;
use wharf_control::store::{EtcdConfig, EtcdStore, Store as _};

#[tokio::test]
async fn a_deployment_runs_on_a_cluster_whose_control_plane_is_on_etcd() {
    common::build_samples().await;
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let flags = common::etcd_flags(&data_dir).await;
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = common::Cluster::up_with(tmp.path(), 2, &flags).await;
    let port = common::free_port();
    cluster
        .apply("hello.yaml", &common::hello_deployment("hello", 2, port))
        .await;
    let timeout = common::POD_TIMEOUT.as_secs().to_string() + "s";
    let out = cluster
        .wharf(&["rollout", "status", "deploy/hello", "--timeout", &timeout])
        .await;
    assert!(
        out.status.success(),
        "rollout status: {}{}\n--- wharf up log:\n{}",
        out.stdout_text(),
        out.stderr_text(),
        cluster.log_tail(30)
    );
    let pods = cluster
        .pods()
        .list(&ListParams::default().labels("app=hello"))
        .await
        .unwrap();
    let running: Vec<&Pod> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(running.len(), 2);
    for pod in running {
        let addr = std::net::SocketAddr::new(common::pod_ip(pod), port);
        common::http_ok(addr, "/", common::POD_TIMEOUT).await;
    }

    // The state is in etcd, under the cluster's prefix, and nowhere else.
    assert!(
        !data_dir.join("store").exists(),
        "no embedded store was opened"
    );
    let endpoint = flags[flags.iter().position(|f| *f == "--etcd-endpoints").unwrap() + 1];
    let mut config = EtcdConfig::new(vec![endpoint.to_owned()]);
    config.prefix = common::etcd_prefix(&data_dir);
    config.compaction_interval = None;
    let etcd = tokio::time::timeout(Duration::from_secs(20), EtcdStore::connect(config))
        .await
        .unwrap()
        .unwrap();
    let deployments = tokio::time::timeout(Duration::from_secs(20), etcd.list("apps/deployments/"))
        .await
        .unwrap()
        .unwrap();
    let keys: Vec<&str> = deployments.items.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["apps/deployments/default/hello"]);
    let pods = tokio::time::timeout(Duration::from_secs(20), etcd.list("core/pods/default/"))
        .await
        .unwrap()
        .unwrap();
    assert!(pods.items.len() >= 2, "{} pods in etcd", pods.items.len());
    cluster.terminate().await;
}

#[tokio::test]
async fn wharf_migrate_moves_a_fjall_cluster_into_etcd_with_its_objects_whole() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("control");
    let cp = common::ControlProcess::start_with(&data_dir, &["--store", "fjall"]).await;
    let configmaps: kube::Api<ConfigMap> = kube::Api::default_namespaced(cp.client().await);
    let mut made = Vec::new();
    for i in 0..3 {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("cm{i}"), "labels": {"n": i.to_string()}},
            "data": {"k": format!("v{i}")},
        }))
        .unwrap();
        made.push(configmaps.create(&Default::default(), &cm).await.unwrap());
    }
    cp.terminate().await;

    let flags = common::etcd_flags(&data_dir).await;
    let endpoint = &flags[flags.iter().position(|f| f == "--etcd-endpoints").unwrap() + 1];
    let prefix = common::etcd_prefix(&data_dir);
    let out = tokio::time::timeout(
        common::TIMEOUT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["migrate", "--from-data-dir"])
            .arg(&data_dir)
            .args(["--to-etcd", endpoint, "--etcd-prefix", &prefix])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("copied "));

    // The same data dir (credentials) on etcd: every object is there, whole.
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cp = common::ControlProcess::start_with(&data_dir, &flags).await;
    let configmaps: kube::Api<ConfigMap> = kube::Api::default_namespaced(cp.client().await);
    for before in made {
        let name = before.metadata.name.clone().unwrap();
        let after = configmaps.get(&name).await.unwrap();
        assert_eq!(after.data, before.data, "{name}");
        assert_eq!(after.metadata.labels, before.metadata.labels, "{name}");
        assert_eq!(after.metadata.uid, before.metadata.uid, "{name}");
        assert_eq!(
            after.metadata.creation_timestamp, before.metadata.creation_timestamp,
            "{name}"
        );
    }
    // A second migrate into the same prefix is refused: it would mix two clusters.
    let again = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["migrate", "--from-data-dir"])
        .arg(&data_dir)
        .args(["--to-etcd", endpoint, "--etcd-prefix", &prefix])
        .output();
    let again = tokio::time::timeout(common::TIMEOUT, again)
        .await
        .unwrap()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    cp.terminate().await;
}
