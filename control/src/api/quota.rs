//! ResourceQuota arithmetic: what an object uses of a namespace's quota, and whether one
//! more fits. Pure, shared by the admission that charges a create
//! ([`crate::apiserver::quota`]) and the controller that recounts `status.used`
//! ([`crate::controllers::resourcequota`]), so both count the same way.
//!
//! Amounts are integers in thousandths (a CPU is 1000, a pod 1000, a byte 1000), read with
//! the one quantity parser ([`super::quantity`]), and printed back as Kubernetes prints
//! them (`500m`, `2`, `64Mi`).
//!
//! What is counted, as Kubernetes' evaluators count it: pods that have not ended as
//! `pods` and `count/pods`, their containers' `requests.cpu` (also `cpu`),
//! `requests.memory` (also `memory`), `limits.cpu`, `limits.memory` (init containers
//! taking the largest, as the scheduler does); Services as `services`,
//! `services.nodeports`, `services.loadbalancers`; ConfigMaps, Secrets,
//! ReplicationControllers, ResourceQuotas and PersistentVolumeClaims by their plural; and
//! every namespaced kind as `count/<plural>.<group>` (`count/deployments.apps`).
//! Quota scopes (`BestEffort`, `Terminating`, ...) are not supported.

use super::kinds::ResourceKind;
use super::quantity;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Usage by resource name, in thousandths.
pub type Usage = BTreeMap<String, i64>;

/// One thing counted.
const ONE: i64 = 1000;

/// The compute resources a pod's containers are charged for, and the request/limit and
/// resource each reads.
const COMPUTE: &[(&str, &str, &str)] = &[
    ("requests.cpu", "requests", "cpu"),
    ("cpu", "requests", "cpu"),
    ("requests.memory", "requests", "memory"),
    ("memory", "requests", "memory"),
    ("limits.cpu", "limits", "cpu"),
    ("limits.memory", "limits", "memory"),
];

/// Kinds counted by their plural alone as well as by `count/...`.
const LEGACY_COUNTED: &[&str] = &[
    "configmaps",
    "secrets",
    "replicationcontrollers",
    "resourcequotas",
    "persistentvolumeclaims",
];

fn milli(q: &Value) -> Option<i64> {
    q.as_str()
        .and_then(quantity::milli_value)
        .or_else(|| q.as_i64().map(|n| n.saturating_mul(1000)))
}

/// Whether the pod has ended (it holds nothing any more).
pub fn pod_ended(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// A container's amount of `resource` in its `requests` or `limits`: a request falls back
/// to the limit (as the API defaults requests to limits).
fn container_amount(c: &Value, which: &str, resource: &str) -> Option<i64> {
    let get = |w: &str| {
        c.pointer(&format!("/resources/{w}/{resource}"))
            .and_then(milli)
    };
    match which {
        "requests" => get("requests").or_else(|| get("limits")),
        _ => get("limits"),
    }
}

/// What a pod uses; `missing` gets the compute resources some container does not say.
fn pod_usage(pod: &Value, missing: &mut Vec<&'static str>) -> Usage {
    let mut usage = Usage::new();
    if pod_ended(pod) {
        return usage;
    }
    usage.insert("pods".into(), ONE);
    usage.insert("count/pods".into(), ONE);
    let list = |k: &str| {
        pod.pointer(&format!("/spec/{k}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (containers, inits) = (list("containers"), list("initContainers"));
    for (name, which, resource) in COMPUTE {
        let mut sum = 0i64;
        for c in &containers {
            match container_amount(c, which, resource) {
                Some(v) => sum = sum.saturating_add(v),
                None => {
                    if !missing.contains(name) {
                        missing.push(name);
                    }
                }
            }
        }
        for c in &inits {
            if let Some(v) = container_amount(c, which, resource) {
                sum = sum.max(v);
            }
        }
        usage.insert((*name).into(), sum);
    }
    usage
}

/// What `obj` of `kind` uses, and the compute resources a pod leaves unsaid.
pub fn usage(kind: &ResourceKind, obj: &Value) -> (Usage, Vec<&'static str>) {
    let mut missing = Vec::new();
    if !kind.namespaced {
        return (Usage::new(), missing);
    }
    if kind.group.is_empty() && kind.plural == "pods" {
        return (pod_usage(obj, &mut missing), missing);
    }
    let mut usage = Usage::new();
    usage.insert(format!("count/{}", kind.qualified_plural()), ONE);
    if kind.group.is_empty() && LEGACY_COUNTED.contains(&kind.plural) {
        usage.insert(kind.plural.to_string(), ONE);
    }
    if kind.group.is_empty() && kind.plural == "services" {
        usage.insert("services".into(), ONE);
        let ty = obj
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP");
        let ports = obj
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let ports = i64::try_from(ports).unwrap_or(0) * ONE;
        usage.insert(
            "services.nodeports".into(),
            if matches!(ty, "NodePort" | "LoadBalancer") {
                ports
            } else {
                0
            },
        );
        usage.insert(
            "services.loadbalancers".into(),
            if ty == "LoadBalancer" { ONE } else { 0 },
        );
    }
    (usage, missing)
}

/// Prints an amount of `resource` as Kubernetes prints quantities.
pub fn format(resource: &str, milli: i64) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let n = milli / 1000;
    let bytes = resource.contains("memory") || resource.contains("storage");
    if bytes && n != 0 {
        for (suffix, size) in [
            ("Ti", 1i64 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ] {
            if n % size == 0 {
                return format!("{}{suffix}", n / size);
            }
        }
    }
    n.to_string()
}

/// A quantity map (`spec.hard`, `status.used`) in thousandths.
pub fn read_map(map: Option<&Value>) -> Usage {
    map.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), milli(v)?)))
        .collect()
}

