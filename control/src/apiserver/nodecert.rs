//! `POST /api/v1/nodes/NAME/certificate`: a node's TLS certificate, signed by the cluster
//! CA (see [`crate::nodetls`] for why nodes need one and how they use it).
//!
//! The body is a PEM certificate signing request; the answer (`201`, `text/plain`) the
//! PEM certificate. Only the node itself may ask (`system:node:NAME` in `system:nodes`,
//! as the Node authorizer names it), or `system:masters` (the control plane's own
//! in-process nodes of `wharf up`, as an admin may approve any request in Kubernetes): a
//! certificate for `system:node:NAME` is how its peers and the API server know the node,
//! so no other node and no other user gets one. What is
//! signed is decided by [`crate::nodetls::check_node_csr`] against the Node's
//! `status.addresses`, as Kubernetes approves kubelet serving certificates.
//!
//! Why not `certificates.k8s.io` CertificateSigningRequests: a node here needs exactly one
//! kind of certificate, approved by one fixed rule, at once; this endpoint is that rule
//! without a stored object, an approver and a signer controller to keep in step.

use super::auth::{GROUP_MASTERS, Identity};
use super::authz::{self, Verb};
use super::error::ApiError;
use super::proxy::get_object;
use super::registry::subresources::{Serve, SubRequest, Subresource};
use crate::nodetls::{self, NodeTlsError};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::{Method, StatusCode};
use serde_json::Value;
use std::time::SystemTime;

/// The subresource's name.
pub const CERTIFICATE_SUBRESOURCE: &str = "certificate";
/// The largest signing request read.
const CSR_LIMIT: usize = 64 * 1024;

/// `nodes/NAME/certificate`: POST only.
pub static CERTIFICATE: Subresource = Subresource {
    name: CERTIFICATE_SUBRESOURCE,
    body: None,
    schema: None,
    verbs: &["create"],
    serve: Serve::Handler(serve_certificate),
};

fn serve_certificate(req: SubRequest<'_>) -> BoxFuture<'_, Result<Response, ApiError>> {
    Box::pin(async move {
        let Some(name) = req.target.name.as_deref() else {
            return Err(ApiError::MethodNotAllowed(
                "POST /api/v1/nodes/NAME/certificate".into(),
            ));
        };
        if req.parts.method != Method::POST {
            return Err(ApiError::MethodNotAllowed(format!(
                "{} is not supported on nodes/certificate; use POST",
                req.parts.method
            )));
        }
        let identity = req.parts.extensions.get::<Identity>().cloned();
        authz::enforce(req.state, identity.as_ref(), Verb::Create, req.target).await?;
        let own = identity.as_ref().and_then(authz::node_name) == Some(name);
        let master = identity.as_ref().is_some_and(|i| i.in_group(GROUP_MASTERS));
        if !own && !master {
            let user = identity.map(|i| i.user).unwrap_or_default();
            return Err(ApiError::Forbidden(format!(
                "nodes \"{name}\" is forbidden: User \"{user}\" cannot create resource \
                 \"nodes/certificate\" in API group \"\" at the cluster scope: only node \
                 {name} may ask for its certificate"
            )));
        }
        let Some(pki_dir) = req.state.config.pki_dir.clone() else {
            return Err(ApiError::ServiceUnavailable(
                "this server signs no node certificates".into(),
            ));
        };
        let node = get_object(req.state, "nodes", None, name).await?;
        let addresses = node_addresses(&node);
        let body = axum::body::to_bytes(req.body, CSR_LIMIT)
            .await
            .map_err(|e| ApiError::BadRequest(format!("reading the request: {e}")))?;
        let csr = String::from_utf8(body.to_vec()).map_err(|_| {
            ApiError::BadRequest("the body must be a PEM certificate signing request".into())
        })?;
        let node_name = name.to_string();
        let signed = tokio::task::spawn_blocking(move || {
            nodetls::sign_node_csr(
                &pki_dir,
                &node_name,
                &csr,
                &addresses,
                nodetls::NODE_CERT_VALIDITY,
                SystemTime::now(),
            )
        })
        .await
        .map_err(|e| ApiError::Internal(format!("signing: {e}")))?;
        match signed {
            Ok(pem) => Ok((
                StatusCode::CREATED,
                [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                pem,
            )
                .into_response()),
            Err(NodeTlsError::Refused(why)) => Err(ApiError::BadRequest(format!(
                "certificate signing request refused: {why}"
            ))),
            Err(e) => Err(ApiError::Internal(format!(
                "signing node {name}'s certificate: {e}"
            ))),
        }
    })
}

/// The addresses and names a Node publishes in `status.addresses`.
pub fn node_addresses(node: &Value) -> Vec<String> {
    node.pointer("/status/addresses")
        .and_then(Value::as_array)
        .map(|addresses| {
            addresses
                .iter()
                .filter_map(|a| a.get("address").and_then(Value::as_str))
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}
