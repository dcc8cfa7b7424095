//! The StatefulSet controller: pods with stable names, stable storage and an order.
//!
//! - **Identity.** Pod `i` of StatefulSet `web` is `web-i`, with the labels
//!   `statefulset.kubernetes.io/pod-name: web-i` and `apps.kubernetes.io/pod-index: i`,
//!   `hostname: web-i` and `subdomain: SERVICE` (so the endpoints controller gives the
//!   headless Service's endpoint that hostname, and the cluster DNS answers
//!   `web-i.SERVICE.NS.svc.DOMAIN`). Each `volumeClaimTemplates[t]` gives pod `i` the
//!   claim `t-web-i`, created before the pod and found again by name when the pod is
//!   recreated, so a replacement gets the same data (and, with a local volume, the same
//!   node). Claims are kept when pods go, unless `persistentVolumeClaimRetentionPolicy`
//!   says `Delete`: `whenScaled` deletes the claims of ordinals scaled away once their
//!   pod is gone, `whenDeleted` makes the StatefulSet the claims' owner so the garbage
//!   collector deletes them with it.
//! - **Order.** [`decide`] is Kubernetes' `updateStatefulSet` as a pure function: with
//!   `OrderedReady`, pod `i+1` is created only once pods `0..=i` are Running and Ready,
//!   one step at a time, and scale-down deletes the highest ordinal first, one at a time,
//!   only while every remaining pod is healthy; `Parallel` creates and deletes without
//!   waiting.
//! - **Revisions.** The template's revision is a ControllerRevision named
//!   `NAME-HASH` whose `data` is the strategic merge patch that restores the template (as
//!   Kubernetes stores it, so `kubectl rollout history|undo statefulset/NAME` work); pods
//!   carry it in `controller-revision-hash`. A rolling update replaces pods from the
//!   highest ordinal down to `partition`, one at a time, each once all pods are Running
//!   and Ready; pods below the partition (and replacements of them) stay at the current
//!   revision. `OnDelete` replaces a pod only when a user deletes it. When every pod is
//!   updated and ready, the update revision becomes the current one.
//! - **Status**: replicas, readyReplicas, availableReplicas, currentReplicas,
//!   updatedReplicas, currentRevision, updateRevision, observedGeneration (what
//!   `kubectl rollout status statefulset/NAME` reads).
//!
//! Events (`statefulset-controller`): `SuccessfulCreate`, `SuccessfulDelete`,
//! `FailedCreate`, in Kubernetes' words.

use super::common::{self, Backoff, Claim, Error};
use super::daemonset::template_hash;
use crate::events::{self, EventType, Recorder};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "statefulset-controller";
pub use super::daemonset::HASH_LABEL;
/// The label with a StatefulSet pod's own name (a Service may select one pod by it).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with a StatefulSet pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
const RESYNC: Duration = Duration::from_secs(60);

/// Starts the controller; it stops when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    pods: &mut super::informer::SharedInformer<Pod>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), COMPONENT),
        backoff: Backoff::default(),
    });
    let reconciles = Controller::new(
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns_shared_stream(pods.subscribe())
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(|outcome| {
        if let Err(e) = outcome {
            tracing::debug!(error = %e, "statefulset controller");
        }
        futures::future::ready(())
    });
    tasks.spawn(super::gc::run_until_shutdown(shutdown, reconciles));
}

// ---------------------------------------------------------------------------------------
// Identity

fn set_name(sts: &StatefulSet) -> &str {
    sts.metadata.name.as_deref().unwrap_or_default()
}

/// The ordinal of a pod named `SET-i`, if it is one of the set's names.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok().filter(|i: &i32| *i >= 0)
}

/// The name of claim template `template`'s claim for pod `pod`.
pub fn claim_name(template: &str, pod: &str) -> String {
    format!("{template}-{pod}")
}

/// The revision name of a template: `SET-HASH`.
pub fn revision_name(sts: &StatefulSet, template: &PodTemplateSpec) -> String {
    format!("{}-{}", set_name(sts), template_hash(template))
}

fn templates(sts: &StatefulSet) -> &[PersistentVolumeClaim] {
    sts.spec
        .volume_claim_templates
        .as_deref()
        .unwrap_or_default()
}

