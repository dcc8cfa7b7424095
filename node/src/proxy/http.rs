//! The L7 (HTTP/1.1) stack, for ports with `appProtocol: http` or named `http`/`http-*`:
//! the proxy terminates the client's connection and balances every **request**, so one
//! keep-alive client connection is spread over all endpoints, and requests reach backends
//! over pooled keep-alive connections.
//!
//! ```text
//! request from a client connection (hyper server, HTTP/1.1)
//!   │  metrics        requests, failures, active per Service port
//!   │  hold           a Service scaled to zero without endpoints: wait for a wake-up
//!   │                 (bounded, with a timeout; see [`super::wake`])
//!   │  load shed      over the limit: 503 at once
//!   │  concurrency    at most `max_in_flight` requests awaiting a response per port
//!   │  retry          idempotent, bodiless requests that got no response: another endpoint
//!   │  balance        p2c least-loaded or round robin, per request
//!   ▼  endpoint       the shared pooled client (hyper-util legacy); its connector dials
//!                     through the node's Dialer (directly, or through the endpoint's node
//!                     tunnel), with the connect timeout; the request goes to
//!                     http://ENDPOINT/path, Host unchanged
//! ```
//!
//! The endpoint's load is held until the response body ends (a long download counts).
//! Failures answer 503 (no endpoint, shed, not woken in time) or 502 (the endpoint failed) with a text body.
//! Upgrades (WebSocket) and h2c are not proxied here; a port that needs them should not be
//! marked HTTP, and then gets the L4 path.
//!
//! The one task this module does not own is the legacy client's: it drives each pooled
//! backend connection in a task of its own (that is how its pool works). Those tasks end
//! with their connection: when the backend closes it, after 90 s idle, or when the
//! proxy's client (and so the pool) is dropped at shutdown.

use super::ProxyConfig;
use super::balance::{Balance, Balanced, NoEndpoints, PolicyCell};
use super::discover::EndpointSet;
use super::metrics::{MetricsLayer, PortStats};
use super::retry::{HttpRetry, ProxyBody, idempotent};
use super::wake::{HoldError, HoldLayer, PortWake};
use crate::tunnel::client::{Dialer, Upstream};
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::limit::ConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::load_shed::error::Overloaded;
use tower::retry::RetryLayer;
use tower::util::BoxCloneService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

/// The pooled client shared by every HTTP port of a node: one pool, keyed by endpoint, so
/// endpoint set changes never touch connections to endpoints that remain.
pub type HttpClient = Client<EndpointConnector, ProxyBody>;

/// The pooled client's connector: `http://IP:PORT` through the node's [`Dialer`], within
/// the connect timeout.
#[derive(Clone)]
pub struct EndpointConnector {
    dialer: Arc<Dialer>,
    timeout: Duration,
}

impl Service<http::Uri> for EndpointConnector {
    type Response = TokioIo<Upstream>;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, std::io::Result<TokioIo<Upstream>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (dialer, timeout) = (self.dialer.clone(), self.timeout);
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("not an endpoint address: {uri}"),
                    )
                })?;
            match tokio::time::timeout(timeout, dialer.connect(addr)).await {
                Ok(upstream) => upstream.map(TokioIo::new),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out"),
                )),
            }
        })
    }
}

/// What the proxy answers clients with.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// The per-request service of one Service port.
pub type HttpStack = BoxCloneService<Request<ProxyBody>, Balanced<Response<Incoming>>, BoxError>;

/// The node's pooled client.
pub fn client(config: &ProxyConfig, dialer: Arc<Dialer>) -> HttpClient {
    let connector = EndpointConnector {
        dialer,
        timeout: config.connect_timeout,
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .build(connector)
}

/// Sends requests to one endpoint through the pooled client.
#[derive(Clone)]
pub struct HttpEndpoint {
    client: HttpClient,
    addr: SocketAddr,
}

impl Service<Request<ProxyBody>> for HttpEndpoint {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Incoming>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ProxyBody>) -> Self::Future {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(self.addr.to_string())
            .path_and_query(path)
            .build();
        let client = self.client.clone();
        Box::pin(async move {
            *req.uri_mut() = uri?;
            Ok(client.request(req).await?)
        })
    }
}

