//! VolumeBinding: a pod that uses PersistentVolumeClaims goes only where its volumes are
//! or can be made.
//!
//! - A claim that is bound (or names its volume) pins the pod to the nodes its
//!   PersistentVolume's required node affinity allows (a local volume is a directory on
//!   one node): elsewhere `node(s) had volume node affinity conflict`.
//! - A `WaitForFirstConsumer` claim not yet bound fits any node that can get it: with the
//!   `wharf.dev/local-path` provisioner, a node that publishes a local-path root; with
//!   another class, a node where an available volume that fits the claim lives. The
//!   scheduler then records the chosen node on the claim
//!   (`volume.kubernetes.io/selected-node`, [`claims_to_select`]) before it binds the pod,
//!   and the PV controller provisions or binds there; a claim that already carries a
//!   selected node fits only that node. Elsewhere: `node(s) didn't find available
//!   persistent volumes to bind`.
//! - The pre-filter ([`pre_filter`]) turns away what no node can change, with Kubernetes'
//!   words: a claim that does not exist (`persistentvolumeclaim "x" not found`), is being
//!   deleted, or is an unbound claim of an `Immediate` class (`pod has unbound immediate
//!   PersistentVolumeClaims`: it waits for the PV controller).
//!
//! Kubernetes also waits in PreBind until the controller finished binding; wharf binds
//! the pod at once and its node waits for the claim to be bound before it mounts it.
//! The claims, volumes and classes come from the scheduler's own watches ([`Volumes`]).

use super::node_affinity::{RequiredNodeAffinity, Term};
use crate::api::storage::{self, LOCAL_PATH_PROVISIONER, LOCAL_PATH_ROOT_ANNOTATION};
use crate::scheduler::framework::{Cycle, FilterPlugin, NodeInfo, PodInfo, Status};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use std::collections::HashMap;
use std::sync::Arc;

pub const NAME: &str = "VolumeBinding";
pub const ERR_NO_VOLUME: &str = "node(s) didn't find available persistent volumes to bind";
pub const ERR_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const ERR_UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";
pub const PLUGIN: FilterPlugin = FilterPlugin { name: NAME, filter };

/// The claims, volumes and classes the scheduler knows, kept by its watches.
#[derive(Debug, Clone, Default)]
pub struct Volumes {
    claims: HashMap<(String, String), Arc<PersistentVolumeClaim>>,
    volumes: HashMap<String, Arc<PersistentVolume>>,
    classes: HashMap<String, Arc<StorageClass>>,
}

/// A change the watches saw.
#[derive(Debug, Clone)]
pub enum VolumeUpdate {
    Claim(Arc<PersistentVolumeClaim>),
    ClaimGone(Arc<PersistentVolumeClaim>),
    Volume(Arc<PersistentVolume>),
    VolumeGone(Arc<PersistentVolume>),
    Class(Arc<StorageClass>),
    ClassGone(Arc<StorageClass>),
    /// A watch starts over (its list follows): forget what it said so far, so objects
    /// deleted while it was away do not linger.
    Relist(Relisted),
}

/// Which watch starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relisted {
    Claims,
    Volumes,
    Classes,
}

fn claim_key(c: &PersistentVolumeClaim) -> (String, String) {
    (
        c.metadata.namespace.clone().unwrap_or_default(),
        c.metadata.name.clone().unwrap_or_default(),
    )
}

impl Volumes {
    pub fn apply(&mut self, update: VolumeUpdate) {
        let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.name.clone().unwrap_or_default()
        };
        match update {
            VolumeUpdate::Claim(c) => {
                self.claims.insert(claim_key(&c), c);
            }
            VolumeUpdate::ClaimGone(c) => {
                self.claims.remove(&claim_key(&c));
            }
            VolumeUpdate::Volume(v) => {
                self.volumes.insert(name(&v.metadata), v);
            }
            VolumeUpdate::VolumeGone(v) => {
                self.volumes.remove(&name(&v.metadata));
            }
            VolumeUpdate::Class(c) => {
                self.classes.insert(name(&c.metadata), c);
            }
            VolumeUpdate::ClassGone(c) => {
                self.classes.remove(&name(&c.metadata));
            }
            VolumeUpdate::Relist(Relisted::Claims) => self.claims.clear(),
            VolumeUpdate::Relist(Relisted::Volumes) => self.volumes.clear(),
            VolumeUpdate::Relist(Relisted::Classes) => self.classes.clear(),
        }
    }

    fn claim(&self, ns: &str, name: &str) -> Option<&PersistentVolumeClaim> {
        self.claims
            .get(&(ns.to_string(), name.to_string()))
            .map(|c| &**c)
    }
}

/// What one unbound delayed claim needs of a node.
#[derive(Debug, Clone)]
enum Delayed {
    /// The scheduler chose this node for the claim already.
    Selected(String),
    /// The local-path provisioner makes it on any node that publishes a root.
    Provision,
    /// One of these available volumes (by their node affinity; `None`: any node).
    Static(Vec<Option<RequiredNodeAffinity>>),
}

