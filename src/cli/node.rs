//! `wharf node`: one node agent joining a cluster, and what `wharf up` shares with it.
//!
//! A node needs a kubeconfig (a node token from `wharf token create` is enough; the admin
//! credential works too), a name, a data dir for its images, compiled modules, logs and
//! pod volumes, and the address the control plane and other nodes reach it at. Nodes on
//! other machines reach its pods through its tunnel port on that address.

use super::control::shutdown_signal;
use super::node_credential;
use anyhow::Context;
use clap::Args;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wharf_node::agent::{AgentConfig, ClusterRegistry};
use wharf_node::{NodeConfig, NodeHandle};
use wharf_runtime::gc::ImageGcPolicy;
use wharf_runtime::{LocalImages, Registries, RegistryHost};

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
    /// A control plane member's URL (repeatable, or comma-separated): the node talks to
    /// one and fails over to the next when it cannot be reached; the kubeconfig still
    /// gives the credentials and the CA [default: the kubeconfig's server]
    #[arg(long = "server", value_name = "URL[,URL...]", value_delimiter = ',')]
    servers: Vec<String>,
    #[command(flatten)]
    services: ServiceArgs,
    #[command(flatten)]
    images: ImageArgs,
}

/// Which local files pods may name as images (shared by `wharf node` and `wharf up`).
#[derive(Debug, Clone, Args)]
pub struct ImageArgs {
    /// A directory whose files pods may name as images (repeatable); local paths
    /// elsewhere are refused
    #[arg(long = "image-dir", value_name = "DIR")]
    image_dirs: Vec<PathBuf>,
    /// Let pods name any file this node's user can read as an image
    #[arg(long, conflicts_with = "image_dirs")]
    allow_any_local_image: bool,
    /// Registry mirrors, credentials, CAs and plain-HTTP endpoints (a registries.yaml)
    #[arg(long, value_name = "FILE")]
    registries: Option<PathBuf>,
    /// Longest an image pull may take (fetch and compile) before it fails with ErrImagePull
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    image_pull_timeout: Duration,
    /// Disk usage (percent of the file system holding the data dir) at or above which
    /// unused images are removed, least recently used first; 100 turns it off
    #[arg(long, value_name = "PERCENT", default_value_t = 85)]
    image_gc_high_threshold: u8,
    /// Disk usage (percent) image garbage collection brings the disk back to
    #[arg(long, value_name = "PERCENT", default_value_t = 80)]
    image_gc_low_threshold: u8,
    /// Images first seen less than this long ago are never removed
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    image_minimum_gc_age: Duration,
    /// Remove images unused for longer than this, whatever the disk usage (0s: never)
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    image_maximum_gc_age: Duration,
    /// How often image garbage collection looks
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    image_gc_period: Duration,
}

impl ImageArgs {
    /// The policy: `--allow-any-local-image` allows any file, `--image-dir`s only files in
    /// them; with neither, `any_by_default` decides (`wharf up`, where the node's user is
    /// the cluster's user, allows any; a node joining a cluster allows none).
    pub fn local_images(&self, any_by_default: bool) -> LocalImages {
        if self.allow_any_local_image || (any_by_default && self.image_dirs.is_empty()) {
            LocalImages::Any
        } else {
            LocalImages::Within(self.image_dirs.clone())
        }
    }
}