fn retention(sts: &StatefulSet, when_deleted: bool) -> &str {
    let p = sts.spec.persistent_volume_claim_retention_policy.as_ref();
    let v = if when_deleted {
        p.and_then(|p| p.when_deleted.as_deref())
    } else {
        p.and_then(|p| p.when_scaled.as_deref())
    };
    v.unwrap_or("Retain")
}

/// Pod `ordinal` of the set, from `template` at `revision`.
pub fn pod_for(sts: &StatefulSet, ordinal: i32, template: &PodTemplateSpec, revision: &str) -> Pod {
    let name = format!("{}-{ordinal}", set_name(sts));
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(HASH_LABEL.into(), revision.into());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    if let Some(service) = sts.spec.service_name.as_deref().filter(|s| !s.is_empty()) {
        spec.subdomain = Some(service.to_string());
    }
    let mut volumes = spec.volumes.take().unwrap_or_default();
    for t in templates(sts) {
        let Some(t_name) = t.metadata.name.as_deref() else {
            continue;
        };
        volumes.retain(|v| v.name != t_name);
        volumes.push(Volume {
            name: t_name.to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(t_name, &name),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    spec.volumes = (!volumes.is_empty()).then_some(volumes);
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: sts.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![common::controller_ref(
                "StatefulSet",
                "apps/v1",
                &sts.metadata,
            )]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The claims of pod `pod` from the templates: labelled with the set's `matchLabels`;
/// owned (not controlled) by the set when `whenDeleted: Delete`.
pub fn claims_for(sts: &StatefulSet, pod: &str) -> Vec<PersistentVolumeClaim> {
    let labels = sts.spec.selector.match_labels.clone();
    templates(sts)
        .iter()
        .filter_map(|t| {
            let t_name = t.metadata.name.as_deref()?;
            let owners = (retention(sts, true) == "Delete").then(|| {
                let mut owner = common::controller_ref("StatefulSet", "apps/v1", &sts.metadata);
                owner.controller = None;
                owner.block_owner_deletion = None;
                vec![owner]
            });
            let mut meta_labels = t.metadata.labels.clone().unwrap_or_default();
            meta_labels.extend(labels.clone().unwrap_or_default());
            Some(PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(t_name, pod)),
                    namespace: sts.metadata.namespace.clone(),
                    labels: Some(meta_labels),
                    annotations: t.metadata.annotations.clone(),
                    owner_references: owners,
                    ..Default::default()
                },
                spec: t.spec.clone(),
                status: None,
            })
        })
        .collect()
}

/// The ControllerRevision of `template`: its data restores the template by strategic
/// merge patch, as Kubernetes records it.
pub fn revision_for(
    sts: &StatefulSet,
    template: &PodTemplateSpec,
    number: i64,
) -> ControllerRevision {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(revision_name(sts, template)),
            namespace: sts.metadata.namespace.clone(),
            labels: sts.spec.selector.match_labels.clone(),
            owner_references: Some(vec![common::controller_ref(
                "StatefulSet",
                "apps/v1",
                &sts.metadata,
            )]),
            ..Default::default()
        },
        data: RawExtension(json!({"spec": {"template": t}})),
        revision: Some(number),
    }
}

/// The template a revision restores.
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = revision.data.0.pointer("/spec/template")?.clone();
    if let Some(m) = t.as_object_mut() {
        m.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

// ---------------------------------------------------------------------------------------
// Deciding

/// Why a pod is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Failed: recreated once gone.
    Failed,
    /// Its ordinal is at or above `replicas`.
    ScaledDown,
    /// Made from an older revision: the rolling update replaces it.
    Outdated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doomed {
    pub name: String,
    pub uid: String,
    pub why: Why,
}

/// A pod to create: its ordinal and whether it takes the update revision (else the
/// current one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Create {
    pub ordinal: i32,
    pub updated: bool,
}

#[derive(Debug, PartialEq)]
pub struct Plan {
    pub create: Vec<Create>,
    pub delete: Vec<Doomed>,
    /// Claims of ordinals scaled away (`whenScaled: Delete`) whose pod is gone.
    pub delete_claims: Vec<String>,
    pub status: StatefulSetStatus,
}

fn running_and_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && common::is_pod_ready(pod)
}

fn failed(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

fn revision_of(pod: &Pod) -> &str {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(HASH_LABEL))
        .map(String::as_str)
        .unwrap_or("")
}

