//! The Deployment controller: rolls a Deployment's pod template out through ReplicaSets,
//! one ReplicaSet per template, and keeps the old ones as revision history.
//!
//! It follows Kubernetes' `pkg/controller/deployment` step by step, because users read
//! its behaviour off the status, events and annotations it writes:
//!
//! - **The new ReplicaSet** of a template is named `DEPLOY-HASH`, where HASH
//!   ([`pod_template_hash`]) is a stable hash of the pod template (and of
//!   `status.collisionCount`, bumped when another template already has that name). The
//!   hash is also the `pod-template-hash` label, added to the ReplicaSet's selector,
//!   labels and template labels, so the pods of two templates never mix.
//! - **Revisions.** Each new ReplicaSet gets `deployment.kubernetes.io/revision` one
//!   above the highest old one, and the Deployment carries the revision of its current
//!   ReplicaSet. Rolling back (setting the template back, as `wharf rollout undo` does)
//!   makes an old ReplicaSet the new one again, with a new revision; its old numbers are
//!   kept in `revision-history`. Old ReplicaSets scaled to zero are kept up to
//!   `revisionHistoryLimit`, oldest revisions deleted first.
//! - **RollingUpdate** ([`rolling_step`]) scales the new ReplicaSet up while the total
//!   stays within `replicas + maxSurge`, and old ones down while at least `replicas -
//!   maxUnavailable` stay available ([`resolve_fenceposts`]: surge rounds up, unavailable
//!   down, both zero means one unavailable). Two guards go beyond Kubernetes so that the
//!   bounds hold for the pods that actually exist, not only for `spec.replicas`: a
//!   ReplicaSet counts as many pods as it still has when it has not finished scaling down
//!   (`max(spec, status.replicas)`), and as at most `spec.replicas` available. A stale
//!   ReplicaSet status can then delay a step, never overshoot one.
//! - **Recreate** scales every old ReplicaSet to zero, waits until no old pod runs, then
//!   creates or scales up the new one.
//! - **Scaling** a Deployment in the middle of a rollout spreads the change over the
//!   active ReplicaSets in proportion to their size ([`proportional_scale`]), using the
//!   `desired-replicas` / `max-replicas` annotations as Kubernetes does.
//! - **Status and conditions** as Kubernetes writes them: `Available` (minimum
//!   availability), `Progressing` (`NewReplicaSetCreated`, `FoundNewReplicaSet`,
//!   `ReplicaSetUpdated`, `NewReplicaSetAvailable`, and `ProgressDeadlineExceeded` when
//!   no progress was seen for `progressDeadlineSeconds`), `ReplicaFailure` copied from the
//!   ReplicaSets. `Scaled up replica set web-5d4f8 from 0 to 3` events.
//!
//! Decide apart from do: [`plan`] is a pure function from the Deployment, the
//! ReplicaSets it controls, their pods and the time to a [`Plan`] (create, update,
//! scale, delete, annotate, status); the reconciler claims ReplicaSets (adopting orphans
//! that match, releasing those that stopped matching) and executes the plan through the
//! API, each scale guarded by the ReplicaSet's resourceVersion so a stale cache yields a
//! conflict and a retry rather than a wrong step. As in the ReplicaSet controller, the
//! caches and the triggers come from the same watch streams (kube-runtime's `applier`).

use super::common::{self, Backoff, Claim, Error};
use crate::events::{self, EventType, Recorder};
use futures::{TryStreamExt, stream};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action, applier};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The name events are recorded under.
pub const COMPONENT: &str = "deployment-controller";
/// The revision of a ReplicaSet, and of the Deployment's current one.
pub use crate::api::wellknown::DEPLOYMENT_REVISION_ANNOTATION as REVISION;
/// Earlier revisions of a ReplicaSet that was rolled back to.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's `replicas` when a ReplicaSet was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// `replicas + maxSurge` when a ReplicaSet was last scaled.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The label that tells the pods of one template from another's.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Why a change was made, copied to the ReplicaSet and shown by `rollout history`.
pub use crate::api::wellknown::CHANGE_CAUSE_ANNOTATION as CHANGE_CAUSE;
use crate::api::wellknown::LAST_APPLIED_ANNOTATION as LAST_APPLIED;
const ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";
/// Annotations a Deployment does not pass on to its ReplicaSets.
pub const ANNOTATIONS_NOT_COPIED: &[&str] = &[
    LAST_APPLIED,
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    ROLLBACK_TO,
];
/// `revision-history` is cut to this length.
const MAX_REVISION_HISTORY_CHARS: usize = 2000;
/// A Deployment is looked at again after this long even without a change.
const RESYNC: Duration = Duration::from_secs(5 * 60);

// Condition types and reasons, as Kubernetes names them.
pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const REPLICA_FAILURE: &str = "ReplicaFailure";
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub const RS_UPDATED: &str = "ReplicaSetUpdated";
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const PAUSED: &str = "DeploymentPaused";
pub const RESUMED: &str = "DeploymentResumed";
pub const FAILED_RS_CREATE: &str = "ReplicaSetCreateError";
pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";

/// Starts the controller; it stops when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    config: &super::ControllerConfig,
    pods: &mut super::informer::SharedInformer<Pod>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    tasks.spawn(run(
        client,
        config.workqueue.queue("deployment"),
        pods.feed(),
        shutdown,
    ));
}

// ---------------------------------------------------------------------------------------
// Arithmetic

/// An int or a percentage of `total` (`intstr.GetScaledValueFromIntOrPercent`).
pub fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let percent: i32 = s
                .strip_suffix('%')
                .ok_or_else(|| format!("invalid value {s:?}: not an integer or a percentage"))?
                .parse()
                .map_err(|_| format!("invalid value for IntOrString: {s:?}"))?;
            let exact = f64::from(percent) * f64::from(total) / 100.0;
            Ok(if round_up {
                exact.ceil()
            } else {
                exact.floor()
            } as i32)
        }
    }
}

/// `(maxSurge, maxUnavailable)` for `desired` replicas (`ResolveFenceposts`): surge
/// rounds up, unavailable rounds down, and when both come to zero one pod may be
/// unavailable, or the rollout could never make a step.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), String> {
    let zero = IntOrString::Int(0);
    let surge = scaled_value(max_surge.unwrap_or(&zero), desired, true)
        .map_err(|e| format!("spec.strategy.rollingUpdate.maxSurge: {e}"))?;
    let unavailable = scaled_value(max_unavailable.unwrap_or(&zero), desired, false)
        .map_err(|e| format!("spec.strategy.rollingUpdate.maxUnavailable: {e}"))?;
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

/// `spec.replicas`, 1 when unset.
pub fn desired(d: &Deployment) -> i32 {
    d.spec.replicas.unwrap_or(1).max(0)
}

