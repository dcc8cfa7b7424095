//! The API server's error type and its rendering as a Kubernetes `Status`.
//!
//! Every failure a client can see is one of these variants, and every variant maps to the
//! `reason` and `code` kube-apiserver uses, so that kubectl and the client libraries
//! recognise them (`Error from server (NotFound)`, `IsConflict`, ...). Internal errors are
//! logged with their detail and answered with a generic message: no internals leak.

use crate::api::validation::FieldError;
use crate::store::StoreError;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

/// Which object an error is about, for `Status.details`.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub group: String,
    /// The resource (plural), as Kubernetes reports it in `details.kind`.
    pub resource: String,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    NotFound { subject: Subject, message: String },
    #[error("{message}")]
    AlreadyExists { subject: Subject, message: String },
    #[error("{message}")]
    Conflict { subject: Subject, message: String },
    #[error("{message}")]
    Invalid {
        subject: Box<Subject>,
        kind: String,
        message: String,
        causes: Vec<FieldError>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("request entity too large: limit is {limit} bytes")]
    TooLarge { limit: usize },
    /// 413 with its own message: a patch or an object that would be too large to store.
    #[error("{0}")]
    EntityTooLarge(String),
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: u64, oldest: u64 },
    /// A list's continue token names a revision the store no longer holds.
    #[error(
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."
    )]
    ContinueExpired,
    #[error("{0}")]
    ServiceUnavailable(String),
    /// 429: a request the server refuses for now (an eviction that would break a
    /// disruption budget), with Kubernetes' `details.causes` (`reason`, `message`).
    #[error("{message}")]
    TooManyRequests {
        message: String,
        causes: Vec<(String, String)>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn not_found(subject: Subject) -> Self {
        let message = format!("{} \"{}\" not found", qualified(&subject), subject.name);
        ApiError::NotFound { subject, message }
    }

    pub fn already_exists(subject: Subject) -> Self {
        let message = format!(
            "{} \"{}\" already exists",
            qualified(&subject),
            subject.name
        );
        ApiError::AlreadyExists { subject, message }
    }

    pub fn conflict(subject: Subject, why: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{}\": {why}",
            qualified(&subject),
            subject.name
        );
        ApiError::Conflict { subject, message }
    }

    pub fn invalid(subject: Subject, kind: &str, causes: Vec<FieldError>) -> Self {
        let list = causes
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let message = if causes.len() > 1 {
            format!("{kind} \"{}\" is invalid: [{list}]", subject.name)
        } else {
            format!("{kind} \"{}\" is invalid: {list}", subject.name)
        };
        ApiError::Invalid {
            subject: Box::new(subject),
            kind: kind.to_string(),
            message,
            causes,
        }
    }

    /// Maps a store error about `subject`.
    pub fn from_store(err: StoreError, subject: Subject) -> Self {
        match err {
            StoreError::NotFound { .. } => ApiError::not_found(subject),
            StoreError::AlreadyExists { .. } => ApiError::already_exists(subject),
            StoreError::Conflict { .. } => ApiError::conflict(
                subject,
                "the object has been modified; please apply your changes to the latest version and try again",
            ),
            StoreError::Expired { requested, oldest } => ApiError::Expired { requested, oldest },
            StoreError::Closed => ApiError::ServiceUnavailable("the store is shutting down".into()),
            StoreError::Unavailable { what, source } => {
                // The cause stays in the log; the client learns only that it may retry.
                tracing::warn!(%what, error = %source, cause = ?std::error::Error::source(&source), "the store is unavailable");
                ApiError::ServiceUnavailable(format!(
                    "the storage backend is unavailable ({what}); please try again"
                ))
            }
            StoreError::Io(e) => ApiError::Internal(e),
        }
    }

    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::TooLarge { .. } | ApiError::EntityTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Expired { .. } | ApiError::ContinueExpired => StatusCode::GONE,
            ApiError::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::NotAcceptable(_) => "NotAcceptable",
            ApiError::TooLarge { .. } | ApiError::EntityTooLarge(_) => "RequestEntityTooLarge",
            ApiError::Expired { .. } | ApiError::ContinueExpired => "Expired",
            ApiError::ServiceUnavailable(_) => "ServiceUnavailable",
            ApiError::TooManyRequests { .. } => "TooManyRequests",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// The `meta/v1 Status` object for this error, its fields in kube-apiserver's order
    /// (`details` before `code`; clients have been seen comparing the text).
    pub fn status(&self) -> Value {
        let message = match self {
            ApiError::Internal(_) => {
                "an internal error occurred; see the control plane's log".to_string()
            }
            other => other.to_string(),
        };
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": self.reason(),
        });
        let subject = match self {
            ApiError::NotFound { subject, .. }
            | ApiError::AlreadyExists { subject, .. }
            | ApiError::Conflict { subject, .. } => Some(subject),
            ApiError::Invalid { subject, .. } => Some(&**subject),
            _ => None,
        };
        if matches!(self, ApiError::ServiceUnavailable(_)) {
            status["details"] = json!({ "retryAfterSeconds": RETRY_AFTER_SECONDS });
        }
        if let ApiError::TooManyRequests { causes, .. } = self {
            status["details"] = json!({
                "causes": causes
                    .iter()
                    .map(|(reason, message)| json!({"reason": reason, "message": message}))
                    .collect::<Vec<_>>(),
            });
        }
        if let Some(s) = subject {
            let mut details = json!({ "name": s.name });
            if !s.group.is_empty() {
                details["group"] = json!(s.group);
            }
            details["kind"] = json!(s.resource);
            if let ApiError::Invalid { causes, kind, .. } = self {
                details["kind"] = json!(kind);
                details["causes"] = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason.as_str(), "message": c.message_with_value(), "field": c.field}))
                    .collect();
            }
            status["details"] = details;
        }
        status["code"] = json!(self.code().as_u16());
        status
    }
}

