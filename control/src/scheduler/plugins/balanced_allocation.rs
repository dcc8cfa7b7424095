//! BalancedAllocation: prefer nodes where, with the pod placed, CPU and memory are used
//! in similar proportions, so a node does not run out of one while the other sits idle.
//!
//! Score `(1 - |cpu fraction - memory fraction| / 2) * 100`, the two-resource case of
//! Kubernetes' standard-deviation formula, on the pods' actual requests.

use crate::scheduler::framework::{
    Cycle, MAX_NODE_SCORE, NodeInfo, PodInfo, ScorePlugin, keep_scores,
};

pub const NAME: &str = "NodeResourcesBalancedAllocation";
pub const PLUGIN: ScorePlugin = ScorePlugin {
    name: NAME,
    weight: 1,
    score,
    normalize: keep_scores,
};

fn fraction(requested: i64, capacity: i64) -> f64 {
    if capacity <= 0 {
        return 1.0;
    }
    (requested as f64 / capacity as f64).min(1.0)
}

pub fn balance(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let requested = node.requested.plus(&pod.requests);
    let a = &node.facts.allocatable;
    let cpu = fraction(requested.milli_cpu, a.milli_cpu);
    let memory = fraction(requested.memory, a.memory);
    let std = (cpu - memory).abs() / 2.0;
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

fn score(cycle: &Cycle, node: &NodeInfo) -> i64 {
    balance(cycle.pod, node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::testing::*;
    use std::sync::Arc;

    #[test]
    fn even_use_of_cpu_and_memory_scores_higher() {
        let p = pod_requesting("p", 500, 1 << 30);
        let even = node_info("a", 2000, 4 << 30, 10);
        assert_eq!(balance(&p, &even), 100);
        let mut cpu_heavy = node_info("b", 2000, 4 << 30, 10);
        cpu_heavy.add_pod(Arc::new(pod_requesting("x", 1000, 0)));
        // cpu 1500/2000 = 0.75, memory 0.25: 100 * (1 - 0.25).
        assert_eq!(balance(&p, &cpu_heavy), 75);
    }
}
