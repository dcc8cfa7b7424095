//! The scheduling framework's vocabulary: what a plugin sees and what it answers.
//!
//! As in Kubernetes' `pkg/scheduler/framework`, a **filter** plugin answers a [`Status`]
//! for one pod on one node, and a **score** plugin a number for each feasible node that is
//! then normalized to `0..=100` and weighted. Plugins are pure functions over two
//! pre-digested views:
//!
//! - [`PodInfo`]: a pod with everything scheduling needs parsed once when the pod is seen
//!   (requests as integers, tolerations, node affinity with `Gt`/`Lt` values parsed,
//!   pod (anti-)affinity terms, owner, images), not once per node;
//! - [`NodeInfo`]: a node with its allocatable, the sum of what its pods request, its
//!   taints, readiness, images, and the pods on it, kept current by the cache.
//!
//! The per-cycle state a plugin computes once per pod (Kubernetes' `PreFilter` and
//! `CycleState`) lives in [`Cycle`].

use super::plugins::inter_pod_affinity::{AffinityState, AffinityTerms};
use super::plugins::node_affinity::{PreferredNodeAffinity, RequiredNodeAffinity};
use crate::api::quantity;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

/// The highest score a plugin gives a node after normalization.
pub const MAX_NODE_SCORE: i64 = 100;

/// The scheduler name pods get by default and this scheduler answers to.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// What a filter (or the whole cycle) concluded, as Kubernetes' status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Code {
    Success,
    /// The pod does not fit this node now; it may after other pods leave (preemption
    /// could help).
    Unschedulable,
    /// The pod cannot fit this node whatever happens to other pods (a taint, a selector,
    /// a cordon): only a change to the node or the pod helps.
    UnschedulableAndUnresolvable,
    /// Something went wrong deciding (a malformed term): the pod is retried with back-off.
    Error,
}

/// A plugin's answer: a code and, unless it is success, the reasons, as the user will
/// read them in `0/N nodes are available: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub reasons: Vec<Cow<'static, str>>,
    /// The plugin that answered (empty for success).
    pub plugin: &'static str,
}

impl Status {
    pub const fn success() -> Self {
        Status {
            code: Code::Success,
            reasons: Vec::new(),
            plugin: "",
        }
    }

    pub fn new(code: Code, plugin: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Status {
            code,
            reasons: vec![reason.into()],
            plugin,
        }
    }

    pub fn unschedulable(plugin: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Status::new(Code::Unschedulable, plugin, reason)
    }

    pub fn unresolvable(plugin: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Status::new(Code::UnschedulableAndUnresolvable, plugin, reason)
    }

    pub fn error(plugin: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Status::new(Code::Error, plugin, reason)
    }

    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reasons.is_empty() {
            return write!(f, "{:?}", self.code);
        }
        f.write_str(&self.reasons.join(", "))
    }
}

/// Amounts of the resources the scheduler accounts for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// A number of pods.
    pub pods: i64,
}

impl Resources {
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.pods = self.pods.saturating_add(other.pods);
    }

    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.pods = self.pods.saturating_sub(other.pods);
    }

    pub fn plus(mut self, other: &Resources) -> Resources {
        self.add(other);
        self
    }

    /// From a `status.allocatable`-style map (`cpu`, `memory`, `pods`).
    pub fn from_map(map: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let get = |name: &str, f: fn(&str) -> Option<i64>| {
            map.and_then(|m| m.get(name))
                .and_then(|q| f(&q.0))
                .unwrap_or(0)
                .max(0)
        };
        Resources {
            milli_cpu: get("cpu", quantity::milli_value),
            memory: get("memory", quantity::value),
            pods: get("pods", quantity::value),
        }
    }
}

/// What the scoring plugins assume a container asks for when it asks for nothing (as
/// Kubernetes does), so that many best-effort pods still spread over nodes.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// The node-readiness taints the node lifecycle controller sets, and the scheduler's
/// readiness check honours tolerations of.
pub use crate::api::wellknown::{
    HOSTNAME_LABEL, TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE,
};

