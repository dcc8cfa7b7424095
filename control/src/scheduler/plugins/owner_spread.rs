//! OwnerSpread (Kubernetes' `SelectorSpread`, reduced to what wharf's controllers need):
//! spread the pods of one owner (the same controller `ownerReference` uid: one ReplicaSet,
//! one Job) across nodes, so that losing a node loses as few replicas as possible.
//!
//! Raw score: how many pods of the owner the node already has (bound or assumed, so a
//! burst of replicas created at once spreads too); normalized so the emptiest node gets
//! 100. Weight 2, as kube-scheduler weighs its spreading plugin.

use crate::scheduler::framework::{Cycle, NodeInfo, PodInfo, ScorePlugin, default_normalize};

pub const NAME: &str = "OwnerSpread";
pub const PLUGIN: ScorePlugin = ScorePlugin {
    name: NAME,
    weight: 2,
    score,
    normalize,
};

/// How many pods with the pod's owner the node holds (0 for a pod without one).
pub fn siblings(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.owner
        .as_ref()
        .and_then(|o| node.owners.get(o))
        .map_or(0, |n| i64::from(*n))
}

fn score(cycle: &Cycle, node: &NodeInfo) -> i64 {
    siblings(cycle.pod, node)
}

fn normalize(scores: &mut [i64]) {
    default_normalize(scores, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::testing::*;
    use serde_json::json;
    use std::sync::Arc;

    fn owned(name: &str, owner: &str) -> PodInfo {
        let mut p = pod(name);
        let mut raw = (*p.pod).clone();
        raw.metadata.owner_references = Some(vec![
            serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "rs", "uid": owner, "controller": true}))
            .expect("owner reference"),
        ]);
        p = PodInfo::new(raw);
        p
    }

    #[test]
    fn nodes_with_fewer_siblings_score_higher() {
        let mut a = node_info("a", 1000, 1 << 30, 10);
        let b = node_info("b", 1000, 1 << 30, 10);
        a.add_pod(Arc::new(owned("x1", "rs-1")));
        a.add_pod(Arc::new(owned("x2", "rs-1")));
        a.add_pod(Arc::new(owned("y", "rs-2")));
        let p = owned("p", "rs-1");
        let images = Default::default();
        let c = cycle(&p, &images);
        let mut scores = [score(&c, &a), score(&c, &b)];
        assert_eq!(scores, [2, 0]);
        normalize(&mut scores);
        assert_eq!(scores, [0, 100]);
        assert_eq!(siblings(&pod("loner"), &a), 0);
    }
}
