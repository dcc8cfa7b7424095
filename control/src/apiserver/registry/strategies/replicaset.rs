//! ReplicaSets: one replica by default, the workload checks, the `scale` subresource.

use super::super::Strategy;
use super::super::subresources::{STATUS, Subresource};
use crate::api::printers;
use crate::api::strategic;
use crate::api::validation::{self, FieldError};
use crate::apiserver::scale;
use serde_json::{Value, json};

pub struct ReplicaSetStrategy;

pub static STRATEGY: ReplicaSetStrategy = ReplicaSetStrategy;

static SUBRESOURCES: &[&Subresource] = &[&STATUS, &scale::SCALE];

impl Strategy for ReplicaSetStrategy {
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
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::validate_workload("ReplicaSet", obj.get("spec"), errs);
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.replicas", "status.successful"]
    }
}