/// A pod, digested for scheduling.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub uid: Arc<str>,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub scheduler_name: String,
    /// `spec.nodeName`; empty while unbound.
    pub node_name: String,
    pub deleting: bool,
    /// Phase Succeeded or Failed: holds no resources any more.
    pub terminal: bool,
    pub priority: i32,
    /// What the pod requests (containers summed, init containers' maximum, overhead).
    pub requests: Resources,
    /// The same with the scoring defaults for containers that request nothing.
    pub non_zero_requests: Resources,
    pub node_selector: BTreeMap<String, String>,
    pub required_node_affinity: Option<RequiredNodeAffinity>,
    pub preferred_node_affinity: PreferredNodeAffinity,
    pub tolerations: Vec<Toleration>,
    /// The uid of the controller that owns the pod (its ReplicaSet, Job, ...).
    pub owner: Option<String>,
    /// The images of its containers, as the keys nodes report them under: the reference,
    /// or `sha256:HEX` for a pinned one.
    pub images: Vec<String>,
    pub affinity: AffinityTerms,
    /// The object as last seen.
    pub pod: Arc<Pod>,
}

/// A container's request for one resource: `requests`, else `limits` (the API defaults
/// requests to limits), else `None`.
fn container_request(
    c: &k8s_openapi::api::core::v1::Container,
    name: &str,
    f: fn(&str) -> Option<i64>,
) -> Option<i64> {
    let r = c.resources.as_ref()?;
    r.requests
        .as_ref()
        .and_then(|m| m.get(name))
        .or_else(|| r.limits.as_ref().and_then(|m| m.get(name)))
        .and_then(|q| f(&q.0))
        .map(|v| v.max(0))
}

/// The image key a node reports for `image`: a pinned reference is known by its digest.
pub fn image_key(image: &str) -> String {
    match image.rsplit_once("@sha256:") {
        Some((_, hex)) => format!("sha256:{}", hex.to_ascii_lowercase()),
        None => image.to_string(),
    }
}

impl PodInfo {
    pub fn new(pod: Pod) -> PodInfo {
        let pod = Arc::new(pod);
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref();
        let mut requests = Resources {
            pods: 1,
            ..Default::default()
        };
        let mut non_zero = requests;
        let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        for c in containers {
            let cpu = container_request(c, "cpu", quantity::milli_value);
            let mem = container_request(c, "memory", quantity::value);
            requests.milli_cpu += cpu.unwrap_or(0);
            requests.memory += mem.unwrap_or(0);
            non_zero.milli_cpu += cpu.unwrap_or(DEFAULT_MILLI_CPU_REQUEST);
            non_zero.memory += mem.unwrap_or(DEFAULT_MEMORY_REQUEST);
        }
        // Init containers run one at a time before the others: the pod needs the largest.
        for c in spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
        {
            let cpu = container_request(c, "cpu", quantity::milli_value).unwrap_or(0);
            let mem = container_request(c, "memory", quantity::value).unwrap_or(0);
            requests.milli_cpu = requests.milli_cpu.max(cpu);
            requests.memory = requests.memory.max(mem);
            non_zero.milli_cpu = non_zero.milli_cpu.max(cpu);
            non_zero.memory = non_zero.memory.max(mem);
        }
        let overhead = Resources {
            pods: 0,
            ..Resources::from_map(spec.and_then(|s| s.overhead.as_ref()))
        };
        requests.add(&overhead);
        non_zero.add(&overhead);
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        let images = containers
            .iter()
            .filter_map(|c| c.image.as_deref())
            .map(image_key)
            .collect();
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        PodInfo {
            uid: Arc::from(meta.uid.as_deref().unwrap_or_default()),
            affinity: AffinityTerms::of(spec).for_namespace(&namespace),
            namespace,
            name: meta.name.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            scheduler_name: spec
                .and_then(|s| s.scheduler_name.clone())
                .unwrap_or_default(),
            node_name: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            terminal: matches!(phase, Some("Succeeded" | "Failed")),
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            requests,
            non_zero_requests: non_zero,
            node_selector: spec
                .and_then(|s| s.node_selector.clone())
                .unwrap_or_default(),
            required_node_affinity: RequiredNodeAffinity::of(spec),
            preferred_node_affinity: PreferredNodeAffinity::of(spec),
            tolerations: spec.and_then(|s| s.tolerations.clone()).unwrap_or_default(),
            owner,
            images,
            pod: pod.clone(),
        }
    }

