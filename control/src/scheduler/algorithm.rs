//! One scheduling decision: filter → score → select, a pure function of the cache and
//! the pod (and a random source for ties).
//!
//! - **Filter** runs the filter plugins on the nodes, starting where the previous
//!   decision stopped, and stops once it has found enough feasible nodes: all of them
//!   in a small cluster, an adaptive share in a large one (Kubernetes'
//!   `percentageOfNodesToScore`: 50% minus 1% per 125 nodes, at least 5% and 100 nodes).
//!   Placement quality barely changes past a few hundred candidates, while the cost grows
//!   with every node; rotating the start keeps every node in play.
//! - **Score** runs each score plugin over the feasible nodes, normalizes to 0..100,
//!   weights and sums.
//! - **Select** takes the highest total, breaking ties at random so that equal nodes
//!   share the load.
//!
//! When no node is feasible, every node was filtered and the reasons are counted into
//! Kubernetes' message: `0/3 nodes are available: 1 node(s) had untolerated taint
//! {node.kubernetes.io/unreachable: }, 2 Insufficient memory.` (reasons as `COUNT
//! REASON`, sorted as strings, exactly as kube-scheduler's `FitError` prints them).

use super::cache::Cache;
use super::framework::{Code, Cycle, FilterPlugin, NodeInfo, ScorePlugin, Status};
use super::plugins::{self, inter_pod_affinity, volume_binding};
use rand::Rng;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Below this many nodes every node is considered.
pub const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// The adaptive share never goes below this percentage.
pub const MIN_FEASIBLE_NODES_PERCENTAGE: usize = 5;

/// The plugins and how far to search.
#[derive(Debug, Clone)]
pub struct Profile {
    pub filters: Vec<FilterPlugin>,
    pub scores: Vec<ScorePlugin>,
    /// Share of the nodes to find feasible before scoring (1..=100); `None` is adaptive.
    pub percentage_of_nodes_to_score: Option<u32>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            filters: plugins::default_filters(),
            scores: plugins::default_scores(),
            percentage_of_nodes_to_score: None,
        }
    }
}

/// How many feasible nodes to find among `num_nodes` before scoring.
pub fn num_feasible_nodes_to_find(num_nodes: usize, percentage: Option<u32>) -> usize {
    if num_nodes < MIN_FEASIBLE_NODES_TO_FIND {
        return num_nodes;
    }
    let pct = match percentage {
        Some(p) => (p as usize).clamp(1, 100),
        None => 50usize
            .saturating_sub(num_nodes / 125)
            .max(MIN_FEASIBLE_NODES_PERCENTAGE),
    };
    if pct >= 100 {
        return num_nodes;
    }
    (num_nodes * pct / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// No node fits: how many nodes there were and why each failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub num_nodes: usize,
    /// Reason -> how many nodes gave it.
    pub reasons: HashMap<Cow<'static, str>, usize>,
    /// Nodes that failed with `UnschedulableAndUnresolvable`.
    pub unresolvable: usize,
    /// Why the pre-filter turned the pod away before any node (a missing claim): the
    /// message then has that instead of per-node counts, as Kubernetes prints it.
    pub pre_filter: Option<Cow<'static, str>>,
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        if let Some(reason) = &self.pre_filter {
            return write!(f, "0/{} nodes are available: {reason}.", self.num_nodes);
        }
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        parts.sort();
        write!(f, "0/{} nodes are available", self.num_nodes)?;
        if !parts.is_empty() {
            write!(f, ": {}", parts.join(", "))?;
        }
        f.write_str(".")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// No node fits now.
    #[error("{0}")]
    Unschedulable(FitError),
    /// Deciding failed (a malformed term): retry with back-off.
    #[error("{0}")]
    Error(String),
}

/// Where the pod goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub node: Arc<str>,
    /// Nodes the filters ran on.
    pub evaluated: usize,
    /// Of those, how many fit.
    pub feasible: usize,
}

