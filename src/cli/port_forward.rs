//! `wharf port-forward TARGET [LOCAL:]REMOTE...`: listens on `127.0.0.1:LOCAL` and
//! forwards every TCP connection to a pod, until Ctrl-C.
//!
//! Why no stream through the API server (kubectl's way, over SPDY or WebSockets to the
//! kubelet): on one machine a pod's address is loopback the client can reach itself
//! (README, "Addresses without root"), so a connection goes straight to
//! `podIP:port`. Forwarding to pods on another machine needs the node tunnel, which is
//! not there yet; such addresses are simply unreachable from here.
//!
//! - `pod/NAME` (or `NAME`): REMOTE is the pod's port, a number or the name of one of its
//!   containers' ports; the pod's address is looked up once.
//! - `svc/NAME`: REMOTE is the Service's port (a number or its name). It resolves through
//!   the Service's Endpoints, read afresh for every connection, to a *ready* endpoint (in
//!   turn) and its port, so a named or renumbered `targetPort` works, and a pod that
//!   stops being ready gets no new connections.
//!
//! It prints `Forwarding from 127.0.0.1:LOCAL -> PORT` per port pair (PORT is the pod's
//! port when every endpoint has the same one, else the Service's), and `Handling
//! connection for LOCAL` per connection, as kubectl does. A LOCAL of 0 (or `:REMOTE`)
//! picks a free port.

use super::cluster::Cluster;
use anyhow::{Context, anyhow, bail};
use clap::Args;
use kube::api::GetParams;
use serde_json::Value;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wharf_control::api::kinds::resolve;

/// How long connecting to a pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct PortForwardArgs {
    /// What to forward to: pod/NAME (or NAME) or svc/NAME
    #[arg(value_name = "TYPE/NAME")]
    pub target: String,

    /// Port pairs: LOCAL:REMOTE, REMOTE (the same port locally), or :REMOTE (any free
    /// local port)
    #[arg(value_name = "[LOCAL:]REMOTE", required = true)]
    pub ports: Vec<String>,

    /// The local address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,

    /// Namespace of the target [default: the kubeconfig context's, else default]
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// What `TYPE/NAME` names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Pod(String),
    Service(String),
}

fn parse_target(arg: &str) -> anyhow::Result<Target> {
    let (kind, name) = match arg.split_once('/') {
        None => ("pod", arg),
        Some(pair) => pair,
    };
    if name.is_empty() {
        bail!("a name is required: wharf port-forward TYPE/NAME [LOCAL:]REMOTE");
    }
    match resolve(kind).map(|k| (k.group, k.kind)) {
        Some(("", "Pod")) => Ok(Target::Pod(name.to_string())),
        Some(("", "Service")) => Ok(Target::Service(name.to_string())),
        _ => bail!(
            "wharf port-forward forwards to pods and services, not to {kind:?}: use pod/NAME or svc/NAME"
        ),
    }
}

/// A remote port: a number, or the name of a port.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Remote {
    Number(i64),
    Name(String),
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Number(n) => write!(f, "{n}"),
            Remote::Name(n) => f.write_str(n),
        }
    }
}

/// `LOCAL:REMOTE`, `REMOTE` or `:REMOTE`.
fn parse_ports(arg: &str) -> anyhow::Result<(u16, Remote)> {
    let (local, remote) = match arg.split_once(':') {
        Some((l, r)) => (Some(l), r),
        None => (None, arg),
    };
    let remote = match remote.parse::<u16>() {
        Ok(0) => bail!("{arg:?}: the remote port must be between 1 and 65535"),
        Ok(n) => Remote::Number(i64::from(n)),
        Err(_)
            if !remote.is_empty()
                && remote
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            Remote::Name(remote.to_string())
        }
        Err(_) => bail!("{arg:?} is not a port pair: use LOCAL:REMOTE, REMOTE or :REMOTE"),
    };
    let local = match (local, &remote) {
        (None, Remote::Number(n)) => u16::try_from(*n).unwrap_or(0),
        (None, Remote::Name(n)) => {
            bail!("{arg:?}: a named port needs a local port: LOCAL:{n}")
        }
        (Some(""), _) => 0,
        (Some(l), _) => l
            .parse()
            .map_err(|_| anyhow!("{arg:?}: {l:?} is not a local port"))?,
    };
    Ok((local, remote))
}

/// The port of a pod's container that REMOTE names.
fn pod_port(pod: &Value, remote: &Remote) -> anyhow::Result<i64> {
    match remote {
        Remote::Number(n) => Ok(*n),
        Remote::Name(name) => pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c.get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name.as_str()))
            .and_then(|p| p.get("containerPort").and_then(Value::as_i64))
            .ok_or_else(|| anyhow!("the pod has no container port named {name:?}")),
    }
}

