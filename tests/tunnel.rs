//! End-to-end: machines joining a cluster, and nodes at different addresses reaching each
//! other's pods.
//!
//! - `wharf token create --kubeconfig-out FILE` writes a kubeconfig (cluster CA, server,
//!   the new node token, mode 0600) that `wharf node --kubeconfig FILE` joins with.
//! - Two nodes on this machine at different addresses (127.0.0.2 and 127.0.0.3) stand for
//!   two machines: a Service whose only endpoint is on node A, requested through node B's
//!   proxy (B's node port), reaches it through A's tunnel, as A's tunnel counters show;
//!   the tunnel refuses requests without the cluster's node credential and targets
//!   outside A's pod range, or in it but not a declared port of a pod (a host service on
//!   0.0.0.0 is not reachable through it).
//! - Mirrors (remote pods' addresses served on this machine through their node's tunnel)
//!   cannot forward on one machine (the pod's address is the pod's), but their safety can
//!   be checked: with node A at a real address of this machine, node B finds A's pod
//!   address taken (the pod is here) and leaves it alone, and a declared port nobody
//!   listens on does not turn into a loop between B's mirror and A's tunnel.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    ControlProcess, NodeProcess, POD_TIMEOUT, TIMEOUT, build_samples, counter, free_port, http_get,
    http_ok, sample, wait_node_ready, wharf, within,
};
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use kube::api::Api;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `wharf token create --kubeconfig-out PATH [extra...]`: the token printed.
async fn join_kubeconfig(cp: &ControlProcess, path: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "token",
        "create",
        "--kubeconfig-out",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = wharf(&cp.kubeconfig(), &args).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    out.stdout_text().trim().to_string()
}

