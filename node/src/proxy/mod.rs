//! The node proxy: wharf's kube-proxy, in user space.
//!
//! Kubernetes gives every Service a virtual IP that no machine owns and programs every
//! node's kernel (iptables, IPVS) to rewrite connections to it. wharf runs without root,
//! so it cannot touch the kernel's tables; instead every Service port gets a real socket on
//! its cluster IP (cluster IPs come from a loopback range, 127.250.0.0/16 by default, which
//! any user may bind on Linux) and a user-space load balancer behind it. `nodePort`s get a
//! socket on the node's address.
//!
//! How it fits together:
//! - [`watch`] keeps one watch of Services and EndpointSlices and publishes a
//!   [`model::Snapshot`] per change (the DNS reads the same snapshots);
//! - [`run`] reconciles the snapshot into listeners and endpoint sets: [`plan`] (pure) says
//!   which ports should be served where with which endpoints; existing listeners stay
//!   bound, and endpoint changes go through the [`discover::EndpointSet`] seam, so they
//!   never cut connections or requests in flight;
//! - each port's traffic goes through a tower stack, [`tcp`] (L4, per connection) or
//!   [`http`] (L7, per request, for HTTP ports), built layer by layer: metrics, load
//!   shedding, a concurrency limit, retries on another endpoint, the [`balance`]r (power of
//!   two choices, or round robin by annotation), connect timeouts;
//! - endpoints on nodes at other addresses (other machines) are dialed through their
//!   node's tunnel: [`route`] (pure) computes the table from the snapshot, and every
//!   connect goes through the node's [`Dialer`], which consults it;
//! - [`resolve`] gives pods the same view by name, for their outgoing HTTP requests;
//! - [`metrics`] counts per port, served at the node's `/metrics`; the control plane's
//!   request-driven autoscaler reads its in-flight counts there;
//! - [`wake`] holds the HTTP requests of a Service scaled to zero until it has an
//!   endpoint, and asks for the wake-up; [`local`] lets such a Service reach a pod of
//!   this node as soon as the node knows it Ready, before its EndpointSlice says so.
//!
//! Several nodes on one machine share every address with `SO_REUSEPORT` ([`listener`]).
//! Ports below 1024 need `net.ipv4.ip_unprivileged_port_start` lowered (or root): where
//! the bind is refused, the proxy listens on a free port of the cluster IP instead, logs
//! it, and pods still reach the Service by name (their resolver knows the real port).

pub mod balance;
pub mod discover;
pub mod http;
pub mod ingress;
pub mod listener;
pub mod local;
pub mod metrics;
pub mod model;
pub mod resolve;
pub mod retry;
pub mod route;
pub mod tcp;
pub mod wake;
pub mod watch;

use crate::tunnel::client::Dialer;
use balance::PolicyCell;
use discover::EndpointSet;
use listener::Handler;
use metrics::{Metrics, PortStats};
use model::{ClusterIp, LbPolicy, ServiceKey, Snapshot};
use resolve::{PodResolver, ServiceTable, SharedTable, Target};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How the proxy serves.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Whether this node runs a proxy at all.
    pub enabled: bool,
    /// How long a connect to an endpoint may take before it counts as failed.
    pub connect_timeout: Duration,
    /// Tries per connection (L4) or idempotent request (L7), each on another endpoint.
    pub connect_attempts: usize,
    /// Connections (L4) or requests (L7) in flight per Service port; beyond, new ones are
    /// shed.
    pub max_in_flight: usize,
    /// How long a request to a Service scaled to zero waits for an endpoint before it is
    /// answered 503 (`--proxy-hold-timeout`).
    pub hold_timeout: Duration,
    /// Requests that may wait at once per Service port for a Service scaled to zero
    /// (`--proxy-max-held`); beyond, 503 at once.
    pub max_held: usize,
    /// The node port Ingresses are served on over HTTP (`--ingress-http-port`); 0: none.
    pub ingress_http_port: u16,
    /// The node port Ingresses are served on over HTTPS (`--ingress-https-port`); 0: none.
    pub ingress_https_port: u16,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            enabled: true,
            connect_timeout: Duration::from_secs(2),
            connect_attempts: 3,
            max_in_flight: 10_000,
            hold_timeout: Duration::from_secs(30),
            max_held: 1_000,
            ingress_http_port: 8080,
            ingress_https_port: 8443,
        }
    }
}

