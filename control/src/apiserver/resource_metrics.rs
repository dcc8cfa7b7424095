//! `metrics.k8s.io/v1beta1`: NodeMetrics and PodMetrics, computed from the nodes' stats.
//!
//! Why in the API server: in Kubernetes metrics-server scrapes every kubelet and serves
//! this group through the aggregator. wharf's nodes measure their guests themselves (the
//! runtime's CPU time and memory per container, served at each node's `/stats/summary`,
//! behind the same credential as container logs), and the API server already reaches
//! nodes for `pods/log`; so it serves the group itself, from the same registry rows,
//! authorization and discovery as any kind, and `kubectl top` and the autoscaler need
//! nothing installed.
//!
//! **Rates from two samples.** A node reports cumulative CPU time per container. CPU
//! usage (nanocores) is the difference between two samples divided by the time between
//! them, the `window`; `timestamp` is the newer sample's time. The API server keeps each
//! node's recent samples ([`Samples`]): a request fetches a fresh sample and pairs it with
//! the newest kept one at least [`MIN_WINDOW`] older and at most [`MAX_AGE`] old; without
//! one it waits [`MIN_WINDOW`] and samples again (the first `kubectl top` after a quiet
//! minute takes a second). A container that (re)started after the older sample is rated
//! from its start (its counters start at zero then); a pod with a container that cannot
//! be rated is left out, as metrics-server leaves it out. Memory is the newer sample's.
//! An HTTP handler's cumulative request count (the `http_requests` entry of its
//! `userDefinedMetrics`) is rated the same way, for the dashboard's request graphs; it is
//! not part of the `metrics.k8s.io` objects, which have no such field.
//! Node usage is the sum of its guests' (the node process itself is not a workload).
//!
//! Deciding (which sample pairs with which, the rates, the objects' shapes) is pure and
//! unit-tested; the serving functions only read the store and ask the nodes.

use super::AppState;
use super::error::{ApiError, Subject};
use super::proxy::{get_object, node_endpoint, node_error, proxy_token, request_node};
use super::registry::store::Filter;
use super::request::{Query, Target};
use crate::store::collection_prefix;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The group and version served.
pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

/// The shortest window a rate is computed over.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// The oldest sample a rate is computed from.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Samples kept per node.
const KEPT: usize = 32;
/// The largest stats document read from a node.
const SUMMARY_LIMIT: usize = 16 * 1024 * 1024;