    /// Whether this scheduler places the pod: ours by name, unbound, not going away.
    pub fn wants_scheduling(&self) -> bool {
        (self.scheduler_name.is_empty() || self.scheduler_name == DEFAULT_SCHEDULER)
            && self.node_name.is_empty()
            && !self.deleting
            && !self.terminal
    }

    /// `namespace/name`, as messages name a pod.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

pub use crate::api::tolerations::{tolerated, tolerates};

/// The Ready condition of a node, as the scheduler reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// `Ready=False`: the node says it is not ready.
    NotReady,
    /// `Ready=Unknown` or no condition: nobody has heard from the node.
    Unknown,
}

/// The parts of a node that decide whether pods fit it. Compared on every node update:
/// only a change here can make a waiting pod schedulable (a heartbeat changes none).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub readiness: Readiness,
    pub allocatable: Resources,
}

impl NodeFacts {
    pub fn of(node: &Node) -> NodeFacts {
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str());
        NodeFacts {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            readiness: match ready {
                Some("True") => Readiness::Ready,
                Some("False") => Readiness::NotReady,
                _ => Readiness::Unknown,
            },
            allocatable: Resources::from_map(status.and_then(|s| s.allocatable.as_ref())),
        }
    }

    /// Whether going from `self` to `new` may let a pod fit that did not before.
    pub fn may_admit_more(&self, new: &NodeFacts) -> bool {
        self != new
    }
}

/// A node with what is on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: Arc<str>,
    /// `None` while the cache knows pods bound to a node it has no object for.
    pub node: Option<Arc<Node>>,
    pub facts: NodeFacts,
    /// Image key (reference or `sha256:HEX`) -> size in bytes.
    pub images: HashMap<String, i64>,
    /// Sum of the requests of the pods on the node (bound and assumed).
    pub requested: Resources,
    pub non_zero_requested: Resources,
    /// The pods on the node, by uid.
    pub pods: HashMap<Arc<str>, Arc<PodInfo>>,
    /// Pods on the node per owning controller uid (spreading).
    pub owners: HashMap<String, u32>,
}

impl NodeInfo {
    pub fn new(name: Arc<str>) -> NodeInfo {
        NodeInfo {
            name,
            node: None,
            facts: NodeFacts {
                labels: BTreeMap::new(),
                taints: Vec::new(),
                unschedulable: false,
                readiness: Readiness::Unknown,
                allocatable: Resources::default(),
            },
            images: HashMap::new(),
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            pods: HashMap::new(),
            owners: HashMap::new(),
        }
    }

    /// A node from its object, with no pods (tests and the cache start here).
    pub fn of(node: Node) -> NodeInfo {
        let mut info = NodeInfo::new(Arc::from(node.metadata.name.as_deref().unwrap_or("")));
        info.set_node(Arc::new(node));
        info
    }

    /// Replaces the node object, keeping the pods.
    pub fn set_node(&mut self, node: Arc<Node>) {
        self.facts = NodeFacts::of(&node);
        self.images = node_images(&node);
        self.node = Some(node);
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.non_zero_requested.add(&pod.non_zero_requests);
        if let Some(owner) = &pod.owner {
            *self.owners.entry(owner.clone()).or_default() += 1;
        }
        if let Some(old) = self.pods.insert(pod.uid.clone(), pod) {
            self.account_removed(&old);
        }
    }

    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let old = self.pods.remove(uid)?;
        self.account_removed(&old);
        Some(old)
    }

    fn account_removed(&mut self, old: &PodInfo) {
        self.requested.sub(&old.requests);
        self.non_zero_requested.sub(&old.non_zero_requests);
        if let Some(owner) = &old.owner
            && let Some(n) = self.owners.get_mut(owner)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.owners.remove(owner);
            }
        }
    }

    /// The node's value for a topology key; `kubernetes.io/hostname` falls back to the
    /// node's name for nodes registered without the label.
    pub fn topology_value(&self, key: &str) -> Option<&str> {
        match self.facts.labels.get(key) {
            Some(v) => Some(v.as_str()),
            None if key == HOSTNAME_LABEL => Some(&self.name),
            None => None,
        }
    }
}

