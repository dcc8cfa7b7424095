//! The `wharf` command line: `control` runs a control plane, the client commands (`apply`,
//! `get`, `delete`, `logs`, `token`) talk to one through its kubeconfig, as kubectl would.
//!
//! Client commands are generic over kinds: a kind on the command line or in a manifest is
//! resolved through the served-kinds table ([`wharf_control::api::kinds`]) and objects are
//! handled as JSON, so a new kind needs a table entry (and printer columns), not new code
//! here. Errors follow kubectl's wording so that what users know carries over: server
//! errors print as `Error from server (Reason): message`, everything else as one
//! `error: ...` line.

mod apply;
mod cluster;
mod control;
mod delete;
mod describe;
mod failover;
mod get;
mod images;
mod kubeconfig;
mod logs;
pub mod manifest;
mod merge;
mod migrate;
mod node;
mod node_cmds;
mod node_credential;
mod port_forward;
mod push;
mod rollout;
mod scale;
mod secrets_encrypt;
mod snapshot;
mod target;
mod token;
mod up;

use clap::{Parser, Subcommand};
use std::fmt;
use std::path::PathBuf;

pub use cluster::{Origin, default_data_dir, kubeconfig_path};

/// The `wharf` command line.
#[derive(Debug, Parser)]
#[command(
    name = "wharf",
    version,
    about = "A Kubernetes-style orchestrator for WebAssembly workloads"
)]
pub struct Cli {
    /// Kubeconfig of the cluster for client commands [default: first path in $KUBECONFIG,
    /// else the kubeconfig in the default data dir]
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole laptop cluster: the control plane and N nodes, until Ctrl-C
    Up(up::UpArgs),
    /// Run the control plane (API server, store) until Ctrl-C or SIGTERM
    Control(control::ControlArgs),
    /// Run a node agent that joins a cluster and runs its pods
    Node(node::NodeArgs),
    /// Copy a stopped control plane's embedded store into etcd
    Migrate(migrate::MigrateArgs),
    /// Save, restore and list snapshots of the cluster's state
    Snapshot(snapshot::SnapshotArgs),
    /// Create or update objects from manifests (YAML or JSON)
    Apply(apply::ApplyArgs),
    /// List objects, or show some by name
    Get(get::GetArgs),
    /// Delete objects by name or from manifests
    Delete(delete::DeleteArgs),
    /// Show an object in detail, with its events
    Describe(describe::DescribeArgs),
    /// Set the replicas of deployments and replica sets
    Scale(scale::ScaleArgs),
    /// Follow, list and undo deployment rollouts
    Rollout(rollout::RolloutArgs),
    /// Print the log of a pod's container
    Logs(logs::LogsArgs),
    /// Forward local ports to a pod or a service, until Ctrl-C
    PortForward(port_forward::PortForwardArgs),
    /// Create, list and delete the tokens nodes join the cluster with
    Token(token::TokenArgs),
    /// List the images the nodes hold
    Images(images::ImagesArgs),
    /// Push a .wasm to the cluster registry (registry.wharf.local/REPO:TAG)
    Push(push::PushArgs),
    /// Maintain the cluster registry's files
    Registry(push::RegistryArgs),
    /// Show or rotate the keys Secrets are encrypted at rest with
    SecretsEncrypt(secrets_encrypt::SecretsEncryptArgs),
    /// Create kubeconfigs for users: client certificates signed by the cluster CA
    Kubeconfig(kubeconfig::KubeconfigArgs),
    /// Mark a node unschedulable
    Cordon(node_cmds::CordonArgs),
    /// Mark a node schedulable again
    Uncordon(node_cmds::UncordonArgs),
    /// Cordon a node and evict its pods
    Drain(node_cmds::DrainArgs),
}

impl Command {
    /// The commands that run servers (and hold many connections open).
    pub fn is_daemon(&self) -> bool {
        matches!(
            self,
            Command::Control(_) | Command::Up(_) | Command::Node(_)
        )
    }

    /// The log filter when RUST_LOG is unset: daemons say what they do (without the
    /// store engine's chatter), clients stay quiet and report failures themselves (kube
    /// would log each failed request a second time).
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Control(_) | Command::Up(_) | Command::Node(_) => {
                "info,fjall=warn,lsm_tree=warn,cranelift_codegen=warn,wasmtime=warn,hickory_server=warn"
            }
            _ => "warn,kube_client=off",
        }
    }
}

