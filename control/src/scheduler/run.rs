//! The executor around the pure decisions: watches in, bindings and reports out.
//!
//! Tasks (all in the control plane's `JoinSet`, all ending on the shutdown token):
//!
//! - two **watch tasks** (kube-runtime watchers over the in-process client) decode Node
//!   and Pod events, digest pods into [`PodInfo`] off the scheduling task, and hand them
//!   over bounded channels;
//! - the **scheduling loop** owns the [`Cache`] and the [`Queue`]: it applies watch events,
//!   takes the next pod, decides ([`algorithm::schedule`]), assumes the pod on its node
//!   and starts the binding, then goes on to the next pod without waiting: up to
//!   `parallel_binds` bindings run at once in the loop's own `JoinSet`, and their
//!   outcomes come back to the loop (confirm, or forget the assumption and back off);
//! - an **event task** records Events (`Scheduled`, `FailedScheduling`) off the hot path;
//!   like Kubernetes' event broadcaster it drops events rather than slow scheduling when
//!   its queue is full.
//!
//! A pod that fits nowhere gets `PodScheduled=False` (`Unschedulable`, the fit message),
//! written only when the message changes, so retries do not rewrite the pod.

use super::SchedulerConfig;
use super::algorithm::{self, Profile, ScheduleError};
use super::cache::Cache;
use super::framework::PodInfo;
use super::plugins::volume_binding::{self, VolumeUpdate};
use super::preemption;
use super::queue::{Backoff, Queue};
use crate::events::{self, EventType, Recorder};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, Time};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The component name on Events and the scheduler name pods ask for.
pub const COMPONENT: &str = super::framework::DEFAULT_SCHEDULER;
/// How many watch events the loop applies before it schedules again.
const EVENT_BATCH: usize = 256;
/// How long one binding may take.
const BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// Status writes for unschedulable pods in flight at once.
const PARALLEL_REPORTS: usize = 8;
/// Events in flight at once, and how many may wait.
const PARALLEL_EVENTS: usize = 4;
const EVENT_QUEUE: usize = 1024;
/// How often parked pods are checked against `max_unschedulable`.
const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(5);

/// A pod event, digested by the watch task.
#[derive(Debug)]
pub(super) enum PodUpdate {
    Init,
    Apply(Arc<PodInfo>),
    Delete(Arc<PodInfo>),
    InitDone,
}

/// An Event to record.
#[derive(Debug)]
pub(super) struct EventRequest {
    about: ObjectReference,
    kind: EventType,
    reason: &'static str,
    message: String,
}

/// Watches nodes and forwards the events.
pub(super) async fn watch_nodes(
    client: kube::Client,
    tx: mpsc::Sender<watcher::Event<Node>>,
    shutdown: CancellationToken,
) {
    let api: Api<Node> = Api::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    forward(stream, tx, shutdown, "nodes", Some).await;
}

/// Watches claims, volumes and classes (for VolumeBinding) and forwards what changed.
pub(super) async fn watch_volumes(
    client: kube::Client,
    tx: mpsc::Sender<VolumeUpdate>,
    shutdown: CancellationToken,
) {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use k8s_openapi::api::storage::v1::StorageClass;
    use volume_binding::Relisted;
    fn digest<K>(
        seen: fn(Arc<K>) -> VolumeUpdate,
        gone: fn(Arc<K>) -> VolumeUpdate,
        which: Relisted,
    ) -> impl Fn(watcher::Event<K>) -> Option<VolumeUpdate> {
        move |e| match e {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => Some(seen(Arc::new(o))),
            watcher::Event::Delete(o) => Some(gone(Arc::new(o))),
            watcher::Event::Init => Some(VolumeUpdate::Relist(which)),
            watcher::Event::InitDone => None,
        }
    }
    let config = watcher::Config::default;
    let claims =
        watcher(Api::<PersistentVolumeClaim>::all(client.clone()), config()).default_backoff();
    let volumes = watcher(Api::<PersistentVolume>::all(client.clone()), config()).default_backoff();
    let classes = watcher(Api::<StorageClass>::all(client), config()).default_backoff();
    tokio::join!(
        forward(
            claims,
            tx.clone(),
            shutdown.clone(),
            "persistentvolumeclaims",
            digest(
                VolumeUpdate::Claim,
                VolumeUpdate::ClaimGone,
                Relisted::Claims
            ),
        ),
        forward(
            volumes,
            tx.clone(),
            shutdown.clone(),
            "persistentvolumes",
            digest(
                VolumeUpdate::Volume,
                VolumeUpdate::VolumeGone,
                Relisted::Volumes
            ),
        ),
        forward(
            classes,
            tx,
            shutdown,
            "storageclasses",
            digest(
                VolumeUpdate::Class,
                VolumeUpdate::ClassGone,
                Relisted::Classes
            ),
        ),
    );
}

