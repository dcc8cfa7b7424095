//! PersistentVolumeClaims: a request for storage that the PV controller binds to a
//! volume. As in Kubernetes, a claim that names no class gets the default class at
//! admission (the `DefaultStorageClass` admission plugin, here the strategy's create
//! hook), a new claim starts `Pending` with the `kubernetes.io/pvc-protection` finalizer
//! (it stays while a pod uses it), and its spec is immutable once created except for
//! what binding fills in (`volumeName`, a class where there was none) and growth of
//! `resources.requests`.

use super::super::Strategy;
use super::super::strategy::Admitted;
use crate::api::printers;
use crate::api::storage::{DEFAULT_CLASS_ANNOTATION, PVC_PROTECTION_FINALIZER};
use crate::api::validation::{self, FieldError, Reason};
use crate::apiserver::AppState;
use crate::apiserver::error::ApiError;
use crate::apiserver::request::Target;
use crate::store::collection_prefix;
use futures::future::BoxFuture;
use serde_json::{Value, json};

pub struct PersistentVolumeClaimStrategy;

pub static STRATEGY: PersistentVolumeClaimStrategy = PersistentVolumeClaimStrategy;

const IMMUTABLE_MSG: &str = "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims";

impl Strategy for PersistentVolumeClaimStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::stateful::PERSISTENT_VOLUME_CLAIM
    }

    fn subresources(&self) -> &'static [&'static super::super::subresources::Subresource] {
        super::STATUS_ONLY
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        if let Some(map) = obj.as_object_mut() {
            map.insert("status".into(), json!({"phase": "Pending"}));
        }
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
            if let Some(list) = finalizers.as_array_mut()
                && !list.iter().any(|f| f == PVC_PROTECTION_FINALIZER)
            {
                list.push(json!(PVC_PROTECTION_FINALIZER));
            }
        }
    }

    fn default(&self, obj: &mut Value) {
        validation::set_default(obj, "/spec/volumeMode", json!("Filesystem"));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_spec(obj.get("spec").unwrap_or(&Value::Null), "spec", errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        validate_update(old, new, errs);
    }

    fn admit_create<'a>(
        &'a self,
        state: &'a AppState,
        _target: &'a Target,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(async move {
            if obj.pointer("/spec/storageClassName").is_some() {
                return Ok(Admitted::none());
            }
            let classes = state
                .store
                .list(&collection_prefix("storage.k8s.io", "storageclasses", None))
                .await
                .map_err(|e| ApiError::from_store(e, Default::default()))?;
            let classes: Vec<Value> = classes
                .items
                .iter()
                .filter_map(|c| serde_json::from_slice(&c.value).ok())
                .collect();
            if let Some(name) = default_class(&classes)
                && let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
            {
                spec.insert("storageClassName".into(), json!(name));
            }
            Ok(Admitted::none())
        })
    }
}

