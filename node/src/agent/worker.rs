//! One pod's worker: converges the containers of one pod on what its spec asks, and writes
//! what they are doing into the pod's status.
//!
//! The worker is level-triggered: it holds the newest version of its pod (a `watch`
//! channel), and after every change, container exit, back-off expiry or shutdown it asks
//! the same question: given the spec and what runs, what must start, what must stop, and
//! what does the status say? The decisions are the pure functions of `restart` and
//! `status`; this module only executes them against the runtime and the API.
//!
//! Life of a pod here: an address from the node's pod range (kept across agent restarts
//! through `status.podIP`), volumes, then every container is pulled, configured and
//! started; an exit is restarted or not by `restartPolicy`, with back-off; when the pod
//! gets a `deletionTimestamp` its containers are stopped within the grace period and the
//! pod is removed from the API; its address and volumes are released.
//!
//! Probes (see `probes`) run as tasks of the worker, one attempt at a time per probe; their
//! results come back into this loop, which feeds them to each container instance's probe
//! state machine, updates the container's `ready`/`started` flags, kills a container whose
//! liveness or startup probe failed past its threshold, and writes the status like any
//! other change. The node's Events about this (`Unhealthy`, `Killing`) are recorded by
//! tasks of the worker too, so a slow API never holds up the loop.

use super::NodeContext;
use super::env::{self, Downward, Sources};
use super::probes::{self, ContainerProbes, EventBudget, ProbeKind, ProbeSpecs, Verdict};
use super::pull;
use super::restart::should_restart;
use super::sa_token;
use super::status::{ContainerRecord, PodFacts, State, Terminated, pod_status};
use super::volumes;
use crate::reachability::api_retry_delay;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container as ContainerSpecK8s, Pod, PodSpec, PodStatus, Secret,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;
use wharf_control::api::quantity::Quantity;
use wharf_control::events::{self, EventType};
use wharf_runtime::{
    Container, ContainerSpec, ExitStatus, ImagePullError, NetworkAccess, PullOptions, PullPolicy,
    Resources,
};

/// Annotation listing the hosts a pod's guests may reach (`host`, `host:port`, comma
/// separated), or `*` for any. Without it a pod has no network access.
pub const ALLOW_HOSTS_ANNOTATION: &str = "wharf.dev/allow-hosts";

pub use crate::container_id;

struct Running {
    container: Arc<Container>,
    started: Instant,
    /// Tells this instance from earlier ones of the same container (probe results of an
    /// instance that ended are dropped).
    instance: u64,
    probes: ContainerProbes,
    /// Set once a probe had the container killed: why, for its terminated state.
    killed_by: Option<ProbeKind>,
    /// Being stopped because its image changed: its exit starts the new image at once.
    replacing: bool,
}

type Exit = (String, ExitStatus);

/// The result of one probe attempt.
struct ProbeDone {
    container: String,
    instance: u64,
    kind: ProbeKind,
    result: Result<(), String>,
}

/// The exit code a container killed by a failed probe reports (SIGKILL's, as Kubernetes
/// shows a liveness kill), with reason `Error`.
const PROBE_KILL_EXIT_CODE: i32 = 137;

/// Everything the worker tracks for one pod.
struct PodState {
    records: Vec<ContainerRecord>,
    running: HashMap<String, Running>,
    exits: FuturesUnordered<BoxFuture<'static, Exit>>,
    /// Container name → when it may start again, and how many back-offs in a row.
    backoff: HashMap<String, (Instant, u32)>,
    facts: PodFacts,
    ip: Option<Ipv4Addr>,
    volumes: Option<BTreeMap<String, (PathBuf, bool)>>,
    /// The ServiceAccount token the guests see, and when to ask for the next one.
    sa_token: Option<sa_token::Issued>,
    token_refresh: Option<Instant>,
    last_written: Option<serde_json::Value>,
    /// The status saved on this node because the API had not accepted it ([`save_status`]);
    /// `None` when none is saved.
    last_saved: Option<serde_json::Value>,
    /// The status the API has not accepted yet: when to try again, and how many tries
    /// failed in a row.
    status_retry: Option<(Instant, u32)>,
    /// Probe attempts in flight.
    probe_jobs: JoinSet<ProbeDone>,
    /// Events being recorded and probe kills under way; reaped as they finish.
    chores: JoinSet<()>,
    next_instance: u64,
    /// Limits the pod's `Unhealthy` Events.
    unhealthy_events: EventBudget,
    /// When this worker first saw the pod, until every container ran once
    /// (`kubelet_pod_start_duration_seconds` is observed then, once).
    starting_since: Option<Instant>,
}

pub async fn run(ctx: Arc<NodeContext>, mut rx: watch::Receiver<Option<Arc<Pod>>>) {
    let mut st = PodState {
        records: Vec::new(),
        running: HashMap::new(),
        exits: FuturesUnordered::new(),
        backoff: HashMap::new(),
        facts: PodFacts {
            host_ip: Some(ctx.config.address.to_string()),
            ..Default::default()
        },
        ip: None,
        volumes: None,
        sa_token: None,
        token_refresh: None,
        last_written: None,
        last_saved: None,
        status_retry: None,
        probe_jobs: JoinSet::new(),
        chores: JoinSet::new(),
        next_instance: 0,
        unhealthy_events: EventBudget::new(Instant::now()),
        starting_since: Some(Instant::now()),
    };
    let mut last_pod: Option<Arc<Pod>> = None;
    loop {
        let current = rx.borrow_and_update().clone();
        let Some(pod) = current else {
            // Gone from the API (deleted, or no longer bound here).
            stop_all(&mut st, Duration::ZERO).await;
            if let Some(pod) = &last_pod {
                cleanup(&ctx, &mut st, pod).await;
            }
            return;
        };
        last_pod = Some(pod.clone());
        if pod.metadata.deletion_timestamp.is_some() {
            terminate(&ctx, &mut st, &pod).await;
            return;
        }
        converge(&ctx, &mut st, &pod).await;
        launch_probes(&mut st);
        write_status(&ctx, &mut st, &pod).await;
        while st.chores.try_join_next().is_some() {}

        let next_backoff = st.backoff.values().map(|(t, _)| *t).min();
        let next_probe = st
            .running
            .values()
            .filter(|r| r.killed_by.is_none())
            .filter_map(|r| r.probes.next_due())
            .min();
        tokio::select! {
            _ = ctx.shutdown.cancelled() => {
                // The node is stopping: containers end with the process; the pod stays
                // desired and is adopted again when the agent comes back.
                stop_all(&mut st, Duration::ZERO).await;
                return;
            }
            changed = rx.changed() => {
                if changed.is_err() {
                    stop_all(&mut st, Duration::ZERO).await;
                    return;
                }
            }
            Some((name, status)) = st.exits.next(), if !st.exits.is_empty() => {
                record_exit(&ctx, &mut st, &pod, &name, status);
            }
            _ = sleep_until(next_backoff), if next_backoff.is_some() => {}
            Some(done) = st.probe_jobs.join_next(), if !st.probe_jobs.is_empty() => {
                if let Ok(done) = done {
                    probe_done(&ctx, &mut st, &pod, done);
                }
            }
            _ = sleep_until(next_probe), if next_probe.is_some() => {}
            _ = sleep_until(st.status_retry.map(|(at, _)| at)), if st.status_retry.is_some() => {}
            _ = sleep_until(st.token_refresh), if st.token_refresh.is_some() => {}
        }
    }
}