// ---- What a node reports (the subset of its `/stats/summary` read here) ---------------

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct SummaryDoc {
    node: NodeDoc,
    #[serde(default)]
    pods: Vec<PodDoc>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct NodeDoc {
    cpu: CpuDoc,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct PodDoc {
    pod_ref: PodRef,
    #[serde(default)]
    containers: Vec<ContainerDoc>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct PodRef {
    name: String,
    namespace: String,
    uid: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct ContainerDoc {
    name: String,
    start_time: Timestamp,
    cpu: CpuDoc,
    memory: MemoryDoc,
    #[serde(default)]
    user_defined_metrics: Vec<UserDefinedMetricDoc>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct UserDefinedMetricDoc {
    name: String,
    value: f64,
}

/// The name the node gives its HTTP handlers' cumulative request count among a
/// container's `userDefinedMetrics`.
const HTTP_REQUESTS: &str = "http_requests";

impl ContainerDoc {
    /// The HTTP requests the container has received since it started, if it serves HTTP.
    fn http_requests(&self) -> Option<u64> {
        self.user_defined_metrics
            .iter()
            .find(|m| m.name == HTTP_REQUESTS)
            .map(|m| m.value as u64)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct CpuDoc {
    time: Timestamp,
    usage_core_nano_seconds: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct MemoryDoc {
    working_set_bytes: u64,
}

/// One node's stats at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    at: Timestamp,
    pods: Vec<PodDoc>,
}

impl Sample {
    /// Reads a node's `/stats/summary` document.
    pub fn parse(body: &[u8]) -> Result<Sample, serde_json::Error> {
        let doc: SummaryDoc = serde_json::from_slice(body)?;
        Ok(Sample {
            at: doc.node.cpu.time,
            pods: doc.pods,
        })
    }
}

// ---- Deciding -------------------------------------------------------------------------

/// One container's usage over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUsage {
    pub name: String,
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
    /// HTTP requests per second received over the window, in thousandths; `None` for a
    /// container that serves no HTTP (or when the window does not allow a rate).
    pub request_millis_per_second: Option<u64>,
}

/// One pod's usage over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub containers: Vec<ContainerUsage>,
}

/// What a node's guests used between two samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUsage {
    /// The newer sample's time.
    pub timestamp: Timestamp,
    /// The time between the samples.
    pub window: Duration,
    pub pods: Vec<PodUsage>,
}

impl NodeUsage {
    /// The node's total: the sum of its pods'.
    pub fn total(&self) -> (u64, u64) {
        self.pods
            .iter()
            .flat_map(|p| p.containers.iter())
            .fold((0, 0), |(c, m), u| {
                (
                    c.saturating_add(u.cpu_nanocores),
                    m.saturating_add(u.memory_bytes),
                )
            })
    }
}

fn since(later: Timestamp, earlier: Timestamp) -> Option<Duration> {
    let d: SignedDuration = later.duration_since(earlier);
    Duration::try_from(d).ok()
}

/// The kept sample `current` is rated against: the newest at least [`MIN_WINDOW`] older
/// and at most [`MAX_AGE`] old.
pub fn pick_base<'a>(kept: &'a [Arc<Sample>], current: &Sample) -> Option<&'a Arc<Sample>> {
    kept.iter()
        .filter(|s| {
            since(current.at, s.at).is_some_and(|age| (MIN_WINDOW..=MAX_AGE).contains(&age))
        })
        .max_by_key(|s| s.at)
}

/// The rate of a counter that went from `before` to `after` over `window`, in units per
/// second (nanocores from nanoseconds).
fn rate(before: u64, after: u64, window: Duration) -> Option<u64> {
    let nanos = window.as_nanos();
    if nanos == 0 {
        return None;
    }
    let delta = u128::from(after.checked_sub(before)?);
    u64::try_from(delta * 1_000_000_000 / nanos).ok()
}

/// The usage between `base` and `current` (see the module docs).
pub fn usage(base: &Sample, current: &Sample) -> Option<NodeUsage> {
    let window = since(current.at, base.at).filter(|w| !w.is_zero())?;
    let before: HashMap<(&str, &str), &ContainerDoc> = base
        .pods
        .iter()
        .flat_map(|p| {
            p.containers
                .iter()
                .map(move |c| ((p.pod_ref.uid.as_str(), c.name.as_str()), c))
        })
        .collect();
    let pods = current
        .pods
        .iter()
        .filter_map(|pod| {
            let containers = pod
                .containers
                .iter()
                .map(|c| {
                    let b = before.get(&(pod.pod_ref.uid.as_str(), c.name.as_str()));
                    // A counter's rate over the window, or since the container started if
                    // that was after the older sample (its counters start from zero).
                    let counter_rate = |value: &dyn Fn(&ContainerDoc) -> Option<u64>| {
                        let now = value(c)?;
                        match b {
                            Some(b) if b.start_time == c.start_time => rate(value(b)?, now, window),
                            _ if c.start_time >= base.at => since(c.cpu.time, c.start_time)
                                .filter(|w| *w >= MIN_WINDOW / 10)
                                .and_then(|w| rate(0, now, w)),
                            _ => None,
                        }
                    };
                    let cpu = counter_rate(&|d| Some(d.cpu.usage_core_nano_seconds))?;
                    Some(ContainerUsage {
                        name: c.name.clone(),
                        cpu_nanocores: cpu,
                        memory_bytes: c.memory.working_set_bytes,
                        request_millis_per_second: counter_rate(&|d| {
                            d.http_requests().map(|n| n.saturating_mul(1000))
                        }),
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            Some(PodUsage {
                namespace: pod.pod_ref.namespace.clone(),
                name: pod.pod_ref.name.clone(),
                uid: pod.pod_ref.uid.clone(),
                containers,
            })
        })
        .collect();
    Some(NodeUsage {
        timestamp: current.at,
        window,
        pods,
    })
}

/// CPU as a Quantity: nanocores.
pub fn cpu_quantity(nanocores: u64) -> String {
    format!("{nanocores}n")
}

/// Memory as a Quantity: KiB when whole, else bytes (as metrics-server writes it).
pub fn memory_quantity(bytes: u64) -> String {
    if bytes.is_multiple_of(1024) && bytes != 0 {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

/// A duration as Go prints one (`metav1.Duration`): `1.5s`, `15s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let (secs, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        format!("{secs}s")
    } else {
        let frac = format!("{frac:03}");
        format!("{secs}.{}s", frac.trim_end_matches('0'))
    }
}

fn time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn labels_of(obj: &Value) -> Value {
    obj.pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}))
}

/// The PodMetrics of `pod` (the Pod object, for its labels) from its usage.
pub fn pod_metrics(pod: &Value, usage: &PodUsage, node: &NodeUsage, now: Timestamp) -> Value {
    json!({
        "kind": "PodMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {
            "name": usage.name,
            "namespace": usage.namespace,
            "creationTimestamp": time(now),
            "labels": labels_of(pod),
        },
        "timestamp": time(node.timestamp),
        "window": go_duration(node.window),
        "containers": usage.containers.iter().map(|c| json!({
            "name": c.name,
            "usage": {
                "cpu": cpu_quantity(c.cpu_nanocores),
                "memory": memory_quantity(c.memory_bytes),
            },
        })).collect::<Vec<_>>(),
    })
}

/// The NodeMetrics of `node` (the Node object) from its usage.
pub fn node_metrics(node: &Value, usage: &NodeUsage, now: Timestamp) -> Value {
    let (cpu, memory) = usage.total();
    json!({
        "kind": "NodeMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {
            "name": node.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
            "creationTimestamp": time(now),
            "labels": labels_of(node),
        },
        "timestamp": time(usage.timestamp),
        "window": go_duration(usage.window),
        "usage": {"cpu": cpu_quantity(cpu), "memory": memory_quantity(memory)},
    })
}

fn list_of(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": format!("{kind}List"),
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    })
}

