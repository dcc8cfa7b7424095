//! The control plane's metrics, in the Prometheus text format, under Kubernetes' names
//! (`apiserver_request_total`, `etcd_request_duration_seconds`, `scheduler_*`,
//! `workqueue_*`, `leader_election_master_status`), so the dashboards and alerts written
//! for kube-apiserver, kube-scheduler and kube-controller-manager read a wharf cluster.
//!
//! Why one [`ControlMetrics`] passed in, not globals: a test starts several control planes
//! in one process, and each must count only its own requests. The process that runs
//! `wharf control` builds one registry; the API server, the scheduler and the controller
//! manager run in it and register their families there, so one `/metrics` serves them
//! all. Each part holds only its own family handles (cheap clones of shared counters); a
//! part built without a registry (unit tests) gets families that count but are exported
//! nowhere, through `Default`.
//!
//! Label values come from bounded sets only (verbs, kinds the server serves, status codes,
//! controller names): a request for a made-up resource is counted under an empty
//! `resource`, as kube-apiserver does, so a scanner cannot grow the registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// A histogram family whose buckets are fixed at construction.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The latency buckets of API requests: 5 ms .. 60 s, as kube-apiserver's (coarser).
fn request_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
        60.0,
    ])
}

/// Store latency buckets: 100 us .. ~3 s (local writes with fsync are sub-millisecond).
fn store_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Scheduling attempt buckets: 10 us .. ~10 s.
fn scheduling_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.00001, 2.0, 21))
}

/// The labels of `apiserver_request_total` and `apiserver_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub scope: String,
    pub component: String,
    pub code: String,
}

/// `RequestLabels` without the code (the duration histogram, as Kubernetes has it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestDurationLabels {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub scope: String,
    pub component: String,
}

/// The labels of `apiserver_watch_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchEventLabels {
    pub group: String,
    pub version: String,
    pub kind: String,
}

/// The API server's request counters.
#[derive(Clone, Debug)]
pub struct ApiserverMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub durations: HistogramFamily<RequestDurationLabels>,
    pub watch_events: Family<WatchEventLabels, Counter>,
}

impl Default for ApiserverMetrics {
    fn default() -> Self {
        ApiserverMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(request_buckets),
            watch_events: Family::default(),
        }
    }
}

/// The labels of `etcd_request_duration_seconds`: the store operation and the resource
/// (`pods`, `deployments.apps`) it was about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub operation: String,
    pub r#type: String,
}

/// Latency of the store backend's operations (both backends: measured at the seam).
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    pub durations: HistogramFamily<StoreLabels>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            durations: Family::new_with_constructor(store_buckets),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProfileResultLabels {
    pub result: String,
    pub profile: String,
}

/// kube-scheduler's metrics.
#[derive(Clone, Debug)]
pub struct SchedulerMetrics {
    /// `scheduled`, `unschedulable` or `error`, per attempt.
    pub attempts: Family<ProfileResultLabels, Counter>,
    pub attempt_durations: HistogramFamily<ProfileResultLabels>,
    /// `active`, `backoff`, `unschedulable`.
    pub pending: Family<QueueLabel, Gauge>,
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        SchedulerMetrics {
            attempts: Family::default(),
            attempt_durations: Family::new_with_constructor(scheduling_buckets),
            pending: Family::default(),
        }
    }
}