/// Starts the probe attempts that are due, as tasks of the worker.
fn launch_probes(st: &mut PodState) {
    let Some(ip) = st.ip else {
        return;
    };
    let now = Instant::now();
    for (name, run) in &mut st.running {
        if run.killed_by.is_some() {
            continue;
        }
        for attempt in run.probes.take_due(now) {
            let container = name.clone();
            let instance = run.instance;
            st.probe_jobs.spawn(async move {
                let result =
                    probes::execute(&attempt.action, IpAddr::V4(ip), attempt.timeout).await;
                ProbeDone {
                    container,
                    instance,
                    kind: attempt.kind,
                    result,
                }
            });
        }
    }
}

/// A probe attempt ended: feed the container's probes, follow their verdict.
fn probe_done(ctx: &Arc<NodeContext>, st: &mut PodState, pod: &Arc<Pod>, done: ProbeDone) {
    let Some(run) = st.running.get_mut(&done.container) else {
        return;
    };
    if run.instance != done.instance || run.killed_by.is_some() {
        return; // an earlier instance, or one being killed
    }
    let verdict = run.probes.observe(done.kind, done.result.is_ok());
    let (ready, started) = (run.probes.ready(), run.probes.started());
    if let Some(idx) = st.records.iter().position(|r| r.name == done.container) {
        st.records[idx].ready = ready;
        st.records[idx].started = started;
    }
    if let Err(message) = &done.result {
        tracing::debug!(pod = %pod_name(pod), container = %done.container, probe = done.kind.name(), %message, "probe failed");
        if st.unhealthy_events.allow(Instant::now()) {
            record_event(
                ctx,
                st,
                pod,
                &done.container,
                EventType::Warning,
                "Unhealthy",
                format!("{} probe failed: {message}", done.kind.title()),
            );
        }
    }
    if let Verdict::Kill(kind) = verdict {
        kill_for_probe(ctx, st, pod, &done.container, kind);
    }
}

/// A liveness or startup probe failed past its threshold: stop the container within its
/// grace period; its exit (through the worker's exits) restarts it per `restartPolicy`.
fn kill_for_probe(
    ctx: &Arc<NodeContext>,
    st: &mut PodState,
    pod: &Arc<Pod>,
    name: &str,
    kind: ProbeKind,
) {
    let Some(run) = st.running.get_mut(name) else {
        return;
    };
    run.killed_by = Some(kind);
    let grace = run
        .probes
        .termination_grace(kind)
        .unwrap_or_else(|| termination_grace(pod.spec.as_ref()));
    let container = run.container.clone();
    st.chores.spawn(async move {
        container.stop(grace).await;
    });
    if let Some(idx) = st.records.iter().position(|r| r.name == name) {
        st.records[idx].ready = false;
    }
    let mut message = format!("Container {name} failed {} probe", kind.name());
    if should_restart(&restart_policy(pod), PROBE_KILL_EXIT_CODE) {
        message.push_str(", will be restarted");
    }
    tracing::info!(pod = %pod_name(pod), container = %name, %message, "killing container");
    record_event(ctx, st, pod, name, EventType::Normal, "Killing", message);
}

/// Records an Event about container `container` of the pod, as a task of the worker.
fn record_event(
    ctx: &Arc<NodeContext>,
    st: &mut PodState,
    pod: &Pod,
    container: &str,
    kind: EventType,
    reason: &'static str,
    message: String,
) {
    let mut about = events::reference("Pod", "v1", &pod.metadata);
    about.field_path = Some(format!("spec.containers{{{container}}}"));
    let recorder = ctx.events.clone();
    st.chores.spawn(async move {
        recorder.record(&about, kind, reason, &message).await;
    });
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

fn restart_policy(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into())
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// Brings records in line with the spec (adopting what the status says after an agent
/// restart), gives the pod its address and volumes, and starts what should run.
async fn converge(ctx: &Arc<NodeContext>, st: &mut PodState, pod: &Arc<Pod>) {
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    if st.records.is_empty() {
        adopt_saved(ctx, st, pod).await;
    }
    if st.ip.is_none() {
        match assign_ip(ctx, pod) {
            Ok(ip) => {
                st.ip = Some(ip);
                st.facts.pod_ip = Some(ip.to_string());
                ctx.sockets.set(ip, served_ports(pod));
            }
            Err(e) => {
                st.facts.message = Some(e);
                st.facts.reason = Some("PodAddressUnavailable".into());
                return;
            }
        }
    }
    if st.facts.start_time.is_none() {
        st.facts.start_time = Some(
            pod.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0)
                .unwrap_or_else(Timestamp::now),
        );
    }
    if st.volumes.is_none() {
        match prepare_volumes(ctx, pod).await {
            Ok(v) => {
                st.volumes = Some(v);
                st.facts.message = None;
                st.facts.reason = None;
            }
            Err(message) => {
                // Retry soon: a missing ConfigMap may appear.
                mount_failed(ctx, st, message);
                return;
            }
        }
    }
    if !ensure_token(ctx, st, pod).await {
        return;
    }
    replace_changed_images(ctx, st, pod);
    let now = Instant::now();
    for c in &spec.containers {
        if st.running.contains_key(&c.name) {
            continue;
        }
        let Some(idx) = st.records.iter().position(|r| r.name == c.name) else {
            continue;
        };
        let record = &st.records[idx];
        if matches!(record.state, State::Terminated(_)) {
            continue; // ended for good under its restart policy
        }
        if let Some((at, _)) = st.backoff.get(&c.name)
            && *at > now
        {
            continue;
        }
        start_container(ctx, st, pod, c, idx).await;
    }
}

