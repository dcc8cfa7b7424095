//! InterPodAffinity: required pod affinity and anti-affinity.
//!
//! - anti-affinity of the pod: no node in the same topology domain (for
//!   `kubernetes.io/hostname`, the same node) may run a pod its term selects ("one
//!   replica per node");
//! - anti-affinity of the pods already placed, symmetrically: the pod may not go where an
//!   existing pod's term selects it;
//! - affinity of the pod: every term must select a pod in the node's domain, except for
//!   the first pod of a group (no pod matches, and the pod matches its own terms), which
//!   may go to any node that has the topology label.
//!
//! As Kubernetes does, the cluster-wide part is computed once per pod ([`pre_filter`],
//! its PreFilter) into an [`AffinityState`] of topology values, and the per-node check
//! ([`fits`]) is then a few set lookups. A node without the `kubernetes.io/hostname` label
//! is its own domain (its name), so simulated or hand-made nodes still spread. Namespaces
//! are the term's `namespaces`, the pod's own by default, or all with an empty
//! `namespaceSelector`; a `namespaceSelector` with labels is an error (the scheduler does
//! not watch namespaces), reported on the pod rather than silently ignored.

use crate::api::selector::{LabelRequirement, LabelSelector};
use crate::scheduler::framework::{Code, Cycle, FilterPlugin, NodeInfo, PodInfo, Status};
use k8s_openapi::api::core::v1::{PodAffinityTerm, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use std::collections::{HashMap, HashSet};

pub const NAME: &str = "InterPodAffinity";
pub const REASON_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const REASON_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";
pub const REASON_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const PLUGIN: FilterPlugin = FilterPlugin { name: NAME, filter };

/// Which namespaces a term looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    Listed(Vec<String>),
    All,
}

/// One parsed `PodAffinityTerm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityTerm {
    pub namespaces: Namespaces,
    /// `None` (no selector) selects no pod.
    pub selector: Option<LabelSelector>,
    pub topology_key: String,
}

impl AffinityTerm {
    fn parse(t: &PodAffinityTerm, own_namespace: &str) -> Result<AffinityTerm, String> {
        let listed = t.namespaces.clone().unwrap_or_default();
        let namespaces = match &t.namespace_selector {
            Some(s) if is_empty_selector(s) => Namespaces::All,
            Some(_) => {
                return Err(
                    "pod affinity terms with a non-empty namespaceSelector are not supported"
                        .into(),
                );
            }
            None if listed.is_empty() => Namespaces::Listed(vec![own_namespace.to_string()]),
            None => Namespaces::Listed(listed),
        };
        let selector = t.label_selector.as_ref().map(parse_selector).transpose()?;
        if t.topology_key.is_empty() {
            return Err("a pod affinity term needs a topologyKey".into());
        }
        Ok(AffinityTerm {
            namespaces,
            selector,
            topology_key: t.topology_key.clone(),
        })
    }

    /// Whether the term selects `pod`.
    pub fn matches(&self, pod: &PodInfo) -> bool {
        let in_namespace = match &self.namespaces {
            Namespaces::All => true,
            Namespaces::Listed(ns) => ns.contains(&pod.namespace),
        };
        in_namespace
            && self
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(&pod.labels))
    }
}

fn is_empty_selector(s: &meta::LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}

/// A `meta/v1 LabelSelector` as the API's selector type.
pub fn parse_selector(s: &meta::LabelSelector) -> Result<LabelSelector, String> {
    let mut reqs = Vec::new();
    for (k, v) in s.match_labels.iter().flatten() {
        reqs.push(LabelRequirement::Equals(k.clone(), v.clone()));
    }
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        reqs.push(match e.operator.as_str() {
            "In" => LabelRequirement::In(e.key.clone(), values),
            "NotIn" => LabelRequirement::NotIn(e.key.clone(), values),
            "Exists" => LabelRequirement::Exists(e.key.clone()),
            "DoesNotExist" => LabelRequirement::DoesNotExist(e.key.clone()),
            other => return Err(format!("{other:?} is not a valid label selector operator")),
        });
    }
    Ok(LabelSelector(reqs))
}

/// The required (anti-)affinity terms of a pod, parsed once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AffinityTerms {
    pub affinity: Vec<AffinityTerm>,
    pub anti_affinity: Vec<AffinityTerm>,
    /// A term that could not be parsed: scheduling the pod is an error.
    pub invalid: Option<String>,
}

