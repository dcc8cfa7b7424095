//! `GET /api/v1/namespaces/NS/pods/NAME/log`: the API server as a proxy to the node that
//! runs the pod.
//!
//! Why a proxy: logs live on the node (the runtime captures them), and users, kubectl and
//! `wharf logs` only know the API server; nodes may be on other machines, behind no route
//! a user has. So the API server does what kube-apiserver does for `pods/log` (its
//! `LocationStreamer`): resolve pod → node → the node's log server, open the stream there
//! and copy it back as it comes, chunk by chunk, for `follow` until the node ends it.
//!
//! The contract with a node agent:
//! - Where: the Node's `status.addresses` (the `InternalIP`, else `ExternalIP`, else
//!   `Hostname`) and `status.daemonEndpoints.kubeletEndpoint.Port`.
//! - What: `GET https://ADDR:PORT/containerLogs/NS/POD/CONTAINER?follow=BOOL&timestamps=BOOL
//!   &previous=BOOL[&tailLines=N][&limitBytes=N][&sinceSeconds=N][&sinceTime=RFC3339]`,
//!   answered `200` with the log bytes (any status else, with a text or `Status` body, is
//!   reported to the client).
//! - How: TLS only; the API server presents its client certificate and checks the node's
//!   against the cluster CA and the address it dialed ([`crate::nodetls`]).
//! - Who: that client certificate, and `Authorization: Bearer TOKEN`, the `token` of the Secret
//!   `kube-system/wharf-node-proxy` ([`NODE_PROXY_SECRET_NAME`]). The control plane
//!   creates it once ([`ensure_node_proxy_secret`]); a node reads it when it starts and
//!   accepts no other token, so that only the API server (which enforces authorization on
//!   `pods/log`) reads logs from nodes. The API server reads it from the store on each
//!   request, so nothing has to be wired or refreshed.
//!
//! Deciding (which container, which address, which URL, how a node's error reads) is
//! pure and unit-tested; [`pod_logs`] only looks things up and moves bytes.

use super::AppState;
use super::error::{ApiError, Subject};
use super::objects::decode;
use super::registry::subresources::{Serve, SubRequest, Subresource};
use super::request::Query;
use super::request::Target;
use crate::store::object_key;
use axum::body::Body;
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use http::{Method, StatusCode};
use http_body_util::{BodyDataStream, BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The subresource this module serves.
pub const LOG_SUBRESOURCE: &str = "log";
/// Namespace of the Secret that holds the API server's credential towards nodes.
pub const NODE_PROXY_SECRET_NAMESPACE: &str = "kube-system";
/// Name of that Secret.
pub const NODE_PROXY_SECRET_NAME: &str = "wharf-node-proxy";
/// The key of its `data` that holds the token.
pub const NODE_PROXY_TOKEN_KEY: &str = "token";

/// How long connecting to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node may take to answer with its headers once connected.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a node's error body is read for the message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// `pods/NAME/log`: GET only.
pub static LOG: Subresource = Subresource {
    name: LOG_SUBRESOURCE,
    body: None,
    schema: None,
    verbs: &["get"],
    serve: Serve::Handler(serve_log),
};

fn serve_log(req: SubRequest<'_>) -> BoxFuture<'_, Result<Response, ApiError>> {
    Box::pin(async move {
        match (&req.parts.method, req.target.name.as_deref()) {
            (&Method::GET, Some(name)) => pod_logs(req.state, req.target, name, req.query).await,
            (m, _) => Err(ApiError::MethodNotAllowed(format!(
                "{m} is not supported on pods/log; use GET"
            ))),
        }
    })
}

// ---- The node-proxy credential --------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum ProxySecretError {
    #[error("secret {NODE_PROXY_SECRET_NAMESPACE}/{NODE_PROXY_SECRET_NAME}: {0}")]
    Api(#[from] kube::Error),
    #[error(
        "secret {NODE_PROXY_SECRET_NAMESPACE}/{NODE_PROXY_SECRET_NAME} has no data.{NODE_PROXY_TOKEN_KEY}: delete it and restart the control plane to generate a new one"
    )]
    Malformed,
}