/// The pod's containers wait (`ContainerCreating`, the pod `FailedMount`) for what their
/// mounts need, tried again after the back-off base.
fn mount_failed(ctx: &NodeContext, st: &mut PodState, message: String) {
    for r in &mut st.records {
        r.state = State::Waiting {
            reason: "ContainerCreating".into(),
            message: Some(message.clone()),
        };
    }
    st.facts.message = Some(message);
    st.facts.reason = Some("FailedMount".into());
    for r in &st.records {
        st.backoff.insert(
            r.name.clone(),
            (Instant::now() + ctx.config.backoff.base, 0),
        );
    }
}

/// How long a failed token refresh waits before the next try (the current token is still
/// good meanwhile).
const TOKEN_RETRY: Duration = Duration::from_secs(5);

/// Makes sure the pod's ServiceAccount token files are there and fresh
/// ([`sa_token`]): asks for a new token when none is held or the refresh time came.
/// `false` when the containers cannot start yet (no token at all).
async fn ensure_token(ctx: &Arc<NodeContext>, st: &mut PodState, pod: &Pod) -> bool {
    // A pod whose containers all ended for good needs no fresh token.
    let ended = !st.records.is_empty()
        && st
            .records
            .iter()
            .all(|r| matches!(r.state, State::Terminated(_)));
    if !sa_token::wanted(pod) || (ended && st.sa_token.is_some()) {
        return true;
    }
    if st.token_refresh.is_some_and(|at| Instant::now() < at) {
        return true;
    }
    let now = Timestamp::now();
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let written = match sa_token::request(&ctx.client, pod, now).await {
        Ok(issued) => {
            let dir = sa_token::dir(
                &ctx.config.data_dir,
                pod.metadata.uid.as_deref().unwrap_or("unknown"),
            );
            let (token, ca) = (issued.token.clone(), ctx.config.cluster_ca_pem.clone());
            let shared = sa_token::shared_dir(&ctx.config.data_dir);
            tokio::task::spawn_blocking(move || {
                sa_token::write(&dir, &shared, &token, ca.as_deref(), &ns)
            })
            .await
            .map_err(|e| format!("writing the service account token: {e}"))
            .and_then(|r| r)
            .map(|()| issued)
        }
        Err(e) => Err(e),
    };
    match written {
        Ok(issued) => {
            let wait = sa_token::refresh_at(issued.issued, issued.expires).duration_since(now);
            st.token_refresh =
                Some(Instant::now() + Duration::try_from(wait).unwrap_or(TOKEN_RETRY));
            st.sa_token = Some(issued);
            true
        }
        Err(message) if st.sa_token.is_some() => {
            tracing::warn!(pod = %pod_name(pod), "refreshing the service account token: {message}");
            st.token_refresh = Some(Instant::now() + TOKEN_RETRY);
            true
        }
        Err(message) => {
            mount_failed(ctx, st, message);
            false
        }
    }
}

/// The containers whose `image` the pod's spec no longer names (pure): Kubernetes allows
/// updating a running pod's images, and the kubelet then restarts those containers.
fn changed_images<'a>(records: &[ContainerRecord], spec: &'a PodSpec) -> Vec<&'a str> {
    spec.containers
        .iter()
        .filter(|c| {
            records
                .iter()
                .any(|r| r.name == c.name && r.image != c.image.as_deref().unwrap_or_default())
        })
        .map(|c| c.name.as_str())
        .collect()
}

/// Stops each running container whose image changed (its exit starts the new image at
/// once, whatever the restart policy, as the kubelet restarts a changed container); one
/// that is not running takes the new image when it next starts.
fn replace_changed_images(ctx: &Arc<NodeContext>, st: &mut PodState, pod: &Arc<Pod>) {
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    for name in changed_images(&st.records, spec) {
        let Some(run) = st.running.get_mut(name) else {
            if let Some(r) = st.records.iter_mut().find(|r| r.name == name) {
                r.image = image_of(spec, name);
                r.image_id = None;
            }
            continue;
        };
        if run.replacing {
            continue;
        }
        run.replacing = true;
        let grace = termination_grace(Some(spec));
        let container = run.container.clone();
        st.chores.spawn(async move {
            container.stop(grace).await;
        });
        let message = format!("Container {name} definition changed, will be restarted");
        tracing::info!(pod = %pod_name(pod), container = %name, %message, "killing container");
        record_event(ctx, st, pod, name, EventType::Normal, "Killing", message);
    }
}

