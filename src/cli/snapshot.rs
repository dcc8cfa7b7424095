//! `wharf snapshot save|restore|ls`: backups of the whole cluster state.
//!
//! `save` asks the running control plane (through the kubeconfig, as an admin) for a
//! snapshot at one revision (see `wharf_control::snapshot`), checks it and writes it
//! atomically; `restore` makes the embedded store of a data dir from one, refusing a
//! corrupt or truncated file before anything is written and a data dir that already has a
//! store; `ls` lists the snapshots of a directory with their headers.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use wharf_control::snapshot;

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Save the cluster's state now (online, at one revision) into FILE
    Save {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Make the embedded store of a data dir from a snapshot (the control plane stopped,
    /// and the old store moved away first)
    Restore {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The data dir to restore into [default: $XDG_DATA_HOME/wharf, else ~/.local/share/wharf]
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// How long the restored Events live (the control plane's --event-ttl)
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = super::node::parse_duration)]
        event_ttl: std::time::Duration,
    },
    /// List the snapshots of a directory with their revision and time
    Ls {
        /// [default: DATA_DIR/snapshots, where `wharf control --snapshot-interval` writes]
        #[arg(long, value_name = "DIR")]
        snapshot_dir: Option<PathBuf>,
    },
}

pub async fn run(kubeconfig: Option<PathBuf>, args: SnapshotArgs) -> anyhow::Result<()> {
    match args.command {
        SnapshotCommand::Save { file } => save(kubeconfig, file).await,
        SnapshotCommand::Restore {
            file,
            data_dir,
            event_ttl,
        } => {
            let data_dir = match data_dir {
                Some(d) => d,
                None => super::default_data_dir()?,
            };
            let (f, d) = (file.clone(), data_dir.clone());
            let header = tokio::task::spawn_blocking(move || snapshot::restore(&f, &d, event_ttl))
                .await?
                .with_context(|| format!("restoring {}", file.display()))?;
            println!(
                "restored {} objects at revision {} (taken {}) into {}",
                header.objects,
                header.revision,
                header.created,
                data_dir.join("store").display()
            );
            Ok(())
        }
        SnapshotCommand::Ls { snapshot_dir } => {
            let dir = match snapshot_dir {
                Some(d) => d,
                None => super::default_data_dir()?.join("snapshots"),
            };
            let d = dir.clone();
            let listed = tokio::task::spawn_blocking(move || snapshot::list(&d)).await??;
            println!(
                "{:<48} {:>12} {:<22} {:>8} {:>10}",
                "NAME", "REVISION", "CREATED", "OBJECTS", "SIZE"
            );
            for l in listed {
                let name = l
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match l.header {
                    Ok(h) => println!(
                        "{name:<48} {:>12} {:<22} {:>8} {:>10}",
                        h.revision, h.created, h.objects, l.size
                    ),
                    Err(e) => println!("{name:<48} unusable: {e}"),
                }
            }
            Ok(())
        }
    }
}

async fn save(kubeconfig: Option<PathBuf>, file: PathBuf) -> anyhow::Result<()> {
    let cluster = super::cluster::connect(kubeconfig).await?;
    let request = http::Request::get(snapshot::API_PATH)
        .body(kube::client::Body::empty())
        .context("building the request")?;
    let response = cluster
        .client()
        .send(request)
        .await
        .context("asking the control plane for a snapshot")?;
    let status = response.status();
    // The body is binary: read it raw.
    let bytes = response
        .into_body()
        .collect_bytes()
        .await
        .context("reading the snapshot")?;
    if !status.is_success() {
        anyhow::bail!(
            "the control plane answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let snap = snapshot::decode(&bytes).context("the snapshot received")?;
    let (f, b) = (file.clone(), bytes.clone());
    tokio::task::spawn_blocking(move || snapshot::write(&f, &b)).await??;
    println!(
        "saved {} objects at revision {} into {} ({} bytes)",
        snap.objects.len(),
        snap.revision,
        file.display(),
        bytes.len()
    );
    Ok(())
}