/// The `--registries` file, in the shape of a k3s `registries.yaml`:
///
/// ```yaml
/// mirrors:
///   docker.io:
///     endpoint: ["https://mirror.example.com", "http://10.0.0.5:5000"]
/// configs:
///   mirror.example.com:
///     auth: {username: node, password: secret}   # or auth: BASE64(user:password)
///     tls: {ca_file: /etc/wharf/ca.pem, insecure_skip_verify: false}
/// ```
///
/// An `http://` endpoint is the only way a registry is reached without TLS (list a
/// registry as its own `http://` endpoint to pull from it over plain HTTP). CA files are
/// trusted, besides the system's roots, for every registry.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistriesFile {
    #[serde(default)]
    mirrors: std::collections::BTreeMap<String, MirrorEntry>,
    #[serde(default)]
    configs: std::collections::BTreeMap<String, HostEntry>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorEntry {
    #[serde(default)]
    endpoint: Vec<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    #[serde(default)]
    auth: Option<AuthEntry>,
    #[serde(default)]
    tls: Option<TlsEntry>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthEntry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsEntry {
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

/// Parses a `--registries` file's text (relative CA paths against `base`).
fn parse_registries(text: &str, base: &std::path::Path) -> anyhow::Result<Registries> {
    use base64::Engine as _;
    let options = serde_saphyr::options! { strict_booleans: true };
    let file: RegistriesFile = serde_saphyr::from_str_with_options(text, options)?;
    let mut out = Registries::default();
    for (registry, mirror) in file.mirrors {
        for endpoint in &mirror.endpoint {
            if let Some((scheme, _)) = endpoint.split_once("://")
                && scheme != "http"
                && scheme != "https"
            {
                anyhow::bail!("mirrors.{registry}.endpoint: {endpoint:?}: use http:// or https://");
            }
        }
        out.mirrors.insert(registry, mirror.endpoint);
    }
    for (host, entry) in file.configs {
        let mut h = RegistryHost::default();
        if let Some(auth) = entry.auth {
            h.username = auth.username;
            h.password = auth.password;
            if h.username.is_none()
                && let Some(b64) = auth.auth
            {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .with_context(|| format!("configs.{host}.auth.auth is not base64"))?;
                let decoded = String::from_utf8_lossy(&decoded).into_owned();
                let (u, p) = decoded.split_once(':').with_context(|| {
                    format!("configs.{host}.auth.auth is not base64 of USER:PASSWORD")
                })?;
                h.username = Some(u.to_string());
                h.password = Some(p.to_string());
            }
        }
        if let Some(tls) = entry.tls {
            h.insecure_skip_verify = tls.insecure_skip_verify;
            if let Some(ca) = tls.ca_file {
                out.ca_files.push(base.join(ca));
            }
        }
        out.hosts.insert(host, h);
    }
    Ok(out)
}

impl ImageArgs {
    /// Sets what these flags say in a node's runtime configuration (the local-image policy
    /// is passed separately: `wharf up` and `wharf node` default it differently).
    pub fn apply(&self, node: &mut NodeConfig, local_images: LocalImages) -> anyhow::Result<()> {
        node.runtime.local_images = local_images;
        node.runtime.registries = self.registries()?;
        node.runtime.pull_timeout = self.image_pull_timeout;
        node.agent.image_gc = self.image_gc()?;
        if self.image_gc_period.is_zero() {
            anyhow::bail!("--image-gc-period must be more than 0s");
        }
        node.agent.image_gc_period = self.image_gc_period;
        Ok(())
    }

    /// The image garbage collection policy these flags give, checked.
    pub fn image_gc(&self) -> anyhow::Result<ImageGcPolicy> {
        let policy = ImageGcPolicy {
            high_threshold_percent: self.image_gc_high_threshold,
            low_threshold_percent: self.image_gc_low_threshold,
            minimum_age: self.image_minimum_gc_age,
            maximum_age: Some(self.image_maximum_gc_age).filter(|d| !d.is_zero()),
        };
        policy.validate().map_err(anyhow::Error::msg)?;
        Ok(policy)
    }

    /// The node's registry configuration: the `--registries` file, or none.
    pub fn registries(&self) -> anyhow::Result<Registries> {
        let Some(path) = &self.registries else {
            return Ok(Registries::default());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        parse_registries(&text, base).with_context(|| format!("in {}", path.display()))
    }
}

/// How a node's image policy reads in its start-up lines.
pub fn local_images_note(images: &LocalImages) -> String {
    match images {
        LocalImages::Any => "pods may name any local file this user can read as an image".into(),
        LocalImages::Within(dirs) if dirs.is_empty() => {
            "local image paths refused (--image-dir DIR allows a directory)".into()
        }
        LocalImages::Within(dirs) => {
            let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            format!("local images only from {}", dirs.join(", "))
        }
    }
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
    /// The node port Ingresses (class `wharf`) are served on over HTTP, on the node's
    /// address (nodes on one machine share it); 0 turns it off
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    ingress_http_port: u16,
    /// The node port Ingresses are served on over HTTPS (certificates from their TLS
    /// Secrets, by SNI); 0 turns it off
    #[arg(long, value_name = "PORT", default_value_t = 8443)]
    ingress_https_port: u16,
    /// How long the proxy holds a request to a Service scaled to zero while it wakes up,
    /// before answering 503
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    proxy_hold_timeout: Duration,
    /// Requests the proxy holds at once per Service port while it wakes up; beyond, 503
    #[arg(long, value_name = "N", default_value_t = 1000)]
    proxy_max_held: usize,
    /// The pods this node advertises it can run (its Node's `pods` capacity); by default
    /// what its open files limit and memory allow
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_pods: Option<u32>,
    /// Events the node writes per second, as the kubelet's flag; 0 writes them as they
    /// come. Beyond a thousand waiting, events are dropped
    #[arg(long, value_name = "QPS", default_value_t = 50)]
    event_qps: u32,
    /// Events the node writes at once before --event-qps paces them
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    event_burst: u32,
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
pub fn tunnel_note(agent: &NodeHandle) -> String {
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
        config.proxy.ingress_http_port = self.ingress_http_port;
        config.proxy.ingress_https_port = self.ingress_https_port;
        config.proxy.hold_timeout = self.proxy_hold_timeout;
        config.proxy.max_held = self.proxy_max_held;
        config.max_pods = self.max_pods;
        config.event_rate = wharf_control::events::EventRate {
            qps: f64::from(self.event_qps),
            burst: self.event_burst,
        };
    }
}

/// How a started node describes its DNS in the start-up line.
pub fn dns_note(agent: &NodeHandle) -> String {
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
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 10s, 500ms, 2m, 24h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "invalid duration {s:?}: use e.g. 10s, 500ms, 2m, 24h"
        )),
    }
}

