//! End-to-end: `kubectl port-forward` (the WebSocket `SPDY/3.1+portforward.k8s.io`
//! protocol of kubectl 1.30+) to a hello-http pod and to its Service, carrying 1,000 HTTP
//! requests, several ports at once, and an error for a port nothing listens on; and the
//! SPDY/3.1 upgrade kubectl falls back to; and to a pod on a node at another address than
//! the API server's (another machine), through that node's tunnel.
#![allow(clippy::unwrap_used)]

mod common;

use common::kubectl::Kubectl;
use common::{
    Cluster, ControlProcess, NodeProcess, POD_TIMEOUT, TIMEOUT, build_samples, counter, free_port,
    http_get, http_ok, sample, wait_node_ready, wharf,
};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// `kubectl port-forward ARGS...`, once it printed a `Forwarding from` line per port;
/// over SPDY (kubectl's fallback) instead of WebSocket with `spdy`.
async fn port_forward(k: &Kubectl<'_>, args: &[&str], ports: usize, spdy: bool) -> Child {
    let mut full = vec!["port-forward"];
    full.extend_from_slice(args);
    let mut child = k
        .command(&full)
        .env(
            "KUBECTL_PORT_FORWARD_WEBSOCKETS",
            if spdy { "false" } else { "true" },
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = 0;
    tokio::time::timeout(POD_TIMEOUT, async {
        while seen < ports {
            let line = lines.next_line().await.unwrap().unwrap_or_else(|| {
                panic!("kubectl port-forward {args:?} exited before forwarding")
            });
            if line.starts_with("Forwarding from 127.0.0.1") {
                seen += 1;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("kubectl port-forward {args:?} did not start"));
    // Keep draining stdout ("Handling connection for ...") so kubectl never blocks.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

async fn requests(addr: SocketAddr, n: usize) {
    for i in 0..n {
        let (code, body) = http_get(addr, "/")
            .await
            .unwrap_or_else(|e| panic!("request {i} through {addr}: {e}"));
        assert_eq!(code, 200, "request {i}: {body}");
        assert!(body.contains("hello"), "request {i}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_to_a_pod_and_a_service() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 1).await;
    let k = Kubectl {
        kubeconfig: &cluster.kubeconfig,
    };
    let port = free_port();
    let manifest = dir.path().join("hello.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: hello
  labels: {{app: hello}}
spec:
  containers:
    - name: hello
      image: {image}
      ports:
        - {{containerPort: {port}, name: http}}
---
apiVersion: v1
kind: Service
metadata:
  name: hello
spec:
  selector: {{app: hello}}
  ports:
    - {{name: web, port: 80, targetPort: http}}
",
            image = sample("hello-http", "hello_http")
        ),
    )
    .unwrap();
    k.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/hello",
        "--timeout=120s",
    ])
    .await;

    // A pod, three port pairs at once: two to the served port, one to a port nothing
    // listens on.
    let (local, local2, closed_local) = (free_port(), free_port(), free_port());
    let closed = free_port();
    let mut pf = port_forward(
        &k,
        &[
            "pod/hello",
            &format!("{local}:{port}"),
            &format!("{local2}:{port}"),
            &format!("{closed_local}:{closed}"),
        ],
        3,
        false,
    )
    .await;
    let addr = SocketAddr::from(([127, 0, 0, 1], local));
    let addr2 = SocketAddr::from(([127, 0, 0, 1], local2));
    http_ok(addr, "/", Duration::from_secs(30)).await;
    requests(addr, 500).await;
    requests(addr2, 500).await;
    // The closed port: the local connection ends without an answer and kubectl reports
    // the error the server wrote on the error stream (kubectl 1.32 then ends the session).
    let closed_addr = SocketAddr::from(([127, 0, 0, 1], closed_local));
    assert!(
        !matches!(http_get(closed_addr, "/").await, Ok((200, _))),
        "a closed port answers nothing"
    );
    let mut stderr = BufReader::new(pf.stderr.take().unwrap()).lines();
    let reported = tokio::time::timeout(POD_TIMEOUT, async {
        let mut seen = String::new();
        while let Ok(Some(line)) = stderr.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(&format!("{closed_local} -> {closed}"))
                && line.contains("failed to connect")
            {
                return Ok(seen);
            }
        }
        Err(seen)
    })
    .await;
    assert!(
        matches!(reported, Ok(Ok(_))),
        "kubectl reports the closed port: {reported:?}"
    );
    pf.start_kill().unwrap();
    let _ = pf.wait().await;

    // The Service: kubectl resolves it to the pod and the named target port.
    let svc_local = free_port();
    let mut pf = port_forward(&k, &["svc/hello", &format!("{svc_local}:80")], 1, false).await;
    requests(SocketAddr::from(([127, 0, 0, 1], svc_local)), 1000).await;
    pf.start_kill().unwrap();
    let _ = pf.wait().await;

    // The SPDY/3.1 upgrade, which kubectl falls back to (and older kubectls only speak).
    let spdy_local = free_port();
    let pf = port_forward(
        &k,
        &["-v=6", "pod/hello", &format!("{spdy_local}:{port}")],
        1,
        true,
    )
    .await;
    requests(SocketAddr::from(([127, 0, 0, 1], spdy_local)), 200).await;
    let pid = pf.id().unwrap().to_string();
    tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), pf.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.lines().any(|l| l.contains(r#"verb="POST""#)
            && l.contains("/portforward")
            && l.contains("101 Switching Protocols")),
        "kubectl used the SPDY upgrade: {log}"
    );
}

/// The API server listens on 127.0.0.1 and the pod's node is at 127.0.0.2 with a tunnel:
/// two machines as far as addresses tell. kubectl port-forward reaches the pod through
/// the node's tunnel, as the node's tunnel counters show, over WebSocket and SPDY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_to_a_pod_on_another_machine_goes_through_its_tunnel() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(&dir.path().join("control")).await;
    let join = dir.path().join("node.kubeconfig");
    let out = wharf(
        &cp.kubeconfig(),
        &[
            "token",
            "create",
            "--kubeconfig-out",
            join.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr_text());
    let node = NodeProcess::start(dir.path(), &join, "remote", [127, 0, 0, 2].into(), &[]).await;
    assert!(node.tunnel_addr.is_some(), "{}", node.log_tail(20));
    wait_node_ready(&cp.client().await, "remote", TIMEOUT).await;
    let kubeconfig = cp.kubeconfig();
    let k = Kubectl {
        kubeconfig: &kubeconfig,
    };
    let port = free_port();
    let manifest = dir.path().join("hello.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: hello
spec:
  nodeName: remote
  containers:
    - name: hello
      image: {image}
      ports:
        - {{containerPort: {port}}}
",
            image = sample("hello-http", "hello_http")
        ),
    )
    .unwrap();
    k.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/hello",
        "--timeout=120s",
    ])
    .await;

    const TUNNEL_OK: &str = "wharf_tunnel_connections_total{result=\"ok\"}";
    for spdy in [false, true] {
        let before = counter(&node.metrics().await, TUNNEL_OK);
        let local = free_port();
        let mut pf = port_forward(&k, &["pod/hello", &format!("{local}:{port}")], 1, spdy).await;
        let addr = SocketAddr::from(([127, 0, 0, 1], local));
        http_ok(addr, "/", Duration::from_secs(30)).await;
        requests(addr, 100).await;
        let after = counter(&node.metrics().await, TUNNEL_OK);
        assert!(
            after > before,
            "spdy={spdy}: the node's tunnel was not used ({before} -> {after})\n{}",
            node.log_tail(20)
        );
        pf.start_kill().unwrap();
        let _ = pf.wait().await;
    }
}
