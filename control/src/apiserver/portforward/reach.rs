//! How the API server reaches a pod's port for `pods/portforward`: directly, or through
//! the node tunnel of the pod's node.
//!
//! Pod addresses are loopback addresses of the machine their node runs on (README,
//! "Addresses without root"): the API server reaches the pods of nodes on its own machine
//! directly, and those of a node on another machine only through that node's tunnel
//! (`wharf.dev/tunnel: IP:PORT` on the Node; mutual TLS with the API server's client
//! certificate, then an HTTP/1.1 `CONNECT POD-IP:PORT` with the node credential of
//! `kube-system/wharf-node-proxy`, as nodes use it among themselves).
//! Which one is decided as the node proxy decides it, by address ([`route`], pure): a
//! node whose `InternalIP` is the address the API server listens on is on this machine;
//! one at another address that publishes a tunnel is reached through it. An API server
//! listening on every address (`0.0.0.0`) takes a node whose address is one of this
//! machine's as local. Everything else (no node address, no tunnel) is dialed directly,
//! as before tunnels existed: on one machine that works, and across machines there is
//! nothing better to do.
//!
//! The tunnel admits only declared `containerPort`s of its pods, so through a tunnel
//! only those can be forwarded; a refusal is reported on the connection's error stream.
//!
//! [`dial_pod`] is the one place that opens a connection to a pod, so that how the
//! tunnel is spoken changes there only.

use super::super::AppState;
use super::super::error::ApiError;
use super::super::proxy::{get_object, proxy_token};
use crate::api::wellknown::TUNNEL_ANNOTATION;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long opening a connection to a pod (through a tunnel: with its answer) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a tunnel's answer head may take, in bytes.
const MAX_HEAD: usize = 8 * 1024;

/// How the API server reaches the pods of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Connect to the pod address itself.
    Direct,
    /// Connect through this node tunnel, naming the pod address.
    Tunnel(SocketAddr),
}

/// What the API server needs of a pod's Node: its `InternalIP` and its tunnel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeReach {
    pub address: Option<IpAddr>,
    pub tunnel: Option<SocketAddr>,
}

impl NodeReach {
    /// Read from a Node object (pure).
    pub fn of(node: &Value) -> NodeReach {
        let address = node
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
            .find_map(|a| a.get("address")?.as_str()?.parse().ok());
        let tunnel = node
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(TUNNEL_ANNOTATION))
            .and_then(Value::as_str)
            .and_then(|t| t.trim().parse().ok());
        NodeReach { address, tunnel }
    }
}

/// The route to the pods of `node`, from an API server listening on `own` (pure).
/// `local` says whether the node's address is one of this machine's; it counts only when
/// `own` is the unspecified address (listening on all of them).
pub fn route(own: IpAddr, node: NodeReach, local: bool) -> Route {
    match (node.address, node.tunnel) {
        (Some(address), Some(tunnel)) if address != own && !(own.is_unspecified() && local) => {
            Route::Tunnel(tunnel)
        }
        _ => Route::Direct,
    }
}

/// A pod, as a port-forward session reaches it.
#[derive(Debug, Clone)]
pub struct PodTarget {
    pub ip: IpAddr,
    pub via: Via,
}

/// The way to the pod's address.
#[derive(Debug, Clone)]
pub enum Via {
    Direct,
    Tunnel {
        tunnel: SocketAddr,
        /// The node credential (`kube-system/wharf-node-proxy`).
        credential: Arc<str>,
        /// TLS towards the tunnel: the API server's client certificate, the tunnel's
        /// verified against the cluster CA and its address.
        tls: Arc<rustls::ClientConfig>,
    },
}

/// Why a connection to a pod could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    Connect(std::io::Error),
    #[error("timed out connecting")]
    TimedOut,
    #[error("node tunnel {tunnel}: {source}")]
    Tunnel {
        tunnel: SocketAddr,
        source: std::io::Error,
    },
    #[error("node tunnel {tunnel} refused it: {answer}")]
    Refused { tunnel: SocketAddr, answer: String },
}

/// A connection to a pod's port, whatever carries it.
pub trait PodStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PodStream for T {}

/// Looks up how to reach `pod` (with an address): its Node, and for a tunnel, the node
/// credential. A pod whose Node is gone is dialed directly.
pub async fn pod_target(state: &AppState, pod: &Value, ip: IpAddr) -> Result<PodTarget, ApiError> {
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let node = match node_name {
        Some(name) => match get_object(state, "nodes", None, name).await {
            Ok(node) => NodeReach::of(&node),
            Err(ApiError::NotFound { .. }) => NodeReach::default(),
            Err(e) => return Err(e),
        },
        None => NodeReach::default(),
    };
    let own = state
        .config
        .address
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let local = match node.address {
        Some(address) if own.is_unspecified() => is_local_address(address).await,
        _ => false,
    };
    let via = match route(own, node, local) {
        Route::Direct => Via::Direct,
        Route::Tunnel(tunnel) => Via::Tunnel {
            tunnel,
            credential: Arc::from(proxy_token(state).await?),
            tls: state.config.node_tls.clone().ok_or_else(|| {
                ApiError::ServiceUnavailable(
                    "this API server has no TLS configuration for node tunnels".into(),
                )
            })?,
        },
    };
    Ok(PodTarget { ip, via })
}

/// Whether `ip` is an address of this machine: one a socket can be bound to.
pub async fn is_local_address(ip: IpAddr) -> bool {
    tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0))
        .await
        .is_ok()
}

