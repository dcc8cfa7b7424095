//! `hostPath` volumes: admitted, with a warning when no node would run them.
//!
//! Kubernetes admits hostPath volumes (policy may forbid them); on wharf a node runs them
//! only when started with `--allow-host-path`, and refuses the pod otherwise. A user who
//! applies such a pod on a cluster where no node allows them learns it at apply time from
//! a `Warning` header instead of from a pod that never starts. Nodes that allow hostPath
//! say so with the [`ALLOW_HOST_PATH_ANNOTATION`] on their Node.

use super::AppState;
use crate::api::kinds::ResourceKind;
use crate::store::collection_prefix;
use serde_json::Value;

/// `"true"` on a Node whose agent runs hostPath volumes.
pub const ALLOW_HOST_PATH_ANNOTATION: &str = "wharf.dev/allow-host-path";

/// The field paths of the hostPath volumes of `obj` (pure).
pub fn host_path_fields(kind: &ResourceKind, obj: &Value) -> Vec<String> {
    let Some((pointer, path)) = kind.strategy.pod_spec() else {
        return Vec::new();
    };
    obj.pointer(pointer)
        .and_then(|s| s.get("volumes"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, v)| v.get("hostPath").is_some_and(|h| !h.is_null()))
        .map(|(i, _)| format!("{path}.volumes[{i}].hostPath"))
        .collect()
}

/// Whether a Node says it runs hostPath volumes.
pub fn node_allows(node: &Value) -> bool {
    node.pointer("/metadata/annotations")
        .and_then(|a| a.get(ALLOW_HOST_PATH_ANNOTATION))
        .and_then(Value::as_str)
        == Some("true")
}

/// The warnings for `obj`: one per hostPath volume when no Node allows them.
pub async fn warnings(state: &AppState, kind: &ResourceKind, obj: &Value) -> Vec<String> {
    let fields = host_path_fields(kind, obj);
    if fields.is_empty() {
        return fields;
    }
    let Ok(nodes) = state
        .store
        .list(&collection_prefix("", "nodes", None))
        .await
    else {
        return Vec::new();
    };
    let allowed = nodes
        .items
        .iter()
        .any(|n| serde_json::from_slice::<Value>(&n.value).is_ok_and(|n| node_allows(&n)));
    if allowed {
        return Vec::new();
    }
    fields
        .into_iter()
        .map(|f| {
            format!(
                "{f}: no node allows hostPath volumes (a node started with --allow-host-path has the {ALLOW_HOST_PATH_ANNOTATION} annotation); the pod will not start"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::resolve;
    use serde_json::json;

    #[test]
    fn host_path_volumes_of_pods_and_templates() {
        let pod = json!({"spec": {"volumes": [{"name": "a", "emptyDir": {}}, {"name": "h", "hostPath": {"path": "/"}}]}});
        let kind = resolve("pod").map(|k| host_path_fields(k, &pod));
        assert_eq!(kind, Some(vec!["spec.volumes[1].hostPath".to_string()]));
        let deploy = json!({"spec": {"template": {"spec": pod["spec"].clone()}}});
        let kind = resolve("deployment").map(|k| host_path_fields(k, &deploy));
        assert_eq!(
            kind,
            Some(vec!["spec.template.spec.volumes[1].hostPath".to_string()])
        );
        let cm = resolve("configmap").map(|k| host_path_fields(k, &pod));
        assert_eq!(cm, Some(vec![]));
        assert!(node_allows(
            &json!({"metadata": {"annotations": {ALLOW_HOST_PATH_ANNOTATION: "true"}}})
        ));
        assert!(!node_allows(&json!({"metadata": {}})));
    }
}