fn doomed(pod: &Pod, why: Why) -> Doomed {
    Doomed {
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        why,
    }
}

/// What the set needs now: `pods` are the ones it controls, `claims` the names of the
/// claims in its namespace, `current`/`update` the revision names.
pub fn decide(
    sts: &StatefulSet,
    pods: &[Pod],
    claims: &BTreeSet<String>,
    current: &str,
    update: &str,
    now: Timestamp,
) -> Plan {
    let name = set_name(sts);
    let spec = &sts.spec;
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    let partition = if rolling {
        spec.update_strategy
            .as_ref()
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0)
            .max(0)
    } else {
        0
    };
    let min_ready = spec.min_ready_seconds.unwrap_or(0);

    let mut slots: BTreeMap<i32, &Pod> = BTreeMap::new();
    let mut condemned: Vec<(i32, &Pod)> = Vec::new();
    for pod in pods {
        let Some(i) = pod
            .metadata
            .name
            .as_deref()
            .and_then(|n| ordinal_of(name, n))
        else {
            continue;
        };
        if i < replicas {
            slots.insert(i, pod);
        } else {
            condemned.push((i, pod));
        }
    }
    condemned.sort_by_key(|c| std::cmp::Reverse(c.0));

    let mut status = StatefulSetStatus {
        observed_generation: sts.metadata.generation,
        current_revision: Some(current.to_string()),
        update_revision: Some(update.to_string()),
        collision_count: sts.status.as_ref().and_then(|s| s.collision_count),
        ..Default::default()
    };
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        status.replicas += 1;
        if common::is_pod_ready(pod) {
            status.ready_replicas = Some(status.ready_replicas.unwrap_or(0) + 1);
        }
        if common::is_pod_available(pod, min_ready, now) {
            status.available_replicas = Some(status.available_replicas.unwrap_or(0) + 1);
        }
        if revision_of(pod) == current {
            status.current_replicas = Some(status.current_replicas.unwrap_or(0) + 1);
        }
        if revision_of(pod) == update {
            status.updated_replicas = Some(status.updated_replicas.unwrap_or(0) + 1);
        }
    }

    let mut plan = Plan {
        create: Vec::new(),
        delete: Vec::new(),
        delete_claims: Vec::new(),
        status,
    };
    // Creation and replacement of failed pods, in ordinal order.
    let mut waiting = false;
    for i in 0..replicas {
        match slots.get(&i) {
            None => {
                plan.create.push(Create {
                    ordinal: i,
                    updated: !rolling || i >= partition || current == update,
                });
                waiting = true;
            }
            Some(pod) if failed(pod) && pod.metadata.deletion_timestamp.is_none() => {
                plan.delete.push(doomed(pod, Why::Failed));
                waiting = true;
            }
            Some(pod) if pod.metadata.deletion_timestamp.is_some() || !running_and_ready(pod) => {
                waiting = true;
            }
            Some(_) => continue,
        }
        if ordered {
            break;
        }
    }
    let all_healthy = !waiting && slots.values().all(|p| running_and_ready(p));
    // Scale down: highest ordinal first; ordered waits for a healthy set, one at a time.
    let terminating = condemned
        .iter()
        .any(|(_, p)| p.metadata.deletion_timestamp.is_some());
    for (_, pod) in &condemned {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if ordered && (!all_healthy || terminating || !plan.delete.is_empty()) {
            break;
        }
        plan.delete.push(doomed(pod, Why::ScaledDown));
        if ordered {
            break;
        }
    }
    // Claims of ordinals scaled away whose pods are gone.
    if retention(sts, false) == "Delete" {
        let present: BTreeSet<i32> = pods
            .iter()
            .filter_map(|p| p.metadata.name.as_deref().and_then(|n| ordinal_of(name, n)))
            .collect();
        for claim in claims {
            for t in templates(sts)
                .iter()
                .filter_map(|t| t.metadata.name.as_deref())
            {
                if let Some(pod) = claim.strip_prefix(&format!("{t}-"))
                    && let Some(i) = ordinal_of(name, pod)
                    && i >= replicas
                    && !present.contains(&i)
                {
                    plan.delete_claims.push(claim.clone());
                }
            }
        }
    }
    // Rolling update: highest ordinal down to the partition, one at a time, on a healthy
    // set with nothing else going on.
    if rolling && all_healthy && condemned.is_empty() && plan.delete.is_empty() {
        for i in (partition..replicas).rev() {
            let Some(pod) = slots.get(&i) else { continue };
            if revision_of(pod) != update {
                plan.delete.push(doomed(pod, Why::Outdated));
                break;
            }
        }
    }
    // Every pod updated and ready: the update revision is the current one.
    let st = &mut plan.status;
    if rolling
        && st.updated_replicas.unwrap_or(0) == replicas
        && st.ready_replicas.unwrap_or(0) == replicas
        && st.replicas == replicas
    {
        st.current_revision = Some(update.to_string());
        st.current_replicas = st.updated_replicas;
    }
    plan
}