/// The address of a pod that runs.
fn pod_ip(pod: &Value) -> anyhow::Result<IpAddr> {
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if phase != "Running" {
        bail!("unable to forward port because pod is not running. Current status={phase}");
    }
    pod.pointer("/status/podIP")
        .and_then(Value::as_str)
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| anyhow!("the pod has no address yet"))
}

/// The Service port REMOTE names (pure): its name and number.
fn service_port(svc: &Value, remote: &Remote) -> anyhow::Result<(String, i64)> {
    let ports = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let found = ports.iter().find(|p| match remote {
        Remote::Number(n) => p.get("port").and_then(Value::as_i64) == Some(*n),
        Remote::Name(name) => p.get("name").and_then(Value::as_str) == Some(name.as_str()),
    });
    let Some(p) = found else {
        let name = svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        bail!("service {name} does not have a service port {remote}");
    };
    Ok((
        p.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        p.get("port").and_then(Value::as_i64).unwrap_or(0),
    ))
}

/// The ready `ip:port` endpoints of the Service port named `port_name` (pure).
fn ready_endpoints(endpoints: &Value, port_name: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for subset in endpoints
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let port = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == port_name)
            .and_then(|p| p.get("port").and_then(Value::as_i64))
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else {
            continue;
        };
        for address in subset
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(ip) = address
                .get("ip")
                .and_then(Value::as_str)
                .and_then(|ip| ip.parse::<IpAddr>().ok())
            {
                out.push(SocketAddr::new(ip, port));
            }
        }
    }
    out
}

/// Where one forwarded port's connections go.
enum Backend {
    Pod(SocketAddr),
    Service {
        namespace: String,
        name: String,
        port_name: String,
        next: AtomicUsize,
    },
}

impl Backend {
    /// The address for the next connection.
    async fn pick(&self, cluster: &Cluster) -> anyhow::Result<SocketAddr> {
        match self {
            Backend::Pod(addr) => Ok(*addr),
            Backend::Service {
                namespace,
                name,
                port_name,
                next,
            } => {
                let endpoints = get(cluster, "ep", namespace, name).await?;
                let ready = ready_endpoints(&endpoints, port_name);
                if ready.is_empty() {
                    bail!("service {name} has no ready endpoints");
                }
                let i = next.fetch_add(1, Ordering::Relaxed) % ready.len();
                Ok(ready[i])
            }
        }
    }
}

async fn get(cluster: &Cluster, kind: &str, namespace: &str, name: &str) -> anyhow::Result<Value> {
    let kind = resolve(kind).ok_or_else(|| anyhow!("the kind {kind} is not served"))?;
    cluster
        .send(
            cluster
                .at(kind, Some(namespace))
                .get(name, &GetParams::default()),
        )
        .await
        .map_err(|e| cluster.explain(e))
}

/// Resolves a port pair to its backend, and the port to print after `->`.
async fn backend(
    cluster: &Cluster,
    target: &Target,
    namespace: &str,
    remote: &Remote,
) -> anyhow::Result<(Backend, String)> {
    match target {
        Target::Pod(name) => {
            let pod = get(cluster, "pod", namespace, name).await?;
            let port = pod_port(&pod, remote)?;
            let port = u16::try_from(port).map_err(|_| anyhow!("{port} is not a port"))?;
            Ok((
                Backend::Pod(SocketAddr::new(pod_ip(&pod)?, port)),
                port.to_string(),
            ))
        }
        Target::Service(name) => {
            let svc = get(cluster, "svc", namespace, name).await?;
            let (port_name, port) = service_port(&svc, remote)?;
            // The pod port, as kubectl shows it, when the endpoints agree on one.
            let endpoints = get(cluster, "ep", namespace, name).await.ok();
            let pod_ports: std::collections::BTreeSet<u16> = endpoints
                .map(|e| ready_endpoints(&e, &port_name))
                .unwrap_or_default()
                .iter()
                .map(SocketAddr::port)
                .collect();
            let shown = match pod_ports.iter().collect::<Vec<_>>().as_slice() {
                [one] => one.to_string(),
                _ => port.to_string(),
            };
            Ok((
                Backend::Service {
                    namespace: namespace.to_string(),
                    name: name.clone(),
                    port_name,
                    next: AtomicUsize::new(0),
                },
                shown,
            ))
        }
    }
}

/// Runs until Ctrl-C (or SIGTERM); the cluster is shared by the connections.
pub async fn run(cluster: Cluster, args: PortForwardArgs) -> anyhow::Result<()> {
    let target = parse_target(&args.target)?;
    let pairs = args
        .ports
        .iter()
        .map(|p| parse_ports(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.namespace.clone());
    let cluster = Arc::new(cluster);
    let shutdown = CancellationToken::new();
    let mut listeners = JoinSet::new();
    for (local, remote) in pairs {
        let (backend, shown) = backend(&cluster, &target, &namespace, &remote).await?;
        let addr = SocketAddr::new(args.address, local);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("unable to listen on {addr}"))?;
        let bound = listener.local_addr().context("the listener's address")?;
        println!("Forwarding from {bound} -> {shown}");
        listeners.spawn(serve(
            listener,
            Arc::new(backend),
            cluster.clone(),
            shutdown.clone(),
        ));
    }
    std::io::stdout().flush().ok();
    tokio::select! {
        signal = super::control::shutdown_signal() => signal.context("listening for signals")?,
        Some(_) = listeners.join_next() => {}
    }
    shutdown.cancel();
    while listeners.join_next().await.is_some() {}
    Ok(())
}

