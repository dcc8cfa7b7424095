//! The controller manager: level-triggered reconcilers that drive the cluster toward what
//! its objects ask for.
//!
//! Every controller follows the same shape (kube-runtime's `Controller`): it is fed by
//! watches, gets an object key (never an event), reads the current state, computes what
//! to do with a pure `decide` function that has its own unit tests, executes that through
//! the API, and returns requeue-or-await-change; a separate error policy backs off. They
//! all talk to the API server through the in-process client, like any user could.

pub mod apiservices;
pub mod clock;
pub mod clusterroleaggregation;
pub mod common;
pub mod crd;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod gc;
pub mod hpa;
pub mod informer;
pub mod ingress;
pub mod job;
pub mod namespace;
pub mod nodelifecycle;
pub mod persistentvolume;
pub mod replicaset;
pub mod replicationcontroller;
pub mod requestscale;
pub mod resourcequota;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;
pub mod tokencleaner;

use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Tunables of the controllers, with laptop defaults (detect in seconds, not minutes).
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// A node whose Lease was not renewed for this long becomes Ready=Unknown.
    pub node_monitor_grace: Duration,
    /// Default `tolerationSeconds` for the unreachable/not-ready taints: how long pods stay
    /// on an unreachable node before they are evicted.
    pub pod_eviction_timeout: Duration,
    /// A pod bound to a Node that does not exist is force-deleted once it is this old
    /// (Kubernetes' PodGC quarantine: the node may not have registered yet).
    pub orphaned_pod_grace: Duration,
    /// A Job waits this long before replacing its first failed pod, doubling per failure
    /// up to 6 minutes (Kubernetes' pod failure back-off).
    pub job_backoff: Duration,
    /// The garbage collector gathers changes for this long before it looks again.
    pub gc_debounce: Duration,
    /// How often expired join tokens and node credentials are looked for and deleted.
    pub token_cleanup_interval: Duration,
    /// `workqueue_*` metric families, one series per controller.
    pub workqueue: crate::metrics::WorkqueueMetrics,
    /// How often each HorizontalPodAutoscaler is evaluated (kube-controller-manager's
    /// `--horizontal-pod-autoscaler-sync-period`, 15 s).
    pub hpa_sync_period: Duration,
    /// How often the request-driven autoscaler reads the node proxies' in-flight counts
    /// (only while some Deployment opts in).
    pub request_scale_sync_period: Duration,
    /// The time the CronJob controller and the Jobs' TTL decide on (tests drive it).
    pub clock: clock::Clock,
    /// How controllers that read nodes (request-driven autoscaling reads their
    /// `/metrics`) call them: the API server's TLS towards nodes; `None` reads none.
    pub node_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_monitor_grace: Duration::from_secs(6),
            pod_eviction_timeout: Duration::from_secs(4),
            orphaned_pod_grace: Duration::from_secs(20),
            job_backoff: Duration::from_secs(10),
            gc_debounce: Duration::from_millis(100),
            token_cleanup_interval: Duration::from_secs(60),
            workqueue: Default::default(),
            hpa_sync_period: Duration::from_secs(15),
            request_scale_sync_period: Duration::from_millis(500),
            clock: clock::Clock::system(),
            node_tls: None,
        }
    }
}

/// Starts every controller; their tasks end when `shutdown` is cancelled.
pub fn start_all(
    client: kube::Client,
    config: &ControllerConfig,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    // One watch and cache of pods for every controller that reads them.
    let mut informers = informer::Informers::new(&client);
    let pods = &mut informers.pods;
    // Each controller adds its start line here.
    replicaset::start(client.clone(), config, pods, shutdown.clone(), tasks);
    replicationcontroller::start(client.clone(), config, pods, shutdown.clone(), tasks);
    servicelb::start(client.clone(), shutdown.clone(), tasks);
    ingress::start(client.clone(), shutdown.clone(), tasks);
    apiservices::start(client.clone(), shutdown.clone(), tasks);
    deployment::start(client.clone(), config, pods, shutdown.clone(), tasks);
    endpoints::start(client.clone(), config, pods, shutdown.clone(), tasks);
    daemonset::start(client.clone(), config, pods, shutdown.clone(), tasks);
    job::start(client.clone(), config, pods, shutdown.clone(), tasks);
    disruption::start(client.clone(), pods, shutdown.clone(), tasks);
    resourcequota::start(client.clone(), pods, shutdown.clone(), tasks);
    cronjob::start(
        client.clone(),
        config.clock.clone(),
        shutdown.clone(),
        tasks,
    );
    nodelifecycle::start(client.clone(), config, pods, shutdown.clone(), tasks);
    gc::start(client.clone(), config, shutdown.clone(), tasks);
    namespace::start(client.clone(), config, shutdown.clone(), tasks);
    clusterroleaggregation::start(client.clone(), shutdown.clone(), tasks);
    crd::start(client.clone(), shutdown.clone(), tasks);
    hpa::start(client.clone(), config, shutdown.clone(), tasks);
    requestscale::start(client.clone(), config, shutdown.clone(), tasks);
    persistentvolume::start(client.clone(), pods, shutdown.clone(), tasks);
    statefulset::start(client.clone(), pods, shutdown.clone(), tasks);
    serviceaccount::start(client.clone(), shutdown.clone(), tasks);
    tokencleaner::start(
        client.clone(),
        config.token_cleanup_interval,
        shutdown.clone(),
        tasks,
    );
    informers.start(shutdown.clone(), tasks);
    let _ = (client, config, shutdown, tasks);
}