// ---------------------------------------------------------------------------------------
// Doing

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    backoff: Backoff,
}

/// Makes sure the update revision has its ControllerRevision (a template rolled back to
/// gets the next number, as Kubernetes renumbers it) and answers the current revision's
/// template, if it is known.
async fn revisions(
    ctx: &Ctx,
    sts: &StatefulSet,
    current: &str,
    update: &str,
) -> Result<Option<PodTemplateSpec>, Error> {
    let key = common::key(&sts.metadata);
    let ns = sts.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = sts.metadata.uid.as_deref().unwrap_or_default();
    let selector = common::selector_string(&sts.spec.selector);
    let owned: Vec<ControllerRevision> = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::api(
            "listing controllerrevisions of statefulset",
            &key,
        ))?
        .items
        .into_iter()
        .filter(|r| common::controller_of(&r.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    let max = owned.iter().filter_map(|r| r.revision).max().unwrap_or(0);
    match owned
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(update))
    {
        None => {
            let rev = revision_for(sts, &sts.spec.template, max + 1);
            match api.create(&PostParams::default(), &rev).await {
                Ok(_) => {}
                Err(e) if common::code_of(&e) == Some(409) => {}
                Err(e) => return Err(Error::api("creating controllerrevision", &key)(e)),
            }
        }
        Some(r) if r.revision.unwrap_or(0) < max && current != update => {
            let patch = json!({"revision": max + 1});
            api.patch(update, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(Error::api("renumbering controllerrevision", &key))?;
        }
        Some(_) => {}
    }
    // Old revisions beyond the history limit go (never the current or update one).
    let limit = usize::try_from(sts.spec.revision_history_limit.unwrap_or(10).max(0)).unwrap_or(10);
    let mut old: Vec<&ControllerRevision> = owned
        .iter()
        .filter(|r| !matches!(r.metadata.name.as_deref(), Some(n) if n == current || n == update))
        .collect();
    old.sort_by_key(|r| r.revision.unwrap_or(0));
    let excess = old.len().saturating_sub(limit);
    for r in old.into_iter().take(excess) {
        if let Some(n) = r.metadata.name.as_deref()
            && let Err(e) = api.delete(n, &DeleteParams::default()).await
            && common::code_of(&e) != Some(404)
        {
            return Err(Error::api("deleting controllerrevision", &key)(e));
        }
    }
    Ok(owned
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(current))
        .and_then(template_of))
}