// ---- The samples kept -----------------------------------------------------------------

/// Each node's recent samples (see the module docs).
#[derive(Debug, Default)]
pub struct Samples {
    by_node: Mutex<HashMap<String, VecDeque<Arc<Sample>>>>,
}

impl Samples {
    /// Keeps `sample` of `node` and answers the one to rate it against, if any.
    fn record(&self, node: &str, sample: Arc<Sample>) -> Option<Arc<Sample>> {
        let mut by_node = self
            .by_node
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let kept = by_node.entry(node.to_string()).or_default();
        kept.make_contiguous();
        let base = pick_base(kept.as_slices().0, &sample).cloned();
        kept.retain(|s| since(sample.at, s.at).is_none_or(|age| age <= MAX_AGE));
        kept.push_back(sample);
        while kept.len() > KEPT {
            kept.pop_front();
        }
        base
    }
}

// ---- Doing ----------------------------------------------------------------------------

/// Asks `node` for its stats now.
async fn sample_node(state: &AppState, node: &Value) -> Result<Arc<Sample>, ApiError> {
    let name = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (host, port) = node_endpoint(node)?;
    let token = proxy_token(state).await?;
    let host_part = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => host.clone(),
    };
    let uri = format!("https://{host_part}:{port}/stats/summary");
    let response = request_node(state, name, &host, port, &uri, &token).await?;
    let status = response.status();
    let body = tokio::time::timeout(
        Duration::from_secs(30),
        http_body_util::Limited::new(response.into_body(), SUMMARY_LIMIT).collect(),
    )
    .await
    .map_err(|_| ApiError::ServiceUnavailable(format!("node {name} sent no stats in time")))?
    .map_err(|e| ApiError::ServiceUnavailable(format!("reading node {name}'s stats: {e}")))?
    .to_bytes();
    if !status.is_success() {
        return Err(node_error(name, status, &body));
    }
    Sample::parse(&body).map(Arc::new).map_err(|e| {
        ApiError::ServiceUnavailable(format!("node {name} sent stats that do not parse: {e}"))
    })
}

/// What `node`'s guests use now, over a window of at least [`MIN_WINDOW`].
async fn node_usage(state: &AppState, node: &Value) -> Result<NodeUsage, ApiError> {
    let name = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut current = sample_node(state, node).await?;
    let base = match state.resource_samples.record(&name, current.clone()) {
        Some(base) => base,
        None => {
            let first = current;
            tokio::time::sleep(MIN_WINDOW).await;
            current = sample_node(state, node).await?;
            state.resource_samples.record(&name, current.clone());
            first
        }
    };
    usage(&base, &current).ok_or_else(|| {
        ApiError::ServiceUnavailable(format!("node {name}'s stats did not advance in time"))
    })
}