/// Starts a node from its configuration (see `wharf_node::start`), naming it in errors.
pub async fn start_node(
    config: NodeConfig,
    client: kube::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<NodeHandle> {
    let name = config.agent.node_name.clone();
    wharf_node::start(config, client, shutdown)
        .await
        .with_context(|| format!("starting node {name}"))
}

/// Where a joining node finds `registry.wharf.local`: the kubeconfig's server, its CA
/// (written as a PEM file in the node's data dir, which the image pulls trust) and the
/// node's own credential.
async fn cluster_registry(
    kubeconfig: Option<PathBuf>,
    data_dir: &std::path::Path,
    node_client: &node_credential::NodeClient,
) -> anyhow::Result<ClusterRegistry> {
    use base64::Engine as _;
    let (config, path) = super::cluster::load_config(kubeconfig).await?;
    let host = config
        .cluster_url
        .authority()
        .map(|a| a.to_string())
        .with_context(|| format!("the server of kubeconfig {} names no host", path.display()))?;
    let mut pem = String::new();
    for der in config.root_cert.iter().flatten() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    let ca_file = data_dir.join("cluster-ca.crt");
    let (file, contents) = (ca_file.clone(), pem.into_bytes());
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        wharf_control::fsutil::write_private(&file, &contents)
    })
    .await?
    .with_context(|| format!("writing {}", ca_file.display()))?;
    let token = config
        .auth_info
        .token
        .as_ref()
        .map(|t| secrecy::ExposeSecret::expose_secret(t).trim().to_owned());
    Ok(ClusterRegistry {
        host,
        ca_file,
        credential: node_client.token_source(token),
    })
}

