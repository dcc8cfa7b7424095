//! NodeAffinity: `spec.nodeSelector` and required node affinity decide which nodes a pod
//! may use (filter); preferred node affinity terms add their weight to the nodes they
//! match (score).
//!
//! Terms are parsed once per pod ([`RequiredNodeAffinity::of`]): `Gt`/`Lt` values become
//! integers, and a malformed requirement (a `Gt` with two values, an unknown operator)
//! makes its term match nothing, as Kubernetes' lazy-error selectors do, while the other
//! terms still count. Required terms are ORed, the requirements inside a term ANDed; a
//! term with no requirement matches no node. `matchFields` supports `metadata.name`.

use crate::scheduler::framework::{
    Cycle, FilterPlugin, NodeInfo, PodInfo, ScorePlugin, Status, default_normalize,
};
use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, PodSpec};
use std::collections::BTreeMap;

pub const NAME: &str = "NodeAffinity";
pub const REASON: &str = "node(s) didn't match Pod's node affinity/selector";
pub const FILTER: FilterPlugin = FilterPlugin { name: NAME, filter };
pub const SCORE: ScorePlugin = ScorePlugin {
    name: NAME,
    weight: 1,
    score,
    normalize,
};

/// One parsed requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
    Gt(String, i64),
    Lt(String, i64),
    /// Malformed: matches nothing.
    Invalid,
}

impl Requirement {
    pub fn parse(r: &NodeSelectorRequirement) -> Requirement {
        let key = r.key.clone();
        let values = r.values.clone().unwrap_or_default();
        let one_int = || match values.as_slice() {
            [v] => v.parse::<i64>().ok(),
            _ => None,
        };
        match r.operator.as_str() {
            "In" if !values.is_empty() => Requirement::In(key, values),
            "NotIn" if !values.is_empty() => Requirement::NotIn(key, values),
            "Exists" if values.is_empty() => Requirement::Exists(key),
            "DoesNotExist" if values.is_empty() => Requirement::DoesNotExist(key),
            "Gt" => one_int().map_or(Requirement::Invalid, |v| Requirement::Gt(key, v)),
            "Lt" => one_int().map_or(Requirement::Invalid, |v| Requirement::Lt(key, v)),
            _ => Requirement::Invalid,
        }
    }

    /// Whether `labels` satisfy the requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let int = |k: &str| labels.get(k).and_then(|v| v.parse::<i64>().ok());
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
            Requirement::Gt(k, v) => int(k).is_some_and(|l| l > *v),
            Requirement::Lt(k, v) => int(k).is_some_and(|l| l < *v),
            Requirement::Invalid => false,
        }
    }
}

/// One node selector term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub expressions: Vec<Requirement>,
    /// On `metadata.name` only (anything else is [`Requirement::Invalid`]).
    pub fields: Vec<Requirement>,
}

impl Term {
    pub fn parse(t: &NodeSelectorTerm) -> Term {
        Term {
            expressions: t
                .match_expressions
                .iter()
                .flatten()
                .map(Requirement::parse)
                .collect(),
            fields: t
                .match_fields
                .iter()
                .flatten()
                .map(|r| match (r.key.as_str(), r.operator.as_str()) {
                    ("metadata.name", "In" | "NotIn") => Requirement::parse(r),
                    _ => Requirement::Invalid,
                })
                .collect(),
        }
    }

    pub fn matches(&self, node: &NodeInfo) -> bool {
        if self.expressions.is_empty() && self.fields.is_empty() {
            return false;
        }
        if !self
            .expressions
            .iter()
            .all(|r| r.matches(&node.facts.labels))
        {
            return false;
        }
        if self.fields.is_empty() {
            return true;
        }
        let fields = BTreeMap::from([("metadata.name".to_string(), node.name.to_string())]);
        self.fields.iter().all(|r| r.matches(&fields))
    }
}

/// `requiredDuringSchedulingIgnoredDuringExecution`: terms, ORed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredNodeAffinity(pub Vec<Term>);

impl RequiredNodeAffinity {
    pub fn of(spec: Option<&PodSpec>) -> Option<RequiredNodeAffinity> {
        let selector = spec?
            .affinity
            .as_ref()?
            .node_affinity
            .as_ref()?
            .required_during_scheduling_ignored_during_execution
            .as_ref()?;
        Some(RequiredNodeAffinity(
            selector
                .node_selector_terms
                .iter()
                .map(Term::parse)
                .collect(),
        ))
    }

    pub fn matches(&self, node: &NodeInfo) -> bool {
        self.0.iter().any(|t| t.matches(node))
    }
}

/// `preferredDuringSchedulingIgnoredDuringExecution`: weighted terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreferredNodeAffinity(pub Vec<(i64, Term)>);

impl PreferredNodeAffinity {
    pub fn of(spec: Option<&PodSpec>) -> PreferredNodeAffinity {
        let terms = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        PreferredNodeAffinity(
            terms
                .into_iter()
                .flatten()
                .filter(|t| t.weight != 0)
                .map(|t| (i64::from(t.weight), Term::parse(&t.preference)))
                .collect(),
        )
    }
}

