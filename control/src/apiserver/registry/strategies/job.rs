//! Jobs: the selector the server generates from the job's uid (unless the user manages
//! it), their defaults and checks.

use super::super::subresources::Subresource;
use super::super::{Admitted, Strategy};
use crate::api::validation::{self, FieldError};
use crate::apiserver::request::Target;
use crate::apiserver::{AppState, error::ApiError};
use futures::future::BoxFuture;
use serde_json::{Value, json};

pub struct JobStrategy;

pub static STRATEGY: JobStrategy = JobStrategy;

impl Strategy for JobStrategy {
    fn subresources(&self) -> &'static [&'static Subresource] {
        super::STATUS_ONLY
    }

    fn has_spec(&self) -> bool {
        true
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

    fn admit_create<'a>(
        &'a self,
        state: &'a AppState,
        target: &'a Target,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(super::pod::host_path_warnings(state, target, obj, false))
    }

    fn admit_update<'a>(
        &'a self,
        state: &'a AppState,
        target: &'a Target,
        _current: &'a Value,
        new: &'a mut Value,
        status_only: bool,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(super::pod::host_path_warnings(
            state,
            target,
            new,
            status_only,
        ))
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
    let labels = json!({
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    });
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
        let template = spec.entry("template").or_insert_with(|| json!({}));
        if let Some(t) = template.as_object_mut() {
            let meta = t.entry("metadata").or_insert_with(|| json!({}));
            if let Some(m) = meta.as_object_mut() {
                let l = m.entry("labels").or_insert_with(|| json!({}));
                if let (Some(l), Some(add)) = (l.as_object_mut(), labels.as_object()) {
                    for (k, v) in add {
                        l.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
}