fn image_of(spec: &PodSpec, name: &str) -> String {
    spec.containers
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Rebuilds container records from the pod's status (an agent restart) or the spec.
/// `saved` is the status this node last saved for the pod: it is never older than what
/// the API has (it is saved before every write), and it knows how containers ended while
/// the control plane was away.
fn adopt(st: &mut PodState, pod: &Pod, saved: Option<&PodStatus>) {
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    let statuses = saved
        .and_then(|s| s.container_statuses.clone())
        .or_else(|| {
            pod.status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
        })
        .unwrap_or_default();
    let policy = restart_policy(pod);
    for c in &spec.containers {
        let image = c.image.clone().unwrap_or_default();
        let mut record = ContainerRecord::new(&c.name, &image);
        if let Some(s) = statuses.iter().find(|s| s.name == c.name) {
            record.restart_count = s.restart_count;
            record.image_id = Some(s.image_id.clone()).filter(|i| !i.is_empty());
            let terminated = s.state.as_ref().and_then(|st| st.terminated.as_ref());
            let was_running = s.state.as_ref().is_some_and(|st| st.running.is_some());
            if let Some(t) = terminated {
                let ended = Terminated {
                    exit_code: t.exit_code,
                    reason: t.reason.clone().unwrap_or_default(),
                    message: t.message.clone(),
                    started_at: t.started_at.as_ref().map(|x| x.0),
                    finished_at: t
                        .finished_at
                        .as_ref()
                        .map(|x| x.0)
                        .unwrap_or_else(Timestamp::now),
                };
                if !should_restart(&policy, t.exit_code) {
                    record.state = State::Terminated(ended);
                } else {
                    record.last_terminated = Some(ended);
                }
            } else if was_running {
                // The instance ended with the previous agent process.
                let ended = Terminated {
                    exit_code: 255,
                    reason: "Unknown".into(),
                    message: Some("the node agent restarted".into()),
                    started_at: s
                        .state
                        .as_ref()
                        .and_then(|x| x.running.as_ref())
                        .and_then(|r| r.started_at.as_ref())
                        .map(|t| t.0),
                    finished_at: Timestamp::now(),
                };
                if should_restart(&policy, 255) {
                    record.restart_count += 1;
                    record.last_terminated = Some(ended);
                } else {
                    record.state = State::Terminated(ended);
                }
            }
        }
        st.records.push(record);
    }
}

fn assign_ip(ctx: &NodeContext, pod: &Pod) -> Result<Ipv4Addr, String> {
    let mut addrs = ctx
        .addresses
        .lock()
        .map_err(|_| "pod address allocator poisoned".to_string())?;
    if let Some(ip) = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        && addrs.reserve(ip)
    {
        return Ok(ip);
    }
    addrs.allocate().map_err(|e| e.to_string())
}

async fn prepare_volumes(
    ctx: &Arc<NodeContext>,
    pod: &Pod,
) -> Result<BTreeMap<String, (PathBuf, bool)>, String> {
    if pod
        .spec
        .as_ref()
        .is_none_or(|s| s.volumes.as_ref().is_none_or(Vec::is_empty))
    {
        // Nothing to make: no trip to a blocking thread.
        return Ok(BTreeMap::new());
    }
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let (cm_names, secret_names) = volumes::projected_sources(pod);
    let cms_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut cms = BTreeMap::new();
    for name in cm_names {
        if let Ok(Some(cm)) = cms_api.get_opt(&name).await {
            cms.insert(name, volumes::config_map_projection(cm.data.as_ref(), None));
        }
    }
    let mut secrets = BTreeMap::new();
    for name in secret_names {
        if let Ok(Some(s)) = secrets_api.get_opt(&name).await {
            let data = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            secrets.insert(name, data);
        }
    }
    let claims = claim_dirs(ctx, &ns, pod).await?;
    let pod = pod.clone();
    let dir = volumes::pod_dir(
        &ctx.config.data_dir,
        pod.metadata.uid.as_deref().unwrap_or("unknown"),
    );
    let allow = ctx.config.allow_host_path;
    tokio::task::spawn_blocking(move || {
        volumes::prepare(&pod, &dir, &cms, &secrets, &claims, allow)
    })
    .await
    .map_err(|e| format!("preparing volumes: {e}"))?
}

/// The directory of each of the pod's claims: the claim must be bound (its volume
/// named and the claim `Bound`), its volume on this node ([`volumes::claim_dir`]). Until
/// then the pod waits in `ContainerCreating` with the reason, retried like a missing
/// ConfigMap.
async fn claim_dirs(
    ctx: &NodeContext,
    ns: &str,
    pod: &Pod,
) -> Result<BTreeMap<String, PathBuf>, String> {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use wharf_control::api::storage;
    let mut out = BTreeMap::new();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let root = volumes::storage_root(&ctx.config.data_dir);
    for name in storage::pod_claims(pod) {
        let pvc = claims
            .get_opt(name)
            .await
            .map_err(|e| format!("persistentvolumeclaim {name:?}: {e}"))?
            .ok_or_else(|| format!("persistentvolumeclaim {name:?} not found"))?;
        let volume = storage::claim_volume(&pvc)
            .filter(|_| storage::claim_bound(&pvc))
            .ok_or_else(|| format!("persistentvolumeclaim {name:?} is not bound"))?;
        let pv = pvs
            .get_opt(volume)
            .await
            .map_err(|e| format!("persistentvolume {volume:?}: {e}"))?
            .ok_or_else(|| format!("persistentvolume {volume:?} not found"))?;
        let dir = volumes::claim_dir(
            name,
            storage::volume_path(&pv),
            storage::volume_node(&pv),
            &ctx.config.node_name,
            &root,
            ctx.config.allow_host_path,
        )?;
        out.insert(name.to_string(), dir);
    }
    Ok(out)
}

async fn env_sources(ctx: &NodeContext, ns: &str, c: &ContainerSpecK8s) -> Sources {
    let refs = env::references(c);
    let mut sources = Sources::default();
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    for name in refs.config_maps {
        if let Ok(Some(cm)) = cms.get_opt(&name).await {
            sources
                .config_maps
                .insert(name, cm.data.unwrap_or_default());
        }
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    for name in refs.secrets {
        if let Ok(Some(s)) = secrets.get_opt(&name).await {
            let data = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect();
            sources.secrets.insert(name, data);
        }
    }
    sources
}

fn network_access(pod: &Pod) -> NetworkAccess {
    match pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALLOW_HOSTS_ANNOTATION))
        .map(|s| s.trim())
    {
        None | Some("") => NetworkAccess::None,
        Some("*") => NetworkAccess::All,
        Some(list) => NetworkAccess::Hosts(
            list.split(',')
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .collect(),
        ),
    }
}

