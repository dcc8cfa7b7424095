//! The plugins: one file each, a pure function at the core of each, with its own tests.
//!
//! Filters run in this order and a node's first failure is its reason (as in Kubernetes,
//! cheap and unresolvable checks first): [`node_unschedulable`], [`node_name`],
//! [`taint_toleration`], [`node_ready`], [`node_affinity`], [`node_resources_fit`],
//! [`inter_pod_affinity`], [`volume_binding`]. `TaintToleration` runs before `NodeReady` so that a node the
//! lifecycle controller tainted `unreachable` is reported by its taint, the way
//! Kubernetes users read it.
//!
//! Scores (weights as kube-scheduler's defaults, spreading at 2 like its
//! `PodTopologySpread`): [`least_allocated`], [`balanced_allocation`],
//! [`node_affinity`] (preferred terms), [`owner_spread`], [`taint_toleration`]
//! (`PreferNoSchedule`), [`image_locality`].

pub mod balanced_allocation;
pub mod image_locality;
pub mod inter_pod_affinity;
pub mod least_allocated;
pub mod node_affinity;
pub mod node_name;
pub mod node_ready;
pub mod node_resources_fit;
pub mod node_unschedulable;
pub mod owner_spread;
pub mod taint_toleration;
pub mod volume_binding;

use super::framework::{FilterPlugin, ScorePlugin};

/// The filters, in the order they run.
pub fn default_filters() -> Vec<FilterPlugin> {
    vec![
        node_unschedulable::PLUGIN,
        node_name::PLUGIN,
        taint_toleration::FILTER,
        node_ready::PLUGIN,
        node_affinity::FILTER,
        node_resources_fit::PLUGIN,
        inter_pod_affinity::PLUGIN,
        volume_binding::PLUGIN,
    ]
}

/// The scores with their weights.
pub fn default_scores() -> Vec<ScorePlugin> {
    vec![
        least_allocated::PLUGIN,
        balanced_allocation::PLUGIN,
        node_affinity::SCORE,
        owner_spread::PLUGIN,
        taint_toleration::SCORE,
        image_locality::PLUGIN,
    ]
}
