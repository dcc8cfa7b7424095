//! What the workload controllers share: the ReplicaSet and Deployment controllers own this
//! module (other controllers are welcome to use it, and to ask before changing it).
//!
//! - **Ownership.** A controller owns its dependents through an `ownerReference` with
//!   `controller: true`; [`claim`] is Kubernetes' `ClaimObject` as a pure decision (keep,
//!   adopt an orphan that matches the selector, release a dependent that stopped matching,
//!   or leave alone what another controller owns), and [`adopt_patch`] / [`release_patch`]
//!   are the patches that carry it out. Both patches name the dependent's `uid` and
//!   `resourceVersion`, so a claim never lands on a different or changed object: a stale
//!   cache gives a 409 and a retry, not a wrong owner.
//! - **Selectors.** Typed `LabelSelector` matching and its string form (`app=web,tier in
//!   (a,b)`), as `metav1.LabelSelectorAsSelector` has them: a missing selector selects
//!   nothing, an empty one everything.
//! - **Pods.** Active (not terminating, not ended), ready and available (ready for at
//!   least `minReadySeconds`) as `podutil` computes them; the deciders count with these.
//! - **Status writes.** [`status_patch`] is a JSON merge patch that replaces a status
//!   whole (fields that went away become `null`), so a controller writes the status it
//!   computed without a read-modify-write race on the rest of the object.
//! - **Errors and retries.** One [`Error`] for the controllers' API calls, and a per-key
//!   exponential [`Backoff`] for the error policy: a conflict retries in 100 ms, a
//!   persistent failure settles at 30 s.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::Api;
use kube::runtime::reflector::Store;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// How long a controller waits for its caches' first list before it gives up on a
/// reconcile (and retries through its error policy).
pub const CACHE_SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// The controllers' error: which API call failed, on what.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {target}: {source}")]
    Api {
        action: &'static str,
        target: String,
        #[source]
        source: kube::Error,
    },
    #[error("the {0} cache did not sync within {CACHE_SYNC_TIMEOUT:?}")]
    CacheNotSynced(&'static str),
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// A closure for `map_err` that wraps a client error with what was being done.
    pub fn api(
        action: &'static str,
        target: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> Self {
        let target = target.into();
        move |source| Error::Api {
            action,
            target,
            source,
        }
    }

    /// The HTTP code of the server's answer, if the server answered with a Status.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }
}

/// The server's status code of a client error, if it answered one.
pub fn code_of(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Deletes the pod `name` only while it is still the one with `uid` (a new pod that took
/// the name is left alone), as Kubernetes' controllers delete with a UID precondition.
/// `Ok(false)` when the pod is already gone or was replaced: nothing to do, the watch
/// will say.
pub async fn delete_pod_with_uid(
    pods: &kube::Api<Pod>,
    name: &str,
    uid: &str,
) -> Result<bool, kube::Error> {
    let params = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match pods.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(e) if matches!(code_of(&e), Some(404 | 409)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until a reflector store has its first complete list: deciding on a partial view
/// would create pods that already exist.
pub async fn synced<K>(store: &Store<K>, what: &'static str) -> Result<(), Error>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    match tokio::time::timeout(CACHE_SYNC_TIMEOUT, store.wait_until_ready()).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Error::CacheNotSynced(what)),
    }
}

/// `namespace/name`, the key expectations and backoffs are kept under.
pub fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Now, to the second: what Kubernetes' `metav1.Time` keeps, so a condition written now
/// compares equal to itself read back.
pub fn now() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// Exponential backoff per object key, for error policies: 100 ms doubling to 30 s,
/// forgotten on the next successful reconcile.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    /// Records a failure of `key` and answers how long to wait before the retry.
    pub fn failed(&self, key: &str) -> Duration {
        let Ok(mut failures) = self.failures.lock() else {
            return Self::MAX;
        };
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        Self::delay(*n)
    }

    pub fn succeeded(&self, key: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(key);
        }
    }

    /// The delay after `n` consecutive failures.
    pub fn delay(n: u32) -> Duration {
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        Self::BASE.saturating_mul(factor).min(Self::MAX)
    }
}

// ---------------------------------------------------------------------------------------
// Selectors

pub use crate::api::selector::matches_selector as selector_matches;

/// Does an optional selector select `labels`? A missing selector selects nothing.
pub fn selects(
    selector: Option<&LabelSelector>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let empty = BTreeMap::new();
    selector.is_some_and(|s| selector_matches(s, labels.unwrap_or(&empty)))
}

/// A selector as `labels.Selector.String()` prints it: requirements sorted by key,
/// `k=v`, `k in (a,b)`, `k notin (a)`, `k`, `!k`; empty when it selects everything.
pub fn selector_string(selector: &LabelSelector) -> String {
    let mut reqs: Vec<(String, String)> = Vec::new();
    for (k, v) in selector.match_labels.iter().flatten() {
        reqs.push((k.clone(), format!("{k}={v}")));
    }
    for e in selector.match_expressions.iter().flatten() {
        let mut values = e.values.clone().unwrap_or_default();
        values.sort();
        values.dedup();
        let text = match e.operator.as_str() {
            "In" => format!("{} in ({})", e.key, values.join(",")),
            "NotIn" => format!("{} notin ({})", e.key, values.join(",")),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other} ({})", e.key, values.join(",")),
        };
        reqs.push((e.key.clone(), text));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    reqs.into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(",")
}

// ---------------------------------------------------------------------------------------
// Ownership

/// The owner reference that makes `kind/name` the controller of a dependent.
pub fn controller_ref(kind: &str, api_version: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The owner reference with `controller: true`, if the object has one.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// What a controller does with an object its selector might cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Ours and matching: count it.
    Owned,
    /// An orphan that matches: make it ours (then count it).
    Adopt,
    /// Ours but no longer matching: let it go.
    Release,
    /// Someone else's, or an orphan we may not take.
    Ignore,
}

/// Kubernetes' `ClaimObject` as a decision: `owner_uid` is the claiming controller,
/// `owner_deleting` whether it is being deleted (it then adopts and releases nothing),
/// `matches` whether its selector selects the object.
pub fn claim(owner_uid: &str, owner_deleting: bool, matches: bool, object: &ObjectMeta) -> Claim {
    match controller_of(object) {
        Some(r) if r.uid != owner_uid => Claim::Ignore,
        Some(_) if matches => Claim::Owned,
        Some(_) if owner_deleting => Claim::Ignore,
        Some(_) => Claim::Release,
        None if owner_deleting || !matches || object.deletion_timestamp.is_some() => Claim::Ignore,
        None => Claim::Adopt,
    }
}

/// The merge patch that adds `owner` as the controller of `object`, keeping its other
/// owner references; only for the object with this uid and resourceVersion.
pub fn adopt_patch(object: &ObjectMeta, owner: &OwnerReference) -> Value {
    let mut refs: Vec<OwnerReference> = object
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != owner.uid)
        .cloned()
        .collect();
    refs.push(owner.clone());
    guarded_meta_patch(object, json!({ "ownerReferences": refs }))
}

/// The merge patch that removes the owner reference to `owner_uid` from `object`.
pub fn release_patch(object: &ObjectMeta, owner_uid: &str) -> Value {
    let refs: Vec<OwnerReference> = object
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != owner_uid)
        .cloned()
        .collect();
    let refs = if refs.is_empty() {
        Value::Null
    } else {
        json!(refs)
    };
    guarded_meta_patch(object, json!({ "ownerReferences": refs }))
}

