//! DaemonSets: their update strategy's defaults and the workload checks.

use super::super::Strategy;
use super::super::subresources::Subresource;
use crate::api::printers;
use crate::api::strategic;
use crate::api::validation::{self, FieldError};
use serde_json::{Value, json};

pub struct DaemonSetStrategy;

pub static STRATEGY: DaemonSetStrategy = DaemonSetStrategy;

impl Strategy for DaemonSetStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::DAEMON_SET
    }

    fn subresources(&self) -> &'static [&'static Subresource] {
        super::STATUS_ONLY
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

        set_default(obj, "/spec/updateStrategy/type", json!("RollingUpdate"));
        if obj
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            == Some("RollingUpdate")
        {
            set_default(
                obj,
                "/spec/updateStrategy/rollingUpdate/maxUnavailable",
                json!(1),
            );
            set_default(obj, "/spec/updateStrategy/rollingUpdate/maxSurge", json!(0));
        }
        set_default(obj, "/spec/revisionHistoryLimit", json!(10));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::validate_workload("DaemonSet", obj.get("spec"), errs);
    }
}
