//! `/wharf/v1/secrets-encrypt/status` (GET) and `/wharf/v1/secrets-encrypt/rotate`
//! (POST): encryption at rest ([`crate::store::encryption`]) as `wharf secrets-encrypt`
//! drives it. Authenticated as every API request and authorized as non-resource URLs, so
//! only those RBAC allows (the admin) see or rotate the keys.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::{ApiError, AppState, auth, authz};
use crate::store::encryption::Encryption;

#[derive(Clone)]
struct EncState {
    api: AppState,
    encryption: Arc<Encryption>,
}

pub fn router(api: AppState, encryption: Arc<Encryption>) -> Router {
    let state = EncState {
        api: api.clone(),
        encryption,
    };
    Router::new()
        .route("/wharf/v1/secrets-encrypt/status", get(status))
        .route("/wharf/v1/secrets-encrypt/rotate", post(rotate))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            authz::authorize_non_resource,
        ))
        .layer(axum::middleware::from_fn_with_state(
            api,
            auth::require_identity,
        ))
}

async fn status(State(state): State<EncState>) -> Response {
    match state.encryption.status().await {
        Ok(status) => axum::Json(status).into_response(),
        Err(e) => ApiError::from_store(e, Default::default()).into_response(),
    }
}

async fn rotate(State(state): State<EncState>) -> Response {
    match state.encryption.rotate(state.api.store.as_ref()).await {
        Ok(key) => {
            tracing::info!(
                key,
                "secrets re-encrypted with a new key; older keys retired"
            );
            match state.encryption.status().await {
                Ok(status) => axum::Json(status).into_response(),
                Err(e) => ApiError::from_store(e, Default::default()).into_response(),
            }
        }
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}
