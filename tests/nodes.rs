//! End-to-end: nodes as processes and as machines. `wharf up` killed with SIGKILL and
//! started again on its data dir brings its pods back at their addresses; two nodes in one
//! `wharf up` get distinct pod ranges, and their pods reach each other (outgoing
//! `wasi:http` requests, allowed by the pods' `wharf.dev/allow-hosts` annotation) as well
//! as being reached from the host.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    Cluster, POD_TIMEOUT, TIMEOUT, build_samples, free_port, hello_pod, http_ok, pod_ip,
    restart_count, running, within,
};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use std::net::{IpAddr, SocketAddr};

/// Whether `ip` lies in the IPv4 network `cidr`.
fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap();
    let (IpAddr::V4(ip), Ok(net), Ok(len)) =
        (ip, net.parse::<std::net::Ipv4Addr>(), len.parse::<u32>())
    else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

#[tokio::test]
async fn pods_come_back_after_wharf_up_is_killed() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::up(dir.path(), 1).await;
    let port = free_port();
    cluster
        .apply("web.yaml", &hello_pod("web", "node-1", port, ""))
        .await;
    let pod = cluster
        .wait_pod("web", "Running", POD_TIMEOUT, running)
        .await;
    let addr = SocketAddr::new(pod_ip(&pod), port);
    let body = http_ok(addr, "/", TIMEOUT).await;
    assert!(body.contains("request #1 "), "{body}");

    // No chance to stop anything: the guests end with the process.
    cluster.kill().await;
    let cluster = Cluster::up(dir.path(), 1).await;
    // The new agent adopts the pod: the instance that died with the old process counts as
    // a restart.
    let pod = cluster
        .wait_pod("web", "running again", POD_TIMEOUT, |p| {
            running(p) && restart_count(p) >= 1
        })
        .await;
    assert_eq!(pod_ip(&pod), addr.ip(), "the pod keeps its address");
    let body = http_ok(addr, "/", TIMEOUT).await;
    assert!(body.contains("hello from pod web on node node-1"), "{body}");
    // The pod's emptyDir outlived the process, as it outlives a container restart.
    assert!(body.contains("request #2 "), "{body}");
    cluster.terminate().await;
}

#[tokio::test]
async fn two_nodes_reach_each_others_pods() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 2).await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let cidr = |node: Node| node.spec.and_then(|s| s.pod_cidr).unwrap();
    let cidr_1 = cidr(within("get node", nodes.get("node-1")).await.unwrap());
    let cidr_2 = cidr(within("get node", nodes.get("node-2")).await.unwrap());
    assert_ne!(cidr_1, cidr_2);

    let port = free_port();
    // web-1 may call anything; web-2 only web-1 (known once web-1 has its address).
    cluster
        .apply(
            "web-1.yaml",
            &hello_pod("web-1", "node-1", port, r#"wharf.dev/allow-hosts: "*""#),
        )
        .await;
    let web_1 = cluster
        .wait_pod("web-1", "Running", POD_TIMEOUT, running)
        .await;
    let ip_1 = pod_ip(&web_1);
    cluster
        .apply(
            "web-2.yaml",
            &hello_pod(
                "web-2",
                "node-2",
                port,
                &format!(r#"wharf.dev/allow-hosts: "{ip_1}:{port}""#),
            ),
        )
        .await;
    let web_2 = cluster
        .wait_pod("web-2", "Running", POD_TIMEOUT, running)
        .await;
    let ip_2 = pod_ip(&web_2);
    assert!(in_cidr(ip_1, &cidr_1), "{ip_1} not in node-1's {cidr_1}");
    assert!(in_cidr(ip_2, &cidr_2), "{ip_2} not in node-2's {cidr_2}");

    // From the host.
    let body = http_ok(SocketAddr::new(ip_1, port), "/", TIMEOUT).await;
    assert!(
        body.contains("hello from pod web-1 on node node-1"),
        "{body}"
    );
    let body = http_ok(SocketAddr::new(ip_2, port), "/", TIMEOUT).await;
    assert!(
        body.contains("hello from pod web-2 on node node-2"),
        "{body}"
    );

    // From pod to pod, both ways.
    let body = http_ok(
        SocketAddr::new(ip_1, port),
        &format!("/fetch/{ip_2}:{port}/"),
        TIMEOUT,
    )
    .await;
    assert!(
        body.contains("upstream status 200")
            && body.contains("hello from pod web-2 on node node-2"),
        "{body}"
    );
    let body = http_ok(
        SocketAddr::new(ip_2, port),
        &format!("/fetch/{ip_1}:{port}/"),
        TIMEOUT,
    )
    .await;
    assert!(
        body.contains("upstream status 200")
            && body.contains("hello from pod web-1 on node node-1"),
        "{body}"
    );
    // web-2 may reach web-1 and nothing else (here: itself).
    let body = http_ok(
        SocketAddr::new(ip_2, port),
        &format!("/fetch/{ip_2}:{port}/"),
        TIMEOUT,
    )
    .await;
    assert!(
        body.contains("fetch failed") && !body.contains("hello from"),
        "{body}"
    );
    cluster.terminate().await;
}
