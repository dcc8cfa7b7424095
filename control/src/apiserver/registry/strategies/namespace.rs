//! Namespaces: names that are DNS labels, the namespace controller's `kubernetes`
//! finalizer in `spec.finalizers` (set at creation, changed only through the `finalize`
//! subresource), deletion that marks them `Terminating` until the controller has emptied
//! and finalized them, and system namespaces that cannot be deleted.

use super::super::Strategy;
use super::super::store::{
    MAX_RETRIES, ensure, fetch, semantically_equal, store_write, strings_at, subject,
};
use super::super::subresources::{STATUS, Serve, SubRequest, Subresource};
use crate::api::printers;
use crate::api::strategic;
use crate::api::validation;
use crate::api::wellknown::{NAMESPACE_FINALIZER, SYSTEM_NAMESPACES};
use crate::apiserver::AppState;
use crate::apiserver::error::{ApiError, Subject};
use crate::apiserver::objects::{decode, decode_as, json_response};
use crate::apiserver::request::{JSON, Target, read_json};
use crate::store::{StoreError, object_key};
use axum::response::Response;
use futures::future::BoxFuture;
use http::{Method, StatusCode};
use serde_json::{Value, json};

pub struct NamespaceStrategy;

pub static STRATEGY: NamespaceStrategy = NamespaceStrategy;

/// Namespaces are deleted one by one (each goes through the namespace controller), so,
/// as in Kubernetes, `deletecollection` is not offered.
const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// `PUT /api/v1/namespaces/NAME/finalize`: replaces `spec.finalizers`, nothing else.
pub static FINALIZE: Subresource = Subresource {
    name: "finalize",
    body: None,
    schema: None,
    verbs: &["update"],
    serve: Serve::Handler(serve_finalize),
};

static SUBRESOURCES: &[&Subresource] = &[&STATUS, &FINALIZE];

impl Strategy for NamespaceStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::NAMESPACE
    }

    fn subresources(&self) -> &'static [&'static Subresource] {
        SUBRESOURCES
    }

    fn verbs(&self) -> &'static [&'static str] {
        VERBS
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn merge_rules(&self) -> &'static strategic::Section {
        &strategic::NAMESPACE
    }

    fn name_invalid(&self, name: &str) -> Option<&'static str> {
        (!validation::is_dns1123_label(name)).then_some(validation::DNS1123_LABEL_MSG)
    }

    /// The namespace controller's finalizer, as kube-apiserver sets it at creation (not a
    /// default: defaults also run on updates, and would undo the controller's `finalize`).
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        ensure_namespace_finalizer(obj);
    }

    /// A Namespace's finalizers change only through `namespaces/NAME/finalize`, as in
    /// Kubernetes: an update cannot let go of a namespace that is still being emptied.
    fn prepare_for_update(&self, current: &Value, new: &mut Value) {
        set_spec_finalizers(new, current.pointer("/spec/finalizers").cloned());
    }

    fn default(&self, obj: &mut Value) {
        validation::set_default(obj, "/status/phase", json!("Active"));
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.phase"]
    }

    fn check_delete(&self, name: &str) -> Result<(), ApiError> {
        if SYSTEM_NAMESPACES.contains(&name) {
            return Err(ApiError::Forbidden(format!(
                "namespace {name} is a system namespace and may not be deleted"
            )));
        }
        Ok(())
    }

    /// `spec.finalizers`, with the controller's added on a first delete of a namespace
    /// created without it.
    fn held_by(&self, obj: &Value, already_deleting: bool) -> Option<Vec<String>> {
        let mut f = strings_at(obj, "/spec/finalizers");
        if !already_deleting {
            ensure(&mut f, NAMESPACE_FINALIZER);
        }
        Some(f)
    }

    fn mark_deleting(&self, obj: &mut Value, held: Option<Vec<String>>) {
        let Some(map) = obj.as_object_mut() else {
            return;
        };
        if let Some(f) = held {
            let spec = map.entry("spec").or_insert_with(|| json!({}));
            if let Some(spec) = spec.as_object_mut() {
                spec.insert("finalizers".into(), json!(f));
            }
        }
        let status = map.entry("status").or_insert_with(|| json!({}));
        if let Some(status) = status.as_object_mut() {
            status.insert("phase".into(), json!("Terminating"));
        }
    }
}

