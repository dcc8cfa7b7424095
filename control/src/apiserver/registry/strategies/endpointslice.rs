//! EndpointSlices: an `addressType`, and no address a proxy must never be sent to (as
//! Endpoints).

use super::super::{Admitted, Strategy};
use crate::api::validation::FieldError;
use crate::apiserver::request::Target;
use crate::apiserver::{AppState, error::ApiError};
use futures::future::BoxFuture;
use serde_json::Value;

pub struct EndpointSliceStrategy;

pub static STRATEGY: EndpointSliceStrategy = EndpointSliceStrategy;

impl Strategy for EndpointSliceStrategy {
    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        if obj.get("addressType").and_then(Value::as_str).is_none() {
            errs.push(FieldError::required("addressType", ""));
        }
    }

    fn admit_create<'a>(
        &'a self,
        state: &'a AppState,
        target: &'a Target,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(super::endpoints::admit_addresses(state, target, obj))
    }

    fn admit_update<'a>(
        &'a self,
        state: &'a AppState,
        target: &'a Target,
        _current: &'a Value,
        new: &'a mut Value,
        _status_only: bool,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(super::endpoints::admit_addresses(state, target, new))
    }
}
