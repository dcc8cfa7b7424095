//! ResourceQuotas: `spec.hard` quantities checked; `status` (hard and used) is written by
//! the resource quota controller and charged by quota admission
//! ([`crate::apiserver::quota`]).

use super::super::Strategy;
use super::super::subresources::Subresource;
use crate::api::printers;
use crate::api::quantity::Quantity;
use crate::api::validation::FieldError;
use serde_json::Value;

pub struct ResourceQuotaStrategy;

pub static STRATEGY: ResourceQuotaStrategy = ResourceQuotaStrategy;

impl Strategy for ResourceQuotaStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::RESOURCE_QUOTA
    }

    fn subresources(&self) -> &'static [&'static Subresource] {
        super::STATUS_ONLY
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_quantities(obj.pointer("/spec/hard"), "spec.hard", errs);
    }
}

/// Every value of a resource map is a non-negative quantity.
pub(crate) fn validate_quantities(map: Option<&Value>, path: &str, errs: &mut Vec<FieldError>) {
    for (k, v) in map.and_then(Value::as_object).into_iter().flatten() {
        let field = format!("{path}[{k}]");
        match v.as_str().map(Quantity::parse) {
            Some(Ok(q)) if q.is_negative() => errs.push(FieldError::invalid(
                field,
                v.as_str().unwrap_or_default(),
                "must be greater than or equal to 0",
            )),
            Some(Ok(_)) => {}
            Some(Err(e)) => errs.push(FieldError::invalid(
                field,
                v.as_str().unwrap_or_default(),
                e.to_string(),
            )),
            None => {}
        }
    }
}
