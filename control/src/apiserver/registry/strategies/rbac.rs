//! The RBAC kinds (`rbac.authorization.k8s.io/v1`): Roles, ClusterRoles and their
//! bindings, validated with Kubernetes' rules and messages. Their names are path
//! segments, not DNS names (`system:basic-user`), a binding's `roleRef` never changes,
//! and the API group of a `roleRef` and of User and Group subjects defaults to RBAC's.
//! What the objects mean is the authorizer's business ([`crate::apiserver::rbac`]).

use super::super::Strategy;
use crate::api::validation::{FieldError, Reason};
use serde_json::{Value, json};

/// The RBAC API group.
pub const GROUP: &str = "rbac.authorization.k8s.io";

/// Which RBAC kind a strategy serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacKind {
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
}

pub struct RbacStrategy(pub RbacKind);

pub static ROLE: RbacStrategy = RbacStrategy(RbacKind::Role);
pub static CLUSTER_ROLE: RbacStrategy = RbacStrategy(RbacKind::ClusterRole);
pub static ROLE_BINDING: RbacStrategy = RbacStrategy(RbacKind::RoleBinding);
pub static CLUSTER_ROLE_BINDING: RbacStrategy = RbacStrategy(RbacKind::ClusterRoleBinding);

impl RbacStrategy {
    fn binding(&self) -> bool {
        matches!(self.0, RbacKind::RoleBinding | RbacKind::ClusterRoleBinding)
    }
}

impl Strategy for RbacStrategy {
    fn printer(&self) -> &'static crate::api::printers::Printer {
        if self.binding() {
            &crate::api::printers::ROLE_BINDING
        } else {
            &crate::api::printers::ROLE
        }
    }

    /// Kubernetes' `ValidatePathSegmentName`.
    fn name_invalid(&self, name: &str) -> Option<&'static str> {
        path_segment_invalid(name)
    }

    fn default(&self, obj: &mut Value) {
        if !self.binding() {
            return;
        }
        if obj
            .pointer("/roleRef/apiGroup")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
            && let Some(r) = obj.get_mut("roleRef").and_then(Value::as_object_mut)
        {
            r.insert("apiGroup".into(), json!(GROUP));
        }
        if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
            for s in subjects {
                let kind = s.get("kind").and_then(Value::as_str).unwrap_or("");
                let empty = s
                    .get("apiGroup")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty();
                if empty
                    && matches!(kind, "User" | "Group")
                    && let Some(m) = s.as_object_mut()
                {
                    m.insert("apiGroup".into(), json!(GROUP));
                }
            }
        }
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        match self.0 {
            RbacKind::Role => validate_rules(obj, true, errs),
            RbacKind::ClusterRole => {
                validate_rules(obj, false, errs);
                if let Some(rule) = obj.get("aggregationRule").filter(|v| !v.is_null()) {
                    let selectors = rule.get("clusterRoleSelectors").and_then(Value::as_array);
                    if selectors.is_none_or(|s| s.is_empty()) {
                        errs.push(FieldError::required(
                            "aggregationRule.clusterRoleSelectors",
                            "at least one clusterRoleSelector required if aggregationRule is non-nil",
                        ));
                    }
                }
            }
            RbacKind::RoleBinding => validate_binding(obj, true, errs),
            RbacKind::ClusterRoleBinding => validate_binding(obj, false, errs),
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        if self.binding() && old.get("roleRef") != new.get("roleRef") {
            errs.push(FieldError::new(
                "roleRef",
                Reason::Invalid,
                Some(role_ref_go(new.get("roleRef"))),
                "cannot change roleRef",
            ));
        }
    }
}

