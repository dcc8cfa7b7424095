//! The ReplicaSet controller: every ReplicaSet gets `spec.replicas` pods made from its
//! template, and a status that says how many exist, are ready and are available.
//!
//! Shape (Kubernetes' `pkg/controller/replicaset`, on kube-runtime):
//!
//! - **One watch per kind, shared by cache and triggers.** A reflector keeps every pod and
//!   every ReplicaSet in memory; the same pod stream, *after* the cache has applied each
//!   event, maps the pod to the ReplicaSet that controls it (or, for an orphan, to the
//!   ReplicaSets whose selector matches it). So when a reconcile runs because of a pod, the
//!   cache already shows that pod. That is why this uses kube-runtime's `applier` (the
//!   engine under `Controller`) with our own trigger streams instead of `Controller::owns`,
//!   which would open a second pod watch that can run ahead of the cache.
//! - **Level-triggered.** A reconcile gets a key, never an event: it claims the pods
//!   (adopts matching orphans, releases owned pods that no longer match), compares the
//!   active ones with `spec.replicas` through the pure [`decide`], creates or deletes the
//!   difference, and writes the status ([`calculate_status`]) through the status
//!   subresource.
//! - **Expectations.** A watch can lag behind our own writes: right after creating three
//!   pods, the cache may not show them yet, and counting again would create three more.
//!   [`Expectations`] remembers, per ReplicaSet, the pods created and deleted that the cache
//!   has not shown yet; until they are all observed (or [`EXPECTATIONS_TIMEOUT`] passes)
//!   the ReplicaSet only updates its status. Observation is both by event (the pod stream
//!   reports every pod it sees) and by level (a reconcile looks the pods up in the cache),
//!   so an event that arrived before the expectation was written is not lost.
//! - **Slow start.** Creations go in batches of 1, 2, 4, ... ([`slow_start_batches`]) and
//!   stop at the first failing batch, so a template that cannot be created costs one
//!   failed request, not `replicas` of them.
//! - **Which pods go first** when scaling down: [`deletion_order`] ranks them as Kubernetes
//!   does (unscheduled, pending, not ready, cheaper by `pod-deletion-cost`, doubled up on a
//!   node, ready for less time, restarted more, newer).
//! - Pods being deleted (`deletionTimestamp`) and pods that ended do not count as replicas.
//!
//! Events: `SuccessfulCreate`, `SuccessfulDelete`, and `FailedCreate` / `FailedDelete`
//! warnings, from `replicaset-controller`.
//!
//! **One controller, two kinds.** A ReplicationController is the legacy form of a
//! ReplicaSet, and Kubernetes runs the same controller for it over converted objects. So
//! does this one: [`run_for`] watches any kind that converts to a ReplicaSet, keeps the
//! converted objects in its cache, and writes back through the kind's own [`Flavor`]
//! (its owner references, events and status shape). `controllers::replicationcontroller`
//! is only that conversion.

use super::common::{self, Backoff, Claim, Error};
use super::informer::{Feed, SharedInformer};
use crate::events::{self, EventType, Recorder};
use futures::{TryStreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
};
use kube::runtime::controller::{self, Action, applier};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The name events are recorded under.
pub const COMPONENT: &str = "replicaset-controller";
/// At most this many pods are created or deleted in one reconcile (Kubernetes' burst).
pub const BURST_REPLICAS: usize = 500;
/// How long unobserved creations or deletions hold a ReplicaSet back before they are
/// given up on (Kubernetes' `ExpectationsTimeout`).
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// A ReplicaSet is looked at again after this long even without a change: a watch that
/// had to list again may have missed a deletion.
const RESYNC: Duration = Duration::from_secs(60);
/// The annotation with which a user says which pods are cheaper to delete.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Starts the controller; it stops when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    config: &super::ControllerConfig,
    pods: &mut SharedInformer<Pod>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    tasks.spawn(run_for::<ReplicaSet>(
        client,
        config.workqueue.queue("replicaset"),
        pods.feed(),
        shutdown,
        &REPLICA_SET,
        |rs| rs,
    ));
}

/// The kind a run of the controller manages, beyond the ReplicaSet it reads it as: how
/// its pods name it as their owner, how its events and logs name it, and the shape its
/// status is written in.
#[derive(Debug)]
pub struct Flavor {
    pub kind: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    /// Its resource name in URLs.
    pub plural: &'static str,
    /// Who records its events.
    pub component: &'static str,
    /// The status the controller computed, in the kind's own shape (JSON).
    pub status_json: fn(&ReplicaSetStatus) -> Value,
}

impl Flavor {
    /// `apps/v1`, `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_string(),
            version: self.version.to_string(),
            api_version: self.api_version(),
            kind: self.kind.to_string(),
            plural: self.plural.to_string(),
        }
    }

    /// Whether an owner reference names an object of this kind (any version of its group).
    fn owns(&self, kind: &str, api_version: &str) -> bool {
        kind == self.kind && crate::api::kinds::split_api_version(api_version).0 == self.group
    }
}