/// The token of the node-proxy Secret, as a node agent reads it.
pub fn node_proxy_token(secret: &Secret) -> Option<String> {
    let bytes = &secret.data.as_ref()?.get(NODE_PROXY_TOKEN_KEY)?.0;
    String::from_utf8(bytes.clone())
        .ok()
        .filter(|t| !t.is_empty())
}

/// Creates the node-proxy Secret with a random token unless it exists, and answers the
/// token. Idempotent: call it at every start of the control plane, after the system
/// namespaces exist.
pub async fn ensure_node_proxy_secret(client: &kube::Client) -> Result<String, ProxySecretError> {
    use kube::api::{Api, PostParams};
    let api: Api<Secret> = Api::namespaced(client.clone(), NODE_PROXY_SECRET_NAMESPACE);
    if let Some(existing) = api.get_opt(NODE_PROXY_SECRET_NAME).await? {
        return node_proxy_token(&existing).ok_or(ProxySecretError::Malformed);
    }
    let token = super::auth::generate_token();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(NODE_PROXY_SECRET_NAME.into()),
            namespace: Some(NODE_PROXY_SECRET_NAMESPACE.into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            [(
                NODE_PROXY_TOKEN_KEY.to_string(),
                ByteString(token.clone().into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(token),
        // Created meanwhile by another start: theirs is the one nodes will read.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = api.get(NODE_PROXY_SECRET_NAME).await?;
            node_proxy_token(&existing).ok_or(ProxySecretError::Malformed)
        }
        Err(e) => Err(e.into()),
    }
}

/// The token, read from the store (the API server's side).
pub(crate) async fn proxy_token(state: &AppState) -> Result<String, ApiError> {
    let key = object_key(
        "",
        "secrets",
        NODE_PROXY_SECRET_NAMESPACE,
        NODE_PROXY_SECRET_NAME,
    );
    let missing = || {
        ApiError::ServiceUnavailable(format!(
            "the API server has no credential for nodes yet (secret \
             {NODE_PROXY_SECRET_NAMESPACE}/{NODE_PROXY_SECRET_NAME} with data.{NODE_PROXY_TOKEN_KEY})"
        ))
    };
    let stored = state
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store(e, Subject::default()))?
        .ok_or_else(missing)?;
    decode(&stored)?
        .pointer(&format!("/data/{NODE_PROXY_TOKEN_KEY}"))
        .and_then(Value::as_str)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|t| !t.is_empty())
        .ok_or_else(missing)
}

// ---- Deciding -------------------------------------------------------------------------

/// The query of a log request (`PodLogOptions`), validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub container: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<u64>,
    pub limit_bytes: Option<u64>,
    pub since_seconds: Option<u64>,
    pub since_time: Option<String>,
}

impl LogOptions {
    pub fn from_query(query: &Query) -> Result<Self, ApiError> {
        let number = |key: &str, min: u64| -> Result<Option<u64>, ApiError> {
            match query.get(key).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => match v.parse::<i64>() {
                    Ok(n) if n >= 0 && n as u64 >= min => Ok(Some(n as u64)),
                    _ => Err(ApiError::BadRequest(format!(
                        "{key}: invalid value {v:?}: must be an integer greater than or equal to {min}"
                    ))),
                },
            }
        };
        let since_time = match query.get("sinceTime").filter(|v| !v.is_empty()) {
            None => None,
            Some(t) => {
                t.parse::<jiff::Timestamp>().map_err(|e| {
                    ApiError::BadRequest(format!(
                        "sinceTime: invalid value {t:?}: not an RFC 3339 time: {e}"
                    ))
                })?;
                Some(t.to_string())
            }
        };
        let opts = LogOptions {
            container: query
                .get("container")
                .filter(|c| !c.is_empty())
                .map(str::to_string),
            follow: query.flag("follow"),
            previous: query.flag("previous"),
            timestamps: query.flag("timestamps"),
            tail_lines: number("tailLines", 0)?,
            limit_bytes: number("limitBytes", 1)?,
            since_seconds: number("sinceSeconds", 1)?,
            since_time,
        };
        if opts.since_seconds.is_some() && opts.since_time.is_some() {
            return Err(ApiError::BadRequest(
                "at most one of sinceTime or sinceSeconds may be specified".into(),
            ));
        }
        Ok(opts)
    }
}

