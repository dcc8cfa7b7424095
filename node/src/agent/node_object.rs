//! The Node object an agent registers and keeps current.
//!
//! Pure builders: what the node is (labels, addresses, capacity) and how it is doing
//! (conditions with heartbeat times), so that registration and heartbeats are one patch
//! each and testable without a server.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints,
    NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use std::collections::BTreeMap;

/// What a node offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    /// The address other nodes and the control plane reach this node at.
    pub address: String,
    pub hostname: String,
    /// Port of the node's own HTTP server (logs).
    pub daemon_port: u16,
    /// Where the node's tunnel listens, published as the `wharf.dev/tunnel` annotation so
    /// that nodes on other machines find it (see [`crate::tunnel`]).
    pub tunnel: Option<std::net::SocketAddr>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub max_pods: u32,
    /// What the node keeps for itself: subtracted from capacity to give allocatable.
    pub reserved_cpu_millis: u64,
    pub reserved_memory_bytes: u64,
    /// Runs hostPath volumes (`--allow-host-path`): published as an annotation so that the
    /// API can warn about pods no node would run.
    pub allow_host_path: bool,
    /// The runtime's instance pool (concurrent wasm instances: a running command is one,
    /// an HTTP pod uses one per request in flight), shown as the extended resource
    /// [`INSTANCES_RESOURCE`]; `None` without a pool.
    pub instances: Option<u32>,
    /// Where the node keeps `local-path` volumes, published as the
    /// `wharf.dev/local-path-root` annotation so that the provisioner puts them there.
    pub local_path_root: Option<String>,
    /// The pod range the node runs with, once it has one: a Node created again (its
    /// object gone, say after the control plane's store was restored from a snapshot
    /// taken before the node joined) asks for it back, as its pods' addresses are in it.
    pub pod_cidr: Option<String>,
}

/// The extended resource in a Node's capacity that counts its wasm instance slots.
pub const INSTANCES_RESOURCE: &str = "wharf.dev/instances";

/// Descriptors a serving pod holds in the node process: its HTTP listener and a pooled
/// proxy connection to it (both ends are in the node process). Its log file is open only
/// while it writes output, so an idle pod holds its listener alone.
pub const FDS_PER_POD: u64 = 3;

/// Descriptors kept for the node's own work (API watches and writes, proxy clients, DNS,
/// the tunnel, probes in flight), beyond its pods'.
pub const FDS_RESERVED: u64 = 4096;

/// The memory an idle pod is counted for: an idle `hello-http` pod costs the node about
/// 153 KiB (BENCHMARKS.md, "Pods on a node"), rounded up for its instance when it serves.
pub const MEMORY_PER_POD: u64 = 256 << 10;

/// The pods a node can hold, given its open files limit and the memory it gives to pods:
/// whichever runs out first, at [`FDS_PER_POD`] descriptors and [`MEMORY_PER_POD`] each.
/// At least one.
pub fn pods_capacity(open_files: u64, allocatable_memory: u64) -> u32 {
    let by_files = open_files.saturating_sub(FDS_RESERVED) / FDS_PER_POD;
    let by_memory = allocatable_memory / MEMORY_PER_POD;
    u32::try_from(by_files.min(by_memory))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// This process's limit on open files now (the soft limit of /proc/self/limits; the
/// binary raises it to the hard limit at start). 1024, the usual default, where it
/// cannot be read.
pub fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            let soft = line
                .trim_start_matches("Max open files")
                .split_whitespace()
                .next()?;
            match soft {
                "unlimited" => Some(u64::MAX),
                n => n.parse().ok(),
            }
        })
        .unwrap_or(1024)
}

