//! What the proxy and the DNS serve, as plain data: Services joined with their
//! EndpointSlices, one immutable [`Snapshot`] per change, numbered by a generation.
//!
//! Both consumers are level-triggered: they never look at watch events, only at the newest
//! snapshot, and make what they serve match it (listeners and endpoint sets for the proxy,
//! the whole zone for DNS). Building the snapshot is a pure function of the Services and
//! EndpointSlices ([`build`]), so the joins and Kubernetes' endpoint rules (which endpoints
//! take traffic, port matching by name, duplicates across slices) are unit-tested without
//! an API server.
//!
//! Snapshots also carry what the proxy needs to reach pods on other machines: each
//! endpoint's node address (from the slice's `wharf.dev/node-addresses` annotation) and,
//! per Node, its address and tunnel ([`NodeInfo`], from the Node's `wharf.dev/tunnel`
//! annotation); see [`super::route`].
//!
//! Endpoints are pods: an endpoint address in no Node's pod range (`spec.podCIDR`) is
//! dropped ([`confine_to_pod_ranges`]). A hand-written EndpointSlice naming `127.0.0.1`
//! would otherwise turn a Service into a way for any pod to reach a host-only service,
//! past its network allow list (Kubernetes refuses loopback endpoints outright).

use crate::agent::addresses::PodRange;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// The label that ties an EndpointSlice to its Service.
pub use wharf_control::api::wellknown::SERVICE_NAME_LABEL;
/// The Service annotation that selects the balancing policy (`round-robin`, or the default
/// `least-loaded`, power of two choices).
pub const LB_POLICY_ANNOTATION: &str = "wharf.dev/lb-policy";
/// The EndpointSlice annotation `{"NODE": "HOST-IP"}`: the address of each endpoint's node.
pub use wharf_control::api::wellknown::NODE_ADDRESSES_ANNOTATION;
/// The Service annotation naming the Deployment behind it that may be scaled to zero: the
/// control plane's request-driven autoscaler sets it, and the proxy then holds the
/// Service's HTTP requests while it has no endpoint, and asks for a wake-up
/// ([`super::wake`]).
pub use wharf_control::api::wellknown::WAKE_ON_REQUEST_ANNOTATION as WAKE_ANNOTATION;

/// `namespace/name` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How a port's connections or requests are spread over its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbPolicy {
    /// Power of two choices: of two random endpoints, the one with fewer requests in flight.
    #[default]
    LeastLoaded,
    /// Every endpoint in turn.
    RoundRobin,
}

impl LbPolicy {
    /// From the `wharf.dev/lb-policy` annotation; anything unknown is the default.
    pub fn from_annotation(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            Some("round-robin") | Some("roundrobin") | Some("RoundRobin") => LbPolicy::RoundRobin,
            _ => LbPolicy::LeastLoaded,
        }
    }
}

