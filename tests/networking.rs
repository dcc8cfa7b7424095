//! End-to-end: Services through the node proxy and the cluster DNS, with the real `wharf`
//! binary (`wharf up`) running the sample guests as pods.
//!
//! Most tests drive the proxy and DNS with EndpointSlices they write themselves, for
//! Services without a selector (as a user can for endpoints of their own): the endpoints
//! controller leaves those alone, so the tests exercise the node side exactly, including
//! the terminating state and the order of changes. One test relies on the controller for a
//! Service with a selector. Pods name their node (`spec.nodeName`) and get a free
//! `containerPort` each: clusters that run at the same time hand out the same pod
//! addresses. Every wait is bounded; nothing sleeps to wait for a state.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Cluster, POD_TIMEOUT, TIMEOUT, build_samples, free_port, http_get, pod_ip, running};
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// A `wharf up` cluster, with where its API server, node servers and DNS listen.
struct Net {
    cluster: Cluster,
    api: SocketAddr,
    node_servers: Vec<SocketAddr>,
    dns: Vec<SocketAddr>,
}

/// `wharf up --nodes N` on port 0 with `extra` flags (default: DNS on a free port of its
/// own per node, external names refused).
async fn up(dir: &Path, nodes: u32, extra: &[&str]) -> Net {
    let data_dir = dir.join("data");
    let log_path = dir.join("wharf-up.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut args: Vec<String> = [
        "up",
        "--listen",
        "127.0.0.1:0",
        "--backoff",
        "200ms",
        "--nodes",
        &nodes.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !extra.contains(&"--dns-listen") {
        args.extend(["--dns-listen".into(), "127.0.0.1:0".into()]);
    }
    if !extra.contains(&"--dns-external") {
        args.extend(["--dns-external".into(), "refuse".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(common::store_flags(&data_dir, extra).await);
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(&args)
        .arg("--data-dir")
        .arg(&data_dir)
        .env("RUST_LOG", "info,wharf_node::proxy=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let kubeconfig = tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(path) = line.strip_prefix("export KUBECONFIG=") {
                return PathBuf::from(path.trim());
            }
        }
        panic!(
            "wharf up exited before it was ready:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    })
    .await
    .expect("wharf up was not ready in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    // Everything it printed on stderr came before the KUBECONFIG line.
    let log = std::fs::read_to_string(&log_path).unwrap();
    let after = |line: &str, marker: &str| -> Option<SocketAddr> {
        let rest = line.split(marker).nth(1)?;
        rest.split([',', ' ']).next()?.parse().ok()
    };
    let api = log
        .lines()
        .find_map(|l| after(l, "serving on https://"))
        .expect("API server address in the log");
    let ready: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ready, pods in "))
        .collect();
    assert_eq!(ready.len(), nodes as usize, "{log}");
    let node_servers = ready
        .iter()
        .map(|l| after(l, "node server on ").unwrap())
        .collect();
    let dns = ready
        .iter()
        .map(|l| after(l, "DNS on ").expect("the node's DNS address"))
        .collect();
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    Net {
        cluster: Cluster {
            child,
            dir: dir.to_path_buf(),
            data_dir,
            kubeconfig,
            client,
            nodes,
        },
        api,
        node_servers,
        dns,
    }
}

impl Net {
    fn client(&self) -> kube::Client {
        self.cluster.client.clone()
    }

    fn log_tail(&self) -> String {
        self.cluster.log_tail(40)
    }

    async fn create_pod(&self, pod: Value) {
        let pods: Api<Pod> = Api::default_namespaced(self.client());
        let pod: Pod = serde_json::from_value(pod).unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }

    /// Waits until the pod runs; returns its address.
    async fn running_ip(&self, name: &str) -> IpAddr {
        let pod = self
            .cluster
            .wait_pod(name, "running", POD_TIMEOUT, |p| {
                running(p) && p.status.as_ref().is_some_and(|s| s.pod_ip.is_some())
            })
            .await;
        pod_ip(&pod)
    }

    async fn create_service(&self, svc: Value) -> Service {
        let api: Api<Service> = Api::default_namespaced(self.client());
        let svc: Service = serde_json::from_value(svc).unwrap();
        api.create(&PostParams::default(), &svc).await.unwrap()
    }

    /// Creates the EndpointSlice `NAME-manual` of `service`, or replaces its endpoints.
    async fn set_endpoints(&self, service: &str, ports: &[(&str, u16)], endpoints: &[Value]) {
        let api: Api<EndpointSlice> = Api::default_namespaced(self.client());
        let name = format!("{service}-manual");
        let ports: Vec<Value> = ports
            .iter()
            .map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"}))
            .collect();
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "wharf-e2e-tests",
            }},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        });
        if api.get_opt(&name).await.unwrap().is_some() {
            let patch = json!({"ports": slice["ports"], "endpoints": slice["endpoints"]});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        } else {
            let slice: EndpointSlice = serde_json::from_value(slice).unwrap();
            api.create(&PostParams::default(), &slice).await.unwrap();
        }
    }

    /// The value of a series on one node's `/metrics`.
    async fn metric(&self, node: usize, series: &str) -> Option<f64> {
        let (status, body) = common::https_get(self.node_servers[node], "/metrics")
            .await
            .ok()?;
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    /// Waits until every node's proxy sends new traffic of `service:port` to `n` endpoints.
    async fn wait_endpoints(&self, service: &str, port: u16, n: usize) {
        let series = format!(
            "wharf_proxy_endpoints{{namespace=\"default\",service=\"{service}\",port=\"{port}\"}}"
        );
        let done = tokio::time::timeout(TIMEOUT, async {
            loop {
                let mut all = true;
                for node in 0..self.node_servers.len() {
                    all &= self.metric(node, &series).await == Some(n as f64);
                }
                if all {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            done.is_ok(),
            "{service}:{port} never had {n} endpoints on every node\n{}",
            self.log_tail()
        );
    }
}

fn endpoint(ip: IpAddr, pod: &str, ready: bool, terminating: bool) -> Value {
    json!({
        "addresses": [ip.to_string()],
        "conditions": {"ready": ready, "serving": ready || terminating, "terminating": terminating},
        "nodeName": "node-1",
        "targetRef": {"kind": "Pod", "namespace": "default", "name": pod},
    })
}

/// A hello-http pod on node-1, serving on `port`, labelled `app: APP`.
fn hello_pod(name: &str, app: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "nodeName": "node-1",
            "containers": [{
                "name": "hello",
                "image": common::sample("hello-http", "hello_http"),
                "ports": [{"containerPort": port, "name": "http"}],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                ],
            }],
        },
    })
}

fn cluster_ip(svc: &Service) -> IpAddr {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .expect("the Service got no cluster IP")
        .parse()
        .unwrap()
}

/// The pod that answered a hello-http request ("hello from pod NAME on node ...").
fn answered_by(body: &str) -> Option<String> {
    body.lines()
        .next()?
        .strip_prefix("hello from pod ")?
        .split(' ')
        .next()
        .map(str::to_string)
}

/// A keep-alive HTTP/1.1 connection.
struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(KeepAlive { sender, task })
    }

    async fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        use http_body_util::BodyExt as _;
        let req = hyper::Request::builder()
            .uri(path)
            .header("host", "service")
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let fut = async {
            self.sender.ready().await.map_err(|e| e.to_string())?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok((
                status,
                String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            ))
        };
        tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .unwrap_or_else(|_| Err(format!("GET {path} timed out")))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asserts every replica got requests and none more than 1.5x its fair share.