pub fn is_rolling(d: &Deployment) -> bool {
    d.spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) != Some("Recreate")
}

fn fenceposts(d: &Deployment) -> Result<(i32, i32), String> {
    if !is_rolling(d) {
        return Ok((0, 0));
    }
    let ru = d
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    resolve_fenceposts(
        ru.and_then(|r| r.max_surge.as_ref()),
        ru.and_then(|r| r.max_unavailable.as_ref()),
        desired(d),
    )
}

/// How many pods above `replicas` a rollout may create (0 for Recreate).
pub fn max_surge(d: &Deployment) -> i32 {
    fenceposts(d).map_or(0, |(surge, _)| surge)
}

/// How many of `replicas` may be unavailable during a rollout (0 for Recreate or zero
/// replicas; never more than `replicas`).
pub fn max_unavailable(d: &Deployment) -> i32 {
    if !is_rolling(d) || desired(d) == 0 {
        return 0;
    }
    fenceposts(d).map_or(0, |(_, unavailable)| unavailable.min(desired(d)))
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1).max(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.as_ref();
    (
        s.map_or(0, |s| s.replicas),
        s.and_then(|s| s.ready_replicas).unwrap_or(0),
        s.and_then(|s| s.available_replicas).unwrap_or(0),
    )
}

/// The pods a ReplicaSet stands for: its `spec.replicas`, or more while it still has
/// more (scaling down, or its status not yet caught up with a scale-down).
fn pods_of(rs: &ReplicaSet) -> i32 {
    spec_replicas(rs).max(status_of(rs).0)
}

/// Available pods of a ReplicaSet, at most `spec.replicas`: a ReplicaSet scaled down
/// keeps at most that many, whatever its status still says.
fn available_of(rs: &ReplicaSet) -> i32 {
    status_of(rs).2.min(spec_replicas(rs))
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// A ReplicaSet's revision (0 when it has none; `None` when it is not a number).
pub fn revision(rs: &ReplicaSet) -> Option<i64> {
    match annotation(&rs.metadata, REVISION) {
        None => Some(0),
        Some(v) => v.parse().ok(),
    }
}

fn max_revision(rss: &[&ReplicaSet]) -> i64 {
    rss.iter().filter_map(|rs| revision(rs)).max().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Templates and the new ReplicaSet

/// A stable hash of a pod template: FNV-1a (32 bit) over its JSON (typed, so the field
/// order is fixed) and the collision count, spelled with Kubernetes' safe alphabet
/// (`controller.ComputeHash` + `rand.SafeEncodeString`).
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(&serde_json::to_vec(template).unwrap_or_default());
    if let Some(n) = collision_count {
        feed(&(n as u32).to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(meta) = t.metadata.as_mut() {
        if let Some(labels) = meta.labels.as_mut() {
            labels.remove(POD_TEMPLATE_HASH);
            if labels.is_empty() {
                meta.labels = None;
            }
        }
        if *meta == ObjectMeta::default() {
            t.metadata = None;
        }
    }
    t
}

/// Are two templates the same but for the `pod-template-hash` label?
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    let t = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
    t(a).cmp(&t(b))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// The ReplicaSet running the Deployment's current template (the oldest, if several),
/// and the others.
pub fn split_new_old<'a>(
    d: &Deployment,
    rss: &[&'a ReplicaSet],
) -> (Option<&'a ReplicaSet>, Vec<&'a ReplicaSet>) {
    let mut sorted: Vec<&ReplicaSet> = rss.to_vec();
    sorted.sort_by(|a, b| by_creation(a, b));
    let new = sorted.iter().copied().find(|rs| {
        rs.spec
            .template
            .as_ref()
            .is_some_and(|t| equal_ignore_hash(t, &d.spec.template))
    });
    let old = sorted
        .into_iter()
        .filter(|rs| !new.is_some_and(|n| std::ptr::eq(n, *rs)))
        .collect();
    (new, old)
}

/// The ReplicaSet a Deployment creates for its current template, with 0 replicas and no
/// annotations yet.
pub fn new_replica_set(d: &Deployment, hash: &str) -> ReplicaSet {
    let mut template = d.spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.into(), hash.into());
    let labels = meta.labels.clone();
    let mut selector = d.spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.into(), hash.into());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}-{hash}",
                d.metadata.name.as_deref().unwrap_or_default()
            )),
            namespace: d.metadata.namespace.clone(),
            labels,
            owner_references: Some(vec![common::controller_ref(
                "Deployment",
                "apps/v1",
                &d.metadata,
            )]),
            ..Default::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(0),
            min_ready_seconds: d.spec.min_ready_seconds,
            selector,
            template: Some(template),
        },
        status: None,
    }
}

/// Sets `desired-replicas` and `max-replicas`; true if they changed.
fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (key, value) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let value = value.to_string();
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.into(), value);
            changed = true;
        }
    }
    changed
}

fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    annotation(&rs.metadata, DESIRED_REPLICAS) != Some(desired.to_string().as_str())
        || annotation(&rs.metadata, MAX_REPLICAS) != Some(max.to_string().as_str())
}

/// `SetNewReplicaSetAnnotations`: copies the Deployment's annotations, moves the revision
/// up to `new_revision` (remembering the old one in `revision-history` when rolling back
/// to this ReplicaSet), and for a ReplicaSet about to be created sets the replicas
/// annotations. True if anything changed.
pub fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
) -> bool {
    let mut changed = false;
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if ANNOTATIONS_NOT_COPIED.contains(&k.as_str()) || annotations.get(k) == Some(v) {
            continue;
        }
        annotations.insert(k.clone(), v.clone());
        changed = true;
    }
    let old = annotations.get(REVISION).cloned();
    let old_number = match old.as_deref() {
        None | Some("") => 0,
        Some(v) => match v.parse::<i64>() {
            Ok(n) => n,
            Err(_) => return changed,
        },
    };
    if old_number < new_revision {
        annotations.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old.filter(|o| !o.is_empty()) {
            let history = annotations
                .get(REVISION_HISTORY)
                .cloned()
                .unwrap_or_default();
            let mut entries: Vec<&str> = history.split(',').filter(|s| !s.is_empty()).collect();
            entries.push(&old);
            while entries.iter().map(|e| e.len() + 1).sum::<usize>() - 1
                > MAX_REVISION_HISTORY_CHARS
                && entries.len() > 1
            {
                entries.remove(0);
            }
            let joined = entries.join(",");
            annotations.insert(REVISION_HISTORY.into(), joined);
        }
    }
    if !exists && set_replicas_annotations(rs, desired(d), desired(d) + max_surge(d)) {
        changed = true;
    }
    changed
}

// ---------------------------------------------------------------------------------------
// Scaling decisions

