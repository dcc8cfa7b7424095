//! PriorityClasses: a value (at most 1,000,000,000 for user classes; the `system-`
//! names are reserved for the two built-in classes), a preemption policy, one global
//! default; value and policy never change. Pods are admitted against them by
//! [`crate::apiserver::priority`].

use super::super::Strategy;
use super::super::strategy::Admitted;
use crate::api::printers;
use crate::api::validation::{self, FieldError, Reason};
use crate::apiserver::AppState;
use crate::apiserver::error::ApiError;
use crate::apiserver::priority;
use crate::apiserver::request::Target;
use futures::future::BoxFuture;
use serde_json::{Value, json};

pub struct PriorityClassStrategy;

pub static STRATEGY: PriorityClassStrategy = PriorityClassStrategy;

impl Strategy for PriorityClassStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::PRIORITY_CLASS
    }

    fn default(&self, obj: &mut Value) {
        validation::set_default(obj, "/preemptionPolicy", json!("PreemptLowerPriority"));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let value = obj.get("value").and_then(Value::as_i64).unwrap_or(0);
        let global = obj
            .get("globalDefault")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if name.starts_with(priority::SYSTEM_PREFIX) {
            if let Err(e) = priority::known_system_class(name, value, global) {
                errs.push(FieldError::new(
                    "metadata.name",
                    Reason::Forbidden,
                    None,
                    format!(
                        "priority class names with '{}' prefix are reserved for system use only. error: {e}",
                        priority::SYSTEM_PREFIX
                    ),
                ));
            }
        } else if value > priority::HIGHEST_USER_DEFINABLE {
            errs.push(FieldError::new(
                "value",
                Reason::Forbidden,
                None,
                format!(
                    "maximum allowed value of a user defined priority is {}",
                    priority::HIGHEST_USER_DEFINABLE
                ),
            ));
        }
        if let Some(p) = obj.get("preemptionPolicy").and_then(Value::as_str)
            && !matches!(p, "PreemptLowerPriority" | "Never")
        {
            errs.push(FieldError::new(
                "preemptionPolicy",
                Reason::NotSupported,
                Some(format!("{p:?}")),
                "supported values: \"Never\", \"PreemptLowerPriority\"",
            ));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        for field in ["value", "preemptionPolicy"] {
            if old.get(field) != new.get(field) {
                errs.push(FieldError::new(
                    field,
                    Reason::Forbidden,
                    None,
                    "may not be changed in an update.",
                ));
            }
        }
    }

    /// Only one class may be the global default.
    fn admit_create<'a>(
        &'a self,
        state: &'a AppState,
        _target: &'a Target,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(async move {
            priority::admit_class(state, obj, None).await?;
            Ok(Admitted::none())
        })
    }

    fn admit_update<'a>(
        &'a self,
        state: &'a AppState,
        _target: &'a Target,
        current: &'a Value,
        new: &'a mut Value,
        _status_only: bool,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(async move {
            priority::admit_class(state, new, Some(current)).await?;
            Ok(Admitted::none())
        })
    }
}
