//! `wharf up`: a whole laptop cluster in one rootless process.
//!
//! The control plane and N node agents (`node-1` … `node-N`) run side by side; the nodes
//! talk to the API server through the in-process client, so nothing but the API server
//! listens on a well-known port. The data dir holds the control plane's store and
//! credentials and one directory per node, so a second `wharf up` on the same data dir
//! brings the same cluster back, pods included.

use super::control::{ServiceAccountArgs, StoreArgs, shutdown_signal};
use super::node::{
    ImageArgs, ServiceArgs, dns_note, local_images_note, parse_duration, start_node,
};
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wharf_control::ControlConfig;
use wharf_node::NodeConfig;
use wharf_node::agent::ClusterRegistry;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the cluster's state lives [default: $XDG_DATA_HOME/wharf, else ~/.local/share/wharf]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// How many nodes to run
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// Address the API server listens on (port 0 picks a free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Base of the restart back-off (doubles per restart up to 5 minutes)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    backoff: Duration,
    #[command(flatten)]
    services: ServiceArgs,
    #[command(flatten)]
    images: ImageArgs,
    #[command(flatten)]
    service_accounts: ServiceAccountArgs,
    #[command(flatten)]
    store: StoreArgs,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => super::default_data_dir()?,
    };
    let shutdown = CancellationToken::new();
    let mut config = ControlConfig::new(&data_dir);
    config.listen = args.listen;
    args.service_accounts.apply(&mut config);
    args.store.apply(&mut config)?;
    let plane = wharf_control::start(config, shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "wharf up: control plane serving on https://{}",
        plane.local_addr
    );

    // The laptop flow: the node's user is the cluster's user, so local paths work unless
    // restricted with --image-dir.
    let local_images = args.images.local_images(true);
    // Read once, before anything starts: a bad --registries file stops `wharf up` at once.
    args.images.registries()?;
    args.images.image_gc()?;
    eprintln!("wharf up: {}", local_images_note(&local_images));
    let mut nodes = Vec::new();
    for i in 1..=args.nodes.max(1) {
        let name = format!("node-{i}");
        let mut config = NodeConfig::new(&name, data_dir.join("nodes").join(&name));
        config.agent.backoff.base = args.backoff;
        config.agent.cluster_ca_pem = std::fs::read_to_string(&plane.ca_cert).ok();
        config.agent.api_server = Some(plane.local_addr.to_string());
        args.services.apply(&mut config.agent);
        args.images.apply(&mut config, local_images.clone())?;
        // The cluster registry on the control plane, pulled from with the admin token (the
        // laptop's nodes run in the control plane's process, as its user).
        let token = plane.admin_token.clone();
        config.agent.cluster_registry = Some(ClusterRegistry {
            host: plane.local_addr.to_string(),
            ca_file: plane.ca_cert.clone(),
            credential: std::sync::Arc::new(move || Some(token.clone())),
        });
        let started = start_node(config, plane.component_client(), shutdown.clone()).await;
        let agent = match started {
            Ok(n) => n,
            Err(e) => {
                shutdown.cancel();
                return Err(e);
            }
        };
        eprintln!(
            "wharf up: {} ready, pods in {}, node server on {}, {}",
            agent.node_name,
            agent.pod_cidr,
            agent.daemon_addr,
            dns_note(&agent)
        );
        nodes.push(agent);
    }
    // The line tests and scripts wait for comes last.
    println!("export KUBECONFIG={}", plane.kubeconfig.display());
    eprintln!(
        "wharf up: ready; Ctrl-C stops the cluster\n\
         wharf up: kubectl and other Kubernetes clients use the kubeconfig above, e.g.\n\
         \x20 export KUBECONFIG={}\n\
         \x20 kubectl get nodes\n\
         \x20 kubectl get pods -A -o wide",
        plane.kubeconfig.display()
    );

    shutdown_signal().await.context("listening for signals")?;
    eprintln!("wharf up: stopping");
    shutdown.cancel();
    for node in nodes {
        node.wait(Duration::from_secs(5)).await;
    }
    plane.wait().await.map_err(|e| anyhow::anyhow!("{e}"))
}