/// One change to a ReplicaSet: its size, with the replicas annotations of the
/// Deployment it was sized for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    pub name: String,
    /// The version this was decided on: the write fails if the ReplicaSet changed since.
    pub resource_version: Option<String>,
    pub from: i32,
    pub to: i32,
    pub desired: i32,
    pub max: i32,
}

/// `scaleReplicaSetAndRecordEvent` (`always_annotate == false`: only a size change) or
/// `scaleReplicaSet` (also when only the annotations are stale).
fn scale(d: &Deployment, rs: &ReplicaSet, to: i32, always_annotate: bool) -> Option<Scale> {
    let from = spec_replicas(rs);
    let (desired, max) = (desired(d), desired(d) + max_surge(d));
    let annotate = always_annotate && replicas_annotations_need_update(rs, desired, max);
    (from != to || annotate).then(|| Scale {
        name: rs.metadata.name.clone().unwrap_or_default(),
        resource_version: rs.metadata.resource_version.clone(),
        from,
        to,
        desired,
        max,
    })
}

fn apply_scale(rs: &mut ReplicaSet, to: i32) {
    rs.spec.replicas = Some(to);
}

/// How big the new ReplicaSet may be now (`NewRSNewReplicas`): for RollingUpdate, up to
/// `replicas + maxSurge` pods in all and never above `replicas`; for Recreate, `replicas`.
pub fn new_rs_new_replicas(d: &Deployment, all: &[&ReplicaSet], new_rs: &ReplicaSet) -> i32 {
    let replicas = desired(d);
    if !is_rolling(d) {
        return replicas;
    }
    let new_size = spec_replicas(new_rs);
    let max_total = replicas + max_surge(d);
    let current: i32 = all.iter().map(|rs| pods_of(rs)).sum();
    if current >= max_total {
        return new_size;
    }
    let up = (max_total - current).min(replicas - new_size).max(0);
    new_size + up
}

/// One step of a rolling update (`rolloutRolling`): scale the new ReplicaSet up if the
/// surge allows, else scale old ReplicaSets down as far as availability allows
/// (unhealthy pods first, then oldest ReplicaSets first). Never more than `replicas +
/// maxSurge` pods, never fewer than `replicas - maxUnavailable` available.
pub fn rolling_step(d: &Deployment, new_rs: &ReplicaSet, old_rss: &[&ReplicaSet]) -> Vec<Scale> {
    let replicas = desired(d);
    let new_size = spec_replicas(new_rs);
    if new_size > replicas {
        return scale(d, new_rs, replicas, false).into_iter().collect();
    }
    if new_size < replicas {
        let all: Vec<&ReplicaSet> = old_rss
            .iter()
            .copied()
            .chain(std::iter::once(new_rs))
            .collect();
        let target = new_rs_new_replicas(d, &all, new_rs);
        if target != new_size {
            return scale(d, new_rs, target, false).into_iter().collect();
        }
    }
    scale_down_old(d, new_rs, old_rss)
}

/// `reconcileOldReplicaSets`: how far old ReplicaSets may shrink.
fn scale_down_old(d: &Deployment, new_rs: &ReplicaSet, old_rss: &[&ReplicaSet]) -> Vec<Scale> {
    let old_count: i32 = old_rss.iter().map(|rs| spec_replicas(rs)).sum();
    if old_count == 0 {
        return Vec::new();
    }
    let all_count = old_count + spec_replicas(new_rs);
    let min_available = desired(d) - max_unavailable(d);
    let new_unavailable = spec_replicas(new_rs) - available_of(new_rs);
    let max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Vec::new();
    }
    let mut old: Vec<ReplicaSet> = old_rss.iter().map(|rs| (*rs).clone()).collect();
    old.sort_by(by_creation);
    let mut ops = Vec::new();

    // Unhealthy pods first: removing them costs no availability.
    let mut cleaned = 0;
    for rs in old.iter_mut() {
        if cleaned >= max_scaled_down {
            break;
        }
        let size = spec_replicas(rs);
        let unhealthy = size - available_of(rs);
        if size == 0 || unhealthy <= 0 {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(unhealthy);
        ops.extend(scale(d, rs, size - down, false));
        apply_scale(rs, size - down);
        cleaned += down;
    }

    // Then available ones, as long as enough stay available.
    let available: i32 = old.iter().map(available_of).sum::<i32>() + available_of(new_rs);
    if available > min_available {
        let budget = available - min_available;
        let mut done = 0;
        for rs in old.iter_mut() {
            if done >= budget {
                break;
            }
            let size = spec_replicas(rs);
            if size == 0 {
                continue;
            }
            let down = size.min(budget - done);
            merge_scale(&mut ops, scale(d, rs, size - down, false));
            apply_scale(rs, size - down);
            done += down;
        }
    }
    ops
}

/// Adds a scale, replacing an earlier one of the same ReplicaSet (keeping its `from`).
fn merge_scale(ops: &mut Vec<Scale>, op: Option<Scale>) {
    let Some(op) = op else { return };
    match ops.iter_mut().find(|o| o.name == op.name) {
        Some(earlier) => earlier.to = op.to,
        None => ops.push(op),
    }
}

fn active<'a>(rss: &[&'a ReplicaSet]) -> Vec<&'a ReplicaSet> {
    rss.iter()
        .copied()
        .filter(|rs| spec_replicas(rs) > 0)
        .collect()
}

/// Did `replicas` change since the active ReplicaSets were sized (`isScalingEvent`)?
pub fn is_scaling_event(
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    old_rss: &[&ReplicaSet],
) -> bool {
    let all: Vec<&ReplicaSet> = old_rss.iter().copied().chain(new_rs).collect();
    active(&all).iter().any(|rs| {
        annotation(&rs.metadata, DESIRED_REPLICAS)
            .and_then(|v| v.parse::<i32>().ok())
            .is_some_and(|n| n != desired(d))
    })
}

fn is_saturated(d: &Deployment, rs: &ReplicaSet) -> bool {
    let desired_annotation =
        annotation(&rs.metadata, DESIRED_REPLICAS).and_then(|v| v.parse().ok());
    spec_replicas(rs) == desired(d)
        && desired_annotation == Some(desired(d))
        && status_of(rs).2 == desired(d)
}

