//! The `pods/portforward` subresource: `kubectl port-forward pod/NAME LOCAL:REMOTE` (and
//! `svc/NAME`, which kubectl resolves to a pod itself).
//!
//! kubectl 1.30+ opens a WebSocket whose subprotocol is `SPDY/3.1+portforward.k8s.io`:
//! the WebSocket's binary messages carry a SPDY/3.1 session ([`spdy`]). In that session,
//! for every local connection, kubectl opens two streams with the headers
//! `streamtype: error|data`, `port: N` and a shared `requestid`. The API server answers
//! each stream, opens a TCP connection to the pod's port and copies bytes between it and
//! the data stream; a port that cannot be reached gets its error written on the error
//! stream (kubectl prints it: `an error occurred forwarding 8080 -> 9: ...`) and the
//! local connection closes, while the others go on. Several ports and connections share
//! one session.
//!
//! **How the pod is reached** ([`reach`]): directly at `podIP:port` when its node is on
//! the API server's machine (pod addresses are loopback addresses of the machine their
//! node runs on), else through the node's tunnel (`wharf.dev/tunnel`), as nodes reach
//! each other's pods. A connection that cannot be opened gets its error on the error
//! stream.
//!
//! The SPDY/3.1 upgrade kubectl falls back to (a `POST` with `Upgrade: SPDY/3.1` and
//! `X-Stream-Protocol-Version: portforward.k8s.io`, the only way before 1.30) runs the
//! same session on the HTTP connection itself.

pub mod reach;
pub mod spdy;

use super::auth::Identity;
use super::authz::{self, Verb};
use super::error::ApiError;
use super::registry::store;
use super::registry::subresources::{Serve, SubRequest, Subresource};
use axum::extract::FromRequestParts;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use http::Method;
use reach::PodTarget;
use serde_json::Value;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The WebSocket subprotocol kubectl 1.30+ asks for.
pub const PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The stream protocol inside SPDY.
const SUBPROTOCOL: &str = "portforward.k8s.io";
/// The `Upgrade` of the older way, SPDY over the HTTP connection itself.
const SPDY_UPGRADE: &str = "SPDY/3.1";
/// The header that names the stream protocol of a SPDY upgrade.
const STREAM_PROTOCOL: &str = "x-stream-protocol-version";
/// How much of a pod's output one data frame carries.
const CHUNK: usize = 32 * 1024;

/// `pods/NAME/portforward`.
pub static PORTFORWARD: Subresource = Subresource {
    name: "portforward",
    body: None,
    schema: None,
    verbs: &["create", "get"],
    serve: Serve::Handler(handle),
};

fn handle(req: SubRequest<'_>) -> BoxFuture<'_, Result<Response, ApiError>> {
    Box::pin(async move {
        let Some(name) = req.target.name.as_deref() else {
            return Err(ApiError::MethodNotAllowed(
                "port-forward names its pod: .../pods/NAME/portforward".into(),
            ));
        };
        // Forwarding is `create` on `pods/portforward` whichever upgrade carries it.
        let identity = req.parts.extensions.get::<Identity>();
        authz::enforce(req.state, identity, Verb::Create, req.target).await?;
        let pod = store::get_object(req.state, req.target, name).await?;
        let ip = pod_ip(&pod).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "pod {name} has no address yet: it is not running on a node"
            ))
        })?;
        let target = reach::pod_target(req.state, &pod, ip).await?;
        if is_spdy_upgrade(req.parts) {
            return spdy_upgrade(req.parts, target);
        }
        if req.parts.method != Method::GET {
            return Err(ApiError::BadRequest(format!(
                "port-forward needs an upgrade: a WebSocket with the subprotocol {PROTOCOL}, \
                 or SPDY/3.1"
            )));
        }
        let mut parts = upgrade_parts(req.parts)?;
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| {
                ApiError::BadRequest(format!(
                    "port-forward needs a WebSocket upgrade with the subprotocol {PROTOCOL}: {}",
                    e.body_text()
                ))
            })?;
        let offered = req
            .parts
            .headers
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == PROTOCOL);
        if !offered {
            return Err(ApiError::BadRequest(format!(
                "port-forward speaks the WebSocket subprotocol {PROTOCOL} only"
            )));
        }
        let pod_name = name.to_string();
        Ok(ws
            .protocols([PROTOCOL])
            .on_upgrade(move |socket| async move {
                serve_websocket(socket, target).await;
                tracing::debug!(pod = %pod_name, "port-forward session ended");
            })
            .into_response())
    })
}

