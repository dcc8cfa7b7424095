//! Deployments: their defaults (rolling update of 25%/25%, ten revisions kept), the
//! workload checks plus the strategy type, and the `scale` subresource.

use super::super::subresources::{STATUS, Subresource};
use super::super::{Admitted, Strategy};
use crate::api::validation::{self, FieldError, Reason};
use crate::apiserver::request::Target;
use crate::apiserver::{AppState, error::ApiError, scale};
use futures::future::BoxFuture;
use serde_json::{Value, json};

pub struct DeploymentStrategy;

pub static STRATEGY: DeploymentStrategy = DeploymentStrategy;

static SUBRESOURCES: &[&Subresource] = &[&STATUS, &scale::SCALE];

impl Strategy for DeploymentStrategy {
    fn subresources(&self) -> &'static [&'static Subresource] {
        SUBRESOURCES
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn default(&self, obj: &mut Value) {
        use validation::set_default;

        set_default(obj, "/spec/replicas", json!(1));
        if obj.pointer("/spec/strategy/type").and_then(Value::as_str) != Some("Recreate") {
            set_default(obj, "/spec/strategy/type", json!("RollingUpdate"));
            set_default(
                obj,
                "/spec/strategy/rollingUpdate/maxUnavailable",
                json!("25%"),
            );
            set_default(obj, "/spec/strategy/rollingUpdate/maxSurge", json!("25%"));
        }
        set_default(obj, "/spec/revisionHistoryLimit", json!(10));
        set_default(obj, "/spec/progressDeadlineSeconds", json!(600));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let spec = obj.get("spec");
        validation::validate_workload("Deployment", spec, errs);
        if let Some(t) = spec
            .and_then(|s| s.pointer("/strategy/type"))
            .and_then(Value::as_str)
            && !matches!(t, "RollingUpdate" | "Recreate")
        {
            errs.push(FieldError::new(
                "spec.strategy.type",
                Reason::NotSupported,
                Some(format!("{t:?}")),
                "supported values: \"Recreate\", \"RollingUpdate\"",
            ));
        }
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