/// Resizes the ReplicaSets for a new `replicas` (`scale`): all of it to the only active
/// (or latest) ReplicaSet, old ones to zero once the new one is saturated, else the
/// difference spread in proportion to size (rolling updates only).
pub fn proportional_scale(
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    old_rss: &[&ReplicaSet],
) -> Vec<Scale> {
    let replicas = desired(d);
    let mut old_newest_first: Vec<&ReplicaSet> = old_rss.to_vec();
    old_newest_first.sort_by(|a, b| by_creation(b, a));
    let all: Vec<&ReplicaSet> = old_newest_first.iter().copied().chain(new_rs).collect();
    let active_all = active(&all);
    let only = match active_all.as_slice() {
        [] => new_rs.or(old_newest_first.first().copied()),
        [one] => Some(*one),
        _ => None,
    };
    if let Some(rs) = only {
        if spec_replicas(rs) == replicas {
            return Vec::new();
        }
        return scale(d, rs, replicas, true).into_iter().collect();
    }
    if new_rs.is_some_and(|rs| is_saturated(d, rs)) {
        return active(old_rss)
            .into_iter()
            .filter_map(|rs| scale(d, rs, 0, false))
            .collect();
    }
    if !is_rolling(d) {
        return Vec::new();
    }
    let total: i32 = active_all.iter().map(|rs| spec_replicas(rs)).sum();
    let allowed = if replicas > 0 {
        replicas + max_surge(d)
    } else {
        0
    };
    let to_add = allowed - total;
    let mut ordered = active_all.clone();
    ordered.sort_by(|a, b| {
        spec_replicas(b).cmp(&spec_replicas(a)).then_with(|| {
            if to_add > 0 {
                by_creation(b, a)
            } else {
                by_creation(a, b)
            }
        })
    });
    let mut added = 0;
    let mut sizes: Vec<i32> = Vec::with_capacity(ordered.len());
    for rs in &ordered {
        if to_add != 0 {
            let proportion = proportion(d, rs, to_add, added);
            sizes.push(spec_replicas(rs) + proportion);
            added += proportion;
        } else {
            sizes.push(spec_replicas(rs));
        }
    }
    if to_add != 0
        && let Some(first) = sizes.first_mut()
    {
        *first = (*first + to_add - added).max(0);
    }
    ordered
        .iter()
        .zip(sizes)
        .filter_map(|(rs, size)| scale(d, rs, size, true))
        .collect()
}