impl NodeFacts {
    /// Capacity of this machine: its cores and memory (from /proc/meminfo where present),
    /// and `max_pods`, or when `None` the pods its open files limit and memory allow
    /// ([`pods_capacity`]).
    pub fn of_host(name: &str, address: &str, daemon_port: u16, max_pods: Option<u32>) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1);
        let memory = host_memory_bytes();
        let reserved_memory_bytes = 256 << 20;
        let max_pods = max_pods.unwrap_or_else(|| {
            pods_capacity(
                open_files_limit(),
                memory.saturating_sub(reserved_memory_bytes),
            )
        });
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| name.to_string());
        NodeFacts {
            name: name.to_string(),
            address: address.to_string(),
            hostname,
            daemon_port,
            tunnel: None,
            cpu_millis: cores * 1000,
            memory_bytes: memory,
            max_pods,
            reserved_cpu_millis: 100,
            reserved_memory_bytes,
            allow_host_path: false,
            instances: None,
            local_path_root: None,
            pod_cidr: None,
        }
    }
}

/// The machine's memory (`MemTotal` of /proc/meminfo; 4 GiB where it cannot be read).
pub fn host_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(4 << 30)
}

pub const ARCH: &str = "wasm32";

/// The Node's annotations the agent owns (the tunnel, whether hostPath volumes run), or
/// `None` to remove one.
pub fn node_annotations(facts: &NodeFacts) -> BTreeMap<String, Option<String>> {
    BTreeMap::from([
        (
            crate::tunnel::TUNNEL_ANNOTATION.to_string(),
            facts.tunnel.map(|t| t.to_string()),
        ),
        (
            wharf_control::apiserver::host_path::ALLOW_HOST_PATH_ANNOTATION.to_string(),
            facts.allow_host_path.then(|| "true".to_string()),
        ),
        (
            wharf_control::api::storage::LOCAL_PATH_ROOT_ANNOTATION.to_string(),
            facts.local_path_root.clone(),
        ),
    ])
}

/// The Node as first created: metadata and spec. The control plane assigns `podCIDR`,
/// unless the node already runs with one ([`NodeFacts::pod_cidr`]).
pub fn node_object(facts: &NodeFacts) -> Node {
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", facts.name.as_str()),
        ("kubernetes.io/os", std::env::consts::OS),
        ("kubernetes.io/arch", ARCH),
        ("beta.kubernetes.io/os", std::env::consts::OS),
        ("beta.kubernetes.io/arch", ARCH),
        ("node.wharf.dev/runtime", "wasmtime"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(facts.name.clone()),
            labels: Some(labels),
            annotations: Some(
                node_annotations(facts)
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, v?)))
                    .collect(),
            )
            .filter(|a: &BTreeMap<String, String>| !a.is_empty()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: facts.pod_cidr.clone(),
            ..Default::default()
        }),
        status: None,
    }
}

fn quantities(
    cpu_millis: u64,
    memory: u64,
    pods: u32,
    instances: Option<u32>,
) -> BTreeMap<String, Quantity> {
    let cpu = if cpu_millis.is_multiple_of(1000) {
        (cpu_millis / 1000).to_string()
    } else {
        format!("{cpu_millis}m")
    };
    [
        ("cpu".to_string(), Quantity(cpu)),
        (
            "memory".to_string(),
            Quantity(format!("{}Ki", memory / 1024)),
        ),
        ("pods".to_string(), Quantity(pods.to_string())),
    ]
    .into_iter()
    .chain(instances.map(|n| (INSTANCES_RESOURCE.to_string(), Quantity(n.to_string()))))
    .collect()
}