/// The limits the runtime enforces, read with the API's quantity parser (the API refuses
/// what it cannot read). A limit too large for the runtime's type is the largest one, and a
/// negative one zero: never "no limit".
fn resources(c: &ContainerSpecK8s) -> Resources {
    let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    let limit = |name: &str| {
        limits
            .and_then(|l| l.get(name))
            .map(|q| Quantity::parse(&q.0))
    };
    Resources {
        memory_bytes: limit("memory")
            .and_then(Result::ok)
            .map(|q| u64::try_from(q.value().max(0)).unwrap_or(u64::MAX)),
        cpu_millicores: limit("cpu")
            .and_then(Result::ok)
            .map(|q| u32::try_from(q.milli_value().max(0)).unwrap_or(u32::MAX)),
    }
}

/// The port an HTTP container serves on its pod's address: its first `containerPort`,
/// else 8080.
fn http_port(c: &ContainerSpecK8s) -> u16 {
    c.ports
        .as_ref()
        .and_then(|p| p.first())
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(8080)
}

/// The ports a pod serves on its address: every declared TCP `containerPort`, and the port
/// each container's HTTP server takes. Only these are reachable through the node tunnel.
pub(crate) fn served_ports(pod: &Pod) -> std::collections::BTreeSet<u16> {
    let containers = pod.spec.iter().flat_map(|s| &s.containers);
    super::addresses::tcp_container_ports(containers.clone())
        .chain(containers.map(http_port))
        .collect()
}

fn waiting(st: &mut PodState, idx: usize, reason: &str, message: String) {
    st.records[idx].state = State::Waiting {
        reason: reason.into(),
        message: Some(message),
    };
    st.records[idx].ready = false;
    st.records[idx].started = false;
}

async fn start_container(
    ctx: &Arc<NodeContext>,
    st: &mut PodState,
    pod: &Arc<Pod>,
    c: &ContainerSpecK8s,
    idx: usize,
) {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let image_ref = c.image.clone().unwrap_or_default();
    let retry_at = Instant::now() + ctx.config.backoff.base;

    let at = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().position(|x| x.name == c.name))
        .map_or_else(
            || format!("spec.containers{{{}}}", c.name),
            |i| format!("spec.containers[{i}]"),
        );
    let probe_specs = match ProbeSpecs::parse(c, &at) {
        Ok(p) => p,
        Err(message) => {
            // Refused, not run with a probe that cannot work: said once as an Event, and
            // in the container's waiting state for as long as the pod exists.
            let repeated = matches!(&st.records[idx].state,
                State::Waiting { reason, message: Some(m) }
                    if reason == "CreateContainerConfigError" && *m == message);
            if !repeated {
                record_event(
                    ctx,
                    st,
                    pod,
                    &c.name,
                    EventType::Warning,
                    "Failed",
                    format!("Error: {message}"),
                );
            }
            waiting(st, idx, "CreateContainerConfigError", message);
            st.backoff.insert(c.name.clone(), (retry_at, 0));
            return;
        }
    };
    // As the kubelet does: the container shows its waiting state (`ContainerCreating`) and
    // a `Pulling` Event while the image is fetched, so a slow or hanging registry is visible
    // at once, not only when the pull times out.
    let policy = pull::policy(c);
    let (mut credentials, unreadable) = pull::pod_credentials(&ctx.client, pod).await;
    // The node's own credential for the cluster registry, after the pod's.
    credentials.extend(
        ctx.config
            .cluster_registry
            .as_ref()
            .and_then(|r| r.pull_credential()),
    );
    if !unreadable.is_empty() {
        record_event(
            ctx,
            st,
            pod,
            &c.name,
            EventType::Warning,
            "FailedToRetrieveImagePullSecret",
            format!(
                "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                unreadable.join(", ")
            ),
        );
    }
    let present = policy != PullPolicy::Always && ctx.runtime.image_present(&image_ref).await;
    if !present && policy != PullPolicy::Never {
        write_status(ctx, st, pod).await;
        record_event(
            ctx,
            st,
            pod,
            &c.name,
            EventType::Normal,
            "Pulling",
            format!("Pulling image {image_ref:?}"),
        );
    }
    let pull_started = Instant::now();
    let options = PullOptions {
        policy,
        credentials,
    };
    let pulled = ctx.runtime.pull_with(&image_ref, &options).await;
    let (kind, reason, message) = match &pulled {
        Ok(_) if present => (
            EventType::Normal,
            "Pulled",
            format!("Container image {image_ref:?} already present on machine"),
        ),
        Ok(p) => {
            let total = pull_started.elapsed();
            (
                EventType::Normal,
                "Pulled",
                pull::pulled_message(&image_ref, total.saturating_sub(p.waited), total, p.size),
            )
        }
        Err(e @ ImagePullError::NeverPull { .. }) => {
            (EventType::Warning, "ErrImageNeverPull", e.to_string())
        }
        Err(e) => (
            EventType::Warning,
            "Failed",
            format!("Failed to pull image {image_ref:?}: {e}"),
        ),
    };
    record_event(ctx, st, pod, &c.name, kind, reason, message);
    let pulled = match pulled {
        Ok(p) => p,
        Err(e) => {
            // ErrImagePull, then ImagePullBackOff on the retries, as Kubernetes shows it
            // (ErrImageNeverPull and InvalidImageName stay as they are).
            let reason = match e.reason() {
                "ErrImagePull" if st.backoff.contains_key(&c.name) => "ImagePullBackOff",
                other => other,
            };
            record_event(
                ctx,
                st,
                pod,
                &c.name,
                EventType::Warning,
                "Failed",
                format!("Error: {reason}"),
            );
            let message = if reason == "ImagePullBackOff" {
                // As the kubelet words it: what it backs off from, and why.
                format!("Back-off pulling image {image_ref:?}: ErrImagePull: {e}")
            } else {
                e.to_string()
            };
            waiting(st, idx, reason, message);
            let n = st.backoff.get(&c.name).map_or(0, |(_, n)| n + 1);
            st.backoff.insert(
                c.name.clone(),
                (Instant::now() + ctx.config.backoff.delay(n), n),
            );
            return;
        }
    };
    let image = pulled.image;
    st.records[idx].image_id = Some(pulled.image_id);

    let downward = Downward {
        pod_ip: st.facts.pod_ip.clone().unwrap_or_default(),
        host_ip: st.facts.host_ip.clone().unwrap_or_default(),
        node_name: ctx.config.node_name.clone(),
    };
    let sources = env_sources(ctx, &ns, c).await;
    let env = match env::resolve(pod, c, &sources, &downward) {
        Ok(e) => e,
        Err(message) => {
            waiting(st, idx, "CreateContainerConfigError", message);
            st.backoff.insert(c.name.clone(), (retry_at, 0));
            return;
        }
    };
    // subPaths are resolved (and made) on disk: blocking file I/O, on a blocking thread.
    // Mounts without one are names looked up in the pod's volumes, done here.
    let resolved = if volumes::mounts_touch_disk(c) {
        let (container, vols) = (c.clone(), st.volumes.clone().unwrap_or_default());
        tokio::task::spawn_blocking(move || volumes::mounts(&container, &vols))
            .await
            .unwrap_or_else(|e| Err(format!("resolving volume mounts: {e}")))
    } else {
        volumes::mounts(c, st.volumes.as_ref().unwrap_or(&BTreeMap::new()))
    };
    let mut mounts = match resolved {
        Ok(m) => m,
        Err(message) => {
            waiting(st, idx, "CreateContainerConfigError", message);
            st.backoff.insert(c.name.clone(), (retry_at, 0));
            return;
        }
    };
    if st.sa_token.is_some() && sa_token::wanted(pod) {
        mounts.push(sa_token::mount(&ctx.config.data_dir, &uid));
    }
    let mut argv: Vec<String> = Vec::new();
    argv.extend(c.command.clone().unwrap_or_default());
    argv.extend(c.args.clone().unwrap_or_default());
    if c.command.is_none() {
        argv.insert(0, c.name.clone());
    }
    let http_listen = st
        .ip
        .map(|ip| SocketAddr::new(IpAddr::V4(ip), http_port(c)));
    let mut spec = ContainerSpec::new(container_id(&uid, &c.name));
    spec.restart_count = u32::try_from(st.records[idx].restart_count).unwrap_or(0);
    spec.argv = argv;
    // The API server's variables, when pods can reach it (`in_cluster`).
    spec.env = if ctx.config.api_server.is_some() {
        super::in_cluster::with_service_env(env)
    } else {
        env
    };
    spec.working_dir = c.working_dir.clone();
    spec.mounts = mounts;
    spec.resources = resources(c);
    spec.network = network_access(pod);
    // Service names are cluster-internal: reachable whatever the allow list says.
    spec.services = Some(
        ctx.services
            .resolver(pod.metadata.namespace.as_deref().unwrap_or("default")),
    );
    spec.http_listen = http_listen;
    // `kubernetes.default.svc` and its other names, once the allow list lets them through.
    spec.host_aliases = ctx
        .config
        .api_server
        .as_deref()
        .map(|a| super::in_cluster::aliases(a, &ctx.config.cluster_domain))
        .unwrap_or_default();
    let (http, ignored) = super::http_limits::http_limits(pod);
    for message in ignored {
        tracing::warn!(pod = %pod_name(pod), "ignoring an annotation: {message}");
    }
    spec.http = http;
    // `kubectl attach -i` writes to it (through the node server).
    spec.stdin = c.stdin == Some(true);
    // `localhost` from this container is the pod: its sibling containers' ports.
    spec.pod_ip = st.ip.map(IpAddr::V4);
    spec.pod_ports = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();

    match ctx.runtime.start(spec, &image).await {
        Ok(container) => {
            let container = Arc::new(container);
            let name = c.name.clone();
            let waiter = container.clone();
            st.exits.push(Box::pin(async move {
                let status = waiter.wait().await;
                (name, status)
            }));
            let started = Instant::now();
            let probes = ContainerProbes::new(&probe_specs, started);
            st.records[idx].ready = probes.ready();
            st.records[idx].started = probes.started();
            st.next_instance += 1;
            st.running.insert(
                c.name.clone(),
                Running {
                    container,
                    started,
                    instance: st.next_instance,
                    probes,
                    killed_by: None,
                    replacing: false,
                },
            );
            st.records[idx].state = State::Running {
                started_at: Timestamp::now(),
            };
            tracing::info!(pod = %pod_name(pod), container = %c.name, "container started");
            let containers = pod.spec.as_ref().map_or(0, |s| s.containers.len());
            if st.running.len() >= containers
                && let Some(since) = st.starting_since.take()
            {
                ctx.metrics.pod_start.observe(since.elapsed().as_secs_f64());
            }
        }
        Err(e) => {
            waiting(st, idx, "CreateContainerError", e.to_string());
            let n = st.backoff.get(&c.name).map_or(0, |(_, n)| n + 1);
            st.backoff.insert(
                c.name.clone(),
                (Instant::now() + ctx.config.backoff.delay(n), n),
            );
        }
    }
}