/// Watches the pods that hold or may hold resources (not the finished ones), digests
/// them and forwards the events.
pub(super) async fn watch_pods(
    client: kube::Client,
    tx: mpsc::Sender<PodUpdate>,
    shutdown: CancellationToken,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    let stream = watcher(api, config).default_backoff();
    let digest = |e: watcher::Event<Pod>| {
        Some(match e {
            watcher::Event::Init => PodUpdate::Init,
            watcher::Event::InitDone => PodUpdate::InitDone,
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                PodUpdate::Apply(Arc::new(PodInfo::new(p)))
            }
            watcher::Event::Delete(p) => PodUpdate::Delete(Arc::new(PodInfo::new(p))),
        })
    };
    forward(stream, tx, shutdown, "pods", digest).await;
}

async fn forward<K, T>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    tx: mpsc::Sender<T>,
    shutdown: CancellationToken,
    what: &'static str,
    digest: impl Fn(watcher::Event<K>) -> Option<T>,
) {
    let mut stream = std::pin::pin!(stream);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = stream.next() => next,
        };
        let event = match next {
            None => return,
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                // The stream backs off and re-lists by itself.
                tracing::warn!(error = %e, "scheduler: watching {what} failed; retrying");
                continue;
            }
        };
        let Some(item) = digest(event) else { continue };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            sent = tx.send(item) => if sent.is_err() { return },
        }
    }
}

/// Records events handed over by the scheduling loop, a few at a time.
pub(super) async fn record_events(
    recorder: Recorder,
    mut rx: mpsc::Receiver<EventRequest>,
    shutdown: CancellationToken,
) {
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            req = rx.recv(), if in_flight.len() < PARALLEL_EVENTS => {
                let Some(req) = req else { break };
                let recorder = recorder.clone();
                in_flight.spawn(async move {
                    recorder.record(&req.about, req.kind, req.reason, &req.message).await;
                });
            }
        }
    }
    in_flight.shutdown().await;
}

/// What a task of the loop finished.
enum Done {
    Bound {
        pod: Arc<PodInfo>,
        node: Arc<str>,
        result: Result<(), kube::Error>,
        /// When the attempt began (for `scheduler_scheduling_attempt_duration_seconds`).
        started: Instant,
    },
    Reported,
    Preempted {
        pod: Arc<PodInfo>,
        result: Result<(), kube::Error>,
    },
}

/// A `PodScheduled=False` to write.
struct Report {
    pod: Arc<PodInfo>,
    reason: &'static str,
    message: String,
}