fn assert_fair(counts: &BTreeMap<String, usize>, replicas: usize, total: usize, what: &str) {
    assert_eq!(counts.values().sum::<usize>(), total, "{what}: {counts:?}");
    assert_eq!(
        counts.len(),
        replicas,
        "{what}: not every replica answered: {counts:?}"
    );
    let limit = total as f64 / replicas as f64 * 1.5;
    for (pod, n) in counts {
        assert!(
            (*n as f64) <= limit,
            "{what}: {pod} got {n} of {total} (limit {limit}): {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_ip_spreads_requests_over_every_replica() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    // Two nodes: both proxies listen on the cluster IP (SO_REUSEPORT) and share the load.
    let net = up(dir.path(), 2, &[]).await;
    let port = free_port();
    let mut replicas = Vec::new();
    for i in 0..3 {
        let name = format!("echo-{i}");
        net.create_pod(hello_pod(&name, "echo", port)).await;
        replicas.push(name);
    }
    let mut endpoints = Vec::new();
    for name in &replicas {
        endpoints.push(endpoint(net.running_ip(name).await, name, true, false));
    }
    // No selector: the endpoints are ours. Port 7070 is plain TCP (balanced per
    // connection), 7080 is HTTP (balanced per request).
    let svc = net
        .create_service(json!({
            "metadata": {"name": "echo"},
            "spec": {"ports": [
                {"name": "tcp", "port": 7070, "targetPort": port},
                {"name": "http", "port": 7080, "targetPort": port},
            ]},
        }))
        .await;
    let ip = cluster_ip(&svc);
    net.set_endpoints("echo", &[("tcp", port), ("http", port)], &endpoints)
        .await;
    net.wait_endpoints("echo", 7070, 3).await;
    net.wait_endpoints("echo", 7080, 3).await;

    // L4: 1,000 requests, each on its own connection, 8 at a time.
    let total = 1000;
    let next = Arc::new(AtomicU64::new(0));
    let counts = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (next, counts) = (next.clone(), counts.clone());
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total as u64 {
                let (status, body) = http_get(SocketAddr::new(ip, 7070), "/").await.unwrap();
                assert_eq!(status, 200, "{body}");
                let pod = answered_by(&body).unwrap_or_else(|| panic!("{body}"));
                *counts.lock().unwrap().entry(pod).or_default() += 1;
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(done) = workers.join_next().await {
            done.unwrap();
        }
    })
    .await
    .expect("1,000 requests took too long");
    let l4 = counts.lock().unwrap().clone();
    eprintln!("L4, a connection per request: {l4:?}");
    assert_fair(&l4, 3, total, "L4");

    // L7: 1,000 requests over 4 keep-alive connections, balanced per request.
    let counts = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let counts = counts.clone();
        workers.spawn(async move {
            let mut conn = KeepAlive::open(SocketAddr::new(ip, 7080)).await.unwrap();
            for _ in 0..total / 4 {
                let (status, body) = conn.get("/").await.unwrap();
                assert_eq!(status, 200, "{body}");
                let pod = answered_by(&body).unwrap_or_else(|| panic!("{body}"));
                *counts.lock().unwrap().entry(pod).or_default() += 1;
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(done) = workers.join_next().await {
            done.unwrap();
        }
    })
    .await
    .expect("1,000 requests took too long");
    let l7 = counts.lock().unwrap().clone();
    eprintln!("L7, 4 keep-alive connections: {l7:?}");
    assert_fair(&l7, 3, total, "L7");

    // The nodes' counters saw them all, no failure, and both proxies took connections.
    let series = |name: &str, port: u16| {
        format!("{name}{{namespace=\"default\",service=\"echo\",port=\"{port}\"}}")
    };
    for port in [7070, 7080] {
        let mut requests = Vec::new();
        for node in 0..2 {
            let n = net
                .metric(node, &series("wharf_proxy_requests_total", port))
                .await;
            requests.push(n.unwrap_or(0.0));
            let failures = net
                .metric(node, &series("wharf_proxy_failures_total", port))
                .await;
            assert!(
                matches!(failures, None | Some(0.0)),
                "port {port}, node {node}: {failures:?}"
            );
        }
        eprintln!("port {port}: requests taken by each node's proxy: {requests:?}");
        assert_eq!(requests.iter().sum::<f64>(), total as f64, "port {port}");
        if port == 7070 {
            // A connection per request: the kernel spreads them over both nodes' sockets.
            assert!(requests.iter().all(|n| *n > 0.0), "{requests:?}");
        }
    }

    // A hand-written endpoint at the host's 127.0.0.1 is refused by the API (422); one in
    // the cluster's pod range but on no node (a host listener there is no pod) gets past
    // the API, and every proxy ignores it and counts it: no request reaches the host.
    let mut with_loopback = endpoints.clone();
    with_loopback.push(endpoint("127.0.0.1".parse().unwrap(), "host", true, false));
    let slices: Api<EndpointSlice> = Api::default_namespaced(net.client());
    let err = slices
        .patch(
            "echo-manual",
            &PatchParams::default(),
            &Patch::Merge(&json!({"endpoints": with_loopback})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("loopback")),
        "{err}"
    );
    let stray: IpAddr = "127.120.0.1".parse().unwrap();
    let host = tokio::net::TcpListener::bind((stray, port)).await.unwrap();
    let reached = Arc::new(AtomicU64::new(0));
    let host_task = {
        let reached = reached.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = host.accept().await {
                reached.fetch_add(1, Ordering::Relaxed);
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nthe host").await;
            }
        })
    };
    let mut with_host = endpoints.clone();
    with_host.push(endpoint(stray, "host", true, false));
    net.set_endpoints("echo", &[("tcp", port), ("http", port)], &with_host)
        .await;
    let refused = tokio::time::timeout(TIMEOUT, async {
        loop {
            let mut all = true;
            for node in 0..2 {
                all &= net.metric(node, "wharf_proxy_endpoints_refused").await == Some(1.0);
            }
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "the endpoint on no node was not refused\n{}",
        net.log_tail()
    );
    net.wait_endpoints("echo", 7070, 3).await;
    for _ in 0..30 {
        let (status, body) = http_get(SocketAddr::new(ip, 7070), "/").await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(answered_by(&body).is_some(), "{body}");
    }
    assert_eq!(reached.load(Ordering::Relaxed), 0);
    host_task.abort();
    net.cluster.terminate().await;
}

/// What the steady load saw.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
    seen: Mutex<BTreeSet<String>>,
}

impl Load {
    fn record(&self, result: Result<(u16, String), String>) {
        match result {
            Ok((200, body)) => {
                if let Some(pod) = answered_by(&body) {
                    self.seen.lock().unwrap().insert(pod);
                }
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok((status, body)) => self
                .failures
                .lock()
                .unwrap()
                .push(format!("{status}: {body}")),
            Err(e) => self.failures.lock().unwrap().push(e),
        }
    }

    /// Waits until `n` more requests succeeded.
    async fn progress(&self, n: u64) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        tokio::time::timeout(TIMEOUT, async {
            while self.ok.load(Ordering::Relaxed) < target {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the load made no progress");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_fails_while_replicas_come_and_go() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    // Two nodes sharing the cluster IP: whichever proxy takes a request must get it right.
    let net = up(dir.path(), 2, &[]).await;
    let port = free_port();
    let mut live: Vec<(String, IpAddr)> = Vec::new();
    for i in 0..3 {
        let name = format!("churn-{i}");
        net.create_pod(hello_pod(&name, "churn", port)).await;
    }
    for i in 0..3 {
        let name = format!("churn-{i}");
        live.push((name.clone(), net.running_ip(&name).await));
    }
    let svc = net
        .create_service(json!({
            "metadata": {"name": "churn"},
            "spec": {"ports": [
                {"name": "tcp", "port": 7070, "targetPort": port},
                {"name": "http", "port": 7080, "targetPort": port},
            ]},
        }))
        .await;
    let ip = cluster_ip(&svc);
    let ports = [("tcp", port), ("http", port)];
    let eps = |live: &[(String, IpAddr)], leaving: Option<&(String, IpAddr)>| -> Vec<Value> {
        let mut v: Vec<Value> = live
            .iter()
            .map(|(n, ip)| endpoint(*ip, n, true, false))
            .collect();
        if let Some((n, ip)) = leaving {
            v.push(endpoint(*ip, n, false, true));
        }
        v
    };
    net.set_endpoints("churn", &ports, &eps(&live, None)).await;
    net.wait_endpoints("churn", 7070, 3).await;
    net.wait_endpoints("churn", 7080, 3).await;

    // Steady load: two clients opening a connection per request (L4), two on keep-alive
    // connections (L7).
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..4 {
        let (load, stop) = (load.clone(), stop.clone());
        clients.spawn(async move {
            if i % 2 == 0 {
                while !stop.load(Ordering::Relaxed) {
                    let r = http_get(SocketAddr::new(ip, 7070), "/").await;
                    load.record(r.map_err(|e| format!("L4: {e}")));
                }
            } else {
                let mut conn = KeepAlive::open(SocketAddr::new(ip, 7080)).await.unwrap();
                while !stop.load(Ordering::Relaxed) {
                    load.record(conn.get("/").await.map_err(|e| format!("L7: {e}")));
                }
            }
        });
    }
    load.progress(100).await;

    // A replica is added: it gets traffic.
    net.create_pod(hello_pod("churn-3", "churn", port)).await;
    live.push(("churn-3".into(), net.running_ip("churn-3").await));
    net.set_endpoints("churn", &ports, &eps(&live, None)).await;
    net.wait_endpoints("churn", 7070, 4).await;
    net.wait_endpoints("churn", 7080, 4).await;
    tokio::time::timeout(TIMEOUT, async {
        while !load.seen.lock().unwrap().contains("churn-3") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the new replica never answered");

    // A replica leaves as Kubernetes removes one: first terminating (no new traffic, in
    // flight finishes), then the pod is deleted, then it leaves the slice.
    let leaving = live.remove(0);
    net.set_endpoints("churn", &ports, &eps(&live, Some(&leaving)))
        .await;
    net.wait_endpoints("churn", 7070, 3).await;
    net.wait_endpoints("churn", 7080, 3).await;
    let pods: Api<Pod> = Api::default_namespaced(net.client());
    pods.delete(&leaving.0, &DeleteParams::default())
        .await
        .unwrap();
    net.cluster.wait_pod_gone(&leaving.0, POD_TIMEOUT).await;
    net.set_endpoints("churn", &ports, &eps(&live, None)).await;
    load.progress(200).await;

    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(TIMEOUT, async {
        while let Some(done) = clients.join_next().await {
            done.unwrap();
        }
    })
    .await
    .expect("the clients did not stop");
    let failures = load.failures.lock().unwrap().clone();
    let ok = load.ok.load(Ordering::Relaxed);
    eprintln!(
        "{ok} requests, {} failed, answered by {:?}",
        failures.len(),
        load.seen.lock().unwrap()
    );
    assert!(
        failures.is_empty(),
        "failed requests: {failures:#?}\n{}",
        net.log_tail()
    );
    net.cluster.terminate().await;
}

/// A resolver asking only `server` (no cache carried between calls: a new one per query).
fn resolver(server: SocketAddr) -> TokioResolver {
    let mut ns = NameServerConfig::udp_and_tcp(server.ip());
    for c in &mut ns.connections {
        c.port = server.port();
    }
    let mut builder = Resolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], vec![ns]),
        TokioRuntimeProvider::default(),
    );
    builder.options_mut().cache_size = 0;
    builder.options_mut().attempts = 2;
    builder.options_mut().timeout = Duration::from_secs(2);
    builder.build().unwrap()
}

async fn a_records(
    server: SocketAddr,
    name: &str,
) -> Result<Vec<IpAddr>, hickory_resolver::net::NetError> {
    let mut ips: Vec<IpAddr> = resolver(server).lookup_ip(name).await?.iter().collect();
    ips.sort();
    Ok(ips)
}

/// One raw query over UDP: the response code and answers.
async fn raw_query(server: SocketAddr, name: &str, ty: RecordType) -> Message {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut msg = Message::new(1, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
    socket
        .send_to(&msg.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("no DNS answer")
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

/// Polls until `check` accepts the answer for `name`; returns how long it took.
async fn until_dns(
    server: SocketAddr,
    name: &str,
    check: impl Fn(&Result<Vec<IpAddr>, hickory_resolver::net::NetError>) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut last = None;
    let done = tokio::time::timeout(TIMEOUT, async {
        loop {
            let answer = a_records(server, name).await;
            if check(&answer) {
                return;
            }
            last = Some(format!("{answer:?}"));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(done.is_ok(), "{name}: last answer {last:?}");
    start.elapsed()
}

/// Runs `dig @SERVER -p PORT ARGS...`; `None` when dig is not installed.
async fn dig(server: SocketAddr, args: &[&str]) -> Option<String> {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+tries=2"])
        .args(args)
        .output()
        .await
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_dns_answers_a_srv_nxdomain_and_headless() {
    let dir = tempfile::tempdir().unwrap();
    // Two nodes on one DNS address: they share it (SO_REUSEPORT).
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let net = up(dir.path(), 2, &["--dns-listen", &listen]).await;
    assert_eq!(net.dns[0], net.dns[1]);
    let dns = net.dns[0];

    let web = net
        .create_service(json!({
            "metadata": {"name": "web"},
            "spec": {"ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "metrics", "port": 9090},
            ]},
        }))
        .await;
    let web_ip = cluster_ip(&web);
    net.create_service(json!({
        "metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]},
    }))
    .await;
    let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
        "127.64.200.1".parse().unwrap(),
        "127.64.200.2".parse().unwrap(),
        "127.64.200.3".parse().unwrap(),
    );
    net.set_endpoints(
        "db",
        &[("pg", 5432)],
        &[
            endpoint(a, "db-0", true, false),
            endpoint(b, "db-1", true, false),
            endpoint(c, "db-2", false, false),
        ],
    )
    .await;

    // A: the cluster IP (as soon as the Service reached the node).
    until_dns(
        dns,
        "web.default.svc.cluster.local.",
        |r| matches!(r, Ok(ips) if ips == &[web_ip]),
    )
    .await;
    // SRV: the port and the Service's name.
    let srv = resolver(dns)
        .srv_lookup("_http._tcp.web.default.svc.cluster.local.")
        .await
        .unwrap();
    let srv: Vec<(u16, String)> = srv
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(srv, [(80, "web.default.svc.cluster.local.".to_string())]);
    // NXDOMAIN: a name of the cluster domain that does not exist.
    let err = a_records(dns, "nope.default.svc.cluster.local.")
        .await
        .unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");
    let m = raw_query(dns, "nope.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // Outside the cluster domain: refused (this cluster runs with --dns-external refuse).
    let m = raw_query(dns, "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);

    // Headless: the ready pods' addresses, and one name per pod (its IP with dashes, as
    // the endpoints have no hostname).
    until_dns(
        dns,
        "db.default.svc.cluster.local.",
        |r| matches!(r, Ok(ips) if ips == &[a, b]),
    )
    .await;
    assert_eq!(
        a_records(dns, "127-64-200-1.db.default.svc.cluster.local.")
            .await
            .unwrap(),
        [a]
    );
    // An endpoint change shows at once (no batching): db-1 stops being ready.
    let changed = Instant::now();
    net.set_endpoints(
        "db",
        &[("pg", 5432)],
        &[
            endpoint(a, "db-0", true, false),
            endpoint(b, "db-1", false, true),
            endpoint(c, "db-2", false, false),
        ],
    )
    .await;
    until_dns(
        dns,
        "db.default.svc.cluster.local.",
        |r| matches!(r, Ok(ips) if ips == &[a]),
    )
    .await;
    let took = changed.elapsed();
    eprintln!("endpoint change to DNS answer (API write included): {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // dig, when installed (CI installs dnsutils), over UDP and TCP.
    match dig(dns, &["+short", "web.default.svc.cluster.local", "A"]).await {
        None => eprintln!("dig is not installed: skipping the dig checks"),
        Some(out) => {
            assert_eq!(out.trim(), web_ip.to_string(), "{out}");
            let out = dig(
                dns,
                &["+tcp", "+short", "web.default.svc.cluster.local", "A"],
            )
            .await
            .unwrap();
            assert_eq!(out.trim(), web_ip.to_string(), "{out}");
            let out = dig(
                dns,
                &["+short", "_http._tcp.web.default.svc.cluster.local", "SRV"],
            )
            .await
            .unwrap();
            assert_eq!(
                out.trim(),
                "0 100 80 web.default.svc.cluster.local.",
                "{out}"
            );
            let out = dig(dns, &["nope.default.svc.cluster.local", "A"])
                .await
                .unwrap();
            assert!(out.contains("status: NXDOMAIN"), "{out}");
        }
    }
    net.cluster.terminate().await;
}

/// `samples/two-tier/app.yaml`, as JSON documents.
fn two_tier_docs() -> Vec<Value> {
    let path = common::samples_dir().join("two-tier").join("app.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frontend_reaches_backend_by_name() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let net = up(dir.path(), 1, &[]).await;
    let docs = two_tier_docs();
    // The Services as they are; the Deployments' pods made here, bound to node-1 (the
    // scheduler and the Deployment controller are not needed), each tier on a free port.
    let mut services = BTreeMap::new();
    let mut tiers: BTreeMap<String, (u16, Vec<(String, IpAddr)>)> = BTreeMap::new();
    for doc in &docs {
        if doc["kind"] == "Service" {
            let svc = net.create_service(doc.clone()).await;
            services.insert(svc.metadata.name.clone().unwrap(), svc);
        }
    }
    for doc in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let app = doc["metadata"]["name"].as_str().unwrap().to_string();
        let port = free_port();
        let replicas = doc["spec"]["replicas"].as_u64().unwrap();
        let mut names = Vec::new();
        for i in 0..replicas {
            let mut pod = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": doc["spec"]["template"]["metadata"].clone(),
                "spec": doc["spec"]["template"]["spec"].clone(),
            });
            let name = format!("{app}-{i}");
            pod["metadata"]["name"] = json!(name);
            pod["spec"]["nodeName"] = json!("node-1");
            let c = &mut pod["spec"]["containers"][0];
            // The manifest names the registry image; these pods run the built file.
            let image = c["image"].as_str().unwrap().to_string();
            c["image"] = json!(common::sample_for(&image));
            c["ports"][0]["containerPort"] = json!(port);
            net.create_pod(pod).await;
            names.push(name);
        }
        let mut pods = Vec::new();
        for name in names {
            let ip = net.running_ip(&name).await;
            pods.push((name, ip));
        }
        tiers.insert(app, (port, pods));
    }
    // The endpoints the controller would write (if it runs, its slices say the same).
    for (app, (port, pods)) in &tiers {
        let eps: Vec<Value> = pods
            .iter()
            .map(|(n, ip)| endpoint(*ip, n, true, false))
            .collect();
        net.set_endpoints(app, &[("http", *port)], &eps).await;
    }
    net.wait_endpoints("backend", 80, 3).await;
    net.wait_endpoints("frontend", 80, 2).await;

    // A frontend pod calls http://backend: through the proxy, to every backend replica.
    let (fport, fpods) = &tiers["frontend"];
    let frontend = SocketAddr::new(fpods[0].1, *fport);
    let mut backends = BTreeSet::new();
    for _ in 0..30 {
        let (status, body) = http_get(frontend, "/").await.unwrap();
        assert_eq!(status, 200, "{body}\n{}", net.log_tail());
        assert!(body.starts_with("frontend pod frontend-0\n"), "{body}");
        let backend = body
            .split("backend pod ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap_or_else(|| panic!("{body}"));
        backends.insert(backend.to_string());
    }
    assert!(backends.len() >= 2, "{backends:?}");

    // Every form of the name, and the cluster IP.
    let backend_ip = cluster_ip(&services["backend"]);
    for host in [
        "backend.default".to_string(),
        "backend.default.svc".to_string(),
        "backend.default.svc.cluster.local".to_string(),
        "backend:80".to_string(),
        backend_ip.to_string(),
    ] {
        let (status, body) = http_get(frontend, &format!("/via/{host}/x")).await.unwrap();
        assert_eq!(status, 200, "{host}: {body}");
        assert!(
            body.contains("answered 200: backend pod backend-"),
            "{host}: {body}"
        );
        assert!(body.contains("path /x"), "{host}: {body}");
    }
    // Not Services: the API server, the node's own server, another port of the Service.
    for host in [
        net.api.to_string(),
        net.node_servers[0].to_string(),
        "backend:81".to_string(),
    ] {
        let (status, body) = http_get(frontend, &format!("/via/{host}/")).await.unwrap();
        assert_eq!(status, 502, "{host}: {body}");
        assert!(body.contains("HttpRequestDenied"), "{host}: {body}");
    }

    // From outside: the frontend's node port reaches a frontend, which reaches a backend.
    let node_port = services["frontend"]
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()[0]
        .node_port
        .expect("the frontend got a node port");
    let body = common::http_ok(
        SocketAddr::from(([127, 0, 0, 1], node_port as u16)),
        "/",
        TIMEOUT,
    )
    .await;
    assert!(body.starts_with("frontend pod frontend-"), "{body}");
    assert!(
        body.contains("answered 200: backend pod backend-"),
        "{body}"
    );
    net.cluster.terminate().await;
}

/// With a selector, the endpoints controller writes the slices (resolving the named
/// `targetPort`), and the proxy follows them as pods come and go.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn selector_services_follow_the_endpoints_controller() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let net = up(dir.path(), 1, &[]).await;
    let port = free_port();
    let svc = net
        .create_service(json!({
            "metadata": {"name": "hello"},
            "spec": {
                "selector": {"app": "hello"},
                "ports": [{"name": "http", "port": 7080, "targetPort": "http"}],
            },
        }))
        .await;
    let ip = cluster_ip(&svc);
    for i in 0..2 {
        net.create_pod(hello_pod(&format!("hello-{i}"), "hello", port))
            .await;
    }
    net.wait_endpoints("hello", 7080, 2).await;
    let mut seen = BTreeSet::new();
    let mut conn = KeepAlive::open(SocketAddr::new(ip, 7080)).await.unwrap();
    for _ in 0..20 {
        let (status, body) = conn.get("/").await.unwrap();
        assert_eq!(status, 200, "{body}");
        seen.insert(answered_by(&body).unwrap());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // A deleted pod leaves the Service.
    let pods: Api<Pod> = Api::default_namespaced(net.client());
    pods.delete("hello-0", &DeleteParams::default())
        .await
        .unwrap();
    net.wait_endpoints("hello", 7080, 1).await;
    for _ in 0..10 {
        let (status, body) = conn.get("/").await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(answered_by(&body).as_deref(), Some("hello-1"), "{body}");
    }
    // The slices are the controller's.
    let slices: Api<EndpointSlice> = Api::default_namespaced(net.client());
    let list = slices
        .list(&kube::api::ListParams::default().labels("kubernetes.io/service-name=hello"))
        .await
        .unwrap();
    assert!(!list.items.is_empty());
    net.cluster.terminate().await;
}
