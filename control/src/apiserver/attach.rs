//! The `pods/attach` subresource: `kubectl attach POD` streams a running container's
//! output as it comes.
//!
//! A wasm container's standard streams are captured by its node (that is how `kubectl
//! logs` reads them), so attaching is following that capture from now on: the API server
//! opens the node's log stream for the container with `follow` and no earlier lines
//! ([`super::proxy::log_stream`]) and forwards it over the remote-command WebSocket
//! protocol kubectl 1.30+ speaks (`v5.channel.k8s.io`, `v4.channel.k8s.io`): every binary
//! message is one channel byte and data, 1 for stdout, 3 for the final `Status`. When
//! the container's stream ends (it exited), the `Status` says so and the socket closes;
//! when the client leaves, the stream is dropped.
//!
//! **Stdin** (`kubectl attach -i`): for a container started with `stdin: true` (a
//! command guest; the node gives it a pipe as its standard input), what the client sends
//! on channel 0 goes to the node's `containerStdin` endpoint as one streamed request
//! ([`super::proxy::stdin_sink`]), which writes it to the guest as it comes. When the
//! client closes its stdin (v5's close of channel 0) or leaves, the request ends; a
//! container with `stdinOnce` then reads end of file, as Kubernetes closes it after the
//! first attach. `-i` on a container without `stdin: true` is refused.
//!
//! Not done: a TTY, and the SPDY/3.1 upgrade older kubectl versions use.

use super::auth::Identity;
use super::authz::{self, Verb};
use super::error::ApiError;
use super::portforward::upgrade_parts;
use super::proxy::{LogOptions, choose_container, log_stream, stdin_sink};
use super::registry::store;
use super::registry::subresources::{Serve, SubRequest, Subresource};
use axum::extract::FromRequestParts;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use http::Method;
use serde_json::{Value, json};

/// The remote-command WebSocket subprotocols served, preferred first.
pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// Channel of the client's standard input.
const STDIN: u8 = 0;
/// Channel of the container's standard output.
const STDOUT: u8 = 1;
/// Channel of the final `Status`.
const ERROR: u8 = 3;
/// v5's close-a-channel message.
const CLOSE: u8 = 255;

/// `pods/NAME/attach`.
pub static ATTACH: Subresource = Subresource {
    name: "attach",
    body: None,
    schema: None,
    verbs: &["create", "get"],
    serve: Serve::Handler(handle),
};

/// The options of an attach request that wharf checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachOptions {
    pub container: Option<String>,
    pub stdin: bool,
    pub tty: bool,
}

impl AttachOptions {
    pub fn from_query(query: &super::request::Query) -> Self {
        AttachOptions {
            container: query
                .get("container")
                .filter(|c| !c.is_empty())
                .map(str::to_string),
            stdin: query.flag("stdin"),
            tty: query.flag("tty"),
        }
    }
}

/// Why attaching to `pod` is refused, if it is (pure): a TTY asked for, stdin asked of
/// a container that does not set `stdin: true`, or a container that is not running.
pub fn refusal(pod: &Value, container: &str, opts: &AttachOptions) -> Option<String> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if opts.tty {
        return Some(format!(
            "pod {name:?} runs WebAssembly guests, which have no terminal: attach without -t \
             to container {container:?}"
        ));
    }
    let reads_stdin = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["name"] == container && c["stdin"] == true);
    if opts.stdin && !reads_stdin {
        return Some(format!(
            "container {container:?} in pod {name:?} does not set stdin: true, so its standard \
             input is not connected: attach without -i to read its output"
        ));
    }
    let running = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|s| s["name"] == container && s.pointer("/state/running").is_some());
    (!running)
        .then(|| format!("container {container} in pod {name} is not running: cannot attach to it"))
}