/// The pod's volumes, digested once per scheduling cycle.
#[derive(Debug, Clone, Default)]
pub struct VolumeState {
    /// The node affinity of each bound volume.
    pinned: Vec<RequiredNodeAffinity>,
    delayed: Vec<Delayed>,
}

fn affinity_of(pv: &PersistentVolume) -> Option<RequiredNodeAffinity> {
    let selector = pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?;
    Some(RequiredNodeAffinity(
        selector
            .node_selector_terms
            .iter()
            .map(Term::parse)
            .collect(),
    ))
}

fn storage_of(
    map: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
) -> i64 {
    map.and_then(|m| m.get("storage"))
        .and_then(|q| crate::api::quantity::value(&q.0))
        .unwrap_or(0)
}

/// Whether the available volume `pv` could take `pvc` (class, size, modes).
fn could_bind(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(spec) = pv.spec.as_ref() else {
        return false;
    };
    let wanted = pvc.spec.as_ref();
    let modes = spec.access_modes.clone().unwrap_or_default();
    spec.claim_ref.is_none()
        && pv.metadata.deletion_timestamp.is_none()
        && spec.storage_class_name.as_deref().unwrap_or("") == storage::claim_class(pvc)
        && storage_of(spec.capacity.as_ref())
            >= storage_of(
                wanted
                    .and_then(|s| s.resources.as_ref())
                    .and_then(|r| r.requests.as_ref()),
            )
        && wanted
            .and_then(|s| s.access_modes.as_ref())
            .into_iter()
            .flatten()
            .all(|m| modes.contains(m))
}

/// The pod's volumes, or why no node can take the pod (unresolvable).
pub fn pre_filter(pod: &PodInfo, volumes: &Volumes) -> Result<VolumeState, Status> {
    let mut state = VolumeState::default();
    for name in storage::pod_claims(&pod.pod) {
        let Some(pvc) = volumes.claim(&pod.namespace, name) else {
            return Err(Status::unresolvable(
                NAME,
                format!("persistentvolumeclaim \"{name}\" not found"),
            ));
        };
        if pvc.metadata.deletion_timestamp.is_some() {
            return Err(Status::unresolvable(
                NAME,
                format!("persistentvolumeclaim \"{name}\" is being deleted"),
            ));
        }
        if let Some(volume) = storage::claim_volume(pvc) {
            match volumes.volumes.get(volume) {
                Some(pv) => state.pinned.extend(affinity_of(pv)),
                None => {
                    return Err(Status::unresolvable(
                        NAME,
                        format!(
                            "pvc {}/{name}: bound to non-existent pv {volume}",
                            pod.namespace
                        ),
                    ));
                }
            }
            continue;
        }
        let class = volumes.classes.get(storage::claim_class(pvc));
        if !class.is_some_and(|c| storage::waits_for_consumer(c)) {
            return Err(Status::unresolvable(NAME, ERR_UNBOUND_IMMEDIATE));
        }
        let delayed = if let Some(node) = storage::selected_node(pvc) {
            Delayed::Selected(node.to_string())
        } else if class.is_some_and(|c| c.provisioner == LOCAL_PATH_PROVISIONER) {
            Delayed::Provision
        } else {
            Delayed::Static(
                volumes
                    .volumes
                    .values()
                    .filter(|pv| could_bind(pv, pvc))
                    .map(|pv| affinity_of(pv))
                    .collect(),
            )
        };
        state.delayed.push(delayed);
    }
    Ok(state)
}

/// Whether the pod's volumes allow `node`.
pub fn fits(state: &VolumeState, node: &NodeInfo) -> Status {
    if !state.pinned.iter().all(|a| a.matches(node)) {
        return Status::unresolvable(NAME, ERR_CONFLICT);
    }
    let provisions = || {
        node.node
            .as_ref()
            .and_then(|n| n.metadata.annotations.as_ref())
            .is_some_and(|a| a.contains_key(LOCAL_PATH_ROOT_ANNOTATION))
    };
    let ok = state.delayed.iter().all(|d| match d {
        Delayed::Selected(n) => *n == *node.name,
        Delayed::Provision => provisions(),
        Delayed::Static(candidates) => candidates
            .iter()
            .any(|a| a.as_ref().is_none_or(|a| a.matches(node))),
    });
    if ok {
        Status::success()
    } else {
        Status::unresolvable(NAME, ERR_NO_VOLUME)
    }
}

fn filter(cycle: &Cycle, node: &NodeInfo) -> Status {
    fits(&cycle.volumes, node)
}

