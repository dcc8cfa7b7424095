//! LimitRange admission of pods, as kube-apiserver's LimitRanger: the namespace's
//! `Container` limits fill what a container leaves unsaid (`default` into `limits`,
//! `defaultRequest` into `requests`), then every container must lie within `min` and
//! `max` (requests and limits both), else 403 Forbidden with Kubernetes' words
//! (`minimum cpu usage per Container is 100m, but request is 50m`). Only the
//! `Container` type is enforced; `Pod` and `PersistentVolumeClaim` limits and
//! `maxLimitRequestRatio` are stored but not checked.
//!
//! [`apply`] is pure; [`admit_pod`] reads the namespace's LimitRanges.

use super::AppState;
use super::error::ApiError;
use super::paging::ListOptions;
use super::registry::store;
use super::request::{Query, Target};
use crate::api::quantity;
use serde_json::{Map, Value, json};

fn amount(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(quantity::milli_value)
        .or_else(|| v.as_i64().map(|n| n.saturating_mul(1000)))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Applies the `Container` items of `ranges` to the pod: defaults filled in, then the
/// bounds checked; the messages of what is out of bounds.
pub fn apply(pod: &mut Value, ranges: &[Value]) -> Result<(), Vec<String>> {
    let items: Vec<&Value> = ranges
        .iter()
        .flat_map(|r| {
            r.pointer("/spec/limits")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter(|l| l.get("type").and_then(Value::as_str) == Some("Container"))
        .collect();
    if items.is_empty() {
        return Ok(());
    }
    let mut errors = Vec::new();
    for section in ["initContainers", "containers"] {
        let Some(list) = pod
            .pointer_mut(&format!("/spec/{section}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for c in list {
            for item in &items {
                fill(c, "limits", item.get("default"));
                fill(c, "requests", item.get("defaultRequest"));
                check(c, item, &mut errors);
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Fills `resources.<which>` of a container from `defaults` where it says nothing.
fn fill(c: &mut Value, which: &str, defaults: Option<&Value>) {
    let Some(defaults) = defaults.and_then(Value::as_object) else {
        return;
    };
    let Some(obj) = c.as_object_mut() else {
        return;
    };
    let resources = obj.entry("resources").or_insert_with(|| json!({}));
    let Some(resources) = resources.as_object_mut() else {
        return;
    };
    let map = resources
        .entry(which)
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(map) = map.as_object_mut() else {
        return;
    };
    for (k, v) in defaults {
        map.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

fn check(c: &Value, item: &Value, errors: &mut Vec<String>) {
    let get = |which: &str, r: &str| c.pointer(&format!("/resources/{which}/{r}"));
    for (r, min) in item
        .get("min")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let Some(bound) = amount(min) else { continue };
        match get("requests", r) {
            None => errors.push(format!(
                "minimum {r} usage per Container is {}.  No request is specified",
                text(min)
            )),
            Some(v) if amount(v).is_some_and(|a| a < bound) => errors.push(format!(
                "minimum {r} usage per Container is {}, but request is {}",
                text(min),
                text(v)
            )),
            _ => {}
        }
        if let Some(v) = get("limits", r)
            && amount(v).is_some_and(|a| a < bound)
        {
            errors.push(format!(
                "minimum {r} usage per Container is {}, but limit is {}",
                text(min),
                text(v)
            ));
        }
    }
    for (r, max) in item
        .get("max")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let Some(bound) = amount(max) else { continue };
        match get("limits", r) {
            None => errors.push(format!(
                "maximum {r} usage per Container is {}.  No limit is specified",
                text(max)
            )),
            Some(v) if amount(v).is_some_and(|a| a > bound) => errors.push(format!(
                "maximum {r} usage per Container is {}, but limit is {}",
                text(max),
                text(v)
            )),
            _ => {}
        }
        if let Some(v) = get("requests", r)
            && amount(v).is_some_and(|a| a > bound)
        {
            errors.push(format!(
                "maximum {r} usage per Container is {}, but request is {}",
                text(max),
                text(v)
            ));
        }
    }
}

/// Applies the LimitRanges of the pod's namespace to a pod being created.
pub async fn admit_pod(state: &AppState, target: &Target, pod: &mut Value) -> Result<(), ApiError> {
    let Some(kind) = crate::api::find_kind("v1", "LimitRange") else {
        return Ok(());
    };
    let Some(ns) = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(String::from)
    else {
        return Ok(());
    };
    let ranges = Target {
        kind,
        namespace: Some(ns),
        name: None,
        subresource: None,
    };
    let filter = store::Filter::from_query(kind, &Query::parse(None))?;
    let (_, page) = store::list(state, &ranges, &filter, &ListOptions::default()).await?;
    if page.items.is_empty() {
        return Ok(());
    }
    apply(pod, &page.items).map_err(|errors| {
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let message = if errors.len() == 1 {
            errors[0].clone()
        } else {
            format!("[{}]", errors.join(", "))
        };
        ApiError::Forbidden(format!(
            "{} \"{name}\" is forbidden: {message}",
            target.kind.qualified_plural()
        ))
    })?;
    // Defaults may change the pod's QoS class.
    let qos = crate::api::qos::qos_class(pod);
    if let Some(status) = pod.get_mut("status").and_then(Value::as_object_mut) {
        status.insert("qosClass".into(), json!(qos));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn range() -> Value {
        json!({"spec": {"limits": [{"type": "Container",
            "default": {"cpu": "500m", "memory": "128Mi"},
            "defaultRequest": {"cpu": "100m", "memory": "64Mi"},
            "min": {"cpu": "50m"}, "max": {"cpu": "1", "memory": "256Mi"}}]}})
    }

    #[test]
    fn defaults_fill_what_containers_leave_unsaid() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a.wasm"},
            {"name": "b", "image": "b.wasm", "resources": {"limits": {"cpu": "800m"}}}]}});
        apply(&mut pod, &[range()]).unwrap();
        assert_eq!(
            pod.pointer("/spec/containers/0/resources"),
            Some(&json!({"limits": {"cpu": "500m", "memory": "128Mi"},
                "requests": {"cpu": "100m", "memory": "64Mi"}}))
        );
        assert_eq!(
            pod.pointer("/spec/containers/1/resources/limits/cpu"),
            Some(&json!("800m"))
        );
    }

    #[test]
    fn bounds_are_checked_in_kubernetes_words() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "a.wasm",
            "resources": {"requests": {"cpu": "10m"}, "limits": {"cpu": "2", "memory": "64Mi"}}}]}});
        assert_eq!(
            apply(&mut pod, &[range()]).unwrap_err(),
            [
                "minimum cpu usage per Container is 50m, but request is 10m",
                "maximum cpu usage per Container is 1, but limit is 2",
            ]
        );
    }
}