pub fn fits(pod: &PodInfo, node: &NodeInfo) -> Status {
    let selector_ok = pod
        .node_selector
        .iter()
        .all(|(k, v)| node.facts.labels.get(k) == Some(v));
    let affinity_ok = pod
        .required_node_affinity
        .as_ref()
        .is_none_or(|a| a.matches(node));
    if selector_ok && affinity_ok {
        Status::success()
    } else {
        Status::unresolvable(NAME, REASON)
    }
}

fn filter(cycle: &Cycle, node: &NodeInfo) -> Status {
    fits(cycle.pod, node)
}

/// The sum of the weights of the preferred terms the node matches.
pub fn preference(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.preferred_node_affinity
        .0
        .iter()
        .filter(|(_, t)| t.matches(node))
        .map(|(w, _)| *w)
        .sum()
}

fn score(cycle: &Cycle, node: &NodeInfo) -> i64 {
    preference(cycle.pod, node)
}

fn normalize(scores: &mut [i64]) {
    default_normalize(scores, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::testing::*;
    use serde_json::json;

    fn labelled(name: &str, labels: serde_json::Value) -> NodeInfo {
        let mut n = node_info(name, 1000, 1 << 30, 10);
        n.facts.labels = serde_json::from_value(labels).expect("labels");
        n
    }

    fn required(exprs: serde_json::Value) -> PodInfo {
        pod_with(
            "p",
            json!({}),
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}}),
        )
    }

    #[test]
    fn node_selector_needs_every_label() {
        let n = labelled("n1", json!({"disk": "ssd", "zone": "a"}));
        let p = pod_with("p", json!({}), json!({"nodeSelector": {"disk": "ssd"}}));
        assert!(fits(&p, &n).is_success());
        let p = pod_with(
            "p",
            json!({}),
            json!({"nodeSelector": {"disk": "ssd", "zone": "b"}}),
        );
        let s = fits(&p, &n);
        assert_eq!(s.reasons, vec![REASON]);
    }

    #[test]
    fn every_operator() {
        let n = labelled("n1", json!({"zone": "a", "cores": "8"}));
        let cases = [
            (
                json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}]),
                true,
            ),
            (
                json!([{"key": "zone", "operator": "In", "values": ["b"]}]),
                false,
            ),
            (
                json!([{"key": "zone", "operator": "NotIn", "values": ["b"]}]),
                true,
            ),
            (
                json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}]),
                false,
            ),
            (
                json!([{"key": "gpu", "operator": "NotIn", "values": ["x"]}]),
                true,
            ),
            (json!([{"key": "zone", "operator": "Exists"}]), true),
            (json!([{"key": "gpu", "operator": "Exists"}]), false),
            (json!([{"key": "gpu", "operator": "DoesNotExist"}]), true),
            (json!([{"key": "zone", "operator": "DoesNotExist"}]), false),
            (
                json!([{"key": "cores", "operator": "Gt", "values": ["4"]}]),
                true,
            ),
            (
                json!([{"key": "cores", "operator": "Gt", "values": ["8"]}]),
                false,
            ),
            (
                json!([{"key": "cores", "operator": "Lt", "values": ["16"]}]),
                true,
            ),
            (
                json!([{"key": "zone", "operator": "Lt", "values": ["16"]}]),
                false,
            ),
            (
                json!([{"key": "cores", "operator": "Gt", "values": ["4", "5"]}]),
                false,
            ),
            (
                json!([{"key": "zone", "operator": "Near", "values": ["a"]}]),
                false,
            ),
            (
                json!([{"key": "zone", "operator": "In", "values": ["a"]},
                    {"key": "cores", "operator": "Gt", "values": ["1"]}]),
                true,
            ),
            (json!([]), false),
        ];
        for (exprs, want) in cases {
            let got = fits(&required(exprs.clone()), &n).is_success();
            assert_eq!(got, want, "{exprs}");
        }
    }

    #[test]
    fn terms_are_ored_and_match_fields_name_the_node() {
        let n = labelled("n1", json!({"zone": "a"}));
        let p = pod_with(
            "p",
            json!({}),
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
            ]}}}}),
        );
        assert!(fits(&p, &n).is_success());
        assert!(!fits(&p, &labelled("n2", json!({"zone": "a"}))).is_success());
    }

    #[test]
    fn preferred_terms_add_their_weights() {
        let a = labelled("a", json!({"zone": "a", "disk": "ssd"}));
        let b = labelled("b", json!({"zone": "b"}));
        let p = pod_with(
            "p",
            json!({}),
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
                {"weight": 30, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}},
                {"weight": 5, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}}
            ]}}}),
        );
        let images = Default::default();
        let c = cycle(&p, &images);
        let mut scores = [score(&c, &a), score(&c, &b)];
        assert_eq!(scores, [40, 5]);
        normalize(&mut scores);
        assert_eq!(scores, [100, 12]);
    }
}
