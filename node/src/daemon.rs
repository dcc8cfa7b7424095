//! The node's own HTTP server: container logs for the API server's `pods/log`, and the
//! proxy's and tunnel's counters at `/metrics`.
//!
//! TLS only, with the node's certificate ([`crate::tls`]). `GET
//! /containerLogs/{namespace}/{pod}/{container}` with `follow`, `tailLines`, `timestamps`
//! and `previous`, answering plain text, streamed as it is written when following. Only
//! the API server calls it: requests must come with its client certificate (of the
//! cluster CA, for `system:kube-apiserver-node-client`) and carry the bearer token the
//! control plane keeps in the `kube-system/wharf-node-proxy` Secret, which the agent reads
//! when it starts, so a pod or another user on the network cannot read logs directly.
//!
//! `POST /containerStdin/{namespace}/{pod}/{container}`, behind the same token: the body
//! is written to the standard input of a command started with `stdin: true`, for the API
//! server's `pods/attach` with `stdin` ([`container_stdin`]).
//!
//! `GET /stats/summary`, behind the same token: the guests' resource usage as the kubelet's
//! Summary API shapes it, which the API server reads to serve `metrics.k8s.io` (see
//! [`crate::stats`]).

use crate::container_id;
use crate::proxy;
use crate::tunnel::metrics::TunnelMetrics;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use wharf_control::apiserver::auth::ClientCert;
use wharf_control::nodetls::APISERVER_NODE_CLIENT;
use wharf_runtime::{LogLine, LogOptions, Runtime};

/// The Secret holding the token the API server presents to nodes.
pub const PROXY_SECRET_NAMESPACE: &str = "kube-system";
pub const PROXY_SECRET_NAME: &str = "wharf-node-proxy";
pub const PROXY_SECRET_KEY: &str = "token";

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// The API server's token for this node, if the control plane published one.
pub async fn proxy_token(client: &kube::Client) -> Option<String> {
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), PROXY_SECRET_NAMESPACE);
    match secrets.get_opt(PROXY_SECRET_NAME).await {
        Ok(Some(s)) => s
            .data
            .and_then(|d| {
                d.get(PROXY_SECRET_KEY)
                    .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
            })
            .filter(|t| !t.is_empty()),
        Ok(None) => {
            tracing::warn!(
                "no {PROXY_SECRET_NAMESPACE}/{PROXY_SECRET_NAME} secret: container logs will not be served"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the node proxy token failed: container logs will not be served");
            None
        }
    }
}

/// The pods a node runs, by `namespace/name`: the kubelet keeps it, the node server reads it.
pub type PodIndex = Arc<Mutex<HashMap<String, Arc<k8s_openapi::api::core::v1::Pod>>>>;

/// What the node server reads: the node's pods and their logs, and the counters it serves.
/// Handed over by whoever assembles the node, so the server knows nothing of the kubelet.
#[derive(Clone)]
pub struct DaemonContext {
    pub node_name: String,
    pub runtime: Arc<Runtime>,
    pub pods: PodIndex,
    pub services: Arc<proxy::Shared>,
    pub tunnel: Arc<TunnelMetrics>,
    /// The kubelet's and runtime's section of `/metrics`.
    pub kubelet: Arc<crate::metrics::NodeMetrics>,
    pub shutdown: CancellationToken,
}

#[derive(Clone)]
struct DaemonState {
    ctx: Arc<DaemonContext>,
    token: Option<Arc<str>>,
}

pub fn router(ctx: Arc<DaemonContext>, token: Option<String>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/stats/summary", get(stats_summary))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route(
            "/containerStdin/{namespace}/{pod}/{container}",
            post(container_stdin),
        )
        .with_state(DaemonState {
            ctx,
            token: token.map(Arc::from),
        })
}

/// Serves over TLS only (`tls`, see [`crate::tls`]) until the node shuts down.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<DaemonContext>,
    token: Option<String>,
    tls: Arc<rustls::ServerConfig>,
) {
    let shutdown = ctx.shutdown.clone();
    let app = router(ctx, token);
    if let Err(e) = wharf_control::controlplane::serve_tls(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        app,
        Default::default(),
        shutdown,
    )
    .await
    {
        tracing::error!(error = %e, "node server failed");
    }
}

/// The proxy's, DNS's and tunnel's counters, in Prometheus text format. Not behind the
/// token (like kube-proxy's metrics port): it holds counts per Service and tunnel totals,
/// nothing a pod could not see.
async fn metrics(State(state): State<DaemonState>) -> Response {
    let mut text = state.ctx.services.metrics.render();
    text.push_str(&state.ctx.tunnel.render());
    text.push_str(&state.ctx.kubelet.render());
    text.push_str(&crate::stats::render_metrics(
        &state.ctx.runtime.usage(),
        &node_pods(&state),
    ));
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    tail_lines: Option<usize>,
    #[serde(default)]
    timestamps: Option<String>,
    #[serde(default)]
    previous: Option<String>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true") | Some("1"))
}

