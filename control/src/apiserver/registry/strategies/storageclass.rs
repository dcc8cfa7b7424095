//! StorageClasses: what a claim's class provisions, and how. Kubernetes' defaults
//! (reclaim `Delete`, binding `Immediate`) and its immutable fields: a class already
//! used by volumes must keep meaning what it meant when they were made.

use super::super::Strategy;
use crate::api::printers;
use crate::api::validation::{self, FieldError, Reason};
use serde_json::{Value, json};

pub struct StorageClassStrategy;

pub static STRATEGY: StorageClassStrategy = StorageClassStrategy;

impl Strategy for StorageClassStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::stateful::STORAGE_CLASS
    }

    fn default(&self, obj: &mut Value) {
        validation::set_default(obj, "/reclaimPolicy", json!("Delete"));
        validation::set_default(obj, "/volumeBindingMode", json!("Immediate"));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate(obj, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        validate_update(old, new, errs);
    }
}

/// A class needs a provisioner; its policies are among the supported ones.
pub fn validate(obj: &Value, errs: &mut Vec<FieldError>) {
    match obj.get("provisioner").and_then(Value::as_str) {
        None | Some("") => errs.push(FieldError::required("provisioner", "")),
        Some(p) if !validation::is_dns1123_subdomain(&p.replace('/', ".").to_lowercase()) => errs
            .push(FieldError::invalid(
                "provisioner",
                p,
                validation::DNS1123_SUBDOMAIN_MSG,
            )),
        Some(_) => {}
    }
    supported(obj, "reclaimPolicy", &["Delete", "Retain"], errs);
    supported(
        obj,
        "volumeBindingMode",
        &["Immediate", "WaitForFirstConsumer"],
        errs,
    );
}

/// A NotSupported error when `obj[field]` is set and not one of `allowed`.
pub(crate) fn supported(obj: &Value, field: &str, allowed: &[&str], errs: &mut Vec<FieldError>) {
    let pointer = format!("/{}", field.replace('.', "/"));
    if let Some(v) = obj.pointer(&pointer).and_then(Value::as_str)
        && !allowed.contains(&v)
    {
        let list = allowed
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        errs.push(FieldError::new(
            field,
            Reason::NotSupported,
            Some(format!("{v:?}")),
            format!("supported values: {list}"),
        ));
    }
}

/// Provisioner, parameters and reclaim policy are forbidden to change, the binding mode
/// is immutable: Kubernetes' words for each.
pub fn validate_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    for field in ["provisioner", "parameters", "reclaimPolicy"] {
        if old.get(field) != new.get(field) {
            errs.push(FieldError::new(
                field,
                Reason::Forbidden,
                None,
                format!("updates to {field} are forbidden."),
            ));
        }
    }
    if old.get("volumeBindingMode") != new.get("volumeBindingMode") {
        errs.push(FieldError::invalid(
            "volumeBindingMode",
            new.get("volumeBindingMode")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            "field is immutable",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_a_provisioner_and_known_policies() {
        let mut errs = Vec::new();
        validate(&json!({"reclaimPolicy": "Recycle"}), &mut errs);
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "provisioner: Required value",
                "reclaimPolicy: Unsupported value: \"Recycle\": supported values: \"Delete\", \"Retain\""
            ]
        );
        let mut errs = Vec::new();
        validate(&json!({"provisioner": "wharf.dev/local-path"}), &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn provisioner_and_mode_do_not_change() {
        let old = json!({"provisioner": "a", "volumeBindingMode": "Immediate", "reclaimPolicy": "Delete"});
        let mut errs = Vec::new();
        validate_update(&old, &old, &mut errs);
        assert!(errs.is_empty());
        let new = json!({"provisioner": "b", "volumeBindingMode": "WaitForFirstConsumer", "reclaimPolicy": "Delete"});
        validate_update(&old, &new, &mut errs);
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "provisioner: Forbidden: updates to provisioner are forbidden.",
                "volumeBindingMode: Invalid value: \"WaitForFirstConsumer\": field is immutable"
            ]
        );
    }
}
