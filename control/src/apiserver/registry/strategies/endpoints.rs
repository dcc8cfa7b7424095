//! Endpoints: no address a proxy must never be sent to
//! ([`crate::apiserver::endpoint_addresses`]).

use super::super::{Admitted, Strategy};
use crate::apiserver::request::Target;
use crate::apiserver::{AppState, endpoint_addresses, error::ApiError};
use futures::future::BoxFuture;
use serde_json::Value;

pub struct EndpointsStrategy;

pub static STRATEGY: EndpointsStrategy = EndpointsStrategy;

impl Strategy for EndpointsStrategy {
    fn admit_create<'a>(
        &'a self,
        state: &'a AppState,
        target: &'a Target,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(admit_addresses(state, target, obj))
    }

    fn admit_update<'a>(
        &'a self,
        state: &'a AppState,
        target: &'a Target,
        _current: &'a Value,
        new: &'a mut Value,
        _status_only: bool,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(admit_addresses(state, target, new))
    }
}

/// Refuses an object naming an address [`endpoint_addresses::refusal`] refuses; shared
/// with EndpointSlices.
pub(crate) async fn admit_addresses(
    state: &AppState,
    target: &Target,
    obj: &Value,
) -> Result<Admitted, ApiError> {
    endpoint_addresses::admit(state, target, obj).await?;
    Ok(Admitted::none())
}