fn text(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

fn render(line: &LogLine, timestamps: bool) -> String {
    let mut s = String::new();
    if timestamps {
        s.push_str(&line.timestamp);
        s.push(' ');
    }
    s.push_str(&line.text);
    if !line.partial {
        s.push('\n');
    }
    s
}

/// Refuses a request that does not come from the API server: its client certificate
/// (verified against the cluster CA in the TLS handshake) and its token.
fn refused(
    state: &DaemonState,
    cert: Option<&ClientCert>,
    headers: &HeaderMap,
) -> Option<Response> {
    if cert.is_none_or(|c| c.0.user != APISERVER_NODE_CLIENT) {
        return Some(text(
            StatusCode::UNAUTHORIZED,
            format!("Unauthorized: a client certificate for {APISERVER_NODE_CLIENT} is required"),
        ));
    }
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (&state.token, presented) {
        (Some(expected), Some(got)) if constant_time_eq(expected.as_bytes(), got.as_bytes()) => {
            None
        }
        (None, _) => Some(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node has no proxy token; logs and stats are not served".into(),
        )),
        _ => Some(text(StatusCode::UNAUTHORIZED, "Unauthorized".into())),
    }
}

/// The pods the node runs now.
fn node_pods(state: &DaemonState) -> Vec<Arc<k8s_openapi::api::core::v1::Pod>> {
    state
        .ctx
        .pods
        .lock()
        .map(|pods| pods.values().cloned().collect())
        .unwrap_or_default()
}

/// `GET /stats/summary`: the guests' usage now ([`crate::stats::summary`]).
async fn stats_summary(
    State(state): State<DaemonState>,
    cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = refused(&state, cert.as_deref(), &headers) {
        return refusal;
    }
    let snapshot = state.ctx.runtime.usage();
    let mut pods = node_pods(&state);
    pods.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    axum::Json(crate::stats::summary(
        &state.ctx.node_name,
        &snapshot,
        &pods,
    ))
    .into_response()
}

/// The uid of pod `namespace/pod` on this node and its container `container`'s spec, or
/// the answer saying which is not there.
#[allow(clippy::result_large_err)]
fn find_container(
    state: &DaemonState,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<(String, k8s_openapi::api::core::v1::Container), Response> {
    let found = state
        .ctx
        .pods
        .lock()
        .ok()
        .and_then(|pods| pods.get(&format!("{namespace}/{pod}")).cloned());
    let Some(found) = found else {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not on this node"),
        ));
    };
    let uid = found.metadata.uid.clone().unwrap_or_default();
    found
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .find(|c| c.name == container)
        .map(|c| (uid, c.clone()))
        .ok_or_else(|| {
            text(
                StatusCode::BAD_REQUEST,
                format!("container {container} is not valid for pod {pod}"),
            )
        })
}

/// `POST /containerStdin/{namespace}/{pod}/{container}`: the request body, as it comes,
/// is written to the standard input of a running command started with `stdin: true`
/// (what `kubectl attach -i` sends through the API server). When the body ends (the
/// attach ended), a container with `stdinOnce` has its input closed: it reads end of
/// file, and later attaches get none.
async fn container_stdin(
    State(state): State<DaemonState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refusal) = refused(&state, cert.as_deref(), &headers) {
        return refusal;
    }
    let (uid, spec) = match find_container(&state, &namespace, &pod, &container) {
        Ok(found) => found,
        Err(refusal) => return refusal,
    };
    if spec.stdin != Some(true) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} in pod {pod} does not set stdin: true"),
        );
    }
    let Some(stdin) = state.ctx.runtime.stdin(&container_id(&uid, &container)) else {
        return text(
            StatusCode::CONFLICT,
            format!("container {container} in pod {pod} is not running"),
        );
    };
    if stdin.is_closed().await {
        return text(
            StatusCode::CONFLICT,
            format!(
                "the standard input of container {container} in pod {pod} was closed \
                 (stdinOnce) when its first attach ended"
            ),
        );
    }
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        let Ok(chunk) = chunk else { break };
        if stdin.write(&chunk).await.is_err() {
            break;
        }
    }
    if spec.stdin_once == Some(true) {
        stdin.close().await;
    }
    StatusCode::OK.into_response()
}

async fn container_logs(
    State(state): State<DaemonState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
    cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = refused(&state, cert.as_deref(), &headers) {
        return refusal;
    }
    let (uid, _) = match find_container(&state, &namespace, &pod, &container) {
        Ok(found) => found,
        Err(refusal) => return refusal,
    };
    let logs = match state.ctx.runtime.logs(&container_id(&uid, &container)) {
        Ok(l) => l,
        Err(e) => return text(StatusCode::NOT_FOUND, e.to_string()),
    };
    let timestamps = flag(&q.timestamps);
    // `--previous` is the instance that ended last (Kubernetes' `lastState.terminated`):
    // the attempt before the running one or, between restarts (back-off), the latest one.
    let previous = flag(&q.previous) && logs.live_attempt().is_some();
    if flag(&q.follow) && !previous {
        let shutdown = state.ctx.shutdown.clone();
        let stream = logs
            .follow(q.tail_lines)
            .take_until(shutdown.cancelled_owned())
            .map(move |line| line.map(|l| bytes::Bytes::from(render(&l, timestamps))));
        return Response::builder()
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    match logs
        .read(LogOptions {
            tail: q.tail_lines,
            previous,
        })
        .await
    {
        Ok(lines) => {
            let body: String = lines.iter().map(|l| render(l, timestamps)).collect();
            (
                [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                body,
            )
                .into_response()
        }
        Err(e) => text(StatusCode::NOT_FOUND, e.to_string()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
