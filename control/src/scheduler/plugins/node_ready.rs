//! NodeReady: only nodes whose `Ready` condition is `True` take new pods.
//!
//! Kubernetes expresses readiness as taints (`node.kubernetes.io/not-ready` when
//! `Ready=False`, `node.kubernetes.io/unreachable` when `Unknown`) that the node lifecycle
//! controller adds, and lets pods that tolerate them (DaemonSet pods) in. This filter
//! reads the condition itself, so that a node is not used in the seconds before the
//! controller taints it (or when no controller runs), and honours the same tolerations.
//! A node that already carries the taint is caught earlier by [`super::taint_toleration`],
//! whose message names the taint.

use crate::scheduler::framework::{
    Cycle, FilterPlugin, NodeInfo, PodInfo, Readiness, Status, TAINT_NOT_READY, TAINT_UNREACHABLE,
    tolerated,
};
use k8s_openapi::api::core::v1::Taint;

pub const NAME: &str = "NodeReady";
pub const REASON: &str = "node(s) were not ready";
pub const PLUGIN: FilterPlugin = FilterPlugin { name: NAME, filter };

pub fn fits(pod: &PodInfo, node: &NodeInfo) -> Status {
    let key = match node.facts.readiness {
        Readiness::Ready => return Status::success(),
        Readiness::NotReady => TAINT_NOT_READY,
        Readiness::Unknown => TAINT_UNREACHABLE,
    };
    let taint = Taint {
        key: key.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    if tolerated(&pod.tolerations, &taint) {
        Status::success()
    } else {
        Status::unresolvable(NAME, REASON)
    }
}

fn filter(cycle: &Cycle, node: &NodeInfo) -> Status {
    fits(cycle.pod, node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::Code;
    use crate::scheduler::framework::testing::*;
    use serde_json::json;

    #[test]
    fn only_ready_nodes_unless_the_pod_tolerates_the_condition() {
        let mut n = node_info("n1", 1000, 1 << 30, 10);
        assert!(fits(&pod("p"), &n).is_success());
        n.facts.readiness = Readiness::Unknown;
        let s = fits(&pod("p"), &n);
        assert_eq!(s.code, Code::UnschedulableAndUnresolvable);
        assert_eq!(s.reasons, vec![REASON]);
        let tolerates_unreachable = pod_with(
            "ds",
            json!({}),
            json!({"tolerations": [{"key": TAINT_UNREACHABLE, "operator": "Exists"}]}),
        );
        assert!(fits(&tolerates_unreachable, &n).is_success());
        n.facts.readiness = Readiness::NotReady;
        assert!(!fits(&tolerates_unreachable, &n).is_success());
    }
}