/// ReplicaSets, as themselves.
pub static REPLICA_SET: Flavor = Flavor {
    kind: "ReplicaSet",
    group: "apps",
    version: "v1",
    plural: "replicasets",
    component: COMPONENT,
    status_json: |s| serde_json::to_value(s).unwrap_or_default(),
};

// ---------------------------------------------------------------------------------------
// Expectations

/// Pods a ReplicaSet created or deleted that the cache has not shown yet.
#[derive(Debug)]
pub struct Expectations {
    timeout: Duration,
    by_key: Mutex<HashMap<String, Expected>>,
}

#[derive(Debug)]
struct Expected {
    /// Names of created pods not seen yet.
    creates: Vec<String>,
    /// `uid -> name` of deleted pods still in the cache, not terminating.
    deletes: HashMap<String, String>,
    /// When an expectation was last raised.
    since: Instant,
}

impl Expectations {
    pub fn new(timeout: Duration) -> Self {
        Expectations {
            timeout,
            by_key: Mutex::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Expected>) -> T) -> Option<T> {
        self.by_key.lock().ok().map(|mut m| f(&mut m))
    }

    fn raise(&self, key: &str, now: Instant, f: impl FnOnce(&mut Expected)) {
        self.with(|m| {
            let e = m.entry(key.to_string()).or_insert_with(|| Expected {
                creates: Vec::new(),
                deletes: HashMap::new(),
                since: now,
            });
            e.since = now;
            f(e);
        });
    }

    /// Pods `names` were created for `key`.
    pub fn expect_creates(&self, key: &str, names: impl IntoIterator<Item = String>, now: Instant) {
        let names: Vec<String> = names.into_iter().collect();
        if names.is_empty() {
            return;
        }
        self.raise(key, now, |e| e.creates.extend(names));
    }

    /// Pods `(uid, name)` are being deleted for `key`.
    pub fn expect_deletes(
        &self,
        key: &str,
        pods: impl IntoIterator<Item = (String, String)>,
        now: Instant,
    ) {
        let pods: Vec<(String, String)> = pods.into_iter().collect();
        if pods.is_empty() {
            return;
        }
        self.raise(key, now, |e| e.deletes.extend(pods));
    }

    /// A deletion that failed will never be observed: stop waiting for it.
    pub fn delete_failed(&self, key: &str, uid: &str) {
        self.with(|m| {
            if let Some(e) = m.get_mut(key) {
                e.deletes.remove(uid);
            }
        });
    }

    /// The cache showed pod `name` (`uid`) of `key`; `gone` when it was deleted or is
    /// terminating.
    pub fn observe(&self, key: &str, name: &str, uid: &str, gone: bool) {
        self.with(|m| {
            if let Some(e) = m.get_mut(key) {
                e.creates.retain(|n| n != name);
                if gone {
                    e.deletes.remove(uid);
                }
            }
        });
    }

    /// Are `key`'s expectations met? `seen(name)` says whether the cache has a pod,
    /// `gone(uid, name)` whether a pod is gone or terminating there. `Err` carries how
    /// long until the expectations time out.
    pub fn satisfied(
        &self,
        key: &str,
        now: Instant,
        seen: impl Fn(&str) -> bool,
        gone: impl Fn(&str, &str) -> bool,
    ) -> Result<(), Duration> {
        let timeout = self.timeout;
        self.with(|m| {
            let Some(e) = m.get_mut(key) else {
                return Ok(());
            };
            e.creates.retain(|n| !seen(n));
            e.deletes.retain(|uid, name| !gone(uid, name));
            let waited = now.saturating_duration_since(e.since);
            if e.creates.is_empty() && e.deletes.is_empty() {
                m.remove(key);
                Ok(())
            } else if waited >= timeout {
                tracing::warn!(
                    key,
                    creates = e.creates.len(),
                    deletes = e.deletes.len(),
                    "expectations timed out; deciding from the cache"
                );
                m.remove(key);
                Ok(())
            } else {
                Err(timeout - waited)
            }
        })
        .unwrap_or(Ok(()))
    }

    /// The ReplicaSet is gone.
    pub fn forget(&self, key: &str) {
        self.with(|m| m.remove(key));
    }
}

// ---------------------------------------------------------------------------------------
// Deciding

/// What a ReplicaSet's pods need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manage {
    Nothing,
    /// Create this many pods.
    Create(usize),
    /// Delete these pods (names), in this order.
    Delete(Vec<String>),
}

/// `spec.replicas`, 1 when unset (the API server defaults it).
pub fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1).max(0)
}

fn min_ready_seconds(rs: &ReplicaSet) -> i32 {
    rs.spec.min_ready_seconds.unwrap_or(0)
}

