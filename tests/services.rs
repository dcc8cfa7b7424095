//! End-to-end: Services get addresses, their Endpoints and EndpointSlices follow pod
//! readiness, `wharf get svc,ep` prints them as kubectl does, and `wharf port-forward`
//! reaches ready endpoints.
//!
//! The real `wharf control` runs alone; the test plays the node: it registers a Node,
//! renews its Lease (so the node lifecycle controller keeps it alive), and marks pods
//! running and ready by writing `pods/status` with a `podIP` and the Ready condition. For
//! port-forward, the "pods" are tiny HTTP servers the test runs on loopback addresses.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ControlProcess, TIMEOUT, http_get, wharf};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::task::JoinSet;

const NODE: &str = "node-1";

/// Registers the Node and renews its Lease every second until the returned set is dropped.
async fn fake_node(client: &kube::Client) -> JoinSet<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NODE}})).unwrap(),
        )
        .await
        .unwrap();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-node-lease");
    let now = || {
        jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    };
    leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NODE},
                "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40, "renewTime": now()}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let patch = json!({"spec": {"renewTime": now()}});
            let _ = leases
                .patch(NODE, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
    });
    tasks
}

fn pod_yaml(name: &str, port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: web}}
spec:
  nodeName: {NODE}
  containers:
    - name: app
      image: hello.wasm
      ports:
        - name: http
          containerPort: {port}
"#
    )
}

