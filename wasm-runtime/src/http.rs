//! Serving a `wasi:http/incoming-handler` component.
//!
//! As `wasmtime serve` does: the component is pre-instantiated once per image (`ProxyPre`,
//! made at pull time), and every request gets a fresh `Store` and instance, so requests are
//! isolated from each other and run concurrently (one tokio task per connection, one per
//! request instance). With the pooling allocator an instantiation is a few microseconds.
//! The container's memory limit is shared by its in-flight request instances and its CPU
//! limit throttles all of them together.
//!
//! A request whose instance traps is answered `500` and the error goes to the container's
//! stderr log; the container keeps serving (an instance per request has no state to
//! corrupt). One that trapped after hitting the memory limit counts as an OOM event
//! ([`crate::ContainerStats::oom_events`]).
//!
//! **Stop**: stop accepting (the listening socket is closed at once), ask every connection to
//! finish its in-flight request and close (hyper's graceful shutdown; idle keep-alive
//! connections close immediately), and wait for connections and request instances to finish;
//! on kill, drop them all.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::container::{ContainerShared, ExitStatus, classify_error};
use crate::guest::{P2State, StoreFactory, error_response};
use crate::logs::LogStream;

/// Everything a connection and a request need.
pub(crate) struct HttpServer {
    pub(crate) pre: ProxyPre<P2State>,
    pub(crate) factory: StoreFactory,
    pub(crate) shared: Arc<ContainerShared>,
    pub(crate) stop: CancellationToken,
    pub(crate) kill: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

/// How long to wait for killed connections and instances to unwind (they do so at their
/// next await or epoch yield, so this is a safety net, not an expected delay).
const UNWIND: Duration = Duration::from_secs(5);

/// Accepts and serves until stopped; returns once every connection and request instance has
/// finished (graceful) or been dropped (killed).
pub(crate) async fn serve(listener: TcpListener, server: Arc<HttpServer>) -> ExitStatus {
    loop {
        tokio::select! {
            _ = server.stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    server.tracker.spawn(serve_connection(stream, server.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::select! {
                        _ = server.stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            }
        }
    }
    drop(listener);
    server.tracker.close();
    let drained = tokio::select! {
        _ = server.tracker.wait() => true,
        _ = server.kill.cancelled() => false,
    };
    if drained {
        return ExitStatus::completed("stopped: drained in-flight requests");
    }
    if tokio::time::timeout(UNWIND, server.tracker.wait())
        .await
        .is_err()
    {
        tracing::error!("HTTP container tasks did not unwind within {UNWIND:?} of being killed");
    }
    ExitStatus::killed("killed: in-flight requests did not finish within the grace period")
}

async fn serve_connection(stream: TcpStream, server: Arc<HttpServer>) {
    let service = hyper::service::service_fn({
        let server = server.clone();
        move |request| handle(server.clone(), request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("HTTP connection ended with an error: {e}");
            }
            return;
        }
        _ = server.stop.cancelled() => {}
    }
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = server.kill.cancelled() => {}
    }
}

/// Runs one request in a fresh instance.
async fn handle(
    server: Arc<HttpServer>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<HyperOutgoingBody>, Infallible> {
    server.shared.requests.fetch_add(1, Ordering::Relaxed);
    let mut store = match server.factory.p2_store() {
        Ok(store) => store,
        Err(e) => {
            server
                .factory
                .logs
                .write_line(LogStream::Stderr, &format!("wharf: request failed: {e}"));
            return Ok(error_response(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "cannot create instance",
            ));
        }
    };
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let incoming = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request);
    let outparam = store.data_mut().http().new_response_outparam(sender);
    let (incoming, outparam) = match (incoming, outparam) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("preparing a wasi:http request failed: {e:#}");
            return Ok(error_response(http::StatusCode::BAD_REQUEST, "bad request"));
        }
    };
    let pre = server.pre.clone();
    let kill = server.kill.clone();
    let logs = server.factory.logs.clone();
    let shared = server.shared.clone();
    // The instance runs in its own task: it may keep streaming the body after the response
    // head has been handed to hyper.
    let guest = server.tracker.spawn(async move {
        let run = async {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, outparam)
                .await
        };
        let result = tokio::select! {
            result = run => Some(result),
            _ = kill.cancelled() => None,
        };
        let limit_hit = store.data().common.limiter.limit_hit();
        drop(store);
        match result {
            Some(Err(e)) => {
                let status = classify_error(&e, limit_hit, &shared.budget);
                logs.write_line(
                    LogStream::Stderr,
                    &format!(
                        "wharf: request failed: {}: {}",
                        status.reason, status.message
                    ),
                );
                false
            }
            Some(Ok(())) => true,
            None => false,
        }
    });
    match receiver.await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(code)) => Ok(error_response(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the handler failed: {code:?}"),
        )),
        // The outparam was dropped unset: the guest failed (logged by its task) or returned
        // without answering.
        Err(_) => {
            let answered_nothing = guest.await.unwrap_or(false);
            let message = if answered_nothing {
                "the handler returned no response"
            } else {
                "the handler failed"
            };
            Ok(error_response(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                message,
            ))
        }
    }
}