/// What the proxy shares with the rest of the node: counters for `/metrics`, and the
/// service table pods resolve names from.
#[derive(Debug)]
pub struct Shared {
    pub metrics: Metrics,
    pub table: Arc<SharedTable>,
    pub cluster_domain: Arc<str>,
    /// The pods of this node its pod workers know Ready ([`local`]).
    pub local_ready: local::LocalReady,
}

impl Shared {
    pub fn new(cluster_domain: &str) -> Self {
        Shared {
            metrics: Metrics::default(),
            table: Arc::new(SharedTable::default()),
            cluster_domain: Arc::from(cluster_domain.trim_matches('.')),
            local_ready: local::LocalReady::default(),
        }
    }

    /// The resolver for the containers of a pod in `namespace`.
    pub fn resolver(&self, namespace: &str) -> Arc<dyn wharf_runtime::ServiceResolver> {
        Arc::new(PodResolver::new(
            namespace,
            self.cluster_domain.clone(),
            self.table.clone(),
        ))
    }
}

/// One Service port the proxy should serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPort {
    pub http: bool,
    pub policy: LbPolicy,
    /// Where to listen: `clusterIP:port`, `nodeAddress:nodePort` for NodePort and
    /// LoadBalancer Services, and `nodeAddress:port` for a LoadBalancer Service whose
    /// ingress names this node's address (`controllers::servicelb` in the control plane).
    pub binds: Vec<SocketAddr>,
    /// Where new traffic goes ([`model::routable`]).
    pub endpoints: Vec<SocketAddr>,
    /// The Deployment to wake when a request finds no endpoint (HTTP ports of Services
    /// marked with [`model::WAKE_ANNOTATION`]).
    pub wake: Option<String>,
}

/// The ports to serve, from a snapshot (pure). Only TCP ports of Services with a cluster
/// IP are proxied; headless and ExternalName Services are DNS only.
pub fn plan(snapshot: &Snapshot, node_address: IpAddr) -> BTreeMap<(ServiceKey, u16), DesiredPort> {
    let mut out = BTreeMap::new();
    for svc in snapshot.services.values() {
        let ClusterIp::Ip(ip) = svc.cluster_ip else {
            continue;
        };
        let node_ports = matches!(svc.service_type.as_str(), "NodePort" | "LoadBalancer");
        let load_balanced =
            svc.service_type == "LoadBalancer" && svc.lb_ingress.contains(&node_address);
        for port in svc
            .ports
            .iter()
            .filter(|p| p.protocol.eq_ignore_ascii_case("TCP"))
        {
            let mut binds = vec![SocketAddr::new(ip, port.port)];
            if let (true, Some(np)) = (node_ports, port.node_port) {
                binds.push(SocketAddr::new(node_address, np));
            }
            if load_balanced {
                binds.push(SocketAddr::new(node_address, port.port));
            }
            out.insert(
                (svc.key.clone(), port.port),
                DesiredPort {
                    http: port.http,
                    policy: svc.policy,
                    binds,
                    endpoints: model::routable(svc.backends_of(&port.name)),
                    wake: svc.wake.clone().filter(|_| port.http),
                },
            );
        }
    }
    out
}

/// A listening socket of a port, or why it could not be bound.
enum Listening {
    Bound {
        local: SocketAddr,
        stop: CancellationToken,
    },
    Failed {
        error: String,
    },
}

/// A served Service port.
struct PortState {
    http: bool,
    endpoints: Arc<EndpointSet>,
    policy: Arc<PolicyCell>,
    stats: Arc<PortStats>,
    wake: Arc<wake::PortWake>,
    handler: Handler,
    listeners: HashMap<SocketAddr, Listening>,
}

impl PortState {
    fn stop(&self) {
        for l in self.listeners.values() {
            if let Listening::Bound { stop, .. } = l {
                stop.cancel();
            }
        }
    }
}

