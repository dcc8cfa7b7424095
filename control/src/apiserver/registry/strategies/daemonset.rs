//! DaemonSets: their update strategy's defaults and the workload checks.

use super::super::subresources::Subresource;
use super::super::{Admitted, Strategy};
use crate::api::validation::{self, FieldError};
use crate::apiserver::request::Target;
use crate::apiserver::{AppState, error::ApiError};
use futures::future::BoxFuture;
use serde_json::{Value, json};

pub struct DaemonSetStrategy;

pub static STRATEGY: DaemonSetStrategy = DaemonSetStrategy;

impl Strategy for DaemonSetStrategy {
    fn subresources(&self) -> &'static [&'static Subresource] {
        super::STATUS_ONLY
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn default(&self, obj: &mut Value) {
        use validation::set_default;

        set_default(obj, "/spec/updateStrategy/type", json!("RollingUpdate"));
        if obj
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            == Some("RollingUpdate")
        {
            set_default(
                obj,
                "/spec/updateStrategy/rollingUpdate/maxUnavailable",
                json!(1),
            );
            set_default(obj, "/spec/updateStrategy/rollingUpdate/maxSurge", json!(0));
        }
        set_default(obj, "/spec/revisionHistoryLimit", json!(10));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::validate_workload("DaemonSet", obj.get("spec"), errs);
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
