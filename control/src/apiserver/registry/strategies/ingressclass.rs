//! IngressClasses (`networking.k8s.io/v1`, cluster-scoped): which controller serves
//! Ingresses of the class. Every cluster has `wharf` ([`BUILTIN`]), served by the node
//! proxies and marked the default.

use super::super::Strategy;
use crate::api::printers;
use crate::api::validation::FieldError;
use serde_json::{Value, json};

pub struct IngressClassStrategy;

pub static STRATEGY: IngressClassStrategy = IngressClassStrategy;

/// The class the node proxies serve.
pub const WHARF_CLASS: &str = "wharf";
/// Its `spec.controller`.
pub const WHARF_CONTROLLER: &str = "wharf.dev/ingress";

/// The built-in IngressClass, created at bootstrap.
pub fn builtin() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {
            "name": WHARF_CLASS,
            "annotations": {super::ingress::DEFAULT_CLASS_ANNOTATION: "true"},
        },
        "spec": {"controller": WHARF_CONTROLLER},
    })
}

impl Strategy for IngressClassStrategy {
    fn has_spec(&self) -> bool {
        true
    }

    fn printer(&self) -> &'static printers::Printer {
        &printers::INGRESS_CLASS
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        match obj.pointer("/spec/controller").and_then(Value::as_str) {
            None | Some("") => errs.push(FieldError::required("spec.controller", "")),
            Some(c) if c.len() > 250 => errs.push(FieldError::new(
                "spec.controller",
                crate::api::validation::Reason::TooLong,
                None,
                "may not be more than 250 bytes",
            )),
            Some(_) => {}
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        let controller = |v: &Value| v.pointer("/spec/controller").cloned();
        if controller(old) != controller(new) {
            errs.push(FieldError::invalid(
                "spec.controller",
                controller(new)
                    .as_ref()
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                "field is immutable",
            ));
        }
    }
}