/// Compares the active pods a ReplicaSet owns with what it asks for. Nothing is done
/// while earlier creations or deletions are unobserved, or while the ReplicaSet is being
/// deleted.
pub fn decide(rs: &ReplicaSet, owned: &[&Pod], expectations_met: bool) -> Manage {
    if rs.metadata.deletion_timestamp.is_some() || !expectations_met {
        return Manage::Nothing;
    }
    let want = replicas(rs) as usize;
    let have = owned.len();
    match have.cmp(&want) {
        Ordering::Less => Manage::Create((want - have).min(BURST_REPLICAS)),
        Ordering::Greater => {
            let n = (have - want).min(BURST_REPLICAS);
            let order = deletion_order(owned);
            Manage::Delete(
                order
                    .into_iter()
                    .take(n)
                    .map(|i| owned[i].metadata.name.clone().unwrap_or_default())
                    .collect(),
            )
        }
        Ordering::Equal => Manage::Nothing,
    }
}

/// Batch sizes for creating `count` pods: 1, 2, 4, ... (`slowStartBatch`).
pub fn slow_start_batches(count: usize) -> Vec<usize> {
    let mut batches = Vec::new();
    let mut remaining = count;
    let mut batch = remaining.min(1);
    while batch > 0 {
        batches.push(batch);
        remaining -= batch;
        batch = (batch * 2).min(remaining);
    }
    batches
}

fn phase_ordinal(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    }
}

fn node_name(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

fn deletion_cost(pod: &Pod) -> i64 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DELETION_COST))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .map_or(0, i64::from)
}

fn max_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().map(|c| c.restart_count).max())
        .unwrap_or(0)
}

/// `afterOrZero`: a missing time sorts first, then the later time.
fn later_first(a: Option<Timestamp>, b: Option<Timestamp>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => b.cmp(&a),
    }
}

/// Indices of `pods`, the pod to delete first first (`ActivePodsWithRanks`): unscheduled
/// before scheduled; Pending before Unknown before Running; not ready before ready; lower
/// `pod-deletion-cost` first; pods sharing a node with more of these pods first; ready
/// for less time first; more container restarts first; newer first.
pub fn deletion_order(pods: &[&Pod]) -> Vec<usize> {
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for pod in pods.iter().filter(|p| common::is_pod_active(p)) {
        *on_node.entry(node_name(pod)).or_default() += 1;
    }
    let rank = |p: &Pod| on_node.get(node_name(p)).copied().unwrap_or(0);
    let mut order: Vec<usize> = (0..pods.len()).collect();
    order.sort_by(|&i, &j| {
        let (a, b) = (pods[i], pods[j]);
        let (na, nb) = (node_name(a), node_name(b));
        let scheduled = if na != nb && (na.is_empty() || nb.is_empty()) {
            nb.is_empty().cmp(&na.is_empty())
        } else {
            Ordering::Equal
        };
        let (ra, rb) = (common::ready_since(a), common::ready_since(b));
        let ready_time = match (ra, rb) {
            (Some(ta), Some(tb)) => later_first(ta, tb),
            _ => Ordering::Equal,
        };
        let created = later_first(
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            b.metadata.creation_timestamp.as_ref().map(|t| t.0),
        );
        scheduled
            .then(phase_ordinal(a).cmp(&phase_ordinal(b)))
            .then(ra.is_some().cmp(&rb.is_some()))
            .then(deletion_cost(a).cmp(&deletion_cost(b)))
            .then(rank(b).cmp(&rank(a)))
            .then(ready_time)
            .then(max_restarts(b).cmp(&max_restarts(a)))
            .then(created)
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    order
}

/// The status of a ReplicaSet whose active owned pods are `owned` (and `terminating`
/// more are being deleted), after managing them failed with `manage_error` or not.
pub fn calculate_status(
    rs: &ReplicaSet,
    owned: &[&Pod],
    terminating: usize,
    manage_error: Option<&str>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let mut status = rs.status.clone().unwrap_or_default();
    let template_labels = rs
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let min_ready = min_ready_seconds(rs);
    let fully_labeled = owned
        .iter()
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            template_labels
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .count();
    let ready = owned.iter().filter(|p| common::is_pod_ready(p)).count();
    let available = owned
        .iter()
        .filter(|p| common::is_pod_available(p, min_ready, now))
        .count();

    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let failure = conditions
        .iter()
        .position(|c| c.type_.as_deref() == Some("ReplicaFailure"));
    match (manage_error, failure) {
        (Some(message), None) => {
            let want = replicas(rs) as usize;
            let reason = match owned.len().cmp(&want) {
                Ordering::Less => "FailedCreate",
                Ordering::Greater => "FailedDelete",
                Ordering::Equal => "",
            };
            conditions.push(ReplicaSetCondition {
                type_: Some("ReplicaFailure".into()),
                status: Some("True".into()),
                reason: Some(reason.into()).filter(|r: &String| !r.is_empty()),
                message: Some(message.to_string()),
                last_transition_time: Some(Time(
                    Timestamp::from_second(now.as_second()).unwrap_or(now),
                )),
            });
        }
        (None, Some(i)) => {
            conditions.remove(i);
        }
        _ => {}
    }
    if conditions.is_empty() {
        status.conditions = None;
    }
    // Zero counts are left out, as Kubernetes' `omitempty` fields are.
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let nonzero = |n: usize| (n > 0).then(|| count(n));
    status.replicas = count(owned.len());
    status.fully_labeled_replicas = nonzero(fully_labeled);
    status.ready_replicas = nonzero(ready);
    status.available_replicas = nonzero(available);
    status.terminating_replicas = nonzero(terminating);
    status.observed_generation = rs.metadata.generation;
    status
}

/// How long until the next owned pod becomes available (ready pods waiting out
/// `minReadySeconds`): when the status must be looked at again.
pub fn next_availability(rs: &ReplicaSet, owned: &[&Pod], now: Timestamp) -> Option<Duration> {
    let min_ready = min_ready_seconds(rs);
    if min_ready <= 0 {
        return None;
    }
    owned
        .iter()
        .filter_map(|p| common::available_at(p, min_ready))
        .filter(|at| *at >= now)
        .min()
        .map(|at| {
            let wait = at.duration_since(now);
            Duration::try_from(wait).unwrap_or_default() + Duration::from_millis(100)
        })
}

/// The pod a ReplicaSet creates: `generateName: RSNAME-`, the template's labels,
/// annotations, finalizers and spec, and the ReplicaSet (as `flavor`'s kind) as its
/// controller.
pub fn pod_from_template(rs: &ReplicaSet, flavor: &Flavor) -> Result<Pod, Error> {
    let name = rs.metadata.name.clone().unwrap_or_default();
    let template = rs
        .spec
        .template
        .as_ref()
        .ok_or_else(|| Error::Invalid(format!("replica set {name} has no pod template")))?;
    let tmeta = template.metadata.clone().unwrap_or_default();
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: rs.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![common::controller_ref(
                flavor.kind,
                &flavor.api_version(),
                &rs.metadata,
            )]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    })
}

