//! The `scale` subresource of the workloads and of custom resources whose definition asks
//! for it: an `autoscaling/v1` `Scale`.
//!
//! `kubectl scale`, autoscalers and the Python client's `patch_namespaced_deployment_scale`
//! speak only `Scale`, never the whole object. A Scale is a view: reading it projects the
//! parent's `spec.replicas`, `status.replicas` and selector; writing it (PUT, or any patch
//! type applied to the Scale) changes only the parent's `spec.replicas`, through the same
//! compare-and-swap write as every other update. A `metadata.resourceVersion` in the Scale
//! is a precondition on the parent (`kubectl scale --current-replicas` relies on it).
//! Where the replicas and the selector are is the kind's ([`ScalePaths`]): the
//! workloads' `spec.replicas`, or the paths a custom resource definition names.

use super::AppState;
use super::error::{ApiError, Subject};
use super::fieldcheck::FieldCheck;
use super::objects::json_response;
use super::registry::store::{self, apply_patch};
use super::registry::subresources::{Serve, SubRequest, Subresource};
use super::request::Target;
use super::request::{JSON, PATCH_TYPES, Query, content_type, read_json};
use crate::api::printers::format_selector;
use crate::api::validation::{FieldError, Reason};
use axum::body::Body;
use axum::response::Response;
use futures::future::BoxFuture;
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::{Value, json};

/// `KIND/NAME/scale`, for the kinds whose strategy lists it.
pub static SCALE: Subresource = Subresource {
    name: "scale",
    body: Some(("autoscaling", "v1", "Scale")),
    schema: Some(crate::api::typed::schema::<k8s_openapi::api::autoscaling::v1::Scale>),
    verbs: &["get", "patch", "update"],
    serve: Serve::Handler(handle),
};

fn handle(req: SubRequest<'_>) -> BoxFuture<'_, Result<Response, ApiError>> {
    Box::pin(serve(req.state, req.target, req.query, req.parts, req.body))
}

/// Where a kind keeps what a Scale shows, as JSON pointers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    /// A string holding the selector in its serialized form (`a=b,c in (d)`); `None`
    /// for the workloads' `spec.selector` object.
    pub label_selector: Option<String>,
}

