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

/// A Job's pod that runs `TICKS` ticks of `INTERVAL_MS` and exits 0.
fn ticking_job(name: &str, ticks: u32, interval_ms: u32) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: tick
          image: {image}
          env:
            - {{name: TICKS, value: "{ticks}"}}
            - {{name: INTERVAL_MS, value: "{interval_ms}"}}
"#,
        image = common::sample("ticker", "ticker")
    )
}

/// Polls `check` (bounded by `timeout`) until it answers true.
async fn poll_until<F, Fut>(what: &str, timeout: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A Job's pod ends while the control plane is stopped (issue 19): the node keeps the
/// status it could not write and writes it once the control plane is back, so the Job
/// completes. With `restart_node`, the node is also killed before the control plane
/// returns: the new node process reads how the container ended from its own records
/// instead of reporting it `Failed (the node agent restarted)`.
async fn job_completes_across_a_control_plane_outage(restart_node: bool) {
    use common::{ControlProcess, NodeProcess};
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ListParams;
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let cp_dir = dir.path().join("cp");
    let mut cp = ControlProcess::start_on(&cp_dir, &listen, &[]).await;
    let kubeconfig = cp.kubeconfig();
    let node_addr: IpAddr = "127.0.0.1".parse().unwrap();
    let mut node = NodeProcess::start(dir.path(), &kubeconfig, "n1", node_addr, &[]).await;
    let client = cp.client().await;
    common::wait_node_ready(&client, "n1", TIMEOUT).await;

    let manifest = dir.path().join("job.yaml");
    std::fs::write(&manifest, ticking_job("ticks", 30, 100)).unwrap();
    let out = common::wharf(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let selector = ListParams::default().labels("job-name=ticks");
    poll_until("the job's pod runs", POD_TIMEOUT, || async {
        pods.list(&selector)
            .await
            .is_ok_and(|l| l.items.iter().any(running))
    })
    .await;

    // The control plane goes away; the pod finishes (3 s of ticks) while it is away.
    cp.kill().await;
    poll_until("the container ends on the node", TIMEOUT, || async {
        node.log_tail(200).contains("container ended")
    })
    .await;
    if restart_node {
        node.child.start_kill().unwrap();
        within("the node exits", node.child.wait()).await.unwrap();
    }

    let cp = ControlProcess::start_on(&cp_dir, &listen, &[]).await;
    let _node = if restart_node {
        Some(NodeProcess::start(dir.path(), &kubeconfig, "n1", node_addr, &[]).await)
    } else {
        None
    };
    let client = cp.client().await;
    let jobs: Api<Job> = Api::default_namespaced(client.clone());
    poll_until("the job completes", POD_TIMEOUT, || async {
        jobs.get("ticks").await.is_ok_and(|j| {
            j.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        })
    })
    .await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod = pods.list(&selector).await.unwrap().items.remove(0);
    assert_eq!(common::phase(&pod), "Succeeded");
    let terminated = common::container(&pod)
        .and_then(|c| c.state.clone())
        .and_then(|s| s.terminated)
        .expect("a terminated container");
    assert_eq!(terminated.exit_code, 0);
    assert_eq!(terminated.reason.as_deref(), Some("Completed"));
}

#[tokio::test]
async fn a_job_that_ends_while_the_control_plane_is_down_completes_when_it_returns() {
    job_completes_across_a_control_plane_outage(false).await;
}

#[tokio::test]
async fn a_restarted_node_reports_how_a_container_ended_while_the_control_plane_was_down() {
    job_completes_across_a_control_plane_outage(true).await;
}

/// The control plane goes away (SIGKILL) for a few seconds: the node's pods keep serving,
/// the node logs the outage once rather than a warning per failed call (issue 19), and
/// when the control plane returns the node says so and its pod is still Running.
#[tokio::test]
async fn pods_keep_serving_while_the_control_plane_is_away() {
    use common::{ControlProcess, NodeProcess};
    use k8s_openapi::api::core::v1::Pod;
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let cp_dir = dir.path().join("cp");
    let mut cp = ControlProcess::start_on(&cp_dir, &listen, &[]).await;
    let kubeconfig = cp.kubeconfig();
    let node_addr: IpAddr = "127.0.0.1".parse().unwrap();
    let node = NodeProcess::start(dir.path(), &kubeconfig, "n1", node_addr, &[]).await;
    let client = cp.client().await;
    common::wait_node_ready(&client, "n1", TIMEOUT).await;
    let port = free_port();
    let manifest = dir.path().join("web.yaml");
    std::fs::write(&manifest, hello_pod("web", "n1", port, "")).unwrap();
    let out = common::wharf(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    poll_until("the pod runs", POD_TIMEOUT, || async {
        pods.get("web").await.is_ok_and(|p| running(&p))
    })
    .await;
    let addr = SocketAddr::new(pod_ip(&pods.get("web").await.unwrap()), port);
    http_ok(addr, "/", TIMEOUT).await;

    cp.kill().await;
    // Three seconds of outage, the pod answering all along. The first second has the
    // one-time noise of every open watch breaking; after it, the node must stay quiet
    // (it logged ~11 warnings a second before).
    let outage = tokio::time::Instant::now();
    let mut warnings_after_1s = None;
    while outage.elapsed() < std::time::Duration::from_secs(4) {
        let body = http_ok(addr, "/", TIMEOUT).await;
        assert!(body.contains("hello from pod web"), "{body}");
        if warnings_after_1s.is_none() && outage.elapsed() >= std::time::Duration::from_secs(1) {
            warnings_after_1s = Some(node.log_tail(100_000).matches(" WARN ").count());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let log = node.log_tail(100_000);
    let warnings = log.matches(" WARN ").count() - warnings_after_1s.unwrap();
    assert_eq!(
        log.matches("control plane unreachable since").count(),
        1,
        "{}",
        node.log_tail(40)
    );
    assert!(
        warnings <= 2,
        "{warnings} warnings in 3 s of outage:\n{}",
        node.log_tail(40)
    );

    let cp = ControlProcess::start_on(&cp_dir, &listen, &[]).await;
    poll_until("the node sees the control plane again", TIMEOUT, || async {
        node.log_tail(100_000)
            .contains("control plane reachable again after")
    })
    .await;
    let client = cp.client().await;
    let pods: Api<Pod> = Api::default_namespaced(client);
    let pod = pods.get("web").await.unwrap();
    assert!(running(&pod), "{:?}", pod.status);
    assert_eq!(common::restart_count(&pod), 0);
    http_ok(addr, "/", TIMEOUT).await;
}

/// The hard limit on open files of this process, which a `wharf` started from it inherits
/// and raises its soft limit to.
fn hard_open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    match line.split_whitespace().nth(4).unwrap() {
        "unlimited" => u64::MAX,
        n => n.parse().unwrap(),
    }
}

/// A node advertises the pods its machine can hold (its open files limit and memory)
/// unless `--max-pods` says otherwise, and the scheduler keeps to it: with one pod on a
/// node of `--max-pods 1` the next is Pending with "Too many pods", and goes to a node
/// that has room once one joins.
#[tokio::test]
async fn a_node_advertises_the_pods_it_can_hold() {
    use common::{ControlProcess, NodeProcess};
    use k8s_openapi::api::core::v1::Pod;
    use wharf_node::agent::node_object::{host_memory_bytes, pods_capacity};
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(&dir.path().join("cp")).await;
    let kubeconfig = cp.kubeconfig();
    let client = cp.client().await;
    let _n1 = NodeProcess::start(
        dir.path(),
        &kubeconfig,
        "n1",
        "127.0.0.1".parse().unwrap(),
        &["--max-pods", "1"],
    )
    .await;
    common::wait_node_ready(&client, "n1", TIMEOUT).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods_capacity_of = |n: Node| {
        n.status
            .and_then(|s| s.capacity)
            .and_then(|c| c.get("pods").map(|q| q.0.clone()))
    };
    assert_eq!(
        pods_capacity_of(nodes.get("n1").await.unwrap()).as_deref(),
        Some("1")
    );
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n    - {{name: hello, image: {}}}\n",
            common::sample("hello-http", "hello_http")
        )
    };
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    for name in ["first", "second"] {
        let manifest = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&manifest, pod(name)).unwrap();
        let out = common::wharf(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]).await;
        assert!(out.status.success(), "{}", out.stderr_text());
        if name == "first" {
            poll_until("the first pod runs on n1", POD_TIMEOUT, || async {
                pods.get("first").await.is_ok_and(|p| running(&p))
            })
            .await;
        }
    }
    poll_until("the second pod Pending: Too many pods", TIMEOUT, || async {
        pods.get("second").await.is_ok_and(|p| {
            p.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.message.as_deref().unwrap_or("").contains("Too many pods")
                })
        })
    })
    .await;

    // A node without the flag advertises what this machine allows.
    let _n2 = NodeProcess::start(
        dir.path(),
        &kubeconfig,
        "n2",
        "127.0.0.2".parse().unwrap(),
        &[],
    )
    .await;
    common::wait_node_ready(&client, "n2", TIMEOUT).await;
    let expected = pods_capacity(
        hard_open_files_limit(),
        host_memory_bytes().saturating_sub(256 << 20),
    );
    assert_eq!(
        pods_capacity_of(nodes.get("n2").await.unwrap()),
        Some(expected.to_string())
    );
    poll_until("the second pod runs on n2", POD_TIMEOUT, || async {
        pods.get("second")
            .await
            .is_ok_and(|p| running(&p) && p.spec.and_then(|s| s.node_name).as_deref() == Some("n2"))
    })
    .await;
}