impl AffinityTerms {
    pub fn of(spec: Option<&PodSpec>) -> AffinityTerms {
        let mut out = AffinityTerms::default();
        let Some(affinity) = spec.and_then(|s| s.affinity.as_ref()) else {
            return out;
        };
        // The namespace is filled in by `for_namespace` once known.
        let required = |terms: Option<&Vec<PodAffinityTerm>>| terms.cloned().unwrap_or_default();
        let aff = required(affinity.pod_affinity.as_ref().and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let anti = required(affinity.pod_anti_affinity.as_ref().and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        out.affinity = Vec::with_capacity(aff.len());
        out.anti_affinity = Vec::with_capacity(anti.len());
        for (terms, into) in [(aff, &mut out.affinity), (anti, &mut out.anti_affinity)] {
            for t in &terms {
                match AffinityTerm::parse(t, "") {
                    Ok(term) => into.push(term),
                    Err(e) => out.invalid = Some(e),
                }
            }
        }
        out
    }

    /// Resolves "the pod's own namespace" in terms that named none.
    pub fn for_namespace(mut self, namespace: &str) -> AffinityTerms {
        for t in self
            .affinity
            .iter_mut()
            .chain(self.anti_affinity.iter_mut())
        {
            if let Namespaces::Listed(ns) = &mut t.namespaces {
                for n in ns.iter_mut().filter(|n| n.is_empty()) {
                    *n = namespace.to_string();
                }
            }
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.affinity.is_empty() && self.anti_affinity.is_empty()
    }
}

/// What [`pre_filter`] found, for [`fits`] to check each node against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AffinityState {
    /// Topology key -> values where an existing pod's anti-affinity forbids the pod.
    pub existing_anti: HashMap<String, HashSet<String>>,
    /// Per anti-affinity term of the pod: the topology values holding a pod it selects.
    pub anti: Vec<HashSet<String>>,
    /// Per affinity term of the pod: the topology values holding a pod it selects.
    pub affinity: Vec<HashSet<String>>,
    /// No pod matches any affinity term and the pod matches all of its own: the first of
    /// its group may go to any node with the topology labels.
    pub first_of_group: bool,
}

impl AffinityState {
    pub fn is_empty(&self) -> bool {
        self.existing_anti.is_empty() && self.anti.is_empty() && self.affinity.is_empty()
    }
}

/// Computes the cluster-wide part once per pod. `pods` yields every pod placed in the
/// cluster with its node, `with_anti_affinity` the placed pods that have required
/// anti-affinity terms (a subset, so the symmetric check stays cheap).
pub fn pre_filter<'a>(
    pod: &PodInfo,
    pods: impl Iterator<Item = (&'a PodInfo, &'a NodeInfo)>,
    with_anti_affinity: impl Iterator<Item = (&'a PodInfo, &'a NodeInfo)>,
) -> Result<AffinityState, String> {
    if let Some(e) = &pod.affinity.invalid {
        return Err(e.clone());
    }
    let mut state = AffinityState::default();
    for (existing, node) in with_anti_affinity {
        for term in &existing.affinity.anti_affinity {
            if term.matches(pod)
                && let Some(v) = node.topology_value(&term.topology_key)
            {
                state
                    .existing_anti
                    .entry(term.topology_key.clone())
                    .or_default()
                    .insert(v.to_string());
            }
        }
    }
    let terms = &pod.affinity;
    if terms.is_empty() {
        return Ok(state);
    }
    state.anti = vec![HashSet::new(); terms.anti_affinity.len()];
    state.affinity = vec![HashSet::new(); terms.affinity.len()];
    for (existing, node) in pods {
        if existing.uid == pod.uid {
            continue;
        }
        for (term, values) in terms.anti_affinity.iter().zip(state.anti.iter_mut()) {
            if term.matches(existing)
                && let Some(v) = node.topology_value(&term.topology_key)
            {
                values.insert(v.to_string());
            }
        }
        for (term, values) in terms.affinity.iter().zip(state.affinity.iter_mut()) {
            if term.matches(existing)
                && let Some(v) = node.topology_value(&term.topology_key)
            {
                values.insert(v.to_string());
            }
        }
    }
    state.first_of_group = !terms.affinity.is_empty()
        && state.affinity.iter().all(HashSet::is_empty)
        && terms.affinity.iter().all(|t| t.matches(pod));
    Ok(state)
}

/// Whether `pod` may go to `node` given the precomputed `state`. Checked in Kubernetes'
/// order (the pod's affinity, its anti-affinity, then the existing pods'), which decides
/// the reason a node reports.
pub fn fits(pod: &PodInfo, state: &AffinityState, node: &NodeInfo) -> Status {
    for (term, values) in pod.affinity.affinity.iter().zip(&state.affinity) {
        let ok = match node.topology_value(&term.topology_key) {
            None => false,
            Some(_) if state.first_of_group => true,
            Some(v) => values.contains(v),
        };
        if !ok {
            return Status::new(Code::UnschedulableAndUnresolvable, NAME, REASON_AFFINITY);
        }
    }
    for (term, values) in pod.affinity.anti_affinity.iter().zip(&state.anti) {
        if node
            .topology_value(&term.topology_key)
            .is_some_and(|v| values.contains(v))
        {
            return Status::unschedulable(NAME, REASON_ANTI_AFFINITY);
        }
    }
    for (key, values) in &state.existing_anti {
        if node.topology_value(key).is_some_and(|v| values.contains(v)) {
            return Status::unschedulable(NAME, REASON_EXISTING_ANTI_AFFINITY);
        }
    }
    Status::success()
}

fn filter(cycle: &Cycle, node: &NodeInfo) -> Status {
    if cycle.affinity.is_empty() {
        return Status::success();
    }
    fits(cycle.pod, &cycle.affinity, node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::testing::*;
    use serde_json::json;
    use std::sync::Arc;

    fn anti(name: &str, app: &str) -> PodInfo {
        pod_with(
            name,
            json!({"app": app}),
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "kubernetes.io/hostname"}
            ]}}}),
        )
    }

    fn with_affinity(name: &str, labels: serde_json::Value, app: &str) -> PodInfo {
        pod_with(
            name,
            labels,
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": [app]}]},
                 "topologyKey": "kubernetes.io/hostname"}
            ]}}}),
        )
    }

    fn check(pod: &PodInfo, nodes: &[NodeInfo]) -> Vec<Status> {
        let placed = || {
            nodes
                .iter()
                .flat_map(|n| n.pods.values().map(move |p| (p.as_ref(), n)))
        };
        let with_anti = placed().filter(|(p, _)| !p.affinity.anti_affinity.is_empty());
        let state = pre_filter(pod, placed(), with_anti).expect("valid terms");
        nodes.iter().map(|n| fits(pod, &state, n)).collect()
    }

    #[test]
    fn anti_affinity_keeps_one_replica_per_node() {
        let mut a = node_info("a", 1000, 1 << 30, 10);
        let b = node_info("b", 1000, 1 << 30, 10);
        a.add_pod(Arc::new(anti("web-1", "web")));
        let s = check(&anti("web-2", "web"), &[a, b]);
        assert_eq!(s[0].reasons, vec![REASON_ANTI_AFFINITY]);
        assert_eq!(s[0].code, Code::Unschedulable);
        assert!(s[1].is_success());
    }

    #[test]
    fn existing_pods_anti_affinity_is_symmetric() {
        let mut a = node_info("a", 1000, 1 << 30, 10);
        let b = node_info("b", 1000, 1 << 30, 10);
        a.add_pod(Arc::new(anti("db-1", "web")));
        // The newcomer has no terms, but db-1 refuses pods labelled app=web next to it.
        let s = check(&pod_with("web", json!({"app": "web"}), json!({})), &[a, b]);
        assert_eq!(s[0].reasons, vec![REASON_EXISTING_ANTI_AFFINITY]);
        assert!(s[1].is_success());
        let other_ns = pod_with("x", json!({"app": "web"}), json!({}));
        let mut raw = (*other_ns.pod).clone();
        raw.metadata.namespace = Some("other".into());
        let other_ns = PodInfo::new(raw);
        let mut a = node_info("a", 1000, 1 << 30, 10);
        a.add_pod(Arc::new(anti("db-1", "web")));
        assert!(
            check(&other_ns, &[a])[0].is_success(),
            "terms look in their namespace"
        );
    }

    #[test]
    fn affinity_needs_a_selected_pod_in_the_domain_except_for_the_first() {
        let mut a = node_info("a", 1000, 1 << 30, 10);
        let b = node_info("b", 1000, 1 << 30, 10);
        a.add_pod(Arc::new(pod_with(
            "cache",
            json!({"app": "cache"}),
            json!({}),
        )));
        let s = check(
            &with_affinity("web", json!({}), "cache"),
            &[a.clone(), b.clone()],
        );
        assert!(s[0].is_success());
        assert_eq!(s[1].code, Code::UnschedulableAndUnresolvable);
        assert_eq!(s[1].reasons, vec![REASON_AFFINITY]);
        // Nothing selected anywhere: a pod that selects itself may start the group.
        let first = with_affinity("c1", json!({"app": "group"}), "group");
        let s = check(&first, std::slice::from_ref(&b));
        assert!(s[0].is_success());
        let loner = with_affinity("c1", json!({}), "group");
        assert!(!check(&loner, &[b])[0].is_success());
    }

    #[test]
    fn malformed_terms_are_errors() {
        let p = pod_with(
            "p",
            json!({}),
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "Near"}]},
                 "topologyKey": "kubernetes.io/hostname"}
            ]}}}),
        );
        let err = pre_filter(&p, std::iter::empty(), std::iter::empty()).expect_err("invalid");
        assert!(err.contains("Near"), "{err}");
    }
}
