//! The node agent: wharf's kubelet.
//!
//! It registers its Node, keeps a Lease renewed and the Node's conditions fresh, watches
//! the pods bound to it (`spec.nodeName`), and runs each pod through its own worker task
//! ([`worker`]), which pulls, starts, restarts and stops the pod's containers on the wasm
//! runtime, probes them ([`probes`]) and writes the pod's status. Everything goes through the API server; the agent
//! holds no state the API does not also have, so a restarted agent adopts the pods bound
//! to it and brings them back to their desired state.
//!
//! The agent is level-triggered: a worker is handed the latest version of its pod (a
//! `watch` channel keeps only the newest) and converges on it, whatever happened between.

pub mod addresses;
pub mod env;
pub mod http_limits;
pub mod in_cluster;
pub mod node_object;
pub mod probes;
pub mod pull;
pub mod restart;
pub mod sa_token;
pub mod status;
pub mod volumes;
pub mod worker;

use crate::proxy::ProxyConfig;
use crate::reachability::{ApiHealth, api_retry_delay};
use crate::tunnel::metrics::TunnelMetrics;
use crate::{daemon, proxy};
use addresses::{PodAddresses, PodSockets};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use node_object::NodeFacts;
use restart::Backoff;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wharf_control::events::Recorder;
use wharf_runtime::Runtime;
use wharf_runtime::gc::ImageGcPolicy;

/// The `source.component` of the Events a node records (the kubelet's is `kubelet`).
pub const EVENT_SOURCE: &str = "wharf-node";

/// How to run a node agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// Pod volumes and other per-node state.
    pub data_dir: PathBuf,
    /// The node's address: where the control plane and other nodes reach it.
    pub address: IpAddr,
    /// Where the node's own HTTP server (container logs) listens; port 0 picks one.
    pub daemon_listen: SocketAddr,
    /// The port of the node tunnel on `address` (0 picks one), through which nodes at
    /// other addresses reach this node's pods; `None` runs no tunnel (see [`crate::tunnel`]).
    pub tunnel_port: Option<u16>,
    /// Whether this node mirrors the pods of nodes on other machines on its loopback, so
    /// its pods reach them by pod IP ([`crate::tunnel::mirror`]). Off for nodes that share
    /// one address (`wharf up`): they never need it.
    pub mirrors: bool,
    /// Used when the control plane did not assign `spec.podCIDR`.
    pub fallback_pod_cidr: Option<String>,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
    pub status_interval: Duration,
    pub backoff: Backoff,
    /// Whether pods may mount `hostPath` volumes.
    pub allow_host_path: bool,
    /// The pods the node advertises it can run (`--max-pods`); `None`: what its open
    /// files limit and memory allow (`node_object::pods_capacity`).
    pub max_pods: Option<u32>,
    /// How fast the node writes Events (`--event-qps`, `--event-burst`); what waits
    /// beyond a thousand is dropped ([`wharf_control::events`]).
    pub event_rate: wharf_control::events::EventRate,
    /// The Service proxy (see [`crate::proxy`]).
    pub proxy: ProxyConfig,
    /// Where the cluster DNS answers (UDP and TCP, shared with the machine's other nodes);
    /// `None` runs no DNS.
    pub dns_listen: Option<SocketAddr>,
    /// The cluster domain (DNS names `SVC.NS.svc.DOMAIN`, pods' search path).
    pub cluster_domain: String,
    /// Whether the DNS forwards names outside the cluster domain to the host's resolvers
    /// (else it refuses them).
    pub dns_forward: bool,
    /// When unused images are removed (see [`wharf_runtime::gc`]).
    pub image_gc: ImageGcPolicy,
    /// How often image garbage collection looks (the kubelet's is 5 minutes).
    pub image_gc_period: Duration,
    /// Where images named `registry.wharf.local/...` come from; `None`: that name is not
    /// mapped (it then resolves like any other registry host).
    pub cluster_registry: Option<ClusterRegistry>,
    /// The cluster CA (PEM) guests get as `ca.crt` beside their ServiceAccount token
    /// ([`sa_token`]); none when the node does not know it.
    pub cluster_ca_pem: Option<String>,
    /// Where this node reaches the API server (`host:port`): what pods reach at
    /// `https://kubernetes.default.svc` ([`in_cluster`]); none: pods get no such names.
    pub api_server: Option<String>,
}