fn container_names<'a>(pod: &'a Value, field: &str) -> Vec<&'a str> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// The container whose log is asked for: the one named, else the pod's only container.
pub fn choose_container(pod: &Value, requested: Option<&str>) -> Result<String, ApiError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let containers = container_names(pod, "containers");
    let init = container_names(pod, "initContainers");
    match requested {
        Some(c) if containers.contains(&c) || init.contains(&c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::BadRequest(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].to_string()),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::BadRequest(message))
        }
    }
}

/// The node the pod is bound to.
pub fn assigned_node(pod: &Value) -> Result<&str, ApiError> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            let name = pod
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            ApiError::BadRequest(format!("pod {name} does not have a host assigned"))
        })
}

/// Where the node's log server listens: (host, port).
pub fn node_endpoint(node: &Value) -> Result<(String, u16), ApiError> {
    let name = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let address_of = |kind: &str| {
        addresses
            .iter()
            .filter(|a| a.get("type").and_then(Value::as_str) == Some(kind))
            .find_map(|a| a.get("address").and_then(Value::as_str))
            .filter(|a| !a.is_empty())
    };
    let host = ["InternalIP", "ExternalIP", "Hostname"]
        .into_iter()
        .find_map(address_of)
        .ok_or_else(|| {
            ApiError::ServiceUnavailable(format!(
                "node {name} has no address in status.addresses (InternalIP)"
            ))
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            ApiError::ServiceUnavailable(format!(
                "node {name} has no log server port in status.daemonEndpoints.kubeletEndpoint.Port"
            ))
        })?;
    Ok((host.to_string(), port))
}

/// The URL of a container's log on a node's log server.
pub fn node_log_uri(
    host: &str,
    port: u16,
    namespace: &str,
    pod: &str,
    container: &str,
    opts: &LogOptions,
) -> String {
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => host.to_string(),
    };
    let flag = |b: bool| if b { "true" } else { "false" };
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("follow", flag(opts.follow))
        .append_pair("timestamps", flag(opts.timestamps))
        .append_pair("previous", flag(opts.previous));
    if let Some(n) = opts.tail_lines {
        query.append_pair("tailLines", &n.to_string());
    }
    if let Some(n) = opts.limit_bytes {
        query.append_pair("limitBytes", &n.to_string());
    }
    if let Some(n) = opts.since_seconds {
        query.append_pair("sinceSeconds", &n.to_string());
    }
    if let Some(t) = &opts.since_time {
        query.append_pair("sinceTime", t);
    }
    format!(
        "https://{host}:{port}/containerLogs/{namespace}/{pod}/{container}?{}",
        query.finish()
    )
}

/// How a node's refusal reads to the client. `body` is what the node said.
pub fn node_error(node: &str, status: StatusCode, body: &[u8]) -> ApiError {
    let said = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    let said: String = said.chars().take(1024).collect();
    match status {
        StatusCode::NOT_FOUND => ApiError::NotFound {
            subject: Subject::default(),
            message: if said.is_empty() {
                format!("node {node} has no such log")
            } else {
                said
            },
        },
        StatusCode::BAD_REQUEST => ApiError::BadRequest(said),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApiError::ServiceUnavailable(format!(
            "node {node} refused the API server's credential ({status}): it must read the \
                 token of secret {NODE_PROXY_SECRET_NAMESPACE}/{NODE_PROXY_SECRET_NAME}"
        )),
        _ => ApiError::ServiceUnavailable(format!("node {node} answered {status}: {said}")),
    }
}

// ---- Doing ----------------------------------------------------------------------------

pub(crate) async fn get_object(
    state: &AppState,
    plural: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    let subject = Subject {
        group: String::new(),
        resource: plural.to_string(),
        name: name.to_string(),
    };
    let key = object_key("", plural, namespace.unwrap_or(""), name);
    match state.store.get(&key).await {
        Ok(Some(stored)) => decode(&stored),
        Ok(None) => Err(ApiError::not_found(subject)),
        Err(e) => Err(ApiError::from_store(e, subject)),
    }
}