/// A container ended: record it, and schedule its restart if the policy says so.
fn record_exit(ctx: &NodeContext, st: &mut PodState, pod: &Pod, name: &str, status: ExitStatus) {
    let Some(running) = st.running.remove(name) else {
        return;
    };
    let Some(idx) = st.records.iter().position(|r| r.name == name) else {
        return;
    };
    let started_at = match &st.records[idx].state {
        State::Running { started_at } => Some(*started_at),
        _ => None,
    };
    let mut ended = Terminated {
        exit_code: status.code,
        reason: status.reason.as_str().to_string(),
        message: Some(status.message.clone()).filter(|m| !m.is_empty()),
        started_at,
        finished_at: Timestamp::now(),
    };
    if let Some(kind) = running.killed_by {
        // However the guest took it (a drained HTTP server ends "Completed"), it was
        // killed for failing a probe: exit code 137, reason Error, as Kubernetes shows it.
        ended.exit_code = PROBE_KILL_EXIT_CODE;
        ended.reason = "Error".into();
        ended.message = Some(format!("killed: failed {} probe", kind.name()));
    }
    tracing::info!(pod = %pod_name(pod), container = %name, code = ended.exit_code, reason = %ended.reason, "container ended");
    st.records[idx].ready = false;
    st.records[idx].started = false;
    if running.replacing {
        // Stopped for a new image: start it now, with no back-off.
        st.backoff.remove(name);
        if let Some(spec) = pod.spec.as_ref() {
            st.records[idx].image = image_of(spec, name);
        }
        st.records[idx].image_id = None;
        st.records[idx].last_terminated = Some(ended);
        st.records[idx].restart_count += 1;
        st.records[idx].state = State::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        };
        return;
    }
    if should_restart(&restart_policy(pod), ended.exit_code) {
        let ran_for = running.started.elapsed();
        let consecutive = match st.backoff.get(name) {
            Some((_, n)) if !ctx.config.backoff.resets_after(ran_for) => n + 1,
            _ => 0,
        };
        let delay = ctx.config.backoff.delay(consecutive);
        st.backoff
            .insert(name.to_string(), (Instant::now() + delay, consecutive));
        st.records[idx].last_terminated = Some(ended);
        st.records[idx].restart_count += 1;
        st.records[idx].state = State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(format!(
                "back-off {} restarting failed container={name} pod={}_{}({})",
                human(delay),
                pod.metadata.name.as_deref().unwrap_or(""),
                pod.metadata.namespace.as_deref().unwrap_or(""),
                pod.metadata.uid.as_deref().unwrap_or("")
            )),
        };
    } else {
        st.backoff.remove(name);
        st.records[idx].state = State::Terminated(ended);
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else if s >= 10 {
        format!("{s}s")
    } else if s > 0 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

async fn write_status(ctx: &NodeContext, st: &mut PodState, pod: &Arc<Pod>) {
    let status = pod_status(
        &st.records,
        &restart_policy(pod),
        &st.facts,
        pod.status.as_ref(),
        pod.status.as_ref().and_then(|s| s.qos_class.clone()),
        Timestamp::now(),
    );
    publish_ready(ctx, st, pod, &status);
    let Ok(value) = serde_json::to_value(&status) else {
        return;
    };
    // Compare without timestamps that move on their own.
    if st.last_written.as_ref() == Some(&value) {
        st.status_retry = None;
        return;
    }
    let api: Api<Pod> = Api::namespaced(
        ctx.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let name = pod.metadata.name.clone().unwrap_or_default();
    match api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": value})),
        )
        .await
    {
        Ok(_) => {
            ctx.api.ok();
            st.last_written = Some(value);
            st.status_retry = None;
            // The API has it now: what was kept for it on the node goes.
            if st.last_saved.take().is_some() {
                remove_saved_status(ctx, pod).await;
            }
        }
        Err(kube::Error::Api(s)) if s.code == 404 => st.status_retry = None,
        Err(e) => {
            if st.last_saved.as_ref() != Some(&value) {
                save_status(ctx, pod, &value).await;
                st.last_saved = Some(value.clone());
            }
            // Kept, and written again (the newest status at that time) until the API
            // accepts it, as the kubelet's status manager does.
            if matches!(&e, kube::Error::Api(_)) {
                tracing::warn!(pod = %pod_name(pod), error = %e, "writing pod status failed; will retry");
            } else {
                ctx.api.failed("writing pod status", &e);
            }
            let attempt = st.status_retry.map(|(_, n)| n).unwrap_or(0);
            st.status_retry = Some((
                Instant::now() + api_retry_delay(attempt),
                attempt.saturating_add(1),
            ));
        }
    }
}

/// Tells the node's proxy whether the pod is Ready here, the moment the worker knows and
/// before its status is written ([`crate::proxy::local`]): Ready as its status says, with
/// an address, and not being deleted.
fn publish_ready(ctx: &NodeContext, st: &PodState, pod: &Arc<Pod>, status: &PodStatus) {
    let ready = pod.metadata.deletion_timestamp.is_none()
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
    let local = match (ready, st.ip) {
        (true, Some(ip)) => Some(crate::proxy::local::ReadyPod {
            pod: pod.clone(),
            ip: IpAddr::V4(ip),
        }),
        _ => None,
    };
    ctx.services.local_ready.set(&pod_name(pod), local);
}

/// The pod's `terminationGracePeriodSeconds` (30 s when unset, as Kubernetes defaults it).
fn termination_grace(spec: Option<&PodSpec>) -> Duration {
    let seconds = spec
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    Duration::from_secs(seconds.max(0).unsigned_abs())
}

/// Where this node keeps a status of a pod that the API has not accepted:
/// `DATA_DIR/pod-status/<uid>.json`. It outlives the agent process, so an agent restarted
/// while the control plane was away still knows how the pod's containers ended, and goes
/// once the API has the status, or with the pod.
///
/// Only statuses the API did not take are saved (after the write failed): a status the API
/// holds is read back from it by a restarted agent, and a node starting ten thousand pods
/// then writes no file per pod for it. A status not yet acknowledged when the agent dies
/// (the write in flight) is not saved; the new agent starts from the API's.
fn saved_status_path(ctx: &NodeContext, pod: &Pod) -> Option<PathBuf> {
    let uid = pod.metadata.uid.as_deref().filter(|u| !u.is_empty())?;
    Some(status_path(&ctx.config.data_dir, uid))
}

fn status_path(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("pod-status").join(format!("{uid}.json"))
}

/// Saves `status` for the pod. Best effort: without it a restarted agent knows only what
/// the API has.
async fn save_status(ctx: &NodeContext, pod: &Pod, status: &serde_json::Value) {
    let Some(path) = saved_status_path(ctx, pod) else {
        return;
    };
    let Ok(bytes) = serde_json::to_vec(status) else {
        return;
    };
    let written = tokio::task::spawn_blocking(move || write_saved_status(&path, &bytes)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(pod = %pod_name(pod), error = %e, "saving pod status on the node failed")
        }
        Err(e) => {
            tracing::warn!(pod = %pod_name(pod), error = %e, "saving pod status on the node failed")
        }
    }
}

