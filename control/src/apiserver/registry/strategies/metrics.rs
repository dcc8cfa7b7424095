//! `metrics.k8s.io` NodeMetrics and PodMetrics: kinds computed from the nodes' stats on
//! each request, never stored (see [`crate::apiserver::metrics`]). Their rows put them in
//! discovery, routing and authorization like any kind; only `get` and `list` are served.

use super::super::Strategy;
use super::super::strategy::Computed;
use serde_json::{Value, json};
use std::sync::LazyLock;

/// The verbs of a computed kind.
const VERBS: &[&str] = &["get", "list"];

/// `metrics.k8s.io/v1beta1` `pods`.
pub struct PodMetrics;

/// `metrics.k8s.io/v1beta1` `nodes`.
pub struct NodeMetrics;

pub static POD_METRICS: PodMetrics = PodMetrics;
pub static NODE_METRICS: NodeMetrics = NodeMetrics;

/// `usage`: resource name to Quantity.
fn usage() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"},
           "description": "The memory and CPU usage: cpu in nanocores, memory in bytes."})
}

fn common(description: &str) -> serde_json::Map<String, Value> {
    let mut props = serde_json::Map::new();
    props.insert(
        "timestamp".into(),
        json!({"type": "string", "format": "date-time",
               "description": "The time the usage was measured (the end of the window)."}),
    );
    props.insert(
        "window".into(),
        json!({"type": "string", "description": "The interval the usage was averaged over."}),
    );
    let mut schema = serde_json::Map::new();
    schema.insert("description".into(), json!(description));
    schema.insert("properties".into(), Value::Object(props));
    schema
}

/// The OpenAPI schemas (for `kubectl explain`), as metrics-server publishes them.
static POD_SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    let mut s = common("PodMetrics sets resource usage metrics of a pod.");
    if let Some(Value::Object(props)) = s.get_mut("properties") {
        props.insert(
            "containers".into(),
            json!({"type": "array", "description": "Metrics for all containers are collected within the same time window.",
                   "items": {"type": "object", "properties": {
                       "name": {"type": "string", "description": "Container name corresponding to the one from pod.spec.containers."},
                       "usage": usage()}}}),
        );
    }
    Value::Object(s)
});

static NODE_SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    let mut s = common("NodeMetrics sets resource usage metrics of a node.");
    if let Some(Value::Object(props)) = s.get_mut("properties") {
        props.insert("usage".into(), usage());
    }
    Value::Object(s)
});

impl Strategy for PodMetrics {
    fn computed(&self) -> Option<Computed> {
        Some(crate::apiserver::resource_metrics::serve_pods)
    }

    fn openapi_schema(&self) -> Option<&Value> {
        Some(&POD_SCHEMA)
    }

    fn verbs(&self) -> &'static [&'static str] {
        VERBS
    }
}

impl Strategy for NodeMetrics {
    fn computed(&self) -> Option<Computed> {
        Some(crate::apiserver::resource_metrics::serve_nodes)
    }

    fn openapi_schema(&self) -> Option<&Value> {
        Some(&NODE_SCHEMA)
    }

    fn verbs(&self) -> &'static [&'static str] {
        VERBS
    }
}