impl From<crate::api::jsonpatch::JsonPatchError> for ApiError {
    fn from(e: crate::api::jsonpatch::JsonPatchError) -> Self {
        use crate::api::jsonpatch::JsonPatchError as E;
        match e {
            E::Malformed(_) => ApiError::BadRequest(e.to_string()),
            E::TooManyOperations(_) | E::CopiesTooLarge { .. } => {
                ApiError::EntityTooLarge(e.to_string())
            }
            E::Failed { .. } => ApiError::Invalid {
                subject: Box::default(),
                kind: String::new(),
                message: e.to_string(),
                causes: vec![],
            },
        }
    }
}

fn qualified(subject: &Subject) -> String {
    if subject.group.is_empty() {
        subject.resource.clone()
    } else {
        format!("{}.{}", subject.resource, subject.group)
    }
}

/// Seconds a client should wait before retrying a 503, sent as `Retry-After` and as the
/// Status' `details.retryAfterSeconds`, as kube-apiserver does.
pub const RETRY_AFTER_SECONDS: u64 = 1;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error answering a request");
        }
        // As kube-apiserver's encoder writes it: the JSON and a newline.
        let mut body = serde_json::to_vec(&self.status()).unwrap_or_default();
        body.push(b'\n');
        let mut response = (
            self.code(),
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if matches!(self, ApiError::ServiceUnavailable(_)) {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// The text of a Status is kube-apiserver's, byte for byte: the Python client's own
    /// tests compare it.
    #[tokio::test]
    async fn a_status_reads_as_kube_apiservers() {
        let err = ApiError::already_exists(Subject {
            group: "apps".into(),
            resource: "deployments".into(),
            name: "web".into(),
        });
        let body = err.into_response().into_body().collect().await;
        let text = String::from_utf8(body.map(|b| b.to_bytes().to_vec()).unwrap_or_default());
        assert_eq!(
            text.unwrap_or_default(),
            concat!(
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","#,
                r#""message":"deployments.apps \"web\" already exists","reason":"AlreadyExists","#,
                r#""details":{"name":"web","group":"apps","kind":"deployments"},"code":409}"#,
                "\n"
            )
        );
    }
}