#[tokio::test]
async fn a_node_joins_with_the_kubeconfig_token_create_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(&dir.path().join("control")).await;
    let path = dir.path().join("node.kubeconfig");
    // The API server's certificate covers `localhost`: a server other than the admin
    // kubeconfig's 127.0.0.1 shows that --server is what the node uses.
    let server = format!("https://localhost:{}", cp.addr.port());
    let token = join_kubeconfig(&cp, &path, &["--server", &server]).await;
    assert!(token.starts_with("wharf-node."), "{token}");

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&token), "{text}");
    assert!(text.contains(&format!("server: {server}")), "{text}");
    assert!(text.contains("certificate-authority-data: "), "{text}");
    let admin_token = std::fs::read_to_string(cp.data_dir.join("admin.token")).unwrap();
    assert!(!text.contains(admin_token.trim()), "the admin token leaked");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }

    // A node with nothing but that file joins and becomes Ready.
    let node = NodeProcess::start(dir.path(), &path, "joiner", [127, 0, 0, 1].into(), &[]).await;
    let admin = cp.client().await;
    wait_node_ready(&admin, "joiner", TIMEOUT).await;
    let out = wharf(&cp.kubeconfig(), &["get", "nodes"]).await;
    assert!(
        out.stdout_text().contains("joiner"),
        "{}",
        node.log_tail(20)
    );

    // A joined node reads local images only from its image dirs: a pod naming the node's
    // own credential file as its image gets a clear ErrImagePull, and nothing is copied.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "steal-token"},
        "spec": {"nodeName": "joiner", "restartPolicy": "Never",
                 "containers": [{"name": "c", "image": path.display().to_string()}]}
    }))
    .unwrap();
    pods.create(&Default::default(), &pod).await.unwrap();
    let message = within("the pod's ErrImagePull", async {
        loop {
            let pod = pods.get("steal-token").await.unwrap();
            let waiting = common::container(&pod).and_then(|c| c.state.as_ref()?.waiting.clone());
            if let Some(w) = waiting.filter(|w| w.reason.as_deref() == Some("ErrImagePull")) {
                return w.message.unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        message.contains("is outside the node's image directories"),
        "{message}"
    );
    let blobs = dir.path().join("joiner/runtime/blobs/sha256");
    assert_eq!(
        std::fs::read_dir(&blobs).unwrap().count(),
        0,
        "a blob was stored"
    );

    // A server that is not a URL is refused before any token is made.
    let out = wharf(
        &cp.kubeconfig(),
        &[
            "token",
            "create",
            "--kubeconfig-out",
            dir.path().join("bad").to_str().unwrap(),
            "--server",
            "localhost:6443",
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("not an http(s) URL"),
        "{}",
        out.stderr_text()
    );
    assert!(!dir.path().join("bad").exists());
}

const TUNNEL_OK: &str = "wharf_tunnel_connections_total{result=\"ok\"}";
const TUNNEL_UNAUTHORIZED: &str = "wharf_tunnel_connections_total{result=\"unauthorized\"}";
const TUNNEL_FORBIDDEN: &str = "wharf_tunnel_connections_total{result=\"forbidden\"}";
const DIALS_OK: &str = "wharf_tunnel_dials_total{result=\"ok\"}";

/// A TLS client of the cluster whose CA is in `pki` (`DATA_DIR/pki`), presenting a client
/// certificate of that CA (or of `signer`'s, if given) for `user` in `groups`.
fn tls_client(
    pki: &Path,
    signer: Option<&Path>,
    user: &str,
    groups: &[&str],
) -> Arc<rustls::ClientConfig> {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    let cert = wharf_control::pki::issue_client_cert(
        signer.unwrap_or(pki),
        user,
        &groups,
        Duration::from_secs(3600),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let ca = std::fs::read_to_string(pki.join(wharf_control::pki::CA_CERT)).unwrap();
    let cert = Arc::new(
        wharf_control::nodetls::ReloadableCert::from_pem(&cert.cert_pem, &cert.key_pem).unwrap(),
    );
    wharf_control::nodetls::client_config(&ca, cert, &[b"http/1.1"]).unwrap()
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Opens a TLS connection to a tunnel with `tls`, checking its certificate for its IP.
async fn tls_connect(
    tunnel: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream> {
    let tcp = within("connect to tunnel", tokio::net::TcpStream::connect(tunnel)).await?;
    let name = rustls::pki_types::ServerName::IpAddress(tunnel.ip().into());
    within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
    )
    .await
}

/// Sends `CONNECT target` to a tunnel over `tls` with `credential` (if any) and returns the
/// status and the open stream.
async fn connect(
    tunnel: SocketAddr,
    target: SocketAddr,
    credential: Option<&str>,
    tls: &Arc<rustls::ClientConfig>,
) -> (u16, TlsStream) {
    let mut stream = tls_connect(tunnel, tls).await.unwrap();
    let auth = credential
        .map(|c| format!("Proxy-Authorization: Bearer {c}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    // Read the response head byte by byte: what follows it belongs to the pod.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within("tunnel answer", stream.read_exact(&mut byte))
            .await
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    if status != 200 {
        // Error answers carry a body; drain it so the counters below are settled.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await;
    }
    (status, stream)
}

/// Whether a TLS connection with `tls` to `addr` is refused: the handshake fails, or the
/// server closes or alerts at the first read (TLS 1.3 clients learn of a refused client
/// certificate only then).
async fn tls_refused(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> bool {
    let Ok(mut stream) = tls_connect(addr, tls).await else {
        return true;
    };
    if stream
        .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .is_err()
    {
        return true;
    }
    let mut answer = Vec::new();
    match within(
        "a refused TLS peer's answer",
        stream.read_to_end(&mut answer),
    )
    .await
    {
        Err(_) => true,
        Ok(_) => !String::from_utf8_lossy(&answer).starts_with("HTTP/"),
    }
}

#[tokio::test]
async fn a_service_on_another_node_is_reached_through_its_tunnel() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(&dir.path().join("control")).await;
    let kubeconfig = dir.path().join("node.kubeconfig");
    join_kubeconfig(&cp, &kubeconfig, &[]).await;
    let address_a: IpAddr = [127, 0, 0, 2].into();
    let address_b: IpAddr = [127, 0, 0, 3].into();
    let node_a = NodeProcess::start(dir.path(), &kubeconfig, "tunnel-a", address_a, &[]).await;
    let node_b = NodeProcess::start(dir.path(), &kubeconfig, "tunnel-b", address_b, &[]).await;
    let admin = cp.client().await;
    wait_node_ready(&admin, "tunnel-a", TIMEOUT).await;
    wait_node_ready(&admin, "tunnel-b", TIMEOUT).await;
    let tunnel_a = node_a.tunnel_addr.expect("node A runs a tunnel");
    assert_eq!(tunnel_a.ip(), address_a);
    // A publishes its tunnel on its Node.
    let nodes: Api<Node> = Api::all(admin.clone());
    let published = within("get node", nodes.get("tunnel-a")).await.unwrap();
    assert_eq!(
        published.metadata.annotations.unwrap()["wharf.dev/tunnel"],
        tunnel_a.to_string()
    );

    // The only endpoint runs on A; the Service has an HTTP (L7) and a TCP (L4) port.
    let port = free_port();
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {{app: tunnel-web}}
spec:
  nodeName: tunnel-a
  containers:
    - name: hello
      image: {image}
      ports: [{{containerPort: {port}}}]
      env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - name: NODE_NAME
          valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector: {{app: tunnel-web}}
  ports:
    - {{name: http, port: 80, targetPort: {port}}}
    - {{name: raw, port: 81, targetPort: {port}}}
"#,
        image = sample("hello-http", "hello_http"),
    );
    let path = dir.path().join("web.yaml");
    std::fs::write(&path, manifest).unwrap();
    let out = wharf(&cp.kubeconfig(), &["apply", "-f", path.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    let pods: Api<Pod> = Api::default_namespaced(admin.clone());
    let pod = within("pod web running", async {
        loop {
            if let Ok(p) = pods.get("web").await
                && common::running(&p)
            {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let pod = tokio::time::timeout(POD_TIMEOUT, pod)
        .await
        .unwrap_or_else(|_| panic!("pod web not running\n--- node A:\n{}", node_a.log_tail(30)));
    let pod_addr = SocketAddr::new(common::pod_ip(&pod), port);
    let services: Api<Service> = Api::default_namespaced(admin.clone());
    let svc = within("get service", services.get("web")).await.unwrap();
    let node_port = |name: &str| -> u16 {
        let ports = svc.spec.as_ref().unwrap().ports.as_ref().unwrap();
        let p = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap();
        u16::try_from(p.node_port.unwrap()).unwrap()
    };

    let before_a = node_a.metrics().await;
    let before_b = node_b.metrics().await;
    // Through node B's proxy, both ports: B dials A's tunnel.
    for name in ["http", "raw"] {
        let body = http_ok(
            SocketAddr::new(address_b, node_port(name)),
            "/",
            POD_TIMEOUT,
        )
        .await;
        assert!(
            body.contains("hello from pod web on node tunnel-a"),
            "{name}: {body}"
        );
    }
    let after_a = node_a.metrics().await;
    let after_b = node_b.metrics().await;
    assert!(
        counter(&after_a, TUNNEL_OK) >= counter(&before_a, TUNNEL_OK) + 2,
        "node A's tunnel was not used:\n{after_a}\n--- node B:\n{}",
        node_b.log_tail(30)
    );
    assert!(
        counter(&after_b, DIALS_OK) >= counter(&before_b, DIALS_OK) + 2,
        "{after_b}"
    );
    // Through node A's own proxy the endpoint is local: no tunnel.
    let body = http_ok(SocketAddr::new(address_a, node_port("raw")), "/", TIMEOUT).await;
    assert!(body.contains("on node tunnel-a"), "{body}");
    let again_a = node_a.metrics().await;
    assert_eq!(
        counter(&again_a, TUNNEL_OK),
        counter(&after_a, TUNNEL_OK),
        "{again_a}"
    );

    // The tunnel itself: no credential or a wrong one is 407; the right one reaches the
    // pod, and nothing outside A's pod range.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "kube-system");
    let secret = within("node credential", secrets.get("wharf-node-proxy"))
        .await
        .unwrap();
    let credential = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
    let credential = credential.trim();
    // A peer: a client certificate of the cluster CA, as another node presents.
    let pki = cp.data_dir.join("pki");
    let peer = tls_client(&pki, None, "system:node:peer", &["system:nodes"]);
    assert_eq!(connect(tunnel_a, pod_addr, None, &peer).await.0, 407);
    assert_eq!(
        connect(tunnel_a, pod_addr, Some("not-the-secret"), &peer)
            .await
            .0,
        407
    );
    assert_eq!(
        connect(tunnel_a, cp.addr, Some(credential), &peer).await.0,
        403
    );
    // A host service on 0.0.0.0 answers on every pod address too: an address of A's pod
    // range where no pod is, and the pod's address at a port it does not declare, are
    // refused all the same.
    let host = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let host_port = host.local_addr().unwrap().port();
    let IpAddr::V4(pod_v4) = pod_addr.ip() else {
        panic!("{pod_addr}")
    };
    let [a, b, _, _] = pod_v4.octets();
    for target in [
        SocketAddr::from(([a, b, 0, 200], host_port)),
        SocketAddr::new(pod_addr.ip(), host_port),
    ] {
        assert_eq!(
            connect(tunnel_a, target, Some(credential), &peer).await.0,
            403,
            "{target}"
        );
    }
    drop(host);
    let (status, mut stream) = connect(tunnel_a, pod_addr, Some(credential), &peer).await;
    assert_eq!(status, 200);
    stream
        .write_all(format!("GET /via-tunnel HTTP/1.0\r\nHost: {pod_addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    within(
        "response through the tunnel",
        stream.read_to_end(&mut response),
    )
    .await
    .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    assert!(response.contains("path: /via-tunnel"), "{response}");
    let last = node_a.metrics().await;
    assert_eq!(
        counter(&last, TUNNEL_UNAUTHORIZED),
        counter(&again_a, TUNNEL_UNAUTHORIZED) + 2,
        "{last}"
    );
    assert_eq!(
        counter(&last, TUNNEL_FORBIDDEN),
        counter(&again_a, TUNNEL_FORBIDDEN) + 3,
        "{last}"
    );
    // Plain HTTP to the tunnel port or the node server is not a way in: no HTTP answer
    // from the tunnel, a 400 saying so from the node server (as from the API server).
    let answer = http_get(tunnel_a, "/metrics").await;
    assert!(answer.is_err(), "{answer:?}");
    let (status, body) = http_get(node_a.daemon_addr, "/metrics").await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("HTTPS server"), "{body}");
    // TLS with a certificate of another cluster's CA: both refuse the handshake, even
    // for the user and groups a node or the API server would have, and the tunnel
    // refuses a peer without a certificate.
    let other = dir.path().join("other-pki");
    wharf_control::pki::Pki::load_or_generate(&other, "127.0.0.1:0".parse().unwrap()).unwrap();
    let foreign_node = tls_client(&pki, Some(&other), "system:node:peer", &["system:nodes"]);
    let foreign_api = tls_client(
        &pki,
        Some(&other),
        wharf_control::nodetls::APISERVER_NODE_CLIENT,
        &[],
    );
    assert!(tls_refused(tunnel_a, &foreign_node).await);
    assert!(tls_refused(node_a.daemon_addr, &foreign_api).await);
    let anonymous = Arc::new(
        rustls::ClientConfig::builder_with_provider(wharf_control::pki::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates({
                let mut roots = rustls::RootCertStore::empty();
                let ca = std::fs::read(pki.join(wharf_control::pki::CA_CERT)).unwrap();
                roots
                    .add(CertificateDer::from_pem_slice(&ca).unwrap())
                    .unwrap();
                roots
            })
            .with_no_client_auth(),
    );
    assert!(tls_refused(tunnel_a, &anonymous).await);
    // The node server's certificate is the node's, for the address it was dialed at:
    // verified against the cluster CA, the API server's client certificate and the token
    // read stats; a node's certificate with the token does not.
    let api_client = tls_client(
        &pki,
        None,
        wharf_control::nodetls::APISERVER_NODE_CLIENT,
        &[],
    );
    let bearer = format!("Authorization: Bearer {credential}\r\n");
    let (status, body) = common::exchange(
        "GET",
        node_a.daemon_addr,
        "/stats/summary",
        Some(api_client),
        &bearer,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("tunnel-a"), "{body}");
    let (status, body) = common::exchange(
        "GET",
        node_a.daemon_addr,
        "/stats/summary",
        Some(peer.clone()),
        &bearer,
    )
    .await
    .unwrap();
    assert_eq!(status, 401, "{body}");
    // After the refused handshakes, the tunnel counted them as unauthorized.
    let refused = node_a.metrics().await;
    assert!(
        counter(&refused, TUNNEL_UNAUTHORIZED) >= counter(&last, TUNNEL_UNAUTHORIZED) + 2,
        "{refused}"
    );
}

/// A non-loopback IPv4 address of this machine, if it has one (a UDP socket "connected"
/// to an outside address picks it; nothing is sent).
fn machine_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("198.51.100.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

fn gauge(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn mirrors_leave_local_pods_alone_and_never_loop() {
    let Some(address_a) = machine_address() else {
        eprintln!("skipped: this machine has no non-loopback IPv4 address for node A");
        return;
    };
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(&dir.path().join("control")).await;
    let kubeconfig = dir.path().join("node.kubeconfig");
    join_kubeconfig(&cp, &kubeconfig, &[]).await;
    let node_a = NodeProcess::start(dir.path(), &kubeconfig, "mirror-a", address_a, &[]).await;
    let node_b = NodeProcess::start(
        dir.path(),
        &kubeconfig,
        "mirror-b",
        [127, 0, 0, 4].into(),
        &[],
    )
    .await;
    let admin = cp.client().await;
    wait_node_ready(&admin, "mirror-a", TIMEOUT).await;
    wait_node_ready(&admin, "mirror-b", TIMEOUT).await;

    // hello-http serves its first containerPort; the second is declared, not served.
    let (served, unserved) = (free_port(), free_port());
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: mirrored
spec:
  nodeName: mirror-a
  containers:
    - name: hello
      image: {image}
      ports: [{{containerPort: {served}}}, {{containerPort: {unserved}}}]
"#,
        image = sample("hello-http", "hello_http"),
    );
    let path = dir.path().join("mirrored.yaml");
    std::fs::write(&path, manifest).unwrap();
    let out = wharf(&cp.kubeconfig(), &["apply", "-f", path.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    let pods: Api<Pod> = Api::default_namespaced(admin.clone());
    let pod = tokio::time::timeout(POD_TIMEOUT, async {
        loop {
            if let Ok(p) = pods.get("mirrored").await
                && common::running(&p)
            {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("pod not running\n--- node A:\n{}", node_a.log_tail(30)));
    let ip = common::pod_ip(&pod);

    // B sees a pod of a node at another, non-loopback address: it tries to mirror both
    // ports. The served one is taken (the pod is on this machine): left alone. The other
    // is free, so B listens there.
    let metrics_b = within("node B's mirrors", async {
        loop {
            let m = node_b.metrics().await;
            if gauge(&m, "wharf_tunnel_mirrors{state=\"local\"}") == Some(1)
                && gauge(&m, "wharf_tunnel_mirrors{state=\"listening\"}") == Some(1)
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // The pod itself is untouched.
    let body = http_ok(SocketAddr::new(ip, served), "/", TIMEOUT).await;
    assert!(body.starts_with("hello from pod"), "{body}");

    // A connection to the unserved port reaches B's mirror, which dials A's tunnel; A
    // connects to the pod address from its own address, which is B's mirror again, and
    // the mirror refuses its pod's own node: the connection ends instead of looping.
    let before_a = node_a.metrics().await;
    let mut c = within(
        "connect",
        tokio::net::TcpStream::connect(SocketAddr::new(ip, unserved)),
    )
    .await
    .unwrap();
    let mut rest = Vec::new();
    let _ = within("the mirrored connection ends", c.read_to_end(&mut rest)).await;
    let after_a = node_a.metrics().await;
    let after_b = node_b.metrics().await;
    assert_eq!(
        counter(&after_b, "wharf_tunnel_mirror_connections_total"),
        counter(&metrics_b, "wharf_tunnel_mirror_connections_total") + 1,
        "{after_b}"
    );
    assert_eq!(
        counter(&after_a, TUNNEL_OK),
        counter(&before_a, TUNNEL_OK) + 1,
        "{after_a}"
    );
    // A never mirrors B's pods: B is at a loopback address, on this machine by definition.
    assert_eq!(
        gauge(&after_a, "wharf_tunnel_mirrors{state=\"listening\"}"),
        Some(0),
        "{after_a}"
    );
}
