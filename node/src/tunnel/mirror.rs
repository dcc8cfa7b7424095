//! Mirrors: remote pods made reachable at their own address on this machine.
//!
//! A pod that calls another pod's IP directly (a headless Service's DNS answer, a
//! StatefulSet peer, an address from the API) reaches it on one machine because pod
//! addresses are loopback addresses. Across machines it would not: so for every pod of a
//! node at another address, this node listens on that pod's `podIP:containerPort` on its
//! own loopback (every node has its own pod range, so the address is free here) and
//! forwards each connection through the pod's node's tunnel, naming the same address. To
//! the caller it is the pod.
//!
//! Level-triggered, decide apart from do:
//! - [`plan`] (pure) gives the mirrors to keep from a snapshot of pods and nodes: the TCP
//!   `containerPort`s of the running containers of pods whose node is at another address
//!   and publishes a tunnel. Nodes at a loopback address are on this machine by definition
//!   (loopback never leaves it): their pods are reached directly and never mirrored.
//! - [`Mirrors::reconcile`] diffs that against the listeners it holds: it stops what is no
//!   longer wanted, points kept listeners at the pod's node's current tunnel, and binds
//!   new ones (with `SO_REUSEPORT`, so the nodes of one machine share a mirror as they
//!   share Service addresses). A bind that fails with `AddrInUse` means the pod is in fact
//!   on this machine (two nodes of one machine at different non-loopback addresses): the
//!   mirror is skipped silently for that pod. Other bind failures are retried.
//! - Loops: if such a local pod does not listen on a declared port, the mirror gets the
//!   address, and the pod's node, tunneling to "its" pod, would reach the mirror again. The
//!   tunnel server connects to pods from its node's address, so a mirror refuses
//!   connections that come from the pod's own node.

use super::client::Dialer;
use super::metrics::TunnelMetrics;
use crate::proxy::listener;
use crate::proxy::listener::accept_loop;
use crate::proxy::model::NodeInfo;
use crate::proxy::route::{Route, route};
use crate::proxy::watch::backoff;
use crate::proxy::watch::{Projected, node_infos};
use crate::reachability::ApiHealth;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::watcher;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What mirrors need of a pod: where it runs, its address, and its open ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePod {
    pub uid: String,
    pub node: String,
    pub ip: IpAddr,
    /// TCP `containerPort`s of its running containers.
    pub ports: Vec<u16>,
}

impl RemotePod {
    /// A pod that has a node, an address and not ended; `None` otherwise.
    pub fn of(pod: &Pod) -> Option<RemotePod> {
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let running: Vec<&str> = status
            .container_statuses
            .iter()
            .flatten()
            .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            .map(|c| c.name.as_str())
            .collect();
        let mut ports: Vec<u16> = crate::agent::addresses::tcp_container_ports(
            spec.containers
                .iter()
                .filter(|c| running.contains(&c.name.as_str())),
        )
        .collect();
        ports.sort_unstable();
        ports.dedup();
        Some(RemotePod {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node: spec.node_name.clone()?,
            ip: status.pod_ip.as_deref()?.parse().ok()?,
            ports,
        })
    }
}

/// One mirror to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The tunnel of the pod's node.
    pub tunnel: SocketAddr,
    /// The address of the pod's node (connections from it are refused: see the module doc).
    pub node_address: IpAddr,
    /// The pod it stands for (a new pod at the same address is tried afresh).
    pub uid: String,
}

/// The mirrors this node should hold (pure): see the module doc.
pub fn plan<'a>(
    pods: impl IntoIterator<Item = &'a RemotePod>,
    nodes: &BTreeMap<String, NodeInfo>,
    own_node: &str,
    own_address: IpAddr,
) -> BTreeMap<SocketAddr, Desired> {
    let mut out = BTreeMap::new();
    for pod in pods {
        if pod.node == own_node {
            continue;
        }
        let Some(node) = nodes.get(&pod.node) else {
            continue;
        };
        let Some(node_address) = node.address.filter(|a| !a.is_loopback()) else {
            continue;
        };
        let Route::Tunnel(tunnel) = route(own_address, Some(node_address), node.tunnel) else {
            continue;
        };
        for port in &pod.ports {
            out.insert(
                SocketAddr::new(pod.ip, *port),
                Desired {
                    tunnel,
                    node_address,
                    uid: pod.uid.clone(),
                },
            );
        }
    }
    out
}