/// How a node reaches its cluster's registry ([`wharf_control::oci`]): the control
/// plane's `host:port`, the CA its certificate chains to, and the credential the node
/// pulls with, read at each pull (a node credential is renewed in place).
#[derive(Clone)]
pub struct ClusterRegistry {
    pub host: String,
    /// PEM file of the cluster CA.
    pub ca_file: PathBuf,
    pub credential: Arc<dyn Fn() -> Option<String> + Send + Sync>,
}

impl std::fmt::Debug for ClusterRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRegistry")
            .field("host", &self.host)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl ClusterRegistry {
    /// The credential a pull of a cluster-registry image presents to `host` (the user
    /// name is not read by the registry: the password is the node's token).
    pub fn pull_credential(&self) -> Option<wharf_runtime::RegistryCredential> {
        Some(wharf_runtime::RegistryCredential {
            registry: self.host.clone(),
            username: "wharf-node".into(),
            password: (self.credential)()?,
        })
    }
}

impl AgentConfig {
    pub fn new(node_name: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            node_name: node_name.into(),
            data_dir: data_dir.into(),
            address: IpAddr::from([127, 0, 0, 1]),
            daemon_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tunnel_port: Some(0),
            mirrors: false,
            fallback_pod_cidr: None,
            lease_duration: Duration::from_secs(40),
            renew_interval: Duration::from_secs(2),
            status_interval: Duration::from_secs(10),
            backoff: Backoff::default(),
            allow_host_path: false,
            max_pods: None,
            event_rate: wharf_control::events::EventRate::KUBELET,
            proxy: ProxyConfig::default(),
            dns_listen: Some(SocketAddr::from(([127, 0, 0, 1], 5353))),
            cluster_domain: "cluster.local".into(),
            dns_forward: true,
            image_gc: ImageGcPolicy::default(),
            image_gc_period: Duration::from_secs(300),
            cluster_registry: None,
            cluster_ca_pem: None,
            api_server: None,
        }
    }
}

/// Why the kubelet could not register its Node.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("registering node {node}: {error}")]
    Register { node: String, error: kube::Error },
}

pub struct NodeContext {
    pub config: AgentConfig,
    pub client: kube::Client,
    pub runtime: Arc<Runtime>,
    pub addresses: Mutex<PodAddresses>,
    /// The sockets the pods with an address here declare (what the tunnel admits).
    pub sockets: Arc<PodSockets>,
    /// Pods this node runs, by `namespace/name`, for the log server.
    pub pods: daemon::PodIndex,
    /// The proxy's counters and the Service names pods resolve.
    pub services: Arc<proxy::Shared>,
    /// Records the node's Events about pods (probe failures, kills), as `wharf-node`.
    pub events: Recorder,
    /// The tunnel's counters (server, dials, mirrors).
    pub tunnel: Arc<TunnelMetrics>,
    /// Whether the control plane answers; every API call of the node reports to it.
    pub api: Arc<ApiHealth>,
    /// The kubelet's and runtime's metrics (pod start durations are observed here).
    pub metrics: Arc<crate::metrics::NodeMetrics>,
    pub shutdown: CancellationToken,
}

/// Starts the kubelet's own tasks: the Node's heartbeat, the Lease, and the pod workers
/// (through the watch of the pods bound here).
pub fn spawn(tasks: &mut JoinSet<()>, ctx: Arc<NodeContext>, facts: NodeFacts) {
    tasks.spawn(heartbeat(ctx.clone(), facts));
    tasks.spawn(renew_lease(ctx.clone()));
    tasks.spawn(collect_images(ctx.clone()));
    tasks.spawn(reclaim_volumes(ctx.clone()));
    tasks.spawn(watch_pods(ctx));
}