// ---------------------------------------------------------------------------------------
// Doing

struct Ctx {
    client: kube::Client,
    flavor: &'static Flavor,
    pods: Store<Pod>,
    rss: Store<ReplicaSet>,
    expectations: Expectations,
    recorder: Recorder,
    backoff: Backoff,
}

type ReconcileFuture = Pin<Box<dyn Future<Output = Result<Action, Error>> + Send>>;

/// Runs the controller for the kind `K`, read as the ReplicaSet `convert` makes of it.
pub async fn run_for<K>(
    client: kube::Client,
    queue: crate::metrics::QueueMetrics,
    pod_feed: Feed<Pod>,
    shutdown: CancellationToken,
    flavor: &'static Flavor,
    convert: fn(K) -> ReplicaSet,
) where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (rss, rs_writer) = reflector::store::<ReplicaSet>();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        flavor,
        pods: pod_feed.store.clone(),
        rss: rss.clone(),
        expectations: Expectations::new(EXPECTATIONS_TIMEOUT),
        recorder: Recorder::new(client.clone(), flavor.component),
        backoff: Backoff::default(),
    });

    // Every object listed or changed is a trigger, a deleted one forgets its
    // expectations. (Objects of the first list are not in the cache until the whole list
    // is: asking the cache whether an object is there would drop them, and a ReplicaSet
    // listed at start would wait for one of its pods to change.)
    let rs_triggers = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map_ok(move |event| convert_event(event, convert))
        .reflect(rs_writer)
        .try_filter_map({
            let ctx = ctx.clone();
            move |event| {
                let at = match event {
                    watcher::Event::Apply(rs) | watcher::Event::InitApply(rs) => {
                        Some(ObjectRef::from_obj(&rs))
                    }
                    watcher::Event::Delete(rs) => {
                        ctx.expectations.forget(&common::key(&rs.metadata));
                        None
                    }
                    watcher::Event::Init | watcher::Event::InitDone => None,
                };
                futures::future::ready(Ok(at))
            }
        });
    let pod_triggers = pod_feed
        .results()
        .map_ok({
            let ctx = ctx.clone();
            move |pod| stream::iter(ctx.triggers_for_pod(&pod).into_iter().map(Ok))
        })
        .try_flatten();

    let outcomes = applier(
        common::metered(queue, |rs, ctx| -> ReconcileFuture {
            Box::pin(reconcile(rs, ctx))
        }),
        error_policy,
        ctx,
        rss,
        stream::select(rs_triggers, pod_triggers),
        controller::Config::default(),
    );
    common::drive(flavor.component, outcomes, shutdown).await;
}

/// A watch event of `K` as the event of the ReplicaSet it converts to.
fn convert_event<K>(
    event: watcher::Event<K>,
    convert: fn(K) -> ReplicaSet,
) -> watcher::Event<ReplicaSet> {
    use watcher::Event as E;
    match event {
        E::Apply(k) => E::Apply(convert(k)),
        E::Delete(k) => E::Delete(convert(k)),
        E::Init => E::Init,
        E::InitApply(k) => E::InitApply(convert(k)),
        E::InitDone => E::InitDone,
    }
}