pub async fn run(kubeconfig: Option<PathBuf>, args: NodeArgs) -> anyhow::Result<()> {
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => super::default_data_dir()?.join("nodes").join(&args.name),
    };
    // With a join token, the node's own credential (obtained once, renewed before it expires).
    let node_client =
        node_credential::connect(kubeconfig.clone(), &args.servers, &args.name, &data_dir).await?;
    let cluster_registry = cluster_registry(kubeconfig, &data_dir, &node_client).await?;
    let mut node_config = NodeConfig::new(&args.name, data_dir);
    let config = &mut node_config.agent;
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
    config.cluster_ca_pem = node_client.cluster_ca_pem.clone();
    // The API server as this node's client reaches it (the cluster registry is served there).
    config.api_server = Some(cluster_registry.host.clone());
    args.services.apply(config);
    let shutdown = CancellationToken::new();
    let local_images = args.images.local_images(false);
    eprintln!("wharf node: {}", local_images_note(&local_images));
    args.images.apply(&mut node_config, local_images)?;
    node_config.agent.cluster_registry = Some(cluster_registry);
    let renewal = node_client
        .renewer
        .map(|r| tokio::spawn(r.run(shutdown.clone())));
    let started = start_node(node_config, node_client.client, shutdown.clone()).await;
    let agent = match started {
        Ok(n) => n,
        Err(e) => {
            shutdown.cancel();
            return Err(e);
        }
    };
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
    agent.wait(Duration::from_secs(5)).await;
    if let Some(renewal) = renewal {
        let _ = renewal.await;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_joining_node_reads_local_images_only_from_its_image_dirs() {
        let args = |dirs: &[&str], any: bool| ImageArgs {
            image_dirs: dirs.iter().map(PathBuf::from).collect(),
            allow_any_local_image: any,
            registries: None,
            image_pull_timeout: Duration::from_secs(300),
            image_gc_high_threshold: 85,
            image_gc_low_threshold: 80,
            image_minimum_gc_age: Duration::from_secs(120),
            image_maximum_gc_age: Duration::ZERO,
            image_gc_period: Duration::from_secs(300),
        };
        // `wharf node`: none unless flagged.
        assert_eq!(
            args(&[], false).local_images(false),
            LocalImages::Within(vec![])
        );
        assert_eq!(
            args(&["/srv/wasm"], false).local_images(false),
            LocalImages::Within(vec!["/srv/wasm".into()])
        );
        assert_eq!(args(&[], true).local_images(false), LocalImages::Any);
        // `wharf up`: any, unless restricted.
        assert_eq!(args(&[], false).local_images(true), LocalImages::Any);
        assert_eq!(
            args(&["/srv/wasm"], false).local_images(true),
            LocalImages::Within(vec!["/srv/wasm".into()])
        );
        assert!(local_images_note(&LocalImages::Within(vec![])).contains("--image-dir"));
    }

    #[test]
    fn registries_files_read_as_k3s_writes_them() {
        let text = "mirrors:\n  docker.io:\n    endpoint: [\"http://127.0.0.1:5000\"]\n\
                    configs:\n  \"127.0.0.1:5000\":\n    auth: {auth: dTpwOnc=}\n    \
                    tls: {ca_file: ca.pem, insecure_skip_verify: true}\n";
        let r = parse_registries(text, std::path::Path::new("/etc/wharf")).unwrap();
        assert_eq!(
            r.mirrors["docker.io"],
            vec!["http://127.0.0.1:5000".to_string()]
        );
        let h = &r.hosts["127.0.0.1:5000"];
        assert_eq!(h.username.as_deref(), Some("u"));
        assert_eq!(h.password.as_deref(), Some("p:w"));
        assert!(h.insecure_skip_verify);
        assert_eq!(r.ca_files, vec![PathBuf::from("/etc/wharf/ca.pem")]);
        let typo = parse_registries("mirror: {}\n", std::path::Path::new("/")).unwrap_err();
        assert!(format!("{typo:#}").contains("mirror"), "{typo:#}");
        let scheme = "mirrors:\n  r.io:\n    endpoint: [\"ftp://x\"]\n";
        assert!(parse_registries(scheme, std::path::Path::new("/")).is_err());
    }

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
