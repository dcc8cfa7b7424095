//! The scheduler's cache: every node, and every pod that holds resources on one.
//!
//! Why its own cache and not a plain reflector store: a decision must see the decisions
//! made just before it. When the scheduler picks a node it **assumes** the pod there at
//! once ([`Cache::assume`]), before the binding is even sent, so the next pod (a
//! microsecond later) sees the node's resources taken; the binding then runs concurrently
//! with more decisions. When the pod comes back through the watch bound to its node the
//! assumption is confirmed ([`Cache::add_pod`]); if the binding fails it is forgotten
//! ([`Cache::forget`]) and the resources free up. Kubernetes' scheduler cache works the
//! same way.
//!
//! Nodes live in a `Vec` (scanned for every pod, so contiguous) with a name index. A node
//! deleted while pods are still bound to it stays as a node without an object (which is
//! never offered to a pod) until those pods go, so the accounting stays right if it
//! comes back.

use super::framework::{NodeInfo, PodInfo};
use k8s_openapi::api::core::v1::Node;
use std::collections::HashMap;
use std::sync::Arc;

/// Where a pod is and whether that is only our assumption.
#[derive(Debug, Clone)]
struct Placement {
    node: Arc<str>,
    assumed: bool,
}

#[derive(Debug, Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<Arc<str>, usize>,
    /// Nodes with an object.
    num_nodes: usize,
    pods: HashMap<Arc<str>, Placement>,
    /// Image key -> number of nodes reporting it.
    image_nodes: HashMap<String, usize>,
    /// Pods with required anti-affinity terms -> their node.
    anti_affinity_pods: HashMap<Arc<str>, Arc<str>>,
    /// Claims, volumes and classes, for VolumeBinding.
    pub volumes: super::plugins::volume_binding::Volumes,
}

impl Cache {
    pub fn new() -> Cache {
        Cache::default()
    }

