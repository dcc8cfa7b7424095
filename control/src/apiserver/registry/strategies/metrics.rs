//! `metrics.k8s.io` NodeMetrics and PodMetrics: kinds computed from the nodes' stats on
//! each request, never stored (see [`crate::apiserver::metrics`]). Their rows put them in
//! discovery, routing and authorization like any kind; only `get` and `list` are served.

use super::super::Strategy;
use super::super::strategy::Computed;

/// The verbs of a computed kind.
const VERBS: &[&str] = &["get", "list"];

/// `metrics.k8s.io/v1beta1` `pods`.
pub struct PodMetrics;

/// `metrics.k8s.io/v1beta1` `nodes`.
pub struct NodeMetrics;

pub static POD_METRICS: PodMetrics = PodMetrics;
pub static NODE_METRICS: NodeMetrics = NodeMetrics;

impl Strategy for PodMetrics {
    fn computed(&self) -> Option<Computed> {
        Some(crate::apiserver::metrics::serve_pods)
    }

    fn verbs(&self) -> &'static [&'static str] {
        VERBS
    }
}

impl Strategy for NodeMetrics {
    fn computed(&self) -> Option<Computed> {
        Some(crate::apiserver::metrics::serve_nodes)
    }

    fn verbs(&self) -> &'static [&'static str] {
        VERBS
    }
}
