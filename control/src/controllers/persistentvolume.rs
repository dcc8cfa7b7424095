//! The PersistentVolume controller: binds claims to volumes, provisions `local-path`
//! volumes, and reclaims volumes whose claim is gone.
//!
//! - **One decision over the whole picture.** Binding is a matching problem between all
//!   claims and all volumes (a claim takes the smallest free volume that fits; a volume
//!   already reserved for a claim is that claim's), so [`decide`] is a pure function of
//!   every claim, volume, class and node, returning the [`Step`]s to take. Clusters that
//!   run wharf have tens of claims, not tens of thousands: a whole pass is cheap, and it
//!   cannot miss a change the way an event-driven binder can. The executor runs a pass on
//!   every PV or claim change (debounced) and every [`RESYNC`].
//! - **Binding** as Kubernetes does it: first the volume's `claimRef` (with the claim's
//!   uid), then the claim's `volumeName` and `pv.kubernetes.io/bind-completed`, then both
//!   statuses `Bound` (the claim's with the volume's capacity and access modes). Each
//!   write is a compare-and-swap on the object's resourceVersion; a conflict just makes
//!   the next pass look again. A static volume pre-bound to a claim (`claimRef` without
//!   uid) or a claim naming its volume (`volumeName`) binds the same way.
//! - **Provisioning** (`wharf.dev/local-path`): the volume is a directory
//!   `ROOT/pvc-UID_NS_NAME` on one node, where ROOT is what the node publishes in its
//!   `wharf.dev/local-path-root` annotation; the volume's required node affinity pins it
//!   (and every pod that uses it) there. With `WaitForFirstConsumer` the node is the one
//!   the scheduler chose for the claim's first pod (`volume.kubernetes.io/selected-node`);
//!   with `Immediate`, the first node (by name) that publishes a root. The node makes the
//!   directory when a pod first mounts it. Capacity is recorded, not enforced: a
//!   directory has no size limit of its own (no quota on the node's file system).
//! - **In-use protection.** A claim carries `kubernetes.io/pvc-protection` from its
//!   creation; once it is being deleted the controller removes the finalizer only when no
//!   pod that has not ended uses it, so a running pod never loses its volume under it.
//! - **Reclaiming.** A volume whose claim is gone (or was recreated: another uid) is
//!   `Released`; with reclaim policy `Delete` the volume object is deleted and the node
//!   removes the directory once no volume names it; with `Retain` it stays `Released`
//!   with its data until an administrator deletes it.

use super::common::{self, Error};
use crate::api::storage::{self, LOCAL_PATH_PROVISIONER, LOCAL_PATH_ROOT_ANNOTATION};
use crate::api::wellknown::HOSTNAME_LABEL;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    LocalVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
    VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A pass runs at least this often, change or not.