/// The whole L7 stack of one Service port; `wake`: the port holds requests while its
/// Service is asleep (Service ports; not Ingress backends).
pub fn stack(
    endpoints: Arc<EndpointSet>,
    policy: Arc<PolicyCell>,
    stats: Arc<PortStats>,
    client: HttpClient,
    config: &ProxyConfig,
    wake: Option<Arc<PortWake>>,
) -> HttpStack {
    let stack = ServiceBuilder::new()
        // Metrics: requests taken, failed and awaiting a response (held ones included),
        // per Service port.
        .layer(MetricsLayer::new(stats))
        // Hold: while the Service is scaled to zero, wait for an endpoint.
        .option_layer(wake.map(HoldLayer::new))
        // Load shed: when the limit below has no slot, answer 503 now instead of queueing.
        .layer(LoadShedLayer::new())
        // Concurrency limit: requests in flight at once, per Service port.
        .layer(ConcurrencyLimitLayer::new(config.max_in_flight))
        // Retry: idempotent requests without a body that failed before any response are
        // sent again to another endpoint.
        .layer(RetryLayer::new(HttpRetry::new(config.connect_attempts)))
        // Balance: one endpoint per request, by the Service's policy.
        .service(Balance::new(endpoints, policy, move |addr: SocketAddr| {
            // Endpoint: pooled keep-alive connections to this address (connect timeout in
            // the client's connector).
            HttpEndpoint {
                client: client.clone(),
                addr,
            }
        }));
    BoxCloneService::new(stack)
}

/// Headers that describe one hop, not the message (RFC 9110 7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

pub(crate) fn error_response(status: StatusCode, message: String) -> Response<ResponseBody> {
    let body = Full::new(Bytes::from(message + "\n"))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Proxies one request through the stack; never fails (errors become 502/503 answers).
pub async fn proxy_request(stack: HttpStack, req: Request<Incoming>) -> Response<ResponseBody> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // A bodiless idempotent request is held as an empty body so it can be replayed.
    let body: ProxyBody = if idempotent(&parts.method) && body.is_end_stream() {
        Either::Left(Empty::new())
    } else {
        Either::Right(body)
    };
    match stack.oneshot(Request::from_parts(parts, body)).await {
        Ok(Balanced { response, load, .. }) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // The endpoint's load lasts until the body is done (or dropped).
            let body = body
                .map_frame(move |frame| {
                    let _in_flight = &load;
                    frame
                })
                .map_err(BoxError::from)
                .boxed_unsync();
            Response::from_parts(parts, body)
        }
        Err(e) if e.is::<NoEndpoints>() => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "wharf proxy: no endpoints available for this service".into(),
        ),
        Err(e) if e.is::<HoldError>() => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, format!("wharf proxy: {e}"))
        }
        Err(e) if e.is::<Overloaded>() => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "wharf proxy: too many requests in flight for this service".into(),
        ),
        Err(e) => {
            tracing::debug!(error = %e, "proxied request failed");
            error_response(StatusCode::BAD_GATEWAY, format!("wharf proxy: {e}"))
        }
    }
}

