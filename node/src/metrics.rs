//! The kubelet's and the runtime's section of the node's `/metrics`, under Kubernetes'
//! names where the kubelet has one (`kubelet_running_pods`, `kubelet_running_containers`,
//! `kubelet_pod_start_duration_seconds`) and `wharf_runtime_*` for what only a wasm
//! runtime has (instances made, the compile cache).
//!
//! Why a registry of its own beside the proxy's hand-written section: the node server
//! renders sections and concatenates them (each part owns its series); this section is
//! the one with a histogram, which prometheus-client keeps correctly. Gauges that are
//! a view of state (pods, containers, runtime counters) are read when scraped, from the
//! pods the kubelet runs and the runtime's own counters, so nothing has to be kept in step.

use crate::daemon::PodIndex;
use k8s_openapi::api::core::v1::Pod;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use wharf_runtime::Runtime;

/// Pod start buckets, as the kubelet's: 0.5 s .. 6 min, with sub-second ones for wasm
/// (a pod from a cached image starts in milliseconds).
const POD_START_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0,
    45.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0,
];

/// The node's kubelet and runtime metrics.
pub struct NodeMetrics {
    registry: Registry,
    /// From the kubelet first seeing a pod to all its containers running.
    pub pod_start: Histogram,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeMetrics")
    }
}

impl NodeMetrics {
    /// The section over the pods the kubelet runs (`pods`) and its `runtime`.
    pub fn new(pods: PodIndex, runtime: Arc<Runtime>) -> NodeMetrics {
        let mut registry = Registry::default();
        let pod_start = Histogram::new(POD_START_BUCKETS.iter().copied());
        registry.register(
            "kubelet_pod_start_duration_seconds",
            "Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
            pod_start.clone(),
        );
        registry.register_collector(Box::new(Observed { pods, runtime }));
        NodeMetrics {
            registry,
            pod_start,
        }
    }

    /// The section in the Prometheus text format.
    pub fn render(&self) -> String {
        wharf_control::metrics::encode(&self.registry).unwrap_or_default()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    container_state: String,
}

/// What the kubelet's containers are doing, by `container_state` (`running`, `waiting`,
/// `exited`), and how many pods have a container running.
pub fn count_containers<'a>(
    pods: impl Iterator<Item = &'a Pod>,
) -> (i64, [(&'static str, i64); 3]) {
    let mut running_pods = 0;
    let mut states = [("running", 0), ("waiting", 0), ("exited", 0)];
    for pod in pods {
        let statuses = pod
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten());
        let mut any_running = false;
        for cs in statuses {
            let state = cs.state.as_ref();
            let slot = if state.is_some_and(|s| s.running.is_some()) {
                any_running = true;
                0
            } else if state.is_some_and(|s| s.terminated.is_some()) {
                2
            } else {
                1
            };
            states[slot].1 += 1;
        }
        running_pods += i64::from(any_running);
    }
    (running_pods, states)
}

/// Series read when scraped.
struct Observed {
    pods: PodIndex,
    runtime: Arc<Runtime>,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observed")
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, ConstGauge::<i64>::TYPE)?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, ConstCounter::<u64>::TYPE)?)
}

impl prometheus_client::collector::Collector for Observed {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (running_pods, states) = {
            let pods = self
                .pods
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            count_containers(pods.values().map(|p| p.as_ref()))
        };
        gauge(
            &mut encoder,
            "kubelet_running_pods",
            "Number of pods that have a running pod sandbox",
            running_pods,
        )?;
        let containers = Family::<StateLabel, Gauge>::default();
        for (state, n) in states {
            containers
                .get_or_create(&StateLabel {
                    container_state: state.into(),
                })
                .set(n);
        }
        containers.encode(encoder.encode_descriptor(
            "kubelet_running_containers",
            "Number of containers currently running",
            None,
            Family::<StateLabel, Gauge>::TYPE,
        )?)?;
        let stats = self.runtime.stats();
        counter(
            &mut encoder,
            "wharf_runtime_instantiations",
            "Guest instances the runtime made (a command's run, one per wasi:http request)",
            stats.instantiations,
        )?;
        counter(
            &mut encoder,
            "wharf_runtime_compile_cache_hits",
            "Images whose compiled artifact was loaded from the compile cache",
            stats.cache_hits,
        )?;
        counter(
            &mut encoder,
            "wharf_runtime_compile_cache_misses",
            "Images compiled with Cranelift (not in the compile cache)",
            stats.compiles,
        )?;
        gauge(
            &mut encoder,
            "wharf_runtime_images",
            "Distinct images held in memory",
            i64::try_from(stats.images).unwrap_or(i64::MAX),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, PodStatus,
    };

    fn pod(states: &[Option<ContainerState>]) -> Pod {
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(
                    states
                        .iter()
                        .map(|s| ContainerStatus {
                            state: s.clone(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn containers_are_counted_by_state_and_pods_by_a_running_one() {
        let running = Some(ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        });
        let exited = Some(ContainerState {
            terminated: Some(ContainerStateTerminated::default()),
            ..Default::default()
        });
        let pods = [
            pod(&[running.clone(), exited.clone()]),
            pod(&[exited, None]),
            pod(&[running]),
            Pod::default(),
        ];
        let (running_pods, states) = count_containers(pods.iter());
        assert_eq!(running_pods, 2);
        assert_eq!(states, [("running", 2), ("waiting", 1), ("exited", 2)]);
    }
}
