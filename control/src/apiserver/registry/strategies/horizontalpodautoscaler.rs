//! HorizontalPodAutoscalers: `autoscaling/v2`, the storage version, and `autoscaling/v1`
//! served from the same objects.
//!
//! Why one storage: an HPA created by an old client (`kubectl autoscale` up to 1.32 writes
//! `autoscaling/v1`) must be the object the controller (which reads `v2`) acts on, and be
//! readable in both versions, as in Kubernetes. Both rows share the store keys (the key has
//! no version); objects are stored in the `v2` shape. The `v1` row converts on the way in
//! ([`Strategy::default`], which every create and update runs: `targetCPUUtilizationPercentage`
//! becomes a `cpu` Utilization metric) and on the way out ([`Strategy::present`]: the `cpu`
//! metric and its current utilization become the `v1` fields). What `v1` cannot express
//! (other metrics, `behavior`) is kept across a `v1` update from the stored object.
//!
//! Defaults and validation are Kubernetes': `minReplicas` 1, a `cpu` 80 % Utilization metric
//! when none is given, and `behavior`'s scale-up and scale-down rules filled in when a
//! `behavior` is given (the controller applies the same defaults when it is not).

use super::super::Strategy;
use super::super::subresources::Subresource;
use super::STATUS_ONLY;
use crate::api::printers::{self, Printer};
use crate::api::validation::{FieldError, Reason, set_default};
use jiff::Timestamp;
use serde_json::{Value, json};

/// `autoscaling/v2`.
pub struct HpaStrategy;
/// `autoscaling/v1`, converting to and from the `v2` objects stored.
pub struct HpaV1Strategy;

pub static STRATEGY: HpaStrategy = HpaStrategy;
pub static V1_STRATEGY: HpaV1Strategy = HpaV1Strategy;

/// The `v2` apiVersion.
const V2: &str = "autoscaling/v2";
/// The annotations of the `v1` form that keep what `v1` cannot express.
const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";

pub static PRINTER: Printer = Printer {
    narrow: &[
        "NAME",
        "REFERENCE",
        "TARGETS",
        "MINPODS",
        "MAXPODS",
        "REPLICAS",
        "AGE",
    ],
    extra: &[],
    wide: None,
    cells: |v, _, now| cells(v, now),
};

fn cells(v: &Value, now: Timestamp) -> Vec<String> {
    // A v1 object is printed from its v2 form.
    let mut v2 = v.clone();
    to_v2(&mut v2);
    let s = |p: &str| v2.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let n = |p: &str| v2.pointer(p).and_then(Value::as_i64);
    let age = s("/metadata/creationTimestamp")
        .parse::<Timestamp>()
        .map_or_else(|_| "<unknown>".to_string(), |t| printers::age(t, now));
    vec![
        s("/metadata/name").to_string(),
        format!(
            "{}/{}",
            s("/spec/scaleTargetRef/kind"),
            s("/spec/scaleTargetRef/name")
        ),
        targets(&v2),
        n("/spec/minReplicas").map_or_else(|| "<unset>".into(), |m| m.to_string()),
        n("/spec/maxReplicas").unwrap_or(0).to_string(),
        n("/status/currentReplicas").unwrap_or(0).to_string(),
        age,
    ]
}

/// The TARGETS column, as kubectl prints it: `cpu: 12%/50%, memory: 3Mi/100Mi`.
pub fn targets(v: &Value) -> String {
    let specs = v
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if specs.is_empty() {
        return "<none>".into();
    }
    let statuses = v
        .pointer("/status/currentMetrics")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let current_of = |name: &str| {
        statuses
            .iter()
            .find(|m| m.pointer("/resource/name").and_then(Value::as_str) == Some(name))
            .and_then(|m| m.pointer("/resource/current"))
    };
    const SHOWN: usize = 2;
    let list: Vec<String> = specs
        .iter()
        .take(SHOWN)
        .map(|m| {
            let name = m
                .pointer("/resource/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if m.get("type").and_then(Value::as_str) != Some("Resource") {
                return format!(
                    "{}: <unknown>",
                    m.get("type").and_then(Value::as_str).unwrap_or_default()
                );
            }
            let target = m.pointer("/resource/target");
            let current = current_of(name);
            match target
                .and_then(|t| t.get("averageValue"))
                .and_then(Value::as_str)
            {
                Some(avg) => format!(
                    "{name}: {}/{avg}",
                    current
                        .and_then(|c| c.get("averageValue"))
                        .and_then(Value::as_str)
                        .unwrap_or("<unknown>")
                ),
                None => format!(
                    "{name}: {}/{}",
                    current
                        .and_then(|c| c.get("averageUtilization"))
                        .and_then(Value::as_i64)
                        .map_or_else(|| "<unknown>".into(), |u| format!("{u}%")),
                    target
                        .and_then(|t| t.get("averageUtilization"))
                        .and_then(Value::as_i64)
                        .map_or_else(|| "<auto>".into(), |u| format!("{u}%"))
                ),
            }
        })
        .collect();
    let joined = list.join(", ");
    if specs.len() > SHOWN {
        format!("{joined} + {} more...", specs.len() - SHOWN)
    } else {
        joined
    }
}

