//! TaintToleration: a node's `NoSchedule` and `NoExecute` taints keep out every pod that
//! does not tolerate them (filter); its `PreferNoSchedule` taints make it less attractive
//! the more of them a pod does not tolerate (score).

use crate::scheduler::framework::{
    Cycle, FilterPlugin, NodeInfo, PodInfo, ScorePlugin, Status, default_normalize, tolerated,
};
use k8s_openapi::api::core::v1::Taint;

pub const NAME: &str = "TaintToleration";
pub const FILTER: FilterPlugin = FilterPlugin { name: NAME, filter };
pub const SCORE: ScorePlugin = ScorePlugin {
    name: NAME,
    weight: 1,
    score,
    normalize,
};

/// The first `NoSchedule`/`NoExecute` taint of the node the pod does not tolerate.
pub fn untolerated<'a>(pod: &PodInfo, taints: &'a [Taint]) -> Option<&'a Taint> {
    taints.iter().find(|t| {
        matches!(t.effect.as_str(), "NoSchedule" | "NoExecute") && !tolerated(&pod.tolerations, t)
    })
}

pub fn fits(pod: &PodInfo, node: &NodeInfo) -> Status {
    match untolerated(pod, &node.facts.taints) {
        None => Status::success(),
        Some(t) => Status::unresolvable(
            NAME,
            format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            ),
        ),
    }
}

fn filter(cycle: &Cycle, node: &NodeInfo) -> Status {
    fits(cycle.pod, node)
}

/// How many `PreferNoSchedule` taints of the node the pod does not tolerate (only
/// tolerations without an effect or with `PreferNoSchedule` count).
pub fn intolerable_preferences(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let soft: Vec<_> = pod
        .tolerations
        .iter()
        .filter(|t| {
            matches!(
                t.effect.as_deref(),
                None | Some("") | Some("PreferNoSchedule")
            )
        })
        .cloned()
        .collect();
    node.facts
        .taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(&soft, t))
        .count() as i64
}

fn score(cycle: &Cycle, node: &NodeInfo) -> i64 {
    if node.facts.taints.is_empty() {
        return 0;
    }
    intolerable_preferences(cycle.pod, node)
}

/// Fewer intolerable taints is better.
fn normalize(scores: &mut [i64]) {
    default_normalize(scores, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::Code;
    use crate::scheduler::framework::testing::*;
    use serde_json::json;

    #[test]
    fn untolerated_hard_taints_keep_pods_out_with_kubernetes_message() {
        let mut n = node_info("n1", 1000, 1 << 30, 10);
        n.facts.taints = vec![
            taint("soft", "", "PreferNoSchedule"),
            taint("node.kubernetes.io/unreachable", "", "NoExecute"),
        ];
        let s = fits(&pod("p"), &n);
        assert_eq!(s.code, Code::UnschedulableAndUnresolvable);
        assert_eq!(
            s.reasons,
            vec!["node(s) had untolerated taint {node.kubernetes.io/unreachable: }"]
        );
        n.facts.taints = vec![taint("dedicated", "gpu", "NoSchedule")];
        assert_eq!(
            fits(&pod("p"), &n).reasons,
            vec!["node(s) had untolerated taint {dedicated: gpu}"]
        );
        let tolerant = pod_with(
            "p",
            json!({}),
            json!({"tolerations": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
        );
        assert!(fits(&tolerant, &n).is_success());
    }

    #[test]
    fn prefer_no_schedule_taints_lower_the_score() {
        let mut clean = node_info("n1", 1000, 1 << 30, 10);
        clean.facts.taints = vec![];
        let mut soft = node_info("n2", 1000, 1 << 30, 10);
        soft.facts.taints = vec![
            taint("a", "", "PreferNoSchedule"),
            taint("b", "", "PreferNoSchedule"),
        ];
        let p = pod("p");
        let images = Default::default();
        let c = cycle(&p, &images);
        let mut scores = [score(&c, &clean), score(&c, &soft)];
        assert_eq!(scores, [0, 2]);
        normalize(&mut scores);
        assert_eq!(scores, [100, 0]);
        let tolerant = pod_with(
            "p",
            json!({}),
            json!({"tolerations": [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        assert_eq!(intolerable_preferences(&tolerant, &soft), 1);
    }
}
