//! The L4 (TCP) stack: every accepted connection is forwarded, byte for byte, to one
//! endpoint chosen per connection.
//!
//! ```text
//! accepted TcpStream
//!   │  metrics        requests (= connections), failures, active per Service port
//!   │  load shed      over the limit: refused at once (the connection is closed)
//!   │  concurrency    at most `max_in_flight` connections proxied per Service port
//!   ▼  forward        connect (below), then copy both ways until either side closes
//!        │  retry     a failed connect is tried again on another endpoint
//!        │  balance   p2c least-loaded or round robin over the EndpointSet
//!        │  timeout   per endpoint: the connect must finish in `connect_timeout`
//!        ▼  connect   the node's Dialer: TcpStream::connect(endpoint), or through the
//!                     endpoint's node tunnel when it runs on a node at another address
//! ```
//!
//! The connection's slot in the concurrency limit and its endpoint's load are held for
//! the whole life of the connection (the forward future ends when the copy ends), so the
//! limit counts connections and p2c compares open connections.

use super::balance::{Balance, Balanced};
use super::discover::EndpointSet;
use super::metrics::{MetricsLayer, PortStats};
use super::retry::{ConnectRequest, ConnectRetry};
use super::{ProxyConfig, balance::PolicyCell};
use crate::tunnel::client::{Dialer, Upstream};
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::limit::ConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::retry::RetryLayer;
use tower::util::BoxCloneService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

/// The per-connection service of one Service port.
pub type TcpStack = BoxCloneService<TcpStream, (), BoxError>;

/// Connects to one endpoint: the innermost service.
#[derive(Debug, Clone)]
pub struct TcpConnect {
    addr: SocketAddr,
    dialer: Arc<Dialer>,
}

impl TcpConnect {
    pub fn new(addr: SocketAddr, dialer: Arc<Dialer>) -> Self {
        TcpConnect { addr, dialer }
    }
}

impl Service<ConnectRequest> for TcpConnect {
    type Response = Upstream;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, std::io::Result<Upstream>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: ConnectRequest) -> Self::Future {
        let (addr, dialer) = (self.addr, self.dialer.clone());
        Box::pin(async move { dialer.connect(addr).await })
    }
}

/// The connect half: retry → balance → timeout → connect.
pub fn connect_stack(
    endpoints: Arc<EndpointSet>,
    policy: Arc<PolicyCell>,
    config: &ProxyConfig,
    dialer: Arc<Dialer>,
) -> BoxCloneService<ConnectRequest, Balanced<Upstream>, BoxError> {
    let connect_timeout = config.connect_timeout;
    let stack = ServiceBuilder::new()
        // Retry: a connect that failed or timed out is tried on another endpoint (the
        // request remembers what it tried; the balancer skips those).
        .layer(RetryLayer::new(ConnectRetry::new(config.connect_attempts)))
        // Balance: one endpoint per connection, by the Service's policy, from the
        // EndpointSet the discovery keeps current.
        .service(Balance::new(endpoints, policy, move |addr: SocketAddr| {
            ServiceBuilder::new()
                // Connect timeout: an endpoint that does not accept in time has failed.
                .timeout(connect_timeout)
                // Connect: a TCP connection to the endpoint, direct or tunneled.
                .service(TcpConnect::new(addr, dialer.clone()))
        }));
    BoxCloneService::new(stack)
}

/// Forwards one accepted connection through a connection from the connect stack.
#[derive(Clone)]
pub struct Forward<C> {
    connect: C,
    shutdown: CancellationToken,
}

impl<C> Service<TcpStream> for Forward<C>
where
    C: Service<ConnectRequest, Response = Balanced<Upstream>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    C::Future: Send,
{
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<(), BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut inbound: TcpStream) -> Self::Future {
        let connect = self.connect.clone();
        let shutdown = self.shutdown.clone();
        Box::pin(async move {
            let Balanced {
                response: mut upstream,
                endpoint,
                load,
            } = connect.oneshot(ConnectRequest::default()).await?;
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut inbound, &mut upstream) => {
                    if let Err(e) = copied {
                        tracing::debug!(%endpoint, error = %e, "proxied connection ended with an error");
                    }
                }
                // The node is stopping: connections end with it.
                _ = shutdown.cancelled() => {}
            }
            drop(load);
            Ok(())
        })
    }
}

