//! `wharf migrate --from-data-dir DIR --to-etcd URL`: copies a stopped control plane's
//! embedded store into etcd, so the cluster can run on `--store etcd` from then on.
//! Objects arrive whole; their resourceVersions become etcd's.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use wharf_control::store::{EtcdConfig, EtcdStore, FjallStore, StoreConfig, migrate};

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Data dir of the control plane to copy (stopped: its store is opened here)
    #[arg(long, value_name = "DIR")]
    from_data_dir: PathBuf,

    /// Client URLs of the etcd members to copy into, comma-separated (plain http)
    #[arg(
        long,
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        required = true
    )]
    to_etcd: Vec<String>,

    /// Key prefix of the cluster in etcd; must hold nothing yet
    #[arg(long, value_name = "PREFIX", default_value = wharf_control::store::DEFAULT_PREFIX)]
    etcd_prefix: String,

    /// How long the copied Events live in etcd (the control plane's --event-ttl)
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = super::node::parse_duration)]
    event_ttl: std::time::Duration,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let dir = args.from_data_dir.join("store");
    if !dir.exists() {
        anyhow::bail!("{}: no store to migrate", dir.display());
    }
    let config = StoreConfig::new(dir.clone());
    let from = tokio::task::spawn_blocking(move || FjallStore::open(config))
        .await?
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    let mut etcd = EtcdConfig::new(args.to_etcd.clone());
    etcd.prefix = args.etcd_prefix.clone();
    etcd.compaction_interval = None;
    let to = EtcdStore::connect(etcd)
        .await
        .with_context(|| format!("connecting to etcd at {}", args.to_etcd.join(",")))?;
    let copied = migrate::copy_all(&from, &to, args.event_ttl).await?;
    println!(
        "copied {copied} objects into etcd at {} under {}",
        args.to_etcd.join(","),
        args.etcd_prefix
    );
    Ok(())
}