pub const RESYNC: Duration = Duration::from_secs(15);
/// Changes arriving this close together make one pass.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// The built-in StorageClass, as the control plane creates it on start.
pub fn local_path_class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(storage::LOCAL_PATH_CLASS.into()),
            annotations: Some(BTreeMap::from([(
                storage::DEFAULT_CLASS_ANNOTATION.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        provisioner: LOCAL_PATH_PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some(storage::WAIT_FOR_FIRST_CONSUMER.into()),
        ..Default::default()
    }
}

/// Everything a pass decides from.
#[derive(Debug, Default)]
pub struct World {
    pub claims: Vec<PersistentVolumeClaim>,
    pub volumes: Vec<PersistentVolume>,
    pub classes: Vec<StorageClass>,
    /// Node name → the directory under which it keeps local-path volumes.
    pub roots: BTreeMap<String, String>,
    /// (namespace, claim) of every claim a pod that has not ended uses; read only while
    /// some claim is being deleted.
    pub in_use: std::collections::BTreeSet<(String, String)>,
}

/// A claim, by namespace, name and uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Reserve volume `pv` (at `resource_version`) for the claim: its `claimRef`.
    Reserve {
        pv: String,
        resource_version: String,
        claim: ClaimKey,
    },
    /// Point the claim at its volume (`volumeName`, bind-completed) and mark it Bound
    /// with the volume's capacity and access modes.
    BindClaim {
        claim: ClaimKey,
        pv: String,
        set_volume_name: bool,
        capacity: BTreeMap<String, Quantity>,
        access_modes: Vec<String>,
    },
    /// A claim's phase (`Lost` when its volume is gone).
    ClaimPhase {
        claim: ClaimKey,
        phase: &'static str,
    },
    /// A volume's phase.
    VolumePhase { pv: String, phase: &'static str },
    /// Create this volume.
    Provision(Box<PersistentVolume>),
    /// Delete a released volume (reclaim policy Delete).
    Delete { pv: String, uid: String },
    /// Let a deleted claim no pod uses go: its finalizers without the protection one.
    Unprotect {
        claim: ClaimKey,
        resource_version: String,
        finalizers: Vec<String>,
    },
}

fn key_of(pvc: &PersistentVolumeClaim) -> ClaimKey {
    ClaimKey {
        namespace: pvc.metadata.namespace.clone().unwrap_or_default(),
        name: pvc.metadata.name.clone().unwrap_or_default(),
        uid: pvc.metadata.uid.clone().unwrap_or_default(),
    }
}

fn pv_name(pv: &PersistentVolume) -> &str {
    pv.metadata.name.as_deref().unwrap_or_default()
}

fn pv_phase(pv: &PersistentVolume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn storage_of(map: Option<&BTreeMap<String, Quantity>>) -> i64 {
    map.and_then(|m| m.get("storage"))
        .and_then(|q| crate::api::quantity::value(&q.0))
        .unwrap_or(0)
}

fn claim_request(pvc: &PersistentVolumeClaim) -> i64 {
    storage_of(
        pvc.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref()),
    )
}

fn modes_of(modes: Option<&Vec<String>>) -> Vec<String> {
    modes.cloned().unwrap_or_default()
}

/// Whether `pv` reserves (or is bound to) `claim`: same namespace and name, and the same
/// uid when the volume names one.
fn reserves(pv: &PersistentVolume, claim: &ClaimKey) -> bool {
    matches!(storage::volume_claim(pv), Some((ns, name, uid))
        if ns == claim.namespace && name == claim.name
            && uid.is_none_or(|u| u == claim.uid))
}

/// Whether a free volume `pv` fits `pvc`: same class, enough capacity, every access mode
/// asked for, and, for a claim whose node was chosen, on that node.
fn fits(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(spec) = pv.spec.as_ref() else {
        return false;
    };
    let class = spec.storage_class_name.as_deref().unwrap_or("");
    let modes = modes_of(spec.access_modes.as_ref());
    let wanted = modes_of(pvc.spec.as_ref().and_then(|s| s.access_modes.as_ref()));
    let node_ok = match (storage::selected_node(pvc), storage::volume_node(pv)) {
        (Some(chosen), Some(node)) => chosen == node,
        _ => true,
    };
    pv.metadata.deletion_timestamp.is_none()
        && spec.claim_ref.is_none()
        && matches!(pv_phase(pv), "" | "Pending" | "Available")
        && class == storage::claim_class(pvc)
        && storage_of(spec.capacity.as_ref()) >= claim_request(pvc)
        && wanted.iter().all(|m| modes.contains(m))
        && node_ok
}

/// The volume the local-path provisioner makes for `pvc` on `node` under `root`.
pub fn provisioned_volume(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
    root: &str,
) -> PersistentVolume {
    let claim = key_of(pvc);
    let name = format!("pvc-{}", claim.uid);
    let spec = pvc.spec.clone().unwrap_or_default();
    let request = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned()
        .unwrap_or_else(|| Quantity("0".into()));
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            annotations: Some(BTreeMap::from([(
                storage::PROVISIONED_BY_ANNOTATION.to_string(),
                class.provisioner.clone(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), request)])),
            access_modes: spec.access_modes.clone(),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".into()),
            ),
            storage_class_name: class.metadata.name.clone(),
            volume_mode: Some("Filesystem".into()),
            local: Some(LocalVolumeSource {
                path: format!(
                    "{}/{name}_{}_{}",
                    root.trim_end_matches('/'),
                    claim.namespace,
                    claim.name
                ),
                fs_type: None,
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME_LABEL.into(),
                            operator: "In".into(),
                            values: Some(vec![node.to_string()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            claim_ref: Some(claim_ref(&claim)),
            ..Default::default()
        }),
        status: None,
    }
}

fn claim_ref(claim: &ClaimKey) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: Some(claim.namespace.clone()),
        name: Some(claim.name.clone()),
        uid: Some(claim.uid.clone()),
        ..Default::default()
    }
}