/// The `finalize` subresource: PUT only.
fn serve_finalize(req: SubRequest<'_>) -> BoxFuture<'_, Result<Response, ApiError>> {
    Box::pin(async move {
        match (&req.parts.method, req.target.name.as_deref()) {
            (&Method::PUT, Some(name)) => {
                let body = read_json(req.body, &req.parts.headers, req.state, JSON).await?;
                let obj = finalize_namespace(req.state, req.target, name, &body).await?;
                Ok(json_response(StatusCode::OK, &obj))
            }
            (m, _) => Err(ApiError::MethodNotAllowed(format!(
                "{m} is not supported on namespaces/finalize; use PUT"
            ))),
        }
    })
}

/// Sets the `kubernetes` finalizer in a new Namespace's `spec.finalizers`.
fn ensure_namespace_finalizer(obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let spec = map.entry("spec").or_insert_with(|| json!({}));
    if spec.is_null() {
        *spec = json!({});
    }
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    let list = spec.entry("finalizers").or_insert_with(|| json!([]));
    if list.is_null() {
        *list = json!([]);
    }
    if let Some(list) = list.as_array_mut()
        && !list.iter().any(|f| f == NAMESPACE_FINALIZER)
    {
        list.push(json!(NAMESPACE_FINALIZER));
    }
}

/// `PUT namespaces/NAME/finalize`: the namespace controller hands back its finalizer once
/// the namespace is empty. Only `spec.finalizers` changes; when it ends up empty on a
/// namespace being deleted (and no metadata finalizers hold it), the namespace is gone.
pub(crate) async fn finalize_namespace(
    state: &AppState,
    target: &Target,
    name: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    let wanted = match body.pointer("/spec/finalizers") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
            Some(Value::Array(list.clone()))
        }
        Some(_) => {
            return Err(ApiError::BadRequest(
                "spec.finalizers must be a list of strings".into(),
            ));
        }
    };
    let main = Target {
        subresource: None,
        ..target.clone()
    };
    for _ in 0..MAX_RETRIES {
        let (stored, key) = fetch(state, &main, name).await?;
        let current = decode(&stored)?;
        let mut next = current.clone();
        set_spec_finalizers(&mut next, wanted.clone());
        if semantically_equal(&next, &current) {
            return Ok(current);
        }
        let outcome = store_write(
            state,
            target.kind,
            &key,
            stored.mod_revision,
            &current,
            &next,
        )
        .await?;
        match outcome {
            Ok(obj) => return Ok(obj),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, subject(target, name))),
        }
    }
    Err(ApiError::conflict(
        subject(target, name),
        "too many concurrent writers; please try again",
    ))
}

/// Sets (or, with `None`, removes) a Namespace's `spec.finalizers`.
fn set_spec_finalizers(obj: &mut Value, finalizers: Option<Value>) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    match finalizers {
        Some(f) => {
            let spec = map.entry("spec").or_insert_with(|| json!({}));
            if spec.is_null() {
                *spec = json!({});
            }
            if let Some(spec) = spec.as_object_mut() {
                spec.insert("finalizers".into(), f);
            }
        }
        None => {
            if let Some(spec) = map.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("finalizers");
            }
        }
    }
}

/// Objects may be created only in a namespace that exists and is not being deleted.
pub(crate) async fn ensure_open(state: &AppState, ns: &str) -> Result<(), ApiError> {
    let key = object_key("", "namespaces", "", ns);
    let ns_subject = Subject {
        group: String::new(),
        resource: "namespaces".into(),
        name: ns.to_string(),
    };
    match state.store.get(&key).await {
        Ok(Some(stored)) => {
            // Every create in the namespace asks: read the one field, skipping the rest
            // of the object instead of building it.
            #[derive(serde::Deserialize)]
            struct Lifecycle {
                #[serde(default)]
                metadata: LifecycleMeta,
            }
            #[derive(serde::Deserialize, Default)]
            struct LifecycleMeta {
                #[serde(default, rename = "deletionTimestamp")]
                deletion_timestamp: Option<serde::de::IgnoredAny>,
            }
            let obj: Lifecycle = decode_as(&stored)?;
            if obj.metadata.deletion_timestamp.is_some() {
                return Err(ApiError::Forbidden(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                )));
            }
            Ok(())
        }
        Ok(None) => Err(ApiError::not_found(ns_subject)),
        Err(e) => Err(ApiError::from_store(e, ns_subject)),
    }
}
