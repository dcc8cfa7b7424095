//! One place assembles a node: [`start`] creates the wasm runtime and starts the kubelet
//! ([`crate::agent`]), the node server ([`crate::daemon`]), the Service proxy
//! ([`crate::proxy`]), the cluster DNS ([`crate::dns`]) and the node tunnel
//! ([`crate::tunnel`]), wiring each to what it shares with the others. The CLI (`wharf
//! node`, `wharf up`), benchmarks and tests only fill in a [`NodeConfig`].
//!
//! Sockets are bound before the Node is registered, because their addresses (the node
//! server's port, the tunnel's address) go into the Node object.

use crate::agent::addresses::{self, PodAddresses};
use crate::agent::node_object::{self, NodeFacts};
use crate::agent::{self, AgentConfig, AgentError, EVENT_SOURCE, NodeContext};
use crate::reachability::ApiHealth;
use crate::tunnel::client::Dialer;
use crate::tunnel::metrics::TunnelMetrics;
use crate::{daemon, dns, proxy, tunnel};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wharf_control::events::Recorder;
use wharf_runtime::{PoolingConfig, Runtime, RuntimeConfig, RuntimeError};

/// How to run a node: the kubelet's settings (which include the proxy's, the DNS's and the
/// tunnel's) and the wasm runtime's.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub agent: AgentConfig,
    pub runtime: RuntimeConfig,
}