/// The node's status with a fresh heartbeat. Transition times carry over from `previous`
/// while a condition's status does not change.
pub fn node_status(
    facts: &NodeFacts,
    ready: bool,
    previous: Option<&NodeStatus>,
    now: Timestamp,
) -> NodeStatus {
    let t = Time(now);
    let cond = |type_: &str, status: bool, reason: &str, message: &str| NodeCondition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(t.clone()),
        last_transition_time: Some(t.clone()),
    };
    let mut conditions = vec![
        cond(
            "MemoryPressure",
            false,
            "KubeletHasSufficientMemory",
            "wharf node has sufficient memory available",
        ),
        cond(
            "DiskPressure",
            false,
            "KubeletHasNoDiskPressure",
            "wharf node has no disk pressure",
        ),
        cond(
            "PIDPressure",
            false,
            "KubeletHasSufficientPID",
            "wharf node has sufficient PID available",
        ),
        if ready {
            cond(
                "Ready",
                true,
                "KubeletReady",
                "wharf node is posting ready status",
            )
        } else {
            cond("Ready", false, "KubeletNotReady", "wharf node is not ready")
        },
    ];
    if let Some(prev) = previous.and_then(|p| p.conditions.as_ref()) {
        for c in &mut conditions {
            if let Some(old) = prev
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == c.status)
            {
                c.last_transition_time = old.last_transition_time.clone();
            }
        }
    }
    NodeStatus {
        capacity: Some(quantities(
            facts.cpu_millis,
            facts.memory_bytes,
            facts.max_pods,
            facts.instances,
        )),
        allocatable: Some(quantities(
            facts.cpu_millis.saturating_sub(facts.reserved_cpu_millis),
            facts
                .memory_bytes
                .saturating_sub(facts.reserved_memory_bytes),
            facts.max_pods,
            facts.instances,
        )),
        conditions: Some(conditions),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: facts.address.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: facts.hostname.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(facts.daemon_port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: ARCH.into(),
            operating_system: std::env::consts::OS.into(),
            os_image: format!("wharf {}", env!("CARGO_PKG_VERSION")),
            kernel_version: String::new(),
            container_runtime_version: "wasmtime://48".into(),
            kubelet_version: format!("v1.33.0+wharf.{}", env!("CARGO_PKG_VERSION")),
            kube_proxy_version: String::new(),
            boot_id: String::new(),
            machine_id: String::new(),
            system_uuid: String::new(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// How many images a node reports, the largest first (the kubelet's default is 50).
pub const MAX_IMAGES: usize = 50;

/// `status.images` from what the runtime holds: `(names, size)`, the names being every
/// reference the image was pulled by and its digests as `sha256:HEX` (for a registry image,
/// also `REGISTRY/REPO@sha256:<manifest>` and the manifest's `sha256:HEX`), so the
/// scheduler finds it by any (a pod pinned with `@sha256:` by the digest).
pub fn node_images(held: impl IntoIterator<Item = (Vec<String>, u64)>) -> Vec<ContainerImage> {
    let mut held: Vec<_> = held.into_iter().collect();
    held.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    held.truncate(MAX_IMAGES);
    held.into_iter()
        .map(|(names, size)| ContainerImage {
            names: Some(names),
            size_bytes: Some(i64::try_from(size).unwrap_or(i64::MAX)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_capacity_is_what_files_and_memory_allow() {
        // The usual soft limit of 1024 files leaves no room beyond the node's own: one.
        assert_eq!(pods_capacity(1024, 8 << 30), 1);
        // Raised to 2^20 files on a 24 GiB machine: files allow 348,160, memory 98,304.
        assert_eq!(pods_capacity(1 << 20, 24 << 30), 98_304);
        // 40,000 files: (40,000 - 4,096) / 3 = 11,968, fewer than 4 GiB allows (16,384).
        assert_eq!(pods_capacity(40_000, 4 << 30), 11_968);
        assert_eq!(pods_capacity(u64::MAX, u64::MAX), u32::MAX);
    }

    #[test]
    fn the_open_files_limit_is_read() {
        // This process has one, and it is at least what it has open now.
        let limit = open_files_limit();
        let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as u64;
        assert!(limit >= open && limit > 0, "limit {limit}, open {open}");
    }

    fn facts() -> NodeFacts {
        NodeFacts {
            name: "node-1".into(),
            address: "127.0.0.1".into(),
            hostname: "laptop".into(),
            daemon_port: 10250,
            tunnel: Some(
                "127.0.0.1:10251"
                    .parse()
                    .unwrap_or(std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
            ),
            cpu_millis: 2000,
            memory_bytes: 8 << 30,
            max_pods: 1000,
            reserved_cpu_millis: 100,
            reserved_memory_bytes: 256 << 20,
            allow_host_path: false,
            instances: Some(512),
            local_path_root: None,
            pod_cidr: None,
        }
    }

    #[test]
    fn a_node_registering_again_asks_for_the_pod_range_it_runs_with() {
        let first = node_object(&facts());
        assert_eq!(first.spec.and_then(|s| s.pod_cidr), None);
        let again = node_object(&NodeFacts {
            pod_cidr: Some("127.65.0.0/16".into()),
            ..facts()
        });
        assert_eq!(
            again.spec.and_then(|s| s.pod_cidr).as_deref(),
            Some("127.65.0.0/16")
        );
    }

    #[test]
    fn node_carries_kubernetes_labels_and_capacity() {
        let n = node_object(&facts());
        let labels = n.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels.get("kubernetes.io/arch").map(String::as_str),
            Some("wasm32")
        );
        assert_eq!(
            labels.get("kubernetes.io/hostname").map(String::as_str),
            Some("node-1")
        );
        assert_eq!(
            n.metadata
                .annotations
                .unwrap_or_default()
                .get(crate::tunnel::TUNNEL_ANNOTATION)
                .map(String::as_str),
            Some("127.0.0.1:10251")
        );
        let no_tunnel = NodeFacts {
            tunnel: None,
            ..facts()
        };
        assert_eq!(node_object(&no_tunnel).metadata.annotations, None);
        // Without a tunnel, a re-registering node removes a stale annotation.
        assert_eq!(
            node_annotations(&no_tunnel).get(crate::tunnel::TUNNEL_ANNOTATION),
            Some(&None)
        );
        let now = Timestamp::UNIX_EPOCH;
        let s = node_status(&facts(), true, None, now);
        let cap = s.capacity.clone().unwrap_or_default();
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["pods"].0, "1000");
        assert_eq!(cap[INSTANCES_RESOURCE].0, "512");
        let allocatable = s.allocatable.clone().unwrap_or_default();
        assert_eq!(allocatable["cpu"].0, "1900m");
        assert_eq!(allocatable[INSTANCES_RESOURCE].0, "512");
        let unpooled = NodeFacts {
            instances: None,
            ..facts()
        };
        let s2 = node_status(&unpooled, true, None, now);
        assert!(
            !s2.capacity
                .unwrap_or_default()
                .contains_key(INSTANCES_RESOURCE)
        );
        let ready = s
            .conditions
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready");
        assert_eq!(ready.map(|c| c.status), Some("True".into()));
        // A later heartbeat keeps the transition time of an unchanged condition.
        let later = Timestamp::from_second(100).unwrap_or(now);
        let s2 = node_status(&facts(), true, Some(&s), later);
        let r2 = s2
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready");
        assert_eq!(
            r2.as_ref().and_then(|c| c.last_transition_time.clone()),
            Some(Time(now))
        );
        assert_eq!(r2.and_then(|c| c.last_heartbeat_time), Some(Time(later)));
    }

    #[test]
    fn images_are_reported_by_reference_and_digest_largest_first() {
        let names = |a: &str, b: &str| vec![a.to_string(), b.to_string()];
        let images = node_images([
            (names("/srv/small.wasm", "sha256:aa"), 10),
            (names("/srv/big.wasm", "sha256:bb"), 2000),
        ]);
        assert_eq!(images.len(), 2);
        assert_eq!(
            images[0].names,
            Some(vec!["/srv/big.wasm".to_string(), "sha256:bb".to_string()])
        );
        assert_eq!(images[0].size_bytes, Some(2000));
        let many =
            node_images((0..60).map(|i| (vec![format!("{i}.wasm"), format!("sha256:{i}")], i)));
        assert_eq!(many.len(), MAX_IMAGES);
        assert_eq!(many[0].size_bytes, Some(59));
    }
}
