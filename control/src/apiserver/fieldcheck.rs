//! A write request's field validation, between the pure check in [`crate::api::fields`]
//! and the HTTP exchange: the `fieldValidation` directive and the duplicate keys of the
//! body go in, a 400 (Strict) or `Warning` response headers (Warn) come out.
//!
//! Every handler that stores an object a client sent passes it through
//! [`FieldCheck::apply`] just before it is admitted, so unknown fields never reach the
//! store whatever the directive. A read-modify-write may run several times (it is
//! retried on conflicts); the warnings kept are those of the last run.

use super::error::{ApiError, Subject};
use super::request::Query;
use crate::api::fields::{self, Directive};
use crate::api::kinds::ResourceKind;
use axum::response::Response;
use http::HeaderValue;
use serde_json::Value;
use std::sync::Mutex;

/// At most this many `Warning` headers per response (Kubernetes caps them too); the
/// rest are summarised in one.
const MAX_WARNINGS: usize = 50;

/// The field validation of one request.
#[derive(Debug)]
pub struct FieldCheck {
    directive: Directive,
    /// Who writes, for `metadata.managedFields`; `None` records nothing (an apply
    /// records its own).
    manager: Option<String>,
    /// The subresource writes are recorded through when the store's own choice
    /// (`status` or none) is not it: `scale`.
    subresource: Option<&'static str>,
    duplicates: Vec<String>,
    warnings: Mutex<Vec<String>>,
}

impl FieldCheck {
    /// From the request's query and the duplicate keys found in its body.
    pub fn new(query: &Query, duplicates: Vec<String>) -> Result<Self, ApiError> {
        let directive =
            Directive::parse(query.get("fieldValidation")).map_err(ApiError::BadRequest)?;
        Ok(FieldCheck {
            directive,
            manager: None,
            subresource: None,
            duplicates,
            warnings: Mutex::new(Vec::new()),
        })
    }

    /// Checks and prunes the object about to be written: `Strict` with a problem is a 422
    /// Invalid whose causes name each field (kube-apiserver answers a 400 with the same
    /// message; the causes are what a client can act on), otherwise the
    /// unknown fields are removed and the warnings remembered.
    pub fn apply(&self, kind: &ResourceKind, obj: &mut Value) -> Result<(), ApiError> {
        let warnings =
            fields::check(kind, obj, &self.duplicates, self.directive).map_err(|refused| {
                // 422 with one cause per field, so a client sees each path; the message
                // keeps kube-apiserver's strict decoding wording (which it sends as a 400).
                let name = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                ApiError::Invalid {
                    subject: Box::new(Subject {
                        group: kind.group.to_string(),
                        resource: kind.plural.to_string(),
                        name: name.to_string(),
                    }),
                    kind: kind.kind.to_string(),
                    message: refused.message,
                    causes: refused.causes,
                }
            })?;
        *self.warnings.lock().unwrap_or_else(|e| e.into_inner()) = warnings;
        Ok(())
    }

    /// Records the write in `metadata.managedFields` as `manager`'s (see
    /// [`FieldCheck::manager_of`]).
    pub fn recording(mut self, manager: String) -> Self {
        self.manager = Some(manager);
        self
    }

    /// Records writes as made through `subresource` (`scale`), whatever the store says.
    pub fn through(mut self, subresource: &'static str) -> Self {
        self.subresource = Some(subresource);
        self
    }

    /// Who a write request says it is for `metadata.managedFields`: its `fieldManager`,
    /// else its User-Agent up to the first `/`, as Kubernetes names it.
    pub fn manager_of(query: &Query, headers: &http::HeaderMap) -> String {
        if let Some(m) = query.get("fieldManager").filter(|m| !m.is_empty()) {
            return m.to_string();
        }
        headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.split('/').next().unwrap_or_default().to_string())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "unknown".to_string())
    }

    /// Records the write of `new` (over `live`, `None` for a create) in its
    /// `metadata.managedFields`, if this request records.
    pub fn record(
        &self,
        kind: &ResourceKind,
        live: Option<&Value>,
        new: &mut Value,
        subresource: Option<&str>,
    ) {
        if let Some(manager) = &self.manager {
            let now = super::objects::now_rfc3339();
            let subresource = self.subresource.or(subresource);
            crate::api::apply::record_update(kind, live, new, manager, subresource, &now);
        }
    }

    /// Remembers one more warning for the response (an admission step's, not a field's).
    pub fn warn(&self, text: String) {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(text);
    }

    /// Adds a `Warning: 299 - "..."` header per remembered warning.
    pub fn respond(&self, mut resp: Response) -> Response {
        let warnings = self
            .warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let headers = resp.headers_mut();
        let left_out = warnings.len().saturating_sub(MAX_WARNINGS);
        let mut texts: Vec<String> = warnings.into_iter().take(MAX_WARNINGS).collect();
        if left_out > 0 {
            texts.push(format!("{left_out} further field warnings were left out"));
        }
        for text in texts {
            if let Ok(v) = HeaderValue::from_str(&warning_value(&text)) {
                headers.append(http::header::WARNING, v);
            }
        }
        resp
    }
}

/// `299 - "text"`, the text quoted as HTTP quoted-strings are (backslash before `"` and
/// `\`), with anything but printable ASCII written as a `\u{..}` escape so the header
/// stays valid.
pub fn warning_value(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 10);
    quoted.push_str("299 - \"");
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            ' '..='~' => quoted.push(c),
            other => quoted.push_str(&other.escape_unicode().to_string()),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_quoted_strings() {
        assert_eq!(
            warning_value("unknown field \"spec.foo\""),
            r#"299 - "unknown field \"spec.foo\"""#
        );
        assert_eq!(warning_value("a\\b é"), r#"299 - "a\\b \u{e9}""#);
    }
}