impl Ctx {
    /// The ReplicaSets a pod event concerns: its controller, or for an orphan, those
    /// whose selector matches it (they may adopt it). Also where creations and deletions
    /// are observed for [`Expectations`].
    fn triggers_for_pod(&self, pod: &Pod) -> Vec<ObjectRef<ReplicaSet>> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(owner) = common::controller_of(&pod.metadata) {
            if !self.flavor.owns(&owner.kind, &owner.api_version) {
                return Vec::new();
            }
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let uid = pod.metadata.uid.as_deref().unwrap_or_default();
            let gone = self.pod_gone(ns, uid, name);
            self.expectations
                .observe(&format!("{ns}/{}", owner.name), name, uid, gone);
            return vec![ObjectRef::new(&owner.name).within(ns)];
        }
        if pod.metadata.deletion_timestamp.is_some() {
            return Vec::new();
        }
        self.rss
            .state()
            .iter()
            .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns))
            .filter(|rs| common::selects(Some(&rs.spec.selector), pod.metadata.labels.as_ref()))
            .map(|rs| ObjectRef::from_obj(rs.as_ref()))
            .collect()
    }

    /// Is the pod `ns/name` with `uid` absent from the cache or terminating there?
    fn pod_gone(&self, ns: &str, uid: &str, name: &str) -> bool {
        match self.pods.get(&ObjectRef::new(name).within(ns)) {
            None => true,
            Some(p) => {
                p.metadata.uid.as_deref() != Some(uid) || p.metadata.deletion_timestamp.is_some()
            }
        }
    }
}

fn error_policy(rs: Arc<ReplicaSet>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let key = common::key(&rs.metadata);
    let delay = ctx.backoff.failed(&key);
    if error.code() == Some(409) {
        tracing::debug!(replicaset = %key, %error, ?delay, "conflict; retrying");
    } else {
        tracing::warn!(replicaset = %key, %error, ?delay, "reconciling failed; retrying");
    }
    Action::requeue(delay)
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    common::synced(&ctx.pods, "pod").await?;
    let key = common::key(&rs.metadata);
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let rs_uid = rs.metadata.uid.clone().unwrap_or_default();
    let pods_in_ns: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        .collect();

    let owned = claim_pods(&ctx, &rs, &pods_in_ns).await?;
    let owned_refs: Vec<&Pod> = owned.iter().map(Arc::as_ref).collect();
    let terminating = pods_in_ns
        .iter()
        .filter(|p| common::is_pod_terminating(p))
        .filter(|p| common::controller_of(&p.metadata).is_some_and(|r| r.uid == rs_uid))
        .count();

    let met = ctx.expectations.satisfied(
        &key,
        Instant::now(),
        |name| ctx.pods.get(&ObjectRef::new(name).within(&ns)).is_some(),
        |uid, name| ctx.pod_gone(&ns, uid, name),
    );
    let now = Timestamp::now();
    let managed = match decide(&rs, &owned_refs, met.is_ok()) {
        Manage::Nothing => Ok(()),
        Manage::Create(n) => create_pods(&ctx, &rs, &key, n).await,
        Manage::Delete(names) => delete_pods(&ctx, &rs, &key, &owned_refs, &names).await,
    };

    let status = calculate_status(
        &rs,
        &owned_refs,
        terminating,
        managed.as_ref().err().map(ToString::to_string).as_deref(),
        now,
    );
    write_status(&ctx, &rs, status).await?;
    managed?;
    ctx.backoff.succeeded(&key);

    let mut after = RESYNC;
    if let Err(left) = met {
        after = after.min(left + Duration::from_millis(100));
    }
    if let Some(wait) = next_availability(&rs, &owned_refs, Timestamp::now()) {
        after = after.min(wait);
    }
    Ok(Action::requeue(after))
}

