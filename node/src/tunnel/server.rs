//! The tunnel server: one port on the node's real address that connects authenticated
//! peers to this node's pods.
//!
//! TLS only: a peer must present a certificate of the cluster CA (another node's, see
//! [`crate::tls`]); plaintext, no certificate or another CA's fails the handshake (counted
//! as `unauthorized`). Inside, requests are HTTP/1.1:
//!
//! A connection speaks HTTP/1.1 until a `CONNECT POD-IP:PORT` is admitted; then it is the
//! pod's byte stream until either side closes. [`admit`] is the whole decision, pure and
//! unit-tested, in this order:
//!
//! 1. the credential (`Proxy-Authorization: Bearer SECRET`, compared in constant time):
//!    missing or wrong is `407 Proxy Authentication Required`, whatever was asked, so an
//!    unauthenticated caller learns nothing about the node; a node without a credential
//!    refuses everything (`503`);
//! 2. the method: only `CONNECT` (`405` otherwise);
//! 3. the target: `IP:PORT` with a nonzero port (`400` otherwise), inside this node's pod
//!    range (`403` otherwise), and a declared `containerPort` of a pod that has that
//!    address on this node (`403` otherwise): the tunnel reaches this node's pods and
//!    nothing else of the machine. The range alone is not enough: a host service bound to
//!    `0.0.0.0:P` answers on every loopback address, so `CONNECT POD-RANGE-IP:P` where no
//!    pod is would reach it.
//!
//! Then the server connects to the pod (`502` if refused, `504` after the connect
//! timeout) and only then answers `200`, so a peer knows the pod is there before it sends
//! anything; the connection to the pod comes from the node's address. Request heads must
//! arrive within 10 s; shutdown cuts tunneled connections.

use super::metrics::{Outcome, TunnelMetrics};
use crate::agent::addresses::{PodAddresses, PodSockets};
use crate::proxy::listener::accept_loop;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the server admits.
#[derive(Debug)]
pub struct ServerConfig {
    /// The cluster's node credential; `None` refuses every request.
    pub credential: Option<Arc<str>>,
    /// This node's pod range (`spec.podCIDR`).
    pub pod_range: PodAddresses,
    /// The sockets this node's pods declare: the only targets admitted.
    pub pods: Arc<PodSockets>,
    /// The local address connections to pods come from (the node's address), so that a
    /// mirror on this machine can tell the node's own tunnel from a pod's caller (see
    /// [`super::mirror`]); `None` leaves it to the kernel.
    pub source: Option<IpAddr>,
    /// How long connecting to a pod may take.
    pub connect_timeout: Duration,
    /// TLS, requiring a client certificate of the cluster CA (see [`crate::tls`]): the
    /// tunnel speaks nothing else.
    pub tls: Arc<rustls::ServerConfig>,
}

/// How long a peer may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request is not tunneled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No credential, or the wrong one.
    Unauthorized,
    /// This node has no credential to check against.
    NoCredential,
    NotConnect,
    BadTarget(String),
    /// The target is not one of this node's pod addresses.
    OutsidePodRange(SocketAddr),
    /// In the pod range, but not a declared port of a pod on this node.
    NotAPodPort(SocketAddr),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Unauthorized => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Refusal::NoCredential => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::NotConnect => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::BadTarget(_) => StatusCode::BAD_REQUEST,
            Refusal::OutsidePodRange(_) | Refusal::NotAPodPort(_) => StatusCode::FORBIDDEN,
        }
    }

    fn outcome(&self) -> Outcome {
        match self {
            Refusal::Unauthorized | Refusal::NoCredential => Outcome::Unauthorized,
            Refusal::NotConnect | Refusal::BadTarget(_) => Outcome::BadRequest,
            Refusal::OutsidePodRange(_) | Refusal::NotAPodPort(_) => Outcome::Forbidden,
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::Unauthorized => {
                "wharf node tunnel: Proxy-Authorization: Bearer <node credential> required".into()
            }
            Refusal::NoCredential => {
                "wharf node tunnel: this node has no tunnel credential (kube-system/wharf-node-proxy)"
                    .into()
            }
            Refusal::NotConnect => "wharf node tunnel: only CONNECT POD-IP:PORT is served".into(),
            Refusal::BadTarget(t) => {
                format!("wharf node tunnel: {t:?} is not POD-IP:PORT with a nonzero port")
            }
            Refusal::OutsidePodRange(t) => {
                format!("wharf node tunnel: {t} is not a pod address of this node")
            }
            Refusal::NotAPodPort(t) => {
                format!("wharf node tunnel: {t} is not a containerPort of a pod on this node")
            }
        }
    }
}