fn cpu_metric(utilization: Value) -> Value {
    json!({"type": "Resource", "resource": {"name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": utilization}}})
}

fn is_cpu_utilization(m: &Value) -> bool {
    m.get("type").and_then(Value::as_str) == Some("Resource")
        && m.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
        && m.pointer("/resource/target/type").and_then(Value::as_str) == Some("Utilization")
}

/// Removes the annotation `key` and answers its value as JSON.
fn take_annotation(obj: &mut Value, key: &str) -> Option<Value> {
    let annotations = obj
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)?;
    let raw = annotations.remove(key)?;
    if annotations.is_empty()
        && let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.remove("annotations");
    }
    serde_json::from_str(raw.as_str()?).ok()
}

fn put_annotation(obj: &mut Value, key: &str, value: &Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(key.into(), json!(value.to_string()));
        }
    }
}

/// A `v1` object (or a `v2` one, unchanged) in the `v2` shape.
fn to_v2(obj: &mut Value) {
    let kept_metrics = take_annotation(obj, METRICS_ANNOTATION);
    let kept_behavior = take_annotation(obj, BEHAVIOR_ANNOTATION);
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(Value::Array(kept)) = kept_metrics {
            let mut metrics: Vec<Value> = spec
                .get("metrics")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            metrics.extend(kept);
            spec.insert("metrics".into(), Value::Array(metrics));
        }
        if let Some(b) = kept_behavior.filter(|_| !spec.contains_key("behavior")) {
            spec.insert("behavior".into(), b);
        }
    }
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
        && let Some(target) = spec.remove("targetCPUUtilizationPercentage")
    {
        let mut metrics: Vec<Value> = spec
            .get("metrics")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        metrics.retain(|m| !is_cpu_utilization(m));
        metrics.insert(0, cpu_metric(target));
        spec.insert("metrics".into(), Value::Array(metrics));
    }
    if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut)
        && let Some(current) = status.remove("currentCPUUtilizationPercentage")
        && !status.contains_key("currentMetrics")
    {
        status.insert(
            "currentMetrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageUtilization": current}}}]),
        );
    }
}

/// A stored `v2` object in the `v1` shape.
fn to_v1(obj: &mut Value) {
    let mut kept: Vec<(&str, Value)> = Vec::new();
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        let metrics: Vec<Value> = spec
            .remove("metrics")
            .and_then(|m| m.as_array().cloned())
            .unwrap_or_default();
        let target = metrics
            .iter()
            .find(|m| is_cpu_utilization(m))
            .and_then(|m| m.pointer("/resource/target/averageUtilization"))
            .cloned();
        let others: Vec<Value> = metrics
            .into_iter()
            .filter(|m| !is_cpu_utilization(m))
            .collect();
        if !others.is_empty() {
            kept.push((METRICS_ANNOTATION, Value::Array(others)));
        }
        if let Some(b) = spec.remove("behavior") {
            kept.push((BEHAVIOR_ANNOTATION, b));
        }
        if let Some(t) = target {
            spec.insert("targetCPUUtilizationPercentage".into(), t);
        }
    }
    for (key, value) in kept {
        put_annotation(obj, key, &value);
    }
    if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
        let current = status
            .get("currentMetrics")
            .and_then(Value::as_array)
            .and_then(|ms| {
                ms.iter()
                    .find(|m| m.pointer("/resource/name").and_then(Value::as_str) == Some("cpu"))
            })
            .and_then(|m| m.pointer("/resource/current/averageUtilization"))
            .cloned();
        status.remove("currentMetrics");
        status.remove("conditions");
        if let Some(c) = current {
            status.insert("currentCPUUtilizationPercentage".into(), c);
        }
    }
    if let Some(map) = obj.as_object_mut() {
        map.insert("apiVersion".into(), json!("autoscaling/v1"));
    }
}

fn default_rules(rules: &mut Value, window: i64, policies: Value) {
    set_default(rules, "/stabilizationWindowSeconds", json!(window));
    set_default(rules, "/selectPolicy", json!("Max"));
    set_default(rules, "/policies", policies);
}