async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = common::key(&sts.metadata);
    if sts.metadata.deletion_timestamp.is_some() {
        // Its pods (and claims it owns) are the garbage collector's now.
        return Ok(Action::await_change());
    }
    let ns = sts.metadata.namespace.clone().unwrap_or_default();
    let uid = sts.metadata.uid.clone().unwrap_or_default();
    let name = set_name(&sts).to_string();
    let selector = sts.spec.selector.clone();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let listed = pods_api
        .list(&ListParams::default().labels(&common::selector_string(&selector)))
        .await
        .map_err(Error::api("listing pods of statefulset", &key))?
        .items;
    let owner = common::controller_ref("StatefulSet", "apps/v1", &sts.metadata);
    let mut pods = Vec::new();
    for pod in listed {
        let matches = common::selects(Some(&selector), pod.metadata.labels.as_ref())
            && pod
                .metadata
                .name
                .as_deref()
                .and_then(|n| ordinal_of(&name, n))
                .is_some();
        match common::claim(&uid, false, matches, &pod.metadata) {
            Claim::Owned => pods.push(pod),
            Claim::Adopt => {
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                let patch = common::adopt_patch(&pod.metadata, &owner);
                pods_api
                    .patch(&pod_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(Error::api("adopting pod", format!("{ns}/{pod_name}")))?;
                pods.push(pod);
            }
            Claim::Release | Claim::Ignore => {}
        }
    }
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let claims: BTreeSet<String> = if templates(&sts).is_empty() {
        BTreeSet::new()
    } else {
        claims_api
            .list(&ListParams::default())
            .await
            .map_err(Error::api("listing claims of statefulset", &key))?
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect()
    };

    let update = revision_name(&sts, &sts.spec.template);
    let current = sts
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| update.clone());
    let current_template = revisions(&ctx, &sts, &current, &update).await?;
    let plan = decide(&sts, &pods, &claims, &current, &update, common::now());
    let about = events::reference("StatefulSet", "apps/v1", &sts.metadata);

    for c in &plan.create {
        let (template, revision) = match (&current_template, c.updated) {
            (Some(t), false) => (t, current.as_str()),
            _ => (&sts.spec.template, update.as_str()),
        };
        let pod = pod_for(&sts, c.ordinal, template, revision);
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        for claim in claims_for(&sts, &pod_name) {
            let claim_name = claim.metadata.name.clone().unwrap_or_default();
            if claims.contains(&claim_name) {
                continue;
            }
            match claims_api.create(&PostParams::default(), &claim).await {
                Ok(_) => ctx
                    .recorder
                    .record(
                        &about,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!(
                            "create Claim {claim_name} Pod {pod_name} in StatefulSet {name} success"
                        ),
                    )
                    .await,
                Err(e) if common::code_of(&e) == Some(409) => {}
                Err(e) => {
                    ctx.recorder
                        .record(
                            &about,
                            EventType::Warning,
                            "FailedCreate",
                            &format!(
                                "create Claim {claim_name} for Pod {pod_name} in StatefulSet {name} failed error: {e}"
                            ),
                        )
                        .await;
                    return Err(Error::api("creating a claim for statefulset", &key)(e));
                }
            }
        }
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(_) => {
                ctx.recorder
                    .record(
                        &about,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("create Pod {pod_name} in StatefulSet {name} successful"),
                    )
                    .await
            }
            Err(e) if common::code_of(&e) == Some(409) => {}
            Err(e) => {
                ctx.recorder
                    .record(
                        &about,
                        EventType::Warning,
                        "FailedCreate",
                        &format!("create Pod {pod_name} in StatefulSet {name} failed error: {e}"),
                    )
                    .await;
                return Err(Error::api("creating a pod for statefulset", &key)(e));
            }
        }
    }
    for pod in &plan.delete {
        let deleted = common::delete_pod_with_uid(&pods_api, &pod.name, &pod.uid)
            .await
            .map_err(Error::api("deleting a pod of statefulset", &key))?;
        if deleted {
            ctx.recorder
                .record(
                    &about,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("delete Pod {} in StatefulSet {name} successful", pod.name),
                )
                .await;
        }
    }
    for claim in &plan.delete_claims {
        match claims_api.delete(claim, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if common::code_of(&e) == Some(404) => {}
            Err(e) => return Err(Error::api("deleting a claim of statefulset", &key)(e)),
        }
    }
    common::write_status_if_changed(
        &Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns),
        &name,
        sts.status.as_ref(),
        &plan.status,
    )
    .await
    .map_err(Error::api("writing the status of statefulset", &key))?;
    ctx.backoff.succeeded(&key);
    let busy = !plan.create.is_empty() || !plan.delete.is_empty();
    Ok(Action::requeue(if busy {
        Duration::from_secs(2)
    } else {
        RESYNC
    }))
}

fn error_policy(sts: Arc<StatefulSet>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let key = common::key(&sts.metadata);
    if error.code() != Some(409) {
        tracing::warn!(statefulset = %key, %error, "statefulset");
    }
    Action::requeue(ctx.backoff.failed(&key))
}