/// The Scale view of a parent object.
pub fn scale_of(parent: &Value, paths: Option<&ScalePaths>) -> Value {
    let (spec_at, status_at) = paths
        .map(|p| (p.spec_replicas.as_str(), p.status_replicas.as_str()))
        .unwrap_or(("/spec/replicas", "/status/replicas"));
    let meta = parent.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let mut scale_meta = serde_json::Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(field) {
            scale_meta.insert(field.into(), v.clone());
        }
    }
    let selector = match paths.map(|p| p.label_selector.as_deref()) {
        Some(Some(at)) => parent
            .pointer(at)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        Some(None) => String::new(),
        None => match format_selector(parent.pointer("/spec/selector")).as_str() {
            "<none>" => String::new(),
            s => s.to_string(),
        },
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": parent.pointer(spec_at).and_then(Value::as_i64).unwrap_or(if paths.is_some() { 0 } else { 1 })},
        "status": {
            "replicas": parent.pointer(status_at).and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

/// The parent after the client's Scale `wanted` is written to `current`: checks the Scale's
/// kind, name and resourceVersion precondition and its replicas, then sets
/// `spec.replicas`. Pure.
pub fn apply_scale(target: &Target, current: &Value, wanted: &Value) -> Result<Value, ApiError> {
    let name = current
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let subject = Subject {
        group: target.kind.group.to_string(),
        resource: format!("{}/scale", target.kind.plural),
        name: name.to_string(),
    };
    if let Some(kind) = wanted.get("kind").and_then(Value::as_str)
        && !kind.is_empty()
        && kind != "Scale"
    {
        return Err(ApiError::BadRequest(format!(
            "the kind in the data ({kind}) does not match the kind of the URL (Scale)"
        )));
    }
    if let Some(sent) = wanted.pointer("/metadata/name").and_then(Value::as_str)
        && !sent.is_empty()
        && sent != name
    {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({sent}) does not match the name on the URL ({name})"
        )));
    }
    let sent_rv = wanted
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let current_rv = current
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    if let Some(rv) = sent_rv
        && Some(rv) != current_rv
    {
        return Err(ApiError::conflict(
            subject,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    let replicas = match wanted.pointer("/spec/replicas") {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 && n <= i64::from(i32::MAX) => n,
            _ => {
                return Err(ApiError::invalid(
                    subject,
                    "Scale",
                    vec![FieldError::new(
                        "spec.replicas",
                        Reason::Invalid,
                        Some(v.to_string()),
                        "must be greater than or equal to 0",
                    )],
                ));
            }
        },
    };
    let mut parent = current.clone();
    let at = target
        .kind
        .strategy
        .scale_paths()
        .map_or("/spec/replicas", |p| p.spec_replicas.as_str());
    crate::api::validation::set_default(&mut parent, at, json!(0));
    if let Some(slot) = parent.pointer_mut(at) {
        *slot = json!(replicas);
    }
    Ok(parent)
}

/// GET, PUT and PATCH on `KIND/NAME/scale`.
pub async fn serve(
    state: &AppState,
    target: &Target,
    query: &Query,
    parts: &Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(name) = target.name.as_deref() else {
        return Err(ApiError::MethodNotAllowed(format!(
            "{}/scale needs an object name",
            target.kind.qualified_plural()
        )));
    };
    let dry = query.dry_run()?;
    let paths = target.kind.strategy.scale_paths();
    // Only `spec.replicas` of the stored parent changes: nothing undeclared can come in.
    // The write is recorded in the parent's managedFields as the client's, through
    // `scale`, as Kubernetes records it.
    let fields = FieldCheck::new(query, Vec::new())?
        .recording(FieldCheck::manager_of(query, &parts.headers))
        .through("scale");
    let parent = match parts.method {
        Method::GET => store::get_object(state, target, name).await?,
        Method::PUT => {
            let wanted = read_json(body, &parts.headers, state, JSON).await?;
            store::update_with(state, target, name, false, dry, &fields, |current| {
                apply_scale(target, current, &wanted)
            })
            .await?
        }
        Method::PATCH => {
            let ct = content_type(&parts.headers);
            let patch = read_json(body, &parts.headers, state, PATCH_TYPES).await?;
            // A Scale has no lists: a strategic merge patch and an apply configuration
            // both merge like a JSON merge patch.
            let ct = match ct.as_str() {
                "application/strategic-merge-patch+json" | "application/apply-patch+yaml" => {
                    "application/merge-patch+json".to_string()
                }
                _ => ct,
            };
            store::update_with(state, target, name, false, dry, &fields, |current| {
                let wanted = apply_patch(target.kind, &ct, &scale_of(current, paths), &patch)?;
                apply_scale(target, current, &wanted)
            })
            .await?
        }
        ref m => {
            return Err(ApiError::MethodNotAllowed(format!(
                "{m} is not supported on {}/scale; use GET, PUT or PATCH",
                target.kind.qualified_plural()
            )));
        }
    };
    Ok(json_response(StatusCode::OK, &scale_of(&parent, paths)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::kinds::find_kind;

    fn target() -> Target {
        Target {
            kind: find_kind("apps/v1", "Deployment").unwrap(),
            namespace: Some("default".into()),
            name: Some("web".into()),
            subresource: Some("scale".into()),
        }
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "u1", "resourceVersion": "12"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web", "tier": "a"}}},
            "status": {"replicas": 2},
        })
    }

    #[test]
    fn scale_projects_replicas_and_selector() {
        let s = scale_of(&deployment(), None);
        assert_eq!(s["kind"], "Scale");
        assert_eq!(s["apiVersion"], "autoscaling/v1");
        assert_eq!(s["metadata"]["resourceVersion"], "12");
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"]["replicas"], 2);
        assert_eq!(s["status"]["selector"], "app=web,tier=a");
    }

    #[test]
    fn writing_a_scale_changes_only_replicas() {
        let wanted = json!({"spec": {"replicas": 5}});
        let out = apply_scale(&target(), &deployment(), &wanted).unwrap();
        let mut expected = deployment();
        expected["spec"]["replicas"] = json!(5);
        assert_eq!(out, expected);
    }

    #[test]
    fn a_stale_resource_version_is_a_conflict() {
        let wanted = json!({"metadata": {"resourceVersion": "11"}, "spec": {"replicas": 5}});
        let err = apply_scale(&target(), &deployment(), &wanted).unwrap_err();
        assert!(matches!(err, ApiError::Conflict { .. }), "{err:?}");
        let wanted = json!({"metadata": {"resourceVersion": "12"}, "spec": {"replicas": 5}});
        assert!(apply_scale(&target(), &deployment(), &wanted).is_ok());
    }

    #[test]
    fn negative_or_non_numeric_replicas_are_invalid_with_the_field() {
        for bad in [json!(-1), json!("three")] {
            let wanted = json!({"spec": {"replicas": bad}});
            let err = apply_scale(&target(), &deployment(), &wanted).unwrap_err();
            assert!(err.to_string().contains("spec.replicas"), "{err}");
        }
    }

    #[test]
    fn another_kind_or_name_is_refused() {
        let err = apply_scale(&target(), &deployment(), &json!({"kind": "Pod"})).unwrap_err();
        assert!(err.to_string().contains("Scale"), "{err}");
        let err = apply_scale(
            &target(),
            &deployment(),
            &json!({"metadata": {"name": "other"}}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("other"), "{err}");
    }
}