fn guarded_meta_patch(object: &ObjectMeta, fields: Value) -> Value {
    let mut meta = Map::new();
    if let Some(uid) = &object.uid {
        meta.insert("uid".into(), json!(uid));
    }
    if let Some(rv) = &object.resource_version {
        meta.insert("resourceVersion".into(), json!(rv));
    }
    if let Value::Object(fields) = fields {
        meta.extend(fields);
    }
    json!({ "metadata": meta })
}

/// A merge patch that makes the status `new`: `old`'s fields missing from `new` are set
/// to null, arrays (conditions) are replaced whole.
/// Writes `new` as the status of `name` through `api` when it differs from `old` (compared
/// as JSON; `None` counts as the default status), as a merge patch of [`status_patch`].
pub async fn write_status_if_changed<K, S>(
    api: &Api<K>,
    name: &str,
    old: Option<&S>,
    new: &S,
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize + Default,
{
    let old = match old {
        Some(old) => serde_json::to_value(old),
        None => serde_json::to_value(S::default()),
    }
    .unwrap_or_default();
    let new = serde_json::to_value(new).unwrap_or_default();
    if old != new {
        api.patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(status_patch(&old, &new)),
        )
        .await?;
    }
    Ok(())
}

pub fn status_patch(old: &Value, new: &Value) -> Value {
    let mut patch = new.as_object().cloned().unwrap_or_default();
    if let Some(old) = old.as_object() {
        for key in old.keys() {
            if !patch.contains_key(key) {
                patch.insert(key.clone(), Value::Null);
            }
        }
    }
    json!({ "status": patch })
}

// ---------------------------------------------------------------------------------------
// Pods

/// Not ended and not being deleted (`controller.IsPodActive`).
pub fn is_pod_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

/// Being deleted but not yet gone, and not ended (`controller.IsPodTerminating`).
pub fn is_pod_terminating(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_some()
}