/// Where a listening mirror forwards to; changed in place when the node's tunnel moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    tunnel: SocketAddr,
    node_address: IpAddr,
}

/// What this node holds for one mirrored address.
enum State {
    Listening {
        target: Arc<RwLock<Target>>,
        stop: CancellationToken,
    },
    /// The pod is on this machine: nothing to do while it is the same pod.
    Local { uid: String },
    /// Could not bind; retried.
    Failed { error: String },
}

/// The executor: the mirrors' listeners and their connections.
pub struct Mirrors {
    states: BTreeMap<SocketAddr, State>,
    dialer: Arc<Dialer>,
    metrics: Arc<TunnelMetrics>,
    connect_timeout: Duration,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
}

impl Mirrors {
    pub fn new(
        dialer: Arc<Dialer>,
        metrics: Arc<TunnelMetrics>,
        connect_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Mirrors {
            states: BTreeMap::new(),
            dialer,
            metrics,
            connect_timeout,
            tasks: JoinSet::new(),
            shutdown,
        }
    }

    /// Makes the held mirrors match `desired`.
    pub fn reconcile(&mut self, desired: &BTreeMap<SocketAddr, Desired>) {
        self.states.retain(|addr, state| {
            let keep = desired.contains_key(addr);
            if !keep && let State::Listening { stop, .. } = state {
                tracing::info!(pod = %addr, "no longer mirroring remote pod");
                stop.cancel();
            }
            keep
        });
        for (addr, want) in desired {
            let target = Target {
                tunnel: want.tunnel,
                node_address: want.node_address,
            };
            match self.states.get(addr) {
                Some(State::Listening { target: cell, .. }) => {
                    *cell.write().unwrap_or_else(PoisonError::into_inner) = target;
                    continue;
                }
                Some(State::Local { uid }) if *uid == want.uid => continue,
                _ => {}
            }
            let state = match listener::bind_tcp(*addr) {
                Ok(l) => {
                    let target = Arc::new(RwLock::new(target));
                    let stop = self.shutdown.child_token();
                    self.tasks.spawn(serve(
                        l,
                        *addr,
                        target.clone(),
                        self.dialer.clone(),
                        self.metrics.clone(),
                        self.connect_timeout,
                        stop.clone(),
                        self.shutdown.clone(),
                    ));
                    tracing::info!(pod = %addr, tunnel = %want.tunnel, "mirroring remote pod through its node's tunnel");
                    State::Listening { target, stop }
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tracing::debug!(pod = %addr, "pod address taken on this machine: the pod is here, no mirror");
                    State::Local {
                        uid: want.uid.clone(),
                    }
                }
                Err(e) => {
                    let error = e.to_string();
                    let logged = matches!(self.states.get(addr), Some(State::Failed { error: old, .. }) if *old == error);
                    if !logged {
                        tracing::warn!(pod = %addr, %error, "cannot mirror remote pod; will retry");
                    }
                    State::Failed { error }
                }
            };
            self.states.insert(*addr, state);
        }
        let count = |f: fn(&State) -> bool| self.states.values().filter(|s| f(s)).count();
        self.metrics.set_mirrors(
            count(|s| matches!(s, State::Listening { .. })),
            count(|s| matches!(s, State::Local { .. })),
            count(|s| matches!(s, State::Failed { .. })),
        );
    }

    fn has_failed(&self) -> bool {
        self.states
            .values()
            .any(|s| matches!(s, State::Failed { .. }))
    }

    /// The addresses listened on now.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.states
            .iter()
            .filter(|(_, s)| matches!(s, State::Listening { .. }))
            .map(|(a, _)| *a)
            .collect()
    }

    /// Stops every mirror and waits for their connections to end (with the node).
    pub async fn stop(mut self) {
        for state in self.states.values() {
            if let State::Listening { stop, .. } = state {
                stop.cancel();
            }
        }
        while self.tasks.join_next().await.is_some() {}
    }
}

