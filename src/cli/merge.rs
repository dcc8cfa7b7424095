//! The patch `wharf apply` sends to an existing object: a JSON merge patch (RFC 7386)
//! computed three ways, as kubectl's client-side apply does.
//!
//! - **original**: the configuration applied last time (the `last-applied-configuration`
//!   annotation on the live object);
//! - **modified**: the configuration applied now (the manifest, with the new annotation);
//! - **current**: the live object.
//!
//! A field in the manifest is set when the live object does not already have that value,
//! so a field someone changed since (`replicas` after a scale) goes back to what the
//! manifest says; a field that was applied last time and is gone from the manifest is
//! deleted (`null`); fields the manifest never set (status, defaults, other writers'
//! labels) are left alone. The patch is empty when there is nothing to do, which is how
//! apply tells `unchanged` from `configured`.
//!
//! Lists are where this differs from kubectl, which uses a strategic merge patch for
//! built-in kinds. A merge patch replaces a list whole, so a list is compared by
//! containment: a live list whose items carry server defaults the manifest leaves out
//! (`imagePullPolicy`, `protocol: TCP`) still matches; a list that changed since the last
//! apply is always sent, so an item's removed field is removed.

use serde_json::{Map, Value};

/// The merge patch that takes `current` to `modified`, deleting what `original` had and
/// `modified` dropped. Empty when `current` already agrees with `modified`.
pub fn three_way(
    original: Option<&Value>,
    modified: &Value,
    current: &Value,
) -> Map<String, Value> {
    match (modified.as_object(), current.as_object()) {
        (Some(modified), Some(current)) => {
            diff(original.and_then(Value::as_object), modified, current)
        }
        _ => Map::new(),
    }
}

fn diff(
    original: Option<&Map<String, Value>>,
    modified: &Map<String, Value>,
    current: &Map<String, Value>,
) -> Map<String, Value> {
    let mut patch = Map::new();
    for (key, want) in modified {
        let was = original.and_then(|o| o.get(key));
        match (want, current.get(key)) {
            (Value::Object(want), Some(Value::Object(live))) => {
                let inner = diff(was.and_then(Value::as_object), want, live);
                if !inner.is_empty() {
                    patch.insert(key.clone(), Value::Object(inner));
                }
            }
            (want, live) => {
                let drifted = !contains(live, want);
                let list_changed = want.is_array() && was.is_some_and(|was| was != want);
                if drifted || list_changed {
                    patch.insert(key.clone(), want.clone());
                }
            }
        }
    }
    for key in original.into_iter().flat_map(Map::keys) {
        if !modified.contains_key(key) && current.get(key).is_some_and(|v| !v.is_null()) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    patch
}

/// Whether `live` has everything `want` says: maps key by key, lists item by item with
/// the same length, scalars equal. An absent field matches an empty or null one, as the
/// server may drop those.
fn contains(live: Option<&Value>, want: &Value) -> bool {
    match (live, want) {
        (None | Some(Value::Null), want) => is_empty(want),
        (Some(Value::Object(live)), Value::Object(want)) => {
            want.iter().all(|(key, want)| contains(live.get(key), want))
        }
        (Some(Value::Array(live)), Value::Array(want)) => {
            live.len() == want.len() && live.iter().zip(want).all(|(l, w)| contains(Some(l), w))
        }
        (Some(live), want) => live == want,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(list) => list.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patch(original: Option<Value>, modified: Value, current: Value) -> Value {
        Value::Object(three_way(original.as_ref(), &modified, &current))
    }

    #[test]
    fn same_config_on_an_unchanged_object_is_an_empty_patch() {
        let config =
            json!({"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"replicas": 2}});
        let mut live = config.clone();
        live["metadata"]["uid"] = json!("1234");
        live["status"] = json!({"replicas": 2});
        assert_eq!(patch(Some(config.clone()), config, live), json!({}));
    }

    #[test]
    fn changed_fields_are_set_and_removed_fields_deleted() {
        let original = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}, "spec": {"replicas": 2, "paused": false}});
        let modified = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"replicas": 3}});
        let live = json!({"metadata": {"labels": {"app": "web", "tier": "front", "owner": "ops"}}, "spec": {"replicas": 2, "paused": false}});
        assert_eq!(
            patch(Some(original), modified, live),
            json!({"metadata": {"labels": {"tier": null}}, "spec": {"replicas": 3, "paused": null}})
        );
    }

    #[test]
    fn drift_from_other_writers_is_reset_to_the_manifest() {
        let config = json!({"spec": {"replicas": 3}});
        let live = json!({"spec": {"replicas": 5}});
        assert_eq!(
            patch(Some(config.clone()), config, live),
            json!({"spec": {"replicas": 3}})
        );
    }

    #[test]
    fn lists_with_server_defaults_match_but_changed_lists_are_replaced() {
        let config =
            json!({"spec": {"containers": [{"name": "a", "image": "a.wasm", "args": ["-v"]}]}});
        let live = json!({"spec": {"containers": [
            {"name": "a", "image": "a.wasm", "args": ["-v"], "imagePullPolicy": "IfNotPresent"}]}});
        assert_eq!(
            patch(Some(config.clone()), config.clone(), live.clone()),
            json!({})
        );

        let without_args = json!({"spec": {"containers": [{"name": "a", "image": "a.wasm"}]}});
        assert_eq!(
            patch(Some(config), without_args.clone(), live),
            json!({"spec": {"containers": [{"name": "a", "image": "a.wasm"}]}})
        );
    }

    #[test]
    fn without_a_last_applied_config_only_differences_are_sent() {
        let modified = json!({"metadata": {"annotations": {"k": "v"}}, "data": {"a": "1"}});
        let live = json!({"metadata": {"name": "x"}, "data": {"a": "1", "b": "2"}});
        assert_eq!(
            patch(None, modified, live),
            json!({"metadata": {"annotations": {"k": "v"}}})
        );
    }
}
