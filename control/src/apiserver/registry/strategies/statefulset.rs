//! StatefulSets: Kubernetes' defaults (one replica, `OrderedReady`, rolling updates at
//! partition 0, claims retained), the workload checks plus the policies and the claim
//! templates, the fields an update may change, and the `scale` subresource.

use super::super::Strategy;
use super::super::subresources::{STATUS, Subresource};
use crate::api::printers;
use crate::api::strategic;
use crate::api::validation::{self, FieldError, Reason};
use crate::apiserver::scale;
use serde_json::{Value, json};

pub struct StatefulSetStrategy;

pub static STRATEGY: StatefulSetStrategy = StatefulSetStrategy;

static SUBRESOURCES: &[&Subresource] = &[&STATUS, &scale::SCALE];

/// The spec fields an update may change, as Kubernetes lists them.
const MUTABLE: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
    "revisionHistoryLimit",
];

impl Strategy for StatefulSetStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::stateful::STATEFUL_SET
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
        set_default(obj, "/spec/podManagementPolicy", json!("OrderedReady"));
        set_default(obj, "/spec/updateStrategy/type", json!("RollingUpdate"));
        if obj
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            == Some("RollingUpdate")
        {
            set_default(
                obj,
                "/spec/updateStrategy/rollingUpdate/partition",
                json!(0),
            );
        }
        set_default(obj, "/spec/revisionHistoryLimit", json!(10));
        set_default(
            obj,
            "/spec/persistentVolumeClaimRetentionPolicy/whenDeleted",
            json!("Retain"),
        );
        set_default(
            obj,
            "/spec/persistentVolumeClaimRetentionPolicy/whenScaled",
            json!("Retain"),
        );
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let spec = obj.get("spec");
        validation::validate_workload("StatefulSet", with_claim_volumes(spec).as_ref(), errs);
        let Some(spec) = spec else { return };
        let spec_obj = json!({"spec": spec});
        super::storageclass::supported(
            &spec_obj,
            "spec.podManagementPolicy",
            &["OrderedReady", "Parallel"],
            errs,
        );
        super::storageclass::supported(
            &spec_obj,
            "spec.updateStrategy.type",
            &["OnDelete", "RollingUpdate"],
            errs,
        );
        for when in ["whenDeleted", "whenScaled"] {
            super::storageclass::supported(
                &spec_obj,
                &format!("spec.persistentVolumeClaimRetentionPolicy.{when}"),
                &["Delete", "Retain"],
                errs,
            );
        }
        if let Some(p) = spec
            .pointer("/updateStrategy/rollingUpdate/partition")
            .and_then(Value::as_i64)
            && p < 0
        {
            errs.push(FieldError::invalid(
                "spec.updateStrategy.rollingUpdate.partition",
                p,
                "must be greater than or equal to 0",
            ));
        }
        if let Some(name) = spec.get("serviceName").and_then(Value::as_str)
            && !name.is_empty()
            && !validation::is_dns1123_label(name)
        {
            errs.push(FieldError::invalid(
                "spec.serviceName",
                name,
                validation::DNS1123_LABEL_MSG,
            ));
        }
        let templates = spec
            .get("volumeClaimTemplates")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (i, t) in templates.iter().enumerate() {
            let at = format!("spec.volumeClaimTemplates[{i}]");
            match t.pointer("/metadata/name").and_then(Value::as_str) {
                Some(n) if validation::is_dns1123_subdomain(n) => {}
                Some(n) => errs.push(FieldError::invalid(
                    format!("{at}.metadata.name"),
                    n,
                    validation::DNS1123_SUBDOMAIN_MSG,
                )),
                None => errs.push(FieldError::required(format!("{at}.metadata.name"), "")),
            }
            super::persistentvolumeclaim::validate_spec(
                t.get("spec").unwrap_or(&Value::Null),
                &format!("{at}.spec"),
                errs,
            );
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        let fixed = |v: &Value| {
            let mut s = v.get("spec").cloned().unwrap_or(json!({}));
            if let Some(m) = s.as_object_mut() {
                for f in MUTABLE {
                    m.remove(*f);
                }
            }
            s
        };
        if fixed(old) != fixed(new) {
            errs.push(FieldError::new(
                "spec",
                Reason::Forbidden,
                None,
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }
}

/// The spec as its pods will have it: each claim template is a volume of the template
/// (what the containers' `volumeMounts` name).
fn with_claim_volumes(spec: Option<&Value>) -> Option<Value> {
    let mut spec = spec?.clone();
    let names: Vec<Value> = spec
        .get("volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.pointer("/metadata/name").cloned())
        .collect();
    if let Some(pod) = spec
        .pointer_mut("/template/spec")
        .and_then(Value::as_object_mut)
    {
        let volumes = pod.entry("volumes").or_insert_with(|| json!([]));
        if let Some(list) = volumes.as_array_mut() {
            for name in names {
                if !list.iter().any(|v| v.get("name") == Some(&name)) {
                    list.push(json!({"name": name, "persistentVolumeClaim": {"claimName": name}}));
                }
            }
        }
    }
    Some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts() -> Value {
        json!({"spec": {
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "a", "image": "a.wasm",
                             "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
        }})
    }

    #[test]
    fn defaults_and_checks() {
        let mut s = sts();
        STRATEGY.default(&mut s);
        assert_eq!(s["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(s["spec"]["updateStrategy"]["rollingUpdate"]["partition"], 0);
        assert_eq!(
            s["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
            "Retain"
        );
        let mut errs = Vec::new();
        STRATEGY.validate(&s, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        s["spec"]["podManagementPolicy"] = json!("Random");
        s["spec"]["volumeClaimTemplates"][0]["spec"]["resources"] = json!({});
        STRATEGY.validate(&s, &mut errs);
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "spec.podManagementPolicy: Unsupported value: \"Random\": supported values: \"OrderedReady\", \"Parallel\"",
                "spec.volumeClaimTemplates[0].spec.resources[storage]: Required value"
            ]
        );
    }

    #[test]
    fn only_some_fields_change() {
        let old = sts();
        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(5);
        scaled["spec"]["template"]["spec"]["containers"][0]["image"] = json!("b.wasm");
        let mut errs = Vec::new();
        STRATEGY.validate_update(&old, &scaled, &mut errs);
        assert!(errs.is_empty());
        let mut renamed = old.clone();
        renamed["spec"]["serviceName"] = json!("other");
        STRATEGY.validate_update(&old, &renamed, &mut errs);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .to_string()
                .starts_with("spec: Forbidden: updates to statefulset spec")
        );
    }
}