/// `status.images` as image key -> size.
fn node_images(node: &Node) -> HashMap<String, i64> {
    let mut out = HashMap::new();
    for image in node
        .status
        .as_ref()
        .and_then(|s| s.images.as_ref())
        .into_iter()
        .flatten()
    {
        let size = image.size_bytes.unwrap_or(0).max(0);
        for name in image.names.iter().flatten() {
            out.insert(name.clone(), size);
        }
    }
    out
}

/// What plugins share about the whole cluster during one cycle (Kubernetes' snapshot
/// and CycleState): computed once per pod, read for every node.
pub struct Cycle<'a> {
    pub pod: &'a PodInfo,
    /// Nodes with an object (what `0/N nodes` counts).
    pub num_nodes: usize,
    /// Image key -> how many nodes hold it (image locality's spread factor).
    pub image_nodes: &'a HashMap<String, usize>,
    /// Pod (anti-)affinity, precomputed against every pod in the cluster.
    pub affinity: AffinityState,
    /// The pod's persistent volumes (the VolumeBinding pre-filter).
    pub volumes: super::plugins::volume_binding::VolumeState,
}

/// A filter plugin: a name and a pure function.
#[derive(Clone, Copy)]
pub struct FilterPlugin {
    pub name: &'static str,
    pub filter: fn(&Cycle, &NodeInfo) -> Status,
}

/// A score plugin: raw score per node, then normalization of all feasible nodes' scores
/// to `0..=MAX_NODE_SCORE`, then a weight.
#[derive(Clone, Copy)]
pub struct ScorePlugin {
    pub name: &'static str,
    pub weight: i64,
    pub score: fn(&Cycle, &NodeInfo) -> i64,
    pub normalize: fn(&mut [i64]),
}

impl fmt::Debug for FilterPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl fmt::Debug for ScorePlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.name, self.weight)
    }
}

/// No normalization: the plugin already scores in `0..=MAX_NODE_SCORE`.
pub fn keep_scores(_: &mut [i64]) {}

