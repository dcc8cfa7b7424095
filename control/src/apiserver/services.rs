//! Service addresses: the `clusterIP` and the node ports of every Service.
//!
//! Why a loopback range: wharf runs without root, and on Linux the whole of 127.0.0.0/8 is
//! loopback that any user may bind. Cluster IPs therefore come from a range of it
//! (`127.250.0.0/16` by default, [`ServiceRanges`]), apart from the node pod ranges
//! (`127.64.0.0/16` and up, see [`super::ipam`]), so every node's proxy can listen on
//! `CLUSTER-IP:PORT` itself. Node ports come from 30000-32767, as in Kubernetes.
//!
//! Why allocators in the store: several API servers may share one store, so the taken
//! values are kept as store objects ([`super::ipam`]), read to decide and updated by
//! compare-and-swap in the same txn as the Service's own write. Two Services can never
//! get the same cluster IP or node port, whichever server wrote them; deleting a Service
//! frees its values in the txn of the delete.
//!
//! The rules follow kube-apiserver's service REST storage:
//! - create: an empty `clusterIP` gets a free address of the range; `None` makes the
//!   Service headless; a given address must be inside the range and free. `clusterIPs`,
//!   `ipFamilies: [IPv4]` and `ipFamilyPolicy: SingleStack` follow (the cluster is
//!   single-stack IPv4). NodePort and LoadBalancer Services get a free node port for every
//!   port that names none; a given one must be inside the range and free.
//! - update: allocated values the client omitted are kept (`kubectl apply` omits them:
//!   the cluster IP, and node ports matched by port name); the cluster IP is immutable;
//!   changing the type drops what the new type cannot have (node ports when leaving
//!   NodePort, the cluster IP when becoming ExternalName) if the client left them as
//!   they were.
//!
//! The decisions are pure ([`allocate`]); [`admit_create`] and [`admit_update`] are the
//! thin hooks the generic handlers call.

use super::AppState;
use super::error::{ApiError, Subject};
use super::ipam;
use super::objects::meta_str;
use super::request::Target;
use crate::api::validation::{FieldError, Reason};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network, `ADDR/PREFIX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The network of `addr` with `prefix` bits (host bits are cleared).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if prefix > 32 {
            return Err(format!("prefix length {prefix} is longer than 32"));
        }
        let mask = Self::mask(prefix);
        Ok(Ipv4Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// A range whose `network` has no host bits set (for constants).
    pub const fn const_new(network: Ipv4Addr, prefix: u8) -> Self {
        Ipv4Cidr { network, prefix }
    }

    /// Whether `ip` is inside the range (network and broadcast addresses included).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.network)
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The addresses Services may get: all but the network and broadcast addresses
    /// (for prefixes up to /30), as `(first, count)`.
    fn usable(&self) -> (u32, u64) {
        let size = 1u64 << (32 - u32::from(self.prefix));
        let base = u32::from(self.network);
        if size <= 2 {
            (base, size)
        } else {
            (base + 1, size - 2)
        }
    }

    /// Whether a Service may hold `ip`.
    pub fn allows(&self, ip: Ipv4Addr) -> bool {
        let (first, count) = self.usable();
        let ip = u64::from(u32::from(ip));
        ip >= u64::from(first) && ip < u64::from(first) + count
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (ADDR/PREFIX)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        Ipv4Cidr::new(addr, prefix)
    }
}

/// An inclusive range of ports, `FIRST-LAST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: i64) -> bool {
        port >= i64::from(self.first) && port <= i64::from(self.last)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port"))
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(s)?, parse(s)?),
        };
        if first == 0 || first > last {
            return Err(format!("{s:?} is not a port range (FIRST-LAST, 1-65535)"));
        }
        Ok(PortRange { first, last })
    }
}

/// Where Service addresses come from (kube-apiserver's `--service-cluster-ip-range` and
/// `--service-node-port-range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceRanges {
    /// Cluster IPs. The default, 127.250.0.0/16, is loopback any user may bind on Linux.
    pub cluster_ip: Ipv4Cidr,
    /// Node ports.
    pub node_port: PortRange,
}

impl Default for ServiceRanges {
    fn default() -> Self {
        ServiceRanges {
            cluster_ip: Ipv4Cidr {
                network: Ipv4Addr::new(127, 250, 0, 0),
                prefix: 16,
            },
            node_port: PortRange {
                first: 30000,
                last: 32767,
            },
        }
    }
}