/// Whether `presented` (a `Proxy-Authorization` value) carries `expected`.
fn authenticated(presented: Option<&str>, expected: &str) -> bool {
    let Some((scheme, token)) = presented.and_then(|p| p.trim().split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(token.trim().as_bytes(), expected.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decides one request (pure): the pod address to connect to, or why not.
pub fn admit(
    method: &Method,
    target: Option<&str>,
    presented: Option<&str>,
    credential: Option<&str>,
    in_range: impl Fn(IpAddr) -> bool,
    is_pod_port: impl Fn(SocketAddr) -> bool,
) -> Result<SocketAddr, Refusal> {
    let Some(expected) = credential else {
        return Err(Refusal::NoCredential);
    };
    if !authenticated(presented, expected) {
        return Err(Refusal::Unauthorized);
    }
    if method != Method::CONNECT {
        return Err(Refusal::NotConnect);
    }
    let target_text = target.unwrap_or_default();
    let addr: SocketAddr = target_text
        .parse()
        .ok()
        .filter(|a: &SocketAddr| a.port() != 0)
        .ok_or_else(|| Refusal::BadTarget(target_text.to_string()))?;
    if !in_range(addr.ip()) {
        return Err(Refusal::OutsidePodRange(addr));
    }
    if !is_pod_port(addr) {
        return Err(Refusal::NotAPodPort(addr));
    }
    Ok(addr)
}

fn respond(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        response.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"wharf-node-tunnel\""),
        );
    }
    response
}

/// Connects to a pod from `source` when it can (same family, bindable), else from
/// whatever address the kernel picks.
async fn connect_pod(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let bound = source
        .filter(|s| s.is_ipv4() == addr.is_ipv4() && !s.is_unspecified())
        .and_then(|s| {
            let socket = if s.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            };
            let socket = socket.ok()?;
            socket.bind(SocketAddr::new(s, 0)).ok()?;
            Some(socket)
        });
    match bound {
        Some(socket) => socket.connect(addr).await,
        None => TcpStream::connect(addr).await,
    }
}

/// An admitted tunnel: the client's side (once hyper hands it over) and the pod's.
type Admitted = (hyper::upgrade::OnUpgrade, TcpStream, SocketAddr);

/// Answers one request; an admitted CONNECT leaves its two ends in `slot`.
async fn handle(
    mut req: Request<Incoming>,
    config: Arc<ServerConfig>,
    metrics: Arc<TunnelMetrics>,
    slot: Arc<Mutex<Option<Admitted>>>,
) -> Response<Full<Bytes>> {
    let presented = req
        .headers()
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let target = req.uri().authority().map(|a| a.as_str().to_string());
    let decision = admit(
        req.method(),
        target.as_deref(),
        presented,
        config.credential.as_deref(),
        |ip| matches!(ip, IpAddr::V4(v4) if config.pod_range.contains(v4)),
        |addr| config.pods.contains(addr),
    );
    let addr = match decision {
        Ok(addr) => addr,
        Err(refusal) => {
            metrics.count(refusal.outcome());
            tracing::debug!(?refusal, "node tunnel request refused");
            return respond(refusal.status(), refusal.message());
        }
    };
    match tokio::time::timeout(config.connect_timeout, connect_pod(addr, config.source)).await {
        Ok(Ok(pod)) => {
            let _ = pod.set_nodelay(true);
            let upgrade = hyper::upgrade::on(&mut req);
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some((upgrade, pod, addr));
            metrics.count(Outcome::Ok);
            Response::new(Full::new(Bytes::new()))
        }
        Ok(Err(e)) => {
            metrics.count(Outcome::Failed);
            respond(
                StatusCode::BAD_GATEWAY,
                format!("wharf node tunnel: connecting to {addr}: {e}"),
            )
        }
        Err(_) => {
            metrics.count(Outcome::Failed);
            respond(
                StatusCode::GATEWAY_TIMEOUT,
                format!("wharf node tunnel: connecting to {addr} timed out"),
            )
        }
    }
}