/// What a pass does: see the module documentation.
pub fn decide(world: &World) -> Vec<Step> {
    let mut steps = Vec::new();
    // Volumes this pass reserves, so two claims do not take the same one.
    let mut taken: Vec<&str> = Vec::new();
    for pvc in &world.claims {
        let claim = key_of(pvc);
        if pvc.metadata.deletion_timestamp.is_some() {
            let finalizers = pvc.metadata.finalizers.clone().unwrap_or_default();
            let used = world
                .in_use
                .contains(&(claim.namespace.clone(), claim.name.clone()));
            if !used
                && finalizers
                    .iter()
                    .any(|f| f == storage::PVC_PROTECTION_FINALIZER)
            {
                steps.push(Step::Unprotect {
                    claim,
                    resource_version: pvc.metadata.resource_version.clone().unwrap_or_default(),
                    finalizers: finalizers
                        .into_iter()
                        .filter(|f| f != storage::PVC_PROTECTION_FINALIZER)
                        .collect(),
                });
            }
            continue;
        }
        let bound_phase = storage::claim_bound(pvc);
        let bind = |pv: &PersistentVolume, set_volume_name: bool| {
            let spec = pv.spec.clone().unwrap_or_default();
            Step::BindClaim {
                claim: claim.clone(),
                pv: pv_name(pv).to_string(),
                set_volume_name,
                capacity: spec.capacity.unwrap_or_default(),
                access_modes: spec.access_modes.unwrap_or_default(),
            }
        };
        if let Some(wanted) = storage::claim_volume(pvc) {
            match world.volumes.iter().find(|v| pv_name(v) == wanted) {
                None if bound_phase => steps.push(Step::ClaimPhase {
                    claim,
                    phase: "Lost",
                }),
                None => {}
                Some(pv) if reserves(pv, &claim) => {
                    if storage::volume_claim(pv).is_some_and(|(_, _, uid)| uid.is_none()) {
                        steps.push(reserve(pv, &claim));
                    }
                    if !bound_phase {
                        steps.push(bind(pv, false));
                    }
                }
                Some(pv) if pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_none()) => {
                    steps.push(reserve(pv, &claim));
                    steps.push(bind(pv, false));
                    taken.push(pv_name(pv));
                }
                // Bound to another claim: this one stays Pending.
                Some(_) => {}
            }
            continue;
        }
        if let Some(pv) = world.volumes.iter().find(|v| reserves(v, &claim)) {
            if storage::volume_claim(pv).is_some_and(|(_, _, uid)| uid.is_none()) {
                steps.push(reserve(pv, &claim));
            }
            steps.push(bind(pv, true));
            taken.push(pv_name(pv));
            continue;
        }
        let class = world
            .classes
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(storage::claim_class(pvc)));
        let delayed = class.is_some_and(storage::waits_for_consumer);
        if delayed && storage::selected_node(pvc).is_none() {
            // Waiting for the first consumer: nothing binds before a pod is scheduled.
            continue;
        }
        let best = world
            .volumes
            .iter()
            .filter(|v| !taken.contains(&pv_name(v)) && fits(v, pvc))
            .min_by_key(|v| {
                (
                    storage_of(v.spec.as_ref().and_then(|s| s.capacity.as_ref())),
                    pv_name(v),
                )
            });
        if let Some(pv) = best {
            steps.push(reserve(pv, &claim));
            steps.push(bind(pv, true));
            taken.push(pv_name(pv));
            continue;
        }
        let Some(class) = class.filter(|c| c.provisioner == LOCAL_PATH_PROVISIONER) else {
            continue;
        };
        let node = match storage::selected_node(pvc) {
            Some(n) => Some(n),
            None => world.roots.keys().next().map(String::as_str),
        };
        if let Some(node) = node
            && let Some(root) = world.roots.get(node)
        {
            steps.push(Step::Provision(Box::new(provisioned_volume(
                pvc, class, node, root,
            ))));
        }
    }
    for pv in &world.volumes {
        if pv.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pv_name(pv).to_string();
        let phase = pv_phase(pv);
        let want = match storage::volume_claim(pv) {
            None => "Available",
            Some((ns, claim_name, uid)) => {
                let claim = world.claims.iter().find(|c| {
                    c.metadata.namespace.as_deref() == Some(ns)
                        && c.metadata.name.as_deref() == Some(claim_name)
                });
                let same =
                    claim.is_some_and(|c| uid.is_none_or(|u| c.metadata.uid.as_deref() == Some(u)));
                match claim {
                    _ if uid.is_none() && !same => "Available",
                    Some(c) if same && storage::claim_volume(c) == Some(name.as_str()) => "Bound",
                    // Reserved, the claim not yet pointing at it: as it is.
                    Some(_) if same => phase,
                    _ => "Released",
                }
            }
        };
        if want == "Released"
            && pv
                .spec
                .as_ref()
                .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
                == Some("Delete")
        {
            steps.push(Step::Delete {
                pv: name,
                uid: pv.metadata.uid.clone().unwrap_or_default(),
            });
            continue;
        }
        if !want.is_empty() && want != phase {
            let phase = match want {
                "Available" => "Available",
                "Bound" => "Bound",
                "Released" => "Released",
                _ => continue,
            };
            steps.push(Step::VolumePhase { pv: name, phase });
        }
    }
    steps
}

