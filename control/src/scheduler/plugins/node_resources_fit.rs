//! NodeResourcesFit: the pod's requests of CPU and memory must fit in the node's
//! `status.allocatable` minus what the pods already on it (bound or assumed) request,
//! and the node must have room for one more pod.
//!
//! Every shortage is reported (a node short of both CPU and memory counts under both
//! reasons), with Kubernetes' words: `Insufficient cpu`, `Insufficient memory`,
//! `Too many pods`. These are `Unschedulable`, not unresolvable: they change when pods
//! leave.

use crate::scheduler::framework::{Code, Cycle, FilterPlugin, NodeInfo, PodInfo, Status};

pub const NAME: &str = "NodeResourcesFit";
pub const TOO_MANY_PODS: &str = "Too many pods";
pub const INSUFFICIENT_CPU: &str = "Insufficient cpu";
pub const INSUFFICIENT_MEMORY: &str = "Insufficient memory";
pub const PLUGIN: FilterPlugin = FilterPlugin { name: NAME, filter };

pub fn fits(pod: &PodInfo, node: &NodeInfo) -> Status {
    let free = |allocatable: i64, requested: i64| allocatable.saturating_sub(requested);
    let a = &node.facts.allocatable;
    let used = &node.requested;
    let want = &pod.requests;
    let mut reasons = Vec::new();
    if used.pods + 1 > a.pods {
        reasons.push(TOO_MANY_PODS.into());
    }
    if want.milli_cpu > 0 && want.milli_cpu > free(a.milli_cpu, used.milli_cpu) {
        reasons.push(INSUFFICIENT_CPU.into());
    }
    if want.memory > 0 && want.memory > free(a.memory, used.memory) {
        reasons.push(INSUFFICIENT_MEMORY.into());
    }
    if reasons.is_empty() {
        Status::success()
    } else {
        Status {
            code: Code::Unschedulable,
            reasons,
            plugin: NAME,
        }
    }
}

fn filter(cycle: &Cycle, node: &NodeInfo) -> Status {
    fits(cycle.pod, node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::testing::*;
    use std::sync::Arc;

    #[test]
    fn requests_fit_what_is_left() {
        let mut n = node_info("n1", 2000, 4 << 30, 3);
        assert!(fits(&pod_requesting("p", 2000, 4 << 30), &n).is_success());
        n.add_pod(Arc::new(pod_requesting("a", 1500, 1 << 30)));
        let s = fits(&pod_requesting("p", 1000, 1 << 30), &n);
        assert_eq!(s.code, Code::Unschedulable);
        assert_eq!(s.reasons, vec![INSUFFICIENT_CPU]);
        let s = fits(&pod_requesting("p", 1000, 4 << 30), &n);
        assert_eq!(s.reasons, vec![INSUFFICIENT_CPU, INSUFFICIENT_MEMORY]);
        assert!(fits(&pod_requesting("p", 500, 3 << 30), &n).is_success());
    }

    #[test]
    fn pods_without_requests_still_count_against_the_pod_limit() {
        let mut n = node_info("n1", 1000, 1 << 30, 2);
        n.add_pod(Arc::new(pod("a")));
        assert!(fits(&pod("p"), &n).is_success());
        n.add_pod(Arc::new(pod("b")));
        assert_eq!(fits(&pod("p"), &n).reasons, vec![TOO_MANY_PODS]);
        let empty = node_info("n2", 0, 0, 0);
        assert_eq!(fits(&pod("p"), &empty).reasons, vec![TOO_MANY_PODS]);
    }
}
