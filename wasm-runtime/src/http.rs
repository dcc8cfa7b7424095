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
//! **Bounds** (every instance holds a slot of the node's pool, and a handler that never
//! returns would hold it forever):
//! - a request whose client went away is cancelled: its instance task is aborted when
//!   hyper drops the request (the client closed the connection before the answer), or
//!   when the connection ends while the instance still streams its body;
//! - a request runs at most its container's request timeout ([`crate::HttpLimits`]):
//!   not answered by then, it gets `504 Gateway Timeout` and its instance is dropped;
//! - a container runs at most its concurrency limit of instances at once
//!   ([`crate::max_concurrency`]); a request beyond it gets `503 Service Unavailable`
//!   at once, so one pod takes at most its share of the pool.
//!
//! **Stop**: stop accepting (the listening socket is closed at once), ask every connection to
//! finish its in-flight request and close (hyper's graceful shutdown; idle keep-alive
//! connections close immediately), and wait for connections and request instances to finish;
//! on kill, drop them all.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
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
    /// One permit per request instance allowed at once.
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) max_concurrency: u32,
    pub(crate) request_timeout: Duration,
}

/// The instance tasks of one connection that outlived their request's answer (they stream
/// the body): aborted when the connection ends, since nobody reads them any more.
#[derive(Default)]
struct ConnectionGuests(Mutex<Vec<AbortHandle>>);

impl ConnectionGuests {
    fn add(&self, task: AbortHandle) {
        let mut tasks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

impl Drop for ConnectionGuests {
    fn drop(&mut self) {
        let tasks = self.0.get_mut().unwrap_or_else(PoisonError::into_inner);
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}

/// Aborts an instance task when dropped, unless handed on: what cancels a request whose
/// client went away (hyper drops the request's future) or that timed out.
struct AbortOnDrop(Option<AbortHandle>);

impl AbortOnDrop {
    fn hand_to(mut self, guests: &ConnectionGuests) {
        if let Some(task) = self.0.take() {
            guests.add(task);
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// An instance's hold on a slot: counted in [`crate::ContainerStats::in_flight`] for as
/// long as the instance task lives (aborted or not).
struct Slot {
    _permit: OwnedSemaphorePermit,
    shared: Arc<ContainerShared>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
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
    // Dropped when this function returns, whichever way: aborts what still runs.
    let guests = Arc::new(ConnectionGuests::default());
    let service = hyper::service::service_fn({
        let server = server.clone();
        let guests = guests.clone();
        move |request| handle(server.clone(), guests.clone(), request)
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
    guests: Arc<ConnectionGuests>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<HyperOutgoingBody>, Infallible> {
    server.shared.requests.fetch_add(1, Ordering::Relaxed);
    let Ok(permit) = server.slots.clone().try_acquire_owned() else {
        server.shared.rejected.fetch_add(1, Ordering::Relaxed);
        return Ok(error_response(
            http::StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "too many requests in flight: this container runs at most {} at once",
                server.max_concurrency
            ),
        ));
    };
    server.shared.in_flight.fetch_add(1, Ordering::Relaxed);
    let slot = Slot {
        _permit: permit,
        shared: server.shared.clone(),
    };
    let deadline = tokio::time::Instant::now() + server.request_timeout;
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
    let timeout = server.request_timeout;
    // Set once the answer's head went to hyper: a timeout after that cuts the body (the
    // instance task reports it), one before is answered 504 here.
    let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered_in_task = answered.clone();
    // The instance runs in its own task: it may keep streaming the body after the response
    // head has been handed to hyper. The task holds the slot; aborting it drops the store
    // and frees the instance.
    let guest = server.tracker.spawn(async move {
        let _slot = slot;
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
            _ = tokio::time::sleep_until(deadline) => {
                if answered_in_task.load(Ordering::Acquire) {
                    shared.timed_out.fetch_add(1, Ordering::Relaxed);
                    logs.write_line(
                        LogStream::Stderr,
                        &format!("wharf: request cancelled: its body was still streaming at its timeout of {timeout:?}"),
                    );
                }
                None
            }
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
    let guard = AbortOnDrop(Some(guest.abort_handle()));
    let timed_out = || {
        server.shared.timed_out.fetch_add(1, Ordering::Relaxed);
        server.factory.logs.write_line(
            LogStream::Stderr,
            &format!("wharf: request cancelled: no answer within its timeout of {timeout:?}"),
        );
        Ok(error_response(
            http::StatusCode::GATEWAY_TIMEOUT,
            &format!("the handler did not answer within {timeout:?}"),
        ))
    };
    // On timeout the guard aborts the instance (its task may not have seen the deadline).
    let Ok(answer) = tokio::time::timeout_at(deadline, receiver).await else {
        return timed_out();
    };
    match answer {
        Ok(Ok(response)) => {
            // The body may still be streaming: the instance lives as long as the connection.
            answered.store(true, Ordering::Release);
            guard.hand_to(&guests);
            Ok(crate::coalesce::coalesce(response).await)
        }
        Ok(Err(code)) => Ok(error_response(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the handler failed: {code:?}"),
        )),
        // The outparam was dropped unset: the guest failed (logged by its task) or returned
        // without answering.
        Err(_) if tokio::time::Instant::now() >= deadline => timed_out(),
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
