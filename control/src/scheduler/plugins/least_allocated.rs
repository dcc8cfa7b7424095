//! LeastAllocated (Kubernetes' `NodeResourcesFit` default scoring strategy): prefer the
//! node with the most CPU and memory left after placing the pod, so load spreads.
//!
//! Counted with the scoring defaults (100m CPU, 200 MiB) for containers that request
//! nothing, so that best-effort pods spread too. Score per resource is
//! `(allocatable - requested) * 100 / allocatable`, averaged over CPU and memory.

use crate::scheduler::framework::{
    Cycle, MAX_NODE_SCORE, NodeInfo, PodInfo, ScorePlugin, keep_scores,
};

pub const NAME: &str = "LeastAllocated";
pub const PLUGIN: ScorePlugin = ScorePlugin {
    name: NAME,
    weight: 1,
    score,
    normalize: keep_scores,
};

fn least_requested(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let requested = node.non_zero_requested.plus(&pod.non_zero_requests);
    let a = &node.facts.allocatable;
    (least_requested(requested.milli_cpu, a.milli_cpu)
        + least_requested(requested.memory, a.memory))
        / 2
}

fn score(cycle: &Cycle, node: &NodeInfo) -> i64 {
    least_allocated(cycle.pod, node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::testing::*;
    use std::sync::Arc;

    #[test]
    fn emptier_nodes_score_higher() {
        let p = pod_requesting("p", 500, 1 << 30);
        let empty = node_info("a", 2000, 4 << 30, 10);
        let mut busy = node_info("b", 2000, 4 << 30, 10);
        busy.add_pod(Arc::new(pod_requesting("x", 1000, 2 << 30)));
        // cpu (2000-500)/2000 = 75, memory (4-1)/4 = 75.
        assert_eq!(least_allocated(&p, &empty), 75);
        // cpu (2000-1500)/2000 = 25, memory (4-3)/4 = 25.
        assert_eq!(least_allocated(&p, &busy), 25);
        let tiny = node_info("c", 100, 1 << 20, 10);
        assert_eq!(least_allocated(&p, &tiny), 0, "over capacity scores 0");
    }

    #[test]
    fn pods_without_requests_count_the_defaults() {
        let p = pod("p");
        let n = node_info("a", 1000, 2000 << 20, 10);
        // cpu (1000-100)/1000 = 90, memory (2000-200)/2000 = 90.
        assert_eq!(least_allocated(&p, &n), 90);
    }
}
