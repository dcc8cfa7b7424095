//! Turning a URL into what it names: the kind, namespace, name and subresource.
//!
//! Kubernetes paths are ambiguous at one point: `/api/v1/namespaces/NAME/status` is the
//! status of a Namespace, while `/api/v1/namespaces/NS/pods` is a collection inside one.
//! As kube-apiserver's request-info resolver does, a third segment that is a namespace
//! subresource (`status`, `finalize`) names the Namespace; anything else is a namespaced
//! resource.
//!
//! What a request carries besides its path is read here too, the same way for every
//! handler: the query ([`Query`]) and a JSON body of bounded size (`read_json`); a
//! protobuf body (`application/vnd.kubernetes.protobuf`) is read as the JSON it encodes
//! ([`crate::api::protobuf`]), wherever JSON is accepted.

use super::AppState;
use super::error::ApiError;
use crate::api::kinds::{self, ResourceKind};
use crate::api::{apply, protobuf};
use axum::body::Body;
use http::HeaderMap;
use http_body_util::BodyExt;
use serde_json::Value;
use std::collections::HashMap;

/// What a resource URL names.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: &'static ResourceKind,
    /// The namespace from the URL; `None` for cluster-scoped kinds and all-namespace lists.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Resolves `rest`, the path after `/api/v1/` or `/apis/GROUP/VERSION/`, to a built-in
/// kind or one of `custom` (what CustomResourceDefinitions add).
pub fn parse(
    group: &str,
    version: &str,
    rest: &str,
    custom: &[&'static ResourceKind],
) -> Result<Target, ApiError> {
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (namespace, parts) = if parts.len() >= 3
        && parts[0] == "namespaces"
        && (parts.len() > 3 || !NAMESPACE_SUBRESOURCES.contains(&parts[2]))
    {
        (Some(parts[1].to_string()), &parts[2..])
    } else {
        (None, &parts[..])
    };
    let Some(plural) = parts.first() else {
        return Err(not_served(group, version, ""));
    };
    let kind = kinds::find_by_plural(group, version, plural)
        .or_else(|| {
            custom
                .iter()
                .copied()
                .find(|k| k.group == group && k.version == version && k.plural == *plural)
        })
        .ok_or_else(|| not_served(group, version, plural))?;
    if namespace.is_some() && !kind.namespaced {
        return Err(ApiError::BadRequest(format!(
            "{} is not namespaced; its path has no namespaces/NS segment",
            kind.qualified_plural()
        )));
    }
    let target = Target {
        kind,
        namespace,
        name: parts.get(1).map(|s| s.to_string()),
        subresource: parts.get(2).map(|s| s.to_string()),
    };
    if parts.len() > 3 {
        return Err(ApiError::BadRequest(format!("unsupported path /{rest}")));
    }
    Ok(target)
}

fn not_served(group: &str, version: &str, plural: &str) -> ApiError {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    ApiError::NotFound {
        subject: super::error::Subject {
            group: group.to_string(),
            resource: plural.to_string(),
            name: String::new(),
        },
        message: format!(
            "the server could not find the requested resource: {gv} {plural:?} is not served; served kinds are {}",
            kinds::served_list()
        ),
    }
}

/// The query parameters of a request.
#[derive(Debug, Default, Clone)]
pub struct Query(pub HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        Query(
            raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true") | Some("1"))
    }

    pub(super) fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "dryRun: unsupported value {other:?}: supported values: \"All\""
            ))),
        }
    }
}

pub(super) const JSON: &[&str] = &["application/json"];

pub(super) const PATCH_TYPES: &[&str] = &[
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

pub(super) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Reads a JSON body of at most the configured size. A request without a Content-Type is
/// JSON, as Kubernetes clients assume.
pub(super) async fn read_json(
    body: Body,
    headers: &HeaderMap,
    state: &AppState,
    accepted: &[&str],
) -> Result<Value, ApiError> {
    Ok(read_json_checked(body, headers, state, accepted).await?.0)
}

/// [`read_json`], with the paths of the keys the body gives twice (they are lost once
/// the body is parsed).
pub(super) async fn read_json_checked(
    body: Body,
    headers: &HeaderMap,
    state: &AppState,
    accepted: &[&str],
) -> Result<(Value, Vec<String>), ApiError> {
    let ct = content_type(headers);
    // Where JSON is, Kubernetes' protobuf is too (kubectl's generator commands send it).
    let protobuf = ct == protobuf::CONTENT_TYPE && accepted.contains(&"application/json");
    if !ct.is_empty() && !protobuf && !accepted.contains(&ct.as_str()) {
        let mut types = accepted.to_vec();
        if accepted.contains(&"application/json") {
            types.push(protobuf::CONTENT_TYPE);
        }
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format; accepted media types include: {}",
            types.join(", ")
        )));
    }
    let bytes = read_limited(body, headers, state.config.max_body_bytes).await?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest("the request has no body".into()));
    }
    if protobuf {
        let value = protobuf::decode(&bytes).map_err(|e| {
            ApiError::BadRequest(format!(
                "the request body is not a valid protobuf object: {e}"
            ))
        })?;
        return Ok((value, Vec::new()));
    }
    if ct == apply::CONTENT_TYPE {
        let value = apply::parse_body(&bytes).map_err(ApiError::BadRequest)?;
        return Ok((value, Vec::new()));
    }
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    Ok((value, crate::api::fields::duplicate_fields(&bytes)))
}

pub(super) async fn read_limited(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::TooLarge { limit })
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "reading the request body: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_kubernetes_paths() {
        let t = parse("", "v1", "namespaces/default/pods/web/status", &[]).expect("pod status");
        assert_eq!(t.kind.kind, "Pod");
        assert_eq!(t.namespace.as_deref(), Some("default"));
        assert_eq!(t.name.as_deref(), Some("web"));
        assert_eq!(t.subresource.as_deref(), Some("status"));

        let t = parse("", "v1", "namespaces/prod/status", &[]).expect("namespace status");
        assert_eq!(t.kind.kind, "Namespace");
        assert_eq!(t.name.as_deref(), Some("prod"));
        assert_eq!(t.subresource.as_deref(), Some("status"));

        let t = parse("", "v1", "namespaces/prod", &[]).expect("namespace");
        assert_eq!(
            (t.kind.kind, t.name.as_deref(), t.namespace),
            ("Namespace", Some("prod"), None)
        );

        let t = parse("", "v1", "pods", &[]).expect("all pods");
        assert_eq!(
            (t.kind.kind, t.namespace.clone(), t.name.clone()),
            ("Pod", None, None)
        );

        let t = parse("apps", "v1", "namespaces/a/deployments", &[]).expect("deployments");
        assert_eq!(t.kind.kind, "Deployment");
        assert!(parse("apps", "v2", "namespaces/a/deployments", &[]).is_err());
        assert!(parse("", "v1", "namespaces/a/nodes", &[]).is_err());
        let err = parse("", "v1", "widgets", &[]).expect_err("unknown");
        assert!(err.to_string().contains("served kinds are"), "{err}");
    }
}