struct Proxy {
    shared: Arc<Shared>,
    config: ProxyConfig,
    node_address: IpAddr,
    dialer: Arc<Dialer>,
    client: http::HttpClient,
    signal: Arc<dyn wake::Signal>,
    ports: BTreeMap<(ServiceKey, u16), PortState>,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
}

impl Proxy {
    fn reconcile(&mut self, snapshot: &Snapshot) {
        let desired = plan(snapshot, self.node_address);
        // Routes first: new endpoints on other machines are dialed through their tunnel
        // from their first connection.
        if self
            .dialer
            .set_routes(route::routes(snapshot, self.node_address))
        {
            tracing::debug!("tunnel routes changed");
        }
        // Ports that went away, or switched between L4 and L7: stop accepting. Their
        // connections finish on their own.
        self.ports.retain(|key, st| {
            let keep = desired.get(key).is_some_and(|d| d.http == st.http);
            if !keep {
                tracing::info!(service = %key.0, port = key.1, "no longer proxying service port");
                st.stop();
            }
            keep
        });
        for (key, want) in desired {
            let st = match self.ports.entry(key.clone()) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let endpoints = Arc::new(EndpointSet::new());
                    let policy = Arc::new(PolicyCell::new(want.policy));
                    let stats = self.shared.metrics.port(&key.0, key.1);
                    let wake = Arc::new(wake::PortWake::new(
                        key.0.clone(),
                        key.1,
                        endpoints.clone(),
                        self.signal.clone(),
                        self.config.hold_timeout,
                        self.config.max_held,
                    ));
                    let handler = if want.http {
                        Handler::Http(http::stack(
                            endpoints.clone(),
                            policy.clone(),
                            stats.clone(),
                            self.client.clone(),
                            &self.config,
                            Some(wake.clone()),
                        ))
                    } else {
                        Handler::Tcp(tcp::stack(
                            endpoints.clone(),
                            policy.clone(),
                            stats.clone(),
                            &self.config,
                            self.dialer.clone(),
                            self.shutdown.clone(),
                        ))
                    };
                    e.insert(PortState {
                        http: want.http,
                        endpoints,
                        policy,
                        stats,
                        wake,
                        handler,
                        listeners: HashMap::new(),
                    })
                }
            };
            st.policy.set(want.policy);
            st.wake.set_workload(want.wake.clone());
            let change = st.endpoints.reset(want.endpoints.iter().copied());
            if !change.is_empty() {
                tracing::debug!(service = %key.0, port = key.1, added = ?change.added, removed = ?change.removed, "endpoints changed");
            }
            st.stats.set_endpoints(st.endpoints.len());
            st.listeners.retain(|addr, l| {
                let keep = want.binds.contains(addr);
                if let (false, Listening::Bound { stop, .. }) = (keep, &*l) {
                    stop.cancel();
                }
                keep
            });
            for addr in &want.binds {
                if matches!(st.listeners.get(addr), Some(Listening::Bound { .. })) {
                    continue;
                }
                let listening = bind_port(
                    &key,
                    *addr,
                    st.http,
                    &st.handler,
                    &mut self.tasks,
                    &self.shutdown,
                    st.listeners.get(addr),
                );
                st.listeners.insert(*addr, listening);
            }
        }
        let ports = &self.ports;
        self.shared
            .metrics
            .retain(|k, p| ports.contains_key(&(k.clone(), p)));
        self.shared.table.set(self.table(snapshot));
        self.shared
            .metrics
            .set_refused_endpoints(snapshot.refused.values().map(Vec::len).sum());
    }

    /// The name table pods resolve from.
    fn table(&self, snapshot: &Snapshot) -> ServiceTable {
        let mut table = ServiceTable::default();
        for svc in snapshot.services.values() {
            match svc.cluster_ip {
                ClusterIp::Ip(ip) => {
                    let mut ports = HashMap::new();
                    for p in &svc.ports {
                        let vip = SocketAddr::new(ip, p.port);
                        if let Some(st) = self.ports.get(&(svc.key.clone(), p.port))
                            && let Some(Listening::Bound { local, .. }) = st.listeners.get(&vip)
                        {
                            ports.insert(p.port, *local);
                            table.by_cluster_ip.insert(vip, *local);
                        }
                    }
                    table
                        .services
                        .insert(svc.key.clone(), Target::Proxied(ports));
                }
                ClusterIp::Headless => {
                    let ips = svc.published_pods().map(|b| b.addr.ip()).collect();
                    table.services.insert(svc.key.clone(), Target::Pods(ips));
                }
                ClusterIp::Unset => {}
            }
        }
        table
    }

    fn has_failed_listeners(&self) -> bool {
        self.ports.values().any(|p| {
            p.listeners
                .values()
                .any(|l| matches!(l, Listening::Failed { .. }))
        })
    }
}

