//! The review APIs: `authorization.k8s.io/v1` SelfSubjectAccessReview,
//! SubjectAccessReview and SelfSubjectRulesReview, and `authentication.k8s.io/v1`
//! SelfSubjectReview, what `kubectl auth can-i [--list]` and `kubectl auth whoami` ask,
//! and TokenReview, which asks who a bearer token is (for `system:auth-delegator`).
//! They are create-only and never stored: the answer is the request with its `status`
//! filled in by the same authorization chain every request goes through
//! ([`super::authz::allowed`]). Creating one is itself authorized (`system:basic-user`
//! grants the self reviews to everyone authenticated; SubjectAccessReview is for
//! administrators).

use super::AppState;
use super::auth::{GROUP_AUTHENTICATED, Identity};
use super::authz;
use super::error::ApiError;
use super::objects::json_response;
use super::rbac;
use super::request::{JSON, read_json_checked};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};

pub const AUTHORIZATION: &str = "authorization.k8s.io";
pub const AUTHENTICATION: &str = "authentication.k8s.io";

/// Which review a request creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Review {
    SelfSubjectAccess,
    SubjectAccess,
    SelfSubjectRules,
    SelfSubject,
    /// A TokenReview: who a token is ([`super::serviceaccounts::review_status`]).
    Token,
}

impl Review {
    /// Every review, in the order discovery lists them.
    pub const ALL: [Review; 5] = [
        Review::SelfSubject,
        Review::Token,
        Review::SelfSubjectAccess,
        Review::SelfSubjectRules,
        Review::SubjectAccess,
    ];

    /// Its API group, resource (plural) and kind.
    pub fn group_resource_kind(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Review::SelfSubjectAccess => (
                AUTHORIZATION,
                "selfsubjectaccessreviews",
                "SelfSubjectAccessReview",
            ),
            Review::SubjectAccess => (AUTHORIZATION, "subjectaccessreviews", "SubjectAccessReview"),
            Review::SelfSubjectRules => (
                AUTHORIZATION,
                "selfsubjectrulesreviews",
                "SelfSubjectRulesReview",
            ),
            Review::SelfSubject => (AUTHENTICATION, "selfsubjectreviews", "SelfSubjectReview"),
            Review::Token => (AUTHENTICATION, "tokenreviews", "TokenReview"),
        }
    }

    /// The URL it is created at.
    pub fn path(self) -> String {
        let (group, resource, _) = self.group_resource_kind();
        format!("/apis/{group}/v1/{resource}")
    }
}

/// The attributes a review's `spec` asks about, for `user`.
fn spec_attributes<'a>(
    user: &'a Identity,
    spec: &'a Value,
) -> Result<rbac::Attributes<'a>, ApiError> {
    let s = |v: &'a Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        return Ok(rbac::Attributes {
            user,
            verb: s(r, "verb"),
            request: rbac::Request::Resource {
                namespace: s(r, "namespace"),
                group: s(r, "group"),
                resource: s(r, "resource"),
                subresource: s(r, "subresource"),
                name: s(r, "name"),
            },
        });
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        return Ok(rbac::Attributes {
            user,
            verb: s(n, "verb"),
            request: rbac::Request::NonResource { path: s(n, "path") },
        });
    }
    Err(invalid(
        "spec.resourceAttributes: Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
    ))
}

fn invalid(message: &str) -> ApiError {
    ApiError::BadRequest(message.to_string())
}

/// Creates the review `review` as the caller: its answer, or the refusal.
pub async fn create(state: AppState, review: Review, req: Request) -> Response {
    match answer(&state, review, req).await {
        Ok(v) => json_response(StatusCode::CREATED, &v),
        Err(e) => e.into_response(),
    }
}