/// The cluster IPs and node ports other Services hold.
#[derive(Debug, Default, Clone)]
pub struct Taken {
    pub ips: HashSet<Ipv4Addr>,
    pub node_ports: HashSet<i64>,
}

impl Taken {
    /// What the allocators hold. A Service being updated finds its own values here;
    /// [`allocate`] lets it keep them.
    pub fn from_ranges(ips: &ipam::Range, node_ports: &ipam::Range) -> Self {
        Taken {
            ips: ips
                .allocated
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect(),
            node_ports: node_ports
                .allocated
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect(),
        }
    }

    /// What `services` hold (the Service being written must not be among them).
    pub fn of<'a>(services: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut taken = Taken::default();
        for svc in services {
            let spec = svc.get("spec");
            let ips = spec
                .and_then(|s| s.get("clusterIPs"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .chain(spec.and_then(|s| s.get("clusterIP")));
            for ip in ips {
                if let Some(ip) = ip.as_str().and_then(|s| s.parse().ok()) {
                    taken.ips.insert(ip);
                }
            }
            for port in spec
                .and_then(|s| s.get("ports"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(n) = port.get("nodePort").and_then(Value::as_i64) {
                    taken.node_ports.insert(n);
                }
            }
            if let Some(n) = spec
                .and_then(|s| s.get("healthCheckNodePort"))
                .and_then(Value::as_i64)
            {
                taken.node_ports.insert(n);
            }
        }
        taken
    }
}

fn str_at<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

fn service_type(svc: &Value) -> &str {
    svc.get("spec")
        .map(|s| str_at(s, "type"))
        .filter(|t| !t.is_empty())
        .unwrap_or("ClusterIP")
}

/// ExternalName Services are a DNS alias: no cluster IP, no ports on nodes.
fn needs_cluster_ip(ty: &str) -> bool {
    ty != "ExternalName"
}

fn needs_node_ports(svc: &Value) -> bool {
    match service_type(svc) {
        "NodePort" => true,
        "LoadBalancer" => {
            svc.pointer("/spec/allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                != Some(false)
        }
        _ => false,
    }
}

fn ports(svc: &Value) -> &[Value] {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn node_port(port: &Value) -> i64 {
    port.get("nodePort").and_then(Value::as_i64).unwrap_or(0)
}

/// The cluster IP a Service asks for: `clusterIP`, else the first of `clusterIPs`.
fn requested_ip(spec: &Value) -> &str {
    match str_at(spec, "clusterIP") {
        "" => spec
            .get("clusterIPs")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .unwrap_or(""),
        ip => ip,
    }
}

/// The step of an update before allocation: put back what the client omitted, drop what
/// the new type cannot have (kube-apiserver's `patchAllocatedValues` and
/// `dropTypeDependentFields`).
fn carry_over(spec: &mut serde_json::Map<String, Value>, new_ty: &str, old: &Value) {
    let Some(old_spec) = old.get("spec") else {
        return;
    };
    let old_ty = service_type(old);
    if needs_cluster_ip(old_ty) && needs_cluster_ip(new_ty) {
        for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            let omitted = match spec.get(field) {
                None | Some(Value::Null) => true,
                Some(Value::String(s)) => s.is_empty(),
                Some(Value::Array(a)) => a.is_empty(),
                Some(_) => false,
            };
            if omitted && let Some(v) = old_spec.get(field) {
                spec.insert(field.into(), v.clone());
            }
        }
    }
    let old_needs_ports = needs_node_ports(old);
    let new_needs_ports = needs_node_ports(&json!({"spec": spec}));
    if old_needs_ports && new_needs_ports {
        // Node ports by port name; one already used by another port is not patched in.
        let by_name: BTreeMap<&str, i64> = ports(old)
            .iter()
            .map(|p| (str_at(p, "name"), node_port(p)))
            .collect();
        if let Some(list) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            let used: HashSet<i64> = list.iter().map(node_port).filter(|n| *n != 0).collect();
            for p in list.iter_mut() {
                if node_port(p) != 0 {
                    continue;
                }
                let Some(&old_port) = by_name.get(str_at(p, "name")) else {
                    continue;
                };
                if old_port != 0
                    && !used.contains(&old_port)
                    && let Some(p) = p.as_object_mut()
                {
                    p.insert("nodePort".into(), json!(old_port));
                }
            }
        }
    }
    if old_needs_ports && !new_needs_ports {
        // Leaving NodePort: node ports the client did not touch go with the type.
        let old_ports: Vec<i64> = ports(old).iter().map(node_port).collect();
        if let Some(list) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            let same = list.len() == old_ports.len()
                && list
                    .iter()
                    .zip(&old_ports)
                    .all(|(p, o)| node_port(p) == 0 || node_port(p) == *o);
            if same {
                for p in list.iter_mut().filter_map(Value::as_object_mut) {
                    p.remove("nodePort");
                }
            }
        }
        if !matches!(new_ty, "NodePort" | "LoadBalancer") {
            spec.remove("externalTrafficPolicy");
        }
    }
    if needs_cluster_ip(old_ty) && !needs_cluster_ip(new_ty) {
        // Becoming ExternalName: the allocated address goes, if the client left it as is.
        let old_ip = requested_ip(old_spec).to_string();
        let new_ip = requested_ip(&Value::Object(spec.clone())).to_string();
        if new_ip.is_empty() || new_ip == old_ip {
            for field in [
                "clusterIP",
                "clusterIPs",
                "ipFamilies",
                "ipFamilyPolicy",
                "internalTrafficPolicy",
            ] {
                spec.remove(field);
            }
        }
    }
}

/// Fills the allocated fields of a Service that is created (`old` is `None`) or updated,
/// against what other Services hold. `seed` picks where the search for a free value
/// starts (random in the server, fixed in tests), so that a just-freed address is not
/// handed out again at once. Wrong types are left alone for validation to report.
pub fn allocate(
    svc: &mut Value,
    old: Option<&Value>,
    taken: &Taken,
    ranges: &ServiceRanges,
    seed: u64,
) -> Result<(), Vec<FieldError>> {
    let ty = service_type(svc).to_string();
    let node_ports_needed = needs_node_ports(svc);
    let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let mut errs = Vec::new();
    if let Some(old) = old {
        carry_over(spec, &ty, old);
    }
    let old_spec = old.and_then(|o| o.get("spec"));
    let old_ip = old_spec.map(|s| requested_ip(s).to_string());

    if needs_cluster_ip(&ty) {
        let wanted = requested_ip(&Value::Object(spec.clone())).to_string();
        match old_ip.as_deref() {
            Some(old_ip) if !old_ip.is_empty() && wanted != old_ip => {
                errs.push(FieldError::invalid(
                    "spec.clusterIP",
                    &wanted,
                    "field is immutable",
                ));
            }
            Some(old_ip) if !old_ip.is_empty() => {}
            // A new Service, or one that had no address (it was ExternalName).
            _ => match cluster_ip(&wanted, taken, ranges, seed) {
                Ok(ip) => {
                    spec.insert("clusterIP".into(), json!(ip));
                    spec.insert("clusterIPs".into(), json!([ip]));
                }
                Err(e) => errs.push(e),
            },
        }
        if !spec.contains_key("ipFamilies") {
            spec.insert("ipFamilies".into(), json!(["IPv4"]));
        }
        if !spec.contains_key("ipFamilyPolicy") {
            spec.insert("ipFamilyPolicy".into(), json!("SingleStack"));
        }
        if !spec.contains_key("internalTrafficPolicy") {
            spec.insert("internalTrafficPolicy".into(), json!("Cluster"));
        }
    }

    if node_ports_needed {
        let own: HashSet<i64> = old
            .filter(|o| needs_node_ports(o))
            .map(|o| ports(o).iter().map(node_port).collect())
            .unwrap_or_default();
        assign_node_ports(spec, &own, taken, ranges, seed, &mut errs);
        if !spec.contains_key("externalTrafficPolicy") {
            spec.insert("externalTrafficPolicy".into(), json!("Cluster"));
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// The cluster IP for a Service asking for `wanted` (`""`: any, `None`: headless).
fn cluster_ip(
    wanted: &str,
    taken: &Taken,
    ranges: &ServiceRanges,
    seed: u64,
) -> Result<String, FieldError> {
    let range = ranges.cluster_ip;
    match wanted {
        "None" => Ok("None".into()),
        "" => {
            let (first, count) = range.usable();
            (0..count)
                .map(|i| {
                    let offset = (seed.wrapping_add(i)) % count;
                    Ipv4Addr::from(first.wrapping_add(offset as u32))
                })
                .find(|ip| !taken.ips.contains(ip))
                .map(|ip| ip.to_string())
                .ok_or_else(|| {
                    FieldError::new(
                        "spec.clusterIP",
                        Reason::Invalid,
                        None,
                        format!("failed to allocate a service IP: range {range} is full"),
                    )
                })
        }
        ip => {
            let Ok(parsed) = ip.parse::<std::net::IpAddr>() else {
                // Not an address at all is validation's to report, with its message.
                return Ok(ip.to_string());
            };
            let parsed = match parsed {
                std::net::IpAddr::V4(v4) if range.allows(v4) => v4,
                _ => {
                    return Err(FieldError::invalid(
                        "spec.clusterIP",
                        ip,
                        format!(
                            "provided IP is not in the valid range. The range of valid IPs is {range}"
                        ),
                    ));
                }
            };
            if taken.ips.contains(&parsed) {
                Err(FieldError::invalid(
                    "spec.clusterIP",
                    ip,
                    "provided IP is already allocated",
                ))
            } else {
                Ok(parsed.to_string())
            }
        }
    }
}

/// Checks the node ports a Service names and gives every port without one a free one
/// (ports with the same number but different protocols share their node port).
fn assign_node_ports(
    spec: &mut serde_json::Map<String, Value>,
    own: &HashSet<i64>,
    taken: &Taken,
    ranges: &ServiceRanges,
    seed: u64,
    errs: &mut Vec<FieldError>,
) {
    let Some(list) = spec.get_mut("ports").and_then(Value::as_array_mut) else {
        return;
    };
    let range = ranges.node_port;
    let mut here: HashSet<i64> = HashSet::new();
    let mut by_port: BTreeMap<i64, i64> = BTreeMap::new();
    let mut seen: HashSet<(i64, String)> = HashSet::new();
    for (i, p) in list.iter().enumerate() {
        let n = node_port(p);
        if n == 0 {
            continue;
        }
        let at = format!("spec.ports[{i}].nodePort");
        let protocol = match str_at(p, "protocol") {
            "" => "TCP".to_string(),
            other => other.to_string(),
        };
        if !seen.insert((n, protocol)) {
            errs.push(FieldError::new(
                at,
                Reason::Duplicate,
                Some(n.to_string()),
                "",
            ));
            continue;
        }
        here.insert(n);
        if let Some(port) = p.get("port").and_then(Value::as_i64) {
            by_port.entry(port).or_insert(n);
        }
        if own.contains(&n) {
            continue;
        }
        if !range.contains(n) {
            errs.push(FieldError::new(
                at,
                Reason::Invalid,
                Some(n.to_string()),
                format!(
                    "provided port is not in the valid range. The range of valid ports is {range}"
                ),
            ));
        } else if taken.node_ports.contains(&n) {
            errs.push(FieldError::new(
                at,
                Reason::Invalid,
                Some(n.to_string()),
                "provided port is already allocated",
            ));
        }
    }
    let count = u64::from(range.last - range.first) + 1;
    let mut next = 0u64;
    for (i, p) in list.iter_mut().enumerate() {
        if node_port(p) != 0 {
            continue;
        }
        let port = p.get("port").and_then(Value::as_i64);
        let reuse = port.and_then(|port| by_port.get(&port).copied());
        let free = reuse.or_else(|| {
            while next < count {
                let candidate = i64::from(range.first) + (seed.wrapping_add(next) % count) as i64;
                next += 1;
                if !taken.node_ports.contains(&candidate) && !here.contains(&candidate) {
                    return Some(candidate);
                }
            }
            None
        });
        match (free, p.as_object_mut()) {
            (Some(n), Some(obj)) => {
                obj.insert("nodePort".into(), json!(n));
                here.insert(n);
                if let Some(port) = port {
                    by_port.entry(port).or_insert(n);
                }
            }
            (None, _) => errs.push(FieldError::new(
                format!("spec.ports[{i}].nodePort"),
                Reason::Invalid,
                None,
                format!("failed to allocate a node port: range {range} is full"),
            )),
            (Some(_), None) => {}
        }
    }
}

fn is_service(target: &Target) -> bool {
    target.kind.group.is_empty() && target.kind.kind == "Service"
}

/// Allocation for a Service being created (a no-op for other kinds). What it allocated is
/// stored with the Service by [`super::ipam::store_create`], in one txn.
pub async fn admit_create(
    state: &AppState,
    target: &Target,
    obj: &mut Value,
) -> Result<(), ApiError> {
    if !is_service(target) {
        return Ok(());
    }
    admit(state, obj, None).await
}

/// Allocation for a Service being updated (a no-op for other kinds and for the status
/// subresource). The update stores what changed in the allocators in the same txn (see
/// [`super::ipam::commit`]); if another server took a value first, the update is retried
/// from the start.
pub async fn admit_update(
    state: &AppState,
    target: &Target,
    current: &Value,
    new: &mut Value,
    status_only: bool,
) -> Result<(), ApiError> {
    if !is_service(target) || status_only {
        return Ok(());
    }
    admit(state, new, Some(current)).await
}

async fn admit(state: &AppState, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
    let name = meta_str(old.unwrap_or(obj), "name")
        .unwrap_or_default()
        .to_string();
    let subject = Subject {
        group: String::new(),
        resource: "services".into(),
        name,
    };
    let store = state.store.as_ref();
    let ips = ipam::read(store, ipam::SERVICE_IPS)
        .await
        .map_err(|e| ApiError::from_store(e, subject.clone()))?;
    let ports = ipam::read(store, ipam::SERVICE_NODE_PORTS)
        .await
        .map_err(|e| ApiError::from_store(e, subject.clone()))?;
    let taken = Taken::from_ranges(&ips, &ports);
    allocate(
        obj,
        old,
        &taken,
        &state.config.services,
        rand::random::<u64>(),
    )
    .map_err(|errs| ApiError::invalid(subject, "Service", errs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn ranges() -> ServiceRanges {
        ServiceRanges::default()
    }

    #[test]
    fn ranges_parse_and_exclude_network_and_broadcast() {
        let r: Ipv4Cidr = "127.250.7.9/16".parse().unwrap();
        assert_eq!(r.to_string(), "127.250.0.0/16");
        assert!(!r.allows("127.250.0.0".parse().unwrap()));
        assert!(r.allows("127.250.0.1".parse().unwrap()));
        assert!(r.allows("127.250.255.254".parse().unwrap()));
        assert!(!r.allows("127.250.255.255".parse().unwrap()));
        assert!(!r.allows("127.251.0.1".parse().unwrap()));
        assert!("127.0.0.1".parse::<Ipv4Cidr>().is_err());
        assert!("127.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        let p: PortRange = "30000-32767".parse().unwrap();
        assert_eq!(p, ranges().node_port);
        assert!("32767-30000".parse::<PortRange>().is_err());
        assert_eq!(ranges().cluster_ip.to_string(), "127.250.0.0/16");
    }

    #[test]
    fn create_allocates_a_free_address_and_fills_the_families() {
        let taken = Taken::of(&[svc(json!({"clusterIP": "127.250.0.1"}))]);
        let mut s = svc(json!({"ports": [{"port": 80}]}));
        allocate(&mut s, None, &taken, &ranges(), 0).unwrap();
        assert_eq!(s["spec"]["clusterIP"], "127.250.0.2");
        assert_eq!(s["spec"]["clusterIPs"], json!(["127.250.0.2"]));
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(s["spec"]["ipFamilyPolicy"], "SingleStack");
        assert_eq!(s["spec"]["internalTrafficPolicy"], "Cluster");
        assert!(s["spec"].get("externalTrafficPolicy").is_none());
        // The search wraps around the range.
        let mut s = svc(json!({}));
        allocate(&mut s, None, &Taken::default(), &ranges(), 65533).unwrap();
        assert_eq!(s["spec"]["clusterIP"], "127.250.255.254");
        let mut s = svc(json!({}));
        allocate(&mut s, None, &Taken::default(), &ranges(), 65534).unwrap();
        assert_eq!(s["spec"]["clusterIP"], "127.250.0.1");
    }

    #[test]
    fn a_full_range_is_an_error() {
        let small = ServiceRanges {
            cluster_ip: "127.250.0.0/30".parse().unwrap(),
            node_port: "30000-30000".parse().unwrap(),
        };
        let taken = Taken::of(&[
            svc(json!({"clusterIP": "127.250.0.1"})),
            svc(json!({"clusterIP": "127.250.0.2", "type": "NodePort",
                       "ports": [{"port": 1, "nodePort": 30000}]})),
        ]);
        let errs = allocate(&mut svc(json!({})), None, &taken, &small, 0).unwrap_err();
        assert_eq!(errs[0].field, "spec.clusterIP");
        assert!(errs[0].detail.contains("is full"), "{}", errs[0]);
        let errs = allocate(
            &mut svc(json!({"clusterIP": "None", "type": "NodePort", "ports": [{"port": 80}]})),
            None,
            &taken,
            &small,
            0,
        );
        // Headless NodePort is validation's to refuse; the node port range is full.
        assert_eq!(errs.unwrap_err()[0].field, "spec.ports[0].nodePort");
    }

    #[test]
    fn requested_addresses_must_be_in_range_and_free() {
        let taken = Taken::of(&[svc(json!({"clusterIP": "127.250.0.9"}))]);
        let mut ok = svc(json!({"clusterIP": "127.250.1.1"}));
        allocate(&mut ok, None, &taken, &ranges(), 0).unwrap();
        assert_eq!(ok["spec"]["clusterIPs"], json!(["127.250.1.1"]));
        let mut from_list = svc(json!({"clusterIPs": ["127.250.1.2"]}));
        allocate(&mut from_list, None, &taken, &ranges(), 0).unwrap();
        assert_eq!(from_list["spec"]["clusterIP"], "127.250.1.2");

        let errs = allocate(
            &mut svc(json!({"clusterIP": "10.0.0.1"})),
            None,
            &taken,
            &ranges(),
            0,
        )
        .unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "spec.clusterIP: Invalid value: \"10.0.0.1\": provided IP is not in the valid range. The range of valid IPs is 127.250.0.0/16"
        );
        let errs = allocate(
            &mut svc(json!({"clusterIP": "fd00::1"})),
            None,
            &taken,
            &ranges(),
            0,
        )
        .unwrap_err();
        assert!(
            errs[0].detail.contains("not in the valid range"),
            "{}",
            errs[0]
        );
        let errs = allocate(
            &mut svc(json!({"clusterIP": "127.250.0.9"})),
            None,
            &taken,
            &ranges(),
            0,
        )
        .unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "spec.clusterIP: Invalid value: \"127.250.0.9\": provided IP is already allocated"
        );
        let mut headless = svc(json!({"clusterIP": "None"}));
        allocate(&mut headless, None, &taken, &ranges(), 0).unwrap();
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
    }

    #[test]
    fn node_ports_are_allocated_checked_and_shared_across_protocols() {
        let taken = Taken::of(&[svc(json!({"type": "NodePort",
            "ports": [{"port": 80, "nodePort": 30080}]}))]);
        let mut s = svc(json!({"type": "NodePort", "ports": [
            {"name": "a", "port": 80, "nodePort": 30081},
            {"name": "b", "port": 53, "protocol": "TCP"},
            {"name": "c", "port": 53, "protocol": "UDP"}]}));
        allocate(&mut s, None, &taken, &ranges(), 80).unwrap();
        assert_eq!(s["spec"]["ports"][0]["nodePort"], 30081);
        // 30080 is taken and 30081 is this service's own: the next free one.
        assert_eq!(s["spec"]["ports"][1]["nodePort"], 30082);
        assert_eq!(s["spec"]["ports"][2]["nodePort"], 30082);
        assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");

        let errs = allocate(
            &mut svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]})),
            None,
            &taken,
            &ranges(),
            0,
        )
        .unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
        );
        let errs = allocate(
            &mut svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 8080}]})),
            None,
            &taken,
            &ranges(),
            0,
        )
        .unwrap_err();
        assert!(
            errs[0]
                .to_string()
                .ends_with("The range of valid ports is 30000-32767"),
            "{}",
            errs[0]
        );
        // A LoadBalancer that opts out of node ports gets none.
        let mut lb = svc(
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
            "ports": [{"port": 80}]}),
        );
        allocate(&mut lb, None, &taken, &ranges(), 0).unwrap();
        assert!(lb["spec"]["ports"][0].get("nodePort").is_none());
    }

    #[test]
    fn updates_keep_allocated_values_and_the_address_is_immutable() {
        let mut old = svc(json!({"type": "NodePort", "ports": [
            {"name": "http", "port": 80}, {"name": "admin", "port": 9000}]}));
        allocate(&mut old, None, &Taken::default(), &ranges(), 7).unwrap();
        let ip = old["spec"]["clusterIP"].clone();

        // What kubectl apply sends: the manifest, without allocated values; a port moved.
        let mut new = svc(json!({"type": "NodePort", "ports": [
            {"name": "admin", "port": 9001}, {"name": "http", "port": 80}]}));
        allocate(&mut new, Some(&old), &Taken::default(), &ranges(), 99).unwrap();
        assert_eq!(new["spec"]["clusterIP"], ip);
        assert_eq!(new["spec"]["clusterIPs"], json!([ip]));
        assert_eq!(
            new["spec"]["ports"][0]["nodePort"],
            old["spec"]["ports"][1]["nodePort"]
        );
        assert_eq!(
            new["spec"]["ports"][1]["nodePort"],
            old["spec"]["ports"][0]["nodePort"]
        );

        let mut moved = svc(json!({"clusterIP": "127.250.3.3", "type": "NodePort",
            "ports": [{"name": "http", "port": 80}]}));
        let errs = allocate(&mut moved, Some(&old), &Taken::default(), &ranges(), 0).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "spec.clusterIP: Invalid value: \"127.250.3.3\": field is immutable"
        );

        // Back to ClusterIP: the untouched node ports go with the type.
        let mut cluster = old.clone();
        cluster["spec"]["type"] = json!("ClusterIP");
        allocate(&mut cluster, Some(&old), &Taken::default(), &ranges(), 0).unwrap();
        assert!(cluster["spec"]["ports"][0].get("nodePort").is_none());
        assert!(cluster["spec"].get("externalTrafficPolicy").is_none());
        assert_eq!(cluster["spec"]["clusterIP"], ip);

        // To ExternalName: the address goes; back again: a new one is allocated.
        let mut alias = cluster.clone();
        alias["spec"]["type"] = json!("ExternalName");
        alias["spec"]["externalName"] = json!("example.com");
        allocate(&mut alias, Some(&cluster), &Taken::default(), &ranges(), 0).unwrap();
        assert!(alias["spec"].get("clusterIP").is_none());
        assert!(alias["spec"].get("ipFamilies").is_none());
        let mut back = alias.clone();
        back["spec"]["type"] = json!("ClusterIP");
        allocate(&mut back, Some(&alias), &Taken::default(), &ranges(), 4).unwrap();
        assert_eq!(back["spec"]["clusterIP"], "127.250.0.5");
    }
}

