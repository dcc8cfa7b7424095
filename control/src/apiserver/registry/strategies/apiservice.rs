//! APIServices (`apiregistration.k8s.io/v1`): one per served group/version. The local
//! ones (`spec.service` null) are kept by the server itself
//! (`controllers::apiservices`) from what discovery serves; others may be created (as
//! Kubernetes allows, to register an aggregated API server), but wharf proxies to none,
//! so they report `Available=False`. The name must be `VERSION.GROUP`.

use super::super::Strategy;
use super::super::subresources::Subresource;
use super::STATUS_ONLY;
use crate::api::printers;
use crate::api::validation::FieldError;
use serde_json::Value;

pub struct ApiServiceStrategy;

pub static STRATEGY: ApiServiceStrategy = ApiServiceStrategy;

impl Strategy for ApiServiceStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::API_SERVICE
    }

    fn subresources(&self) -> &'static [&'static Subresource] {
        STATUS_ONLY
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let str_at = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
        let (group, version) = (str_at("/spec/group"), str_at("/spec/version"));
        if version.is_empty() {
            errs.push(FieldError::required("spec.version", ""));
        }
        let expected = if group.is_empty() {
            version.to_string()
        } else {
            format!("{version}.{group}")
        };
        let name = str_at("/metadata/name");
        if !version.is_empty() && name != expected {
            errs.push(FieldError::invalid(
                "metadata.name",
                name,
                format!("must be {expected}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_name_is_version_dot_group() {
        let mut errs = Vec::new();
        let ok = json!({"metadata": {"name": "v1alpha1.wardle.k8s.io"},
            "spec": {"group": "wardle.k8s.io", "version": "v1alpha1"}});
        STRATEGY.validate(&ok, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let bad = json!({"metadata": {"name": "wardle"},
            "spec": {"group": "wardle.k8s.io", "version": "v1alpha1"}});
        STRATEGY.validate(&bad, &mut errs);
        assert_eq!(
            errs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["metadata.name: Invalid value: \"wardle\": must be v1alpha1.wardle.k8s.io"]
        );
    }
}