/// The scheduling loop's state.
pub(super) struct Scheduler {
    client: kube::Client,
    profile: Profile,
    parallel_binds: usize,
    cache: Cache,
    queue: Queue,
    rng: StdRng,
    next_start: usize,
    work: JoinSet<Done>,
    binds_in_flight: usize,
    reports_in_flight: usize,
    reports: HashMap<Arc<str>, Report>,
    report_order: VecDeque<Arc<str>>,
    events: mpsc::Sender<EventRequest>,
    /// During a relist: what has been seen again.
    seen_nodes: Option<HashSet<String>>,
    seen_pods: Option<HashSet<Arc<str>>>,
    metrics: crate::metrics::SchedulerMetrics,
    /// When `scheduler_pending_pods` was last set from the queue.
    pending_reported: Option<Instant>,
    /// Preemptors and the victims they wait for: no second preemption while one of them
    /// is still on its node.
    nominations: HashMap<Arc<str>, Vec<Arc<str>>>,
    recorder: Recorder,
}

/// Wiring for [`Scheduler::run`].
pub(super) struct Channels {
    pub nodes: mpsc::Receiver<watcher::Event<Node>>,
    pub pods: mpsc::Receiver<PodUpdate>,
    pub volumes: mpsc::Receiver<VolumeUpdate>,
}

pub(super) fn event_channel() -> (mpsc::Sender<EventRequest>, mpsc::Receiver<EventRequest>) {
    mpsc::channel(EVENT_QUEUE)
}

enum Wake {
    Shutdown,
    Node(Option<Box<watcher::Event<Node>>>),
    Pod(Option<PodUpdate>),
    Volume(Option<VolumeUpdate>),
    Done(Result<Done, tokio::task::JoinError>),
    Timer,
    Flush,
}

impl Scheduler {
    pub(super) fn new(
        client: kube::Client,
        config: &SchedulerConfig,
        events: mpsc::Sender<EventRequest>,
    ) -> Scheduler {
        Scheduler {
            client: client.clone(),
            profile: Profile {
                percentage_of_nodes_to_score: config.percentage_of_nodes_to_score,
                ..Profile::default()
            },
            parallel_binds: config.parallel_binds.max(1),
            cache: Cache::new(),
            queue: Queue::new(Backoff {
                initial: config.initial_backoff,
                max: config.max_backoff,
                max_unschedulable: config.max_unschedulable,
            }),
            rng: StdRng::from_os_rng(),
            next_start: 0,
            work: JoinSet::new(),
            binds_in_flight: 0,
            reports_in_flight: 0,
            reports: HashMap::new(),
            report_order: VecDeque::new(),
            events,
            seen_nodes: None,
            seen_pods: None,
            metrics: config.metrics.clone(),
            pending_reported: None,
            nominations: HashMap::new(),
            recorder: Recorder::new(client.clone(), COMPONENT),
        }
    }

