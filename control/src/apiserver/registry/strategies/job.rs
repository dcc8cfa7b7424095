//! Jobs: the selector the server generates from the job's uid (unless the user manages
//! it), their defaults and checks.

use super::super::Strategy;
use super::super::subresources::Subresource;
use crate::api::printers;
use crate::api::strategic;
use crate::api::validation::{self, FieldError};
use crate::api::wellknown::{
    JOB_CONTROLLER_UID_LABEL, JOB_NAME_LABEL, LEGACY_JOB_CONTROLLER_UID_LABEL,
    LEGACY_JOB_NAME_LABEL,
};
use serde_json::{Value, json};

pub struct JobStrategy;

pub static STRATEGY: JobStrategy = JobStrategy;

impl Strategy for JobStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::JOB
    }

    fn subresources(&self) -> &'static [&'static Subresource] {
        super::STATUS_ONLY
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn merge_rules(&self) -> &'static strategic::Section {
        &strategic::JOB
    }

    fn pod_spec(&self) -> Option<(&'static str, &'static str)> {
        Some(("/spec/template/spec", "spec.template.spec"))
    }

    fn default(&self, obj: &mut Value) {
        use validation::set_default;

        set_default(obj, "/spec/parallelism", json!(1));
        set_default(obj, "/spec/completions", json!(1));
        set_default(obj, "/spec/backoffLimit", json!(6));
        set_default(obj, "/spec/completionMode", json!("NonIndexed"));
        set_default(obj, "/spec/suspend", json!(false));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::validate_job(obj.get("spec"), errs);
    }

    fn prepare_for_create(&self, obj: &mut Value, uid: &str) {
        generate_job_selector(obj, uid);
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.replicas", "status.successful"]
    }
}

/// Jobs select their pods by the job's uid unless the user manages the selector.
fn generate_job_selector(obj: &mut Value, uid: &str) {
    if obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let name = crate::apiserver::objects::meta_str(obj, "name")
        .unwrap_or_default()
        .to_string();
    let labels = [
        (JOB_CONTROLLER_UID_LABEL, uid),
        (JOB_NAME_LABEL, name.as_str()),
        (LEGACY_JOB_CONTROLLER_UID_LABEL, uid),
        (LEGACY_JOB_NAME_LABEL, name.as_str()),
    ];
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {JOB_CONTROLLER_UID_LABEL: uid}}),
        );
        let template = spec.entry("template").or_insert_with(|| json!({}));
        if let Some(t) = template.as_object_mut() {
            let meta = t.entry("metadata").or_insert_with(|| json!({}));
            if let Some(m) = meta.as_object_mut() {
                let l = m.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = l.as_object_mut() {
                    for (k, v) in labels {
                        l.insert(k.into(), json!(v));
                    }
                }
            }
        }
    }
}