fn reserve(pv: &PersistentVolume, claim: &ClaimKey) -> Step {
    Step::Reserve {
        pv: pv_name(pv).to_string(),
        resource_version: pv.metadata.resource_version.clone().unwrap_or_default(),
        claim: claim.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// Doing

/// Starts the controller; it stops when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    pods: &mut super::informer::SharedInformer<k8s_openapi::api::core::v1::Pod>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    tasks.spawn(run(client, pods.feed(), shutdown));
}

async fn run(
    client: kube::Client,
    pods: super::informer::Feed<k8s_openapi::api::core::v1::Pod>,
    shutdown: CancellationToken,
) {
    let claims = watcher(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|_| ());
    let volumes = watcher(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|_| ());
    let nodes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(|_| ());
    // Only pods going away matter: they may free a claim being deleted. (The shared
    // cache drops a pod before its subscribers hear of it.)
    let store = pods.store;
    let pods = pods
        .changes
        .filter(move |pod| {
            let now = store.get(&kube::runtime::reflector::ObjectRef::from_obj(&**pod));
            let gone = now.is_none_or(|p| p.metadata.uid != pod.metadata.uid);
            futures::future::ready(gone)
        })
        .map(|_| ());
    let mut changes = std::pin::pin!(futures::stream::select(
        futures::stream::select(claims, volumes),
        futures::stream::select(nodes, pods)
    ));
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            next = changes.next() => if next.is_none() { return },
            _ = tokio::time::sleep(RESYNC) => {}
        }
        // Gather what arrives together into one pass.
        let deadline = tokio::time::sleep(DEBOUNCE);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                next = changes.next() => if next.is_none() { return },
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), pass(&client)).await {
            Ok(Ok(())) => failures = 0,
            Ok(Err(e)) => {
                failures += 1;
                if e.code() != Some(409) {
                    tracing::warn!(error = %e, "persistentvolume controller");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(common::Backoff::delay(failures)) => {}
                }
            }
            Err(_) => tracing::warn!("persistentvolume controller: a pass took over 30 s"),
        }
    }
}