/// The owner reference a claim of a `whenDeleted: Delete` set carries (for tests and
/// the garbage collector's view).
pub fn claim_owner(sts: &StatefulSet) -> Option<OwnerReference> {
    claims_for(sts, "x-0")
        .into_iter()
        .next()
        .and_then(|c| c.metadata.owner_references)
        .and_then(|o| o.into_iter().next())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn sts(extra: Value) -> StatefulSet {
        let mut spec = json!({
            "replicas": 3,
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "a", "image": "kv.wasm",
                             "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "sts-uid", "generation": 2},
            "spec": spec,
        }))
        .unwrap()
    }

    fn pod(set: &StatefulSet, i: i32, rev: &str, ready: bool) -> Pod {
        let mut p = pod_for(set, i, &set.spec.template, rev);
        p.metadata.uid = Some(format!("uid-{i}"));
        p.status = Some(
            serde_json::from_value(json!({"phase": "Running", "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" },
                 "lastTransitionTime": ts(-100).to_string()}]}))
            .unwrap(),
        );
        p
    }

    fn created(plan: &Plan) -> Vec<i32> {
        plan.create.iter().map(|c| c.ordinal).collect()
    }

    fn deleted(plan: &Plan) -> Vec<(String, Why)> {
        plan.delete
            .iter()
            .map(|d| (d.name.clone(), d.why))
            .collect()
    }

    #[test]
    fn names_claims_and_dns_identity() {
        let s = sts(json!({}));
        assert_eq!(ordinal_of("web", "web-2"), Some(2));
        assert_eq!(ordinal_of("web", "web-02"), None);
        assert_eq!(ordinal_of("web", "webby-2"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        let p = pod_for(&s, 1, &s.spec.template, "web-abc");
        assert_eq!(p.metadata.name.as_deref(), Some("web-1"));
        let labels = p.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[POD_NAME_LABEL], "web-1");
        assert_eq!(labels[POD_INDEX_LABEL], "1");
        assert_eq!(labels[HASH_LABEL], "web-abc");
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-1"));
        assert_eq!(spec.subdomain.as_deref(), Some("web"));
        let vol = &spec.volumes.as_ref().unwrap()[0];
        assert_eq!(
            vol.persistent_volume_claim.as_ref().unwrap().claim_name,
            "data-web-1"
        );
        let claims = claims_for(&s, "web-1");
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data-web-1"));
        assert_eq!(claims[0].metadata.labels.as_ref().unwrap()["app"], "web");
        assert!(
            claims[0].metadata.owner_references.is_none(),
            "Retain by default"
        );
        let deleting = sts(
            json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"}}),
        );
        let owner = claim_owner(&deleting).unwrap();
        assert_eq!((owner.uid.as_str(), owner.controller), ("sts-uid", None));
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time() {
        let s = sts(json!({}));
        let none = BTreeSet::new();
        let plan = decide(&s, &[], &none, "r1", "r1", ts(0));
        assert_eq!(created(&plan), [0]);
        // web-0 exists but is not ready: wait.
        let plan = decide(&s, &[pod(&s, 0, "r1", false)], &none, "r1", "r1", ts(0));
        assert!(plan.create.is_empty());
        let plan = decide(&s, &[pod(&s, 0, "r1", true)], &none, "r1", "r1", ts(0));
        assert_eq!(created(&plan), [1]);
        // Parallel creates every missing one at once.
        let par = sts(json!({"podManagementPolicy": "Parallel"}));
        assert_eq!(
            created(&decide(&par, &[], &none, "r1", "r1", ts(0))),
            [0, 1, 2]
        );
    }

    #[test]
    fn scale_down_goes_from_the_top_once_healthy() {
        let s = sts(json!({"replicas": 1}));
        let none = BTreeSet::new();
        let pods = [
            pod(&s, 0, "r1", true),
            pod(&s, 1, "r1", true),
            pod(&s, 2, "r1", true),
        ];
        let plan = decide(&s, &pods, &none, "r1", "r1", ts(0));
        assert_eq!(deleted(&plan), [("web-2".to_string(), Why::ScaledDown)]);
        // web-2 terminating: web-1 waits.
        let mut going = pods.clone();
        going[2].metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(0)));
        assert!(
            decide(&s, &going, &none, "r1", "r1", ts(0))
                .delete
                .is_empty()
        );
        // An unhealthy remaining pod holds the scale-down.
        let mut sick = pods.clone();
        sick[0] = pod(&s, 0, "r1", false);
        assert!(
            decide(&s, &sick, &none, "r1", "r1", ts(0))
                .delete
                .is_empty()
        );
        // Claims stay by default; whenScaled Delete removes those of gone ordinals.
        let claims: BTreeSet<String> = ["data-web-0", "data-web-1", "data-web-2", "other"]
            .map(String::from)
            .into();
        assert!(
            decide(&s, &pods[..2], &claims, "r1", "r1", ts(0))
                .delete_claims
                .is_empty()
        );
        let del = sts(
            json!({"replicas": 1, "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}}),
        );
        let plan = decide(&del, &pods[..2], &claims, "r1", "r1", ts(0));
        assert_eq!(plan.delete_claims, ["data-web-2"]);
    }

    #[test]
    fn rolling_update_goes_down_to_the_partition() {
        let s = sts(
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}}),
        );
        let none = BTreeSet::new();
        let pods = [
            pod(&s, 0, "r1", true),
            pod(&s, 1, "r1", true),
            pod(&s, 2, "r1", true),
        ];
        let plan = decide(&s, &pods, &none, "r1", "r2", ts(0));
        assert_eq!(deleted(&plan), [("web-2".to_string(), Why::Outdated)]);
        assert_eq!(plan.status.current_replicas, Some(3));
        assert_eq!(plan.status.updated_replicas, None);
        // web-2 gone: recreated at the update revision.
        let plan = decide(&s, &pods[..2], &none, "r1", "r2", ts(0));
        assert_eq!(
            plan.create,
            [Create {
                ordinal: 2,
                updated: true
            }]
        );
        // web-2 updated and ready: web-1 next; web-0 is below the partition.
        let pods2 = [
            pod(&s, 0, "r1", true),
            pod(&s, 1, "r1", true),
            pod(&s, 2, "r2", true),
        ];
        let plan = decide(&s, &pods2, &none, "r1", "r2", ts(0));
        assert_eq!(deleted(&plan), [("web-1".to_string(), Why::Outdated)]);
        let pods3 = [
            pod(&s, 0, "r1", true),
            pod(&s, 1, "r2", true),
            pod(&s, 2, "r2", true),
        ];
        let plan = decide(&s, &pods3, &none, "r1", "r2", ts(0));
        assert!(plan.delete.is_empty());
        assert_eq!(plan.status.updated_replicas, Some(2));
        assert_eq!(plan.status.current_revision.as_deref(), Some("r1"));
        // A recreated pod below the partition keeps the current revision.
        let plan = decide(&s, &pods3[1..], &none, "r1", "r2", ts(0));
        assert_eq!(
            plan.create,
            [Create {
                ordinal: 0,
                updated: false
            }]
        );
        // Partition 0 and all updated: the update revision becomes current.
        let all = sts(json!({}));
        let done = [
            pod(&all, 0, "r2", true),
            pod(&all, 1, "r2", true),
            pod(&all, 2, "r2", true),
        ];
        let plan = decide(&all, &done, &none, "r1", "r2", ts(0));
        assert_eq!(plan.status.current_revision.as_deref(), Some("r2"));
        assert_eq!(plan.status.current_replicas, Some(3));
        // OnDelete replaces nothing by itself.
        let on_delete = sts(json!({"updateStrategy": {"type": "OnDelete"}}));
        assert!(
            decide(&on_delete, &pods, &none, "r1", "r2", ts(0))
                .delete
                .is_empty()
        );
    }

    #[test]
    fn failed_pods_are_replaced() {
        let s = sts(json!({}));
        let mut broken = pod(&s, 0, "r1", false);
        broken.status.as_mut().unwrap().phase = Some("Failed".into());
        let plan = decide(&s, &[broken], &BTreeSet::new(), "r1", "r1", ts(0));
        assert_eq!(deleted(&plan), [("web-0".to_string(), Why::Failed)]);
        assert!(plan.create.is_empty());
    }

    #[test]
    fn revisions_restore_their_template() {
        let s = sts(json!({}));
        let rev = revision_for(&s, &s.spec.template, 3);
        assert_eq!(rev.metadata.name, Some(revision_name(&s, &s.spec.template)));
        assert_eq!(rev.revision, Some(3));
        assert_eq!(
            rev.data.0.pointer("/spec/template/$patch"),
            Some(&json!("replace"))
        );
        assert_eq!(template_of(&rev), Some(s.spec.template.clone()));
    }
}