/// Serves `GET .../pods/NAME/log`: looks up the pod, its node and the credential, opens
/// the node's log stream and copies it back as `text/plain`, chunk by chunk.
pub async fn pod_logs(
    state: &AppState,
    target: &Target,
    name: &str,
    query: &Query,
) -> Result<Response, ApiError> {
    let namespace = target.namespace.as_deref().ok_or_else(|| {
        ApiError::BadRequest("pods are namespaced: use /namespaces/NAMESPACE/pods/NAME/log".into())
    })?;
    let opts = LogOptions::from_query(query)?;
    let pod = get_object(state, "pods", Some(namespace), name).await?;
    let data = log_stream(state, namespace, &pod, &opts).await?;
    // Shutdown ends a followed stream, as it ends watches, so that draining finishes.
    let body =
        limit_bytes(data, opts.limit_bytes).take_until(state.shutdown.clone().cancelled_owned());
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .header(http::header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::Internal(format!("building the log response: {e}")))
}

/// Opens the log stream of `pod` (in `namespace`) on its node, with `opts`: what
/// `pods/log` copies back, and what `pods/attach` follows.
pub async fn log_stream(
    state: &AppState,
    namespace: &str,
    pod: &Value,
    opts: &LogOptions,
) -> Result<BoxStream<'static, Result<Bytes, hyper::Error>>, ApiError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let pod = pod.clone();
    let container = choose_container(&pod, opts.container.as_deref())?;
    let node_name = assigned_node(&pod)?;
    let node = get_object(state, "nodes", None, node_name).await?;
    let (host, port) = node_endpoint(&node)?;
    let token = proxy_token(state).await?;
    let uri = node_log_uri(&host, port, namespace, name, &container, opts);

    let response = request_node(state, node_name, &host, port, &uri, &token).await?;
    if !response.status().is_success() {
        let status = response.status();
        let body = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            http_body_util::Limited::new(response.into_body(), ERROR_BODY_LIMIT).collect(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|c| c.to_bytes())
        .unwrap_or_default();
        return Err(node_error(node_name, status, &body));
    }
    Ok(BodyDataStream::new(response.into_body()).boxed())
}

/// Opens the standard input of `container` of `pod` (in `namespace`) on its node: what is
/// sent on the channel goes to the container as it comes, and dropping the sender ends
/// it (a container with `stdinOnce` then reads end of file). The node's answer comes when
/// the input ends; a refusal is logged, since the attach it belongs to is under way.
pub async fn stdin_sink(
    state: &AppState,
    namespace: &str,
    pod: &Value,
    container: &str,
) -> Result<tokio::sync::mpsc::Sender<Bytes>, ApiError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let node_name = assigned_node(pod)?.to_string();
    let node = get_object(state, "nodes", None, &node_name).await?;
    let (host, port) = node_endpoint(&node)?;
    let token = proxy_token(state).await?;
    let host_part = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => host.clone(),
    };
    let uri = format!("https://{host_part}:{port}/containerStdin/{namespace}/{name}/{container}");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(data)),
            rx,
        ))
    });
    let body = http_body_util::StreamBody::new(frames).boxed_unsync();
    let tls = state.config.node_tls.clone();
    tokio::spawn(async move {
        match send_to_node(
            tls,
            &node_name,
            (&host, port),
            &uri,
            &token,
            Method::POST,
            body,
            true,
        )
        .await
        {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => tracing::info!(
                node = %node_name, pod = %name, status = %response.status(),
                "the node refused the attach's standard input"
            ),
            Err(e) => tracing::info!(node = %node_name, pod = %name, error = %e,
                "sending the attach's standard input to the node failed"),
        }
    });
    Ok(tx)
}

/// Sends a GET to the node; an unreachable or silent node is 503.
pub(crate) async fn request_node(
    state: &AppState,
    node: &str,
    host: &str,
    port: u16,
    uri: &str,
    token: &str,
) -> Result<http::Response<hyper::body::Incoming>, ApiError> {
    send_to_node(
        state.config.node_tls.clone(),
        node,
        (host, port),
        uri,
        token,
        Method::GET,
        Empty::<Bytes>::new(),
        false,
    )
    .await
}