/// Removes the directories of `local-path` volumes whose PersistentVolume is gone (the
/// PV controller deletes a released volume with reclaim policy `Delete`): after every
/// change to the volumes, once the first list is complete, what is under the storage root
/// and named by no volume goes ([`volumes::orphaned`]).
async fn reclaim_volumes(ctx: Arc<NodeContext>) {
    use k8s_openapi::api::core::v1::PersistentVolume;
    use kube::runtime::{WatchStreamExt, reflector};
    let (reader, writer) = reflector::store::<PersistentVolume>();
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let stream = reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let mut stream = std::pin::pin!(stream);
    let mut ready = false;
    loop {
        let next = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            next = stream.next() => next,
            // Deletions come as changes too; this wakes the first sweep after the list.
            _ = reader.wait_until_ready(), if !ready => { ready = true; Some(Ok(Default::default())) }
        };
        match next {
            None => return,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "watching persistentvolumes");
                continue;
            }
            Some(Ok(_)) => {}
        }
        if !ready {
            continue;
        }
        let paths: Vec<String> = reader
            .state()
            .iter()
            .filter_map(|pv| wharf_control::api::storage::volume_path(pv).map(str::to_string))
            .collect();
        let root = volumes::storage_root(&ctx.config.data_dir);
        let swept = tokio::task::spawn_blocking(move || {
            let entries: Vec<String> = std::fs::read_dir(&root)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with("pvc-"))
                        .collect()
                })
                .unwrap_or_default();
            for dir in volumes::orphaned(&root, &entries, &paths) {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => tracing::info!(dir = %dir.display(), "removed a reclaimed volume"),
                    Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "removing a reclaimed volume"),
                }
            }
        })
        .await;
        if let Err(e) = swept {
            tracing::warn!(error = %e, "sweeping reclaimed volumes");
        }
    }
}

/// Every container image (init containers too) a pod names.
fn pod_images(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.spec.iter().flat_map(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(&s.containers)
            .filter_map(|c| c.image.as_deref())
            .map(str::trim)
    })
}

/// Image garbage collection, every `image_gc_period`: the images the node's pods name
/// are in use; the runtime decides and removes (see [`wharf_runtime::gc`]). What it
/// removed leaves the Node's `status.images` at the next heartbeat.
async fn collect_images(ctx: Arc<NodeContext>) {
    let mut tick = tokio::time::interval(ctx.config.image_gc_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let in_use: std::collections::HashSet<String> = {
            let pods = ctx.pods.lock().unwrap_or_else(|e| e.into_inner());
            pods.values()
                .flat_map(|p| pod_images(p).map(str::to_owned).collect::<Vec<_>>())
                .collect()
        };
        match ctx
            .runtime
            .collect_images(&ctx.config.image_gc, |name| in_use.contains(name))
            .await
        {
            Ok(report) if !report.removed.is_empty() => tracing::info!(
                removed = ?report.removed,
                bytes_freed = report.bytes_freed,
                disk_usage_percent = report.usage_percent,
                "image garbage collection removed unused images"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("image garbage collection failed: {e}"),
        }
    }
}

/// Creates the Node, or adopts it if it exists (a restarted agent), and reports Ready.
pub async fn register(client: &kube::Client, facts: &NodeFacts) -> Result<Node, AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let err = |error| AgentError::Register {
        node: facts.name.clone(),
        error,
    };
    let desired = node_object::node_object(facts);
    let node = match nodes.create(&PostParams::default(), &desired).await {
        Ok(n) => n,
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let labels = serde_json::json!({"metadata": {
                "labels": desired.metadata.labels,
                "annotations": node_object::node_annotations(facts),
            }});
            nodes
                .patch(&facts.name, &PatchParams::default(), &Patch::Merge(&labels))
                .await
                .map_err(err)?
        }
        Err(e) => return Err(err(e)),
    };
    let status =
        node_object::node_status(facts, true, node.status.as_ref(), jiff::Timestamp::now());
    nodes
        .patch_status(
            &facts.name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": status})),
        )
        .await
        .map_err(err)
}

/// Keeps the Node's conditions fresh.
async fn heartbeat(ctx: Arc<NodeContext>, facts: NodeFacts) {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let mut tick = tokio::time::interval(ctx.config.status_interval);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let previous = match nodes.get_status(&facts.name).await {
            Ok(n) => n.status,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                // The Node is gone while this node runs (deleted, or the control plane's
                // store restored from before the node joined): register again, with the
                // pod range the node's pods already have.
                match register(&ctx.client, &facts).await {
                    Ok(_) => {
                        tracing::info!(node = %facts.name, "the Node object was gone; registered again");
                        ctx.api.ok();
                    }
                    Err(e) => tracing::warn!("{e}"),
                }
                continue;
            }
            Err(e) => {
                // The control plane is away: nothing to write to either.
                ctx.api.failed("reading the node's status", &e);
                continue;
            }
        };
        let mut status =
            node_object::node_status(&facts, true, previous.as_ref(), jiff::Timestamp::now());
        // The compiled modules this node holds, for the scheduler's image locality.
        status.images = Some(node_object::node_images(
            ctx.runtime
                .images()
                .iter()
                .map(|i| (ctx.runtime.image_names(&i.digest()), i.size())),
        ));
        let patch = Patch::Merge(serde_json::json!({"status": status}));
        match nodes
            .patch_status(&facts.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => ctx.api.ok(),
            Err(e) => ctx.api.failed("node status heartbeat", &e),
        }
    }
}