/// Binds one listener of a port and starts its accept loop. A refused privileged port
/// falls back to a free port on the same address.
fn bind_port(
    key: &(ServiceKey, u16),
    addr: SocketAddr,
    http: bool,
    handler: &Handler,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
    previous: Option<&Listening>,
) -> Listening {
    let bound = match listener::bind_tcp(addr) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && addr.port() < 1024 => {
            listener::bind_tcp(SocketAddr::new(addr.ip(), 0)).inspect(|l| {
                if let Ok(local) = l.local_addr() {
                    tracing::warn!(service = %key.0, port = addr.port(), %local,
                        "ports below 1024 need root or net.ipv4.ip_unprivileged_port_start; \
                         listening on another port of the cluster IP (pods still reach the \
                         service by name)");
                }
            })
        }
        other => other,
    };
    match bound.and_then(|l| Ok((l.local_addr()?, l))) {
        Ok((local, l)) => {
            let stop = shutdown.child_token();
            tasks.spawn(listener::serve(
                l,
                handler.clone(),
                stop.clone(),
                shutdown.clone(),
            ));
            tracing::info!(service = %key.0, port = key.1, %local, mode = if http { "http" } else { "tcp" }, "proxying service port");
            Listening::Bound { local, stop }
        }
        Err(e) => {
            let error = e.to_string();
            // Logged once per distinct error; retried on every change and every few seconds.
            if !matches!(previous, Some(Listening::Failed { error: old }) if *old == error) {
                tracing::warn!(service = %key.0, port = key.1, %addr, %error, "cannot listen for service port; will retry");
            }
            Listening::Failed { error }
        }
    }
}