fn is_spdy_upgrade(parts: &http::request::Parts) -> bool {
    parts
        .headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(SPDY_UPGRADE))
}

/// Answers `101 Switching Protocols` to a SPDY/3.1 upgrade (the protocol kubectl falls
/// back to, and the only one before 1.30) and serves the session once the connection is
/// handed over.
fn spdy_upgrade(parts: &http::request::Parts, target: PodTarget) -> Result<Response, ApiError> {
    let offered = parts
        .headers
        .get_all(STREAM_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offered {
        return Err(ApiError::BadRequest(format!(
            "port-forward speaks the stream protocol {SUBPROTOCOL} only"
        )));
    }
    let on_upgrade = parts
        .extensions
        .get::<hyper::upgrade::OnUpgrade>()
        .cloned()
        .ok_or_else(|| ApiError::BadRequest("this connection cannot be upgraded".into()))?;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => serve_spdy(io, target).await,
            Err(e) => tracing::debug!("port-forward: the SPDY upgrade failed: {e}"),
        }
    });
    http::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, SPDY_UPGRADE)
        .header(STREAM_PROTOCOL, SUBPROTOCOL)
        .body(axum::body::Body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// A copy of the request head that the WebSocket upgrade can take apart.
pub(crate) fn upgrade_parts(
    parts: &http::request::Parts,
) -> Result<http::request::Parts, ApiError> {
    let mut req = http::Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .version(parts.version)
        .body(())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    *req.headers_mut() = parts.headers.clone();
    if let Some(on_upgrade) = parts.extensions.get::<hyper::upgrade::OnUpgrade>() {
        req.extensions_mut().insert(on_upgrade.clone());
    }
    Ok(req.into_parts().0)
}

fn pod_ip(pod: &Value) -> Option<IpAddr> {
    pod.pointer("/status/podIP")?.as_str()?.parse().ok()
}

/// What a stream is for, from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamType {
    Error,
    Data,
}

/// A stream's headers, read.
fn stream_of(headers: &HashMap<String, String>) -> Result<(StreamType, u16, String), String> {
    let kind = match headers.get("streamtype").map(String::as_str) {
        Some("error") => StreamType::Error,
        Some("data") => StreamType::Data,
        other => return Err(format!("unknown stream type {other:?}")),
    };
    let port = headers
        .get("port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("invalid port {:?}", headers.get("port")))?;
    let request = headers.get("requestid").cloned().unwrap_or_default();
    Ok((kind, port, request))
}

/// The two streams of one forwarded connection, as they arrive.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<(u32, mpsc::Receiver<Bytes>)>,
}

/// Runs one port-forward session on a WebSocket until either side ends it.
/// Runs a port-forward session over a WebSocket: its binary messages carry the SPDY
/// bytes.
async fn serve_websocket(socket: WebSocket, target: PodTarget) {
    let (mut ws_tx, ws_rx) = socket.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if ws_tx.send(Message::Binary(frame.into())).await.is_err() {
                break;
            }
        }
        let _ = ws_tx.close().await;
    });
    let incoming = ws_rx
        .take_while(|m| {
            let go_on = match m {
                Ok(Message::Close(_)) => false,
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!("port-forward: the WebSocket failed: {e}");
                    false
                }
            };
            std::future::ready(go_on)
        })
        .filter_map(|m| {
            std::future::ready(match m {
                Ok(Message::Binary(b)) => Some(b),
                _ => None,
            })
        });
    serve_session(incoming, out_tx, &target).await;
    let _ = writer.await;
}

/// Runs a port-forward session over a connection upgraded to SPDY/3.1 itself.
async fn serve_spdy(io: hyper::upgrade::Upgraded, target: PodTarget) {
    let (rd, mut wr) = tokio::io::split(hyper_util::rt::TokioIo::new(io));
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let incoming =
        futures::stream::unfold((rd, vec![0u8; CHUNK]), |(mut rd, mut chunk)| async move {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => None,
                Ok(n) => Some((Bytes::copy_from_slice(&chunk[..n]), (rd, chunk))),
            }
        });
    serve_session(incoming, out_tx, &target).await;
    let _ = writer.await;
}