/// Renews the node's Lease in `kube-node-lease`: the signal the node lifecycle controller
/// watches.
async fn renew_lease(ctx: Arc<NodeContext>) {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), "kube-node-lease");
    let name = ctx.config.node_name.clone();
    let mut tick = tokio::time::interval(ctx.config.renew_interval);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = MicroTime(jiff::Timestamp::now());
        let spec = LeaseSpec {
            holder_identity: Some(name.clone()),
            lease_duration_seconds: Some(ctx.config.lease_duration.as_secs() as i32),
            renew_time: Some(now.clone()),
            ..Default::default()
        };
        let result = match leases
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": spec})),
            )
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some("kube-node-lease".into()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        acquire_time: Some(now),
                        ..spec
                    }),
                };
                leases
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            other => other.map(|_| ()),
        };
        match result {
            Ok(()) => ctx.api.ok(),
            Err(e) => ctx.api.failed("lease renewal", &e),
        }
    }
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// Watches the pods bound to this node and hands each to its worker.
async fn watch_pods(ctx: Arc<NodeContext>) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let selector = format!("spec.nodeName={}", ctx.config.node_name);
    let stream = watcher::watcher(pods, watcher::Config::default().fields(&selector));
    let mut stream = std::pin::pin!(stream);
    let mut workers: HashMap<String, watch::Sender<Option<Arc<Pod>>>> = HashMap::new();
    let mut worker_tasks: JoinSet<String> = JoinSet::new();
    // The pods a relist named, to find at its end those that vanished while the watch was
    // down; filled by the relist's own events only.
    let mut seen_in_init: HashSet<String> = HashSet::new();
    let mut failures = 0u32;
    loop {
        let event = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            Some(done) = worker_tasks.join_next(), if !worker_tasks.is_empty() => {
                if let Ok(uid) = done {
                    workers.remove(&uid);
                }
                continue;
            }
            e = stream.next() => e,
        };
        let Some(event) = event else { break };
        let event = match event {
            Ok(e) => {
                ctx.api.ok();
                failures = 0;
                e
            }
            Err(e) => {
                ctx.api.failed("pod watch", &e);
                let delay = api_retry_delay(failures);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        let relisting = matches!(event, watcher::Event::InitApply(_));
        match event {
            watcher::Event::Init => seen_in_init.clear(),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                if relisting {
                    seen_in_init.insert(uid.clone());
                }
                let pod = Arc::new(pod);
                if let Ok(mut map) = ctx.pods.lock() {
                    map.insert(pod_key(&pod), pod.clone());
                }
                match workers.get(&uid) {
                    Some(tx) => {
                        // A relist names every pod again: a worker wakes only for a
                        // version it has not seen.
                        tx.send_if_modified(|current| {
                            let same = current.as_ref().is_some_and(|c| {
                                c.metadata.resource_version.is_some()
                                    && c.metadata.resource_version == pod.metadata.resource_version
                            });
                            if !same {
                                *current = Some(pod);
                            }
                            !same
                        });
                    }
                    None => {
                        let (tx, rx) = watch::channel(Some(pod));
                        workers.insert(uid.clone(), tx);
                        let ctx = ctx.clone();
                        worker_tasks.spawn(async move {
                            worker::run(ctx, rx).await;
                            uid
                        });
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid
                    && let Some(tx) = workers.get(uid)
                {
                    tx.send_replace(None);
                }
                if let Ok(mut map) = ctx.pods.lock()
                    && map.get(&pod_key(&pod)).and_then(|p| p.metadata.uid.clone())
                        == pod.metadata.uid
                {
                    map.remove(&pod_key(&pod));
                }
            }
            watcher::Event::InitDone => {
                // Pods that vanished while the watch was down.
                for (uid, tx) in &workers {
                    if !seen_in_init.contains(uid) {
                        tx.send_replace(None);
                    }
                }
                seen_in_init = HashSet::new();
            }
        }
    }
    // Shutdown: workers see the token too; wait for them to let go of their containers.
    while worker_tasks.join_next().await.is_some() {}
}