fn default_v2(obj: &mut Value) {
    set_default(obj, "/spec/minReplicas", json!(1));
    let empty = obj
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if empty && let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("metrics".into(), json!([cpu_metric(json!(80))]));
    }
    if let Some(behavior) = obj.pointer_mut("/spec/behavior").filter(|b| b.is_object()) {
        set_default(behavior, "/scaleUp", json!({}));
        set_default(behavior, "/scaleDown", json!({}));
        if let Some(up) = behavior.get_mut("scaleUp") {
            default_rules(
                up,
                0,
                json!([{"type": "Pods", "value": 4, "periodSeconds": 15},
                       {"type": "Percent", "value": 100, "periodSeconds": 15}]),
            );
        }
        if let Some(down) = behavior.get_mut("scaleDown") {
            default_rules(
                down,
                300,
                json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
            );
        }
    }
}

/// An invalid integer, shown unquoted as Kubernetes shows it.
fn invalid_int(field: impl Into<String>, value: i64, detail: &str) -> FieldError {
    FieldError::new(field, Reason::Invalid, Some(value.to_string()), detail)
}

fn validate_v2(obj: &Value, errs: &mut Vec<FieldError>) {
    let int = |p: &str| obj.pointer(p).and_then(Value::as_i64);
    let min = int("/spec/minReplicas").unwrap_or(1);
    if min < 1 {
        errs.push(invalid_int(
            "spec.minReplicas",
            min,
            "must be greater than or equal to 1",
        ));
    }
    let max = int("/spec/maxReplicas").unwrap_or(0);
    if max < min {
        errs.push(invalid_int(
            "spec.maxReplicas",
            max,
            "must be greater than or equal to `minReplicas`",
        ));
    }
    for field in ["kind", "name"] {
        let v = obj
            .pointer(&format!("/spec/scaleTargetRef/{field}"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if v.is_empty() {
            errs.push(FieldError::required(
                format!("spec.scaleTargetRef.{field}"),
                "",
            ));
        }
    }
    let metrics = obj
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, m) in metrics.iter().enumerate() {
        let at = format!("spec.metrics[{i}]");
        if m.get("type").and_then(Value::as_str) != Some("Resource") {
            continue;
        }
        let target = m.pointer("/resource/target");
        match target.and_then(|t| t.get("type")).and_then(Value::as_str) {
            Some("Utilization") => {
                let u = target
                    .and_then(|t| t.get("averageUtilization"))
                    .and_then(Value::as_i64);
                match u {
                    None => errs.push(FieldError::required(
                        format!("{at}.resource.target.averageUtilization"),
                        "must set either a target raw value or a target utilization",
                    )),
                    Some(u) if u <= 0 => errs.push(invalid_int(
                        format!("{at}.resource.target.averageUtilization"),
                        u,
                        "must be greater than 0",
                    )),
                    Some(_) => {}
                }
            }
            Some("AverageValue") => {
                let v = target
                    .and_then(|t| t.get("averageValue"))
                    .and_then(Value::as_str);
                if v.and_then(crate::api::quantity::milli_value)
                    .is_none_or(|m| m <= 0)
                {
                    errs.push(FieldError::invalid(
                        format!("{at}.resource.target.averageValue"),
                        v.unwrap_or_default(),
                        "must be positive",
                    ));
                }
            }
            other => errs.push(FieldError::invalid(
                format!("{at}.resource.target.type"),
                other.unwrap_or_default(),
                "must be either Utilization or AverageValue",
            )),
        }
        if m.pointer("/resource/name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errs.push(FieldError::required(
                format!("{at}.resource.name"),
                "must specify a resource name",
            ));
        }
    }
}

impl Strategy for HpaStrategy {
    fn subresources(&self) -> &'static [&'static Subresource] {
        STATUS_ONLY
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn printer(&self) -> &'static Printer {
        &PRINTER
    }

    fn default(&self, obj: &mut Value) {
        default_v2(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_v2(obj, errs);
    }

    fn present(&self, obj: &mut Value) {
        to_v2(obj);
        if let Some(map) = obj.as_object_mut() {
            map.insert("apiVersion".into(), json!(V2));
        }
    }

    fn presents(&self) -> bool {
        true
    }
}

