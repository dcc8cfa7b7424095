//! CronJobs: their defaults (concurrency `Allow`, three successful and one failed Job
//! kept), the schedule and time zone checked as the controller will read them
//! ([`crate::api::cron`]), and the job template's pod spec checked as a Job's.

use super::super::Strategy;
use super::super::subresources::Subresource;
use crate::api::cron;
use crate::api::printers;
use crate::api::strategic;
use crate::api::validation::{self, FieldError, Reason};
use serde_json::{Value, json};

pub struct CronJobStrategy;

pub static STRATEGY: CronJobStrategy = CronJobStrategy;

/// A CronJob's name leaves room for the `-<minutes>` suffix of its Jobs' names.
const MAX_NAME: usize = 52;

const TEMPLATE_SPEC: &str = "/spec/jobTemplate/spec/template/spec";

impl Strategy for CronJobStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::CRON_JOB
    }

    fn subresources(&self) -> &'static [&'static Subresource] {
        super::STATUS_ONLY
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn merge_rules(&self) -> &'static strategic::Section {
        &strategic::CRON_JOB
    }

    fn pod_spec(&self) -> Option<(&'static str, &'static str)> {
        Some((TEMPLATE_SPEC, "spec.jobTemplate.spec.template.spec"))
    }

    fn default(&self, obj: &mut Value) {
        use validation::set_default;
        set_default(obj, "/spec/concurrencyPolicy", json!("Allow"));
        set_default(obj, "/spec/suspend", json!(false));
        set_default(obj, "/spec/successfulJobsHistoryLimit", json!(3));
        set_default(obj, "/spec/failedJobsHistoryLimit", json!(1));
        if let Some(spec) = obj.pointer_mut(TEMPLATE_SPEC) {
            validation::default_pod_spec(spec);
        }
    }

    fn name_invalid(&self, name: &str) -> Option<&'static str> {
        if !validation::is_dns1123_subdomain(name) {
            return Some(validation::DNS1123_SUBDOMAIN_MSG);
        }
        (name.len() > MAX_NAME).then_some("must be no more than 52 characters")
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_cron_job(obj.get("spec"), errs);
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.schedule", "spec.suspend"]
    }
}

fn validate_cron_job(spec: Option<&Value>, errs: &mut Vec<FieldError>) {
    let Some(spec) = spec else {
        errs.push(FieldError::required("spec", ""));
        return;
    };
    match spec.get("schedule").and_then(Value::as_str) {
        None | Some("") => errs.push(FieldError::required("spec.schedule", "")),
        Some(s) if s.contains("TZ") => errs.push(FieldError::invalid(
            "spec.schedule",
            s,
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        )),
        Some(s) => {
            if let Err(e) = cron::Schedule::parse(s) {
                errs.push(FieldError::invalid("spec.schedule", s, e.to_string()));
            }
        }
    }
    if let Some(tz) = spec.get("timeZone").and_then(Value::as_str)
        && let Err(e) = cron::time_zone(Some(tz))
    {
        errs.push(FieldError::invalid("spec.timeZone", tz, e.to_string()));
    }
    if let Some(p) = spec.get("concurrencyPolicy").and_then(Value::as_str)
        && !matches!(p, "Allow" | "Forbid" | "Replace")
    {
        errs.push(FieldError::new(
            "spec.concurrencyPolicy",
            Reason::NotSupported,
            Some(format!("{p:?}")),
            "supported values: \"Allow\", \"Forbid\", \"Replace\"",
        ));
    }
    for field in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        if let Some(n) = spec.get(field).and_then(Value::as_i64)
            && n < 0
        {
            errs.push(FieldError::invalid(
                format!("spec.{field}"),
                n,
                "must be greater than or equal to 0",
            ));
        }
    }
    match spec.pointer("/jobTemplate/spec/template/spec") {
        Some(t) => {
            validation::validate_pod_spec(t, "spec.jobTemplate.spec.template.spec", errs);
            match t.get("restartPolicy").and_then(Value::as_str) {
                Some("OnFailure") | Some("Never") => {}
                other => errs.push(FieldError::new(
                    "spec.jobTemplate.spec.template.spec.restartPolicy",
                    if other.is_none() {
                        Reason::Required
                    } else {
                        Reason::NotSupported
                    },
                    other.map(|p| format!("{p:?}")),
                    "supported values: \"OnFailure\", \"Never\"",
                )),
            }
        }
        None => errs.push(FieldError::required(
            "spec.jobTemplate.spec.template.spec",
            "",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::api::kinds::resolve;
    use crate::api::validation::{apply_defaults, validate};
    use serde_json::{Value, json};

    fn cron_job(name: &str, spec: Value) -> Value {
        let mut s = json!({"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "OnFailure", "containers": [{"name": "a", "image": "a.wasm"}]}}}}});
        s.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        json!({"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": name, "namespace": "default"}, "spec": s})
    }

    fn errors(obj: Value) -> Vec<String> {
        let kind = resolve("cronjob").unwrap();
        let mut obj = obj;
        apply_defaults(kind, &mut obj);
        validate(kind, &obj).iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn defaults_and_a_valid_cron_job() {
        let kind = resolve("cj").unwrap();
        let mut obj = cron_job("nightly", json!({}));
        apply_defaults(kind, &mut obj);
        assert_eq!(
            obj.pointer("/spec/concurrencyPolicy"),
            Some(&json!("Allow"))
        );
        assert_eq!(
            obj.pointer("/spec/successfulJobsHistoryLimit"),
            Some(&json!(3))
        );
        assert_eq!(obj.pointer("/spec/failedJobsHistoryLimit"), Some(&json!(1)));
        assert_eq!(
            obj.pointer("/spec/jobTemplate/spec/template/spec/dnsPolicy"),
            Some(&json!("ClusterFirst"))
        );
        assert!(validate(kind, &obj).is_empty());
    }

    #[test]
    fn schedule_time_zone_and_policy_errors_read_as_kubernetes() {
        assert_eq!(
            errors(cron_job("a", json!({"schedule": "* * *"}))),
            [
                "spec.schedule: Invalid value: \"* * *\": expected exactly 5 fields, found 3: [* * *]"
            ]
        );
        assert_eq!(
            errors(cron_job("a", json!({"schedule": "CRON_TZ=UTC 0 * * * *"}))),
            [
                "spec.schedule: Invalid value: \"CRON_TZ=UTC 0 * * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
            ]
        );
        assert_eq!(
            errors(cron_job("a", json!({"timeZone": "Mars/Base"}))),
            ["spec.timeZone: Invalid value: \"Mars/Base\": unknown time zone Mars/Base"]
        );
        assert_eq!(
            errors(cron_job("a", json!({"concurrencyPolicy": "Sometimes"}))),
            [
                "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\""
            ]
        );
        assert_eq!(
            errors(cron_job(&"a".repeat(53), json!({}))),
            [format!(
                "metadata.name: Invalid value: \"{}\": must be no more than 52 characters",
                "a".repeat(53)
            )]
        );
        assert!(
            errors(cron_job(
                "a",
                json!({"timeZone": "Europe/Paris", "schedule": "@hourly"})
            ))
            .is_empty()
        );
    }
}