/// `GetReplicaSetProportion`.
fn proportion(d: &Deployment, rs: &ReplicaSet, to_add: i32, added: i32) -> i32 {
    if spec_replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = fraction(d, rs);
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

/// `getReplicaSetFraction`.
fn fraction(d: &Deployment, rs: &ReplicaSet) -> i32 {
    let size = spec_replicas(rs);
    if desired(d) == 0 {
        return -size;
    }
    let max_now = desired(d) + max_surge(d);
    let mut before = annotation(&rs.metadata, MAX_REPLICAS)
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    if before == 0 {
        before = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        if before == 0 {
            return 0;
        }
    }
    let new_size = f64::from(size) * f64::from(max_now) / f64::from(before);
    new_size.round() as i32 - size
}

/// Old ReplicaSets beyond `revisionHistoryLimit` that may be deleted: empty, settled,
/// lowest revisions first.
pub fn cleanup(d: &Deployment, old_rss: &[&ReplicaSet]) -> Vec<(String, String)> {
    let Some(limit) = d.spec.revision_history_limit.filter(|l| *l != i32::MAX) else {
        return Vec::new();
    };
    let mut alive: Vec<&ReplicaSet> = old_rss
        .iter()
        .copied()
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    let excess = alive.len() as i64 - i64::from(limit.max(0));
    if excess <= 0 {
        return Vec::new();
    }
    alive.sort_by(|a, b| match (revision(a), revision(b)) {
        (Some(x), Some(y)) if x != y => x.cmp(&y),
        _ => by_creation(a, b),
    });
    alive
        .into_iter()
        .take(excess as usize)
        .filter(|rs| {
            let observed = rs.status.as_ref().and_then(|s| s.observed_generation);
            status_of(rs).0 == 0
                && spec_replicas(rs) == 0
                && rs.metadata.generation.unwrap_or(0) <= observed.unwrap_or(0)
        })
        .map(|rs| {
            (
                rs.metadata.name.clone().unwrap_or_default(),
                rs.metadata.uid.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Recreate waits while any pod of an old ReplicaSet may still run (`oldPodsRunning`).
pub fn old_pods_running(
    new_rs: Option<&ReplicaSet>,
    old_rss: &[&ReplicaSet],
    pods: &[&Pod],
) -> bool {
    if old_rss.iter().map(|rs| status_of(rs).0).sum::<i32>() > 0 {
        return true;
    }
    let new_uid = new_rs.and_then(|rs| rs.metadata.uid.as_deref());
    let old_uids: HashSet<&str> = old_rss
        .iter()
        .filter_map(|rs| rs.metadata.uid.as_deref())
        .collect();
    pods.iter().any(|pod| {
        let Some(owner) = common::controller_of(&pod.metadata) else {
            return false;
        };
        if Some(owner.uid.as_str()) == new_uid || !old_uids.contains(owner.uid.as_str()) {
            return false;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        !matches!(phase, Some("Failed" | "Succeeded"))
    })
}

// ---------------------------------------------------------------------------------------
// Status and conditions

fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_.as_deref() == Some(type_))
}

fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: Some(type_.into()),
        status: Some(status.into()),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// `SetDeploymentCondition`: same status and reason is no change; same status keeps the
/// transition time; the condition moves to the end.
fn set_condition(status: &mut DeploymentStatus, mut cond: DeploymentCondition) {
    if let Some(current) = condition(status, cond.type_.as_deref().unwrap_or_default()) {
        if current.status == cond.status && current.reason == cond.reason {
            return;
        }
        if current.status == cond.status {
            cond.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove_condition(status, cond.type_.as_deref().unwrap_or_default());
    status.conditions.get_or_insert_with(Vec::new).push(cond);
}

fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_.as_deref() != Some(type_));
        if conditions.is_empty() {
            status.conditions = None;
        }
    }
}

fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .progress_deadline_seconds
        .is_some_and(|s| s != i32::MAX)
}

fn nonzero(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

fn get(n: Option<i32>) -> i32 {
    n.unwrap_or(0)
}

/// `calculateStatus`: counts from the ReplicaSets, conditions from `base` with
/// `Available` brought up to date.
pub fn calculate_status(
    d: &Deployment,
    base: &DeploymentStatus,
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    now: Timestamp,
) -> DeploymentStatus {
    let available: i32 = all.iter().map(|rs| status_of(rs).2).sum();
    let total: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
    let terminating: Option<i32> = all
        .iter()
        .filter_map(|rs| rs.status.as_ref().and_then(|s| s.terminating_replicas))
        .reduce(|a, b| a + b);
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: nonzero(all.iter().map(|rs| status_of(rs).0).sum()),
        updated_replicas: nonzero(new_rs.map_or(0, |rs| status_of(rs).0)),
        ready_replicas: nonzero(all.iter().map(|rs| status_of(rs).1).sum()),
        available_replicas: nonzero(available),
        unavailable_replicas: nonzero((total - available).max(0)),
        terminating_replicas: terminating.and_then(nonzero),
        collision_count: base.collision_count,
        conditions: base.conditions.clone(),
    };
    if available >= desired(d) - max_unavailable(d) {
        set_condition(
            &mut status,
            new_condition(
                AVAILABLE,
                "True",
                MIN_AVAILABLE,
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut status,
            new_condition(
                AVAILABLE,
                "False",
                MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    status
}

/// All of `replicas` updated and available, nothing old left, this generation seen.
pub fn deployment_complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let n = desired(d);
    get(status.updated_replicas) == n
        && get(status.replicas) == n
        && get(status.available_replicas) == n
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

fn deployment_progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let old_old = get(old.replicas) - get(old.updated_replicas);
    let new_old = get(new.replicas) - get(new.updated_replicas);
    get(new.updated_replicas) > get(old.updated_replicas)
        || new_old < old_old
        || get(new.ready_replicas) > get(old.ready_replicas)
        || get(new.available_replicas) > get(old.available_replicas)
}

fn deadline(d: &Deployment) -> SignedDuration {
    SignedDuration::from_secs(i64::from(d.spec.progress_deadline_seconds.unwrap_or(600)))
}

fn deployment_timed_out(d: &Deployment, status: &DeploymentStatus, now: Timestamp) -> bool {
    if !has_progress_deadline(d) {
        return false;
    }
    let Some(cond) = condition(status, PROGRESSING) else {
        return false;
    };
    match cond.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => cond
            .last_update_time
            .as_ref()
            .is_some_and(|t| t.0 + deadline(d) < now),
    }
}

/// `syncRolloutStatus`: [`calculate_status`] plus the `Progressing` condition (created,
/// progressing, complete or past its deadline) and `ReplicaFailure`. `base` is the
/// status as this reconcile left it so far (the Deployment's, with conditions set on
/// the way).
pub fn rollout_status(
    d: &Deployment,
    base: &DeploymentStatus,
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    now: Timestamp,
) -> DeploymentStatus {
    let mut status = calculate_status(d, base, all, new_rs, now);
    if !has_progress_deadline(d) {
        remove_condition(&mut status, PROGRESSING);
    }
    let current = condition(base, PROGRESSING).cloned();
    let rs_name = new_rs.and_then(|rs| rs.metadata.name.clone());
    let d_name = d.metadata.name.clone().unwrap_or_default();
    let subject = match &rs_name {
        Some(name) => format!("ReplicaSet {name:?}"),
        None => format!("Deployment {d_name:?}"),
    };
    let already_complete = get(status.replicas) == get(status.updated_replicas)
        && current
            .as_ref()
            .is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
    if has_progress_deadline(d) && !already_complete {
        if deployment_complete(d, &status) {
            set_condition(
                &mut status,
                new_condition(
                    PROGRESSING,
                    "True",
                    NEW_RS_AVAILABLE,
                    format!("{subject} has successfully progressed."),
                    now,
                ),
            );
        } else if deployment_progressing(base, &status) {
            let mut cond = new_condition(
                PROGRESSING,
                "True",
                RS_UPDATED,
                format!("{subject} is progressing."),
                now,
            );
            if let Some(current) = &current {
                if current.status.as_deref() == Some("True") {
                    cond.last_transition_time = current.last_transition_time.clone();
                }
                remove_condition(&mut status, PROGRESSING);
            }
            set_condition(&mut status, cond);
        } else if deployment_timed_out(d, &status, now) {
            set_condition(
                &mut status,
                new_condition(
                    PROGRESSING,
                    "False",
                    TIMED_OUT,
                    format!("{subject} has timed out progressing."),
                    now,
                ),
            );
        }
    }
    match replica_failure(all, new_rs) {
        Some(cond) => set_condition(&mut status, cond),
        None => remove_condition(&mut status, REPLICA_FAILURE),
    }
    status
}

/// The new ReplicaSet's `ReplicaFailure` condition, else the first old one's.
fn replica_failure(
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
) -> Option<DeploymentCondition> {
    new_rs
        .into_iter()
        .chain(all.iter().copied())
        .flat_map(|rs| rs.status.iter().flat_map(|s| s.conditions.iter().flatten()))
        .find(|c| c.type_.as_deref() == Some(REPLICA_FAILURE))
        .map(|c| DeploymentCondition {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_update_time: c.last_transition_time.clone(),
            last_transition_time: c.last_transition_time.clone(),
        })
}

/// `checkPausedConditions`: `Progressing` Unknown with `DeploymentPaused` or
/// `DeploymentResumed` when `spec.paused` flips (a timed-out rollout keeps saying so).
fn paused_conditions(d: &Deployment, status: &mut DeploymentStatus, now: Timestamp) {
    if !has_progress_deadline(d) {
        return;
    }
    let reason = condition(status, PROGRESSING).and_then(|c| c.reason.clone());
    if reason.as_deref() == Some(TIMED_OUT) {
        return;
    }
    let paused_shown = reason.as_deref() == Some(PAUSED);
    let paused = d.spec.paused == Some(true);
    if paused && !paused_shown {
        set_condition(
            status,
            new_condition(
                PROGRESSING,
                "Unknown",
                PAUSED,
                "Deployment is paused".into(),
                now,
            ),
        );
    } else if !paused && paused_shown {
        set_condition(
            status,
            new_condition(
                PROGRESSING,
                "Unknown",
                RESUMED,
                "Deployment is resumed".into(),
                now,
            ),
        );
    }
}

/// When to look again for the progress deadline (`requeueStuckDeployment`).
fn progress_check_after(
    d: &Deployment,
    status: &DeploymentStatus,
    now: Timestamp,
) -> Option<Duration> {
    if !has_progress_deadline(d) || deployment_complete(d, status) {
        return None;
    }
    let cond = condition(status, PROGRESSING)?;
    if matches!(cond.reason.as_deref(), Some(TIMED_OUT | NEW_RS_AVAILABLE)) {
        return None;
    }
    let due = cond.last_update_time.as_ref()?.0 + deadline(d);
    let wait = Duration::try_from(due.duration_since(now)).unwrap_or_default();
    Some(wait + Duration::from_secs(1))
}

// ---------------------------------------------------------------------------------------
// The plan

/// What one reconcile of a Deployment does, in this order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// Create the new ReplicaSet.
    pub create: Option<ReplicaSet>,
    /// Update the new ReplicaSet's annotations and `minReadySeconds`.
    pub update: Option<ReplicaSet>,
    /// Resize ReplicaSets.
    pub scale: Vec<Scale>,
    /// Delete old ReplicaSets beyond the revision history: `(name, uid)`.
    pub delete: Vec<(String, String)>,
    /// Set the Deployment's revision annotation.
    pub revision: Option<String>,
    /// The new status, if it changed.
    pub status: Option<DeploymentStatus>,
    /// Look again this soon (a progress deadline to check).
    pub requeue_after: Option<Duration>,
}

/// What [`plan`] decides from.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub deployment: &'a Deployment,
    /// The ReplicaSets the Deployment controls.
    pub replica_sets: Vec<&'a ReplicaSet>,
    /// Their pods (Recreate waits for the old ones to stop).
    pub pods: Vec<&'a Pod>,
    pub now: Timestamp,
}

/// One reconcile of a Deployment, decided (`syncDeployment`).
pub fn plan(observed: &Observed<'_>) -> Result<Plan, Error> {
    let d = observed.deployment;
    let now = observed.now;
    fenceposts(d).map_err(Error::Invalid)?;
    let mut plan = Plan::default();
    let current = d.status.clone().unwrap_or_default();
    let mut base = current.clone();
    let (existing_new, old) = split_new_old(d, &observed.replica_sets);

    if d.metadata.deletion_timestamp.is_some() {
        let new_rs = sync_revision(d, existing_new, &old, false, &mut base, &mut plan, now);
        let all = all_of(&old, new_rs.as_ref());
        let status = calculate_status(d, &base, &all, new_rs.as_ref(), now);
        plan.status = (status != current).then_some(status);
        return Ok(plan);
    }

    paused_conditions(d, &mut base, now);
    let paused = d.spec.paused == Some(true);
    if paused || is_scaling_event(d, existing_new, &old) {
        let new_rs = sync_revision(d, existing_new, &old, false, &mut base, &mut plan, now);
        plan.scale = proportional_scale(d, new_rs.as_ref(), &old);
        if paused {
            plan.delete = cleanup(d, &old);
        }
        let all = all_of(&old, new_rs.as_ref());
        let status = calculate_status(d, &base, &all, new_rs.as_ref(), now);
        plan.status = (status != current).then_some(status);
        return Ok(plan);
    }

    let new_rs = if is_rolling(d) {
        let new_rs = sync_revision(d, existing_new, &old, true, &mut base, &mut plan, now);
        if let Some(rs) = &new_rs {
            plan.scale = rolling_step(d, rs, &old);
        }
        new_rs
    } else {
        recreate(
            d,
            existing_new,
            &old,
            &observed.pods,
            &mut base,
            &mut plan,
            now,
        )
    };
    if plan.scale.is_empty() && plan.create.is_none() && deployment_complete(d, &current) {
        plan.delete = cleanup(d, &old);
    }
    let all = all_of(&old, new_rs.as_ref());
    let status = rollout_status(d, &base, &all, new_rs.as_ref(), now);
    plan.requeue_after = progress_check_after(d, &status, now);
    plan.status = (status != current).then_some(status);
    Ok(plan)
}

fn all_of<'a>(old: &[&'a ReplicaSet], new_rs: Option<&'a ReplicaSet>) -> Vec<&'a ReplicaSet> {
    old.iter().copied().chain(new_rs).collect()
}

/// `rolloutRecreate`: old ReplicaSets to zero, wait for their pods, then the new one up.
fn recreate(
    d: &Deployment,
    existing_new: Option<&ReplicaSet>,
    old: &[&ReplicaSet],
    pods: &[&Pod],
    base: &mut DeploymentStatus,
    plan: &mut Plan,
    now: Timestamp,
) -> Option<ReplicaSet> {
    let new_rs = sync_revision(d, existing_new, old, false, base, plan, now);
    plan.scale = active(old)
        .into_iter()
        .filter_map(|rs| scale(d, rs, 0, false))
        .collect();
    if !plan.scale.is_empty() || old_pods_running(new_rs.as_ref(), old, pods) {
        return new_rs;
    }
    let new_rs = match new_rs {
        Some(rs) => Some(rs),
        None => sync_revision(d, None, old, true, base, plan, now),
    };
    if let Some(rs) = &new_rs
        && plan.create.is_none()
    {
        plan.scale.extend(scale(d, rs, desired(d), false));
    }
    new_rs
}

/// `getNewReplicaSet` (with `SetDeploymentRevision`): the existing new ReplicaSet with
/// its annotations synced, or (when `create`) the one to create, sized for the first
/// step. Records on `base` the `Progressing` condition for a found or created one.
fn sync_revision(
    d: &Deployment,
    existing: Option<&ReplicaSet>,
    old: &[&ReplicaSet],
    create: bool,
    base: &mut DeploymentStatus,
    plan: &mut Plan,
    now: Timestamp,
) -> Option<ReplicaSet> {
    let new_revision = max_revision(old) + 1;
    let d_revision = annotation(&d.metadata, REVISION);
    if let Some(existing) = existing {
        let mut rs = existing.clone();
        let mut changed = set_new_rs_annotations(d, &mut rs, new_revision, true);
        if rs.spec.min_ready_seconds != d.spec.min_ready_seconds {
            rs.spec.min_ready_seconds = d.spec.min_ready_seconds;
            changed = true;
        }
        if changed {
            plan.update = Some(rs.clone());
        }
        if let Some(rev) = annotation(&rs.metadata, REVISION)
            && d_revision != Some(rev)
        {
            plan.revision = Some(rev.to_string());
        }
        if has_progress_deadline(d) && condition(base, PROGRESSING).is_none() {
            let name = rs.metadata.name.clone().unwrap_or_default();
            set_condition(
                base,
                new_condition(
                    PROGRESSING,
                    "True",
                    FOUND_NEW_RS,
                    format!("Found new replica set {name:?}"),
                    now,
                ),
            );
        }
        return Some(rs);
    }
    if !create {
        return None;
    }
    let collision_count = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = pod_template_hash(&d.spec.template, collision_count);
    let mut rs = new_replica_set(d, &hash);
    let all: Vec<&ReplicaSet> = old.iter().copied().chain(std::iter::once(&rs)).collect();
    let size = new_rs_new_replicas(d, &all, &rs);
    rs.spec.replicas = Some(size);
    set_new_rs_annotations(d, &mut rs, new_revision, false);
    let revision = new_revision.to_string();
    if d_revision != Some(revision.as_str()) {
        plan.revision = Some(revision);
    }
    if has_progress_deadline(d) {
        let name = rs.metadata.name.clone().unwrap_or_default();
        set_condition(
            base,
            new_condition(
                PROGRESSING,
                "True",
                NEW_RS_CREATED,
                format!("Created new replica set {name:?}"),
                now,
            ),
        );
    }
    plan.create = Some(rs.clone());
    Some(rs)
}

// ---------------------------------------------------------------------------------------
// Doing

struct Ctx {
    client: kube::Client,
    deployments: Store<Deployment>,
    rss: Store<ReplicaSet>,
    pods: Store<Pod>,
    recorder: Recorder,
    backoff: Backoff,
}

type ReconcileFuture = Pin<Box<dyn Future<Output = Result<Action, Error>> + Send>>;

async fn run(
    client: kube::Client,
    queue: crate::metrics::QueueMetrics,
    pod_feed: super::informer::Feed<Pod>,
    shutdown: CancellationToken,
) {
    let (deployments, deploy_writer) = reflector::store::<Deployment>();
    let (rss, rs_writer) = reflector::store::<ReplicaSet>();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        deployments: deployments.clone(),
        rss,
        pods: pod_feed.store.clone(),
        recorder: Recorder::new(client.clone(), COMPONENT),
        backoff: Backoff::default(),
    });

    let own = watcher(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(deploy_writer)
    .touched_objects()
    .try_filter_map({
        let ctx = ctx.clone();
        move |d| {
            let at = ObjectRef::from_obj(&d);
            let present = ctx.deployments.get(&at).is_some();
            if !present {
                ctx.backoff.succeeded(&common::key(&d.metadata));
            }
            futures::future::ready(Ok(present.then_some(at)))
        }
    });
    let from_rss = watcher(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(rs_writer)
    .touched_objects()
    .map_ok({
        let ctx = ctx.clone();
        move |rs| stream::iter(ctx.triggers_for_rs(&rs).into_iter().map(Ok))
    })
    .try_flatten();
    let from_pods = pod_feed
        .results()
        .map_ok({
            let ctx = ctx.clone();
            move |pod| stream::iter(ctx.triggers_for_pod(&pod).into_iter().map(Ok))
        })
        .try_flatten();

    let outcomes = applier(
        common::metered(queue, |d, ctx| -> ReconcileFuture {
            Box::pin(reconcile(d, ctx))
        }),
        error_policy,
        ctx,
        deployments,
        stream::select(own, stream::select(from_rss, from_pods)),
        controller::Config::default(),
    );
    common::drive("deployment", outcomes, shutdown).await;
}

impl Ctx {
    /// A ReplicaSet event concerns its controlling Deployment, or for an orphan, the
    /// Deployments whose selector matches it.
    fn triggers_for_rs(&self, rs: &ReplicaSet) -> Vec<ObjectRef<Deployment>> {
        let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(owner) = common::controller_of(&rs.metadata) {
            if owner.kind == "Deployment" && owner.api_version.starts_with("apps/") {
                return vec![ObjectRef::new(&owner.name).within(ns)];
            }
            return Vec::new();
        }
        if rs.metadata.deletion_timestamp.is_some() {
            return Vec::new();
        }
        self.deployments
            .state()
            .iter()
            .filter(|d| d.metadata.namespace.as_deref() == Some(ns))
            .filter(|d| common::selects(Some(&d.spec.selector), rs.metadata.labels.as_ref()))
            .map(|d| ObjectRef::from_obj(d.as_ref()))
            .collect()
    }

    /// A pod event matters to a Recreate Deployment waiting for old pods to stop.
    fn triggers_for_pod(&self, pod: &Pod) -> Vec<ObjectRef<Deployment>> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let Some(owner) = common::controller_of(&pod.metadata).filter(|o| o.kind == "ReplicaSet")
        else {
            return Vec::new();
        };
        let Some(rs) = self.rss.get(&ObjectRef::new(&owner.name).within(ns)) else {
            return Vec::new();
        };
        let Some(d_owner) = common::controller_of(&rs.metadata).filter(|o| o.kind == "Deployment")
        else {
            return Vec::new();
        };
        let at = ObjectRef::new(&d_owner.name).within(ns);
        match self.deployments.get(&at) {
            Some(d) if !is_rolling(&d) => vec![at],
            _ => Vec::new(),
        }
    }
}