    pub(super) async fn run(mut self, mut ch: Channels, shutdown: CancellationToken) {
        let mut flush = tokio::time::interval(UNSCHEDULABLE_FLUSH);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Apply whatever arrived, without waiting.
            let mut closed = false;
            for _ in 0..EVENT_BATCH {
                match ch.nodes.try_recv() {
                    Ok(e) => self.on_node(e),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            for _ in 0..EVENT_BATCH {
                match ch.pods.try_recv() {
                    Ok(e) => self.on_pod(e),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            for _ in 0..EVENT_BATCH {
                match ch.volumes.try_recv() {
                    Ok(e) => self.on_volume(e),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if closed {
                break;
            }
            while let Some(done) = self.work.try_join_next() {
                self.on_done(done);
            }
            self.queue.flush_backoff(Instant::now());
            self.start_reports();
            if self.binds_in_flight < self.parallel_binds
                && let Some(pod) = self.queue.pop()
            {
                self.schedule_one(pod);
                // Yield now and then so a long run of decisions shares the thread.
                tokio::task::consume_budget().await;
                continue;
            }
            self.report_pending(false);
            let wake_at = self.queue.next_backoff();
            let wake = tokio::select! {
                _ = shutdown.cancelled() => Wake::Shutdown,
                e = ch.nodes.recv() => Wake::Node(e.map(Box::new)),
                e = ch.pods.recv() => Wake::Pod(e),
                e = ch.volumes.recv() => Wake::Volume(e),
                Some(done) = self.work.join_next(), if !self.work.is_empty() => Wake::Done(done),
                _ = sleep_until(wake_at), if wake_at.is_some() => Wake::Timer,
                _ = flush.tick() => Wake::Flush,
            };
            match wake {
                Wake::Shutdown | Wake::Node(None) | Wake::Pod(None) | Wake::Volume(None) => break,
                Wake::Volume(Some(e)) => self.on_volume(e),
                Wake::Node(Some(e)) => self.on_node(*e),
                Wake::Pod(Some(e)) => self.on_pod(e),
                Wake::Done(done) => self.on_done(done),
                Wake::Timer => {}
                Wake::Flush => self.queue.flush_unschedulable(Instant::now()),
            }
        }
        self.work.shutdown().await;
    }

    fn on_node(&mut self, event: watcher::Event<Node>) {
        match event {
            watcher::Event::Init => self.seen_nodes = Some(HashSet::new()),
            watcher::Event::Apply(node) | watcher::Event::InitApply(node) => {
                if let (Some(seen), Some(name)) = (&mut self.seen_nodes, &node.metadata.name) {
                    seen.insert(name.clone());
                }
                if self.cache.upsert_node(node) {
                    self.queue.move_all(Instant::now());
                }
            }
            watcher::Event::Delete(node) => {
                if let Some(name) = &node.metadata.name {
                    self.cache.remove_node(name);
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.seen_nodes.take() {
                    for name in self.cache.node_names() {
                        if !seen.contains(&*name) {
                            self.cache.remove_node(&name);
                        }
                    }
                }
            }
        }
    }

    /// A claim, volume or class changed: pods waiting for one may fit now.
    fn on_volume(&mut self, update: VolumeUpdate) {
        self.cache.volumes.apply(update);
        self.queue.move_all(Instant::now());
    }

    fn on_pod(&mut self, event: PodUpdate) {
        match event {
            PodUpdate::Init => self.seen_pods = Some(HashSet::new()),
            PodUpdate::Apply(pod) => {
                if let Some(seen) = &mut self.seen_pods {
                    seen.insert(pod.uid.clone());
                }
                self.apply_pod(pod);
            }
            PodUpdate::Delete(pod) => self.pod_gone(&pod.uid),
            PodUpdate::InitDone => {
                if let Some(seen) = self.seen_pods.take() {
                    let missing = self
                        .cache
                        .confirmed_pods()
                        .into_iter()
                        .chain(self.queue.waiting())
                        .filter(|uid| !seen.contains(uid))
                        .collect::<Vec<_>>();
                    for uid in missing {
                        self.pod_gone(&uid);
                    }
                }
            }
        }
    }

    fn apply_pod(&mut self, pod: Arc<PodInfo>) {
        if pod.terminal {
            self.pod_gone(&pod.uid);
        } else if !pod.node_name.is_empty() {
            // Bound (by us or anyone): it holds resources on its node.
            self.queue.remove(&pod.uid);
            self.cache.add_pod(pod);
        } else if pod.wants_scheduling() {
            if self.cache.is_assumed(&pod.uid) {
                // An older, still unbound version of a pod being bound right now.
                self.queue.update_if_present(pod);
            } else {
                self.queue.upsert(pod, Instant::now());
            }
        } else {
            // Being deleted before it was placed, or another scheduler's.
            self.queue.remove(&pod.uid);
        }
    }

    fn pod_gone(&mut self, uid: &Arc<str>) {
        self.queue.remove(uid);
        self.nominations.remove(uid);
        self.reports.remove(uid);
        if self.cache.remove_pod(uid) {
            // Its resources are free: parked pods may fit now.
            self.queue.move_all(Instant::now());
        }
    }

    /// Sets `scheduler_pending_pods` from the queue: when idle, and at most once a second
    /// during a run of decisions (counting walks the queue).
    fn report_pending(&mut self, busy: bool) {
        let now = Instant::now();
        if busy
            && self
                .pending_reported
                .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        self.pending_reported = Some(now);
        let stats = self.queue.stats();
        for (queue, n) in [
            ("active", stats.active),
            ("backoff", stats.backoff),
            ("unschedulable", stats.unschedulable),
            ("gated", 0),
        ] {
            self.metrics
                .pending
                .get_or_create(&crate::metrics::QueueLabel {
                    queue: queue.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    fn schedule_one(&mut self, pod: Arc<PodInfo>) {
        self.report_pending(true);
        let started = Instant::now();
        let result = algorithm::schedule(
            &self.profile,
            &self.cache,
            &pod,
            &mut self.next_start,
            &mut self.rng,
        );
        match result {
            Ok(decision) => {
                let select = volume_binding::claims_to_select(&pod, &self.cache.volumes);
                self.cache.assume(pod.clone(), &decision.node);
                self.binds_in_flight += 1;
                let client = self.client.clone();
                let node = decision.node;
                self.work.spawn(async move {
                    let result = match tokio::time::timeout(
                        BIND_TIMEOUT,
                        select_then_bind(&client, &pod, &select, &node),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(kube::Error::Service(
                            format!("binding did not finish within {BIND_TIMEOUT:?}").into(),
                        )),
                    };
                    Done::Bound {
                        pod,
                        node,
                        result,
                        started,
                    }
                });
            }
            Err(ScheduleError::Unschedulable(fit)) => {
                self.metrics.attempt("unschedulable", started.elapsed());
                let message = fit.to_string();
                tracing::debug!(pod = %pod.key(), %message, "unschedulable");
                self.try_preemption(&pod, &fit);
                self.queue.failed(&pod.uid, true, Instant::now());
                self.failure(pod, "Unschedulable", message);
            }
            Err(ScheduleError::Error(e)) => {
                self.metrics.attempt("error", started.elapsed());
                tracing::warn!(pod = %pod.key(), error = %e, "scheduling failed");
                self.queue.failed(&pod.uid, false, Instant::now());
                self.failure(pod, "SchedulerError", e);
            }
        }
    }

    /// PostFilter: when some node failed for a reason evictions can cure, preempts
    /// lower-priority pods on the best such node ([`preemption::select`]), unless the pod
    /// still waits for the victims of its last preemption.
    fn try_preemption(&mut self, pod: &Arc<PodInfo>, fit: &algorithm::FitError) {
        if fit.unresolvable >= fit.num_nodes {
            return;
        }
        if let Some(victims) = self.nominations.get(&pod.uid) {
            if victims.iter().any(|v| self.cache.contains_pod(v)) {
                return;
            }
            self.nominations.remove(&pod.uid);
        }
        let Some(candidate) = preemption::select(&self.profile, &self.cache, pod) else {
            return;
        };
        tracing::info!(pod = %pod.key(), node = %candidate.node, victims = candidate.victims.len(), "preempting");
        self.nominations.insert(
            pod.uid.clone(),
            candidate.victims.iter().map(|v| v.uid.clone()).collect(),
        );
        let client = self.client.clone();
        let recorder = self.recorder.clone();
        let pod = pod.clone();
        self.work.spawn(async move {
            let result = match tokio::time::timeout(
                BIND_TIMEOUT,
                preemption::preempt(&client, &recorder, &pod, &candidate),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(kube::Error::Service(
                    format!("preemption did not finish within {BIND_TIMEOUT:?}").into(),
                )),
            };
            Done::Preempted { pod, result }
        });
    }

    /// Reports a failed attempt: a Warning event, and the pod's condition.
    fn failure(&mut self, pod: Arc<PodInfo>, reason: &'static str, message: String) {
        self.event(
            &pod,
            EventType::Warning,
            "FailedScheduling",
            message.clone(),
        );
        let uid = pod.uid.clone();
        if self
            .reports
            .insert(
                uid.clone(),
                Report {
                    pod,
                    reason,
                    message,
                },
            )
            .is_none()
        {
            self.report_order.push_back(uid);
        }
    }

    fn event(&self, pod: &PodInfo, kind: EventType, reason: &'static str, message: String) {
        let req = EventRequest {
            about: events::reference("Pod", "v1", &pod.pod.metadata),
            kind,
            reason,
            message,
        };
        if self.events.try_send(req).is_err() {
            tracing::debug!(pod = %pod.key(), reason, "event queue full; event dropped");
        }
    }

    fn start_reports(&mut self) {
        while self.reports_in_flight < PARALLEL_REPORTS {
            let Some(uid) = self.report_order.pop_front() else {
                return;
            };
            let Some(mut report) = self.reports.remove(&uid) else {
                continue;
            };
            // Placed or gone meanwhile: nothing to report. Else write onto the latest
            // version the watch delivered.
            match self.queue.info(&uid) {
                Some(latest) if !self.cache.contains_pod(&uid) => report.pod = latest,
                _ => continue,
            }
            self.reports_in_flight += 1;
            let client = self.client.clone();
            self.work.spawn(async move {
                if let Err(e) = write_condition(&client, &report).await {
                    tracing::debug!(pod = %report.pod.key(), error = %e, "writing PodScheduled failed");
                }
                Done::Reported
            });
        }
    }

    fn on_done(&mut self, done: Result<Done, tokio::task::JoinError>) {
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                // A panic in a binding task: the assumption it held leaks until the pod
                // comes back through the watch.
                tracing::error!(error = %e, "a scheduler task failed");
                self.binds_in_flight = self.binds_in_flight.saturating_sub(1);
                return;
            }
        };
        match done {
            Done::Reported => self.reports_in_flight = self.reports_in_flight.saturating_sub(1),
            Done::Preempted { pod, result } => {
                if let Err(e) = result {
                    tracing::warn!(pod = %pod.key(), error = %e, "preemption failed");
                    self.nominations.remove(&pod.uid);
                }
            }
            Done::Bound {
                pod,
                node,
                result,
                started,
            } => {
                self.binds_in_flight = self.binds_in_flight.saturating_sub(1);
                let outcome = if result.is_ok() { "scheduled" } else { "error" };
                self.metrics.attempt(outcome, started.elapsed());
                match result {
                    Ok(()) => {
                        self.queue.done(&pod.uid);
                        self.nominations.remove(&pod.uid);
                        let message = format!("Successfully assigned {} to {node}", pod.key());
                        self.event(&pod, EventType::Normal, "Scheduled", message);
                    }
                    Err(e) => {
                        self.cache.forget(&pod.uid);
                        if binding_is_moot(&e) {
                            // Gone, or placed by someone else: the watch will say.
                            self.queue.remove(&pod.uid);
                            return;
                        }
                        tracing::warn!(pod = %pod.key(), %node, error = %e, "binding failed");
                        self.queue.failed(&pod.uid, false, Instant::now());
                        self.failure(pod, "SchedulerError", format!("Binding rejected: {e}"));
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A failed binding there is no point retrying: the pod is gone, being deleted, already
/// on a node, or was replaced by another of the same name.
fn binding_is_moot(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) if s.code == 404 => true,
        kube::Error::Api(s) if s.code == 409 => {
            let m = s.message.as_str();
            m.contains("already assigned") || m.contains("being deleted") || m.contains("UID")
        }
        _ => false,
    }
}

/// Records `node` on the pod's delayed claims that have none yet (the PV controller
/// provisions there), then binds the pod.
async fn select_then_bind(
    client: &kube::Client,
    pod: &PodInfo,
    claims: &[String],
    node: &str,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &pod.namespace);
    for claim in claims {
        let patch = serde_json::json!({"metadata": {"annotations": {
            crate::api::storage::SELECTED_NODE_ANNOTATION: node}}});
        // A claim gone since the decision is not a reason to forget the pod (as a 404
        // of the binding would be): it backs off and is decided again.
        api.patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => kube::Error::Service(
                    format!("persistentvolumeclaim \"{claim}\" not found").into(),
                ),
                e => e,
            })?;
    }
    bind(client, pod, node).await
}

/// `POST pods/NAME/binding`, with the pod's uid as a precondition.
async fn bind(client: &kube::Client, pod: &PodInfo, node: &str) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.to_string()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    api.create_subresource::<_, Status>("binding", &pod.name, &PostParams::default(), &binding)
        .await
        .map(|_| ())
}

/// The pod's conditions with `PodScheduled` set to `cond`; `None` if it already says so.
pub(super) fn with_scheduled_condition(
    current: Option<&Vec<PodCondition>>,
    cond: PodCondition,
) -> Option<Vec<PodCondition>> {
    let mut conditions = current.cloned().unwrap_or_default();
    match conditions.iter_mut().find(|c| c.type_ == cond.type_) {
        Some(old)
            if old.status == cond.status
                && old.reason == cond.reason
                && old.message == cond.message =>
        {
            None
        }
        Some(old) => {
            let transition = if old.status == cond.status {
                old.last_transition_time.clone()
            } else {
                cond.last_transition_time.clone()
            };
            *old = PodCondition {
                last_transition_time: transition,
                ..cond
            };
            Some(conditions)
        }
        None => {
            conditions.push(cond);
            Some(conditions)
        }
    }
}

/// Writes `PodScheduled=False` with the report's reason and message, unless the pod
/// already says exactly that. A pod changed since the decision answers 409 and keeps
/// what it has; its next attempt reports again.
async fn write_condition(client: &kube::Client, report: &Report) -> Result<(), kube::Error> {
    let pod = &report.pod;
    let cond = PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        reason: Some(report.reason.into()),
        message: Some(report.message.clone()),
        last_transition_time: Some(Time(jiff::Timestamp::now())),
        ..Default::default()
    };
    let current = pod.pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    let Some(conditions) = with_scheduled_condition(current, cond) else {
        return Ok(());
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    // Only onto the version the decision saw: a binding (or anything else) written since
    // wins, and the condition is not rewritten over `PodScheduled=True`.
    let patch = serde_json::json!({
        "metadata": {"uid": pod.uid.as_ref(), "resourceVersion": pod.pod.metadata.resource_version},
        "status": {"conditions": conditions},
    });
    api.patch_status(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(status: &str, message: &str) -> PodCondition {
        PodCondition {
            type_: "PodScheduled".into(),
            status: status.into(),
            reason: Some("Unschedulable".into()),
            message: Some(message.into()),
            last_transition_time: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
            ..Default::default()
        }
    }

    #[test]
    fn the_condition_is_written_only_when_it_changes() {
        let first = with_scheduled_condition(None, cond("False", "a")).expect("new");
        assert_eq!(first.len(), 1);
        assert!(with_scheduled_condition(Some(&first), cond("False", "a")).is_none());
        let mut later = cond("False", "b");
        later.last_transition_time = Some(Time(jiff::Timestamp::now()));
        let second = with_scheduled_condition(Some(&first), later).expect("changed");
        assert_eq!(second[0].message.as_deref(), Some("b"));
        assert_eq!(
            second[0].last_transition_time,
            Some(Time(jiff::Timestamp::UNIX_EPOCH)),
            "same status keeps its transition time"
        );
    }

    #[test]
    fn moot_bindings_are_not_retried() {
        let api = |code: u16, message: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, "Conflict")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(binding_is_moot(&api(404, "not found")));
        assert!(binding_is_moot(&api(
            409,
            "pod p is already assigned to node \"n\""
        )));
        assert!(!binding_is_moot(&api(409, "too many concurrent writers")));
        assert!(!binding_is_moot(&api(500, "internal")));
    }
}
