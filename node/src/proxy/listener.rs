//! Sockets shared by every node on the machine, and the accept loop of a Service port.
//!
//! Every node runs its own proxy and DNS, and several nodes may run on one machine (the
//! agents of one `wharf up`, or several `wharf node` processes). They all need the same
//! addresses: `clusterIP:port` for every Service port, the node address and `nodePort`,
//! the DNS address. Every such socket is bound with `SO_REUSEPORT` (and `SO_REUSEADDR`):
//! each node's proxy holds its own socket on the same address and the kernel spreads new
//! connections (and DNS datagrams) over them. Since every node's proxy serves the same
//! Services with the same endpoints from the same API, a request never depends on which
//! node's proxy took it, and when one node stops, the others keep the address served.
//!
//! Linux only lets sockets of the same user share a port this way, so another user (or a
//! non-wharf program) cannot steal a share of a Service's traffic; but two separate wharf
//! clusters of the same user on one machine must not use the same service range.

use super::http::{self, HttpStack};
use super::tcp::TcpStack;
use socket2::{Domain, Protocol, Socket, Type};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

fn shared_socket(addr: SocketAddr, ty: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A TCP listener other sockets of this user may share (`SO_REUSEPORT`).
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = shared_socket(addr, Type::STREAM, Protocol::TCP)?;
    socket.set_tcp_nodelay(true)?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// A UDP socket other sockets of this user may share (`SO_REUSEPORT`).
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = shared_socket(addr, Type::DGRAM, Protocol::UDP)?;
    UdpSocket::from_std(socket.into())
}

/// What a Service port's listener does with a connection.
#[derive(Clone)]
pub enum Handler {
    /// L4: forward the connection.
    Tcp(TcpStack),
    /// L7: serve HTTP/1.1 and balance every request.
    Http(HttpStack),
}

/// Accepts until `stop` (the Service port went away, or the node stops). Connections
/// already taken then finish on their own (an HTTP connection after its request in
/// flight); `shutdown` (the node stopping) cuts them.
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    stop: CancellationToken,
    shutdown: CancellationToken,
) {
    accept_loop(listener, "proxy", stop.clone(), move |stream, _peer| {
        let _ = stream.set_nodelay(true);
        Some(match &handler {
            Handler::Tcp(stack) => {
                let stack = stack.clone();
                Box::pin(async move {
                    if let Err(e) = stack.oneshot(stream).await {
                        tracing::debug!(error = %e, "proxied connection refused");
                    }
                }) as futures::future::BoxFuture<'static, ()>
            }
            Handler::Http(stack) => Box::pin(http::serve_connection(
                stream,
                stack.clone(),
                stop.clone(),
                shutdown.clone(),
            )),
        })
    })
    .await
}

/// Accepts connections on `listener` until `stop`, running what `handle` makes of each
/// (`None` turns the connection away) as a task; then waits for those tasks to end. An
/// accept error (out of file descriptors and the like) backs off instead of spinning.
/// The one accept loop of the node's listeners: Service ports, the tunnel, mirrors.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    what: &str,
    stop: CancellationToken,
    mut handle: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Some(task) = handle(stream, peer) {
                        conns.spawn(task);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_nodes_share_one_address() {
        let first = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind_tcp(addr).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        let udp = bind_udp(addr).unwrap();
        let udp2 = bind_udp(addr).unwrap();
        assert_eq!(udp.local_addr().unwrap(), udp2.local_addr().unwrap());
    }
}
