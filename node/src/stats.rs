//! The node's resource statistics: what its guests use, per pod and container.
//!
//! Why here and why so: the runtime measures each container exactly (CPU time its instances
//! spend executing guest code, linear memory plus an instance overhead; see
//! `wharf_runtime::Runtime::usage`), where a cgroup would see only the node process. This
//! module turns one snapshot of that into the two shapes consumers read:
//!
//! - [`summary`]: a JSON document shaped as the kubelet's `/stats/summary` (the fields
//!   metrics-server reads: `node`, `pods[].podRef`, `pods[].containers[]` with `cpu.time`,
//!   `cpu.usageCoreNanoSeconds`, `memory.time`, `memory.workingSetBytes`), plus wharf's
//!   `memory.peakBytes`. CPU is cumulative; whoever wants a rate (the API server's
//!   `metrics.k8s.io`) takes two samples and divides by the time between them, and uses
//!   each container's `startTime` to tell a restart (counters from zero) from usage.
//!   The node's own figures are the sum of its guests': the node process itself is not
//!   a workload.
//! - [`render_metrics`]: the same as Prometheus series for the node's `/metrics`, named as
//!   the kubelet's `/metrics/resource` names them.
//!
//! Both are pure functions of (snapshot, pods); the node server only takes the snapshot and
//! reads its pod index.

use crate::container_id;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;
use wharf_runtime::{ContainerUsage, UsageSnapshot};

/// The JSON the node serves at `/stats/summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodRef,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub containers: Vec<ContainerStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    /// When this run of the container started (RFC 3339): cumulative counters start then.
    pub start_time: String,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    /// The kubelet's per-container custom metrics; wharf puts an HTTP handler's request
    /// count here ([`HTTP_REQUESTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_defined_metrics: Vec<UserDefinedMetric>,
}

/// The name of the cumulative count of HTTP requests a container has received, among its
/// `userDefinedMetrics`.
pub const HTTP_REQUESTS: &str = "http_requests";

/// One of a container's `userDefinedMetrics`, shaped as the kubelet's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDefinedMetric {
    pub name: String,
    /// `cumulative`, `gauge` or `delta`.
    #[serde(rename = "type")]
    pub kind: String,
    pub units: String,
    pub time: String,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// When it was measured (RFC 3339).
    pub time: String,
    /// CPU time spent executing guest code since the start, in nanoseconds.
    pub usage_core_nano_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: String,
    /// Memory held now (linear memories plus the per-instance overhead estimate).
    pub working_set_bytes: u64,
    /// The same as `workingSetBytes`: a guest's memory is all in use.
    pub usage_bytes: u64,
    /// The highest `workingSetBytes` since the start (the sum of the containers' peaks for
    /// a pod or the node).
    pub peak_bytes: u64,
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The pods' containers that are running in `snapshot`, in the pods' order: pods with no
/// running container are left out.
fn pod_usage<'a>(
    snapshot: &'a UsageSnapshot,
    pods: &'a [Arc<Pod>],
) -> Vec<(&'a Pod, Vec<(&'a str, &'a ContainerUsage)>)> {
    let by_id: HashMap<&str, &ContainerUsage> = snapshot
        .containers
        .iter()
        .map(|c| (c.id.as_str(), c))
        .collect();
    pods.iter()
        .filter_map(|pod| {
            let uid = pod.metadata.uid.as_deref()?;
            let spec = pod.spec.as_ref()?;
            let containers: Vec<(&str, &ContainerUsage)> = spec
                .init_containers
                .iter()
                .flatten()
                .chain(spec.containers.iter())
                .filter_map(|c| {
                    by_id
                        .get(container_id(uid, &c.name).as_str())
                        .map(|u| (c.name.as_str(), *u))
                })
                .collect();
            (!containers.is_empty()).then_some((pod.as_ref(), containers))
        })
        .collect()
}

