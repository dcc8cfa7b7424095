//! NodeName: a pod that names its node (`spec.nodeName`) fits only that node.
//!
//! The scheduler never places such a pod (it is already bound), so in the scheduling loop
//! this filter always passes; it is here so that the filter set answers "would this pod
//! fit that node" completely, as Kubernetes' does.

use crate::scheduler::framework::{Cycle, FilterPlugin, NodeInfo, PodInfo, Status};

pub const NAME: &str = "NodeName";
pub const REASON: &str = "node(s) didn't match the requested node name";
pub const PLUGIN: FilterPlugin = FilterPlugin { name: NAME, filter };

pub fn fits(pod: &PodInfo, node: &NodeInfo) -> Status {
    if pod.node_name.is_empty() || pod.node_name == *node.name {
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
    fn a_named_node_is_the_only_fit() {
        let n1 = node_info("n1", 1000, 1 << 30, 10);
        let n2 = node_info("n2", 1000, 1 << 30, 10);
        assert!(fits(&pod("p"), &n1).is_success());
        let named = pod_with("p", json!({}), json!({"nodeName": "n2"}));
        assert_eq!(fits(&named, &n1).code, Code::UnschedulableAndUnresolvable);
        assert!(fits(&named, &n2).is_success());
    }
}