fn error_policy(d: Arc<Deployment>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let key = common::key(&d.metadata);
    let delay = ctx.backoff.failed(&key);
    if error.code() == Some(409) {
        tracing::debug!(deployment = %key, %error, ?delay, "conflict; retrying");
    } else {
        tracing::warn!(deployment = %key, %error, ?delay, "reconciling failed; retrying");
    }
    Action::requeue(delay)
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    common::synced(&ctx.rss, "replica set").await?;
    common::synced(&ctx.pods, "pod").await?;
    let key = common::key(&d.metadata);
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let in_ns: Vec<Arc<ReplicaSet>> = ctx
        .rss
        .state()
        .into_iter()
        .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns.as_str()))
        .collect();
    let owned = claim_replica_sets(&ctx, &d, &in_ns).await?;
    let uids: HashSet<&str> = owned
        .iter()
        .filter_map(|rs| rs.metadata.uid.as_deref())
        .collect();
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|p| {
            common::controller_of(&p.metadata).is_some_and(|o| uids.contains(o.uid.as_str()))
        })
        .collect();
    let observed = Observed {
        deployment: &d,
        replica_sets: owned.iter().map(Arc::as_ref).collect(),
        pods: pods.iter().map(Arc::as_ref).collect(),
        now: common::now(),
    };
    let plan = plan(&observed)?;
    let action = execute(&ctx, &d, plan).await?;
    ctx.backoff.succeeded(&key);
    Ok(action)
}