/// Serves one client connection: HTTP/1.1 with keep-alive, each request through the stack.
/// `stop` (the listener is going away) lets the request in flight finish and then closes;
/// `shutdown` (the node stops) cuts it.
pub async fn serve_connection(
    stream: TcpStream,
    stack: HttpStack,
    stop: CancellationToken,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let stack = stack.clone();
        async move { Ok::<_, Infallible>(proxy_request(stack, req).await) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => {
            if let Err(e) = done {
                tracing::debug!(error = %e, "proxied HTTP connection ended with an error");
            }
            return;
        }
        _ = stop.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn => {}
        _ = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::proxy::model::LbPolicy;
    use hyper::server::conn::http1;
    use tokio::net::TcpListener;
    use tokio::task::JoinSet;

    /// An HTTP backend answering `NAME PATH`; requests to `/fail` drop the connection
    /// without a response.
    async fn backend(name: &'static str, tasks: &mut JoinSet<()>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                conns.spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<Incoming>| async move {
                            if req.uri().path() == "/fail" {
                                return Err("drop");
                            }
                            let host = req
                                .headers()
                                .get(header::HOST)
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            Ok(Response::new(Full::new(Bytes::from(format!(
                                "{name} {} {host}",
                                req.uri().path()
                            )))))
                        });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    }

    async fn get(
        sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        method: &str,
        path: &str,
    ) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "web.default")
            .body(Empty::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn balances_per_request_on_one_connection_and_retries_idempotent_failures() {
        let mut tasks = JoinSet::new();
        let a = backend("a", &mut tasks).await;
        let b = backend("b", &mut tasks).await;
        let dead = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let set = Arc::new(EndpointSet::new());
        set.reset([a, b]);
        let config = ProxyConfig::default();
        let stats = Arc::new(PortStats::default());
        let stack = stack(
            set.clone(),
            Arc::new(PolicyCell::new(LbPolicy::RoundRobin)),
            stats.clone(),
            client(&config, Arc::new(Dialer::direct())),
            &config,
            None,
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let never = CancellationToken::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                conns.spawn(serve_connection(
                    s,
                    stack.clone(),
                    never.clone(),
                    never.clone(),
                ));
            }
        });
        let io = TokioIo::new(TcpStream::connect(proxy).await.unwrap());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tasks.spawn(async move {
            let _ = conn.await;
        });

        // One client connection, requests alternate between the endpoints; Host is kept.
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (status, body) = get(&mut sender, "GET", "/x").await;
            assert_eq!(status, StatusCode::OK);
            assert!(body.ends_with("/x web.default"), "{body}");
            seen.push(body.split(' ').next().unwrap().to_string());
        }
        assert_eq!(seen, ["a", "b", "a", "b"]);

        // A dead endpoint: idempotent requests are retried on a live one.
        set.reset([dead, a]);
        for _ in 0..4 {
            let (status, body) = get(&mut sender, "GET", "/y").await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(body.starts_with("a /y"), "{body}");
        }
        // A POST is not retried: it fails when it lands on the dead endpoint.
        let mut statuses = Vec::new();
        for _ in 0..2 {
            statuses.push(get(&mut sender, "POST", "/z").await.0);
        }
        statuses.sort();
        assert_eq!(statuses, [StatusCode::OK, StatusCode::BAD_GATEWAY]);

        // No endpoints: 503.
        set.reset([]);
        assert_eq!(
            get(&mut sender, "GET", "/").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(stats.requests(), 11);
        assert_eq!(stats.failures(), 2);
        tasks.abort_all();
    }

    /// A Service marked for wake-ups: with no endpoint its requests wait, counted in
    /// flight, and go to the first endpoint that appears; one that waits too long gets a
    /// 503 saying why.
    #[tokio::test]
    async fn requests_to_a_sleeping_service_wait_for_its_first_endpoint() {
        let mut tasks = JoinSet::new();
        let a = backend("a", &mut tasks).await;
        let set = Arc::new(EndpointSet::new());
        let config = ProxyConfig {
            hold_timeout: Duration::from_millis(500),
            ..ProxyConfig::default()
        };
        let stats = Arc::new(PortStats::default());
        let wake = Arc::new(PortWake::new(
            crate::proxy::model::ServiceKey::new("default", "web"),
            80,
            set.clone(),
            Arc::new(crate::proxy::wake::NoSignal),
            config.hold_timeout,
            config.max_held,
        ));
        wake.set_workload(Some("web".into()));
        let stack = stack(
            set.clone(),
            Arc::new(PolicyCell::new(LbPolicy::RoundRobin)),
            stats.clone(),
            client(&config, Arc::new(Dialer::direct())),
            &config,
            Some(wake),
        );
        let request = || {
            Request::builder()
                .uri("/x")
                .header(header::HOST, "web.default")
                .body(Either::Left(Empty::new()))
                .unwrap()
        };
        let answer = |stack: HttpStack, req: Request<ProxyBody>| async move {
            match stack.oneshot(req).await {
                Ok(Balanced { response, .. }) => {
                    let status = response.status();
                    let body = response.into_body().collect().await.unwrap().to_bytes();
                    (status, String::from_utf8_lossy(&body).into_owned())
                }
                Err(e) => {
                    assert!(e.is::<HoldError>(), "{e}");
                    (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                }
            }
        };
        // No endpoint for longer than the hold timeout: 503, saying why.
        let (status, body) = answer(stack.clone(), request()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("is scaled to zero"), "{body}");
        // Held while there is none, counted in flight, released to the first one.
        let held = tokio::spawn(answer(stack.clone(), request()));
        tokio::time::timeout(Duration::from_secs(5), async {
            while stats.active() != 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        set.reset([a]);
        let (status, body) = tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "a /x web.default")
        );
        tasks.abort_all();
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::HOST, "web".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::HOST));
    }
}