/// Runs every filter on one node; the first failure is the node's status.
pub fn run_filters(filters: &[FilterPlugin], cycle: &Cycle, node: &NodeInfo) -> Status {
    for f in filters {
        let s = (f.filter)(cycle, node);
        if !s.is_success() {
            return s;
        }
    }
    Status::success()
}

/// Decides where `pod` goes. `next_start` is where the node scan begins and is advanced
/// past the nodes this decision looked at.
pub fn schedule(
    profile: &Profile,
    cache: &Cache,
    pod: &super::framework::PodInfo,
    next_start: &mut usize,
    rng: &mut impl Rng,
) -> Result<Decision, ScheduleError> {
    let nodes = cache.nodes();
    let num_nodes = cache.num_nodes();
    if num_nodes == 0 {
        return Err(ScheduleError::Unschedulable(FitError {
            num_nodes: 0,
            reasons: HashMap::new(),
            unresolvable: 0,
            pre_filter: None,
        }));
    }
    // PreFilter: the cluster-wide part of pod (anti-)affinity, once per pod.
    let affinity =
        inter_pod_affinity::pre_filter(pod, cache.placed_pods(), cache.anti_affinity_pods())
            .map_err(|e| ScheduleError::Error(format!("{}: {e}", inter_pod_affinity::NAME)))?;
    // PreFilter: the pod's claims, once per pod.
    let volumes = match volume_binding::pre_filter(pod, &cache.volumes) {
        Ok(v) => v,
        Err(status) => {
            return Err(ScheduleError::Unschedulable(FitError {
                num_nodes,
                reasons: HashMap::new(),
                unresolvable: num_nodes,
                pre_filter: status.reasons.into_iter().next(),
            }));
        }
    };
    let cycle = Cycle {
        pod,
        num_nodes,
        image_nodes: cache.image_nodes(),
        affinity,
        volumes,
    };

    let to_find = num_feasible_nodes_to_find(num_nodes, profile.percentage_of_nodes_to_score);
    let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(to_find.min(1024));
    let mut reasons: HashMap<Cow<'static, str>, usize> = HashMap::new();
    let mut unresolvable = 0;
    let mut evaluated = 0;
    let start = *next_start % nodes.len();
    let mut scanned = 0;
    for i in 0..nodes.len() {
        let node = &nodes[(start + i) % nodes.len()];
        scanned += 1;
        if node.node.is_none() {
            continue;
        }
        evaluated += 1;
        let status = run_filters(&profile.filters, &cycle, node);
        match status.code {
            Code::Success => {
                feasible.push(node);
                if feasible.len() >= to_find {
                    break;
                }
            }
            Code::Error => {
                return Err(ScheduleError::Error(format!(
                    "{} on node {}: {status}",
                    status.plugin, node.name
                )));
            }
            code => {
                if code == Code::UnschedulableAndUnresolvable {
                    unresolvable += 1;
                }
                for r in status.reasons {
                    *reasons.entry(r).or_default() += 1;
                }
            }
        }
    }
    *next_start = (start + scanned) % nodes.len();
    if feasible.is_empty() {
        return Err(ScheduleError::Unschedulable(FitError {
            num_nodes,
            reasons,
            unresolvable,
            pre_filter: None,
        }));
    }
    let decision = |node: &NodeInfo| Decision {
        node: node.name.clone(),
        evaluated,
        feasible: feasible.len(),
    };
    if feasible.len() == 1 {
        return Ok(decision(feasible[0]));
    }
    let totals = score(&profile.scores, &cycle, &feasible);
    Ok(decision(feasible[select(&totals, rng)]))
}

/// Weighted sum of the normalized scores of every plugin, per feasible node.
pub fn score(plugins: &[ScorePlugin], cycle: &Cycle, feasible: &[&NodeInfo]) -> Vec<i64> {
    let mut totals = vec![0i64; feasible.len()];
    let mut scores = vec![0i64; feasible.len()];
    for p in plugins {
        for (s, node) in scores.iter_mut().zip(feasible) {
            *s = (p.score)(cycle, node);
        }
        (p.normalize)(&mut scores);
        for (t, s) in totals.iter_mut().zip(&scores) {
            *t += p.weight * s;
        }
    }
    totals
}