/// Adopts matching orphan ReplicaSets and releases owned ones that stopped matching;
/// answers the ReplicaSets the Deployment controls.
async fn claim_replica_sets(
    ctx: &Ctx,
    d: &Deployment,
    rss: &[Arc<ReplicaSet>],
) -> Result<Vec<Arc<ReplicaSet>>, Error> {
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let name = d.metadata.name.clone().unwrap_or_default();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let deleting = d.metadata.deletion_timestamp.is_some();
    let mut owned = Vec::new();
    let mut adopt = Vec::new();
    let mut release = Vec::new();
    for rs in rss {
        let matches = common::selects(Some(&d.spec.selector), rs.metadata.labels.as_ref());
        match common::claim(&uid, deleting, matches, &rs.metadata) {
            Claim::Owned => owned.push(rs.clone()),
            Claim::Adopt => adopt.push(rs.clone()),
            Claim::Release => release.push(rs.clone()),
            Claim::Ignore => {}
        }
    }
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let mut first_error = None;
    if !adopt.is_empty() {
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let fresh = match deployments.get(&name).await {
            Ok(f) => Some(f),
            Err(e) if common::code_of(&e) == Some(404) => None,
            Err(e) => return Err(Error::api("reading deployment", format!("{ns}/{name}"))(e)),
        };
        let may_adopt = fresh.is_some_and(|f| {
            f.metadata.uid.as_deref() == Some(uid.as_str())
                && f.metadata.deletion_timestamp.is_none()
        });
        if may_adopt {
            let owner = common::controller_ref("Deployment", "apps/v1", &d.metadata);
            for rs in adopt {
                let rs_name = rs.metadata.name.clone().unwrap_or_default();
                let patch = common::adopt_patch(&rs.metadata, &owner);
                match api
                    .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(adopted) => owned.push(Arc::new(adopted)),
                    Err(e) if common::code_of(&e) == Some(404) => {}
                    Err(e) => {
                        first_error.get_or_insert(Error::api(
                            "adopting replica set",
                            format!("{ns}/{rs_name}"),
                        )(e));
                    }
                }
            }
        }
    }
    for rs in release {
        let rs_name = rs.metadata.name.clone().unwrap_or_default();
        let patch = common::release_patch(&rs.metadata, &uid);
        match api
            .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if common::code_of(&e) == Some(404) => {}
            Err(e) => {
                first_error.get_or_insert(Error::api(
                    "releasing replica set",
                    format!("{ns}/{rs_name}"),
                )(e));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(owned),
    }
}