impl Strategy for HpaV1Strategy {
    fn subresources(&self) -> &'static [&'static Subresource] {
        STATUS_ONLY
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn owns_storage(&self) -> bool {
        false
    }

    fn printer(&self) -> &'static Printer {
        &PRINTER
    }

    fn default(&self, obj: &mut Value) {
        to_v2(obj);
        default_v2(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_v2(obj, errs);
    }

    fn present(&self, obj: &mut Value) {
        to_v1(obj);
    }

    fn presents(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> Value {
        json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
               "metadata": {"name": "web", "creationTimestamp": "2027-01-15T08:00:00Z"},
               "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                        "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 50}})
    }

    #[test]
    fn v1_is_stored_as_v2_and_read_back() {
        let mut obj = v1();
        V1_STRATEGY.default(&mut obj);
        let mut as_v2 = obj.clone();
        STRATEGY.present(&mut as_v2);
        assert_eq!(as_v2["apiVersion"], "autoscaling/v2");
        assert_eq!(
            obj["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}])
        );
        assert!(obj["spec"].get("targetCPUUtilizationPercentage").is_none());
        obj["status"] = json!({"currentReplicas": 2, "desiredReplicas": 2, "currentMetrics": [
            {"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageUtilization": 12, "averageValue": "12m"}}}]});
        let mut read = obj.clone();
        V1_STRATEGY.present(&mut read);
        assert_eq!(read["apiVersion"], "autoscaling/v1");
        assert_eq!(read["spec"]["targetCPUUtilizationPercentage"], 50);
        assert!(read["spec"].get("metrics").is_none());
        assert_eq!(read["status"]["currentCPUUtilizationPercentage"], 12);
        assert!(read["status"].get("currentMetrics").is_none());
    }

    #[test]
    fn a_v1_update_keeps_what_v1_cannot_say() {
        let mut stored = v1();
        V1_STRATEGY.default(&mut stored);
        stored["spec"]["behavior"] = json!({"scaleDown": {"stabilizationWindowSeconds": 5}});
        stored["spec"]["metrics"]
            .as_array_mut()
            .expect("metrics")
            .push(json!({"type": "Resource", "resource": {"name": "memory",
                "target": {"type": "AverageValue", "averageValue": "64Mi"}}}));
        // The client reads the v1 form, changes the target and writes it back.
        let mut update = stored.clone();
        V1_STRATEGY.present(&mut update);
        assert!(update["spec"].get("behavior").is_none());
        assert!(update["metadata"]["annotations"][BEHAVIOR_ANNOTATION].is_string());
        update["spec"]["targetCPUUtilizationPercentage"] = json!(70);
        V1_STRATEGY.default(&mut update);
        assert!(update["metadata"].get("annotations").is_none(), "{update}");
        let metrics = update["spec"]["metrics"].as_array().expect("metrics");
        assert_eq!(metrics.len(), 2, "{metrics:?}");
        assert_eq!(metrics[0]["resource"]["target"]["averageUtilization"], 70);
        assert_eq!(metrics[1]["resource"]["name"], "memory");
        assert_eq!(
            update["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            5
        );
    }

    #[test]
    fn defaults_are_kubernetes() {
        let mut obj = json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "w"},
            "maxReplicas": 3, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}}}});
        STRATEGY.default(&mut obj);
        assert_eq!(obj["spec"]["minReplicas"], 1);
        assert_eq!(
            obj["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        assert_eq!(
            obj["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            10
        );
        assert_eq!(obj["spec"]["behavior"]["scaleDown"]["selectPolicy"], "Max");
        assert_eq!(
            obj["spec"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"],
            0
        );
        assert_eq!(
            obj["spec"]["behavior"]["scaleUp"]["policies"][0],
            json!({"type": "Pods", "value": 4, "periodSeconds": 15})
        );
    }

    #[test]
    fn validation_speaks_kubernetes() {
        let mut obj = json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": ""},
            "minReplicas": 3, "maxReplicas": 2, "metrics": [{"type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 0}}}]}});
        STRATEGY.default(&mut obj);
        let mut errs = Vec::new();
        STRATEGY.validate(&obj, &mut errs);
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.contains(&"spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`".to_string()),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("spec.scaleTargetRef.name: Required value")),
            "{text:?}"
        );
        assert!(
            text.contains(&"spec.metrics[0].resource.target.averageUtilization: Invalid value: 0: must be greater than 0".to_string()),
            "{text:?}"
        );
    }

    #[test]
    fn the_table_shows_targets_as_kubectl() {
        let mut obj = v1();
        V1_STRATEGY.default(&mut obj);
        let now: Timestamp = "2027-01-15T08:01:00Z".parse().expect("time");
        assert_eq!(
            cells(&obj, now),
            [
                "web",
                "Deployment/web",
                "cpu: <unknown>/50%",
                "1",
                "5",
                "0",
                "60s"
            ]
        );
        obj["status"] = json!({"currentReplicas": 2, "desiredReplicas": 2, "currentMetrics": [
            {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12}}}]});
        obj["spec"]["metrics"].as_array_mut().expect("m").push(json!({"type": "Resource",
            "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "64Mi"}}}));
        assert_eq!(targets(&obj), "cpu: 12%/50%, memory: <unknown>/64Mi");
        // A v1 object prints the same (the other metrics ride in its annotations).
        let mut v1_form = obj.clone();
        V1_STRATEGY.present(&mut v1_form);
        assert_eq!(
            cells(&v1_form, now)[2],
            "cpu: 12%/50%, memory: <unknown>/64Mi"
        );
    }
}