/// Runs one command; errors are for [`error_line`].
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let kubeconfig = cli.kubeconfig;
    match cli.command {
        Command::Control(args) => control::run(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Snapshot(args) => snapshot::run(kubeconfig, args).await,
        Command::Up(args) => up::run(args).await,
        Command::Kubeconfig(args) => kubeconfig::run(args).await,
        Command::Node(args) => node::run(kubeconfig, args).await,
        Command::Apply(args) => apply::run(&cluster::connect(kubeconfig).await?, args).await,
        Command::Get(args) => get::run(&cluster::connect(kubeconfig).await?, args).await,
        Command::Delete(args) => delete::run(&cluster::connect(kubeconfig).await?, args).await,
        Command::Describe(args) => describe::run(&cluster::connect(kubeconfig).await?, args).await,
        Command::Scale(args) => scale::run(&cluster::connect(kubeconfig).await?, args).await,
        Command::Rollout(args) => rollout::run(&cluster::connect(kubeconfig).await?, args).await,
        Command::Logs(args) => logs::run(&cluster::connect(kubeconfig).await?, args).await,
        Command::PortForward(args) => {
            port_forward::run(cluster::connect(kubeconfig).await?, args).await
        }
        Command::Token(args) => {
            token::run(
                &cluster::connect(kubeconfig.clone()).await?,
                kubeconfig,
                args,
            )
            .await
        }
        Command::Push(args) => push::run(&cluster::connect(kubeconfig).await?, args).await,
        Command::Registry(args) => match args.command {
            push::RegistryCommand::Gc(gc) => push::gc(gc).await,
        },
        Command::SecretsEncrypt(args) => {
            secrets_encrypt::run(&cluster::connect(kubeconfig).await?, args).await
        }
        Command::Images(args) => images::run(&cluster::connect(kubeconfig).await?, args).await,
        Command::Cordon(args) => {
            node_cmds::cordon(&cluster::connect(kubeconfig).await?, args).await
        }
        Command::Uncordon(args) => {
            node_cmds::uncordon(&cluster::connect(kubeconfig).await?, args).await
        }
        Command::Drain(args) => node_cmds::drain(&cluster::connect(kubeconfig).await?, args).await,
    }
}

/// The line to print on stderr for an error a command returned, `None` when the command
/// already reported everything itself.
pub fn error_line(err: &anyhow::Error) -> Option<String> {
    if err.is::<Reported>() {
        None
    } else if let Some(server) = err.downcast_ref::<ServerError>() {
        Some(server.to_string())
    } else {
        // `{:#}` joins the context chain on one line: "reading x.yaml: No such file".
        Some(format!("error: {err:#}"))
    }
}

/// Prints an error of one item of a command that goes on with the others.
fn report(err: &anyhow::Error) {
    if let Some(line) = error_line(err) {
        eprintln!("{line}");
    }
}

/// Some items failed and were reported as they failed: exit 1, print nothing more.
#[derive(Debug, thiserror::Error)]
#[error("errors were reported above")]
struct Reported;

/// Ok if nothing failed, else [`Reported`].
fn finish(failed: bool) -> anyhow::Result<()> {
    if failed { Err(Reported.into()) } else { Ok(()) }
}

/// A `Status` the API server answered, printed as kubectl does:
/// `Error from server (NotFound): error when creating "app.yaml": pods "x" not found`.
#[derive(Debug)]
pub struct ServerError {
    pub reason: String,
    pub code: u16,
    pub message: String,
    /// What the client was doing, e.g. `error when creating "app.yaml"`.
    pub context: Option<String>,
}

/// Adds what the client was doing to an error: inside the `Status` line for server
/// errors (kubectl's shape), as anyhow context otherwise.
fn during(err: anyhow::Error, context: String) -> anyhow::Error {
    match err.downcast::<ServerError>() {
        Ok(server) => ServerError {
            context: Some(context),
            ..server
        }
        .into(),
        Err(err) => err.context(context),
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Error from server")?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        f.write_str(": ")?;
        if let Some(context) = &self.context {
            write!(f, "{context}: ")?;
        }
        // A message is one line here: the line is what scripts and tests match.
        f.write_str(&self.message.replace('\n', " "))
    }
}

impl std::error::Error for ServerError {}