fn handle(req: SubRequest<'_>) -> BoxFuture<'_, Result<Response, ApiError>> {
    Box::pin(async move {
        let Some(name) = req.target.name.as_deref() else {
            return Err(ApiError::MethodNotAllowed(
                "attach names its pod: .../pods/NAME/attach".into(),
            ));
        };
        // Attaching is `create` on `pods/attach` whichever method carries it.
        let identity = req.parts.extensions.get::<Identity>();
        authz::enforce(req.state, identity, Verb::Create, req.target).await?;
        let pod = store::get_object(req.state, req.target, name).await?;
        let namespace = req.target.namespace.clone().unwrap_or_default();
        let opts = AttachOptions::from_query(req.query);
        let container = choose_container(&pod, opts.container.as_deref())?;
        if let Some(why) = refusal(&pod, &container, &opts) {
            return Err(ApiError::BadRequest(why));
        }
        if req.parts.method != Method::GET {
            return Err(ApiError::BadRequest(format!(
                "attach needs a WebSocket upgrade with one of the subprotocols {}",
                PROTOCOLS.join(", ")
            )));
        }
        let offered: Vec<String> = req
            .parts
            .headers
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .collect();
        let Some(protocol) = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
            return Err(ApiError::BadRequest(format!(
                "attach speaks the WebSocket subprotocols {} only",
                PROTOCOLS.join(", ")
            )));
        };
        let mut parts = upgrade_parts(req.parts)?;
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| {
                ApiError::BadRequest(format!(
                    "attach needs a WebSocket upgrade: {}",
                    e.body_text()
                ))
            })?;
        // The stream is opened before the upgrade is answered, so a node that cannot be
        // reached is an error the client sees as such.
        let log_opts = LogOptions {
            container: Some(container.clone()),
            follow: true,
            tail_lines: Some(0),
            ..LogOptions::default()
        };
        let output = log_stream(req.state, &namespace, &pod, &log_opts).await?;
        let stdin = if opts.stdin {
            Some(stdin_sink(req.state, &namespace, &pod, &container).await?)
        } else {
            None
        };
        let shutdown = req.state.shutdown.clone();
        let pod_name = name.to_string();
        Ok(ws
            .protocols([*protocol])
            .on_upgrade(move |socket| async move {
                serve(socket, output, stdin, shutdown).await;
                tracing::debug!(pod = %pod_name, "attach session ended");
            })
            .into_response())
    })
}

/// One channel message: the channel byte, then the data.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    out
}

async fn serve(
    socket: WebSocket,
    mut output: futures::stream::BoxStream<'static, Result<bytes::Bytes, hyper::Error>>,
    mut stdin: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let (mut tx, mut rx) = socket.split();
    let status = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break None,
            chunk = output.next() => match chunk {
                Some(Ok(data)) => {
                    if tx.send(Message::Binary(frame(STDOUT, &data).into())).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => break Some(json!({"metadata": {}, "status": "Failure",
                    "message": format!("reading the container's output: {e}"),
                    "reason": "InternalError"})),
                None => break Some(json!({"metadata": {}, "status": "Success"})),
            },
            msg = rx.next() => match msg {
                // The client left (or closed its side: v5's close of a channel).
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                // v5: the client's stdin ended; the container's input ends with it.
                Some(Ok(Message::Binary(b))) if b.first() == Some(&CLOSE) => {
                    if b.get(1) == Some(&STDIN) {
                        stdin = None;
                    }
                }
                Some(Ok(Message::Binary(b))) if b.first() == Some(&STDIN) => {
                    if let Some(input) = &stdin
                        && b.len() > 1
                        && input.send(b.slice(1..)).await.is_err()
                    {
                        stdin = None;
                    }
                }
                // Anything else (a resize) has nowhere to go.
                Some(Ok(_)) => {}
            },
        }
    };
    if let Some(status) = status {
        let text = serde_json::to_vec(&status).unwrap_or_default();
        let _ = tx.send(Message::Binary(frame(ERROR, &text).into())).await;
    }
    // A normal closure: what the client reads as the end of every stream (a close
    // without a code is an error to it).
    let normal = axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    };
    let _ = tx.send(Message::Close(Some(normal))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(running: bool) -> Value {
        let state = if running {
            json!({"running": {}})
        } else {
            json!({"terminated": {"exitCode": 0}})
        };
        json!({"metadata": {"name": "ticker"},
            "spec": {"containers": [{"name": "ticker", "image": "ticker.wasm"}]},
            "status": {"containerStatuses": [{"name": "ticker", "state": state}]}})
    }

    #[test]
    fn attaching_needs_a_running_container_and_stdin_only_where_read() {
        let plain = AttachOptions {
            container: None,
            stdin: false,
            tty: false,
        };
        assert_eq!(refusal(&pod(true), "ticker", &plain), None);
        assert!(
            refusal(&pod(false), "ticker", &plain).is_some_and(|m| m.contains("is not running"))
        );
        let stdin = AttachOptions {
            stdin: true,
            ..plain.clone()
        };
        assert!(
            refusal(&pod(true), "ticker", &stdin)
                .is_some_and(|m| m.contains("does not set stdin: true"))
        );
        let mut reads = pod(true);
        reads["spec"]["containers"][0]["stdin"] = json!(true);
        assert_eq!(refusal(&reads, "ticker", &stdin), None);
        let tty = AttachOptions { tty: true, ..plain };
        assert!(refusal(&reads, "ticker", &tty).is_some_and(|m| m.contains("no terminal")));
        assert_eq!(frame(STDOUT, b"tick 1\n"), b"\x01tick 1\n");
    }
}
