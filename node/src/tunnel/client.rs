//! The tunnel's client side: opening a connection to a pod through its node's tunnel
//! ([`dial`]), and the [`Dialer`] the proxy and the mirrors connect with, which goes
//! through a tunnel for pods the route table names and directly for every other address.
//!
//! A dial is one TCP connection to the tunnel, a TLS handshake (this node's certificate
//! as the client's, the tunnel's verified against the cluster CA and the tunnel's IP),
//! one `CONNECT POD-IP:PORT` with the credential, and, on `200`, the same connection
//! handed over as the pod's byte stream. Nothing is spawned: the HTTP/1 connection is driven inside the dial until the upgrade
//! completes, and hyper's upgraded stream keeps whatever the tunnel sent after its answer
//! (a server that speaks first loses nothing).

use super::metrics::TunnelMetrics;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Why a connection through a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("node tunnel {tunnel}: {source}")]
    Connect {
        tunnel: SocketAddr,
        source: io::Error,
    },
    #[error("node tunnel {tunnel}: {source}")]
    Http {
        tunnel: SocketAddr,
        source: hyper::Error,
    },
    #[error("node tunnel {tunnel} refused {target}: {status}")]
    Refused {
        tunnel: SocketAddr,
        target: SocketAddr,
        status: StatusCode,
    },
    #[error("node tunnel {tunnel}: TLS: {source}")]
    Tls {
        tunnel: SocketAddr,
        source: io::Error,
    },
    #[error("node tunnel {tunnel} closed the connection before answering")]
    Closed { tunnel: SocketAddr },
    #[error(
        "{target} is on another node but this node has no tunnel credential (the kube-system/wharf-node-proxy secret) or no node certificate"
    )]
    NoCredential { target: SocketAddr },
}

impl From<DialError> for io::Error {
    fn from(e: DialError) -> io::Error {
        match e {
            DialError::Connect { source, .. } => source,
            DialError::Tls { .. } => io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()),
            DialError::Refused {
                status: StatusCode::PROXY_AUTHENTICATION_REQUIRED | StatusCode::FORBIDDEN,
                ..
            } => io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()),
            other => io::Error::other(other.to_string()),
        }
    }
}

/// A connection to `target` through the tunnel at `tunnel`, over TLS with `tls` (the
/// tunnel's certificate verified for its IP), authenticated with `credential`.
pub async fn dial(
    tunnel: SocketAddr,
    target: SocketAddr,
    credential: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<TokioIo<Upgraded>, DialError> {
    let stream = TcpStream::connect(tunnel)
        .await
        .map_err(|source| DialError::Connect { tunnel, source })?;
    let _ = stream.set_nodelay(true);
    let name = rustls::pki_types::ServerName::IpAddress(tunnel.ip().into());
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, stream)
        .await
        .map_err(|source| DialError::Tls { tunnel, source })?;
    let http = |source| DialError::Http { tunnel, source };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let mut conn = conn.with_upgrades();
    let authority = target.to_string();
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(authority.as_str())
        .header(header::HOST, authority.as_str())
        .header(
            header::PROXY_AUTHORIZATION,
            super::authorization(credential),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|_| DialError::Closed { tunnel })?;
    // The connection is driven until the upgrade: it ends (handing the socket over) as
    // soon as the response is in, possibly before the response future is polled again.
    let send = sender.send_request(request);
    tokio::pin!(send);
    let mut conn_done = false;
    let response = tokio::select! {
        biased;
        response = &mut send => response.map_err(http)?,
        done = &mut conn => {
            done.map_err(http)?;
            conn_done = true;
            send.await.map_err(|_| DialError::Closed { tunnel })?
        }
    };
    if response.status() != StatusCode::OK {
        return Err(DialError::Refused {
            tunnel,
            target,
            status: response.status(),
        });
    }
    let upgraded = if conn_done {
        hyper::upgrade::on(response).await
    } else {
        let (upgraded, done) = tokio::join!(hyper::upgrade::on(response), conn);
        done.map_err(http)?;
        upgraded
    };
    Ok(TokioIo::new(upgraded.map_err(http)?))
}

/// A connection to an endpoint: direct, or through the endpoint's node's tunnel.
#[derive(Debug)]
pub enum Upstream {
    Direct(TcpStream),
    Tunneled(TokioIo<Upgraded>),
}

impl Upstream {
    pub fn is_tunneled(&self) -> bool {
        matches!(self, Upstream::Tunneled(_))
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tunneled(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tunneled(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tunneled(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tunneled(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Upstream::Tunneled(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Upstream::Direct(s) => s.is_write_vectored(),
            Upstream::Tunneled(s) => s.is_write_vectored(),
        }
    }
}

/// For the proxy's pooled HTTP client: an upstream is a plain connection.
impl Connection for Upstream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Pod IP → the tunnel of the node it runs on, for the pods reached through a tunnel.
pub type Routes = HashMap<IpAddr, SocketAddr>;

/// How a node connects to endpoints: through the tunnel the route table names for the
/// endpoint's IP, else directly. The table is replaced whole by the proxy on every
/// snapshot ([`Dialer::set_routes`]); a dial reads it once.
#[derive(Debug)]
pub struct Dialer {
    routes: RwLock<Arc<Routes>>,
    credential: Option<Arc<str>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    metrics: Arc<TunnelMetrics>,
}

impl Dialer {
    /// Dials tunnels with `credential` over `tls` (the node's certificate, see
    /// [`crate::tls`]); without either, only directly.
    pub fn new(
        credential: Option<&str>,
        tls: Option<Arc<rustls::ClientConfig>>,
        metrics: Arc<TunnelMetrics>,
    ) -> Self {
        Dialer {
            routes: RwLock::default(),
            credential: credential.filter(|c| !c.is_empty()).map(Arc::from),
            tls,
            metrics,
        }
    }

    /// A dialer that always connects directly (no routes, no credential).
    pub fn direct() -> Self {
        Dialer::new(None, None, Arc::default())
    }

    /// Replaces the route table; returns whether it changed.
    pub fn set_routes(&self, routes: Routes) -> bool {
        let mut current = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        if **current == routes {
            return false;
        }
        *current = Arc::new(routes);
        true
    }

    /// The tunnel `ip` is reached through, if any.
    pub fn tunnel_for(&self, ip: IpAddr) -> Option<SocketAddr> {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ip)
            .copied()
    }

    /// A connection to `addr`, through its tunnel if the route table names one.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<Upstream> {
        match self.tunnel_for(addr.ip()) {
            Some(tunnel) => Ok(self.through(tunnel, addr).await?),
            None => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Ok(Upstream::Direct(stream))
            }
        }
    }

    /// A connection to `target` through the tunnel at `tunnel`, counted in the metrics.
    pub async fn through(
        &self,
        tunnel: SocketAddr,
        target: SocketAddr,
    ) -> Result<Upstream, DialError> {
        let (Some(credential), Some(tls)) = (&self.credential, &self.tls) else {
            self.metrics.dialed(false);
            return Err(DialError::NoCredential { target });
        };
        let dialed = dial(tunnel, target, credential, tls).await;
        self.metrics.dialed(dialed.is_ok());
        if let Err(e) = &dialed {
            tracing::debug!(%tunnel, %target, error = %e, "dial through node tunnel failed");
        }
        dialed.map(Upstream::Tunneled)
    }
}