async fn answer(state: &AppState, review: Review, req: Request) -> Result<Value, ApiError> {
    let (parts, body) = req.into_parts();
    let Some(caller) = parts.extensions.get::<Identity>().cloned() else {
        return Err(ApiError::Unauthorized(
            "Unauthorized: a bearer token is required".into(),
        ));
    };
    let (group, resource, kind) = review.group_resource_kind();
    let creating = rbac::Attributes {
        user: &caller,
        verb: "create",
        request: rbac::Request::Resource {
            namespace: "",
            group,
            resource,
            subresource: "",
            name: "",
        },
    };
    if !authz::allowed(state, &creating).await? {
        return Err(ApiError::Forbidden(format!(
            "{resource}.{group} is forbidden: User \"{}\" cannot create resource \"{resource}\" in API group \"{group}\" at the cluster scope",
            caller.user
        )));
    }
    let (mut obj, _) = read_json_checked(body, &parts.headers, state, JSON).await?;
    if !obj.is_object() {
        return Err(invalid("the request body is not an object"));
    }
    obj["apiVersion"] = json!(format!("{group}/v1"));
    obj["kind"] = json!(kind);
    if obj.get("metadata").is_none_or(|m| !m.is_object()) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    obj["status"] = match review {
        Review::SelfSubject => json!({"userInfo": user_info(&caller)}),
        Review::Token => super::serviceaccounts::review_status(state, &spec).await,
        Review::SelfSubjectAccess => {
            access_status(state, &spec_attributes(&caller, &spec)?).await?
        }
        Review::SubjectAccess => {
            let subject = Identity {
                user: spec
                    .get("user")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                groups: spec
                    .get("groups")
                    .and_then(Value::as_array)
                    .map(|g| {
                        g.iter()
                            .filter_map(Value::as_str)
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            if subject.user.is_empty() && subject.groups.is_empty() {
                return Err(invalid(
                    "spec.user: Invalid value: \"\": at least one of user or group must be specified",
                ));
            }
            access_status(state, &spec_attributes(&subject, &spec)?).await?
        }
        Review::SelfSubjectRules => {
            let ns = spec
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let policy = state
                .rbac
                .refresh(&state.store)
                .await
                .map_err(|e| ApiError::from_store(e, Default::default()))?;
            rules_status(&policy.rules_for(&caller, ns))
        }
    };
    Ok(obj)
}

async fn access_status(state: &AppState, attrs: &rbac::Attributes<'_>) -> Result<Value, ApiError> {
    let allowed = authz::allowed(state, attrs).await?;
    Ok(json!({"allowed": allowed}))
}

/// What `kubectl auth whoami` prints.
pub fn user_info(user: &Identity) -> Value {
    json!({"username": user.user, "groups": user.groups})
}

/// A SelfSubjectRulesReview's status from the rules a user holds: resource and
/// non-resource rules apart, as Kubernetes answers it.
pub fn rules_status(rules: &[PolicyRule]) -> Value {
    let list = |v: &Option<Vec<String>>| json!(v.clone().unwrap_or_default());
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in rules {
        if r.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()) {
            non_resource_rules
                .push(json!({"verbs": r.verbs, "nonResourceURLs": list(&r.non_resource_urls)}));
        }
        if r.resources.as_ref().is_some_and(|u| !u.is_empty()) {
            let mut rr = json!({"verbs": r.verbs, "apiGroups": list(&r.api_groups),
                                "resources": list(&r.resources)});
            if r.resource_names.as_ref().is_some_and(|n| !n.is_empty()) {
                rr["resourceNames"] = list(&r.resource_names);
            }
            resource_rules.push(rr);
        }
    }
    json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false})
}

/// The identity a request acts as with `Impersonate-User` / `Impersonate-Group`
/// headers: `Ok(None)` without them; 403 unless `caller` may `impersonate` that user and
/// each group (as kube-apiserver's impersonation filter: the impersonated user is in
/// `system:authenticated`).
pub async fn impersonation(
    state: &AppState,
    caller: &Identity,
    headers: &http::HeaderMap,
) -> Result<Option<Identity>, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(String::from)
            .collect()
    };
    let users = values("impersonate-user");
    let groups = values("impersonate-group");
    if users.is_empty() && groups.is_empty() {
        return Ok(None);
    }
    let Some(user) = users.first() else {
        return Err(ApiError::BadRequest(
            "requested impersonation of groups without impersonating a user".into(),
        ));
    };
    let asks = std::iter::once(("users", user.as_str()))
        .chain(groups.iter().map(|g| ("groups", g.as_str())));
    for (resource, name) in asks {
        let attrs = rbac::Attributes {
            user: caller,
            verb: "impersonate",
            request: rbac::Request::Resource {
                namespace: "",
                group: "",
                resource,
                subresource: "",
                name,
            },
        };
        if !authz::allowed(state, &attrs).await? {
            return Err(ApiError::Forbidden(format!(
                "{resource} \"{name}\" is forbidden: User \"{}\" cannot impersonate resource \"{resource}\" in API group \"\" at the cluster scope",
                caller.user
            )));
        }
    }
    let mut groups = groups;
    if !groups.iter().any(|g| g == GROUP_AUTHENTICATED) {
        groups.push(GROUP_AUTHENTICATED.into());
    }
    Ok(Some(Identity {
        user: user.clone(),
        groups,
    }))
}