/// Sends `method` with `body` to the node; an unreachable or silent node is 503, and a
/// `streamed` body's answer may take as long as the body. The one place the API server
/// dials a node's server: TLS with `tls` (its client certificate, verifying the node's
/// against the cluster CA and `host`, see [`crate::nodetls`]); `uri`'s path and query
/// are sent, with `token` as the bearer unless it is empty.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send_to_node<B>(
    tls: Option<Arc<rustls::ClientConfig>>,
    node: &str,
    (host, port): (&str, u16),
    uri: &str,
    token: &str,
    method: Method,
    body: B,
    streamed: bool,
) -> Result<http::Response<hyper::body::Incoming>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let unreachable = |why: String| {
        ApiError::ServiceUnavailable(format!(
            "node {node} is unreachable at {host}:{port}: {why}"
        ))
    };
    let Some(tls) = tls else {
        return Err(unreachable(
            "this API server has no TLS configuration for nodes".into(),
        ));
    };
    let server_name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| unreachable(format!("{host:?} is not a name TLS can verify: {e}")))?;
    let uri: http::Uri = uri
        .parse()
        .map_err(|e| ApiError::Internal(format!("the URL for node {node}: {e}")))?;
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, format!("{host}:{port}"));
    if !token.is_empty() {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(body)
        .map_err(|e| ApiError::Internal(format!("building the request to node {node}: {e}")))?;
    // One connection per request, nothing pooled: a log stream is long-lived and rare,
    // and nothing is left behind when the stream ends.
    let connect = async {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
            .await
            .map_err(|_| format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()))?
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| innermost(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection to a node ended with an error");
            }
        });
        sender
            .send_request(request)
            .await
            .map_err(|e| innermost(&e))
    };
    // The node answers a streamed body (stdin) once it ends: no time limit then.
    let timeout = if streamed {
        Duration::MAX
    } else {
        RESPONSE_TIMEOUT
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(why)) => Err(unreachable(why)),
        Err(_) => Err(unreachable(format!(
            "no answer within {}s",
            RESPONSE_TIMEOUT.as_secs()
        ))),
    }
}