/// Reads the world (volumes before claims: a volume naming a claim was made after the
/// claim, so the claim is in the later list unless it was deleted) and carries out
/// [`decide`]. A 409 or 404 on one step leaves it to the next pass.
async fn pass(client: &kube::Client) -> Result<(), Error> {
    let lp = ListParams::default();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let volumes = pvs
        .list(&lp)
        .await
        .map_err(Error::api("listing", "persistentvolumes"))?
        .items;
    let claims = Api::<PersistentVolumeClaim>::all(client.clone())
        .list(&lp)
        .await
        .map_err(Error::api("listing", "persistentvolumeclaims"))?
        .items;
    let classes = Api::<StorageClass>::all(client.clone())
        .list(&lp)
        .await
        .map_err(Error::api("listing", "storageclasses"))?
        .items;
    let roots = Api::<Node>::all(client.clone())
        .list(&lp)
        .await
        .map_err(Error::api("listing", "nodes"))?
        .items
        .into_iter()
        .filter_map(|n| {
            let root = n
                .metadata
                .annotations
                .as_ref()?
                .get(LOCAL_PATH_ROOT_ANNOTATION)?
                .clone();
            Some((n.metadata.name?, root))
        })
        .collect();
    let in_use = if claims
        .iter()
        .any(|c| c.metadata.deletion_timestamp.is_some())
    {
        Api::<k8s_openapi::api::core::v1::Pod>::all(client.clone())
            .list(&lp)
            .await
            .map_err(Error::api("listing", "pods"))?
            .items
            .iter()
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .flat_map(|p| {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                storage::pod_claims(p)
                    .into_iter()
                    .map(move |c| (ns.clone(), c.to_string()))
            })
            .collect()
    } else {
        Default::default()
    };
    let world = World {
        claims,
        volumes,
        classes,
        roots,
        in_use,
    };
    for step in decide(&world) {
        match execute(client, &step).await {
            Ok(()) => {}
            Err(e) if matches!(common::code_of(&e), Some(404 | 409)) => {
                tracing::debug!(?step, error = %e, "persistentvolume step raced; next pass");
                // What follows may depend on it.
                return Ok(());
            }
            Err(e) => return Err(Error::api("carrying out", format!("{step:?}"))(e)),
        }
    }
    Ok(())
}

