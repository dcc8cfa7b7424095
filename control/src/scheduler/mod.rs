//! The scheduler: places pending pods on nodes.
//!
//! It follows the shape of Kubernetes' scheduling framework, because that shape is what
//! makes a scheduler both explainable and fast:
//!
//! - **Decide apart from do.** A decision ([`algorithm::schedule`]) is a pure function of
//!   the scheduler's [`cache`] and the pod: filter plugins rule nodes out with a
//!   [`framework::Status`] that tells `Unschedulable` (may fit once pods leave) from
//!   `UnschedulableAndUnresolvable` (needs the node or pod to change) from `Error`; score
//!   plugins rank what is left, 0..100, normalized and weighted; the best node wins, ties
//!   at random. Every plugin is a small file in [`plugins`] with a pure function at its
//!   core and its own tests. When nothing fits, the per-node reasons become Kubernetes'
//!   `0/N nodes are available: ...` message, on the pod's `PodScheduled=False` condition
//!   and a `FailedScheduling` Event.
//! - **Its own cache, fed by watches.** The scheduler never lists or gets during a
//!   decision: kube-runtime watchers over the in-process client keep the [`cache`] of
//!   nodes and placed pods and the [`queue`] of pending pods current.
//! - **Assume, then bind concurrently.** A chosen node gets the pod in the cache at once
//!   (so the next decision sees the resources taken), and the binding (`POST
//!   pods/NAME/binding`, which sets `spec.nodeName` only if it is still empty) runs in the
//!   background, up to [`SchedulerConfig::parallel_binds`] at a time. A failed binding
//!   forgets the assumption and backs the pod off.
//! - **Retry on change, not on a timer.** An unschedulable pod is parked until a node is
//!   added or changes in a way that matters (not a heartbeat), or a pod is deleted; then it
//!   is retried after its back-off (1 s doubling to 10 s). So adding a node that fits
//!   schedules a pending pod without anyone touching it.
//!
//! - **Preempt when nothing fits.** A pending pod that fits no node may evict pods of
//!   lower priority from one node ([`preemption`]); the queue is ordered by priority.
//!
//! Only pods with `spec.schedulerName` `default-scheduler` (or none), without
//! `spec.nodeName`, and not being deleted are scheduled. Everything runs in the tasks
//! [`start`] puts in the control plane's `JoinSet` and ends with the shutdown token.

pub mod algorithm;
pub mod cache;
pub mod framework;
pub mod plugins;
pub mod preemption;
pub mod queue;
mod run;

use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Tunables of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Bindings in flight at once.
    pub parallel_binds: usize,
    /// Back-off after the first failure; it doubles per failure up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long an unschedulable pod waits with no cluster change before it is retried
    /// anyway.
    pub max_unschedulable: Duration,
    /// Share of the nodes to find feasible before scoring (1..=100); `None` is adaptive
    /// (all nodes below 100, 42% of 1,000, 10% of 5,000), as Kubernetes does.
    pub percentage_of_nodes_to_score: Option<u32>,
    /// `scheduler_*` metric families.
    pub metrics: crate::metrics::SchedulerMetrics,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            parallel_binds: 16,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            max_unschedulable: Duration::from_secs(60),
            percentage_of_nodes_to_score: None,
            metrics: Default::default(),
        }
    }
}

/// Starts the scheduler; its tasks end when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    config: &SchedulerConfig,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let (node_tx, node_rx) = mpsc::channel(1024);
    let (pod_tx, pod_rx) = mpsc::channel(4096);
    let (event_tx, event_rx) = run::event_channel();
    tasks.spawn(run::watch_nodes(client.clone(), node_tx, shutdown.clone()));
    tasks.spawn(run::watch_pods(client.clone(), pod_tx, shutdown.clone()));
    let (volume_tx, volume_rx) = mpsc::channel(1024);
    tasks.spawn(run::watch_volumes(
        client.clone(),
        volume_tx,
        shutdown.clone(),
    ));
    let recorder = crate::events::Recorder::new(client.clone(), run::COMPONENT);
    tasks.spawn(run::record_events(recorder, event_rx, shutdown.clone()));
    let scheduler = run::Scheduler::new(client, config, event_tx);
    let channels = run::Channels {
        nodes: node_rx,
        pods: pod_rx,
        volumes: volume_rx,
    };
    tasks.spawn(scheduler.run(channels, shutdown));
}
