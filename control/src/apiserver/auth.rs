//! Bearer-token authentication.
//!
//! Every request but the health and version endpoints carries `Authorization: Bearer
//! TOKEN`; the token maps to an [`Identity`] that later steps may use for authorization.
//! The control plane's own components do not hold a token: the in-process client inserts
//! the system identity as a request extension, which a TCP client cannot forge (extensions
//! never come from the wire).

use super::AppState;
use super::error::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::RwLock;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// The control plane itself.
    pub fn system() -> Self {
        Identity {
            user: "system:wharf-control-plane".into(),
            groups: vec!["system:masters".into()],
        }
    }

    /// The cluster administrator of the generated kubeconfig.
    pub fn admin() -> Self {
        Identity {
            user: "admin".into(),
            groups: vec!["system:masters".into()],
        }
    }
}

/// The known tokens.
#[derive(Debug, Default)]
pub struct Authenticator {
    tokens: RwLock<HashMap<String, Identity>>,
}

impl Authenticator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_token(&self, token: impl Into<String>, identity: Identity) {
        if let Ok(mut t) = self.tokens.write() {
            t.insert(token.into(), identity);
        }
    }

    /// The identity of `token`. Comparison is constant-time per candidate so that timing
    /// does not reveal how much of a token matched.
    pub fn authenticate(&self, token: &str) -> Option<Identity> {
        let tokens = self.tokens.read().ok()?;
        let mut found = None;
        for (known, identity) in tokens.iter() {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(identity.clone());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random token: 32 bytes, hex.
pub fn generate_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Middleware: resolves the caller's identity or answers 401.
pub async fn require_identity(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if req.extensions().get::<Identity>().is_some() {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let token = match header.and_then(|h| h.strip_prefix("Bearer ")) {
        Some(t) => t.trim(),
        None => {
            return ApiError::Unauthorized("Unauthorized: a bearer token is required".into())
                .into_response();
        }
    };
    match state.auth.authenticate(token) {
        Some(identity) => {
            req.extensions_mut().insert(identity);
            next.run(req).await
        }
        None => {
            ApiError::Unauthorized("Unauthorized: the token is not valid".into()).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_exactly() {
        let auth = Authenticator::new();
        let t = generate_token();
        assert_eq!(t.len(), 64);
        auth.add_token(t.clone(), Identity::admin());
        assert_eq!(auth.authenticate(&t), Some(Identity::admin()));
        assert_eq!(auth.authenticate(&t[..63]), None);
        assert_eq!(auth.authenticate(""), None);
        assert_ne!(generate_token(), t);
    }
}