impl SchedulerMetrics {
    /// Counts one attempt that ended with `result` after `elapsed`.
    pub fn attempt(&self, result: &str, elapsed: std::time::Duration) {
        let labels = ProfileResultLabels {
            result: result.into(),
            profile: crate::scheduler::framework::DEFAULT_SCHEDULER.into(),
        };
        self.attempts.get_or_create(&labels).inc();
        self.attempt_durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    pub name: String,
}

/// The controllers' work queues, one series per controller name.
#[derive(Clone, Debug, Default)]
pub struct WorkqueueMetrics {
    pub depth: Family<NameLabel, Gauge>,
    pub adds: Family<NameLabel, Counter>,
}

impl WorkqueueMetrics {
    /// The handles of one controller's queue.
    pub fn queue(&self, name: &str) -> QueueMetrics {
        let label = NameLabel { name: name.into() };
        QueueMetrics {
            depth: self.depth.get_or_create(&label).clone(),
            adds: self.adds.get_or_create(&label).clone(),
        }
    }
}

/// One controller's queue counters.
#[derive(Clone, Debug, Default)]
pub struct QueueMetrics {
    pub depth: Gauge,
    pub adds: Counter,
}

/// `leader_election_master_status{name}`: 1 while this member holds the Lease `name`.
#[derive(Clone, Debug, Default)]
pub struct LeaderMetrics {
    pub status: Family<NameLabel, Gauge>,
}

impl LeaderMetrics {
    pub fn set(&self, name: &str, leading: bool) {
        self.status
            .get_or_create(&NameLabel { name: name.into() })
            .set(i64::from(leading));
    }
}

/// Every family of the control plane, registered in one registry.
#[derive(Clone, Debug, Default)]
pub struct ControlMetrics {
    pub apiserver: ApiserverMetrics,
    pub store: StoreMetrics,
    pub scheduler: SchedulerMetrics,
    pub workqueue: WorkqueueMetrics,
    pub leader: LeaderMetrics,
}

impl ControlMetrics {
    /// Fresh families, registered in `registry`.
    pub fn register(registry: &mut Registry) -> ControlMetrics {
        let m = ControlMetrics::default();
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, group, version, resource, scope, component, and HTTP response code",
            m.apiserver.requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, group, version, resource, subresource, scope and component",
            m.apiserver.durations.clone(),
        );
        registry.register(
            "apiserver_watch_events",
            "Number of events sent in watch clients",
            m.apiserver.watch_events.clone(),
        );
        registry.register(
            "etcd_request_duration_seconds",
            "Store request latency in seconds for each operation and object type",
            m.store.durations.clone(),
        );
        registry.register(
            "scheduler_schedule_attempts",
            "Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be scheduled, while 'error' means an internal scheduler problem",
            m.scheduler.attempts.clone(),
        );
        registry.register(
            "scheduler_scheduling_attempt_duration_seconds",
            "Scheduling attempt latency in seconds (scheduling algorithm + binding)",
            m.scheduler.attempt_durations.clone(),
        );
        registry.register(
            "scheduler_pending_pods",
            "Number of pending pods, by the queue type. 'active' means number of pods in activeQ; 'backoff' means number of pods in backoffQ; 'unschedulable' means number of pods in unschedulablePods",
            m.scheduler.pending.clone(),
        );
        registry.register(
            "workqueue_depth",
            "Current depth of workqueue",
            m.workqueue.depth.clone(),
        );
        registry.register(
            "workqueue_adds",
            "Total number of adds handled by workqueue",
            m.workqueue.adds.clone(),
        );
        registry.register(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease",
            m.leader.status.clone(),
        );
        m
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    pub resource: String,
}

/// `apiserver_storage_objects{resource}`: read from the watch cache at each scrape (the
/// cache holds every object, so counting is a walk over its keys, not a store list).
pub struct StorageObjects(pub Arc<crate::store::WatchCache>);

impl std::fmt::Debug for StorageObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageObjects")
    }
}

impl prometheus_client::collector::Collector for StorageObjects {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::TypedMetric;
        let family = Family::<ResourceLabel, Gauge>::default();
        for (resource, count) in self.0.object_counts() {
            if !resource.is_empty() {
                family.get_or_create(&ResourceLabel { resource }).set(count);
            }
        }
        let metric = encoder.encode_descriptor(
            "apiserver_storage_objects",
            "Number of stored objects at the time of last check split by kind",
            None,
            <Family<ResourceLabel, Gauge> as TypedMetric>::TYPE,
        )?;
        family.encode(metric)
    }
}

/// A registry ready to be encoded; shared by the `/metrics` handler.
pub type SharedRegistry = Arc<Registry>;

/// The registry in the Prometheus text format 0.0.4 (what kube-apiserver serves, and
/// what every scraper and `promtool check metrics` read).
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode_registry(&mut out, registry)?;
    Ok(openmetrics_to_text(&out))
}

/// The text format from the OpenMetrics text the encoder writes: a counter's family is
/// named with its `_total` suffix in `# HELP` and `# TYPE` (OpenMetrics names the family
/// without it, the text format's parsers then see samples of an undeclared family), and
/// there is no `# UNIT` or `# EOF` line.
pub fn openmetrics_to_text(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            (counters.contains(name) && !name.ends_with("_total"))
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn families_use_kubernetes_names() {
        let mut registry = Registry::default();
        let m = ControlMetrics::register(&mut registry);
        m.apiserver
            .requests
            .get_or_create(&RequestLabels {
                verb: "LIST".into(),
                group: "".into(),
                version: "v1".into(),
                resource: "pods".into(),
                subresource: "".into(),
                scope: "cluster".into(),
                component: "apiserver".into(),
                code: "200".into(),
            })
            .inc();
        m.store
            .durations
            .get_or_create(&StoreLabels {
                operation: "get".into(),
                r#type: "pods".into(),
            })
            .observe(0.001);
        m.scheduler
            .attempt("scheduled", std::time::Duration::from_millis(1));
        m.workqueue.queue("deployment").adds.inc();
        m.leader.set("kube-scheduler", true);
        let text = encode(&registry).unwrap();
        for want in [
            "apiserver_request_total{verb=\"LIST\",group=\"\",version=\"v1\",resource=\"pods\"",
            "etcd_request_duration_seconds_count{operation=\"get\",type=\"pods\"} 1",
            "scheduler_schedule_attempts_total{result=\"scheduled\",profile=\"default-scheduler\"} 1",
            "workqueue_adds_total{name=\"deployment\"} 1",
            "leader_election_master_status{name=\"kube-scheduler\"} 1",
            "# TYPE apiserver_request_total counter\n",
            "# HELP workqueue_adds_total Total number of adds handled by workqueue.\n",
            "# TYPE etcd_request_duration_seconds histogram\n",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
    }
}