/// The whole L4 stack of one Service port.
pub fn stack(
    endpoints: Arc<EndpointSet>,
    policy: Arc<PolicyCell>,
    stats: Arc<PortStats>,
    config: &ProxyConfig,
    dialer: Arc<Dialer>,
    shutdown: CancellationToken,
) -> TcpStack {
    let stack = ServiceBuilder::new()
        // Metrics: connections taken, failed and open, per Service port.
        .layer(MetricsLayer::new(stats))
        // Load shed: when the limit below has no slot, fail now instead of queueing.
        .layer(LoadShedLayer::new())
        // Concurrency limit: connections proxied at once, per Service port.
        .layer(ConcurrencyLimitLayer::new(config.max_in_flight))
        // Forward: connect through the connect stack, then copy bytes both ways.
        .service(Forward {
            connect: connect_stack(endpoints, policy, config, dialer),
            shutdown,
        });
    BoxCloneService::new(stack)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::proxy::model::LbPolicy;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An echo server that prefixes every answer with its name; returns its address.
    async fn echo(name: &'static str, tasks: &mut tokio::task::JoinSet<()>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tasks.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                conns.spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let mut out = name.as_bytes().to_vec();
                        out.extend_from_slice(&buf[..n]);
                        if s.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    /// A proxy in front of `set` on a local port, dialing with `dialer`; returns its
    /// address.
    async fn front_with(
        set: Arc<EndpointSet>,
        config: &ProxyConfig,
        stats: Arc<PortStats>,
        dialer: Arc<Dialer>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> SocketAddr {
        let stack = stack(
            set,
            Arc::new(PolicyCell::new(LbPolicy::RoundRobin)),
            stats,
            config,
            dialer,
            CancellationToken::new(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tasks.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                let svc = stack.clone();
                conns.spawn(async move {
                    let _ = svc.oneshot(s).await;
                });
            }
        });
        addr
    }

    /// [`front_with`] dialing directly.
    async fn front(
        set: Arc<EndpointSet>,
        config: &ProxyConfig,
        stats: Arc<PortStats>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> SocketAddr {
        front_with(set, config, stats, Arc::new(Dialer::direct()), tasks).await
    }

    async fn roundtrip(conn: &mut TcpStream, msg: &str) -> String {
        conn.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn endpoint_reset_keeps_existing_connections_and_retries_dead_endpoints() {
        let mut tasks = tokio::task::JoinSet::new();
        let a = echo("a:", &mut tasks).await;
        let b = echo("b:", &mut tasks).await;
        // An address nobody listens on: connects are refused.
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let set = Arc::new(EndpointSet::new());
        set.reset([a]);
        let config = ProxyConfig::default();
        let stats = Arc::new(PortStats::default());
        let proxy = front(set.clone(), &config, stats.clone(), &mut tasks).await;

        let mut first = TcpStream::connect(proxy).await.unwrap();
        assert_eq!(roundtrip(&mut first, "1").await, "a:1");
        assert_eq!(set.snapshot()[0].load(), 1);

        // a leaves, b and a dead endpoint arrive: the open connection to a keeps working,
        // new connections go to b (the dead one is retried away).
        set.reset([dead, b]);
        assert_eq!(roundtrip(&mut first, "2").await, "a:2");
        for i in 0..6 {
            let mut c = TcpStream::connect(proxy).await.unwrap();
            assert_eq!(roundtrip(&mut c, &i.to_string()).await, format!("b:{i}"));
        }
        // a comes back: the same open connection still works, and its load is counted.
        set.reset([a, b]);
        assert_eq!(roundtrip(&mut first, "3").await, "a:3");
        drop(first);
        assert_eq!(stats.failures(), 0);

        // Nothing routable: the connection is closed (a failure).
        set.reset([]);
        let mut c = TcpStream::connect(proxy).await.unwrap();
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        tokio::time::timeout(Duration::from_secs(5), async {
            while stats.failures() != 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        tasks.abort_all();
    }

    /// An endpoint the route table sends through a node tunnel is reached through it (the
    /// tunnel server counts it); the others are dialed directly.
    #[tokio::test]
    async fn routed_endpoints_go_through_their_nodes_tunnel() {
        use crate::agent::addresses::{PodAddresses, PodSockets};
        use crate::tunnel::metrics::{Outcome, TunnelMetrics};
        use crate::tunnel::server::{ServerConfig, serve};
        let mut tasks = tokio::task::JoinSet::new();
        let remote = {
            // A "pod" of the remote node, in that node's range.
            let l = TcpListener::bind("127.71.3.4:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tasks.spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    let _ = s.write_all(b"remote").await;
                }
            });
            addr
        };
        let local = echo("local:", &mut tasks).await;
        let server_metrics = Arc::new(TunnelMetrics::default());
        let tunnel_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tunnel = tunnel_listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let cluster = crate::tls::testing::Cluster::new();
        let server = tokio::spawn(serve(
            tunnel_listener,
            ServerConfig {
                credential: Some(Arc::from("cluster-secret")),
                pod_range: PodAddresses::new("127.71.0.0/16").unwrap(),
                pods: {
                    let pods = Arc::new(PodSockets::default());
                    pods.set([127, 71, 3, 4].into(), [remote.port()]);
                    pods
                },
                source: None,
                connect_timeout: Duration::from_secs(2),
                tls: cluster.tunnel_server("remote", "127.0.0.1"),
            },
            server_metrics.clone(),
            shutdown.clone(),
        ));
        let client_metrics = Arc::new(TunnelMetrics::default());
        let dialer = Arc::new(Dialer::new(
            Some("cluster-secret"),
            Some(cluster.dialer("local")),
            client_metrics.clone(),
        ));
        dialer.set_routes([(remote.ip(), tunnel)].into());
        let set = Arc::new(EndpointSet::new());
        set.reset([remote]);
        let config = ProxyConfig::default();
        let stats = Arc::new(PortStats::default());
        let proxy = front_with(set.clone(), &config, stats.clone(), dialer, &mut tasks).await;
        let mut c = TcpStream::connect(proxy).await.unwrap();
        let mut buf = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"remote");
        assert_eq!(server_metrics.connections(Outcome::Ok), 1);
        assert_eq!(client_metrics.dials(true), 1);
        // A local endpoint: direct, the tunnel sees nothing more.
        set.reset([local]);
        let mut c = TcpStream::connect(proxy).await.unwrap();
        assert_eq!(roundtrip(&mut c, "x").await, "local:x");
        assert_eq!(server_metrics.connections(Outcome::Ok), 1);
        assert_eq!(stats.failures(), 0);
        shutdown.cancel();
        server.await.unwrap();
        tasks.abort_all();
    }

    #[tokio::test]
    async fn load_shedding_refuses_connections_over_the_limit() {
        let mut tasks = tokio::task::JoinSet::new();
        let a = echo("a:", &mut tasks).await;
        let set = Arc::new(EndpointSet::new());
        set.reset([a]);
        let config = ProxyConfig {
            max_in_flight: 1,
            ..ProxyConfig::default()
        };
        let stats = Arc::new(PortStats::default());
        let proxy = front(set, &config, stats.clone(), &mut tasks).await;
        let mut held = TcpStream::connect(proxy).await.unwrap();
        assert_eq!(roundtrip(&mut held, "x").await, "a:x");
        // The only slot is taken: the next connection is shed (closed without an answer).
        let mut shed = TcpStream::connect(proxy).await.unwrap();
        let _ = shed.write_all(b"y").await;
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), shed.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        tokio::time::timeout(Duration::from_secs(5), async {
            while stats.failures() != 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        // The slot frees when the first connection closes.
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let mut c = TcpStream::connect(proxy).await.unwrap();
                c.write_all(b"z").await.unwrap();
                let mut buf = [0u8; 8];
                if let Ok(n) = c.read(&mut buf).await
                    && n > 0
                {
                    assert_eq!(&buf[..n], b"a:z");
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        tasks.abort_all();
    }
}