/// Opens a connection to `port` of the pod at `target`: directly, or through its node's
/// tunnel (mutual TLS, see [`crate::nodetls`]) with `CONNECT POD-IP:PORT` and the node
/// credential. After the tunnel's `200` the same connection carries the pod's bytes; its answer head is read byte by byte
/// so that nothing the pod sends first is lost.
pub async fn dial_pod(target: &PodTarget, port: u16) -> Result<Box<dyn PodStream>, DialError> {
    let pod = SocketAddr::new(target.ip, port);
    let dial = async {
        match &target.via {
            Via::Direct => {
                let conn = TcpStream::connect(pod).await.map_err(DialError::Connect)?;
                let _ = conn.set_nodelay(true);
                Ok(Box::new(conn) as Box<dyn PodStream>)
            }
            Via::Tunnel {
                tunnel,
                credential,
                tls,
            } => {
                let tunnel = *tunnel;
                let io = |source| DialError::Tunnel { tunnel, source };
                let tcp = TcpStream::connect(tunnel).await.map_err(io)?;
                let _ = tcp.set_nodelay(true);
                let name = rustls::pki_types::ServerName::IpAddress(tunnel.ip().into());
                let mut conn = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(io)?;
                let request = format!(
                    "CONNECT {pod} HTTP/1.1\r\nHost: {pod}\r\nProxy-Authorization: Bearer \
                     {credential}\r\n\r\n"
                );
                conn.write_all(request.as_bytes()).await.map_err(io)?;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if head.len() >= MAX_HEAD {
                        return Err(DialError::Refused {
                            tunnel,
                            answer: "an answer head too long".into(),
                        });
                    }
                    conn.read_exact(&mut byte).await.map_err(io)?;
                    head.push(byte[0]);
                }
                let status_line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                if status_line.split_whitespace().nth(1) != Some("200") {
                    let answer = status_line
                        .split_once(' ')
                        .map_or(status_line.as_str(), |(_, rest)| rest)
                        .to_string();
                    return Err(DialError::Refused { tunnel, answer });
                }
                Ok(Box::new(conn) as Box<dyn PodStream>)
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, dial)
        .await
        .unwrap_or(Err(DialError::TimedOut))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::net::TcpListener;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nodes_at_other_addresses_with_a_tunnel_are_reached_through_it() {
        let node = json!({"metadata": {"name": "b", "annotations": {TUNNEL_ANNOTATION: "10.0.0.2:10251"}},
            "status": {"addresses": [{"type": "Hostname", "address": "b"},
                                     {"type": "InternalIP", "address": "10.0.0.2"}]}});
        let b = NodeReach::of(&node);
        assert_eq!(
            b,
            NodeReach {
                address: Some(ip("10.0.0.2")),
                tunnel: Some(sa("10.0.0.2:10251")),
            }
        );
        assert_eq!(
            route(ip("10.0.0.1"), b, false),
            Route::Tunnel(sa("10.0.0.2:10251"))
        );
        // The API server's own address: the same machine.
        assert_eq!(route(ip("10.0.0.2"), b, false), Route::Direct);
        // Listening everywhere: local addresses are this machine's, others are not.
        assert_eq!(route(ip("0.0.0.0"), b, true), Route::Direct);
        assert_eq!(
            route(ip("0.0.0.0"), b, false),
            Route::Tunnel(sa("10.0.0.2:10251"))
        );
        // No tunnel published, or no address known: direct, the best there is.
        let no_tunnel = NodeReach { tunnel: None, ..b };
        assert_eq!(route(ip("10.0.0.1"), no_tunnel, false), Route::Direct);
        let no_address = NodeReach { address: None, ..b };
        assert_eq!(route(ip("10.0.0.1"), no_address, false), Route::Direct);
        assert_eq!(NodeReach::of(&json!({})), NodeReach::default());
    }

    /// A tunnel (TLS with a node certificate of `api`'s CA, client certificates
    /// required) that answers `status` to one CONNECT, checking what it was asked, and
    /// then says `hello` as the pod would.
    async fn tunnel(
        api: &crate::apiserver::testing::TestApi,
        status: &'static str,
    ) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let tls = api.node_server_tls();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = tokio_rustls::TlsAcceptor::from(tls)
                .accept(tcp)
                .await
                .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                conn.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            conn.write_all(format!("HTTP/1.1 {status}\r\n\r\nhello").as_bytes())
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_tunnel_dial_asks_for_the_pod_with_the_credential() {
        let api = crate::apiserver::testing::TestApi::new().await;
        let tls = api.state.config.node_tls.clone().unwrap();
        let (addr, task) = tunnel(&api, "200 OK").await;
        let target = PodTarget {
            ip: ip("127.64.0.9"),
            via: Via::Tunnel {
                tunnel: addr,
                credential: Arc::from("secret"),
                tls: tls.clone(),
            },
        };
        let mut conn = dial_pod(&target, 8080).await.unwrap();
        let mut got = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        // What the tunnel sent right after its answer is the pod's.
        assert_eq!(&got, b"hello");
        let head = task.await.unwrap();
        assert!(
            head.starts_with("CONNECT 127.64.0.9:8080 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains("Proxy-Authorization: Bearer secret\r\n"),
            "{head}"
        );

        let (addr, _task) = tunnel(&api, "403 Forbidden").await;
        let refused = PodTarget {
            via: Via::Tunnel {
                tunnel: addr,
                credential: Arc::from("secret"),
                tls,
            },
            ..target
        };
        let err = dial_pod(&refused, 8080).await.err().unwrap();
        assert_eq!(
            err.to_string(),
            format!("node tunnel {addr} refused it: 403 Forbidden")
        );
    }
}
