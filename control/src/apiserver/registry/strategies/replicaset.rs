//! ReplicaSets: one replica by default, the workload checks, the `scale` subresource.

use super::super::subresources::{STATUS, Subresource};
use super::super::{Admitted, Strategy};
use crate::api::validation::{self, FieldError};
use crate::apiserver::request::Target;
use crate::apiserver::{AppState, error::ApiError, scale};
use futures::future::BoxFuture;
use serde_json::{Value, json};

pub struct ReplicaSetStrategy;

pub static STRATEGY: ReplicaSetStrategy = ReplicaSetStrategy;

static SUBRESOURCES: &[&Subresource] = &[&STATUS, &scale::SCALE];

impl Strategy for ReplicaSetStrategy {
    fn subresources(&self) -> &'static [&'static Subresource] {
        SUBRESOURCES
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn default(&self, obj: &mut Value) {
        use validation::set_default;
        set_default(obj, "/spec/replicas", json!(1));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::validate_workload("ReplicaSet", obj.get("spec"), errs);
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
