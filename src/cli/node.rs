//! `wharf node`: one node agent joining a cluster, and what `wharf up` shares with it.
//!
//! A node needs a kubeconfig (a node token from `wharf token create` is enough; the admin
//! credential works too), a name, a data dir for its images, compiled modules, logs and
//! pod volumes, and the address the control plane and other nodes reach it at. Nodes on
//! other machines reach its pods through its tunnel port on that address.

use super::cluster;
use super::control::shutdown_signal;
use anyhow::Context;
use clap::Args;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wharf_node::agent::{self, Agent, AgentConfig};
use wharf_runtime::{PoolingConfig, Runtime, RuntimeConfig};

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node's name, unique in the cluster
    #[arg(long)]
    name: String,
    /// Where images, compiled modules, logs and pod volumes live
    /// [default: DATA_DIR/nodes/NAME]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The address the control plane and other nodes reach this node at
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
    /// Port of the node's server (container logs); 0 picks a free one
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// Port of the node tunnel on --address, through which nodes at other addresses reach
    /// this node's pods (0 picks a free one; `off` runs none) [default: 10251, or off when
    /// --address is a loopback address, which no other machine can reach]
    #[arg(long, value_name = "PORT|off", value_parser = parse_tunnel_port)]
    tunnel_port: Option<TunnelPort>,
    /// Allow pods to mount hostPath volumes
    #[arg(long)]
    allow_host_path: bool,
    /// Base of the restart back-off (doubles per restart up to 5 minutes)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    backoff: Duration,
    #[command(flatten)]
    services: ServiceArgs,
}

/// The node's Service proxy and cluster DNS (shared by `wharf node` and `wharf up`).
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// Where the cluster DNS answers, UDP and TCP (nodes on one machine share it), or `off`
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:5353", value_parser = parse_dns_listen)]
    dns_listen: DnsListen,
    /// The cluster domain: Services are SVC.NS.svc.DOMAIN
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// What the DNS does with names outside the cluster domain
    #[arg(long, value_enum, default_value_t = DnsExternal::Forward)]
    dns_external: DnsExternal,
}

/// `--tunnel-port`: a port, or no tunnel.
#[derive(Debug, Clone, Copy)]
pub struct TunnelPort(Option<u16>);

fn parse_tunnel_port(s: &str) -> Result<TunnelPort, String> {
    match s {
        "off" | "none" => Ok(TunnelPort(None)),
        _ => s.parse().map(|p| TunnelPort(Some(p))).map_err(|_| {
            format!("invalid tunnel port {s:?}: use a port number (0 picks one) or off")
        }),
    }
}

/// The tunnel port when none is given: a node at a loopback address is reachable from
/// this machine only, where pods are reachable directly, so it runs no tunnel (and two
/// such nodes on one machine do not compete for the port).
fn default_tunnel_port(address: IpAddr) -> Option<u16> {
    (!address.is_loopback()).then_some(DEFAULT_TUNNEL_PORT)
}

/// The tunnel port a node on a real address listens on by default.
pub const DEFAULT_TUNNEL_PORT: u16 = 10251;

/// How a started node describes its tunnel in the start-up line.
pub fn tunnel_note(agent: &Agent) -> String {
    match agent.tunnel_addr {
        Some(addr) => format!("tunnel on {addr}"),
        None => "no tunnel".to_string(),
    }
}

/// `--dns-listen`: an address, or none.
#[derive(Debug, Clone, Copy)]
pub struct DnsListen(Option<SocketAddr>);

fn parse_dns_listen(s: &str) -> Result<DnsListen, String> {
    match s {
        "off" | "none" | "" => Ok(DnsListen(None)),
        _ => s
            .parse()
            .map(|a| DnsListen(Some(a)))
            .map_err(|_| format!("invalid DNS address {s:?}: use IP:PORT or off")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DnsExternal {
    /// Ask the host's resolvers (/etc/resolv.conf)
    Forward,
    /// Answer REFUSED
    Refuse,
}

impl ServiceArgs {
    pub fn apply(&self, config: &mut AgentConfig) {
        config.dns_listen = self.dns_listen.0;
        config.cluster_domain = self.cluster_domain.trim_matches('.').to_string();
        config.dns_forward = self.dns_external == DnsExternal::Forward;
    }
}

/// How a started node describes its DNS in the start-up line.
pub fn dns_note(agent: &Agent) -> String {
    match agent.dns_addr {
        Some(addr) => format!("DNS on {addr}"),
        None => "no DNS".to_string(),
    }
}

/// `10s`, `500ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 10s, 500ms, 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration {s:?}: use e.g. 10s, 500ms, 2m")),
    }
}

/// Creates a node's runtime and starts its agent.
pub async fn start_node(
    config: AgentConfig,
    client: kube::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<(Agent, Arc<Runtime>)> {
    let runtime_dir = config.data_dir.join("runtime");
    let runtime = tokio::task::spawn_blocking(move || {
        let mut runtime_config = RuntimeConfig::new(runtime_dir);
        // As many instance slots as the machine's memory holds (shown in the Node's
        // capacity as wharf.dev/instances).
        runtime_config.pooling = Some(PoolingConfig::for_memory(
            wharf_node::agent::node_object::host_memory_bytes(),
        ));
        Runtime::new(runtime_config)
    })
    .await
    .context("starting the wasm runtime")?
    .context("starting the wasm runtime")?;
    let runtime = Arc::new(runtime);
    let name = config.node_name.clone();
    let agent = agent::start(config, client, runtime.clone(), shutdown)
        .await
        .with_context(|| format!("starting node {name}"))?;
    Ok((agent, runtime))
}

pub async fn run(kubeconfig: Option<PathBuf>, args: NodeArgs) -> anyhow::Result<()> {
    let cluster = cluster::connect(kubeconfig).await?;
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => super::default_data_dir()?.join("nodes").join(&args.name),
    };
    let mut config = AgentConfig::new(&args.name, data_dir);
    config.address = args.address;
    config.daemon_listen = SocketAddr::new(args.address, args.port);
    config.tunnel_port = match args.tunnel_port {
        Some(TunnelPort(port)) => port,
        None => default_tunnel_port(args.address),
    };
    // A node of its own may have peers on other machines: mirror their pods here.
    config.mirrors = true;
    config.allow_host_path = args.allow_host_path;
    config.backoff.base = args.backoff;
    args.services.apply(&mut config);
    let shutdown = CancellationToken::new();
    let (agent, runtime) = start_node(config, cluster.client(), shutdown.clone()).await?;
    eprintln!(
        "wharf node: {} running, pods in {}, node server on {}, {}, {}",
        agent.node_name,
        agent.pod_cidr,
        agent.daemon_addr,
        tunnel_note(&agent),
        dns_note(&agent)
    );
    shutdown_signal().await.context("listening for signals")?;
    tracing::info!("shutting down");
    shutdown.cancel();
    agent.wait().await;
    runtime.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_node_runs_no_tunnel_by_default() {
        assert_eq!(default_tunnel_port("127.0.0.1".parse().unwrap()), None);
        assert_eq!(default_tunnel_port("::1".parse().unwrap()), None);
        assert_eq!(
            default_tunnel_port("192.168.1.11".parse().unwrap()),
            Some(DEFAULT_TUNNEL_PORT)
        );
    }
}