/// When the pod's Ready condition turned True, if it is True.
pub fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

pub fn is_pod_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now` (`podutil.IsPodAvailable`).
pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    available_at(pod, min_ready_seconds).is_some_and(|at| at < now)
}

/// From when a pod counts as available: `None` if it is not ready (or, with
/// `minReadySeconds`, does not say since when), the distant past without
/// `minReadySeconds`.
pub fn available_at(pod: &Pod, min_ready_seconds: i32) -> Option<Timestamp> {
    let since = ready_since(pod)?;
    if min_ready_seconds <= 0 {
        return Some(Timestamp::MIN);
    }
    since.map(|t| t + jiff::SignedDuration::from_secs(i64::from(min_ready_seconds)))
}

/// Creates one pod for a controller and records the outcome on the controller's object
/// as Kubernetes controllers do: `SuccessfulCreate` with the pod's name, or
/// `FailedCreate` with the error (which is also returned).
pub async fn create_pod_recorded(
    pods: &kube::Api<Pod>,
    pod: &Pod,
    recorder: &crate::events::Recorder,
    about: &k8s_openapi::api::core::v1::ObjectReference,
) -> Result<Pod, kube::Error> {
    use crate::events::EventType;
    match pods.create(&kube::api::PostParams::default(), pod).await {
        Ok(created) => {
            let name = created.metadata.name.as_deref().unwrap_or_default();
            recorder
                .record(
                    about,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("Created pod: {name}"),
                )
                .await;
            Ok(created)
        }
        Err(e) => {
            recorder
                .record(
                    about,
                    EventType::Warning,
                    "FailedCreate",
                    &format!("Error creating: {e}"),
                )
                .await;
            Err(e)
        }
    }
}

/// Wraps a controller's reconcile function to keep its work queue's metrics: every key the
/// queue hands to `reconcile` counts in `workqueue_adds_total{name}`, and
/// `workqueue_depth{name}` is the keys taken and not yet done. kube-runtime's queue is
/// inside its applier (it merges duplicate triggers before a key is taken), so keys are
/// counted where they leave it: a burst of triggers for one key counts once, as it is
/// worked on once.
pub fn metered<K, C, F, Fut, T, E>(
    queue: crate::metrics::QueueMetrics,
    mut reconcile: F,
) -> impl FnMut(std::sync::Arc<K>, std::sync::Arc<C>) -> futures::future::BoxFuture<'static, Result<T, E>>
where
    F: FnMut(std::sync::Arc<K>, std::sync::Arc<C>) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
{
    /// Takes the key off the depth when the reconcile ends, or is dropped.
    struct Taken(prometheus_client::metrics::gauge::Gauge);
    impl Drop for Taken {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    move |object, ctx| {
        queue.adds.inc();
        queue.depth.inc();
        let taken = Taken(queue.depth.clone());
        let work = reconcile(object, ctx);
        Box::pin(async move {
            let result = work.await;
            drop(taken);
            result
        })
    }
}

/// Drives a controller's applier until `shutdown`: a failed reconcile is the error
/// policy's business, a watch failure is worth a warning (the controller is blind until
/// it recovers), anything else is debug detail. The one outcome loop of the controllers
/// whose applier has nothing else to do.
pub async fn drive<K, RE, QE>(
    name: &str,
    outcomes: impl futures::Stream<
        Item = Result<
            (
                kube::runtime::reflector::ObjectRef<K>,
                kube::runtime::controller::Action,
            ),
            kube::runtime::controller::Error<RE, QE>,
        >,
    >,
    shutdown: tokio_util::sync::CancellationToken,
) where
    K: kube::Resource,
    RE: std::error::Error + 'static,
    QE: std::error::Error + 'static,
{
    use futures::StreamExt;
    use kube::runtime::controller::Error as Outcome;
    let outcomes = outcomes.for_each(|outcome| {
        match outcome {
            Ok(_) | Err(Outcome::ReconcilerFailed(..)) => {}
            Err(Outcome::QueueError(e)) => {
                tracing::warn!(error = %e, "{name} controller: watch failed")
            }
            Err(e) => tracing::debug!(error = %e, "{name} controller"),
        }
        futures::future::ready(())
    });
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = outcomes => tracing::warn!("{name} controller stopped"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn meta_owned_by(uid: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some("p".into()),
            uid: Some("pod-uid".into()),
            resource_version: Some("7".into()),
            owner_references: uid.map(|u| {
                vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: "rs".into(),
                    uid: u.into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            }),
            ..Default::default()
        }
    }

    #[test]
    fn selectors_match_and_print_like_kubernetes() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["b".into(), "a".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert!(selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "a")])
        ));
        assert!(!selector_matches(&sel, &labels(&[("app", "web")])));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "a"), ("canary", "1")])
        ));
        assert_eq!(selector_string(&sel), "app=web,!canary,tier in (a,b)");
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
        assert!(!selects(None, Some(&labels(&[("app", "web")]))));
    }

    #[test]
    fn claims_follow_controller_ref_manager() {
        let ours = "rs-uid";
        assert_eq!(
            claim(ours, false, true, &meta_owned_by(Some(ours))),
            Claim::Owned
        );
        assert_eq!(
            claim(ours, false, false, &meta_owned_by(Some(ours))),
            Claim::Release
        );
        assert_eq!(
            claim(ours, true, false, &meta_owned_by(Some(ours))),
            Claim::Ignore
        );
        assert_eq!(
            claim(ours, true, true, &meta_owned_by(Some(ours))),
            Claim::Owned
        );
        assert_eq!(
            claim(ours, false, true, &meta_owned_by(Some("other"))),
            Claim::Ignore
        );
        assert_eq!(claim(ours, false, true, &meta_owned_by(None)), Claim::Adopt);
        assert_eq!(
            claim(ours, false, false, &meta_owned_by(None)),
            Claim::Ignore
        );
        assert_eq!(claim(ours, true, true, &meta_owned_by(None)), Claim::Ignore);
        let mut deleting = meta_owned_by(None);
        deleting.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(claim(ours, false, true, &deleting), Claim::Ignore);
    }

    #[test]
    fn claim_patches_are_guarded_by_uid_and_version() {
        let owner = controller_ref(
            "ReplicaSet",
            "apps/v1",
            &ObjectMeta {
                name: Some("web".into()),
                uid: Some("rs-uid".into()),
                ..Default::default()
            },
        );
        let patch = adopt_patch(&meta_owned_by(None), &owner);
        assert_eq!(patch.pointer("/metadata/uid"), Some(&json!("pod-uid")));
        assert_eq!(
            patch.pointer("/metadata/resourceVersion"),
            Some(&json!("7"))
        );
        assert_eq!(
            patch.pointer("/metadata/ownerReferences/0/controller"),
            Some(&json!(true))
        );
        assert_eq!(
            patch.pointer("/metadata/ownerReferences/0/blockOwnerDeletion"),
            Some(&json!(true))
        );
        let patch = release_patch(&meta_owned_by(Some("rs-uid")), "rs-uid");
        assert_eq!(
            patch.pointer("/metadata/ownerReferences"),
            Some(&Value::Null)
        );
    }

    #[test]
    fn status_patches_null_what_went_away() {
        let old = json!({"replicas": 3, "conditions": [{"type": "X"}], "readyReplicas": 2});
        let new = json!({"replicas": 2});
        assert_eq!(
            status_patch(&old, &new),
            json!({"status": {"replicas": 2, "conditions": null, "readyReplicas": null}})
        );
    }

    #[tokio::test]
    async fn a_metered_reconcile_counts_the_key_and_holds_it_in_depth_while_it_runs() {
        let queue = crate::metrics::QueueMetrics::default();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = std::sync::Arc::new(Mutex::new(Some(released)));
        let mut reconcile = metered(
            queue.clone(),
            move |_: std::sync::Arc<u32>, _: std::sync::Arc<()>| {
                let released = released.lock().unwrap().take();
                async move {
                    if let Some(r) = released {
                        let _ = r.await;
                    }
                    Ok::<_, std::convert::Infallible>(())
                }
            },
        );
        let running = tokio::spawn(reconcile(std::sync::Arc::new(1), std::sync::Arc::new(())));
        // Polled or not, the key is taken as soon as the queue hands it out.
        assert_eq!((queue.adds.get(), queue.depth.get()), (1, 1));
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((queue.adds.get(), queue.depth.get()), (1, 0));
        // A reconcile dropped before it ends gives its key back too.
        drop(reconcile(std::sync::Arc::new(2), std::sync::Arc::new(())));
        assert_eq!((queue.adds.get(), queue.depth.get()), (2, 0));
    }

    #[test]
    fn backoff_doubles_to_a_ceiling_and_resets() {
        assert_eq!(Backoff::delay(1), Duration::from_millis(100));
        assert_eq!(Backoff::delay(2), Duration::from_millis(200));
        assert_eq!(Backoff::delay(4), Duration::from_millis(800));
        assert_eq!(Backoff::delay(40), Duration::from_secs(30));
        let b = Backoff::default();
        b.failed("a");
        assert_eq!(b.failed("a"), Duration::from_millis(200));
        b.succeeded("a");
        assert_eq!(b.failed("a"), Duration::from_millis(100));
    }
}