/// Serves the Services of every snapshot until shutdown, connecting to endpoints through
/// `dialer` (directly, or through node tunnels); `signal` asks for the wake-up of a
/// Service scaled to zero.
pub async fn run(
    shared: Arc<Shared>,
    config: ProxyConfig,
    node_address: IpAddr,
    dialer: Arc<Dialer>,
    signal: Arc<dyn wake::Signal>,
    mut snapshots: watch::SnapshotRx,
    shutdown: CancellationToken,
) {
    let mut proxy = Proxy {
        shared,
        client: http::client(&config, dialer.clone()),
        signal,
        config,
        node_address,
        dialer,
        ports: BTreeMap::new(),
        tasks: JoinSet::new(),
        shutdown: shutdown.clone(),
    };
    let mut retry = tokio::time::interval(Duration::from_secs(5));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if snapshot.synced {
            proxy.reconcile(&snapshot);
        }
        let failed = proxy.has_failed_listeners();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = snapshots.changed() => if changed.is_err() { break },
            _ = retry.tick(), if failed => {}
            Some(_) = proxy.tasks.join_next(), if !proxy.tasks.is_empty() => {
                // A listener ended (it was stopped); nothing to reconcile, but the loop
                // re-reads the snapshot, which is cheap.
            }
        }
    }
    for st in proxy.ports.values() {
        st.stop();
    }
    while proxy.tasks.join_next().await.is_some() {}
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    fn svc(name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": name}, "spec": spec,
        }))
        .unwrap()
    }

    fn slice(service: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": service,
                         "labels": {model::SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    #[test]
    fn plan_serves_cluster_ips_and_node_ports() {
        let services = [
            svc(
                "web",
                serde_json::json!({"type": "NodePort", "clusterIP": "127.250.0.5", "ports": [
                    {"name": "http", "port": 80, "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                ]}),
            ),
            svc(
                "db",
                serde_json::json!({"clusterIP": "None", "ports": [{"port": 5432}]}),
            ),
            svc("pending", serde_json::json!({"ports": [{"port": 80}]})),
        ];
        let slices = [slice(
            "web",
            serde_json::json!([
                {"addresses": ["127.64.0.2"], "conditions": {"ready": true}},
                {"addresses": ["127.64.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            ]),
        )];
        let snap = model::build(1, &services, &slices);
        let node: IpAddr = "127.0.0.1".parse().unwrap();
        let plan = plan(&snap, node);
        assert_eq!(plan.len(), 1, "{plan:?}");
        let web = &plan[&(ServiceKey::new("default", "web"), 80)];
        assert!(web.http);
        assert_eq!(
            web.binds,
            vec![
                "127.250.0.5:80".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:30080".parse().unwrap()
            ]
        );
        // The terminating endpoint gets nothing new while a ready one exists.
        assert_eq!(web.endpoints, vec!["127.64.0.2:8080".parse().unwrap()]);
    }

    /// A Service marked for wake-ups holds on its HTTP ports only (an L4 connection is
    /// not held).
    #[test]
    fn plan_holds_http_ports_of_services_marked_for_wake_ups() {
        let mut marked = svc(
            "web",
            serde_json::json!({"clusterIP": "127.250.0.9", "ports": [
                {"name": "http", "port": 80},
                {"name": "raw", "port": 81},
            ]}),
        );
        marked.metadata.annotations = Some(
            [(model::WAKE_ANNOTATION.to_string(), "web".to_string())]
                .into_iter()
                .collect(),
        );
        let plain = svc(
            "other",
            serde_json::json!({"clusterIP": "127.250.0.10", "ports": [{"name": "http", "port": 80}]}),
        );
        let snap = model::build(1, [&marked, &plain], []);
        let plan = plan(&snap, "127.0.0.1".parse().unwrap());
        let web = ServiceKey::new("default", "web");
        assert_eq!(plan[&(web.clone(), 80)].wake.as_deref(), Some("web"));
        assert_eq!(plan[&(web, 81)].wake, None);
        assert_eq!(plan[&(ServiceKey::new("default", "other"), 80)].wake, None);
    }

    /// A LoadBalancer Service is served on `nodeAddress:port` once its ingress names the
    /// node's address, and not before (the port may be another Service's).
    #[test]
    fn plan_serves_load_balancer_ports_on_the_node_address_of_the_ingress() {
        let lb = |name: &str, ip: &str, ingress: serde_json::Value| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "default", "name": name},
                "spec": {"type": "LoadBalancer", "clusterIP": ip,
                         "ports": [{"name": "http", "port": 8088, "nodePort": 30088}]},
                "status": {"loadBalancer": ingress},
            }))
            .unwrap()
        };
        let services = [
            lb(
                "web",
                "127.250.0.7",
                serde_json::json!({"ingress": [{"ip": "127.0.0.1"}]}),
            ),
            lb("pending", "127.250.0.8", serde_json::json!({})),
        ];
        let snap = model::build(1, &services, &[]);
        let plan = plan(&snap, "127.0.0.1".parse().unwrap());
        assert_eq!(
            plan[&(ServiceKey::new("default", "web"), 8088)].binds,
            vec![
                "127.250.0.7:8088".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:30088".parse().unwrap(),
                "127.0.0.1:8088".parse().unwrap(),
            ]
        );
        assert_eq!(
            plan[&(ServiceKey::new("default", "pending"), 8088)].binds,
            vec![
                "127.250.0.8:8088".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:30088".parse().unwrap(),
            ]
        );
    }

    /// A hand-written slice naming the host's loopback (or any address outside every
    /// node's pod range) is not proxied to, nor published by DNS, and is counted.
    #[test]
    fn endpoints_outside_every_pod_range_are_ignored() {
        let services = [
            svc(
                "host",
                serde_json::json!({"clusterIP": "127.250.0.6", "ports": [{"name": "http", "port": 80}]}),
            ),
            svc(
                "db",
                serde_json::json!({"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}),
            ),
        ];
        let slices = [
            slice(
                "host",
                serde_json::json!([
                    {"addresses": ["127.0.0.1"]},
                    {"addresses": ["127.64.0.2"]},
                    {"addresses": ["127.66.0.2"]},
                    {"addresses": ["10.1.2.3"]},
                ]),
            ),
            slice("db", serde_json::json!([{"addresses": ["127.0.0.1"]}])),
        ];
        let mut snap = model::build(1, &services, &slices);
        for (name, cidr) in [("node-1", "127.64.0.0/16"), ("node-2", "127.66.0.0/16")] {
            let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(
                serde_json::json!({"metadata": {"name": name}, "spec": {"podCIDR": cidr}}),
            )
            .unwrap();
            let (name, info) = model::NodeInfo::of(&node).unwrap();
            snap.nodes.insert(name, info);
        }
        model::confine_to_pod_ranges(&mut snap);
        let plan = plan(&snap, "127.0.0.1".parse().unwrap());
        let host = &plan[&(ServiceKey::new("default", "host"), 80)];
        assert_eq!(
            host.endpoints,
            vec![
                "127.64.0.2:8080".parse::<SocketAddr>().unwrap(),
                "127.66.0.2:8080".parse().unwrap()
            ]
        );
        let db = &snap.services[&ServiceKey::new("default", "db")];
        assert_eq!(db.published_pods().count(), 0);
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            snap.refused[&ServiceKey::new("default", "host")],
            vec![IpAddr::from([10, 1, 2, 3]), loopback]
        );
        assert_eq!(
            snap.refused[&ServiceKey::new("default", "db")],
            vec![loopback]
        );
    }

    /// The whole proxy against a snapshot channel: it binds the cluster IP, balances over
    /// real backends, follows endpoint changes, and publishes the pods' name table.
    #[tokio::test]
    async fn run_follows_snapshots() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = backend.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            while let Ok((mut s, _)) = backend.accept().await {
                let _ = s.write_all(b"hi").await;
            }
        });
        // A cluster IP and port no other test uses.
        let vip: IpAddr = "127.250.213.17".parse().unwrap();
        let service = svc(
            "echo",
            serde_json::json!({"clusterIP": vip.to_string(), "ports": [{"port": 4567}]}),
        );
        let make_slice = |ip: &str| -> EndpointSlice {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "default", "name": "echo",
                             "labels": {model::SERVICE_NAME_LABEL: "echo"}},
                "addressType": "IPv4",
                "ports": [{"port": backend_addr.port()}],
                "endpoints": [{"addresses": [ip]}],
            }))
            .unwrap()
        };
        let (tx, rx) = watch::channel();
        let shared = Arc::new(Shared::new("cluster.local"));
        let shutdown = CancellationToken::new();
        let proxy = tokio::spawn(run(
            shared.clone(),
            ProxyConfig::default(),
            "127.0.0.1".parse().unwrap(),
            Arc::new(Dialer::direct()),
            Arc::new(wake::NoSignal),
            rx,
            shutdown.clone(),
        ));
        tx.send_replace(Arc::new(model::build(
            1,
            [&service],
            [&make_slice("127.0.0.1")],
        )));
        let resolver = shared.resolver("default");
        let listen = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(a) = resolver.resolve("echo", 4567) {
                    return a;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(listen, SocketAddr::new(vip, 4567));
        let mut c = tokio::net::TcpStream::connect(listen).await.unwrap();
        let mut buf = [0u8; 2];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        // The endpoint goes away: no traffic, the listener stays.
        tx.send_replace(Arc::new(model::build(
            2,
            [&service],
            [&make_slice("127.0.0.2")],
        )));
        let stats = shared
            .metrics
            .port(&ServiceKey::new("default", "echo"), 4567);
        let text = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let text = shared.metrics.render();
                if stats.requests() == 1 && text.contains("wharf_proxy_endpoints{namespace=\"default\",service=\"echo\",port=\"4567\"} 1") {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        assert!(text.contains("wharf_proxy_requests_total"));
        // The Service goes away: the name no longer resolves and the port is released.
        tx.send_replace(Arc::new(model::build(3, [], [])));
        tokio::time::timeout(Duration::from_secs(5), async {
            while resolver.resolve("echo", 4567).is_some() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        // Shutdown ends the proxy and everything it started.
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), proxy)
            .await
            .unwrap()
            .unwrap();
        tasks.abort_all();
    }
}
