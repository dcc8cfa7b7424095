//! End-to-end with the real kubectl: the built-in kinds clients rely on beyond the
//! workloads: a ReplicationController with its pods and `kubectl scale rc`, a
//! `type: LoadBalancer` Service whose ingress address answers from outside the cluster
//! (the node address and the Service port, as k3s's ServiceLB gives),
//! `kubectl get apiservices`, `kubectl explain` for every kind, and `kubectl attach`
//! reading a ticker's output, and `kubectl attach -i` writing to a guest's stdin.
#![allow(clippy::unwrap_used)]

mod common;

use common::kubectl::Kubectl;
use common::{Cluster, build_samples, free_port, http_get, sample, within};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

fn manifests(image: &str, pod_port: u16, lb_port: u16) -> String {
    format!(
        "apiVersion: v1
kind: ReplicationController
metadata:
  name: web
spec:
  replicas: 1
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: hello
        image: {image}
        ports:
        - containerPort: {pod_port}
          name: http
        env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
---
apiVersion: v1
kind: Service
metadata:
  name: web-lb
spec:
  type: LoadBalancer
  selector:
    app: web
  ports:
  - name: http
    port: {lb_port}
    targetPort: http
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_controllers_load_balancers_and_apiservices() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 1).await;
    let k = Kubectl {
        kubeconfig: &cluster.kubeconfig,
    };
    let (pod_port, lb_port) = (free_port(), free_port());
    let manifest = dir.path().join("web.yaml");
    std::fs::write(
        &manifest,
        manifests(&sample("hello-http", "hello_http"), pod_port, lb_port),
    )
    .unwrap();
    let out = k.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    assert!(out.contains("replicationcontroller/web created"), "{out}");
    assert!(out.contains("service/web-lb created"), "{out}");

    // The ReplicationController's pod runs, and `kubectl scale rc` adds two.
    k.until(&["get", "rc", "web"], |t| {
        t.lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().collect::<Vec<_>>()[1..4] == ["1", "1", "1"])
    })
    .await;
    let out = k.ok(&["scale", "rc", "web", "--replicas=3"]).await;
    assert!(out.contains("replicationcontroller/web scaled"), "{out}");
    k.until(&["get", "rc", "web", "-o", "wide"], |t| {
        t.lines().nth(1).is_some_and(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells[1..4] == ["3", "3", "3"] && l.contains("app=web")
        })
    })
    .await;
    let pods = k
        .ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.ownerReferences[0].kind}",
        ])
        .await;
    assert_eq!(
        pods.split_whitespace().collect::<Vec<_>>(),
        ["ReplicationController"; 3]
    );

    // The LoadBalancer Service: its ingress is the node's address, and that address and
    // the Service port reach a pod.
    let ip = k
        .until(
            &[
                "get",
                "svc",
                "web-lb",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ],
            |ip| !ip.trim().is_empty(),
        )
        .await;
    let svc = k.ok(&["get", "svc", "web-lb"]).await;
    assert!(
        svc.contains(ip.trim()),
        "EXTERNAL-IP shows the ingress:\n{svc}"
    );
    let addr: SocketAddr = format!("{}:{lb_port}", ip.trim()).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match within("GET through the load balancer", http_get(addr, "/")).await {
            Ok((200, body)) if body.contains("hello from pod web-") => break,
            other => assert!(
                Instant::now() < deadline,
                "{addr} never answered: {other:?}\n{}",
                cluster.log_tail(30)
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // APIServices: one local, available APIService per served group/version.
    let out = k
        .until(&["get", "apiservices"], |t| {
            t.lines().any(|l| l.starts_with("v1.apps ")) && t.lines().any(|l| l.starts_with("v1 "))
        })
        .await;
    let apps = out.lines().find(|l| l.starts_with("v1.apps ")).unwrap();
    assert_eq!(
        apps.split_whitespace().collect::<Vec<_>>()[1..3],
        ["Local", "True"],
        "{out}"
    );
    for gv in [
        "v1.apiregistration.k8s.io",
        "v1.rbac.authorization.k8s.io",
        "v1.batch",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{gv} "))),
            "{gv}:\n{out}"
        );
    }
    // `kubectl explain` for every kind, from the OpenAPI v3 documents, nested fields too.
    let kinds = k.ok(&["api-resources", "--no-headers", "-o", "name"]).await;
    let mut explained = 0;
    for resource in kinds.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // `nodes.metrics.k8s.io` would read as the field path `metrics.k8s.io` of core
        // nodes: kubectl explains a resource of another group by `--api-version`.
        let out = match resource.strip_suffix(".metrics.k8s.io") {
            Some(base) => {
                k.ok(&["explain", base, "--api-version=metrics.k8s.io/v1beta1"])
                    .await
            }
            None => k.ok(&["explain", resource]).await,
        };
        assert!(
            out.contains("KIND:") && out.contains("FIELDS:") && out.contains("metadata"),
            "explain {resource}:\n{out}"
        );
        explained += 1;
    }
    assert!(explained >= 20, "{kinds}");
    for (path, needle) in [
        (
            "deployment.spec.template",
            "FIELD: template <PodTemplateSpec>",
        ),
        (
            "deployment.spec.template.spec.containers.image",
            "FIELD: image <string>",
        ),
        ("rc.spec.selector", "FIELD: selector <map[string]string>"),
        (
            "apiservices.spec.groupPriorityMinimum",
            "FIELD: groupPriorityMinimum <integer>",
        ),
        (
            "svc.status.loadBalancer.ingress",
            "FIELD: ingress <[]LoadBalancerIngress>",
        ),
    ] {
        let out = k.ok(&["explain", path]).await;
        assert!(out.contains(needle), "explain {path}:\n{out}");
    }
    cluster.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_attach_reads_a_tickers_output() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 1).await;
    let k = Kubectl {
        kubeconfig: &cluster.kubeconfig,
    };
    let manifest = dir.path().join("ticker.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: ticker
spec:
  containers:
  - name: ticker
    image: {}
    env:
    - name: INTERVAL_MS
      value: \"200\"
",
            sample("ticker", "ticker")
        ),
    )
    .unwrap();
    k.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/ticker",
        "--timeout=60s",
    ])
    .await;
    let mut attach = k
        .command(&["attach", "ticker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(attach.stdout.take().unwrap()).lines();
    // Ticks that come after attaching, in order.
    let ticks: Vec<u64> = within("ticks through kubectl attach", async {
        let mut ticks = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(n) = line.trim().strip_prefix("tick ") {
                ticks.push(n.parse::<u64>().unwrap());
                if ticks.len() == 3 {
                    return ticks;
                }
            }
        }
        let mut err = String::new();
        use tokio::io::AsyncReadExt as _;
        attach
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        panic!("kubectl attach ended after {ticks:?}: {err}");
    })
    .await;
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
    attach.kill().await.unwrap();
    // Standard input is not connected to a wasm guest: `-i` is refused, saying so.
    let r = k.run(&["attach", "-i", "ticker"]).await;
    assert!(
        !r.ok && r.stderr.contains("standard input is not connected"),
        "{}",
        r.stderr
    );
    cluster.terminate().await;
}