/// One mirror's accept loop: every connection goes through the pod's node's tunnel.
#[allow(clippy::too_many_arguments)]
async fn serve(
    listener: TcpListener,
    pod: SocketAddr,
    target: Arc<RwLock<Target>>,
    dialer: Arc<Dialer>,
    metrics: Arc<TunnelMetrics>,
    connect_timeout: Duration,
    stop: CancellationToken,
    shutdown: CancellationToken,
) {
    accept_loop(listener, "mirror", stop, |inbound, peer| {
        let Target {
            tunnel,
            node_address,
        } = *target.read().unwrap_or_else(PoisonError::into_inner);
        if peer.ip() == node_address {
            // The pod's own node reaching for its pod: the pod is on this machine and does
            // not listen on this port (module doc).
            tracing::debug!(%pod, "refusing a connection from the pod's own node");
            return None;
        }
        metrics.mirror_accepted();
        Some(forward(
            inbound,
            pod,
            tunnel,
            dialer.clone(),
            connect_timeout,
            shutdown.clone(),
        ))
    })
    .await
}

async fn forward(
    mut inbound: TcpStream,
    pod: SocketAddr,
    tunnel: SocketAddr,
    dialer: Arc<Dialer>,
    connect_timeout: Duration,
    shutdown: CancellationToken,
) {
    let _ = inbound.set_nodelay(true);
    let mut upstream =
        match tokio::time::timeout(connect_timeout, dialer.through(tunnel, pod)).await {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => {
                tracing::debug!(%pod, error = %e, "mirrored connection failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%pod, %tunnel, "mirrored connection timed out");
                return;
            }
        };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut inbound, &mut upstream) => {
            if let Err(e) = copied {
                tracing::debug!(%pod, error = %e, "mirrored connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {}
    }
}

fn pod_key(pod: &Pod) -> Option<String> {
    Some(format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref()?
    ))
}

/// Watches every pod and node and keeps the mirrors until shutdown.
pub async fn run(
    client: kube::Client,
    own_node: String,
    own_address: IpAddr,
    mut mirrors: Mirrors,
    health: Arc<ApiHealth>,
    shutdown: CancellationToken,
) {
    let pods = watcher::watcher(Api::<Pod>::all(client.clone()), watcher::Config::default());
    let nodes = watcher::watcher(Api::<Node>::all(client), watcher::Config::default());
    let mut pods = std::pin::pin!(pods);
    let mut nodes = std::pin::pin!(nodes);
    let mut pod_view: Projected<Pod, RemotePod> = Projected::new(pod_key, RemotePod::of);
    let mut node_view = node_infos();
    let mut retry = tokio::time::interval(Duration::from_secs(5));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        let changed = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = pods.next() => match e {
                Some(Ok(e)) => { health.ok(); failures = 0; pod_view.apply(e) }
                Some(Err(e)) => { backoff("pod watch for mirrors", e, &health, &mut failures, &shutdown).await; false }
                None => break,
            },
            e = nodes.next() => match e {
                Some(Ok(e)) => { health.ok(); failures = 0; node_view.apply(e) }
                Some(Err(e)) => { backoff("node watch for mirrors", e, &health, &mut failures, &shutdown).await; false }
                None => break,
            },
            _ = retry.tick(), if mirrors.has_failed() => true,
        };
        if changed && pod_view.synced && node_view.synced {
            let desired = plan(
                pod_view.items.values(),
                &node_view.items,
                &own_node,
                own_address,
            );
            mirrors.reconcile(&desired);
        }
    }
    mirrors.stop().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::agent::addresses::{PodAddresses, PodSockets};
    use crate::tunnel::server::{ServerConfig, serve as serve_tunnel};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pod(uid: &str, node: &str, ip: &str, ports: &[u16]) -> RemotePod {
        RemotePod {
            uid: uid.into(),
            node: node.into(),
            ip: ip.parse().unwrap(),
            ports: ports.to_vec(),
        }
    }

    fn info(address: &str, tunnel: Option<&str>) -> NodeInfo {
        NodeInfo {
            address: Some(address.parse().unwrap()),
            tunnel: tunnel.map(|t| t.parse().unwrap()),
            pod_range: None,
        }
    }

    #[test]
    fn pods_are_projected_with_their_running_tcp_ports() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "a", "uid": "u1"},
            "spec": {"nodeName": "n2", "containers": [
                {"name": "app", "ports": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}]},
                {"name": "side", "ports": [{"containerPort": 9000}]},
                {"name": "dead", "ports": [{"containerPort": 7000}]},
            ]},
            "status": {"phase": "Running", "podIP": "127.65.0.4", "containerStatuses": [
                {"name": "app", "ready": true, "restartCount": 0, "image": "", "imageID": "", "state": {"running": {}}},
                {"name": "side", "ready": true, "restartCount": 0, "image": "", "imageID": "", "state": {"running": {}}},
                {"name": "dead", "ready": false, "restartCount": 1, "image": "", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            ]},
        }))
        .unwrap();
        assert_eq!(
            RemotePod::of(&p),
            Some(pod("u1", "n2", "127.65.0.4", &[8080, 9000]))
        );
        let mut ended = p.clone();
        ended.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(RemotePod::of(&ended), None);
        let mut pending = p;
        pending.status.as_mut().unwrap().pod_ip = None;
        assert_eq!(RemotePod::of(&pending), None);
    }

    #[test]
    fn plan_mirrors_pods_of_nodes_on_other_machines() {
        let nodes: BTreeMap<String, NodeInfo> = [
            ("me".to_string(), info("10.0.0.1", Some("10.0.0.1:10251"))),
            (
                "same-address".to_string(),
                info("10.0.0.1", Some("10.0.0.1:20000")),
            ),
            (
                "remote".to_string(),
                info("10.0.0.2", Some("10.0.0.2:10251")),
            ),
            ("no-tunnel".to_string(), info("10.0.0.3", None)),
            (
                "loopback".to_string(),
                info("127.0.0.2", Some("127.0.0.2:10251")),
            ),
        ]
        .into();
        let pods = [
            pod("a", "me", "127.64.0.2", &[80]),
            pod("b", "same-address", "127.65.0.2", &[80]),
            pod("c", "remote", "127.66.0.2", &[80, 9090]),
            pod("d", "no-tunnel", "127.67.0.2", &[80]),
            pod("e", "loopback", "127.68.0.2", &[80]),
            pod("f", "unknown", "127.69.0.2", &[80]),
        ];
        let desired = plan(&pods, &nodes, "me", "10.0.0.1".parse().unwrap());
        let want = |port| {
            (
                SocketAddr::new("127.66.0.2".parse().unwrap(), port),
                Desired {
                    tunnel: "10.0.0.2:10251".parse().unwrap(),
                    node_address: "10.0.0.2".parse().unwrap(),
                    uid: "c".into(),
                },
            )
        };
        assert_eq!(desired, BTreeMap::from([want(80), want(9090)]));
    }

    /// A stand-in for a remote node's tunnel: answers one CONNECT with 200 and then acts
    /// as the pod (echoes four bytes back after `pod:`); sends each request head it got.
    async fn fake_tunnel(
        tasks: &mut JoinSet<()>,
        cluster: &crate::tls::testing::Cluster,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let tls = tokio_rustls::TlsAcceptor::from(cluster.tunnel_server("remote", "127.0.0.1"));
        tasks.spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let Ok(mut s) = tls.accept(s).await else {
                    continue;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read_exact(&mut byte).await.is_ok() {
                    head.push(byte[0]);
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).await.is_ok() {
                    let _ = s.write_all(&[b"pod:".as_slice(), &buf].concat()).await;
                }
            }
        });
        (addr, rx)
    }

    fn mirrors(
        credential: &str,
        cluster: &crate::tls::testing::Cluster,
        shutdown: &CancellationToken,
    ) -> (Mirrors, Arc<TunnelMetrics>) {
        let metrics = Arc::new(TunnelMetrics::default());
        let dialer = Arc::new(Dialer::new(
            Some(credential),
            Some(cluster.dialer("peer")),
            metrics.clone(),
        ));
        let m = Mirrors::new(
            dialer,
            metrics.clone(),
            Duration::from_secs(5),
            shutdown.clone(),
        );
        (m, metrics)
    }

    /// The executor with real sockets: a mirror forwards through the pod's node's tunnel,
    /// naming the pod's address; a taken address is skipped as local; what leaves the plan
    /// is released.
    #[tokio::test]
    async fn mirrors_forward_through_the_tunnel_and_skip_local_pods() {
        let mut tasks = JoinSet::new();
        let cluster = crate::tls::testing::Cluster::new();
        let (tunnel, mut heads) = fake_tunnel(&mut tasks, &cluster).await;
        let shutdown = CancellationToken::new();
        let (mut mirrors, metrics) = mirrors("secret", &cluster, &shutdown);
        // A free address of a "remote" pod range, and one a local pod holds.
        let remote = {
            let probe = TcpListener::bind("127.73.0.6:0").await.unwrap();
            probe.local_addr().unwrap()
        };
        let local_pod = TcpListener::bind("127.73.0.5:0").await.unwrap();
        let local = local_pod.local_addr().unwrap();
        let want = |uid: &str| Desired {
            tunnel,
            node_address: "10.9.9.9".parse().unwrap(),
            uid: uid.into(),
        };
        mirrors.reconcile(&BTreeMap::from([(remote, want("r")), (local, want("l"))]));
        assert_eq!(mirrors.listening(), vec![remote]);
        let text = metrics.render();
        assert!(
            text.contains("wharf_tunnel_mirrors{state=\"listening\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wharf_tunnel_mirrors{state=\"local\"} 1"),
            "{text}"
        );

        let mut c = TcpStream::connect(remote).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut answer = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&answer, b"pod:ping");
        let head = heads.recv().await.unwrap();
        assert!(
            head.starts_with(&format!("CONNECT {remote} HTTP/1.1\r\n")),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-authorization: bearer secret"),
            "{head}"
        );
        assert_eq!(metrics.dials(true), 1);

        // The same local pod again: still skipped, no new bind attempt needed.
        mirrors.reconcile(&BTreeMap::from([(remote, want("r")), (local, want("l"))]));
        assert_eq!(mirrors.listening(), vec![remote]);
        drop(local_pod);

        // Out of the plan: released (the address can be bound again).
        mirrors.reconcile(&BTreeMap::new());
        assert!(mirrors.listening().is_empty());
        tokio::time::timeout(Duration::from_secs(5), async {
            while listener::bind_tcp(remote).is_err() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        shutdown.cancel();
        mirrors.stop().await;
        tasks.abort_all();
    }

    /// A pod on this machine that does not listen on a declared port: the mirror gets its
    /// address, and the pod's node's tunnel (connecting from the node's address) reaches
    /// the mirror again. The mirror refuses that, so the connection ends instead of looping.
    #[tokio::test]
    async fn a_mirror_refuses_its_pods_own_node() {
        let mut tasks = JoinSet::new();
        let node_address: IpAddr = "127.0.0.9".parse().unwrap();
        let cluster = crate::tls::testing::Cluster::new();
        let tunnel_listener = TcpListener::bind("127.0.0.9:0").await.unwrap();
        let tunnel = tunnel_listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server_metrics = Arc::new(TunnelMetrics::default());
        let pod_sockets = Arc::new(PodSockets::default());
        tasks.spawn(serve_tunnel(
            tunnel_listener,
            ServerConfig {
                credential: Some(Arc::from("secret")),
                pod_range: PodAddresses::new("127.74.0.0/16").unwrap(),
                pods: pod_sockets.clone(),
                source: Some(node_address),
                connect_timeout: Duration::from_secs(2),
                tls: cluster.tunnel_server("tunnel", "127.0.0.9"),
            },
            server_metrics.clone(),
            shutdown.clone(),
        ));
        let (mut mirrors, metrics) = mirrors("secret", &cluster, &shutdown);
        let pod = TcpListener::bind("127.74.0.5:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        // The pod declares the port it does not listen on.
        pod_sockets.set([127, 74, 0, 5].into(), [pod.port()]);
        let desired = Desired {
            tunnel,
            node_address,
            uid: "p".into(),
        };
        mirrors.reconcile(&BTreeMap::from([(pod, desired)]));
        assert_eq!(mirrors.listening(), vec![pod]);
        let mut c = TcpStream::connect(pod).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
            .await
            .expect("the connection ends instead of looping")
            .unwrap();
        assert!(buf.is_empty());
        // One connection from the caller; the tunnel's own connection was refused.
        let text = metrics.render();
        assert!(
            text.contains("wharf_tunnel_mirror_connections_total 1\n"),
            "{text}"
        );
        assert_eq!(
            server_metrics.connections(crate::tunnel::metrics::Outcome::Ok),
            1
        );
        shutdown.cancel();
        mirrors.stop().await;
        tasks.abort_all();
    }
}