/// The most specific message in an error's chain ("Connection refused (os error 111)").
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// Ends `stream` after `limit` bytes, cutting the last chunk.
fn limit_bytes<E: Send + 'static>(
    stream: BoxStream<'static, Result<Bytes, E>>,
    limit: Option<u64>,
) -> BoxStream<'static, Result<Bytes, E>> {
    let Some(limit) = limit else {
        return stream;
    };
    futures::stream::unfold((stream, limit), |(mut stream, left)| async move {
        if left == 0 {
            return None;
        }
        match stream.next().await? {
            Ok(mut chunk) => {
                if chunk.len() as u64 > left {
                    chunk.truncate(left as usize);
                }
                let left = left - chunk.len() as u64;
                Some((Ok(chunk), (stream, left)))
            }
            Err(e) => Some((Err(e), (stream, 0))),
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: &[&str], init: &[&str]) -> Value {
        let c = |names: &[&str]| -> Vec<Value> {
            names
                .iter()
                .map(|n| json!({"name": n, "image": "x.wasm"}))
                .collect()
        };
        json!({"metadata": {"name": "web"},
               "spec": {"containers": c(containers), "initContainers": c(init)}})
    }

    #[test]
    fn the_container_is_named_or_the_only_one() {
        assert_eq!(
            choose_container(&pod(&["a"], &[]), None).ok(),
            Some("a".into())
        );
        assert_eq!(
            choose_container(&pod(&["a", "b"], &["i"]), Some("i")).ok(),
            Some("i".into())
        );
        let err = choose_container(&pod(&["a", "b"], &[]), None).expect_err("two");
        assert_eq!(
            err.to_string(),
            "a container name must be specified for pod web, choose one of: [a b]"
        );
        let err = choose_container(&pod(&["a", "b"], &["i"]), None).expect_err("two");
        assert_eq!(
            err.to_string(),
            "a container name must be specified for pod web, choose one of: [a b] or one of \
             the init containers: [i]"
        );
        let err = choose_container(&pod(&["a"], &[]), Some("z")).expect_err("unknown");
        assert_eq!(err.to_string(), "container z is not valid for pod web");
        assert_eq!(err.code(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn pods_must_be_bound() {
        let mut p = pod(&["a"], &[]);
        let err = assigned_node(&p).expect_err("unbound");
        assert_eq!(err.to_string(), "pod web does not have a host assigned");
        p["spec"]["nodeName"] = json!("n1");
        assert_eq!(assigned_node(&p).ok(), Some("n1"));
    }

    #[test]
    fn node_endpoints_prefer_the_internal_ip() {
        let node = json!({"metadata": {"name": "n1"}, "status": {
            "addresses": [{"type": "Hostname", "address": "box"},
                          {"type": "InternalIP", "address": "10.0.0.7"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        assert_eq!(node_endpoint(&node).ok(), Some(("10.0.0.7".into(), 10250)));
        let no_port = json!({"metadata": {"name": "n1"}, "status": {
            "addresses": [{"type": "InternalIP", "address": "10.0.0.7"}]}});
        let err = node_endpoint(&no_port).expect_err("no port");
        assert_eq!(err.code(), StatusCode::SERVICE_UNAVAILABLE);
        let no_address = json!({"metadata": {"name": "n1"}, "status": {}});
        assert!(node_endpoint(&no_address).is_err());
    }

    #[test]
    fn node_urls_carry_the_options() {
        let opts = LogOptions {
            follow: true,
            tail_lines: Some(10),
            limit_bytes: Some(100),
            ..Default::default()
        };
        assert_eq!(
            node_log_uri("10.0.0.7", 10250, "default", "web", "app", &opts),
            "https://10.0.0.7:10250/containerLogs/default/web/app?follow=true&timestamps=false\
             &previous=false&tailLines=10&limitBytes=100"
        );
        assert_eq!(
            node_log_uri("::1", 1, "a", "b", "c", &LogOptions::default()),
            "https://[::1]:1/containerLogs/a/b/c?follow=false&timestamps=false&previous=false"
        );
    }

    #[test]
    fn log_options_are_validated() {
        let q = |s: &str| Query::parse(Some(s));
        let opts = LogOptions::from_query(&q(
            "container=app&follow=true&tailLines=5&timestamps=true&previous=true&limitBytes=9",
        ))
        .expect("valid");
        assert_eq!(
            opts,
            LogOptions {
                container: Some("app".into()),
                follow: true,
                previous: true,
                timestamps: true,
                tail_lines: Some(5),
                limit_bytes: Some(9),
                ..Default::default()
            }
        );
        for bad in [
            "tailLines=-1",
            "tailLines=x",
            "limitBytes=0",
            "sinceSeconds=0",
            "sinceTime=yesterday",
            "sinceSeconds=5&sinceTime=2030-01-01T00:00:00Z",
        ] {
            let err = LogOptions::from_query(&q(bad)).expect_err(bad);
            assert_eq!(err.code(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn node_errors_keep_the_nodes_words() {
        let err = node_error("n1", StatusCode::NOT_FOUND, b"container app has no log\n");
        assert_eq!(err.code(), StatusCode::NOT_FOUND);
        assert_eq!(err.to_string(), "container app has no log");
        let status = json!({"kind": "Status", "message": "bad tailLines"}).to_string();
        let err = node_error("n1", StatusCode::BAD_REQUEST, status.as_bytes());
        assert_eq!(err.to_string(), "bad tailLines");
        let err = node_error("n1", StatusCode::UNAUTHORIZED, b"");
        assert_eq!(err.code(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(err.to_string().contains("wharf-node-proxy"), "{err}");
    }

    #[tokio::test]
    async fn byte_limits_cut_the_stream() {
        let chunks: Vec<Result<Bytes, ()>> = vec![
            Ok(Bytes::from_static(b"line 1\n")),
            Ok(Bytes::from_static(b"line 2\n")),
        ];
        let limited = limit_bytes(futures::stream::iter(chunks).boxed(), Some(10));
        let got: Vec<Bytes> =
            tokio::time::timeout(Duration::from_secs(5), limited.collect::<Vec<_>>())
                .await
                .expect("in time")
                .into_iter()
                .filter_map(Result::ok)
                .collect();
        assert_eq!(got.concat(), b"line 1\nlin");
    }
}