/// Accepts connections until `shutdown` and forwards each; open connections are closed
/// when it returns.
async fn serve(
    listener: TcpListener,
    backend: Arc<Backend>,
    cluster: Arc<Cluster>,
    shutdown: CancellationToken,
) {
    let local = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    // Nobody may be reading stdout any more; that is no reason to stop.
                    let mut out = std::io::stdout();
                    let _ = writeln!(out, "Handling connection for {local}").and_then(|()| out.flush());
                    connections.spawn(forward(client, backend.clone(), cluster.clone()));
                }
                Err(e) => {
                    eprintln!("error: accepting a connection on port {local}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    connections.shutdown().await;
}

async fn forward(mut client: TcpStream, backend: Arc<Backend>, cluster: Arc<Cluster>) {
    let result = async {
        let addr = backend.pick(&cluster).await?;
        let mut upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr} timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        client.set_nodelay(true).ok();
        upstream.set_nodelay(true).ok();
        tokio::io::copy_bidirectional(&mut client, &mut upstream)
            .await
            .with_context(|| format!("forwarding to {addr}"))?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        // kubectl's wording for a connection that could not be forwarded.
        eprintln!("E port-forward: an error occurred forwarding: {e:#}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_are_pods_or_services() {
        assert_eq!(parse_target("web").unwrap(), Target::Pod("web".into()));
        assert_eq!(parse_target("po/web").unwrap(), Target::Pod("web".into()));
        assert_eq!(
            parse_target("svc/web").unwrap(),
            Target::Service("web".into())
        );
        assert_eq!(
            parse_target("services/web").unwrap(),
            Target::Service("web".into())
        );
        assert!(parse_target("deploy/web").is_err());
        assert!(parse_target("svc/").is_err());
    }

    #[test]
    fn port_pairs_parse_like_kubectl() {
        assert_eq!(parse_ports("8080:80").unwrap(), (8080, Remote::Number(80)));
        assert_eq!(parse_ports("80").unwrap(), (80, Remote::Number(80)));
        assert_eq!(parse_ports(":80").unwrap(), (0, Remote::Number(80)));
        assert_eq!(
            parse_ports("9000:http").unwrap(),
            (9000, Remote::Name("http".into()))
        );
        assert!(parse_ports("http").is_err());
        assert!(parse_ports("8080:0").is_err());
        assert!(parse_ports("x:80").is_err());
        assert!(parse_ports("8080:a b").is_err());
    }

    #[test]
    fn service_ports_resolve_through_ready_endpoints() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "admin", "port": 9000}]}});
        assert_eq!(
            service_port(&svc, &Remote::Number(80)).unwrap(),
            ("http".into(), 80)
        );
        assert_eq!(
            service_port(&svc, &Remote::Name("admin".into())).unwrap(),
            ("admin".into(), 9000)
        );
        let err = service_port(&svc, &Remote::Number(81)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "service web does not have a service port 81"
        );

        let ep = json!({"subsets": [
            {"addresses": [{"ip": "127.64.0.2"}, {"ip": "127.64.0.3"}],
             "notReadyAddresses": [{"ip": "127.64.0.4"}],
             "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9000}]},
            {"addresses": [{"ip": "127.65.0.2"}], "ports": [{"name": "http", "port": 8081}]}]});
        let ready: Vec<String> = ready_endpoints(&ep, "http")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            ready,
            ["127.64.0.2:8080", "127.64.0.3:8080", "127.65.0.2:8081"]
        );
        assert_eq!(ready_endpoints(&ep, "admin").len(), 2);
        let unnamed = json!({"subsets": [{"addresses": [{"ip": "127.64.0.2"}],
            "ports": [{"port": 8080}]}]});
        assert_eq!(ready_endpoints(&unnamed, "").len(), 1);
    }

    #[test]
    fn pod_ports_by_number_or_name() {
        let pod = json!({"spec": {"containers": [{"name": "a", "ports": [
            {"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": "127.64.0.2"}});
        assert_eq!(pod_port(&pod, &Remote::Name("http".into())).unwrap(), 8080);
        assert_eq!(pod_port(&pod, &Remote::Number(81)).unwrap(), 81);
        assert!(pod_port(&pod, &Remote::Name("grpc".into())).is_err());
        assert_eq!(pod_ip(&pod).unwrap().to_string(), "127.64.0.2");
        let pending = json!({"status": {"phase": "Pending"}});
        assert!(pod_ip(&pending).is_err());
    }
}