/// Serves one peer connection: HTTP until a CONNECT is admitted, then bytes both ways.
async fn connection(
    stream: TcpStream,
    config: Arc<ServerConfig>,
    metrics: Arc<TunnelMetrics>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(config.tls.clone());
    let stream = tokio::select! {
        _ = shutdown.cancelled() => return,
        accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => match accepted {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                metrics.count(Outcome::Unauthorized);
                tracing::debug!(error = %e, "node tunnel TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("node tunnel TLS handshake timed out");
                return;
            }
        }
    };
    let slot: Arc<Mutex<Option<Admitted>>> = Arc::default();
    let service = {
        let (config, metrics, slot) = (config.clone(), metrics.clone(), slot.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let fut: BoxFuture<'static, Result<_, Infallible>> = Box::pin({
                let (config, metrics, slot) = (config.clone(), metrics.clone(), slot.clone());
                async move { Ok(handle(req, config, metrics, slot).await) }
            });
            fut
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        done = conn => {
            if let Err(e) = done {
                tracing::debug!(error = %e, "node tunnel connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => return,
    }
    let admitted = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    let Some((upgrade, mut pod, addr)) = admitted else {
        return;
    };
    let _open = metrics.open();
    tokio::select! {
        upgraded = upgrade => match upgraded {
            Ok(upgraded) => {
                let mut peer = TokioIo::new(upgraded);
                tokio::select! {
                    copied = tokio::io::copy_bidirectional(&mut peer, &mut pod) => {
                        if let Err(e) = copied {
                            tracing::debug!(pod = %addr, error = %e, "tunneled connection ended with an error");
                        }
                    }
                    _ = shutdown.cancelled() => {}
                }
            }
            Err(e) => tracing::debug!(pod = %addr, error = %e, "node tunnel upgrade failed"),
        },
        _ = shutdown.cancelled() => {}
    }
}

/// Accepts peers until shutdown; open tunnels end with it.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    metrics: Arc<TunnelMetrics>,
    shutdown: CancellationToken,
) {
    let config = Arc::new(config);
    accept_loop(
        listener,
        "node tunnel",
        shutdown.clone(),
        |stream, _peer| {
            Some(connection(
                stream,
                config.clone(),
                metrics.clone(),
                shutdown.clone(),
            ))
        },
    )
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tunnel::client::{DialError, dial};
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn range(ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if v4.octets()[..2] == [127, 70])
    }

    fn any_port(_: SocketAddr) -> bool {
        true
    }

    #[test]
    fn admits_only_authenticated_connects_to_its_pods() {
        let connect = Method::CONNECT;
        let ok = admit(
            &connect,
            Some("127.70.0.5:8080"),
            Some("Bearer s3cret"),
            Some("s3cret"),
            range,
            any_port,
        );
        assert_eq!(ok, Ok("127.70.0.5:8080".parse().unwrap()));
        // The scheme is case-insensitive, the secret is not.
        assert!(
            admit(
                &connect,
                Some("127.70.0.5:80"),
                Some("bearer s3cret"),
                Some("s3cret"),
                range,
                any_port
            )
            .is_ok()
        );
        for presented in [
            None,
            Some("Bearer S3CRET"),
            Some("Basic s3cret"),
            Some("s3cret"),
            Some("Bearer "),
        ] {
            assert_eq!(
                admit(
                    &connect,
                    Some("127.70.0.5:8080"),
                    presented,
                    Some("s3cret"),
                    range,
                    any_port
                ),
                Err(Refusal::Unauthorized),
                "{presented:?}"
            );
        }
        // Unauthenticated callers learn nothing else, whatever they ask.
        assert_eq!(
            admit(
                &Method::GET,
                Some("10.0.0.1:22"),
                None,
                Some("s3cret"),
                range,
                any_port
            ),
            Err(Refusal::Unauthorized)
        );
        // No credential on this node: nothing is admitted.
        assert_eq!(
            admit(
                &connect,
                Some("127.70.0.5:8080"),
                Some("Bearer "),
                None,
                range,
                any_port
            ),
            Err(Refusal::NoCredential)
        );
        let auth = Some("Bearer s3cret");
        assert_eq!(
            admit(
                &Method::GET,
                Some("127.70.0.5:8080"),
                auth,
                Some("s3cret"),
                range,
                any_port
            ),
            Err(Refusal::NotConnect)
        );
        for bad in [
            None,
            Some("pod:80"),
            Some("127.70.0.5"),
            Some("127.70.0.5:0"),
        ] {
            assert!(
                matches!(
                    admit(&connect, bad, auth, Some("s3cret"), range, any_port),
                    Err(Refusal::BadTarget(_))
                ),
                "{bad:?}"
            );
        }
        // Outside the pod range: the node's own services, other nodes' pods.
        for outside in ["127.0.0.1:22", "127.71.0.5:8080", "192.168.1.1:80"] {
            assert_eq!(
                admit(
                    &connect,
                    Some(outside),
                    auth,
                    Some("s3cret"),
                    range,
                    any_port
                ),
                Err(Refusal::OutsidePodRange(outside.parse().unwrap()))
            );
        }
        // In the range, but no pod declares that socket: a host service on 0.0.0.0:P
        // would answer there.
        let pod_port = |a: SocketAddr| a == "127.70.0.5:8080".parse::<SocketAddr>().unwrap();
        for not_a_pod in ["127.70.0.200:8080", "127.70.0.5:22"] {
            assert_eq!(
                admit(
                    &connect,
                    Some(not_a_pod),
                    auth,
                    Some("s3cret"),
                    range,
                    pod_port
                ),
                Err(Refusal::NotAPodPort(not_a_pod.parse().unwrap()))
            );
        }
        assert!(
            admit(
                &connect,
                Some("127.70.0.5:8080"),
                auth,
                Some("s3cret"),
                range,
                pod_port
            )
            .is_ok()
        );
        assert_eq!(
            Refusal::Unauthorized.status(),
            StatusCode::PROXY_AUTHENTICATION_REQUIRED
        );
        assert_eq!(
            Refusal::OutsidePodRange("127.0.0.1:1".parse().unwrap()).status(),
            StatusCode::FORBIDDEN
        );
    }

    async fn within<F: std::future::Future>(
        f: F,
    ) -> Result<F::Output, tokio::time::error::Elapsed> {
        tokio::time::timeout(Duration::from_secs(10), f).await
    }

    /// A real server and client: a pod that speaks first (its greeting must survive the
    /// upgrade), an echo, the refusals, and the counters.
    #[tokio::test]
    async fn tunnels_to_pods_and_refuses_the_rest() {
        // The "pod": a loopback address in the pod range; it greets, then echoes.
        let pod = TcpListener::bind("127.70.0.9:0").await.unwrap();
        let pod_addr = pod.local_addr().unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            while let Ok((mut s, _)) = pod.accept().await {
                let _ = s.write_all(b"hello;").await;
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tunnel = listener.local_addr().unwrap();
        let metrics = Arc::new(TunnelMetrics::default());
        let cluster = crate::tls::testing::Cluster::new();
        let shutdown = CancellationToken::new();
        // A pod address where nothing listens, declared by its pod.
        let gone = TcpListener::bind("127.70.0.10:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let pods = Arc::new(PodSockets::default());
        for addr in [pod_addr, gone] {
            let IpAddr::V4(ip) = addr.ip() else {
                unreachable!()
            };
            pods.set(ip, [addr.port()]);
        }
        // A host service on 0.0.0.0: it accepts on every pod address too.
        let host = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let host_port = host.local_addr().unwrap().port();
        let config = ServerConfig {
            credential: Some(Arc::from("s3cret")),
            pod_range: PodAddresses::new("127.70.0.0/16").unwrap(),
            pods,
            source: None,
            connect_timeout: Duration::from_secs(2),
            tls: cluster.tunnel_server("tunnel", "127.0.0.1"),
        };
        let server = tokio::spawn(serve(listener, config, metrics.clone(), shutdown.clone()));
        let tls = cluster.dialer("peer");

        let mut stream = within(dial(tunnel, pod_addr, "s3cret", &tls))
            .await
            .unwrap()
            .unwrap();
        let mut greeting = [0u8; 6];
        within(stream.read_exact(&mut greeting))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&greeting, b"hello;");
        stream.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        within(stream.read_exact(&mut echo)).await.unwrap().unwrap();
        assert_eq!(&echo, b"ping");
        assert_eq!(metrics.active(), 1);
        drop(stream);

        let refused = |r: Result<_, DialError>| match r {
            Err(DialError::Refused { status, .. }) => status,
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        };
        assert_eq!(
            refused(within(dial(tunnel, pod_addr, "wrong", &tls)).await.unwrap()),
            StatusCode::PROXY_AUTHENTICATION_REQUIRED
        );
        assert_eq!(
            refused(
                within(dial(
                    tunnel,
                    "127.0.0.1:22".parse().unwrap(),
                    "s3cret",
                    &tls
                ))
                .await
                .unwrap()
            ),
            StatusCode::FORBIDDEN
        );
        // The host service through an address of the pod range where no pod is, and
        // through a pod's address at a port the pod does not declare: refused.
        for target in [
            SocketAddr::from(([127, 70, 0, 200], host_port)),
            SocketAddr::new(pod_addr.ip(), host_port),
        ] {
            assert_eq!(
                refused(within(dial(tunnel, target, "s3cret", &tls)).await.unwrap()),
                StatusCode::FORBIDDEN,
                "{target}"
            );
        }
        drop(host);
        // A declared pod socket where nothing listens.
        assert_eq!(
            refused(within(dial(tunnel, gone, "s3cret", &tls)).await.unwrap()),
            StatusCode::BAD_GATEWAY
        );
        // Plaintext: the TLS handshake fails, nothing is answered.
        let mut plain = TcpStream::connect(tunnel).await.unwrap();
        plain
            .write_all(
                format!(
                    "CONNECT {pod_addr} HTTP/1.1\r\nHost: {pod_addr}\r\n\
                     Proxy-Authorization: Bearer s3cret\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = within(plain.read_to_end(&mut answer)).await.unwrap();
        assert!(
            !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
            "{answer:?}"
        );
        // TLS with a certificate of another cluster's CA, or with none: refused in the
        // handshake, whatever the credential.
        let other = crate::tls::testing::Cluster::new();
        let foreign = wharf_control::nodetls::client_config(
            &cluster.ca_pem,
            other.node_cert("peer", "127.0.0.1"),
            &[b"http/1.1"],
        )
        .unwrap();
        let err = within(dial(tunnel, pod_addr, "s3cret", &foreign))
            .await
            .unwrap()
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(err, DialError::Tls { .. } | DialError::Http { .. }),
            "{err}"
        );
        let anonymous = Arc::new(
            rustls::ClientConfig::builder_with_provider(wharf_control::pki::crypto_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates({
                    let mut roots = rustls::RootCertStore::empty();
                    for c in
                        rustls::pki_types::CertificateDer::pem_slice_iter(cluster.ca_pem.as_bytes())
                    {
                        roots.add(c.unwrap()).unwrap();
                    }
                    roots
                })
                .with_no_client_auth(),
        );
        assert!(
            within(dial(tunnel, pod_addr, "s3cret", &anonymous))
                .await
                .unwrap()
                .is_err()
        );
        // A tunnel whose certificate another CA signed is not trusted by the dialer.
        let impostor_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let impostor = impostor_listener.local_addr().unwrap();
        let impostor_tls = other.tunnel_server("impostor", "127.0.0.1");
        tasks.spawn(async move {
            while let Ok((s, _)) = impostor_listener.accept().await {
                let _ = tokio_rustls::TlsAcceptor::from(impostor_tls.clone())
                    .accept(s)
                    .await;
            }
        });
        let err = within(dial(impostor, pod_addr, "s3cret", &tls))
            .await
            .unwrap()
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, DialError::Tls { .. }), "{err}");
        // Over TLS, a request without credentials gets 407 and the challenge.
        let raw = TcpStream::connect(tunnel).await.unwrap();
        let mut raw = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(
                rustls::pki_types::ServerName::IpAddress(tunnel.ip().into()),
                raw,
            )
            .await
            .unwrap();
        raw.write_all(
            format!("CONNECT {pod_addr} HTTP/1.1\r\nHost: {pod_addr}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut head = vec![0u8; 512];
        let n = within(raw.read(&mut head)).await.unwrap().unwrap();
        let head = String::from_utf8_lossy(&head[..n]);
        assert!(head.starts_with("HTTP/1.1 407"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-authenticate: bearer"),
            "{head}"
        );

        assert_eq!(metrics.connections(Outcome::Ok), 1);
        // Two wrong credentials, and three handshakes refused (plaintext, another CA's
        // certificate, none).
        assert_eq!(metrics.connections(Outcome::Unauthorized), 5);
        assert_eq!(metrics.connections(Outcome::Forbidden), 3);
        assert_eq!(metrics.connections(Outcome::Failed), 1);
        shutdown.cancel();
        within(server).await.unwrap().unwrap();
        tasks.abort_all();
    }
}