/// Kubernetes' `DefaultNormalizeScore`: scale so the highest raw score becomes
/// [`MAX_NODE_SCORE`]; with `reverse`, the lowest does (fewer is better).
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max <= 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let scaled = MAX_NODE_SCORE * (*s).max(0) / max;
        *s = if reverse {
            MAX_NODE_SCORE - scaled
        } else {
            scaled
        };
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders for plugin tests.
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};
    use serde_json::json;

    /// A Ready node with `cpu` millicores, `memory` bytes, room for `pods`.
    pub fn node(name: &str, milli_cpu: i64, memory: i64, pods: i64) -> Node {
        Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(HOSTNAME_LABEL.into(), name.into())])),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([
                    ("cpu".into(), Quantity(format!("{milli_cpu}m"))),
                    ("memory".into(), Quantity(memory.to_string())),
                    ("pods".into(), Quantity(pods.to_string())),
                ])),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    pub fn node_info(name: &str, milli_cpu: i64, memory: i64, pods: i64) -> NodeInfo {
        NodeInfo::of(node(name, milli_cpu, memory, pods))
    }

    /// A pod from its JSON `spec` (containers default to one with no requests).
    pub fn pod_with(name: &str, labels: serde_json::Value, spec: serde_json::Value) -> PodInfo {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "app", "image": "app.wasm"}]);
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "labels": labels},
            "spec": spec,
        }))
        .expect("a valid pod");
        PodInfo::new(pod)
    }

    pub fn pod(name: &str) -> PodInfo {
        pod_with(name, json!({}), json!({}))
    }

    /// A pod whose one container requests `milli_cpu` and `memory` bytes.
    pub fn pod_requesting(name: &str, milli_cpu: i64, memory: i64) -> PodInfo {
        pod_with(
            name,
            json!({}),
            json!({"containers": [{"name": "app", "image": "app.wasm",
                "resources": {"requests": {"cpu": format!("{milli_cpu}m"), "memory": memory.to_string()}}}]}),
        )
    }

    /// A cycle for `pod` with no cluster-wide state.
    pub fn cycle<'a>(pod: &'a PodInfo, images: &'a HashMap<String, usize>) -> Cycle<'a> {
        Cycle {
            pod,
            num_nodes: 1,
            image_nodes: images,
            affinity: AffinityState::default(),
            volumes: Default::default(),
        }
    }

    pub fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: (!value.is_empty()).then(|| value.into()),
            effect: effect.into(),
            time_added: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_requests_sum_containers_take_the_largest_init_and_default_for_scoring() {
        let p = pod_with(
            "p",
            json!({}),
            json!({
                "containers": [
                    {"name": "a", "image": "a.wasm", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                    {"name": "b", "image": "b.wasm@sha256:ABCD", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                    {"name": "c", "image": "c.wasm"}
                ],
                "initContainers": [{"name": "i", "image": "i.wasm", "resources": {"requests": {"cpu": "2"}}}],
                "overhead": {"memory": "1Mi"}
            }),
        );
        assert_eq!(
            p.requests,
            Resources {
                milli_cpu: 2000,
                memory: (64 << 20) + (1 << 30) + (1 << 20),
                pods: 1
            }
        );
        assert_eq!(p.non_zero_requests.milli_cpu, 2000);
        assert_eq!(
            p.non_zero_requests.memory,
            (64 << 20) + (1 << 30) + DEFAULT_MEMORY_REQUEST + (1 << 20)
        );
        assert_eq!(p.images, vec!["a.wasm", "sha256:abcd", "c.wasm"]);
    }

    #[test]
    fn only_unbound_live_pods_of_this_scheduler_are_scheduled() {
        assert!(pod("p").wants_scheduling());
        assert!(
            pod_with("p", json!({}), json!({"schedulerName": DEFAULT_SCHEDULER}))
                .wants_scheduling()
        );
        assert!(!pod_with("p", json!({}), json!({"schedulerName": "other"})).wants_scheduling());
        assert!(!pod_with("p", json!({}), json!({"nodeName": "n1"})).wants_scheduling());
    }

    #[test]
    fn tolerations_match_like_kubernetes() {
        let t = taint("k", "v", "NoSchedule");
        let tol =
            |v: serde_json::Value| -> Toleration { serde_json::from_value(v).expect("toleration") };
        assert!(tolerates(&tol(json!({"key": "k", "value": "v"})), &t));
        assert!(tolerates(
            &tol(json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"})),
            &t
        ));
        assert!(!tolerates(&tol(json!({"key": "k", "value": "w"})), &t));
        assert!(!tolerates(
            &tol(json!({"key": "k", "operator": "Exists", "effect": "NoExecute"})),
            &t
        ));
        assert!(tolerates(
            &tol(json!({"key": "k", "operator": "Exists"})),
            &t
        ));
        assert!(
            tolerates(&tol(json!({"operator": "Exists"})), &t),
            "empty key + Exists tolerates all"
        );
        assert!(!tolerates(
            &tol(json!({"key": "other", "operator": "Exists"})),
            &t
        ));
    }

    #[test]
    fn node_facts_read_readiness_and_allocatable() {
        let n = node_info("n1", 2000, 4 << 30, 110);
        assert_eq!(n.facts.readiness, Readiness::Ready);
        assert_eq!(
            n.facts.allocatable,
            Resources {
                milli_cpu: 2000,
                memory: 4 << 30,
                pods: 110
            }
        );
        let mut raw = node("n1", 2000, 4 << 30, 110);
        raw.status = None;
        assert_eq!(NodeFacts::of(&raw).readiness, Readiness::Unknown);
    }

    #[test]
    fn node_accounts_pods_in_and_out() {
        let mut n = node_info("n1", 2000, 4 << 30, 110);
        let p = Arc::new(pod_requesting("p", 500, 1 << 30));
        n.add_pod(p.clone());
        n.add_pod(p.clone());
        assert_eq!(n.requested.milli_cpu, 500, "re-adding replaces");
        assert_eq!(n.requested.pods, 1);
        n.remove_pod(&p.uid);
        assert_eq!(n.requested, Resources::default());
        assert!(n.remove_pod(&p.uid).is_none());
    }

    #[test]
    fn normalization_scales_to_the_maximum() {
        let mut s = [0, 5, 10];
        default_normalize(&mut s, false);
        assert_eq!(s, [0, 50, 100]);
        let mut s = [0, 5, 10];
        default_normalize(&mut s, true);
        assert_eq!(s, [100, 50, 0]);
        let mut s = [0, 0];
        default_normalize(&mut s, true);
        assert_eq!(s, [100, 100]);
    }
}