    /// Every node slot, including nodes without an object (skip those: `node.is_none()`).
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// How many nodes have an object: what `0/N nodes are available` counts.
    pub fn num_nodes(&self) -> usize {
        self.num_nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    pub fn image_nodes(&self) -> &HashMap<String, usize> {
        &self.image_nodes
    }

    /// The names of the nodes with an object.
    pub fn node_names(&self) -> Vec<Arc<str>> {
        self.nodes
            .iter()
            .filter(|n| n.node.is_some())
            .map(|n| n.name.clone())
            .collect()
    }

    /// Every placed pod (bound or assumed) with its node.
    pub fn placed_pods(&self) -> impl Iterator<Item = (&PodInfo, &NodeInfo)> {
        self.nodes
            .iter()
            .flat_map(|n| n.pods.values().map(move |p| (p.as_ref(), n)))
    }

    /// The placed pods that have required anti-affinity terms, with their node.
    pub fn anti_affinity_pods(&self) -> impl Iterator<Item = (&PodInfo, &NodeInfo)> {
        self.anti_affinity_pods.iter().filter_map(|(uid, node)| {
            let n = self.node(node)?;
            Some((n.pods.get(uid)?.as_ref(), n))
        })
    }

    fn slot(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let name: Arc<str> = Arc::from(name);
        self.nodes.push(NodeInfo::new(name.clone()));
        self.index.insert(name, self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    fn count_images(&mut self, node: usize, delta: isize) {
        for key in self.nodes[node].images.keys() {
            let n = self.image_nodes.entry(key.clone()).or_default();
            *n = n.saturating_add_signed(delta);
            if *n == 0 {
                self.image_nodes.remove(key);
            }
        }
    }

    /// Adds or updates a node. Answers whether this may let a waiting pod fit: a new
    /// node, or a change in what filters read (not a heartbeat).
    pub fn upsert_node(&mut self, node: Node) -> bool {
        let Some(name) = node.metadata.name.clone() else {
            return false;
        };
        let i = self.slot(&name);
        let was_known = self.nodes[i].node.is_some();
        let before = was_known.then(|| self.nodes[i].facts.clone());
        if was_known {
            self.count_images(i, -1);
        } else {
            self.num_nodes += 1;
        }
        self.nodes[i].set_node(Arc::new(node));
        self.count_images(i, 1);
        match before {
            None => true,
            Some(before) => before.may_admit_more(&self.nodes[i].facts),
        }
    }

    /// Removes a node's object; its pods stay accounted until they go.
    pub fn remove_node(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else {
            return;
        };
        if self.nodes[i].node.is_some() {
            self.count_images(i, -1);
            self.num_nodes -= 1;
            self.nodes[i].node = None;
            self.nodes[i].images.clear();
        }
        self.drop_if_empty(i);
    }

    fn drop_if_empty(&mut self, i: usize) {
        if self.nodes[i].node.is_some() || !self.nodes[i].pods.is_empty() {
            return;
        }
        let removed = self.nodes.swap_remove(i);
        self.index.remove(&removed.name);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
    }

    fn place(&mut self, pod: Arc<PodInfo>, node: &str, assumed: bool) {
        if let Some(old) = self.pods.get(&pod.uid).cloned()
            && *old.node != *node
        {
            self.unplace(&pod.uid);
        }
        let i = self.slot(node);
        let node_name = self.nodes[i].name.clone();
        if !pod.affinity.anti_affinity.is_empty() {
            self.anti_affinity_pods
                .insert(pod.uid.clone(), node_name.clone());
        }
        self.pods.insert(
            pod.uid.clone(),
            Placement {
                node: node_name,
                assumed,
            },
        );
        self.nodes[i].add_pod(pod);
    }

    fn unplace(&mut self, uid: &str) -> bool {
        let Some(placement) = self.pods.remove(uid) else {
            return false;
        };
        self.anti_affinity_pods.remove(uid);
        if let Some(&i) = self.index.get(&placement.node) {
            self.nodes[i].remove_pod(uid);
            self.drop_if_empty(i);
        }
        true
    }

    /// A pod bound to a node, as the watch reports it: added, updated, or an assumption
    /// confirmed (moved if it was bound elsewhere than assumed).
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        let node = pod.node_name.clone();
        if node.is_empty() {
            return;
        }
        self.place(pod, &node, false);
    }

    /// A pod that holds nothing any more (deleted, finished). Answers whether it held
    /// resources on a node.
    pub fn remove_pod(&mut self, uid: &str) -> bool {
        self.unplace(uid)
    }

    /// Places `pod` on `node` before its binding is confirmed.
    pub fn assume(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.place(pod, node, true);
    }

    /// Undoes [`Cache::assume`] (the binding failed); a confirmed pod stays.
    pub fn forget(&mut self, uid: &str) {
        if self.pods.get(uid).is_some_and(|p| p.assumed) {
            self.unplace(uid);
        }
    }

    pub fn is_assumed(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|p| p.assumed)
    }

    pub fn contains_pod(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    /// The uids of the pods placed and confirmed (what a relist must see again).
    pub fn confirmed_pods(&self) -> Vec<Arc<str>> {
        self.pods
            .iter()
            .filter(|(_, p)| !p.assumed)
            .map(|(uid, _)| uid.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::testing::*;
    use serde_json::json;

    fn bound(name: &str, node: &str, milli_cpu: i64) -> Arc<PodInfo> {
        Arc::new(pod_with(
            name,
            json!({}),
            json!({"nodeName": node, "containers": [{"name": "a", "image": "a.wasm",
                "resources": {"requests": {"cpu": format!("{milli_cpu}m")}}}]}),
        ))
    }

    #[test]
    fn assume_confirm_forget() {
        let mut c = Cache::new();
        assert!(c.upsert_node(node("n1", 2000, 1 << 30, 10)));
        assert!(c.upsert_node(node("n2", 2000, 1 << 30, 10)));
        let p = Arc::new(pod_requesting("p", 500, 0));
        c.assume(p.clone(), "n1");
        assert!(c.is_assumed(&p.uid));
        assert_eq!(c.node("n1").map(|n| n.requested.milli_cpu), Some(500));
        // The binding failed: the resources come back.
        c.forget(&p.uid);
        assert_eq!(c.node("n1").map(|n| n.requested.milli_cpu), Some(0));
        // Assumed on n1, but the watch says n2 (someone else bound it): it moves.
        c.assume(p.clone(), "n1");
        c.add_pod(bound("p", "n2", 500));
        assert!(!c.is_assumed(&p.uid));
        assert_eq!(c.node("n1").map(|n| n.requested.milli_cpu), Some(0));
        assert_eq!(c.node("n2").map(|n| n.requested.milli_cpu), Some(500));
        c.forget(&p.uid);
        assert_eq!(
            c.node("n2").map(|n| n.requested.milli_cpu),
            Some(500),
            "confirmed pods stay"
        );
        assert!(c.remove_pod(&p.uid));
        assert!(!c.remove_pod(&p.uid));
    }

    #[test]
    fn heartbeats_do_not_count_as_changes_but_capacity_does() {
        let mut c = Cache::new();
        let mut n = node("n1", 2000, 1 << 30, 10);
        assert!(c.upsert_node(n.clone()));
        if let Some(cond) = n
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
            .and_then(|c| c.first_mut())
        {
            cond.message = Some("heartbeat".into());
        }
        assert!(!c.upsert_node(n.clone()));
        assert!(c.upsert_node(node("n1", 4000, 1 << 30, 10)));
    }

    #[test]
    fn nodes_removed_with_pods_linger_without_an_object() {
        let mut c = Cache::new();
        c.upsert_node(node("n1", 2000, 1 << 30, 10));
        c.upsert_node(node("n2", 2000, 1 << 30, 10));
        c.add_pod(bound("a", "n1", 100));
        c.remove_node("n1");
        assert_eq!(c.num_nodes(), 1);
        assert_eq!(c.node_names().len(), 1);
        assert!(c.node("n1").is_some_and(|n| n.node.is_none()));
        c.remove_pod("uid-a");
        assert!(c.node("n1").is_none());
        assert!(c.node("n2").is_some(), "the index survives the swap-remove");
        c.remove_node("n2");
        assert!(c.nodes().is_empty());
    }

    #[test]
    fn images_are_counted_per_node() {
        let mut c = Cache::new();
        let mut n = node("n1", 2000, 1 << 30, 10);
        if let Some(s) = n.status.as_mut() {
            s.images = Some(vec![k8s_openapi::api::core::v1::ContainerImage {
                names: Some(vec!["a.wasm".into(), "sha256:00".into()]),
                size_bytes: Some(10),
            }]);
        }
        c.upsert_node(n.clone());
        c.upsert_node(n.clone());
        let mut n2 = n.clone();
        n2.metadata.name = Some("n2".into());
        c.upsert_node(n2);
        assert_eq!(c.image_nodes().get("a.wasm"), Some(&2));
        c.remove_node("n1");
        assert_eq!(c.image_nodes().get("sha256:00"), Some(&1));
    }
}
