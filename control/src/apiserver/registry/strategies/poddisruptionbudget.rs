//! PodDisruptionBudgets: a status the disruption controller keeps and the eviction
//! subresource spends, and Kubernetes' checks of the budget (one of `minAvailable` and
//! `maxUnavailable`, each an integer or a percentage).

use super::super::Strategy;
use super::super::subresources::Subresource;
use crate::api::printers;
use crate::api::strategic;
use crate::api::validation::{FieldError, Reason};
use serde_json::Value;

pub struct PdbStrategy;

pub static STRATEGY: PdbStrategy = PdbStrategy;

impl Strategy for PdbStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::PDB
    }

    fn subresources(&self) -> &'static [&'static Subresource] {
        super::STATUS_ONLY
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn merge_rules(&self) -> &'static strategic::Section {
        &strategic::PDB
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let spec = obj.get("spec");
        let min = spec
            .and_then(|s| s.get("minAvailable"))
            .filter(|v| !v.is_null());
        let max = spec
            .and_then(|s| s.get("maxUnavailable"))
            .filter(|v| !v.is_null());
        if min.is_some() && max.is_some() {
            errs.push(FieldError::new(
                "spec",
                Reason::Invalid,
                Some(format!(
                    "{:?}",
                    spec.map(Value::to_string).unwrap_or_default()
                )),
                "minAvailable and maxUnavailable cannot be both set",
            ));
        }
        for (field, v) in [("minAvailable", min), ("maxUnavailable", max)] {
            if let Some(v) = v {
                validate_int_or_percent(&format!("spec.{field}"), v, errs);
            }
        }
        if let Some(p) = spec
            .and_then(|s| s.get("unhealthyPodEvictionPolicy"))
            .and_then(Value::as_str)
            && !matches!(p, "IfHealthyBudget" | "AlwaysAllow")
        {
            errs.push(FieldError::new(
                "spec.unhealthyPodEvictionPolicy",
                Reason::NotSupported,
                Some(format!("{p:?}")),
                "supported values: \"AlwaysAllow\", \"IfHealthyBudget\"",
            ));
        }
    }
}

/// A non-negative integer, or a percentage between 0% and 100%.
fn validate_int_or_percent(field: &str, v: &Value, errs: &mut Vec<FieldError>) {
    match v {
        Value::Number(n) if n.as_i64().is_some_and(|n| n < 0) => errs.push(FieldError::invalid(
            field,
            n,
            "must be greater than or equal to 0",
        )),
        Value::String(s) => match s.strip_suffix('%').map(str::parse::<i64>) {
            Some(Ok(p)) if (0..=100).contains(&p) => {}
            Some(Ok(_)) => errs.push(FieldError::invalid(
                field,
                s,
                "must be no greater than 100%",
            )),
            _ => errs.push(FieldError::invalid(
                field,
                s,
                "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
            )),
        },
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::api::kinds::resolve;
    use crate::api::validation::validate;
    use serde_json::json;

    #[test]
    fn one_budget_an_integer_or_a_percentage() {
        let kind = resolve("pdb").unwrap();
        let pdb = |spec: serde_json::Value| {
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
        };
        let errs = |spec| -> Vec<String> {
            validate(kind, &pdb(spec))
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert!(
            errs(json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}))
                .is_empty()
        );
        assert!(errs(json!({"maxUnavailable": "50%"})).is_empty());
        assert_eq!(
            errs(json!({"minAvailable": "150%"})),
            ["spec.minAvailable: Invalid value: \"150%\": must be no greater than 100%"]
        );
        assert_eq!(
            errs(json!({"maxUnavailable": -1})),
            ["spec.maxUnavailable: Invalid value: \"-1\": must be greater than or equal to 0"]
        );
        assert!(
            errs(json!({"minAvailable": 1, "maxUnavailable": 1}))[0]
                .ends_with("minAvailable and maxUnavailable cannot be both set")
        );
    }
}