async fn execute(client: &kube::Client, step: &Step) -> Result<(), kube::Error> {
    let pp = PatchParams::default();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    match step {
        Step::Reserve {
            pv,
            resource_version,
            claim,
        } => {
            let patch = json!({
                "metadata": {"resourceVersion": resource_version},
                "spec": {"claimRef": claim_ref(claim)},
            });
            pvs.patch(pv, &pp, &Patch::Merge(&patch)).await?;
        }
        Step::BindClaim {
            claim,
            pv,
            set_volume_name,
            capacity,
            access_modes,
        } => {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &claim.namespace);
            if *set_volume_name {
                let patch = json!({
                    "metadata": {"uid": claim.uid,
                        "annotations": {storage::BIND_COMPLETED_ANNOTATION: "yes"}},
                    "spec": {"volumeName": pv},
                });
                api.patch(&claim.name, &pp, &Patch::Merge(&patch)).await?;
            }
            let status = json!({
                "metadata": {"uid": claim.uid},
                "status": {"phase": "Bound", "capacity": capacity, "accessModes": access_modes},
            });
            api.patch_status(&claim.name, &pp, &Patch::Merge(&status))
                .await?;
            let status = json!({"status": {"phase": "Bound"}});
            pvs.patch_status(pv, &pp, &Patch::Merge(&status)).await?;
        }
        Step::ClaimPhase { claim, phase } => {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &claim.namespace);
            let status = json!({"metadata": {"uid": claim.uid}, "status": {"phase": phase}});
            api.patch_status(&claim.name, &pp, &Patch::Merge(&status))
                .await?;
        }
        Step::VolumePhase { pv, phase } => {
            let status = json!({"status": {"phase": phase}});
            pvs.patch_status(pv, &pp, &Patch::Merge(&status)).await?;
        }
        Step::Unprotect {
            claim,
            resource_version,
            finalizers,
        } => {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &claim.namespace);
            let patch = json!({"metadata": {"resourceVersion": resource_version,
                "finalizers": finalizers}});
            api.patch(&claim.name, &pp, &Patch::Merge(&patch)).await?;
        }
        Step::Provision(pv) => {
            pvs.create(&PostParams::default(), pv).await?;
        }
        Step::Delete { pv, uid } => {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            pvs.delete(pv, &params).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn claim(name: &str, extra: Value) -> PersistentVolumeClaim {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}")},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                     "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Pending"}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn volume(name: &str, extra: Value) -> PersistentVolume {
        let mut v = json!({
            "metadata": {"name": name, "uid": format!("pvu-{name}"), "resourceVersion": "7"},
            "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": "manual", "persistentVolumeReclaimPolicy": "Retain",
                     "hostPath": {"path": format!("/srv/{name}")}},
            "status": {"phase": "Available"}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(base: &mut Value, extra: Value) {
        if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
            for (k, v) in e {
                match (b.get_mut(&k), v) {
                    (Some(Value::Object(inner)), Value::Object(more)) => inner.extend(more),
                    (_, v) => {
                        b.insert(k, v);
                    }
                }
            }
        }
    }

    fn world(claims: Vec<PersistentVolumeClaim>, volumes: Vec<PersistentVolume>) -> World {
        World {
            claims,
            volumes,
            classes: vec![local_path_class()],
            in_use: Default::default(),
            roots: BTreeMap::from([
                ("n1".to_string(), "/data/n1/storage".to_string()),
                ("n2".to_string(), "/data/n2/storage".to_string()),
            ]),
        }
    }

    #[test]
    fn a_delayed_claim_waits_for_its_node_then_is_provisioned_there() {
        let c = claim("data", json!({}));
        assert!(decide(&world(vec![c.clone()], vec![])).is_empty());
        let chosen = claim(
            "data",
            json!({"metadata": {"annotations": {storage::SELECTED_NODE_ANNOTATION: "n2"}}}),
        );
        let steps = decide(&world(vec![chosen], vec![]));
        let [Step::Provision(pv)] = steps.as_slice() else {
            panic!("{steps:?}")
        };
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-u-data"));
        assert_eq!(storage::volume_node(pv), Some("n2"));
        assert_eq!(
            storage::volume_path(pv),
            Some("/data/n2/storage/pvc-u-data_default_data")
        );
        assert_eq!(
            storage::volume_claim(pv),
            Some(("default", "data", Some("u-data")))
        );
        let spec = pv.spec.as_ref().unwrap();
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert_eq!(spec.capacity.as_ref().unwrap()["storage"].0, "1Gi");
    }

    #[test]
    fn a_provisioned_volume_binds_its_claim_and_then_is_bound() {
        let c = claim(
            "data",
            json!({"metadata": {"annotations": {storage::SELECTED_NODE_ANNOTATION: "n2"}}}),
        );
        let mut pv = provisioned_volume(&c, &local_path_class(), "n2", "/r");
        pv.status = Some(serde_json::from_value(json!({"phase": "Pending"})).unwrap());
        let steps = decide(&world(vec![c.clone()], vec![pv.clone()]));
        assert!(
            matches!(
                steps.as_slice(),
                [Step::BindClaim { pv, set_volume_name: true, .. }] if pv == "pvc-u-data"
            ),
            "{steps:?}"
        );
        // Once the claim names it and says Bound, only the volume's phase follows.
        let mut bound = c.clone();
        bound.spec.as_mut().unwrap().volume_name = Some("pvc-u-data".into());
        bound.status.as_mut().unwrap().phase = Some("Bound".into());
        let steps = decide(&world(vec![bound.clone()], vec![pv.clone()]));
        assert_eq!(
            steps,
            [Step::VolumePhase {
                pv: "pvc-u-data".into(),
                phase: "Bound"
            }]
        );
        pv.status.as_mut().unwrap().phase = Some("Bound".into());
        assert!(decide(&world(vec![bound.clone()], vec![pv.clone()])).is_empty());
        // The claim deleted: Delete reclaims the volume; Retain keeps it Released.
        assert_eq!(
            decide(&world(vec![], vec![pv.clone()])),
            [Step::Delete {
                pv: "pvc-u-data".into(),
                uid: String::new()
            }]
        );
        pv.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some("Retain".into());
        assert_eq!(
            decide(&world(vec![], vec![pv.clone()])),
            [Step::VolumePhase {
                pv: "pvc-u-data".into(),
                phase: "Released"
            }]
        );
        // A claim of the same name but another uid does not get it back.
        let mut again = bound.clone();
        again.metadata.uid = Some("other".into());
        again.spec.as_mut().unwrap().volume_name = None;
        again.status.as_mut().unwrap().phase = Some("Pending".into());
        let steps = decide(&world(vec![again], vec![pv]));
        assert!(
            steps.contains(&Step::VolumePhase {
                pv: "pvc-u-data".into(),
                phase: "Released"
            }),
            "{steps:?}"
        );
    }

    #[test]
    fn static_volumes_bind_smallest_fit_and_pre_bound() {
        let c = claim("db", json!({"spec": {"storageClassName": "manual"}}));
        let small = volume("small", json!({"spec": {"capacity": {"storage": "1Gi"}}}));
        let big = volume("big", json!({"spec": {"capacity": {"storage": "10Gi"}}}));
        let tiny = volume("tiny", json!({"spec": {"capacity": {"storage": "100Mi"}}}));
        let steps = decide(&world(vec![c.clone()], vec![big.clone(), small, tiny]));
        assert!(
            matches!(&steps[0], Step::Reserve { pv, resource_version, .. } if pv == "small" && resource_version == "7"),
            "{steps:?}"
        );
        assert!(matches!(&steps[1], Step::BindClaim { pv, .. } if pv == "small"));
        // Pre-bound by the user to this claim (no uid): reserved with the uid, bound.
        let pre = volume(
            "pre",
            json!({"spec": {"claimRef": {"namespace": "default", "name": "db"}}}),
        );
        let steps = decide(&world(vec![c.clone()], vec![big, pre.clone()]));
        assert!(
            matches!(&steps[0], Step::Reserve { pv, claim, .. } if pv == "pre" && claim.uid == "u-db"),
            "{steps:?}"
        );
        assert!(matches!(&steps[1], Step::BindClaim { pv, .. } if pv == "pre"));
        // Pre-bound to a claim that does not exist yet: stays Available.
        assert!(decide(&world(vec![], vec![pre])).is_empty());
        // A claim naming a volume (volumeName) takes it.
        let named = claim(
            "named",
            json!({"spec": {"storageClassName": "manual", "volumeName": "small2"}}),
        );
        let steps = decide(&world(vec![named], vec![volume("small2", json!({}))]));
        assert!(
            matches!(
                &steps[1],
                Step::BindClaim {
                    set_volume_name: false,
                    ..
                }
            ),
            "{steps:?}"
        );
        // No fit and no provisioner: Pending, nothing to do.
        let huge = claim(
            "huge",
            json!({"spec": {"storageClassName": "manual", "resources": {"requests": {"storage": "1Ti"}}}}),
        );
        assert!(decide(&world(vec![huge], vec![volume("v", json!({}))])).is_empty());
    }

    #[test]
    fn a_deleted_claim_goes_only_once_no_pod_uses_it() {
        let c = claim(
            "data",
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z", "resourceVersion": "9",
                "finalizers": [storage::PVC_PROTECTION_FINALIZER, "other"]}}),
        );
        let mut w = world(vec![c], vec![]);
        w.in_use.insert(("default".into(), "data".into()));
        assert!(decide(&w).is_empty());
        w.in_use.clear();
        assert_eq!(
            decide(&w),
            [Step::Unprotect {
                claim: ClaimKey {
                    namespace: "default".into(),
                    name: "data".into(),
                    uid: "u-data".into()
                },
                resource_version: "9".into(),
                finalizers: vec!["other".into()],
            }]
        );
    }

    #[test]
    fn a_bound_claim_whose_volume_vanished_is_lost() {
        let c = claim(
            "data",
            json!({"spec": {"volumeName": "gone"}, "status": {"phase": "Bound"}}),
        );
        assert!(matches!(
            decide(&world(vec![c], vec![])).as_slice(),
            [Step::ClaimPhase { phase: "Lost", .. }]
        ));
    }
}