/// A usage as a quantity map.
pub fn write_map(usage: &Usage) -> Value {
    Value::Object(
        usage
            .iter()
            .map(|(k, v)| (k.clone(), json!(format(k, *v))))
            .collect::<Map<_, _>>(),
    )
}

/// Why a quota refuses a create (the text after `NAME "x" is forbidden: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Charges `delta` (with the compute resources `missing` from a pod) to `quota`: the
/// quota with `status.used` raised, `Ok(None)` when it tracks none of them, or why not.
pub fn charge(quota: &Value, delta: &Usage, missing: &[&str]) -> Result<Option<Value>, Refusal> {
    let name = quota
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let hard = read_map(quota.pointer("/spec/hard"));
    let tracked: Vec<&String> = delta.keys().filter(|k| hard.contains_key(*k)).collect();
    if tracked.is_empty() {
        return Ok(None);
    }
    let unsaid: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|m| hard.contains_key(*m))
        .collect();
    if !unsaid.is_empty() {
        return Err(Refusal(format!(
            "failed quota: {name}: must specify {}",
            unsaid.join(",")
        )));
    }
    let status_hard = quota.pointer("/status/hard").and_then(Value::as_object);
    let used = read_map(quota.pointer("/status/used"));
    let unknown: Vec<&str> = tracked
        .iter()
        .filter(|k| {
            status_hard.is_none_or(|h| !h.contains_key(k.as_str()))
                || !used.contains_key(k.as_str())
        })
        .map(|k| k.as_str())
        .collect();
    if !unknown.is_empty() {
        return Err(Refusal(format!(
            "status unknown for quota: {name}, resources: {}",
            unknown.join(",")
        )));
    }
    let mut exceeded = Vec::new();
    let mut next_used = used.clone();
    for k in &tracked {
        let want = used[k.as_str()].saturating_add(delta[k.as_str()]);
        if delta[k.as_str()] > 0 && want > hard[k.as_str()] {
            exceeded.push(k.as_str());
        }
        next_used.insert((*k).clone(), want);
    }
    if !exceeded.is_empty() {
        let list = |m: &dyn Fn(&str) -> i64| {
            exceeded
                .iter()
                .map(|k| format!("{k}={}", format(k, m(k))))
                .collect::<Vec<_>>()
                .join(",")
        };
        return Err(Refusal(format!(
            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
            list(&|k| delta[k]),
            list(&|k| used[k]),
            list(&|k| hard[k]),
        )));
    }
    let mut next = quota.clone();
    if let Some(status) = next.get_mut("status").and_then(Value::as_object_mut) {
        let mut used_map = status
            .get("used")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for k in &tracked {
            used_map.insert((*k).clone(), json!(format(k, next_used[k.as_str()])));
        }
        status.insert("used".into(), Value::Object(used_map));
    }
    Ok(Some(next))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::kinds::resolve;

    fn pod(requests: Value, limits: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "a.wasm", "resources": {"requests": requests, "limits": limits}}]}})
    }

    #[test]
    fn pods_use_their_requests_and_limits_and_objects_count() {
        let (u, missing) = usage(
            resolve("pod").unwrap(),
            &pod(
                json!({"cpu": "250m", "memory": "64Mi"}),
                json!({"cpu": "1"}),
            ),
        );
        assert_eq!(u["pods"], 1000);
        assert_eq!(u["requests.cpu"], 250);
        assert_eq!(u["limits.cpu"], 1000);
        assert_eq!(format("requests.memory", u["requests.memory"]), "64Mi");
        assert_eq!(missing, ["limits.memory"]);
        let mut ended = pod(json!({}), json!({}));
        ended["status"] = json!({"phase": "Succeeded"});
        assert!(usage(resolve("pod").unwrap(), &ended).0.is_empty());
        let (u, _) = usage(resolve("deploy").unwrap(), &json!({}));
        assert_eq!(u.keys().collect::<Vec<_>>(), ["count/deployments.apps"]);
        let (u, _) = usage(resolve("cm").unwrap(), &json!({}));
        assert_eq!(
            u.keys().collect::<Vec<_>>(),
            ["configmaps", "count/configmaps"]
        );
        let (u, _) = usage(
            resolve("svc").unwrap(),
            &json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]}}),
        );
        assert_eq!((u["services"], u["services.nodeports"]), (1000, 2000));
        assert_eq!(format("cpu", 1500), "1500m");
        assert_eq!(format("cpu", 2000), "2");
    }

    #[test]
    fn charging_refuses_what_exceeds_in_kubernetes_words() {
        let quota = json!({"metadata": {"name": "compute"},
            "spec": {"hard": {"pods": "2", "requests.cpu": "1"}},
            "status": {"hard": {"pods": "2", "requests.cpu": "1"}, "used": {"pods": "1", "requests.cpu": "800m"}}});
        let (delta, missing) = usage(
            resolve("pod").unwrap(),
            &pod(json!({"cpu": "500m"}), json!({})),
        );
        let refused = charge(&quota, &delta, &missing).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "exceeded quota: compute, requested: requests.cpu=500m, used: requests.cpu=800m, limited: requests.cpu=1"
        );
        let (delta, missing) = usage(
            resolve("pod").unwrap(),
            &pod(json!({"cpu": "200m"}), json!({})),
        );
        let next = charge(&quota, &delta, &missing).unwrap().unwrap();
        assert_eq!(
            next.pointer("/status/used"),
            Some(&json!({"pods": "2", "requests.cpu": "1"}))
        );
        // The next pod exceeds the pod count.
        let refused = charge(
            &next,
            &usage(
                resolve("pod").unwrap(),
                &pod(json!({"cpu": "0"}), json!({})),
            )
            .0,
            &[],
        )
        .unwrap_err();
        assert!(refused.to_string().starts_with(
            "exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"
        ));
        // A pod that says nothing of a tracked compute resource.
        let (delta, missing) = usage(resolve("pod").unwrap(), &pod(json!({}), json!({})));
        assert_eq!(
            charge(&quota, &delta, &missing).unwrap_err().to_string(),
            "failed quota: compute: must specify requests.cpu"
        );
        // Untracked kinds pass; a quota the controller has not counted yet refuses.
        assert_eq!(
            charge(&quota, &usage(resolve("cm").unwrap(), &json!({})).0, &[]),
            Ok(None)
        );
        let fresh = json!({"metadata": {"name": "q"}, "spec": {"hard": {"configmaps": "1"}}});
        assert_eq!(
            charge(&fresh, &usage(resolve("cm").unwrap(), &json!({})).0, &[])
                .unwrap_err()
                .to_string(),
            "status unknown for quota: q, resources: configmaps"
        );
    }
}
