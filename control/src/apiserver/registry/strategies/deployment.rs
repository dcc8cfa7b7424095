//! Deployments: their defaults (rolling update of 25%/25%, ten revisions kept), the
//! workload checks plus the strategy type, and the `scale` subresource.

use super::super::Strategy;
use super::super::subresources::{STATUS, Subresource};
use crate::api::printers;
use crate::api::strategic;
use crate::api::validation::{self, FieldError, Reason};
use crate::apiserver::scale;
use serde_json::{Value, json};

pub struct DeploymentStrategy;

pub static STRATEGY: DeploymentStrategy = DeploymentStrategy;

static SUBRESOURCES: &[&Subresource] = &[&STATUS, &scale::SCALE];

impl Strategy for DeploymentStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::DEPLOYMENT
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
        if obj.pointer("/spec/strategy/type").and_then(Value::as_str) != Some("Recreate") {
            set_default(obj, "/spec/strategy/type", json!("RollingUpdate"));
            set_default(
                obj,
                "/spec/strategy/rollingUpdate/maxUnavailable",
                json!("25%"),
            );
            set_default(obj, "/spec/strategy/rollingUpdate/maxSurge", json!("25%"));
        }
        set_default(obj, "/spec/revisionHistoryLimit", json!(10));
        set_default(obj, "/spec/progressDeadlineSeconds", json!(600));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let spec = obj.get("spec");
        validation::validate_workload("Deployment", spec, errs);
        if let Some(t) = spec
            .and_then(|s| s.pointer("/strategy/type"))
            .and_then(Value::as_str)
            && !matches!(t, "RollingUpdate" | "Recreate")
        {
            errs.push(FieldError::new(
                "spec.strategy.type",
                Reason::NotSupported,
                Some(format!("{t:?}")),
                "supported values: \"Recreate\", \"RollingUpdate\"",
            ));
        }
    }
}