/// Handler tests: allocation through the whole router, on a real store.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod handler_tests {
    use super::super::auth::{Authenticator, Identity};
    use super::super::{ApiConfig, AppState, router};
    use crate::store::{FjallStore, Store, StoreConfig};
    use axum::body::Body;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    const TOKEN: &str = "test-token";

    fn open(dir: &Path) -> axum::Router {
        let store: Arc<dyn Store> =
            Arc::new(FjallStore::open(StoreConfig::new(dir.join("store"))).unwrap());
        let auth = Arc::new(Authenticator::new());
        auth.add_token(TOKEN, Identity::admin());
        router(AppState {
            store,
            auth,
            config: Arc::new(ApiConfig::default()),
            shutdown: CancellationToken::new(),
            rbac: Default::default(),
            kinds: Default::default(),
            metrics: Default::default(),
            registry: Default::default(),
            resource_samples: Default::default(),
        })
    }

    async fn send(
        app: &axum::Router,
        method: &str,
        uri: &str,
        content_type: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", content_type)
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(req))
            .await
            .expect("request timed out")
            .unwrap();
        let code = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn post(app: &axum::Router, body: Value) -> (StatusCode, Value) {
        send(
            app,
            "POST",
            "/api/v1/namespaces/default/services",
            "application/json",
            body,
        )
        .await
    }

    async fn with_namespace(dir: &Path) -> axum::Router {
        let app = open(dir);
        let (code, _) = send(
            &app,
            "POST",
            "/api/v1/namespaces",
            "application/json",
            json!({"metadata": {"name": "default"}}),
        )
        .await;
        assert!(
            code == StatusCode::CREATED || code == StatusCode::CONFLICT,
            "{code}"
        );
        app
    }

    fn service(name: &str, spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
    }

    fn cause(status: &Value) -> (String, String) {
        let c = &status["details"]["causes"][0];
        (
            c["field"].as_str().unwrap_or_default().to_string(),
            c["message"].as_str().unwrap_or_default().to_string(),
        )
    }

    #[tokio::test]
    async fn allocation_errors_are_422_with_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let app = with_namespace(dir.path()).await;

        let (code, s) = post(
            &app,
            service(
                "out",
                json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}),
            ),
        )
        .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
        assert_eq!(s["reason"], "Invalid");
        assert_eq!(cause(&s).0, "spec.clusterIP");

        let (code, s) = post(
            &app,
            service(
                "a",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
            ),
        )
        .await;
        assert_eq!(code, StatusCode::CREATED, "{s}");
        let (code, s) = post(
            &app,
            service(
                "b",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
            ),
        )
        .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
        assert_eq!(
            s["message"],
            "Service \"b\" is invalid: spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
        );
        assert_eq!(cause(&s).0, "spec.ports[0].nodePort");

        let (code, s) = post(&app, service("c", json!({"ports": [{"port": 70000}]}))).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
        assert_eq!(cause(&s).0, "spec.ports[0].port");
    }

    #[tokio::test]
    async fn updates_keep_addresses_and_refuse_changing_them() {
        let dir = tempfile::tempdir().unwrap();
        let app = with_namespace(dir.path()).await;
        let (code, created) = post(
            &app,
            service(
                "web",
                json!({"type": "NodePort", "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80}]}),
            ),
        )
        .await;
        assert_eq!(code, StatusCode::CREATED, "{created}");
        let ip = created["spec"]["clusterIP"].as_str().unwrap().to_string();
        let node_port = created["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!(ip.starts_with("127.250."), "{ip}");
        assert!((30000..=32767).contains(&node_port));

        // A PUT without the allocated values (what a client that never read them sends).
        let (code, updated) = send(
            &app,
            "PUT",
            "/api/v1/namespaces/default/services/web",
            "application/json",
            service(
                "web",
                json!({"type": "NodePort", "selector": {"app": "web2"},
                "ports": [{"name": "http", "port": 80}]}),
            ),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{updated}");
        assert_eq!(updated["spec"]["clusterIP"], ip.as_str());
        assert_eq!(updated["spec"]["ports"][0]["nodePort"], node_port);
        assert_eq!(updated["spec"]["selector"]["app"], "web2");

        let (code, s) = send(
            &app,
            "PATCH",
            "/api/v1/namespaces/default/services/web",
            "application/merge-patch+json",
            json!({"spec": {"clusterIP": "127.250.9.9", "clusterIPs": ["127.250.9.9"]}}),
        )
        .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
        let (field, message) = cause(&s);
        assert_eq!(field, "spec.clusterIP");
        assert!(message.ends_with("field is immutable"), "{message}");

        // The status subresource never reallocates.
        let (code, s) = send(
            &app,
            "PATCH",
            "/api/v1/namespaces/default/services/web/status",
            "application/merge-patch+json",
            json!({"status": {"loadBalancer": {}}}),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{s}");
        assert_eq!(s["spec"]["clusterIP"], ip.as_str());
    }

    #[tokio::test]
    async fn addresses_stay_unique_across_a_store_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen_ips = std::collections::HashSet::new();
        let mut seen_ports = std::collections::HashSet::new();
        for round in 0..2 {
            let app = with_namespace(dir.path()).await;
            let creates = (0..10).map(|i| {
                let app = app.clone();
                async move {
                    post(
                        &app,
                        service(
                            &format!("s{round}-{i}"),
                            json!({"type": "NodePort",
                                "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}),
                        ),
                    )
                    .await
                }
            });
            for (code, s) in futures::future::join_all(creates).await {
                assert_eq!(code, StatusCode::CREATED, "{s}");
                assert!(seen_ips.insert(s["spec"]["clusterIP"].as_str().unwrap().to_string()));
                for p in s["spec"]["ports"].as_array().unwrap() {
                    assert!(seen_ports.insert(p["nodePort"].as_i64().unwrap()), "{s}");
                }
            }
            // Close the store before opening it again.
            tokio::task::spawn_blocking(move || drop(app))
                .await
                .unwrap();
        }
        assert_eq!(seen_ips.len(), 20);
        assert_eq!(seen_ports.len(), 40);

        // Asking for an address another Service got before the reopen is refused.
        let app = with_namespace(dir.path()).await;
        let held = seen_ips.iter().next().unwrap().clone();
        let (code, s) = post(
            &app,
            service("late", json!({"clusterIP": held, "ports": [{"port": 80}]})),
        )
        .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
        assert!(
            cause(&s).1.ends_with("provided IP is already allocated"),
            "{s}"
        );
    }
}