/// `kubectl attach -i` to a command started with `stdin: true`: a line sent reaches the
/// guest's standard input and its echo comes back on the attach's output; closing
/// kubectl's stdin ends the guest's (`stdinOnce`), which then ends, and so does the attach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_attach_i_writes_to_a_guests_stdin() {
    use tokio::io::AsyncWriteExt as _;
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 1).await;
    let k = Kubectl {
        kubeconfig: &cluster.kubeconfig,
    };
    let manifest = dir.path().join("echo.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: echo
spec:
  restartPolicy: Never
  containers:
  - name: echo
    image: {}
    stdin: true
    stdinOnce: true
",
            sample("echo", "echo")
        ),
    )
    .unwrap();
    k.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    k.ok(&["wait", "--for=condition=Ready", "pod/echo", "--timeout=60s"])
        .await;
    let mut attach = k
        .command(&["attach", "-i", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = attach.stdin.take().unwrap();
    let mut lines = BufReader::new(attach.stdout.take().unwrap()).lines();
    input.write_all(b"hello wharf\n").await.unwrap();
    input.flush().await.unwrap();
    let mut seen = Vec::new();
    within("the echo through kubectl attach -i", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.trim() == "echo: hello wharf";
            seen.push(line);
            if done {
                return;
            }
        }
        panic!("kubectl attach ended before the echo: {seen:?}");
    })
    .await;
    // kubectl's stdin ends: so does the guest's (stdinOnce), and then the guest.
    drop(input);
    within("the guest's end of input", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.trim() == "echo: end of input" {
                return;
            }
        }
        panic!("kubectl attach ended before the guest's end of input");
    })
    .await;
    let out = within("kubectl attach exits", attach.wait_with_output())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.terminate().await;
}