/// The Service's virtual address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterIp {
    /// A virtual IP every node's proxy listens on.
    Ip(IpAddr),
    /// `clusterIP: None`: DNS answers with the pods' addresses, the proxy does nothing.
    Headless,
    /// No address (not allocated yet, or an ExternalName Service).
    Unset,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// The port's name ("" for the single unnamed port); EndpointSlice ports match on it.
    pub name: String,
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`; the proxy serves TCP.
    pub protocol: String,
    pub node_port: Option<u16>,
    /// Whether the port speaks HTTP/1 (or h2c): `appProtocol: http`, or a port named `http`
    /// or `http-*`. Such ports are balanced per request instead of per connection.
    pub http: bool,
}

/// Conditions of one endpoint, as Kubernetes defines them (nil ready/serving mean true,
/// nil terminating means false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// One backend of one Service port: a pod address and the port it serves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    pub conditions: Conditions,
    /// The endpoint's `hostname` (DNS names of headless services), if set.
    pub hostname: Option<String>,
    pub node_name: Option<String>,
    /// The address of the endpoint's node, from the slice's node-addresses annotation.
    pub node_address: Option<IpAddr>,
    /// The pod behind it (`targetRef.name`), for logs.
    pub pod: Option<String>,
}

/// What the proxy knows of a Node: where it is, and where its tunnel listens.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    /// The node's `InternalIP`.
    pub address: Option<IpAddr>,
    /// The node's tunnel (`wharf.dev/tunnel` annotation), if it runs one.
    pub tunnel: Option<SocketAddr>,
    /// The node's pod range (`spec.podCIDR`).
    pub pod_range: Option<PodRange>,
}

impl NodeInfo {
    /// The Node's name and what the proxy needs of it (`None` without a name).
    pub fn of(node: &Node) -> Option<(String, NodeInfo)> {
        let name = node.metadata.name.clone()?;
        let address = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse().ok());
        let tunnel = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::tunnel::TUNNEL_ANNOTATION))
            .and_then(|t| t.trim().parse().ok());
        let pod_range = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(|c| PodRange::parse(c).ok());
        Some((
            name,
            NodeInfo {
                address,
                tunnel,
                pod_range,
            },
        ))
    }
}

/// A Service with the backends of each of its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub key: ServiceKey,
    pub cluster_ip: ClusterIp,
    /// `ClusterIP`, `NodePort`, `LoadBalancer` or `ExternalName`.
    pub service_type: String,
    pub external_name: Option<String>,
    pub ports: Vec<PortInfo>,
    pub policy: LbPolicy,
    pub publish_not_ready: bool,
    /// The load balancer addresses the Service was given (`status.loadBalancer.ingress`):
    /// a node serves the Service's ports on its address when it is among them.
    pub lb_ingress: Vec<IpAddr>,
    /// The Deployment to wake when a request finds no endpoint ([`WAKE_ANNOTATION`]).
    pub wake: Option<String>,
    /// Port name → backends, merged from every slice of the Service, sorted by address and
    /// without duplicates.
    pub backends: BTreeMap<String, Vec<Backend>>,
    /// Every endpoint of the Service whatever its ports (headless Services need not have
    /// any), sorted by IP, without duplicates; the port of these is 0.
    pub pods: Vec<Backend>,
}

impl ServiceInfo {
    /// The backends of a port, or none.
    pub fn backends_of(&self, port_name: &str) -> &[Backend] {
        self.backends.get(port_name).map_or(&[], Vec::as_slice)
    }

    /// The pod endpoints DNS publishes for a headless Service: the ready ones, or every
    /// one when `publishNotReadyAddresses` is set.
    pub fn published_pods(&self) -> impl Iterator<Item = &Backend> {
        self.pods
            .iter()
            .filter(|b| self.publish_not_ready || (b.conditions.ready && !b.conditions.terminating))
    }
}

/// Everything the proxy and DNS serve, at one point in time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Increases with every change; the DNS zone's serial.
    pub generation: u64,
    /// Whether the first full list of Services and EndpointSlices arrived. Before that the
    /// snapshot is empty and says nothing (DNS must not answer NXDOMAIN for everything).
    pub synced: bool,
    pub services: BTreeMap<ServiceKey, ServiceInfo>,
    /// Every Node by name (filled by the watch; [`build`] leaves it empty).
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Endpoint addresses dropped for being in no Node's pod range, by Service
    /// ([`confine_to_pod_ranges`]).
    pub refused: BTreeMap<ServiceKey, Vec<IpAddr>>,
}

/// Drops every endpoint whose address is in no Node's pod range, and records it in
/// `refused` (pure). Call once the snapshot has its nodes.
pub fn confine_to_pod_ranges(snapshot: &mut Snapshot) {
    let ranges: Vec<PodRange> = snapshot
        .nodes
        .values()
        .filter_map(|n| n.pod_range)
        .collect();
    let is_pod = |ip: IpAddr| matches!(ip, IpAddr::V4(v4) if ranges.iter().any(|r| r.contains(v4)));
    snapshot.refused.clear();
    for svc in snapshot.services.values_mut() {
        let mut refused: Vec<IpAddr> = svc
            .pods
            .iter()
            .map(|b| b.addr.ip())
            .filter(|ip| !is_pod(*ip))
            .collect();
        if refused.is_empty() {
            continue;
        }
        refused.sort_unstable();
        refused.dedup();
        svc.pods.retain(|b| is_pod(b.addr.ip()));
        for backends in svc.backends.values_mut() {
            backends.retain(|b| is_pod(b.addr.ip()));
        }
        snapshot.refused.insert(svc.key.clone(), refused);
    }
}

/// The addresses that receive new traffic, as Kubernetes' proxies choose them: the ready
/// endpoints; if there are none, the ones still serving while terminating (so that a
/// rollout of the last replica does not drop requests); otherwise none. Terminating
/// endpoints are left out as soon as a ready one exists, which is what lets them finish
/// their in-flight work without getting more.
pub fn routable(backends: &[Backend]) -> Vec<SocketAddr> {
    let ready: Vec<SocketAddr> = backends
        .iter()
        .filter(|b| b.conditions.ready && !b.conditions.terminating)
        .map(|b| b.addr)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    backends
        .iter()
        .filter(|b| b.conditions.serving && b.conditions.terminating)
        .map(|b| b.addr)
        .collect()
}

/// Whether a Service port is served at L7 (HTTP) rather than L4.
pub fn is_http(name: &str, app_protocol: Option<&str>) -> bool {
    match app_protocol.map(str::to_ascii_lowercase).as_deref() {
        Some("http") | Some("kubernetes.io/h2c") => true,
        Some(_) => false,
        None => name == "http" || name.starts_with("http-"),
    }
}

fn service_info(svc: &Service) -> Option<ServiceInfo> {
    let key = ServiceKey::new(
        svc.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        svc.metadata.name.clone()?,
    );
    let spec = svc.spec.clone().unwrap_or_default();
    let service_type = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    let cluster_ip = match spec.cluster_ip.as_deref().map(str::trim) {
        _ if service_type == "ExternalName" => ClusterIp::Unset,
        Some("None") => ClusterIp::Headless,
        Some(ip) => ip.parse().map_or(ClusterIp::Unset, ClusterIp::Ip),
        None => ClusterIp::Unset,
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let name = p.name.clone().unwrap_or_default();
            Some(PortInfo {
                http: is_http(&name, p.app_protocol.as_deref()),
                port: u16::try_from(p.port).ok().filter(|p| *p != 0)?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                node_port: p
                    .node_port
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n != 0),
                name,
            })
        })
        .collect();
    let policy = LbPolicy::from_annotation(
        svc.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LB_POLICY_ANNOTATION))
            .map(String::as_str),
    );
    Some(ServiceInfo {
        key,
        cluster_ip,
        service_type,
        external_name: spec.external_name.clone(),
        ports,
        policy,
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
        lb_ingress: svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect(),
        wake: svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(WAKE_ANNOTATION))
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty()),
        backends: BTreeMap::new(),
        pods: Vec::new(),
    })
}

/// Adds one slice's endpoints to its Service's backends.
fn add_slice(info: &mut ServiceInfo, slice: &EndpointSlice) {
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return;
    }
    // A malformed annotation only loses the node addresses, never the endpoints.
    let node_addresses: BTreeMap<String, String> = slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NODE_ADDRESSES_ANNOTATION))
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    let endpoints: Vec<Backend> = slice
        .endpoints
        .iter()
        .flatten()
        .filter_map(|ep| {
            let c = ep.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            // Kubernetes reads only the first address of an endpoint.
            let ip = ep.addresses.first()?.parse::<IpAddr>().ok()?;
            Some(Backend {
                addr: SocketAddr::new(ip, 0),
                conditions: Conditions {
                    ready,
                    serving: c.serving.unwrap_or(ready),
                    terminating: c.terminating.unwrap_or(false),
                },
                hostname: ep.hostname.clone(),
                node_name: ep.node_name.clone(),
                node_address: ep
                    .node_name
                    .as_ref()
                    .and_then(|n| node_addresses.get(n))
                    .and_then(|a| a.parse().ok()),
                pod: ep.target_ref.as_ref().and_then(|r| r.name.clone()),
            })
        })
        .collect();
    info.pods.extend(endpoints.iter().cloned());
    for port in slice.ports.iter().flatten() {
        let name = port.name.clone().unwrap_or_default();
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let Some(number) = port
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        let matches_service = info
            .ports
            .iter()
            .any(|p| p.name == name && p.protocol.eq_ignore_ascii_case(protocol));
        if !matches_service {
            continue;
        }
        let list = info.backends.entry(name).or_default();
        list.extend(endpoints.iter().map(|b| Backend {
            addr: SocketAddr::new(b.addr.ip(), number),
            ..b.clone()
        }));
    }
}

/// Sorts backends and merges duplicates (the same endpoint in two slices while a slice is
/// being split or replaced): the entry that says ready wins.
pub(crate) fn normalize(list: &mut Vec<Backend>) {
    list.sort_by(|a, b| {
        a.addr
            .cmp(&b.addr)
            .then(b.conditions.ready.cmp(&a.conditions.ready))
    });
    list.dedup_by(|later, first| later.addr == first.addr);
}

/// Joins Services and their EndpointSlices (by the `kubernetes.io/service-name` label).
pub fn build<'a>(
    generation: u64,
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Snapshot {
    let mut out: BTreeMap<ServiceKey, ServiceInfo> = services
        .into_iter()
        .filter_map(service_info)
        .map(|s| (s.key.clone(), s))
        .collect();
    for slice in slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let key = ServiceKey::new(
            slice
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            service.clone(),
        );
        if let Some(info) = out.get_mut(&key) {
            add_slice(info, slice);
        }
    }
    for info in out.values_mut() {
        info.backends.values_mut().for_each(normalize);
        normalize(&mut info.pods);
    }
    Snapshot {
        generation,
        synced: true,
        services: out,
        nodes: BTreeMap::new(),
        refused: BTreeMap::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(crate) fn service(ns: &str, name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": spec,
        }))
        .unwrap()
    }

    pub(crate) fn slice(
        ns: &str,
        service: &str,
        ports: serde_json::Value,
        endpoints: serde_json::Value,
    ) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": format!("{service}-x"),
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn backend(addr: &str, ready: bool, serving: bool, terminating: bool) -> Backend {
        Backend {
            addr: addr.parse().unwrap(),
            conditions: Conditions {
                ready,
                serving,
                terminating,
            },
            hostname: None,
            node_name: None,
            node_address: None,
            pod: None,
        }
    }

    #[test]
    fn joins_slices_by_port_name_and_merges_duplicates() {
        let svc = service(
            "default",
            "web",
            serde_json::json!({"clusterIP": "127.250.0.7", "ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "metrics", "port": 9090, "appProtocol": "tcp"},
            ]}),
        );
        let a = slice(
            "default",
            "web",
            serde_json::json!([{"name": "http", "port": 8080}, {"name": "metrics", "port": 9000}]),
            serde_json::json!([
                {"addresses": ["127.64.0.2"], "conditions": {"ready": true}},
                {"addresses": ["127.64.0.3"], "conditions": {"ready": false}},
            ]),
        );
        // The same endpoint again, now ready, in a second slice; and a slice of another
        // namespace that must not join.
        let b = slice(
            "default",
            "web",
            serde_json::json!([{"name": "http", "port": 8080}]),
            serde_json::json!([{"addresses": ["127.64.0.3"], "conditions": {}}]),
        );
        let other = slice(
            "other",
            "web",
            serde_json::json!([{"name": "http", "port": 8080}]),
            serde_json::json!([{"addresses": ["127.64.0.9"]}]),
        );
        let snap = build(3, [&svc], [&a, &b, &other]);
        let info = &snap.services[&ServiceKey::new("default", "web")];
        assert_eq!(
            info.cluster_ip,
            ClusterIp::Ip("127.250.0.7".parse().unwrap())
        );
        assert!(info.ports[0].http);
        assert!(!info.ports[1].http);
        let http = info.backends_of("http");
        assert_eq!(http.len(), 2);
        assert!(http.iter().all(|b| b.conditions.ready));
        assert_eq!(http[0].addr, "127.64.0.2:8080".parse().unwrap());
        assert_eq!(
            routable(info.backends_of("metrics")),
            vec!["127.64.0.2:9000".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(snap.generation, 3);
    }

    #[test]
    fn only_ready_endpoints_take_traffic_unless_none_is() {
        let list = vec![
            backend("127.0.0.1:1", true, true, false),
            backend("127.0.0.1:2", false, true, true),
            backend("127.0.0.1:3", false, false, false),
        ];
        assert_eq!(routable(&list), vec!["127.0.0.1:1".parse().unwrap()]);
        // No ready one: the terminating endpoints that still serve.
        let list = vec![
            backend("127.0.0.1:2", false, true, true),
            backend("127.0.0.1:3", false, false, true),
            backend("127.0.0.1:4", false, false, false),
        ];
        assert_eq!(routable(&list), vec!["127.0.0.1:2".parse().unwrap()]);
        assert!(routable(&[]).is_empty());
    }

    #[test]
    fn headless_external_and_policies() {
        let headless = service(
            "ns",
            "db",
            serde_json::json!({"clusterIP": "None", "ports": [{"port": 5432}]}),
        );
        let external = service(
            "ns",
            "ext",
            serde_json::json!({"type": "ExternalName", "externalName": "example.com"}),
        );
        let mut rr = service(
            "ns",
            "rr",
            serde_json::json!({"clusterIP": "127.250.1.1", "ports": [{"port": 8080, "name": "http-api"}]}),
        );
        rr.metadata.annotations =
            Some([(LB_POLICY_ANNOTATION.to_string(), "round-robin".to_string())].into());
        let pods = slice(
            "ns",
            "db",
            serde_json::json!([]),
            serde_json::json!([
                {"addresses": ["127.64.0.4"], "hostname": "db-0"},
                {"addresses": ["127.64.0.3"], "conditions": {"ready": false}},
            ]),
        );
        let snap = build(1, [&headless, &external, &rr], [&pods]);
        let db = &snap.services[&ServiceKey::new("ns", "db")];
        assert_eq!(db.pods.len(), 2);
        let published: Vec<_> = db.published_pods().collect();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].hostname.as_deref(), Some("db-0"));
        assert_eq!(
            snap.services[&ServiceKey::new("ns", "db")].cluster_ip,
            ClusterIp::Headless
        );
        assert_eq!(
            snap.services[&ServiceKey::new("ns", "ext")].cluster_ip,
            ClusterIp::Unset
        );
        let rr = &snap.services[&ServiceKey::new("ns", "rr")];
        assert_eq!(rr.policy, LbPolicy::RoundRobin);
        assert!(rr.ports[0].http);
        assert!(is_http("web", Some("HTTP")));
        assert!(!is_http("http", Some("grpc")));
    }
}