/// What a node writes when the pod runs at `ip` (ready or not).
async fn set_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let status = if ready { "True" } else { "False" };
    let patch = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "hostIP": "127.0.0.1",
        "conditions": [{"type": "Ready", "status": status},
                       {"type": "ContainersReady", "status": status}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Waits on a watch (under [`TIMEOUT`]) until the object `name` satisfies `done`.
async fn until<K>(api: &Api<K>, name: &str, done: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::time::timeout(TIMEOUT, async {
        let lp = ListParams::default().fields(&format!("metadata.name={name}"));
        let list = api.list(&lp).await.unwrap();
        if let Some(o) = list.items.into_iter().find(|o| done(o)) {
            return o;
        }
        let wp = WatchParams::default().fields(&format!("metadata.name={name}"));
        let rv = list.metadata.resource_version.unwrap_or_default();
        let mut events = api.watch(&wp, &rv).await.unwrap().boxed();
        while let Some(event) = events.next().await {
            if let WatchEvent::Added(o) | WatchEvent::Modified(o) = event.unwrap()
                && done(&o)
            {
                return o;
            }
        }
        panic!("the watch on {name} ended");
    })
    .await
    .unwrap_or_else(|_| panic!("{name} did not reach the expected state within {TIMEOUT:?}"))
}

/// The single slice of Service `svc`, once it satisfies `done`.
async fn slice_until(
    slices: &Api<EndpointSlice>,
    svc: &str,
    done: impl Fn(&EndpointSlice) -> bool,
) -> EndpointSlice {
    let selector = format!("kubernetes.io/service-name={svc}");
    tokio::time::timeout(TIMEOUT, async {
        let list = slices
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap();
        if let Some(s) = list.items.into_iter().find(|s| done(s)) {
            return s;
        }
        let rv = list.metadata.resource_version.unwrap_or_default();
        let wp = WatchParams::default().labels(&selector);
        let mut events = slices.watch(&wp, &rv).await.unwrap().boxed();
        while let Some(event) = events.next().await {
            if let WatchEvent::Added(s) | WatchEvent::Modified(s) = event.unwrap()
                && done(&s)
            {
                return s;
            }
        }
        panic!("the slice watch ended");
    })
    .await
    .unwrap_or_else(|_| panic!("the slice of {svc} did not reach the expected state"))
}

fn ready_ips(ep: &Endpoints) -> Vec<String> {
    ep.subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .collect()
}

fn not_ready_ips(ep: &Endpoints) -> Vec<String> {
    ep.subsets
        .iter()
        .flatten()
        .flat_map(|s| s.not_ready_addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .collect()
}

/// `(ready, serving, terminating)` of the slice endpoint at `ip`.
fn conditions(slice: &EndpointSlice, ip: &str) -> Option<(bool, bool, bool)> {
    let e = slice
        .endpoints
        .iter()
        .flatten()
        .find(|e| e.addresses.first().map(String::as_str) == Some(ip))?;
    let c = e.conditions.as_ref()?;
    Some((
        c.ready.unwrap_or(false),
        c.serving.unwrap_or(false),
        c.terminating.unwrap_or(false),
    ))
}

const SERVICES: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector: {app: web}
  ports:
    - port: 80
      targetPort: http
      nodePort: 30080
---
apiVersion: v1
kind: Service
metadata:
  name: web-headless
spec:
  clusterIP: None
  selector: {app: web}
  ports:
    - port: 8080
"#;

#[tokio::test]
async fn endpoints_and_slices_follow_pod_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(dir.path()).await;
    let client = cp.client().await;
    let _node = fake_node(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");

    let manifest = dir.path().join("app.yaml");
    let mut yaml = SERVICES.to_string();
    for i in 1..=4 {
        yaml.push_str("---\n");
        yaml.push_str(&pod_yaml(&format!("web-{i}"), 8080));
    }
    std::fs::write(&manifest, yaml).unwrap();
    let out = wharf(
        &cp.kubeconfig(),
        &["apply", "-f", manifest.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr_text());

    // Addresses: a loopback cluster IP, the asked-for node port, headless stays None.
    let web = services.get("web").await.unwrap();
    let spec = web.spec.clone().unwrap();
    let cluster_ip = spec.cluster_ip.clone().unwrap();
    assert!(cluster_ip.starts_with("127.250."), "{cluster_ip}");
    assert_eq!(spec.cluster_ips, Some(vec![cluster_ip.clone()]));
    assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string()]));
    assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
    assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Cluster"));
    assert_eq!(spec.ports.unwrap()[0].node_port, Some(30080));
    let headless = services.get("web-headless").await.unwrap().spec.unwrap();
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));

    // Applying the same file again changes nothing: allocated values are kept.
    let out = wharf(
        &cp.kubeconfig(),
        &["apply", "-f", manifest.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr_text());
    assert!(
        out.stdout_text().contains("service/web unchanged"),
        "{}",
        out.stdout_text()
    );

    // A taken node port is refused with kube-apiserver's message.
    let taken = dir.path().join("taken.yaml");
    std::fs::write(
        &taken,
        SERVICES
            .split("---")
            .next()
            .unwrap()
            .replace("name: web\n", "name: web2\n"),
    )
    .unwrap();
    let out = wharf(&cp.kubeconfig(), &["apply", "-f", taken.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains(
            "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
        ),
        "{}",
        out.stderr_text()
    );

    // The node reports three pods ready and one not.
    for (i, ready) in [(1, true), (2, true), (3, true), (4, false)] {
        set_status(
            &pods,
            &format!("web-{i}"),
            &format!("127.64.0.{}", i + 1),
            ready,
        )
        .await;
    }
    let ep = until(&endpoints, "web", |e| {
        ready_ips(e).len() == 3 && not_ready_ips(e).len() == 1
    })
    .await;
    assert_eq!(ready_ips(&ep), ["127.64.0.2", "127.64.0.3", "127.64.0.4"]);
    assert_eq!(
        ep.subsets.as_ref().unwrap()[0].ports.as_ref().unwrap()[0].port,
        8080
    );
    let slice = slice_until(&slices, "web", |s| {
        s.endpoints.as_ref().is_some_and(|e| e.len() == 4)
    })
    .await;
    let labels = slice.metadata.labels.clone().unwrap();
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert!(slice.metadata.name.as_deref().unwrap().starts_with("web-"));
    assert_eq!(slice.address_type, "IPv4");
    let owner = &slice.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Service", "web")
    );
    assert_eq!(owner.uid, web.metadata.uid.clone().unwrap());
    let first = &slice.endpoints.as_ref().unwrap()[0];
    assert_eq!(first.node_name.as_deref(), Some(NODE));
    assert_eq!(
        first.target_ref.as_ref().unwrap().name.as_deref(),
        Some("web-1")
    );
    assert_eq!(
        conditions(&slice, "127.64.0.5"),
        Some((false, false, false))
    );
    assert_eq!(
        slice.metadata.annotations.unwrap()["wharf.dev/node-addresses"],
        r#"{"node-1":"127.0.0.1"}"#
    );

    // `wharf get svc,ep`: kubectl's columns.
    let out = wharf(&cp.kubeconfig(), &["get", "svc,ep"]).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    let text = out.stdout_text();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{text}"))
    };
    assert!(
        text.contains("NAME") && text.contains("CLUSTER-IP") && text.contains("PORT(S)"),
        "{text}"
    );
    let svc_line = line("service/web ");
    assert_eq!(
        &svc_line[..5],
        [
            "service/web",
            "NodePort",
            cluster_ip.as_str(),
            "<none>",
            "80:30080/TCP"
        ],
        "{text}"
    );
    let ep_line = line("endpoints/web ");
    assert_eq!(
        ep_line[1], "127.64.0.2:8080,127.64.0.3:8080,127.64.0.4:8080",
        "{text}"
    );

    // Readiness changes show within moments (the latency is printed, the bound generous).
    set_status(&pods, "web-4", "127.64.0.5", true).await;
    until(&endpoints, "web", |e| ready_ips(e).len() == 4).await;
    let out = wharf(&cp.kubeconfig(), &["get", "ep", "web"]).await;
    assert!(
        out.stdout_text()
            .contains("127.64.0.2:8080,127.64.0.3:8080,127.64.0.4:8080 + 1 more..."),
        "{}",
        out.stdout_text()
    );
    let started = Instant::now();
    set_status(&pods, "web-1", "127.64.0.2", false).await;
    let slice = slice_until(&slices, "web", |s| {
        conditions(s, "127.64.0.2") == Some((false, false, false))
    })
    .await;
    let latency = started.elapsed();
    eprintln!("pod readiness change -> EndpointSlice updated in {latency:?}");
    assert!(latency < Duration::from_secs(5), "{latency:?}");
    assert_eq!(conditions(&slice, "127.64.0.3"), Some((true, true, false)));
    let ep = until(&endpoints, "web", |e| not_ready_ips(e) == ["127.64.0.2"]).await;
    assert_eq!(ready_ips(&ep).len(), 3);

    // A pod being deleted (its node has not confirmed yet) is terminating in the slice
    // and gone from the Endpoints.
    pods.delete("web-3", &DeleteParams::default())
        .await
        .unwrap();
    let slice = slice_until(&slices, "web", |s| {
        conditions(s, "127.64.0.4").is_some_and(|c| c.2)
    })
    .await;
    assert_eq!(conditions(&slice, "127.64.0.4"), Some((false, true, true)));
    until(&endpoints, "web", |e| {
        !ready_ips(e).contains(&"127.64.0.4".to_string())
            && !not_ready_ips(e).contains(&"127.64.0.4".to_string())
    })
    .await;

    // The headless Service lists the same pods, at their numeric target port.
    let ep = until(&endpoints, "web-headless", |e| ready_ips(e).len() == 2).await;
    assert_eq!(ep.subsets.unwrap()[0].ports.as_ref().unwrap()[0].port, 8080);

    // A Service that stops selecting a pod drops it.
    let patch = json!({"spec": {"selector": {"app": "none"}}});
    services
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    until(&endpoints, "web", |e| e.subsets.is_none()).await;
}