/// The objects of `plural` in the core group under `namespace` that `filter` matches.
async fn list_core(
    state: &AppState,
    plural: &str,
    namespace: Option<&str>,
    filter: &Filter,
) -> Result<Vec<Value>, ApiError> {
    let prefix = collection_prefix("", plural, namespace);
    let listed = state.store.list(&prefix).await.map_err(|e| {
        ApiError::from_store(
            e,
            Subject {
                group: String::new(),
                resource: plural.to_string(),
                name: String::new(),
            },
        )
    })?;
    let mut out = Vec::new();
    for stored in &listed.items {
        let obj = super::objects::decode(stored)?;
        if filter.matches(&obj) {
            out.push(obj);
        }
    }
    Ok(out)
}

/// The usage of every node named, asked concurrently; a node that cannot answer is left
/// out (its pods have no metrics), as metrics-server leaves out a node it cannot scrape.
async fn usage_of_nodes(state: &AppState, nodes: &[Value]) -> BTreeMap<String, NodeUsage> {
    let asked = futures::future::join_all(nodes.iter().map(|n| async move {
        let name = n
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match node_usage(state, n).await {
            Ok(u) => Some((name, u)),
            Err(e) => {
                tracing::debug!(node = %name, error = %e, "no metrics from node");
                None
            }
        }
    }))
    .await;
    asked.into_iter().flatten().collect()
}

/// The usage of every node that answers (for the dashboard's history).
pub async fn usage_of_all_nodes(state: &AppState) -> Result<BTreeMap<String, NodeUsage>, ApiError> {
    let Some(kind) = crate::api::find_kind("v1", "Node") else {
        return Ok(BTreeMap::new());
    };
    let filter = Filter::from_query(kind, &super::request::Query::parse(None))?;
    let nodes = list_core(state, "nodes", None, &filter).await?;
    Ok(usage_of_nodes(state, &nodes).await)
}

fn not_found(resource: &str, name: &str) -> ApiError {
    ApiError::not_found(Subject {
        group: GROUP.into(),
        resource: resource.into(),
        name: name.into(),
    })
}

/// `GET .../pods[/NAME]` of `metrics.k8s.io`.
pub fn serve_pods<'a>(
    state: &'a AppState,
    target: &'a Target,
    query: &'a Query,
) -> BoxFuture<'a, Result<Value, ApiError>> {
    Box::pin(async move {
        let namespace = target.namespace.as_deref();
        let now = Timestamp::now();
        if let Some(name) = target.name.as_deref() {
            let ns = namespace.unwrap_or("default");
            let pod = get_object(state, "pods", Some(ns), name)
                .await
                .map_err(|_| not_found("pods", name))?;
            let node_name = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .ok_or_else(|| not_found("pods", name))?;
            let node = get_object(state, "nodes", None, node_name)
                .await
                .map_err(|_| not_found("pods", name))?;
            let usage = node_usage(state, &node)
                .await
                .map_err(|_| not_found("pods", name))?;
            let uid = pod.pointer("/metadata/uid").and_then(Value::as_str);
            let found = usage
                .pods
                .iter()
                .find(|p| Some(p.uid.as_str()) == uid)
                .ok_or_else(|| not_found("pods", name))?;
            return Ok(pod_metrics(&pod, found, &usage, now));
        }
        let filter = Filter::from_query(target.kind, query)?;
        let pods: Vec<Value> = list_core(state, "pods", namespace, &filter)
            .await?
            .into_iter()
            .filter(|p| {
                p.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_some()
            })
            .collect();
        let mut wanted: Vec<&str> = pods
            .iter()
            .filter_map(|p| p.pointer("/spec/nodeName").and_then(Value::as_str))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut nodes = Vec::new();
        for n in wanted {
            if let Ok(node) = get_object(state, "nodes", None, n).await {
                nodes.push(node);
            }
        }
        let usage = usage_of_nodes(state, &nodes).await;
        let items = pods
            .iter()
            .filter_map(|pod| {
                let node = usage.get(pod.pointer("/spec/nodeName").and_then(Value::as_str)?)?;
                let uid = pod.pointer("/metadata/uid").and_then(Value::as_str)?;
                let found = node.pods.iter().find(|p| p.uid == uid)?;
                Some(pod_metrics(pod, found, node, now))
            })
            .collect();
        Ok(list_of("PodMetrics", items))
    })
}

