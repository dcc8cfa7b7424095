//! Persistent storage vocabulary shared by the API server, the PV controller, the
//! scheduler and the nodes: the names Kubernetes gives to storage annotations and
//! phases, and small pure readings of PersistentVolumes and claims.
//!
//! Why one place: the scheduler, the controller and the node each decide something from
//! the same fields (which node a volume is pinned to, whether a claim is bound, which
//! class applies); reading them three ways would let them disagree.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;

/// The annotation that makes a StorageClass the default for claims that name none.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// The node the scheduler picked for the first pod of a `WaitForFirstConsumer` claim.
pub const SELECTED_NODE_ANNOTATION: &str = "volume.kubernetes.io/selected-node";
/// The provisioner a claim waits for (set by the PV controller, as Kubernetes does).
pub const PROVISIONER_ANNOTATION: &str = "volume.kubernetes.io/storage-provisioner";
/// Set on a claim the PV controller bound (as Kubernetes' `pv.kubernetes.io/bind-completed`).
pub const BIND_COMPLETED_ANNOTATION: &str = "pv.kubernetes.io/bind-completed";
/// Set on a PersistentVolume a provisioner made, naming it.
pub const PROVISIONED_BY_ANNOTATION: &str = "pv.kubernetes.io/provisioned-by";

/// The finalizer that keeps a claim while a pod uses it (Kubernetes' storage object in
/// use protection): the PV controller removes it once no pod does.
pub const PVC_PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";

/// The built-in class and its provisioner: a directory in the chosen node's data dir.
pub const LOCAL_PATH_CLASS: &str = "local-path";
pub const LOCAL_PATH_PROVISIONER: &str = "wharf.dev/local-path";
/// The Node annotation with the directory under which the node keeps local-path volumes
/// (its data dir's `storage/`): the provisioner puts volumes there.
pub const LOCAL_PATH_ROOT_ANNOTATION: &str = "wharf.dev/local-path-root";

pub const WAIT_FOR_FIRST_CONSUMER: &str = "WaitForFirstConsumer";

/// `kubectl get` abbreviations of access modes.
pub fn access_mode_short(mode: &str) -> &str {
    match mode {
        "ReadWriteOnce" => "RWO",
        "ReadOnlyMany" => "ROX",
        "ReadWriteMany" => "RWX",
        "ReadWriteOncePod" => "RWOP",
        other => other,
    }
}

/// The class a claim asks for: its `storageClassName` (empty is "no class").
pub fn claim_class(pvc: &PersistentVolumeClaim) -> &str {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

/// The volume a claim is bound to (`spec.volumeName`), if any.
pub fn claim_volume(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty())
}

/// The node the scheduler selected for a delayed-binding claim.
pub fn selected_node(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SELECTED_NODE_ANNOTATION))
        .map(String::as_str)
        .filter(|n| !n.is_empty())
}

/// Whether the claim's phase is `Bound`.
pub fn claim_bound(pvc: &PersistentVolumeClaim) -> bool {
    pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

/// The node a volume is pinned to by required node affinity on the hostname label, if it
/// is (the only affinity local volumes need).
pub fn volume_node(pv: &PersistentVolume) -> Option<&str> {
    let terms = &pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_expressions.iter().flatten().find_map(|e| {
            (e.key == super::wellknown::HOSTNAME_LABEL && e.operator == "In")
                .then(|| e.values.as_ref()?.first().map(String::as_str))
                .flatten()
        })
    })
}

/// The directory of a local or hostPath volume.
pub fn volume_path(pv: &PersistentVolume) -> Option<&str> {
    let spec = pv.spec.as_ref()?;
    spec.local
        .as_ref()
        .map(|l| l.path.as_str())
        .or_else(|| spec.host_path.as_ref().map(|h| h.path.as_str()))
}

/// The claim a volume is bound or reserved to: (namespace, name, uid).
pub fn volume_claim(pv: &PersistentVolume) -> Option<(&str, &str, Option<&str>)> {
    let r = pv.spec.as_ref()?.claim_ref.as_ref()?;
    Some((
        r.namespace.as_deref().unwrap_or(""),
        r.name.as_deref()?,
        r.uid.as_deref().filter(|u| !u.is_empty()),
    ))
}

/// Whether a class is marked as the default.
pub fn is_default_class(sc: &StorageClass) -> bool {
    sc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// Whether a class binds only once a pod uses the claim.
pub fn waits_for_consumer(sc: &StorageClass) -> bool {
    sc.volume_binding_mode.as_deref() == Some(WAIT_FOR_FIRST_CONSUMER)
}

/// The claim names of a pod's `persistentVolumeClaim` volumes, in order.
pub fn pod_claims(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<&str> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_a_local_volume() {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pv1"},
            "spec": {"local": {"path": "/d/pv1"}, "claimRef": {"namespace": "ns", "name": "c", "uid": "u"},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n2"]}]}]}}}
        }))
        .unwrap();
        assert_eq!(volume_node(&pv), Some("n2"));
        assert_eq!(volume_path(&pv), Some("/d/pv1"));
        assert_eq!(volume_claim(&pv), Some(("ns", "c", Some("u"))));
        assert_eq!(access_mode_short("ReadWriteOnce"), "RWO");
    }
}