/// Writes a saved status to a temporary file renamed over the old one, so that a crash
/// leaves the old or the new one; the directory is made when missing. Blocking.
fn write_saved_status(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let open = || {
        wharf_runtime::private::private_file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
    };
    let mut file = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                wharf_runtime::private::create_private_dir(dir)?;
            }
            open()?
        }
        other => other?,
    };
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Removes the pod's saved status (the API has a newer one). Best effort.
async fn remove_saved_status(ctx: &NodeContext, pod: &Pod) {
    let Some(path) = saved_status_path(ctx, pod) else {
        return;
    };
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
}

/// Adopts what the pod's containers were (after an agent restart, or for a pod this agent
/// meets first): the status saved on the node when there is one, which is newer than the
/// API's, else the API's.
async fn adopt_saved(ctx: &NodeContext, st: &mut PodState, pod: &Pod) {
    let saved = load_saved_status(ctx, pod).await;
    adopt(st, pod, saved.as_ref());
    // Marks the file as there, to be removed once the API takes a status.
    st.last_saved = saved.and_then(|s| serde_json::to_value(s).ok());
}

/// The status this node saved for the pod, if any.
async fn load_saved_status(ctx: &NodeContext, pod: &Pod) -> Option<PodStatus> {
    let path = saved_status_path(ctx, pod)?;
    let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .ok()?
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn stop_all(st: &mut PodState, grace: Duration) {
    st.probe_jobs.abort_all();
    let stops = st
        .running
        .drain()
        .map(|(name, r)| async move { (name, r.container.stop(grace).await) });
    let results: Vec<(String, ExitStatus)> = futures::future::join_all(stops).await;
    for (name, status) in results {
        if let Some(idx) = st.records.iter().position(|r| r.name == name) {
            let started_at = match &st.records[idx].state {
                State::Running { started_at } => Some(*started_at),
                _ => None,
            };
            st.records[idx].ready = false;
            st.records[idx].started = false;
            st.records[idx].state = State::Terminated(Terminated {
                exit_code: status.code,
                reason: status.reason.as_str().to_string(),
                message: Some(status.message).filter(|m| !m.is_empty()),
                started_at,
                finished_at: Timestamp::now(),
            });
        }
    }
    st.exits = FuturesUnordered::new();
}

/// Graceful deletion: stop within the grace period, report, then remove the pod.
async fn terminate(ctx: &Arc<NodeContext>, st: &mut PodState, pod: &Arc<Pod>) {
    let grace = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0);
    tracing::info!(pod = %pod_name(pod), grace, "stopping pod");
    // No new requests from this node's proxy, before the slice says so.
    ctx.services.local_ready.set(&pod_name(pod), None);
    stop_all(st, Duration::from_secs(grace as u64)).await;
    if st.records.is_empty() {
        adopt_saved(ctx, st, pod).await;
    }
    write_status(ctx, st, pod).await;
    let api: Api<Pod> = Api::namespaced(
        ctx.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api
        .delete(pod.metadata.name.as_deref().unwrap_or(""), &params)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => tracing::warn!(pod = %pod_name(pod), error = %e, "removing the pod failed"),
    }
    cleanup(ctx, st, pod).await;
}