async fn execute(ctx: &Ctx, d: &Deployment, plan: Plan) -> Result<Action, Error> {
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let name = d.metadata.name.clone().unwrap_or_default();
    let about = events::reference("Deployment", "apps/v1", &d.metadata);
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let d_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    // The latest resourceVersion of each ReplicaSet written here, for later writes.
    let mut versions: HashMap<String, Option<String>> = HashMap::new();

    if let Some(rs) = &plan.create {
        let rs_name = rs.metadata.name.clone().unwrap_or_default();
        match rs_api.create(&PostParams::default(), rs).await {
            Ok(created) => {
                let size = spec_replicas(&created);
                if size > 0 {
                    ctx.recorder
                        .record(
                            &about,
                            EventType::Normal,
                            "ScalingReplicaSet",
                            &format!("Scaled up replica set {rs_name} from 0 to {size}"),
                        )
                        .await;
                }
                versions.insert(rs_name, created.metadata.resource_version);
            }
            Err(e) if common::code_of(&e) == Some(409) => {
                return on_name_taken(ctx, d, &rs_name).await;
            }
            // A namespace being deleted takes nothing new; the Deployment goes with it.
            Err(kube::Error::Api(status))
                if status.code == 403 && status.message.contains("being terminated") =>
            {
                return Ok(Action::await_change());
            }
            Err(e) => {
                let message = format!(
                    "Failed to create new replica set {rs_name:?}: {}",
                    reason_of(&e)
                );
                if has_progress_deadline(d) {
                    let mut status = d.status.clone().unwrap_or_default();
                    set_condition(
                        &mut status,
                        new_condition(
                            PROGRESSING,
                            "False",
                            FAILED_RS_CREATE,
                            message.clone(),
                            common::now(),
                        ),
                    );
                    write_status(&d_api, d, &status).await.ok();
                }
                ctx.recorder
                    .record(&about, EventType::Warning, FAILED_RS_CREATE, &message)
                    .await;
                return Err(Error::api(
                    "creating replica set",
                    format!("{ns}/{rs_name}"),
                )(e));
            }
        }
    }

    if let Some(rs) = &plan.update {
        let rs_name = rs.metadata.name.clone().unwrap_or_default();
        let patch = json!({
            "metadata": {
                "resourceVersion": rs.metadata.resource_version,
                "annotations": rs.metadata.annotations,
            },
            "spec": {"minReadySeconds": rs.spec.min_ready_seconds},
        });
        let updated = rs_api
            .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::api(
                "updating replica set",
                format!("{ns}/{rs_name}"),
            ))?;
        versions.insert(rs_name, updated.metadata.resource_version);
    }

    for op in &plan.scale {
        let version = versions
            .get(&op.name)
            .cloned()
            .unwrap_or_else(|| op.resource_version.clone());
        let patch = json!({
            "metadata": {
                "resourceVersion": version,
                "annotations": {
                    DESIRED_REPLICAS: op.desired.to_string(),
                    MAX_REPLICAS: op.max.to_string(),
                },
            },
            "spec": {"replicas": op.to},
        });
        let scaled = rs_api
            .patch(&op.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::api(
                "scaling replica set",
                format!("{ns}/{}", op.name),
            ))?;
        versions.insert(op.name.clone(), scaled.metadata.resource_version);
        if op.from != op.to {
            let direction = if op.to > op.from { "up" } else { "down" };
            ctx.recorder
                .record(
                    &about,
                    EventType::Normal,
                    "ScalingReplicaSet",
                    &format!(
                        "Scaled {direction} replica set {} from {} to {}",
                        op.name, op.from, op.to
                    ),
                )
                .await;
        }
    }

    for (rs_name, uid) in &plan.delete {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match rs_api.delete(rs_name, &params).await {
            Ok(_) => {}
            Err(e) if matches!(common::code_of(&e), Some(404 | 409)) => {}
            Err(e) => {
                return Err(Error::api(
                    "deleting old replica set",
                    format!("{ns}/{rs_name}"),
                )(e));
            }
        }
    }

    if let Some(revision) = &plan.revision {
        let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
        d_api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::api("annotating deployment", format!("{ns}/{name}")))?;
    }

    if let Some(status) = &plan.status {
        write_status(&d_api, d, status).await.map_err(Error::api(
            "updating status of deployment",
            format!("{ns}/{name}"),
        ))?;
    }

    Ok(Action::requeue(
        plan.requeue_after.unwrap_or(RESYNC).min(RESYNC),
    ))
}

/// The new ReplicaSet's name exists: ours with this template (a cache behind our own
/// create: wait for it), or another template's (a hash collision: bump
/// `collisionCount`, which changes the hash).
async fn on_name_taken(ctx: &Ctx, d: &Deployment, rs_name: &str) -> Result<Action, Error> {
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = rs_api
        .get(rs_name)
        .await
        .map_err(Error::api("reading replica set", format!("{ns}/{rs_name}")))?;
    let ours = common::controller_of(&existing.metadata)
        .is_some_and(|o| Some(o.uid.as_str()) == d.metadata.uid.as_deref());
    let same = existing
        .spec
        .template
        .as_ref()
        .is_some_and(|t| equal_ignore_hash(t, &d.spec.template));
    if !(ours && same) {
        let mut status = d.status.clone().unwrap_or_default();
        let count = status.collision_count.unwrap_or(0);
        status.collision_count = Some(count.saturating_add(1));
        tracing::info!(deployment = %common::key(&d.metadata), replicaset = rs_name, "pod template hash collision; bumping collisionCount");
        let d_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        write_status(&d_api, d, &status).await.map_err(Error::api(
            "updating status of deployment",
            common::key(&d.metadata),
        ))?;
    }
    Ok(Action::requeue(Duration::from_millis(100)))
}

fn reason_of(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

async fn write_status(
    api: &Api<Deployment>,
    d: &Deployment,
    status: &DeploymentStatus,
) -> Result<(), kube::Error> {
    let old = serde_json::to_value(&d.status).unwrap_or_default();
    let new = serde_json::to_value(status).unwrap_or_default();
    let name = d.metadata.name.clone().unwrap_or_default();
    match api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(common::status_patch(&old, &new)),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if common::code_of(&e) == Some(404) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
