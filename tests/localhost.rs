//! End-to-end: the containers of one pod reach each other at `localhost:PORT`, as in
//! Kubernetes. Each hello-http container serves on the pod's IP at its own port; an
//! outgoing wasi:http request to `localhost`/`127.0.0.1` at a port the pod declares goes to
//! the pod's own IP, needs no `wharf.dev/allow-hosts` entry, and never reaches the host's
//! own 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Cluster, POD_TIMEOUT, TIMEOUT, build_samples, free_port, http_ok, pod_ip, sample};
use k8s_openapi::api::core::v1::Pod;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;

/// A pod of two hello-http containers, `front` on `front_port` and `back` on `back_port`,
/// each answering with its own name; no network access granted. `front` also declares
/// `idle_port`, which nothing serves.
fn two_container_pod(front_port: u16, back_port: u16, idle_port: u16) -> String {
    let image = sample("hello-http", "hello_http");
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: pair
spec:
  nodeName: node-1
  containers:
    - name: front
      image: {image}
      ports: [{{containerPort: {front_port}}}, {{containerPort: {idle_port}}}]
      env: [{{name: POD_NAME, value: front-container}}]
    - name: back
      image: {image}
      ports: [{{containerPort: {back_port}}}]
      env: [{{name: POD_NAME, value: back-container}}]
"#
    )
}

fn all_running(pod: &Pod) -> bool {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    statuses.is_some_and(|s| {
        s.len() == 2
            && s.iter()
                .all(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
    })
}

#[tokio::test]
async fn containers_of_a_pod_reach_each_other_at_localhost() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 1).await;
    let (front_port, back_port) = (free_port(), free_port());
    assert_ne!(front_port, back_port);
    // A host service on 0.0.0.0 answers on every loopback address, the pod's too.
    let wildcard = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let idle_port = wildcard.local_addr().unwrap().port();
    let wildcard_serving = tokio::spawn(async move {
        while let Ok((mut s, _)) = wildcard.accept().await {
            let _ = s
                .write_all(b"HTTP/1.0 200 OK\r\n\r\nthe host's wildcard secret")
                .await;
        }
    });
    cluster
        .apply(
            "pair.yaml",
            &two_container_pod(front_port, back_port, idle_port),
        )
        .await;
    let pod = cluster
        .wait_pod("pair", "running both containers", POD_TIMEOUT, all_running)
        .await;
    let ip = pod_ip(&pod);
    let front = SocketAddr::new(ip, front_port);
    let back = SocketAddr::new(ip, back_port);

    // Each container answers on its own port of the pod's address.
    let body = http_ok(back, "/", TIMEOUT).await;
    assert!(body.contains("hello from pod back-container"), "{body}");

    // front -> localhost:BACK is the back container, by any name of localhost.
    for host in ["localhost", "127.0.0.1"] {
        let body = http_ok(front, &format!("/fetch/{host}:{back_port}/x"), TIMEOUT).await;
        assert!(
            body.contains("upstream status 200")
                && body.contains("hello from pod back-container")
                && body.contains("path: /x"),
            "{host}: {body}"
        );
    }
    // And the other way round.
    let body = http_ok(back, &format!("/fetch/localhost:{front_port}/"), TIMEOUT).await;
    assert!(
        body.contains("upstream status 200") && body.contains("hello from pod front-container"),
        "{body}"
    );

    // The host's own 127.0.0.1 stays out of reach: a server there is never what
    // localhost means to a pod (no container of the pod declares that port: denied).
    let host_server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_port = host_server.local_addr().unwrap().port();
    let serving = tokio::spawn(async move {
        while let Ok((mut s, _)) = host_server.accept().await {
            let _ = s
                .write_all(b"HTTP/1.0 200 OK\r\n\r\nthe host's secret")
                .await;
        }
    });
    let body = http_ok(front, &format!("/fetch/localhost:{host_port}/"), TIMEOUT).await;
    assert!(
        body.contains("HttpRequestDenied") && !body.contains("the host's secret"),
        "{body}"
    );
    // A port the pod declares but no container serves: localhost does not go there (it
    // would be the host's service on 0.0.0.0).
    let body = http_ok(front, &format!("/fetch/localhost:{idle_port}/"), TIMEOUT).await;
    assert!(
        body.contains("HttpRequestDenied") && !body.contains("wildcard secret"),
        "{body}"
    );
    wildcard_serving.abort();
    // Other addresses still need the allow list.
    let body = http_ok(front, &format!("/fetch/127.0.0.2:{back_port}/"), TIMEOUT).await;
    assert!(body.contains("HttpRequestDenied"), "{body}");
    serving.abort();
    cluster.terminate().await;
}