/// Releases the pod's address, volumes and logs.
async fn cleanup(ctx: &Arc<NodeContext>, st: &mut PodState, pod: &Pod) {
    ctx.services.local_ready.set(&pod_name(pod), None);
    if let Some(ip) = st.ip {
        ctx.sockets.remove(ip);
    }
    if let (Some(ip), Ok(mut addrs)) = (st.ip.take(), ctx.addresses.lock()) {
        addrs.release(ip);
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if !uid.is_empty() {
        let data_dir = ctx.config.data_dir.clone();
        let removed_uid = uid.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(volumes::pod_dir(&data_dir, &removed_uid));
            let _ = std::fs::remove_dir_all(sa_token::dir(&data_dir, &removed_uid));
            let _ = std::fs::remove_file(status_path(&data_dir, &removed_uid));
        })
        .await;
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            let _ = ctx.runtime.remove_logs(&container_id(&uid, &c.name)).await;
        }
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    fn limited(cpu: &str, memory: &str) -> Resources {
        let c: ContainerSpecK8s = serde_json::from_value(serde_json::json!({
            "name": "app", "resources": {"limits": {"cpu": cpu, "memory": memory}}}))
        .expect("container");
        resources(&c)
    }

    #[test]
    fn limits_are_read_as_the_api_reads_them() {
        let r = limited("2.007", "1.5Gi");
        assert_eq!(r.cpu_millicores, Some(2007));
        assert_eq!(r.memory_bytes, Some(1_610_612_736));
        assert_eq!(limited("2.0071", "1e3").cpu_millicores, Some(2008));
        // Too large for the runtime is the largest limit, never none.
        let r = limited("1e1000", "1e1000");
        assert_eq!(r.cpu_millicores, Some(u32::MAX));
        assert_eq!(r.memory_bytes, Some(i64::MAX as u64));
    }

    #[test]
    fn a_changed_image_is_noticed_per_container() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({"containers": [
            {"name": "a", "image": "a-v2.wasm"},
            {"name": "b", "image": "b.wasm"},
            {"name": "new", "image": "n.wasm"},
        ]}))
        .expect("spec");
        let records = vec![
            ContainerRecord::new("a", "a-v1.wasm"),
            ContainerRecord::new("b", "b.wasm"),
        ];
        assert_eq!(changed_images(&records, &spec), ["a"]);
        assert_eq!(image_of(&spec, "a"), "a-v2.wasm");
    }

    #[test]
    fn saved_statuses_are_written_whole_and_replaced_by_rename() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = status_path(tmp.path(), "uid-1");
        assert_eq!(path, tmp.path().join("pod-status/uid-1.json"));
        // The first save makes the directory.
        write_saved_status(&path, br#"{"phase":"Pending"}"#).expect("first");
        let meta = |p: &Path| std::fs::metadata(p).expect("exists");
        assert_eq!(meta(&path).permissions().mode() & 0o777, 0o600);
        assert_eq!(
            meta(path.parent().expect("dir")).permissions().mode() & 0o777,
            0o700
        );
        // Later ones replace it by rename: a crash leaves the old file or the new one.
        let before = meta(&path).ino();
        write_saved_status(&path, br#"{"phase":"Running"}"#).expect("second");
        assert_ne!(
            meta(&path).ino(),
            before,
            "replaced, not rewritten in place"
        );
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            r#"{"phase":"Running"}"#
        );
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["uid-1.json"], "no temporary file left");
    }
}
