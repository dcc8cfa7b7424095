//! ReplicationControllers, the legacy `v1` ReplicaSet: a selector that is a plain label
//! map, defaulted (as Kubernetes does) from the template's labels; one replica by default;
//! the workload checks of a ReplicaSet on the same spec read as a ReplicaSet's; the
//! `scale` subresource. The controller is the ReplicaSet controller run on converted
//! objects (`controllers::replicationcontroller`).

use super::super::Strategy;
use super::super::subresources::{STATUS, Subresource};
use crate::api::printers;
use crate::api::strategic;
use crate::api::validation::{self, FieldError};
use crate::apiserver::scale;
use serde_json::{Value, json};

pub struct ReplicationControllerStrategy;

pub static STRATEGY: ReplicationControllerStrategy = ReplicationControllerStrategy;

static SUBRESOURCES: &[&Subresource] = &[&STATUS, &scale::SCALE];

/// The spec of a ReplicationController as a ReplicaSet's: its label-map selector as
/// `matchLabels`. The checks and the controller read it so.
pub fn as_replica_set_spec(spec: &Value) -> Value {
    let mut spec = spec.clone();
    if let Some(map) = spec.as_object_mut()
        && let Some(selector) = map.remove("selector")
    {
        map.insert("selector".into(), json!({ "matchLabels": selector }));
    }
    spec
}

impl Strategy for ReplicationControllerStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::REPLICA_SET
    }

    fn subresources(&self) -> &'static [&'static Subresource] {
        SUBRESOURCES
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn merge_rules(&self) -> &'static strategic::Section {
        &strategic::WORKLOAD
    }

    fn pod_spec(&self) -> Option<(&'static str, &'static str)> {
        Some(("/spec/template/spec", "spec.template.spec"))
    }

    fn default(&self, obj: &mut Value) {
        use validation::set_default;
        set_default(obj, "/spec/replicas", json!(1));
        let selector_empty = obj
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .is_none_or(serde_json::Map::is_empty);
        if selector_empty
            && let Some(labels) = obj.pointer("/spec/template/metadata/labels").cloned()
            && let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
        {
            spec.insert("selector".into(), labels.clone());
        }
        // Kubernetes also gives the object itself the template's labels when it has none.
        let own_empty = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .is_none_or(serde_json::Map::is_empty);
        if own_empty
            && let Some(labels) = obj.pointer("/spec/template/metadata/labels").cloned()
            && let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.insert("labels".into(), labels);
        }
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let spec = obj.get("spec").map(as_replica_set_spec);
        validation::validate_workload("ReplicationController", spec.as_ref(), errs);
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.replicas"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(selector: Value, template_labels: Value) -> Value {
        json!({
            "metadata": {"name": "web"},
            "spec": {
                "selector": selector,
                "template": {
                    "metadata": {"labels": template_labels},
                    "spec": {"containers": [{"name": "c", "image": "x.wasm"}]},
                },
            },
        })
    }

    #[test]
    fn selector_and_labels_default_from_the_template() {
        let mut obj = rc(json!({}), json!({"app": "web"}));
        STRATEGY.default(&mut obj);
        assert_eq!(obj.pointer("/spec/selector"), Some(&json!({"app": "web"})));
        assert_eq!(
            obj.pointer("/metadata/labels"),
            Some(&json!({"app": "web"}))
        );
        assert_eq!(obj.pointer("/spec/replicas"), Some(&json!(1)));
        let mut errs = Vec::new();
        STRATEGY.validate(&obj, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn a_selector_that_misses_the_template_is_invalid() {
        let mut obj = rc(json!({"app": "other"}), json!({"app": "web"}));
        STRATEGY.default(&mut obj);
        let mut errs = Vec::new();
        STRATEGY.validate(&obj, &mut errs);
        assert!(
            errs.iter()
                .any(|e| e.to_string().contains("spec.template.metadata.labels")),
            "{errs:?}"
        );
    }
}
