//! Answering in Kubernetes' protobuf when a client asks for it.
//!
//! Handlers answer JSON; this layer re-encodes an answer as
//! `application/vnd.kubernetes.protobuf` ([`crate::api::protobuf::encode`]) when the
//! client's `Accept` names protobuf and accepts no JSON. A client that accepts both (as
//! kubectl does: `application/vnd.kubernetes.protobuf, */*`) keeps getting JSON, which is
//! what the handlers made and what every client reads. Watch streams stay JSON (their
//! protobuf framing is another format), and so does an answer that has no protobuf
//! message (a `Table`): the client then sees JSON, the type it least rejects.

use super::AppState;
use crate::api::protobuf;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http_body_util::BodyExt;

/// Whether `accept` asks for protobuf and accepts no JSON.
pub fn wants_protobuf(accept: &str) -> bool {
    let mut protobuf = false;
    for media in accept.split(',') {
        let mut parts = media.split(';').map(str::trim);
        let essence = parts.next().unwrap_or("").to_ascii_lowercase();
        let has_as = parts.any(|p| p.to_ascii_lowercase().starts_with("as="));
        match essence.as_str() {
            "application/json" | "*/*" | "application/*" => return false,
            e if e == protobuf::CONTENT_TYPE && !has_as => protobuf = true,
            _ => {}
        }
    }
    protobuf
}

fn is_watch(req: &Request) -> bool {
    let query = req.uri().query().unwrap_or("");
    form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
        || req.uri().path().contains("/watch/")
}

/// The layer: see the module doc.
pub async fn negotiate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let accept = req
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if !wants_protobuf(&accept) || is_watch(&req) {
        return next.run(req).await;
    }
    let resp = next.run(req).await;
    let json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let limit = state.config.max_body_bytes.saturating_mul(16);
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            tracing::warn!("reading an answer to re-encode as protobuf: {e}");
            return Response::from_parts(parts, Body::empty());
        }
    };
    let encoded = serde_json::from_slice(&bytes)
        .ok()
        .and_then(|v| protobuf::encode(&v).ok());
    match encoded {
        Some(pb) => {
            parts.headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static(protobuf::CONTENT_TYPE),
            );
            parts.headers.remove(CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(pb))
        }
        None => Response::from_parts(parts, Body::from(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_only_when_json_is_not_acceptable() {
        for (accept, want) in [
            ("application/vnd.kubernetes.protobuf", true),
            ("application/vnd.kubernetes.protobuf;q=0.9", true),
            ("application/vnd.kubernetes.protobuf, */*", false),
            (
                "application/vnd.kubernetes.protobuf,application/json",
                false,
            ),
            ("application/json", false),
            ("", false),
            (
                "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io",
                false,
            ),
        ] {
            assert_eq!(wants_protobuf(accept), want, "{accept}");
        }
    }
}