/// Runs one port-forward session: SPDY bytes from `incoming`, frames to `out`, until the
/// client ends it.
async fn serve_session(
    incoming: impl futures::Stream<Item = Bytes>,
    out_tx: mpsc::UnboundedSender<Vec<u8>>,
    target: &PodTarget,
) {
    let mut incoming = std::pin::pin!(incoming);
    let mut reader = spdy::Reader::default();
    let mut replies = spdy::Writer::default();
    let mut buf = BytesMut::new();
    let mut inbound: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    'session: while let Some(bytes) = incoming.next().await {
        buf.extend_from_slice(&bytes);
        loop {
            let frame = match reader.next(&mut buf) {
                Ok(Some(f)) => {
                    tracing::trace!(?f, "port-forward frame");
                    f
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("port-forward: {e}");
                    break 'session;
                }
            };
            match frame {
                spdy::Frame::SynStream {
                    stream, headers, ..
                } => {
                    let _ = out_tx.send(replies.syn_reply(stream));
                    let (kind, port, request) = match stream_of(&headers) {
                        Ok(s) => s,
                        Err(why) => {
                            tracing::debug!("port-forward stream {stream}: {why}");
                            let _ = out_tx.send(spdy::Writer::rst_stream(stream, 1));
                            continue;
                        }
                    };
                    let pair = pairs.entry(request.clone()).or_default();
                    match kind {
                        StreamType::Error => pair.error = Some(stream),
                        StreamType::Data => {
                            let (tx, rx) = mpsc::channel(64);
                            inbound.insert(stream, tx);
                            pair.data = Some((stream, rx));
                        }
                    }
                    if pair.error.is_some()
                        && pair.data.is_some()
                        && let Some(Pair {
                            error: Some(error),
                            data: Some((data, rx)),
                        }) = pairs.remove(&request)
                    {
                        let out = out_tx.clone();
                        tokio::spawn(forward(target.clone(), port, error, data, rx, out));
                    }
                }
                spdy::Frame::Data { stream, fin, data } => {
                    if let Some(tx) = inbound.get(&stream)
                        && !data.is_empty()
                        && tx.send(data).await.is_err()
                    {
                        inbound.remove(&stream);
                    }
                    if fin {
                        inbound.remove(&stream);
                    }
                }
                spdy::Frame::RstStream { stream } => {
                    inbound.remove(&stream);
                }
                spdy::Frame::Ping { id } => {
                    let _ = out_tx.send(spdy::Writer::ping(id));
                }
                spdy::Frame::GoAway => break 'session,
                spdy::Frame::Ignored => {}
            }
        }
    }
    drop(inbound);
}

/// One forwarded connection: the pod's port and the data stream, both ways; a failure to
/// connect is written on the error stream.
async fn forward(
    target: PodTarget,
    port: u16,
    error: u32,
    data: u32,
    mut from_client: mpsc::Receiver<Bytes>,
    out: mpsc::UnboundedSender<Vec<u8>>,
) {
    let conn = match reach::dial_pod(&target, port).await {
        Ok(c) => c,
        Err(e) => {
            let pod = SocketAddr::new(target.ip, port);
            return refuse(&out, error, data, pod, &e.to_string());
        }
    };
    let (mut rd, mut wr) = tokio::io::split(conn);
    let to_pod = async move {
        while let Some(chunk) = from_client.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let out_data = out.clone();
    let from_pod = async move {
        let mut chunk = vec![0u8; CHUNK];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out_data
                        .send(spdy::Writer::data(data, false, &chunk[..n]))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = out_data.send(spdy::Writer::data(data, true, &[]));
    };
    // The pair ends when the pod's side does (as the kubelet's forwarder returns): kubectl
    // closes the local connection once the error stream ends. A client that only
    // half-closed its side keeps reading until then.
    let to_pod = tokio::spawn(to_pod);
    from_pod.await;
    to_pod.abort();
    let _ = out.send(spdy::Writer::data(error, true, &[]));
}

fn refuse(
    out: &mpsc::UnboundedSender<Vec<u8>>,
    error: u32,
    data: u32,
    target: SocketAddr,
    why: &str,
) {
    let message = format!("failed to connect to the pod at {target}: {why}");
    let _ = out.send(spdy::Writer::data(error, true, message.as_bytes()));
    let _ = out.send(spdy::Writer::data(data, true, &[]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_headers() {
        let h = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert_eq!(
            stream_of(&h(&[
                ("streamtype", "data"),
                ("port", "8080"),
                ("requestid", "3")
            ])),
            Ok((StreamType::Data, 8080, "3".to_string()))
        );
        assert!(stream_of(&h(&[("streamtype", "data"), ("port", "0")])).is_err());
        assert!(stream_of(&h(&[("streamtype", "x"), ("port", "80")])).is_err());
    }
}
