//! Discovery: which groups, versions and resources the server offers, and `/version`.
//!
//! Generated from the kinds table, so a kind added there is discoverable with no other
//! change. These are the legacy (non-aggregated) documents every client understands.

use super::error::ApiError;
use crate::api::kinds::{KINDS, ResourceKind};
use axum::Json;
use axum::extract::Path;
use serde_json::{Value, json};

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The Kubernetes version wharf's API corresponds to.
pub const KUBERNETES_VERSION: (&str, &str) = ("1", "33");

pub async fn version() -> Json<Value> {
    let (major, minor) = KUBERNETES_VERSION;
    Json(json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0-wharf.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    }))
}

pub async fn api_versions() -> Json<Value> {
    Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    }))
}

fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&str> = Vec::new();
    for k in KINDS.iter().filter(|k| !k.group.is_empty()) {
        if !groups.contains(&k.group) {
            groups.push(k.group);
        }
    }
    groups
}

fn group_json(group: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

pub async fn api_groups() -> Json<Value> {
    Json(json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups().into_iter().map(group_json).collect::<Vec<_>>(),
    }))
}

pub async fn api_group(Path(group): Path<String>) -> Result<Json<Value>, ApiError> {
    if !groups().contains(&group.as_str()) {
        return Err(not_found(&group));
    }
    let mut g = group_json(&group);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Ok(Json(g))
}

pub async fn core_resources(Path(version): Path<String>) -> Result<Json<Value>, ApiError> {
    resource_list("", &version)
}

pub async fn group_resources(
    Path((group, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    resource_list(&group, &version)
}

fn not_found(what: &str) -> ApiError {
    ApiError::NotFound {
        subject: Default::default(),
        message: format!("the server could not find the requested resource: {what} is not served"),
    }
}

/// The entries of one kind: the resource itself and its subresources.
pub fn resource_entries(k: &ResourceKind) -> Vec<Value> {
    let mut main = json!({
        "name": k.plural,
        "singularName": k.singular,
        "namespaced": k.namespaced,
        "kind": k.kind,
        "verbs": VERBS,
    });
    if !k.short_names.is_empty() {
        main["shortNames"] = json!(k.short_names);
    }
    if k.in_all {
        main["categories"] = json!(["all"]);
    }
    let mut entries = vec![main];
    if k.has_status {
        entries.push(json!({
            "name": format!("{}/status", k.plural),
            "singularName": "",
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    if super::proxy::serves_logs(k) {
        entries.push(json!({
            "name": format!("{}/log", k.plural),
            "singularName": "",
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": ["get"],
        }));
    }
    if super::binding::serves(k) {
        entries.push(json!({
            "name": format!("{}/binding", k.plural),
            "singularName": "",
            "namespaced": k.namespaced,
            "kind": "Binding",
            "verbs": ["create"],
        }));
    }
    entries
}

fn resource_list(group: &str, version: &str) -> Result<Json<Value>, ApiError> {
    let kinds: Vec<&ResourceKind> = KINDS
        .iter()
        .filter(|k| k.group == group && k.version == version)
        .collect();
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    if kinds.is_empty() {
        return Err(not_found(&gv));
    }
    Ok(Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": kinds.into_iter().flat_map(resource_entries).collect::<Vec<_>>(),
    })))
}
