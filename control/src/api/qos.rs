//! A pod's quality-of-service class (`status.qosClass`), decided from its containers'
//! cpu and memory requests and limits as Kubernetes decides it: what `kubectl describe`
//! shows and what tells a user how the node treats the pod under pressure.
//!
//! - `BestEffort`: no container requests or limits cpu or memory;
//! - `Guaranteed`: every container limits both, and every request it sets equals its limit
//!   (an unset request defaults to the limit);
//! - `Burstable`: anything in between.

use crate::api::quantity::milli_value;
use serde_json::Value;

const RESOURCES: [&str; 2] = ["cpu", "memory"];

/// The QoS class of a pod object.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers = ["/spec/containers", "/spec/initContainers"]
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten();
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        for resource in RESOURCES {
            let request = c
                .pointer(&format!("/resources/requests/{resource}"))
                .and_then(quantity);
            let limit = c
                .pointer(&format!("/resources/limits/{resource}"))
                .and_then(quantity);
            any |= request.is_some_and(|r| r != 0) || limit.is_some_and(|l| l != 0);
            match (request, limit) {
                (_, None) => guaranteed = false,
                (Some(r), Some(l)) if r != l => guaranteed = false,
                _ => {}
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn quantity(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => milli_value(s),
        // A number is read by the same parser as a string (decimal, rounded up), never
        // through a float: 1.001 is 1001m, as the scheduler and the node read it.
        Value::Number(n) => milli_value(&n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(resources: &[Value]) -> Value {
        let containers: Vec<Value> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| json!({"name": format!("c{i}"), "resources": r}))
            .collect();
        json!({"spec": {"containers": containers}})
    }

    #[test]
    fn numeric_quantities_are_read_as_their_strings_are() {
        let r = json!({"requests": {"cpu": 1.001, "memory": 1048576},
                       "limits": {"cpu": "1001m", "memory": "1Mi"}});
        assert_eq!(
            qos_class(&pod(&[
                json!({"requests": r["requests"], "limits": r["limits"]})
            ])),
            "Guaranteed"
        );
    }

    #[test]
    fn no_requests_or_limits_is_best_effort() {
        assert_eq!(qos_class(&pod(&[json!({})])), "BestEffort");
        assert_eq!(qos_class(&json!({"spec": {}})), "BestEffort");
    }

    #[test]
    fn limits_on_both_with_equal_or_unset_requests_is_guaranteed() {
        let limits = json!({"limits": {"cpu": "500m", "memory": "64Mi"}});
        assert_eq!(qos_class(&pod(std::slice::from_ref(&limits))), "Guaranteed");
        let equal = json!({"limits": {"cpu": "0.5", "memory": "64Mi"},
                           "requests": {"cpu": "500m", "memory": "64Mi"}});
        assert_eq!(qos_class(&pod(&[limits, equal])), "Guaranteed");
    }

    #[test]
    fn anything_in_between_is_burstable() {
        let memory_only = json!({"limits": {"memory": "64Mi"}});
        assert_eq!(qos_class(&pod(&[memory_only])), "Burstable");
        let lower_request = json!({"limits": {"cpu": "1", "memory": "64Mi"},
                                   "requests": {"cpu": "100m"}});
        assert_eq!(qos_class(&pod(&[lower_request])), "Burstable");
        let one_without = json!({"limits": {"cpu": "1", "memory": "64Mi"}});
        assert_eq!(qos_class(&pod(&[one_without, json!({})])), "Burstable");
    }
}