/// `GET .../nodes[/NAME]` of `metrics.k8s.io`.
pub fn serve_nodes<'a>(
    state: &'a AppState,
    target: &'a Target,
    query: &'a Query,
) -> BoxFuture<'a, Result<Value, ApiError>> {
    Box::pin(async move {
        let now = Timestamp::now();
        if let Some(name) = target.name.as_deref() {
            let node = get_object(state, "nodes", None, name)
                .await
                .map_err(|_| not_found("nodes", name))?;
            let usage = node_usage(state, &node)
                .await
                .map_err(|_| not_found("nodes", name))?;
            return Ok(node_metrics(&node, &usage, now));
        }
        let filter = Filter::from_query(target.kind, query)?;
        let nodes = list_core(state, "nodes", None, &filter).await?;
        let usage = usage_of_nodes(state, &nodes).await;
        let items = nodes
            .iter()
            .filter_map(|n| {
                let u = usage.get(n.pointer("/metadata/name").and_then(Value::as_str)?)?;
                Some(node_metrics(n, u, now))
            })
            .collect();
        Ok(list_of("NodeMetrics", items))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("time")
    }

    fn sample(at: i64, containers: &[(&str, &str, i64, u64, u64)]) -> Sample {
        // (pod uid, container, start, cpu nanos, memory)
        let mut pods: Vec<PodDoc> = Vec::new();
        for (uid, name, start, cpu, mem) in containers {
            let c = ContainerDoc {
                name: name.to_string(),
                start_time: ts(*start),
                cpu: CpuDoc {
                    time: ts(at),
                    usage_core_nano_seconds: *cpu,
                },
                memory: MemoryDoc {
                    working_set_bytes: *mem,
                },
                user_defined_metrics: Vec::new(),
            };
            match pods.iter_mut().find(|p| p.pod_ref.uid == *uid) {
                Some(p) => p.containers.push(c),
                None => pods.push(PodDoc {
                    pod_ref: PodRef {
                        name: format!("pod-{uid}"),
                        namespace: "default".into(),
                        uid: uid.to_string(),
                    },
                    containers: vec![c],
                }),
            }
        }
        Sample { at: ts(at), pods }
    }

    #[test]
    fn cpu_is_the_counter_difference_over_the_window() {
        let base = sample(0, &[("u1", "spin", -100, 10_000_000_000, 1 << 20)]);
        // 0.5 s of CPU over 2 s: 250m.
        let cur = sample(2, &[("u1", "spin", -100, 10_500_000_000, 2 << 20)]);
        let u = usage(&base, &cur).expect("usage");
        assert_eq!(u.window, Duration::from_secs(2));
        assert_eq!(u.timestamp, ts(2));
        assert_eq!(u.pods[0].containers[0].cpu_nanocores, 250_000_000);
        assert_eq!(u.pods[0].containers[0].memory_bytes, 2 << 20);
        assert_eq!(u.total(), (250_000_000, 2 << 20));
    }

    /// An HTTP handler's request count (its `http_requests` user-defined metric) is rated
    /// as CPU is, in thousandths; a container without it has no request rate.
    #[test]
    fn http_requests_are_rated_over_the_window() {
        let with_requests = |mut s: Sample, counts: &[f64]| {
            for (c, n) in s.pods[0].containers.iter_mut().zip(counts) {
                c.user_defined_metrics = vec![UserDefinedMetricDoc {
                    name: HTTP_REQUESTS.into(),
                    value: *n,
                }];
            }
            s
        };
        let pair = [("u1", "web", -100, 0, 1), ("u1", "worker", -100, 0, 1)];
        let base = with_requests(sample(0, &pair), &[100.0]);
        // 5 requests over 4 s: 1.25 per second.
        let cur = with_requests(sample(4, &pair), &[105.0]);
        let u = usage(&base, &cur).expect("usage");
        let rates: Vec<Option<u64>> = u.pods[0]
            .containers
            .iter()
            .map(|c| c.request_millis_per_second)
            .collect();
        assert_eq!(rates, [Some(1250), None]);
        // Restarted at 2 s: its count starts from zero then (3 over 2 s).
        let restarted = with_requests(sample(4, &[("u1", "web", 2, 0, 1)]), &[3.0]);
        let u = usage(&base, &restarted).expect("usage");
        assert_eq!(
            u.pods[0].containers[0].request_millis_per_second,
            Some(1500)
        );
    }

    #[test]
    fn restarted_and_new_containers_are_rated_from_their_start() {
        let base = sample(0, &[("u1", "app", -100, 9_000_000_000, 1)]);
        let cur = sample(
            10,
            &[
                // Restarted at 5 s: 1 s of CPU over 5 s.
                ("u1", "app", 5, 1_000_000_000, 1),
                // A new pod started at 8 s: 0.2 s over 2 s.
                ("u2", "web", 8, 200_000_000, 1),
            ],
        );
        let u = usage(&base, &cur).expect("usage");
        let rates: Vec<u64> = u
            .pods
            .iter()
            .map(|p| p.containers[0].cpu_nanocores)
            .collect();
        assert_eq!(rates, [200_000_000, 100_000_000]);
    }

    #[test]
    fn a_pod_with_a_container_that_cannot_be_rated_is_left_out() {
        // Started before the older sample but absent from it: no baseline.
        let base = sample(0, &[("u1", "a", -50, 1, 1)]);
        let cur = sample(
            5,
            &[
                ("u1", "a", -50, 2, 1),
                ("u1", "b", -50, 9, 1),
                ("u2", "c", -50, 5, 1),
            ],
        );
        let u = usage(&base, &cur).expect("usage");
        assert!(u.pods.is_empty(), "{u:?}");
        // A counter that went backwards with the same start is not a rate either.
        let back = sample(5, &[("u1", "a", -50, 0, 1)]);
        assert!(usage(&base, &back).expect("usage").pods.is_empty());
    }

    #[test]
    fn the_base_is_the_newest_sample_old_enough() {
        let kept: Vec<Arc<Sample>> = [0, 30, 59, 60]
            .iter()
            .map(|&t| Arc::new(sample(t, &[])))
            .collect();
        let cur = sample(60, &[]);
        assert_eq!(pick_base(&kept, &cur).map(|s| s.at), Some(ts(59)));
        let later = sample(119, &[]);
        assert_eq!(pick_base(&kept, &later).map(|s| s.at), Some(ts(60)));
        let much_later = sample(200, &[]);
        assert_eq!(pick_base(&kept, &much_later), None);
    }

    #[test]
    fn samples_pair_each_request_with_an_older_one() {
        let samples = Samples::default();
        assert_eq!(samples.record("n1", Arc::new(sample(0, &[]))), None);
        // Too soon: no base.
        assert_eq!(samples.record("n1", Arc::new(sample(0, &[]))), None);
        let base = samples.record("n1", Arc::new(sample(3, &[])));
        assert_eq!(base.map(|s| s.at), Some(ts(0)));
        // Other nodes keep their own.
        assert_eq!(samples.record("n2", Arc::new(sample(3, &[]))), None);
        // Old samples are dropped.
        assert_eq!(samples.record("n1", Arc::new(sample(100, &[]))), None);
    }

    #[test]
    fn objects_have_the_metrics_shapes() {
        let base = sample(0, &[("u1", "spin", -100, 0, 0)]);
        let cur = sample(1, &[("u1", "spin", -100, 480_000_000, 3 << 20)]);
        let node_usage = usage(&base, &cur).expect("usage");
        let pod = json!({"metadata": {"name": "pod-u1", "labels": {"app": "spin"}}});
        let m = pod_metrics(&pod, &node_usage.pods[0], &node_usage, ts(2));
        assert_eq!(
            m,
            json!({
                "kind": "PodMetrics",
                "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {"name": "pod-u1", "namespace": "default",
                             "creationTimestamp": "2027-01-15T08:00:02Z",
                             "labels": {"app": "spin"}},
                "timestamp": "2027-01-15T08:00:01Z",
                "window": "1s",
                "containers": [{"name": "spin",
                                "usage": {"cpu": "480000000n", "memory": "3072Ki"}}],
            })
        );
        let node = json!({"metadata": {"name": "n1"}});
        let n = node_metrics(&node, &node_usage, ts(2));
        assert_eq!(n["usage"], json!({"cpu": "480000000n", "memory": "3072Ki"}));
        assert_eq!(n["metadata"]["labels"], json!({}));
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(15_020)), "15.02s");
        assert_eq!(memory_quantity(1000), "1000");
        assert_eq!(memory_quantity(0), "0");
    }
}
