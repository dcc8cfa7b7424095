//! LimitRanges: each item's type and quantities checked; the LimitRanger admission
//! applies them to pods ([`crate::apiserver::limitranger`]).

use super::super::Strategy;
use super::resourcequota::validate_quantities;
use crate::api::printers;
use crate::api::validation::{FieldError, Reason};
use serde_json::Value;

pub struct LimitRangeStrategy;

pub static STRATEGY: LimitRangeStrategy = LimitRangeStrategy;

impl Strategy for LimitRangeStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::LIMIT_RANGE
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let items = obj.pointer("/spec/limits").and_then(Value::as_array);
        for (i, item) in items.into_iter().flatten().enumerate() {
            let path = format!("spec.limits[{i}]");
            match item.get("type").and_then(Value::as_str) {
                Some("Container" | "Pod" | "PersistentVolumeClaim") => {}
                other => errs.push(FieldError::new(
                    format!("{path}.type"),
                    if other.is_none() {
                        Reason::Required
                    } else {
                        Reason::NotSupported
                    },
                    other.map(|t| format!("{t:?}")),
                    "supported values: \"Container\", \"PersistentVolumeClaim\", \"Pod\"",
                )),
            }
            for field in [
                "default",
                "defaultRequest",
                "min",
                "max",
                "maxLimitRequestRatio",
            ] {
                validate_quantities(item.get(field), &format!("{path}.{field}"), errs);
            }
        }
    }
}