/// The default class among `classes`: of those marked default, the newest (as
/// Kubernetes picks when several are marked), then by name.
pub fn default_class(classes: &[Value]) -> Option<String> {
    classes
        .iter()
        .filter(|c| {
            c.pointer("/metadata/annotations")
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .and_then(Value::as_str)
                == Some("true")
        })
        .max_by_key(|c| {
            (
                c.pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                c.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .and_then(|c| c.pointer("/metadata/name").and_then(Value::as_str))
        .map(str::to_string)
}

/// A claim's spec (also a StatefulSet's `volumeClaimTemplates[i].spec`, at `at`).
pub fn validate_spec(spec: &Value, at: &str, errs: &mut Vec<FieldError>) {
    super::persistentvolume::validate_access_modes(spec, at, errs);
    super::persistentvolume::validate_storage(
        spec.pointer("/resources/requests/storage"),
        &format!("{at}.resources[storage]"),
        errs,
    );
    if let Some(class) = spec.get("storageClassName").and_then(Value::as_str)
        && !class.is_empty()
        && !validation::is_dns1123_subdomain(class)
    {
        errs.push(FieldError::invalid(
            format!("{at}.storageClassName"),
            class,
            validation::DNS1123_SUBDOMAIN_MSG,
        ));
    }
}

/// What may change: `resources.requests` (storage only grows), `volumeName` and
/// `storageClassName` when they were unset.
pub fn validate_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let (Some(old_spec), Some(new_spec)) = (old.get("spec"), new.get("spec")) else {
        return;
    };
    let mut a = old_spec.clone();
    let mut b = new_spec.clone();
    for (field, fill_once) in [
        ("resources", false),
        ("volumeName", true),
        ("storageClassName", true),
        ("volumeAttributesClassName", false),
    ] {
        let was_unset = a.get(field).is_none_or(|v| v.is_null() || v == "");
        if !fill_once || was_unset {
            if let Some(m) = a.as_object_mut() {
                m.remove(field);
            }
            if let Some(m) = b.as_object_mut() {
                m.remove(field);
            }
        }
    }
    // What `resources` holds besides `requests` is immutable too.
    let rest = |s: &Value| {
        let mut r = s.get("resources").cloned().unwrap_or(json!({}));
        if let Some(m) = r.as_object_mut() {
            m.remove("requests");
        }
        r
    };
    if a != b || rest(old_spec) != rest(new_spec) {
        errs.push(FieldError::new(
            "spec",
            Reason::Forbidden,
            None,
            IMMUTABLE_MSG,
        ));
        return;
    }
    let storage = |s: &Value| {
        s.pointer("/resources/requests/storage")
            .and_then(Value::as_str)
            .and_then(crate::api::quantity::value)
    };
    if let (Some(before), Some(after)) = (storage(old_spec), storage(new_spec))
        && after < before
    {
        errs.push(FieldError::new(
            "spec.resources.requests.storage",
            Reason::Forbidden,
            None,
            "field can not be less than previous value",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(storage: &str) -> Value {
        json!({"spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                        "resources": {"requests": {"storage": storage}}}})
    }

    fn update_errors(old: &Value, new: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        validate_update(old, new, &mut errs);
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_claim_needs_modes_and_storage() {
        let mut errs = Vec::new();
        validate_spec(&json!({}), "spec", &mut errs);
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "spec.accessModes: Required value",
                "spec.resources[storage]: Required value"
            ]
        );
    }

    #[test]
    fn only_requests_grow_and_binding_fills_in() {
        let old = claim("1Gi");
        assert!(update_errors(&old, &claim("2Gi")).is_empty());
        assert_eq!(
            update_errors(&old, &claim("512Mi")),
            [
                "spec.resources.requests.storage: Forbidden: field can not be less than previous value"
            ]
        );
        let mut bound = old.clone();
        bound["spec"]["volumeName"] = json!("pvc-1");
        assert!(update_errors(&old, &bound).is_empty());
        let mut rebound = bound.clone();
        rebound["spec"]["volumeName"] = json!("pvc-2");
        assert_eq!(
            update_errors(&bound, &rebound),
            [format!("spec: Forbidden: {IMMUTABLE_MSG}")]
        );
        let mut modes = old.clone();
        modes["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert_eq!(update_errors(&old, &modes).len(), 1);
    }

    #[test]
    fn the_newest_default_class_wins() {
        let classes = [
            json!({"metadata": {"name": "a", "creationTimestamp": "2026-01-01T00:00:00Z",
                   "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}}}),
            json!({"metadata": {"name": "b", "creationTimestamp": "2026-02-01T00:00:00Z",
                   "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}}}),
            json!({"metadata": {"name": "c", "creationTimestamp": "2026-03-01T00:00:00Z"}}),
        ];
        assert_eq!(default_class(&classes).as_deref(), Some("b"));
        assert_eq!(default_class(&classes[2..]), None);
    }
}