/// A "pod": an HTTP server on `ip` (any port) that answers with `name`. Returns its port.
async fn fake_pod_server(tasks: &mut JoinSet<()>, ip: &str, name: &'static str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tasks.spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            conns.spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
            while conns.try_join_next().is_some() {}
        }
    });
    port
}

/// A running `wharf port-forward`; killed when dropped.
struct Forward {
    child: tokio::process::Child,
    /// Its stdout, kept open (and unread: a few lines per connection fit the pipe).
    _stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// The local address it listens on.
    local: SocketAddr,
    /// The port it printed after `->`.
    to: String,
}

/// Starts `wharf port-forward ARGS...` and reads its `Forwarding from` line.
async fn port_forward(kubeconfig: &std::path::Path, args: &[&str]) -> Forward {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("port-forward")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("port-forward printed nothing")
        .unwrap()
        .expect("port-forward exited");
    let (from, to) = line
        .strip_prefix("Forwarding from ")
        .and_then(|l| l.split_once(" -> "))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    Forward {
        local: from.parse().unwrap(),
        to: to.to_string(),
        child,
        _stdout: lines,
    }
}

#[tokio::test]
async fn port_forward_reaches_ready_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(dir.path()).await;
    let client = cp.client().await;
    let _node = fake_node(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");

    // Two pods on addresses of their own, on different ports behind one named port. They
    // are inside the cluster's pod ranges (node IPAM's 127.64.0.0/10): endpoint addresses
    // outside them are refused.
    let base = 100 + std::process::id() % 28;
    let (ip_a, ip_b) = (format!("127.{base}.7.2"), format!("127.{base}.7.3"));
    let mut servers = JoinSet::new();
    let port_a = fake_pod_server(&mut servers, &ip_a, "pod-a").await;
    let port_b = fake_pod_server(&mut servers, &ip_b, "pod-b").await;
    let manifest = dir.path().join("app.yaml");
    std::fs::write(
        &manifest,
        format!(
            "{}---\n{}---\n{}",
            SERVICES.split("---").next().unwrap(),
            pod_yaml("a", port_a),
            pod_yaml("b", port_b)
        ),
    )
    .unwrap();
    let out = wharf(
        &cp.kubeconfig(),
        &["apply", "-f", manifest.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr_text());
    set_status(&pods, "a", &ip_a, true).await;
    set_status(&pods, "b", &ip_b, true).await;
    until(&endpoints, "web", |e| ready_ips(e).len() == 2).await;

    // svc/web :80 -> both pods, connection by connection.
    let mut forward = port_forward(&cp.kubeconfig(), &["svc/web", ":80"]).await;
    let local = forward.local;
    assert_eq!(local.ip().to_string(), "127.0.0.1");
    assert_ne!(local.port(), 0);
    assert_eq!(
        forward.to, "80",
        "the pods' ports differ, so the service port is shown"
    );
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let (code, body) = http_get(local, "/").await.unwrap();
        assert_eq!(code, 200);
        seen.insert(body);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["pod-a".to_string(), "pod-b".to_string()])
    );

    // b stops being ready: new connections go to a only.
    set_status(&pods, "b", &ip_b, false).await;
    until(&endpoints, "web", |e| ready_ips(e) == [ip_a.clone()]).await;
    for _ in 0..3 {
        assert_eq!(http_get(local, "/").await.unwrap().1, "pod-a");
    }

    // Ctrl-C ends it cleanly.
    let pid = forward.child.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(TIMEOUT, forward.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "port-forward exited with {exit}");

    // pod/b by its named port, ready or not (as kubectl does).
    let by_name = port_forward(&cp.kubeconfig(), &["pod/b", "0:http"]).await;
    assert_eq!(by_name.to, port_b.to_string());
    assert_eq!(http_get(by_name.local, "/").await.unwrap().1, "pod-b");
}