/// Claims the active pods of the namespace: answers those the ReplicaSet controls after
/// adopting matching orphans and releasing owned pods that stopped matching.
async fn claim_pods(ctx: &Ctx, rs: &ReplicaSet, pods: &[Arc<Pod>]) -> Result<Vec<Arc<Pod>>, Error> {
    let name = rs.metadata.name.clone().unwrap_or_default();
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let selector = Some(&rs.spec.selector);
    let mut owned = Vec::new();
    let mut adopt = Vec::new();
    let mut release = Vec::new();
    for pod in pods.iter().filter(|p| common::is_pod_active(p)) {
        let matches = common::selects(selector, pod.metadata.labels.as_ref());
        match common::claim(&uid, deleting, matches, &pod.metadata) {
            Claim::Owned => owned.push(pod.clone()),
            Claim::Adopt => adopt.push(pod.clone()),
            Claim::Release => release.push(pod.clone()),
            Claim::Ignore => {}
        }
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut first_error = None;
    if !adopt.is_empty() && may_adopt(ctx, &ns, &name, &uid).await? {
        let owner =
            common::controller_ref(ctx.flavor.kind, &ctx.flavor.api_version(), &rs.metadata);
        for pod in adopt {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let patch = common::adopt_patch(&pod.metadata, &owner);
            match api
                .patch(&pod_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(adopted) => owned.push(Arc::new(adopted)),
                Err(e) if common::code_of(&e) == Some(404) => {}
                Err(e) => {
                    first_error
                        .get_or_insert(Error::api("adopting pod", format!("{ns}/{pod_name}"))(e));
                }
            }
        }
    }
    for pod in release {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let patch = common::release_patch(&pod.metadata, &uid);
        match api
            .patch(&pod_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if common::code_of(&e) == Some(404) => {}
            Err(e) => {
                first_error
                    .get_or_insert(Error::api("releasing pod", format!("{ns}/{pod_name}"))(e));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(owned),
    }
}

/// Adoption rechecks the ReplicaSet with a live read (Kubernetes'
/// `RecheckDeletionTimestamp`): a cached ReplicaSet may already be gone or being deleted,
/// and must not adopt anything then.
async fn may_adopt(ctx: &Ctx, ns: &str, name: &str, uid: &str) -> Result<bool, Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &ctx.flavor.api_resource());
    match api.get(name).await {
        Ok(fresh) => Ok(fresh.metadata.uid.as_deref() == Some(uid)
            && fresh.metadata.deletion_timestamp.is_none()),
        Err(e) if common::code_of(&e) == Some(404) => Ok(false),
        Err(e) => Err(Error::api("reading replica set", format!("{ns}/{name}"))(e)),
    }
}

async fn create_pods(ctx: &Ctx, rs: &ReplicaSet, key: &str, count: usize) -> Result<(), Error> {
    let pod = pod_from_template(rs, ctx.flavor)?;
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let about = events::reference(ctx.flavor.kind, &ctx.flavor.api_version(), &rs.metadata);
    for batch in slow_start_batches(count) {
        let params = PostParams::default();
        let results =
            futures::future::join_all((0..batch).map(|_| api.create(&params, &pod))).await;
        let mut created = Vec::new();
        let mut failure = None;
        for result in results {
            match result {
                Ok(p) => created.push(p.metadata.name.unwrap_or_default()),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        ctx.expectations
            .expect_creates(key, created.iter().cloned(), Instant::now());
        let messages: Vec<String> = created
            .iter()
            .map(|n| format!("Created pod: {n}"))
            .collect();
        futures::future::join_all(messages.iter().map(|message| {
            ctx.recorder
                .record(&about, EventType::Normal, "SuccessfulCreate", message)
        }))
        .await;
        if let Some(e) = failure {
            // A namespace being deleted takes no new pods; nothing to retry.
            if let kube::Error::Api(status) = &e
                && status.code == 403
                && status.message.contains("being terminated")
            {
                return Ok(());
            }
            ctx.recorder
                .record(
                    &about,
                    EventType::Warning,
                    "FailedCreate",
                    &format!("Error creating: {}", describe_error(&e)),
                )
                .await;
            return Err(Error::api("creating pods for", key.to_string())(e));
        }
    }
    Ok(())
}

async fn delete_pods(
    ctx: &Ctx,
    rs: &ReplicaSet,
    key: &str,
    owned: &[&Pod],
    names: &[String],
) -> Result<(), Error> {
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let about = events::reference(ctx.flavor.kind, &ctx.flavor.api_version(), &rs.metadata);
    let victims: Vec<(String, String)> = names
        .iter()
        .filter_map(|n| {
            owned
                .iter()
                .find(|p| p.metadata.name.as_ref() == Some(n))
                .map(|p| (p.metadata.uid.clone().unwrap_or_default(), n.clone()))
        })
        .collect();
    ctx.expectations
        .expect_deletes(key, victims.iter().cloned(), Instant::now());
    let results = futures::future::join_all(victims.iter().map(|(uid, name)| {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let api = api.clone();
        async move { api.delete(name, &params).await }
    }))
    .await;
    let mut failure = None;
    for ((uid, name), result) in victims.iter().zip(results) {
        match result {
            Ok(_) => {
                ctx.recorder
                    .record(
                        &about,
                        EventType::Normal,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {name}"),
                    )
                    .await
            }
            // Already gone: the cache will show it.
            Err(e) if common::code_of(&e) == Some(404) => {}
            Err(e) => {
                ctx.expectations.delete_failed(key, uid);
                ctx.recorder
                    .record(
                        &about,
                        EventType::Warning,
                        "FailedDelete",
                        &format!("Error deleting: {}", describe_error(&e)),
                    )
                    .await;
                failure.get_or_insert(Error::api("deleting pod", format!("{ns}/{name}"))(e));
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn describe_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

async fn write_status(ctx: &Ctx, rs: &ReplicaSet, status: ReplicaSetStatus) -> Result<(), Error> {
    let old = rs
        .status
        .as_ref()
        .map(ctx.flavor.status_json)
        .unwrap_or_default();
    let new = (ctx.flavor.status_json)(&status);
    if old == new {
        return Ok(());
    }
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ns, &ctx.flavor.api_resource());
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
        Err(e) => Err(Error::api(
            "updating status of replica set",
            format!("{ns}/{name}"),
        )(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::{
        ContainerStatus, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn rs(replicas: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("rs-uid".into()),
                generation: Some(4),
                ..Default::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    ..Default::default()
                },
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels(&[("app", "web"), ("tier", "front")])),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec::default()),
                }),
                ..Default::default()
            },
            status: None,
        }
    }

    /// A pod created at `created`, on `node` (or none), in `phase`, ready since `ready`.
    fn pod(name: &str, created: i64, node: &str, phase: &str, ready: Option<i64>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("{name}-uid")),
                labels: Some(labels(&[("app", "web"), ("tier", "front")])),
                creation_timestamp: Some(Time(at(created))),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.to_string()).filter(|n| !n.is_empty()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(at(t))),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    fn names(pods: &[&Pod], order: Vec<usize>) -> Vec<String> {
        order
            .into_iter()
            .map(|i| pods[i].metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn slow_start_doubles_batches() {
        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(slow_start_batches(1), vec![1]);
        assert_eq!(slow_start_batches(3), vec![1, 2]);
        assert_eq!(slow_start_batches(7), vec![1, 2, 4]);
        assert_eq!(slow_start_batches(10), vec![1, 2, 4, 3]);
        assert_eq!(slow_start_batches(500).iter().sum::<usize>(), 500);
        assert_eq!(slow_start_batches(500).len(), 9);
    }

    #[test]
    fn decide_creates_the_difference_and_deletes_the_surplus() {
        let a = pod("a", 1, "", "Pending", None);
        let b = pod("b", 2, "n1", "Running", Some(3));
        let c = pod("c", 3, "n1", "Running", Some(4));
        assert_eq!(decide(&rs(3), &[&a], true), Manage::Create(2));
        assert_eq!(decide(&rs(3), &[&a, &b, &c], true), Manage::Nothing);
        assert_eq!(
            decide(&rs(1), &[&c, &b, &a], true),
            Manage::Delete(vec!["a".into(), "c".into()])
        );
        assert_eq!(
            decide(&rs(0), &[&c, &b, &a], true),
            Manage::Delete(vec!["a".into(), "c".into(), "b".into()])
        );
        assert_eq!(decide(&rs(1000), &[], true), Manage::Create(BURST_REPLICAS));
    }

    #[test]
    fn decide_waits_for_expectations_and_for_nothing_while_deleted() {
        assert_eq!(decide(&rs(3), &[], false), Manage::Nothing);
        let mut deleting = rs(3);
        deleting.metadata.deletion_timestamp = Some(Time(at(1000)));
        assert_eq!(decide(&deleting, &[], true), Manage::Nothing);
    }

    #[test]
    fn deletion_prefers_unscheduled_pending_unready_then_newer() {
        let unscheduled = pod("unscheduled", 1, "", "Pending", None);
        let pending = pod("pending", 2, "n1", "Pending", None);
        let unknown = pod("unknown", 2, "n2", "Unknown", None);
        let running_not_ready = pod("running-not-ready", 3, "n3", "Running", None);
        let ready_new = pod("ready-new", 4, "n4", "Running", Some(50));
        let ready_old = pod("ready-old", 5, "n5", "Running", Some(10));
        let pods = [
            &ready_old,
            &ready_new,
            &running_not_ready,
            &unknown,
            &pending,
            &unscheduled,
        ];
        assert_eq!(
            names(&pods, deletion_order(&pods)),
            [
                "unscheduled",
                "pending",
                "unknown",
                "running-not-ready",
                "ready-new",
                "ready-old"
            ]
        );
    }

    #[test]
    fn deletion_ties_break_on_cost_doubling_restarts_and_age() {
        // Same readiness time: the one doubled up on a node goes first.
        let alone = pod("alone", 1, "n1", "Running", Some(10));
        let double_a = pod("double-a", 1, "n2", "Running", Some(10));
        let double_b = pod("double-b", 2, "n2", "Running", Some(10));
        let pods = [&alone, &double_a, &double_b];
        assert_eq!(
            names(&pods, deletion_order(&pods)),
            ["double-b", "double-a", "alone"]
        );
        // A lower deletion cost goes before everything below readiness.
        let mut cheap = pod("cheap", 1, "n1", "Running", Some(10));
        cheap.metadata.annotations = Some(labels(&[(DELETION_COST, "-5")]));
        let pods = [&double_a, &double_b, &cheap];
        assert_eq!(names(&pods, deletion_order(&pods))[0], "cheap");
        // More restarts first, then newer first.
        let mut crashy = pod("crashy", 1, "n7", "Running", Some(10));
        crashy.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
            restart_count: 4,
            ..Default::default()
        }]);
        let old = pod("old", 1, "n8", "Running", Some(10));
        let new = pod("new", 9, "n9", "Running", Some(10));
        let pods = [&old, &new, &crashy];
        assert_eq!(
            names(&pods, deletion_order(&pods)),
            ["crashy", "new", "old"]
        );
    }

    #[test]
    fn status_counts_ready_available_and_labels() {
        let mut set = rs(3);
        set.spec.min_ready_seconds = Some(30);
        let now = at(100);
        let fresh = pod("fresh", 1, "n1", "Running", Some(90)); // ready, not yet available
        let old = pod("old", 1, "n1", "Running", Some(10)); // available
        let mut partial = pod("partial", 1, "", "Pending", None);
        partial.metadata.labels = Some(labels(&[("app", "web")]));
        let status = calculate_status(&set, &[&fresh, &old, &partial], 2, None, now);
        assert_eq!(status.replicas, 3);
        assert_eq!(status.fully_labeled_replicas, Some(2));
        assert_eq!(status.ready_replicas, Some(2));
        assert_eq!(status.available_replicas, Some(1));
        assert_eq!(status.terminating_replicas, Some(2));
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.conditions, None);
        assert_eq!(
            next_availability(&set, &[&fresh, &old, &partial], now),
            Some(Duration::from_millis(20_100))
        );
    }

    #[test]
    fn status_records_and_clears_replica_failure() {
        let set = rs(3);
        let now = at(100);
        let failed = calculate_status(&set, &[], 0, Some("quota exceeded"), now);
        let conditions = failed.conditions.clone().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].type_.as_deref(), Some("ReplicaFailure"));
        assert_eq!(conditions[0].reason.as_deref(), Some("FailedCreate"));
        assert_eq!(conditions[0].message.as_deref(), Some("quota exceeded"));
        let mut set = set;
        set.status = Some(failed);
        let ok = calculate_status(&set, &[], 0, None, now);
        assert_eq!(ok.conditions, None);
    }

    #[test]
    fn pods_come_from_the_template_and_are_controlled() {
        let p = pod_from_template(&rs(1), &REPLICA_SET).unwrap();
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(p.metadata.name, None);
        assert_eq!(
            p.metadata.labels,
            Some(labels(&[("app", "web"), ("tier", "front")]))
        );
        let owner = common::controller_of(&p.metadata).unwrap();
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("ReplicaSet", "web", "rs-uid")
        );
        assert_eq!(owner.block_owner_deletion, Some(true));
        let mut no_template = rs(1);
        no_template.spec.template = None;
        assert!(pod_from_template(&no_template, &REPLICA_SET).is_err());
    }

    #[test]
    fn expectations_hold_until_observed() {
        let e = Expectations::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let none = |_: &str| false;
        let never_gone = |_: &str, _: &str| false;
        assert_eq!(e.satisfied("ns/web", t0, none, never_gone), Ok(()));

        e.expect_creates("ns/web", ["web-a".to_string(), "web-b".to_string()], t0);
        assert!(e.satisfied("ns/web", t0, none, never_gone).is_err());
        // One seen by event, the other found in the cache by the level check.
        e.observe("ns/web", "web-a", "uid-a", false);
        assert!(e.satisfied("ns/web", t0, none, never_gone).is_err());
        assert_eq!(
            e.satisfied("ns/web", t0, |n| n == "web-b", never_gone),
            Ok(())
        );

        e.expect_deletes("ns/web", [("uid-a".to_string(), "web-a".to_string())], t0);
        // Seeing the pod again, alive, does not satisfy a deletion.
        e.observe("ns/web", "web-a", "uid-a", false);
        assert!(e.satisfied("ns/web", t0, none, never_gone).is_err());
        e.observe("ns/web", "web-a", "uid-a", true);
        assert_eq!(e.satisfied("ns/web", t0, none, never_gone), Ok(()));

        // A failed deletion is not waited for; other keys are independent.
        e.expect_deletes("ns/web", [("uid-b".to_string(), "web-b".to_string())], t0);
        e.expect_creates("ns/other", ["other-a".to_string()], t0);
        e.delete_failed("ns/web", "uid-b");
        assert_eq!(e.satisfied("ns/web", t0, none, never_gone), Ok(()));
        assert!(e.satisfied("ns/other", t0, none, never_gone).is_err());
        e.forget("ns/other");
        assert_eq!(e.satisfied("ns/other", t0, none, never_gone), Ok(()));
    }

    #[test]
    fn expectations_time_out() {
        let e = Expectations::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let none = |_: &str| false;
        let never_gone = |_: &str, _: &str| false;
        e.expect_creates("ns/web", ["lost".to_string()], t0);
        assert_eq!(
            e.satisfied("ns/web", t0 + Duration::from_secs(20), none, never_gone),
            Err(Duration::from_secs(40))
        );
        assert_eq!(
            e.satisfied("ns/web", t0 + Duration::from_secs(61), none, never_gone),
            Ok(())
        );
    }
}