/// The pod's unbound `WaitForFirstConsumer` claims that have no selected node yet: the
/// scheduler annotates them with the node it chose before it binds the pod.
pub fn claims_to_select(pod: &PodInfo, volumes: &Volumes) -> Vec<String> {
    storage::pod_claims(&pod.pod)
        .into_iter()
        .filter(|name| {
            volumes.claim(&pod.namespace, name).is_some_and(|pvc| {
                storage::claim_volume(pvc).is_none()
                    && storage::selected_node(pvc).is_none()
                    && volumes
                        .classes
                        .get(storage::claim_class(pvc))
                        .is_some_and(|c| storage::waits_for_consumer(c))
            })
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::scheduler::framework::Code;
    use crate::scheduler::framework::testing::*;
    use serde_json::{Value, json};

    fn pod_using(claim: &str) -> PodInfo {
        pod_with(
            "p",
            json!({}),
            json!({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]}),
        )
    }

    fn claim(name: &str, extra: Value) -> VolumeUpdate {
        let mut v = json!({"metadata": {"name": name, "namespace": "default", "uid": "u"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                     "resources": {"requests": {"storage": "1Gi"}}}});
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                match (m.get_mut(k), x) {
                    (Some(Value::Object(inner)), Value::Object(more)) => inner.extend(more.clone()),
                    _ => {
                        m.insert(k.clone(), x.clone());
                    }
                }
            }
        }
        VolumeUpdate::Claim(Arc::new(serde_json::from_value(v).unwrap()))
    }

    fn volumes(updates: Vec<VolumeUpdate>) -> Volumes {
        let mut v = Volumes::default();
        v.apply(VolumeUpdate::Class(Arc::new(
            crate::controllers::persistentvolume::local_path_class(),
        )));
        for u in updates {
            v.apply(u);
        }
        v
    }

    fn provisioning_node(name: &str) -> NodeInfo {
        let mut n = node(name, 1000, 1 << 30, 10);
        n.metadata.annotations =
            Some([(LOCAL_PATH_ROOT_ANNOTATION.to_string(), format!("/d/{name}"))].into());
        NodeInfo::of(n)
    }

    #[test]
    fn a_missing_claim_is_refused_before_any_node() {
        let err = pre_filter(&pod_using("data"), &volumes(vec![])).unwrap_err();
        assert_eq!(err.code, Code::UnschedulableAndUnresolvable);
        assert_eq!(err.reasons, ["persistentvolumeclaim \"data\" not found"]);
        let immediate = claim("data", json!({"spec": {"storageClassName": "fast"}}));
        let err = pre_filter(&pod_using("data"), &volumes(vec![immediate])).unwrap_err();
        assert_eq!(err.reasons, [ERR_UNBOUND_IMMEDIATE]);
    }

    #[test]
    fn a_delayed_claim_fits_nodes_that_can_provision_then_its_selected_node() {
        let v = volumes(vec![claim("data", json!({}))]);
        let pod = pod_using("data");
        let state = pre_filter(&pod, &v).unwrap();
        assert!(fits(&state, &provisioning_node("n1")).is_success());
        let plain = node_info("n2", 1000, 1 << 30, 10);
        assert_eq!(fits(&state, &plain).reasons, [ERR_NO_VOLUME]);
        assert_eq!(claims_to_select(&pod, &v), ["data"]);

        let v = volumes(vec![claim(
            "data",
            json!({"metadata": {"annotations": {storage::SELECTED_NODE_ANNOTATION: "n3"}}}),
        )]);
        let state = pre_filter(&pod, &v).unwrap();
        assert!(!fits(&state, &provisioning_node("n1")).is_success());
        assert!(fits(&state, &provisioning_node("n3")).is_success());
        assert!(claims_to_select(&pod, &v).is_empty());
    }

    #[test]
    fn a_bound_claim_pins_the_pod_to_its_volume_node() {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pv1"},
            "spec": {"local": {"path": "/x"}, "nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n2"]}]}]}}}
        }))
        .unwrap();
        let v = volumes(vec![
            claim("data", json!({"spec": {"volumeName": "pv1"}})),
            VolumeUpdate::Volume(Arc::new(pv)),
        ]);
        let state = pre_filter(&pod_using("data"), &v).unwrap();
        let n1 = provisioning_node("n1");
        assert_eq!(fits(&state, &n1).reasons, [ERR_CONFLICT]);
        assert!(fits(&state, &provisioning_node("n2")).is_success());
        assert!(claims_to_select(&pod_using("data"), &v).is_empty());
    }

    #[test]
    fn a_relist_forgets_what_was_deleted_meanwhile() {
        let mut v = volumes(vec![claim("data", json!({}))]);
        assert!(pre_filter(&pod_using("data"), &v).is_ok());
        v.apply(VolumeUpdate::Relist(Relisted::Claims));
        assert!(pre_filter(&pod_using("data"), &v).is_err());
    }

    #[test]
    fn pods_without_claims_fit_anywhere() {
        let state = pre_filter(&pod("p"), &Volumes::default()).unwrap();
        assert!(fits(&state, &node_info("n", 1000, 1 << 30, 10)).is_success());
    }
}