fn sum<'a>(
    usages: impl Iterator<Item = &'a ContainerUsage>,
    time: &str,
) -> (CpuStats, MemoryStats) {
    let (mut cpu, mut mem, mut peak) = (0u64, 0u64, 0u64);
    for u in usages {
        cpu = cpu.saturating_add(u.cpu_nanos);
        mem = mem.saturating_add(u.memory_bytes);
        peak = peak.saturating_add(u.peak_memory_bytes);
    }
    (
        CpuStats {
            time: time.to_string(),
            usage_core_nano_seconds: cpu,
        },
        MemoryStats {
            time: time.to_string(),
            working_set_bytes: mem,
            usage_bytes: mem,
            peak_bytes: peak,
        },
    )
}

/// The summary of `snapshot` for the pods the node runs.
pub fn summary(node_name: &str, snapshot: &UsageSnapshot, pods: &[Arc<Pod>]) -> Summary {
    let time = rfc3339(snapshot.taken_at);
    let per_pod = pod_usage(snapshot, pods);
    let pods: Vec<PodStats> = per_pod
        .iter()
        .map(|(pod, containers)| {
            let (cpu, memory) = sum(containers.iter().map(|(_, u)| *u), &time);
            PodStats {
                pod_ref: PodRef {
                    name: pod.metadata.name.clone().unwrap_or_default(),
                    namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                    uid: pod.metadata.uid.clone().unwrap_or_default(),
                },
                cpu,
                memory,
                containers: containers
                    .iter()
                    .map(|(name, u)| {
                        let (cpu, memory) = sum(std::iter::once(*u), &time);
                        ContainerStats {
                            name: name.to_string(),
                            start_time: rfc3339(u.started_at),
                            cpu,
                            memory,
                            user_defined_metrics: u
                                .requests
                                .map(|n| UserDefinedMetric {
                                    name: HTTP_REQUESTS.to_string(),
                                    kind: "cumulative".to_string(),
                                    units: "requests".to_string(),
                                    time: time.clone(),
                                    value: n as f64,
                                })
                                .into_iter()
                                .collect(),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let (cpu, memory) = sum(
        per_pod
            .iter()
            .flat_map(|(_, cs)| cs.iter().map(|(_, u)| *u)),
        &time,
    );
    Summary {
        node: NodeStats {
            node_name: node_name.to_string(),
            cpu,
            memory,
        },
        pods,
    }
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The per-container and per-pod series of `snapshot`, in Prometheus text format.
pub fn render_metrics(snapshot: &UsageSnapshot, pods: &[Arc<Pod>]) -> String {
    let per_pod = pod_usage(snapshot, pods);
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in rows {
            out.push_str(&format!("{name}{{{labels}}} {value}\n"));
        }
    };
    let pod_labels = |pod: &Pod| {
        format!(
            "namespace=\"{}\",pod=\"{}\"",
            label(pod.metadata.namespace.as_deref().unwrap_or_default()),
            label(pod.metadata.name.as_deref().unwrap_or_default())
        )
    };
    let container_rows = |value: &dyn Fn(&ContainerUsage) -> String| -> Vec<(String, String)> {
        per_pod
            .iter()
            .flat_map(|(pod, cs)| {
                cs.iter().map(move |(name, u)| {
                    (
                        format!("container=\"{}\",{}", label(name), pod_labels(pod)),
                        value(u),
                    )
                })
            })
            .collect()
    };
    let pod_rows = |value: &dyn Fn(&ContainerUsage) -> u64, scale: f64| -> Vec<(String, String)> {
        per_pod
            .iter()
            .map(|(pod, cs)| {
                let total: u64 = cs.iter().map(|(_, u)| value(u)).sum();
                (pod_labels(pod), fmt_scaled(total, scale))
            })
            .collect()
    };
    let cpu = |u: &ContainerUsage| u.cpu_nanos;
    let mem = |u: &ContainerUsage| u.memory_bytes;
    let peak = |u: &ContainerUsage| u.peak_memory_bytes;
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "CPU time the container's wasm instances spent executing guest code.",
        container_rows(&|u| fmt_scaled(cpu(u), 1e-9)),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Linear memory of the container's live instances plus an overhead estimate per instance.",
        container_rows(&|u| mem(u).to_string()),
    );
    family(
        "wharf_container_memory_peak_bytes",
        "gauge",
        "The highest container_memory_working_set_bytes since the container started.",
        container_rows(&|u| peak(u).to_string()),
    );
    family(
        "wharf_container_http_requests_total",
        "counter",
        "HTTP requests the container's wasi:http handler received since it started.",
        per_pod
            .iter()
            .flat_map(|(pod, cs)| {
                cs.iter().filter_map(move |(name, u)| {
                    let n = u.requests?;
                    Some((
                        format!("container=\"{}\",{}", label(name), pod_labels(pod)),
                        n.to_string(),
                    ))
                })
            })
            .collect(),
    );
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "CPU time the pod's running containers spent executing guest code.",
        pod_rows(&cpu, 1e-9),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Memory of the pod's running containers.",
        pod_rows(&mem, 1.0),
    );
    out
}

fn fmt_scaled(v: u64, scale: f64) -> String {
    if scale == 1.0 {
        v.to_string()
    } else {
        format!("{}", v as f64 * scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pod(ns: &str, name: &str, uid: &str, containers: &[&str]) -> Arc<Pod> {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "spec": {"containers": containers.iter()
                .map(|c| serde_json::json!({"name": c, "image": "x.wasm"}))
                .collect::<Vec<_>>()}
        }))
        .expect("pod");
        Arc::new(pod)
    }

    fn usage(id: &str, cpu: u64, mem: u64) -> ContainerUsage {
        ContainerUsage {
            id: id.into(),
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            cpu_nanos: cpu,
            memory_bytes: mem,
            peak_memory_bytes: mem * 2,
            instances: 1,
            requests: None,
        }
    }

    fn snapshot() -> UsageSnapshot {
        UsageSnapshot {
            taken_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_100),
            containers: vec![
                // An HTTP handler: it counts requests.
                ContainerUsage {
                    requests: Some(42),
                    ..usage("u1_app", 2_500_000_000, 1 << 20)
                },
                usage("u1_side", 500_000_000, 1 << 19),
                usage("u2_web", 7, 100),
                // A container of no pod the node knows (being torn down): left out.
                usage("gone_x", 1, 1),
            ],
        }
    }

    #[test]
    fn summary_sums_containers_into_pods_and_the_node() {
        let pods = vec![
            pod("default", "a", "u1", &["app", "side"]),
            pod("prod", "b", "u2", &["web"]),
            pod("default", "idle", "u3", &["stopped"]),
        ];
        let s = summary("n1", &snapshot(), &pods);
        assert_eq!(s.node.node_name, "n1");
        assert_eq!(s.node.cpu.usage_core_nano_seconds, 3_000_000_007);
        assert_eq!(s.node.memory.working_set_bytes, (1 << 20) + (1 << 19) + 100);
        assert_eq!(s.pods.len(), 2, "pods with nothing running are left out");
        let a = &s.pods[0];
        assert_eq!(a.pod_ref.uid, "u1");
        assert_eq!(a.cpu.usage_core_nano_seconds, 3_000_000_000);
        assert_eq!(a.memory.peak_bytes, 2 * ((1 << 20) + (1 << 19)));
        let names: Vec<&str> = a.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["app", "side"]);
        assert_eq!(a.containers[0].start_time, "2027-01-15T08:00:00Z");
        assert_eq!(a.containers[0].cpu.time, "2027-01-15T08:01:40Z");
        // The JSON is the kubelet's field names.
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(
            json.pointer("/pods/1/containers/0/cpu/usageCoreNanoSeconds"),
            Some(&serde_json::json!(7))
        );
        assert_eq!(
            json.pointer("/pods/1/podRef/namespace"),
            Some(&serde_json::json!("prod"))
        );
        // The HTTP handler's request count is a kubelet-shaped user-defined metric; a
        // container that counts none has no such list.
        assert_eq!(
            json.pointer("/pods/0/containers/0/userDefinedMetrics/0"),
            Some(&serde_json::json!({
                "name": "http_requests", "type": "cumulative", "units": "requests",
                "time": "2027-01-15T08:01:40Z", "value": 42.0,
            }))
        );
        assert_eq!(
            json.pointer("/pods/0/containers/1/userDefinedMetrics"),
            None
        );
    }

    /// `/stats/summary` is served to the API server's token only, as container logs are.
    #[tokio::test]
    async fn the_summary_needs_the_api_servers_token() {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let dir = tempfile::tempdir().expect("dir");
        let mut config = wharf_runtime::RuntimeConfig::new(dir.path());
        config.pooling = None;
        let runtime = wharf_runtime::Runtime::new(config).expect("runtime");
        let runtime = Arc::new(runtime);
        let pods: crate::daemon::PodIndex = Default::default();
        let ctx = Arc::new(crate::daemon::DaemonContext {
            node_name: "n1".into(),
            kubelet: Arc::new(crate::metrics::NodeMetrics::new(
                pods.clone(),
                runtime.clone(),
            )),
            runtime,
            pods,
            services: Arc::new(crate::proxy::Shared::new("cluster.local")),
            tunnel: Default::default(),
            shutdown: Default::default(),
        });
        let app = crate::daemon::router(ctx, Some("secret".into()));
        let ask = |auth: Option<&str>, user: Option<&str>| {
            let mut req = http::Request::get("/stats/summary");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            if let Some(user) = user {
                let cert = wharf_control::apiserver::auth::ClientCert::new(user.into(), vec![]);
                req = req.extension(cert);
            }
            app.clone()
                .oneshot(req.body(axum::body::Body::empty()).expect("request"))
        };
        let apiserver = Some(wharf_control::nodetls::APISERVER_NODE_CLIENT);
        let refused = ask(None, apiserver).await.expect("answer");
        assert_eq!(refused.status(), http::StatusCode::UNAUTHORIZED);
        let refused = ask(Some("Bearer nope"), apiserver).await.expect("answer");
        assert_eq!(refused.status(), http::StatusCode::UNAUTHORIZED);
        // The token without the API server's client certificate, or with another's.
        let refused = ask(Some("Bearer secret"), None).await.expect("answer");
        assert_eq!(refused.status(), http::StatusCode::UNAUTHORIZED);
        let refused = ask(Some("Bearer secret"), Some("system:node:n2"))
            .await
            .expect("answer");
        assert_eq!(refused.status(), http::StatusCode::UNAUTHORIZED);
        let ok = ask(Some("Bearer secret"), apiserver).await.expect("answer");
        assert_eq!(ok.status(), http::StatusCode::OK);
        let body = ok.into_body().collect().await.expect("body").to_bytes();
        let summary: Summary = serde_json::from_slice(&body).expect("a summary");
        assert_eq!(summary.node.node_name, "n1");
        assert!(summary.pods.is_empty());
    }

    #[test]
    fn metrics_have_a_series_per_container_and_pod() {
        let pods = vec![pod("default", "a", "u1", &["app", "side"])];
        let text = render_metrics(&snapshot(), &pods);
        assert!(
            text.contains(
                "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"a\"} 2.5\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"a\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "pod_memory_working_set_bytes{{namespace=\"default\",pod=\"a\"}} {}\n",
                (1 << 20) + (1 << 19)
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "wharf_container_memory_peak_bytes{{container=\"side\",namespace=\"default\",pod=\"a\"}} {}\n",
                1 << 20
            )),
            "{text}"
        );
        assert!(
            text.contains(
                "wharf_container_http_requests_total{container=\"app\",namespace=\"default\",pod=\"a\"} 42\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains("wharf_container_http_requests_total{container=\"side\""),
            "a container that serves no HTTP has no request series: {text}"
        );
        assert!(!text.contains("u2"), "{text}");
    }
}