/// `None` if `name` may be a path segment, else Kubernetes' message.
pub fn path_segment_invalid(name: &str) -> Option<&'static str> {
    match name {
        "." => Some("may not be '.'"),
        ".." => Some("may not be '..'"),
        _ if name.contains('/') => Some("may not contain '/'"),
        _ if name.contains('%') => Some("may not contain '%'"),
        _ => None,
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A string list as Go's `%#v` prints it in a field error: `[]string{"/a", "/b"}`.
fn go_strings(list: &[&str]) -> String {
    let inner: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
    format!("[]string{{{}}}", inner.join(", "))
}

fn role_ref_go(r: Option<&Value>) -> String {
    let f = |k: &str| {
        r.and_then(|r| r.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    format!(
        "rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}",
        f("apiGroup"),
        f("kind"),
        f("name")
    )
}

fn not_supported(field: String, value: &str, supported: &[&str]) -> FieldError {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    FieldError::new(
        field,
        Reason::NotSupported,
        Some(format!("{value:?}")),
        format!("supported values: {}", list.join(", ")),
    )
}

/// Kubernetes' `ValidatePolicyRule` for each of `rules`.
fn validate_rules(obj: &Value, namespaced: bool, errs: &mut Vec<FieldError>) {
    let rules = obj.get("rules").and_then(Value::as_array);
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        if strings(rule.get("verbs")).is_empty() {
            errs.push(FieldError::required(
                at("verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = strings(rule.get("nonResourceURLs"));
        let (groups, resources, names) = (
            strings(rule.get("apiGroups")),
            strings(rule.get("resources")),
            strings(rule.get("resourceNames")),
        );
        if !urls.is_empty() {
            let invalid = |detail: &str| {
                FieldError::new(
                    at("nonResourceURLs"),
                    Reason::Invalid,
                    Some(go_strings(&urls)),
                    detail,
                )
            };
            if namespaced {
                errs.push(invalid(
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !groups.is_empty() || !resources.is_empty() || !names.is_empty() {
                errs.push(invalid(
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if groups.is_empty() {
            errs.push(FieldError::required(
                at("apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if resources.is_empty() {
            errs.push(FieldError::required(
                at("resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

/// Kubernetes' `ValidateRoleBinding` / `ValidateClusterRoleBinding` (after defaults).
fn validate_binding(obj: &Value, namespaced: bool, errs: &mut Vec<FieldError>) {
    let role_ref = |k: &str| {
        obj.pointer(&format!("/roleRef/{k}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    if role_ref("apiGroup") != GROUP {
        errs.push(not_supported(
            "roleRef.apiGroup".into(),
            role_ref("apiGroup"),
            &[GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&role_ref("kind")) {
        errs.push(not_supported(
            "roleRef.kind".into(),
            role_ref("kind"),
            kinds,
        ));
    }
    let name = role_ref("name");
    if name.is_empty() {
        errs.push(FieldError::required("roleRef.name", ""));
    } else if let Some(msg) = path_segment_invalid(name) {
        errs.push(FieldError::invalid("roleRef.name", name, msg));
    }
    let subjects = obj.get("subjects").and_then(Value::as_array);
    for (i, s) in subjects.into_iter().flatten().enumerate() {
        let at = |f: &str| format!("subjects[{i}].{f}");
        let get = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or_default();
        if get("name").is_empty() {
            errs.push(FieldError::required(at("name"), ""));
        }
        match get("kind") {
            "ServiceAccount" => {
                if !get("apiGroup").is_empty() {
                    errs.push(not_supported(at("apiGroup"), get("apiGroup"), &[""]));
                }
                if !namespaced && get("namespace").is_empty() {
                    errs.push(FieldError::required(at("namespace"), ""));
                }
            }
            "User" | "Group" => {
                if get("apiGroup") != GROUP {
                    errs.push(not_supported(at("apiGroup"), get("apiGroup"), &[GROUP]));
                }
            }
            other => errs.push(not_supported(
                at("kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(s: &RbacStrategy, mut obj: Value) -> Vec<String> {
        s.default(&mut obj);
        let mut errs = Vec::new();
        s.validate(&obj, &mut errs);
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn rules_are_validated_as_kubernetes_does() {
        let got = messages(
            &ROLE,
            json!({"rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                {"resources": ["pods"]},
                {"nonResourceURLs": ["/healthz"], "verbs": ["get"]},
            ]}),
        );
        assert_eq!(
            got,
            [
                "rules[1].verbs: Required value: verbs must contain at least one value",
                "rules[1].apiGroups: Required value: resource rules must supply at least one api group",
                "rules[2].nonResourceURLs: Invalid value: []string{\"/healthz\"}: namespaced rules cannot apply to non-resource URLs",
            ]
        );
        // A ClusterRole may name URLs, not both.
        assert!(
            messages(
                &CLUSTER_ROLE,
                json!({"rules": [{"nonResourceURLs": ["/x"], "verbs": ["get"]}]})
            )
            .is_empty()
        );
        assert_eq!(
            messages(&CLUSTER_ROLE, json!({"aggregationRule": {}})),
            [
                "aggregationRule.clusterRoleSelectors: Required value: at least one clusterRoleSelector required if aggregationRule is non-nil"
            ]
        );
        assert_eq!(ROLE.name_invalid("system:basic-user"), None);
        assert_eq!(ROLE.name_invalid("a/b"), Some("may not contain '/'"));
    }

    #[test]
    fn bindings_are_defaulted_and_validated() {
        let mut obj = json!({"roleRef": {"kind": "Role", "name": "r"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "sa"}]});
        ROLE_BINDING.default(&mut obj);
        assert_eq!(obj["roleRef"]["apiGroup"], GROUP);
        assert_eq!(obj["subjects"][0]["apiGroup"], GROUP);
        assert!(obj["subjects"][1].get("apiGroup").is_none());
        let mut errs = Vec::new();
        ROLE_BINDING.validate(&obj, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            messages(&CLUSTER_ROLE_BINDING, obj.clone()),
            [
                "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\"",
                "subjects[1].namespace: Required value",
            ]
        );
        assert_eq!(
            messages(
                &ROLE_BINDING,
                json!({"roleRef": {"kind": "Role", "apiGroup": "x"},
                "subjects": [{"kind": "Robot", "name": "r2"}]})
            ),
            [
                "roleRef.apiGroup: Unsupported value: \"x\": supported values: \"rbac.authorization.k8s.io\"",
                "roleRef.name: Required value",
                "subjects[0].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\"",
            ]
        );
        let mut changed = obj.clone();
        changed["roleRef"]["name"] = json!("other");
        let mut errs = Vec::new();
        ROLE_BINDING.validate_update(&obj, &changed, &mut errs);
        assert_eq!(
            errs[0].to_string(),
            "roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"Role\", Name:\"other\"}: cannot change roleRef"
        );
    }
}