/// The index of the highest score; ties broken uniformly at random (reservoir sampling).
pub fn select(totals: &[i64], rng: &mut impl Rng) -> usize {
    let mut best = 0;
    let mut ties = 0u32;
    for (i, &t) in totals.iter().enumerate() {
        if t > totals[best] {
            best = i;
            ties = 1;
        } else if t == totals[best] {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::testing::*;
    use crate::scheduler::framework::{PodInfo, TAINT_UNREACHABLE};
    use k8s_openapi::api::core::v1::Node;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use serde_json::json;

    fn with_taint(mut n: Node, key: &str, effect: &str) -> Node {
        if let Some(spec) = n.spec.as_mut() {
            spec.taints = Some(vec![taint(key, "", effect)]);
        }
        n
    }

    fn run(cache: &Cache, pod: &PodInfo) -> Result<Decision, ScheduleError> {
        let mut rng = StdRng::seed_from_u64(7);
        schedule(&Profile::default(), cache, pod, &mut 0, &mut rng)
    }

    #[test]
    fn claims_speak_kubernetes_words_when_nothing_fits() {
        use crate::scheduler::plugins::volume_binding::VolumeUpdate;
        let mut cache = Cache::new();
        for n in ["n1", "n2"] {
            cache.upsert_node(node(n, 1000, 1 << 30, 10));
        }
        let pod = pod_with(
            "p",
            json!({}),
            json!({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}),
        );
        let err = run(&cache, &pod).expect_err("no node fits").to_string();
        assert_eq!(
            err,
            "0/2 nodes are available: persistentvolumeclaim \"data\" not found."
        );
        // A delayed claim of the local-path class, on nodes that publish no root.
        cache.volumes.apply(VolumeUpdate::Class(std::sync::Arc::new(
            crate::controllers::persistentvolume::local_path_class(),
        )));
        cache.volumes.apply(VolumeUpdate::Claim(std::sync::Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "data", "namespace": "default"},
                "spec": {"storageClassName": "local-path"}}))
            .expect("a claim"),
        )));
        let err = run(&cache, &pod).expect_err("no node fits").to_string();
        assert_eq!(
            err,
            "0/2 nodes are available: 2 node(s) didn't find available persistent volumes to bind."
        );
    }

    #[test]
    fn feasible_share_is_adaptive_like_kubernetes() {
        assert_eq!(num_feasible_nodes_to_find(3, None), 3);
        assert_eq!(num_feasible_nodes_to_find(99, None), 99);
        assert_eq!(num_feasible_nodes_to_find(1000, None), 420);
        assert_eq!(num_feasible_nodes_to_find(5000, None), 500);
        assert_eq!(num_feasible_nodes_to_find(10_000, None), 500);
        assert_eq!(num_feasible_nodes_to_find(1000, Some(100)), 1000);
        assert_eq!(num_feasible_nodes_to_find(1000, Some(1)), 100);
    }

    #[test]
    fn nothing_fits_explains_why_per_node_like_kubernetes() {
        let mut cache = Cache::new();
        cache.upsert_node(node("small-1", 4000, 1 << 30, 110));
        cache.upsert_node(node("small-2", 4000, 1 << 30, 110));
        cache.upsert_node(with_taint(
            node("gone", 4000, 64 << 30, 110),
            TAINT_UNREACHABLE,
            "NoExecute",
        ));
        let err = run(&cache, &pod_requesting("big", 100, 8 << 30)).expect_err("fits nowhere");
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 node(s) had untolerated taint \
             {node.kubernetes.io/unreachable: }, 2 Insufficient memory."
        );
        let ScheduleError::Unschedulable(fit) = err else {
            panic!("not a fit error")
        };
        assert_eq!(fit.unresolvable, 1);
        assert_eq!(
            run(&Cache::new(), &pod("p"))
                .expect_err("no nodes")
                .to_string(),
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn filters_then_scores_then_picks_the_best() {
        let mut cache = Cache::new();
        let mut ssd = node("ssd-busy", 4000, 8 << 30, 110);
        ssd.metadata
            .labels
            .get_or_insert_default()
            .insert("disk".into(), "ssd".into());
        let mut ssd_free = node("ssd-free", 4000, 8 << 30, 110);
        ssd_free
            .metadata
            .labels
            .get_or_insert_default()
            .insert("disk".into(), "ssd".into());
        cache.upsert_node(ssd);
        cache.upsert_node(ssd_free);
        cache.upsert_node(node("hdd", 4000, 8 << 30, 110));
        cache.upsert_node(with_taint(
            node("tainted", 64000, 64 << 30, 110),
            "dedicated",
            "NoSchedule",
        ));
        cache.add_pod(std::sync::Arc::new(pod_with(
            "busy",
            json!({}),
            json!({"nodeName": "ssd-busy", "containers": [{"name": "a", "image": "a.wasm",
                "resources": {"requests": {"cpu": "3", "memory": "6Gi"}}}]}),
        )));
        let p = pod_with(
            "p",
            json!({}),
            json!({"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "a", "image": "a.wasm",
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]}),
        );
        for _ in 0..10 {
            let d = run(&cache, &p).expect("fits");
            assert_eq!(&*d.node, "ssd-free");
            assert_eq!((d.evaluated, d.feasible), (4, 2));
        }
        // Once the free node is full too, only the message is left.
        let big = pod_with(
            "p",
            json!({}),
            json!({"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "a", "image": "a.wasm",
                "resources": {"requests": {"cpu": "5"}}}]}),
        );
        assert_eq!(
            run(&cache, &big).expect_err("too big").to_string(),
            "0/4 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
             1 node(s) had untolerated taint {dedicated: }, 2 Insufficient cpu."
        );
    }

    #[test]
    fn assumed_pods_are_seen_by_the_next_decision_and_replicas_spread() {
        let mut cache = Cache::new();
        for n in ["a", "b", "c"] {
            cache.upsert_node(node(n, 1000, 4 << 30, 110));
        }
        let mut rng = StdRng::seed_from_u64(1);
        let mut start = 0;
        let mut placed = Vec::new();
        for i in 0..6 {
            let p = std::sync::Arc::new(pod_requesting(&format!("p{i}"), 500, 0));
            let d = schedule(&Profile::default(), &cache, &p, &mut start, &mut rng).expect("fits");
            cache.assume(p, &d.node);
            placed.push(d.node.to_string());
        }
        placed.sort();
        assert_eq!(placed, ["a", "a", "b", "b", "c", "c"]);
        let err = schedule(
            &Profile::default(),
            &cache,
            &pod_requesting("x", 500, 0),
            &mut start,
            &mut rng,
        )
        .expect_err("full");
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 3 Insufficient cpu."
        );
    }

    #[test]
    fn malformed_terms_are_errors_not_unschedulable() {
        let mut cache = Cache::new();
        cache.upsert_node(node("a", 1000, 1 << 30, 110));
        let p = pod_with(
            "p",
            json!({}),
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"a": "b"}}, "topologyKey": ""}]}}}),
        );
        assert!(matches!(run(&cache, &p), Err(ScheduleError::Error(_))));
    }

    #[test]
    fn large_clusters_stop_at_the_adaptive_share_and_rotate() {
        let mut cache = Cache::new();
        for i in 0..1000 {
            cache.upsert_node(node(&format!("n{i}"), 1000, 1 << 30, 110));
        }
        let mut rng = StdRng::seed_from_u64(1);
        let mut start = 0;
        let d =
            schedule(&Profile::default(), &cache, &pod("p"), &mut start, &mut rng).expect("fits");
        assert_eq!((d.evaluated, d.feasible), (420, 420));
        assert_eq!(start, 420);
    }

    #[test]
    fn ties_are_broken_at_random() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[select(&[5, 9, 9], &mut rng)] += 1;
        }
        assert_eq!(seen[0], 0);
        assert!(seen[1] > 100 && seen[2] > 100, "{seen:?}");
    }
}