impl NodeConfig {
    /// Defaults for node `name` keeping its state in `data_dir` (the runtime's in
    /// `DATA_DIR/runtime`), with an instance pool sized to the machine's memory.
    pub fn new(name: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        let agent = AgentConfig::new(name, data_dir);
        let mut runtime = RuntimeConfig::new(agent.data_dir.join("runtime"));
        // As many instance slots as the machine's memory holds (shown in the Node's
        // capacity as wharf.dev/instances).
        runtime.pooling = Some(PoolingConfig::for_memory(node_object::host_memory_bytes()));
        NodeConfig { agent, runtime }
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("starting the wasm runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("node {0} has no spec.podCIDR and no fallback pod CIDR was given")]
    NoPodCidr(String),
    #[error("pod addresses: {0}")]
    Addresses(#[from] addresses::AddressError),
    #[error("node server: {0}")]
    Daemon(#[from] daemon::DaemonError),
    #[error("node certificate: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("node tunnel: cannot listen on {addr}: {error} (--tunnel-port 0 picks a free port)")]
    Tunnel {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("starting the node: internal task failed: {0}")]
    Task(String),
}

/// A running node.
pub struct NodeHandle {
    pub node_name: String,
    /// Where the node server listens.
    pub daemon_addr: SocketAddr,
    /// Where the node tunnel listens, if it runs.
    pub tunnel_addr: Option<SocketAddr>,
    pub pod_cidr: String,
    /// Where the cluster DNS answers, if it runs.
    pub dns_addr: Option<SocketAddr>,
    runtime: Arc<Runtime>,
    tasks: JoinSet<()>,
}

impl NodeHandle {
    /// The node's wasm runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Resolves once every task of the node ended after shutdown, and then stops what the
    /// runtime still runs (waiting at most `grace` for its containers).
    pub async fn wait(mut self, grace: Duration) {
        while self.tasks.join_next().await.is_some() {}
        self.runtime.shutdown(grace).await;
    }
}

/// Assembles and starts a node: its wasm runtime, the kubelet (Node registration, Lease,
/// heartbeat, pod workers), the node server, the Service proxy, the cluster DNS and the
/// node tunnel. Everything stops when `shutdown` is cancelled; [`NodeHandle::wait`] waits
/// for that and then stops what the runtime still runs.
pub async fn start(
    config: NodeConfig,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<NodeHandle, StartError> {
    let NodeConfig {
        agent: config,
        runtime: mut runtime_config,
    } = config;
    // `registry.wharf.local` is this cluster's registry, served by the control plane.
    if let Some(registry) = &config.cluster_registry {
        runtime_config
            .registries
            .mirrors
            .entry(wharf_control::oci::RESERVED_HOST.to_owned())
            .or_insert_with(|| vec![format!("https://{}", registry.host)]);
        runtime_config
            .registries
            .ca_files
            .push(registry.ca_file.clone());
    }
    // Guests' https trusts the cluster CA too: the API server's certificate is from it.
    if let Some(ca) = &config.cluster_ca_pem {
        runtime_config.egress_ca_pems.push(ca.clone());
    }
    // Creating the runtime does blocking work (directories, the instance pool).
    let runtime = tokio::task::spawn_blocking(move || Runtime::new(runtime_config))
        .await
        .map_err(|e| StartError::Task(e.to_string()))??;
    let runtime = Arc::new(runtime);
    // The data dir holds Secret volumes, logs and image blobs: the owner's only, and what an
    // older node left group- or world-readable is fixed before any pod starts. Only what
    // the agent writes (`pods/`) is walked, never the whole dir (it may be one the user
    // chose for other things too); the runtime does the same for its own dirs.
    let data_dir = config.data_dir.clone();
    let fixed = tokio::task::spawn_blocking(move || {
        let pods = data_dir.join("pods");
        wharf_runtime::private::create_private_dir(&data_dir)
            .and_then(|()| wharf_runtime::private::create_private_dir(&pods))
            .and_then(|()| wharf_runtime::private::restrict_tree(&pods))
    })
    .await
    .map_err(std::io::Error::other)
    .flatten()
    .map_err(|error| StartError::Io {
        path: config.data_dir.clone(),
        error,
    })?;
    if fixed > 0 {
        tracing::info!(data_dir = %config.data_dir.display(), fixed, "made data dir entries owner-only");
    }
    let mut tasks = JoinSet::new();
    // The node's server is bound first: its port goes into the Node's status.
    let listener = tokio::net::TcpListener::bind(config.daemon_listen)
        .await
        .map_err(|error| daemon::DaemonError::Bind {
            addr: config.daemon_listen,
            error,
        })?;
    let daemon_addr = listener
        .local_addr()
        .map_err(|error| daemon::DaemonError::Bind {
            addr: config.daemon_listen,
            error,
        })?;
    // The DNS sockets too, so that the bound address (port 0) is known. A node whose DNS
    // address is taken by something else still runs: pods resolve Services through the
    // proxy's table, not through DNS.
    let dns_sockets = match config.dns_listen.map(dns::bind) {
        Some(Ok(sockets)) => Some(sockets),
        Some(Err(e)) => {
            tracing::warn!(node = %config.node_name, error = %e, "cluster DNS not serving on this node");
            None
        }
        None => None,
    };
    let dns_addr = dns_sockets.as_ref().map(|s| s.addr);
    // The tunnel too: its address goes into the Node's annotations.
    let tunnel_listener = match config.tunnel_port {
        Some(port) => {
            let addr = SocketAddr::new(config.address, port);
            let bound = tokio::net::TcpListener::bind(addr)
                .await
                .and_then(|l| Ok((l.local_addr()?, l)))
                .map_err(|error| StartError::Tunnel { addr, error })?;
            Some(bound)
        }
        None => None,
    };
    let tunnel_addr = tunnel_listener.as_ref().map(|(a, _)| *a);
    // The cluster's node credential: the API server's to this node's server, and every
    // node's to the others' tunnels.
    let proxy_token = daemon::proxy_token(&client).await;

    let mut facts = NodeFacts::of_host(
        &config.node_name,
        &config.address.to_string(),
        daemon_addr.port(),
        config.max_pods,
    );
    facts.tunnel = tunnel_addr;
    facts.allow_host_path = config.allow_host_path;
    facts.local_path_root = Some(
        agent::volumes::storage_root(&config.data_dir)
            .to_string_lossy()
            .into_owned(),
    );
    facts.instances = match runtime.allocator() {
        wharf_runtime::AllocatorKind::Pooling { total_instances } => Some(*total_instances),
        wharf_runtime::AllocatorKind::OnDemand { .. } => None,
    };
    let node = agent::register(&client, &facts).await?;
    let pod_cidr = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.clone())
        .or_else(|| config.fallback_pod_cidr.clone())
        .ok_or_else(|| StartError::NoPodCidr(config.node_name.clone()))?;
    facts.pod_cidr = Some(pod_cidr.clone());
    let addresses = PodAddresses::new(&pod_cidr)?;
    // The node's certificate, for the names the Node now publishes: the node server and
    // the tunnel serve TLS only, and peers' tunnels are dialed with it.
    let (ips, dns) = crate::tls::names_of(&node);
    let tls = Arc::new(
        crate::tls::NodeTls::start(
            &client,
            &config.data_dir.join("pki"),
            &config.node_name,
            config.cluster_ca_pem.as_deref(),
            ips,
            dns,
        )
        .await?,
    );
    tasks.spawn(crate::tls::renew(
        client.clone(),
        tls.clone(),
        shutdown.clone(),
    ));
    let tunnel_metrics = Arc::new(TunnelMetrics::default());
    let dialer = Arc::new(Dialer::new(
        proxy_token.as_deref(),
        Some(tls.dialer.clone()),
        tunnel_metrics.clone(),
    ));

    let pods: daemon::PodIndex = Arc::default();
    let ctx = Arc::new(NodeContext {
        config: config.clone(),
        client: client.clone(),
        runtime: runtime.clone(),
        addresses: Mutex::new(addresses),
        sockets: Arc::default(),
        metrics: Arc::new(crate::metrics::NodeMetrics::new(
            pods.clone(),
            runtime.clone(),
        )),
        pods,
        services: Arc::new(proxy::Shared::new(&config.cluster_domain)),
        events: Recorder::new(client.clone(), EVENT_SOURCE)
            .with_host(&config.node_name)
            .with_rate(config.event_rate),
        tunnel: tunnel_metrics.clone(),
        api: Arc::new(ApiHealth::new(&config.node_name)),
        shutdown: shutdown.clone(),
    });
    if let Some((_, listener)) = tunnel_listener {
        if proxy_token.is_none() {
            tracing::warn!("no node credential: the node tunnel refuses every request");
        }
        let server = tunnel::server::ServerConfig {
            credential: proxy_token.as_deref().map(Arc::from),
            pod_range: PodAddresses::new(&pod_cidr)?,
            pods: ctx.sockets.clone(),
            source: Some(config.address),
            connect_timeout: config.proxy.connect_timeout,
            tls: tls.tunnel.clone(),
        };
        tasks.spawn(tunnel::server::serve(
            listener,
            server,
            tunnel_metrics.clone(),
            shutdown.clone(),
        ));
    }
    if config.mirrors && proxy_token.is_some() {
        let mirrors = tunnel::mirror::Mirrors::new(
            dialer.clone(),
            tunnel_metrics.clone(),
            config.proxy.connect_timeout,
            shutdown.clone(),
        );
        tasks.spawn(tunnel::mirror::run(
            client.clone(),
            config.node_name.clone(),
            config.address,
            mirrors,
            ctx.api.clone(),
            shutdown.clone(),
        ));
    }
    let daemon_ctx = Arc::new(daemon::DaemonContext {
        node_name: config.node_name.clone(),
        runtime: ctx.runtime.clone(),
        pods: ctx.pods.clone(),
        services: ctx.services.clone(),
        tunnel: ctx.tunnel.clone(),
        kubelet: ctx.metrics.clone(),
        shutdown: shutdown.clone(),
    });
    tasks.spawn(daemon::serve(
        listener,
        daemon_ctx,
        proxy_token,
        tls.daemon.clone(),
    ));
    agent::spawn(&mut tasks, ctx.clone(), facts);
    // Services: one watch of Services and EndpointSlices feeds the proxy and the DNS.
    if config.proxy.enabled || dns_sockets.is_some() {
        let (snapshots_tx, snapshots) = proxy::watch::channel();
        tasks.spawn(proxy::watch::run(
            client.clone(),
            snapshots_tx,
            ctx.services.local_ready.subscribe(),
            ctx.api.clone(),
            shutdown.clone(),
        ));
        if config.proxy.enabled {
            let wake: Arc<dyn proxy::wake::Signal> = Arc::new(proxy::wake::EventSignal::new(
                Recorder::new(client.clone(), "wharf-proxy").with_host(&config.node_name),
            ));
            // Ingresses, on the node's address: the same endpoints, balancing and holding
            // for Services asleep at zero as the Service proxy, through the same dialer.
            tasks.spawn(proxy::ingress::run(
                client.clone(),
                config.proxy.clone(),
                config.address,
                proxy::ingress::Upstream {
                    client: proxy::http::client(&config.proxy, dialer.clone()),
                    signal: wake.clone(),
                },
                snapshots.clone(),
                ctx.api.clone(),
                shutdown.clone(),
            ));
            tasks.spawn(proxy::run(
                ctx.services.clone(),
                config.proxy.clone(),
                config.address,
                dialer,
                wake,
                snapshots.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(sockets) = dns_sockets {
            let dns_config = dns::DnsConfig {
                listen: sockets.addr,
                cluster_domain: config.cluster_domain.clone(),
                forward: config.dns_forward,
            };
            tasks.spawn(dns::run(
                sockets,
                dns_config,
                ctx.services.clone(),
                snapshots,
                shutdown.clone(),
            ));
        }
    }
    tracing::info!(node = %config.node_name, %daemon_addr, ?tunnel_addr, %pod_cidr, ?dns_addr, "node agent running");
    Ok(NodeHandle {
        node_name: config.node_name,
        daemon_addr,
        tunnel_addr,
        pod_cidr,
        dns_addr,
        runtime,
        tasks,
    })
}
