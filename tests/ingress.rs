//! Ingress end to end: a `wharf up` cluster serves Ingresses of the default class on its
//! node port: two hosts and two paths to two Services, HTTPS with a certificate from a
//! `kubernetes.io/tls` Secret picked by SNI, 503 with a reason for a missing backend, 404
//! for no rule, routing that follows an edit of the Ingress, and the Ingress's
//! `status.loadBalancer` filled in with the node's address.

#![allow(clippy::unwrap_used)]

mod common;

use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// A pod of hello-http named `name`, labelled `app: NAME`, serving on `port`, and a
/// Service `svc-NAME` on port 80 in front of it.
fn app(name: &str, port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  containers:
    - name: hello
      image: {image}
      ports:
        - {{containerPort: {port}, name: http}}
      env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
      readinessProbe:
        httpGet: {{path: /healthz, port: {port}}}
        periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: svc-{name}
spec:
  selector: {{app: {name}}}
  ports:
    - {{name: http, port: 80, targetPort: http}}
"#,
        image = common::sample("hello-http", "hello_http"),
    )
}

/// The Ingress: host a.test `/` to svc-a and `/b` to svc-b, `/missing` to a Service that
/// does not exist; host b.test `/` to `b_root`; TLS for a.test from the Secret `a-tls`.
fn ingress(b_root: &str) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
spec:
  tls:
    - {{hosts: [a.test], secretName: a-tls}}
  rules:
    - host: a.test
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: svc-a, port: {{number: 80}}}}}}}}
          - {{path: /b, pathType: Prefix, backend: {{service: {{name: svc-b, port: {{name: http}}}}}}}}
          - {{path: /missing, pathType: Exact, backend: {{service: {{name: nothing, port: {{number: 80}}}}}}}}
    - host: b.test
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: {b_root}, port: {{number: 80}}}}}}}}
"#
    )
}

/// One HTTP/1.0 GET with `host` over `stream`: status and body.
async fn get_over<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    Ok((status, body.to_string()))
}

async fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let request = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        get_over(stream, host, path).await
    };
    tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("timed out")))
}

/// Polls `GET host path` until `ok` holds for its answer; panics with the last one after
/// the deadline.
async fn until(
    addr: SocketAddr,
    host: &str,
    path: &str,
    what: &str,
    ok: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + common::POD_TIMEOUT;
    loop {
        let got = get(addr, host, path).await;
        if let Ok((status, body)) = &got
            && ok(*status, body)
        {
            return (*status, body.clone());
        }
        assert!(
            Instant::now() < deadline,
            "GET {host}{path}: not {what} within {:?}; last: {got:?}",
            common::POD_TIMEOUT
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ingress_routes_by_host_and_path_with_tls_503_404_and_follows_edits() {
    common::build_samples().await;
    let tmp = tempfile::tempdir().unwrap();
    let (http_port, https_port) = (common::free_port(), common::free_port());
    let cluster = common::Cluster::up_with(
        tmp.path(),
        1,
        &[
            "--ingress-http-port",
            &http_port.to_string(),
            "--ingress-https-port",
            &https_port.to_string(),
        ],
    )
    .await;
    let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let https: SocketAddr = format!("127.0.0.1:{https_port}").parse().unwrap();

    // The certificate of a.test, self-signed, in a kubernetes.io/tls Secret.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: a-tls}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}\n  tls.key: |\n{}\n",
        indent(&cert.pem()),
        indent(&key.serialize_pem())
    );
    cluster.apply("secret.yaml", &secret).await;
    cluster
        .apply("a.yaml", &app("a", common::free_port()))
        .await;
    cluster
        .apply("b.yaml", &app("b", common::free_port()))
        .await;
    cluster.apply("ingress.yaml", &ingress("svc-b")).await;

    // Two hosts, two paths, two Services.
    let is_pod = |pod: &'static str| {
        move |status: u16, body: &str| {
            status == 200 && body.contains(&format!("hello from pod {pod} "))
        }
    };
    until(http, "a.test", "/", "pod a", is_pod("a")).await;
    until(http, "a.test", "/b/x", "pod b", is_pod("b")).await;
    until(http, "b.test:8080", "/anything", "pod b", is_pod("b")).await;
    let (_, body) = until(http, "a.test", "/index", "pod a", is_pod("a")).await;
    assert!(body.contains("path: /index"), "{body}");

    // A backend that does not exist, and a host no rule names.
    let (status, body) = get(http, "a.test", "/missing").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body.trim(),
        "wharf ingress: service default/nothing does not exist"
    );
    let (status, body) = get(http, "nobody.test", "/").await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no rule matches host \"nobody.test\""),
        "{body}"
    );

    // HTTPS, the certificate picked by SNI.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let tls = common::within("the TLS handshake", connector.connect(name, tcp))
        .await
        .unwrap();
    let (status, body) = common::within("GET over TLS", get_over(tls, "a.test", "/"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello from pod a "), "{body}");

    // An edit routes b.test to svc-a instead.
    cluster.apply("ingress.yaml", &ingress("svc-a")).await;
    until(http, "b.test", "/", "pod a after the edit", is_pod("a")).await;

    // The status names the node's address.
    let ingresses: Api<Ingress> = Api::default_namespaced(cluster.client.clone());
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        let ing = ingresses.get("web").await.unwrap();
        let ips: Vec<String> = ing
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.ip)
            .collect();
        if ips == ["127.0.0.1"] {
            break;
        }
        assert!(Instant::now() < deadline, "status.loadBalancer: {ips:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.terminate().await;
}

fn indent(pem: &str) -> String {
    pem.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
