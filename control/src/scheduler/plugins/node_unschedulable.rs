//! NodeUnschedulable: a cordoned node (`spec.unschedulable`, what `kubectl cordon` sets)
//! takes no new pods, unless the pod tolerates `node.kubernetes.io/unschedulable:NoSchedule`
//! (DaemonSet pods do).

use crate::scheduler::framework::{
    Cycle, FilterPlugin, NodeInfo, PodInfo, Status, TAINT_UNSCHEDULABLE, tolerated,
};
use k8s_openapi::api::core::v1::Taint;

pub const NAME: &str = "NodeUnschedulable";
pub const REASON: &str = "node(s) were unschedulable";
pub const PLUGIN: FilterPlugin = FilterPlugin { name: NAME, filter };

pub fn fits(pod: &PodInfo, node: &NodeInfo) -> Status {
    if !node.facts.unschedulable {
        return Status::success();
    }
    let taint = Taint {
        key: TAINT_UNSCHEDULABLE.into(),
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
    fn cordoned_nodes_take_only_pods_that_tolerate_it() {
        let mut n = node_info("n1", 1000, 1 << 30, 10);
        assert!(fits(&pod("p"), &n).is_success());
        n.facts.unschedulable = true;
        let s = fits(&pod("p"), &n);
        assert_eq!(s.code, Code::UnschedulableAndUnresolvable);
        assert_eq!(s.reasons, vec![REASON]);
        let tolerant = pod_with(
            "ds",
            json!({}),
            json!({"tolerations": [{"key": TAINT_UNSCHEDULABLE, "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        assert!(fits(&tolerant, &n).is_success());
    }
}
