//! `wharf control`: one control plane in the foreground until Ctrl-C or SIGTERM.
//!
//! The started line on stderr is a contract: `wharf control: serving on https://ADDR,
//! kubeconfig PATH[, leader election as IDENTITY]`; tests start `--listen 127.0.0.1:0` and
//! read the port (and the Lease holder identity) from it.

use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use wharf_control::apiserver::audit::AuditConfig;
use wharf_control::store::{EtcdConfig, EtcdTls};
use wharf_control::{ControlConfig, ControlError, StoreBackend};

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Where the store, the admin token and the kubeconfig live
    /// [default: $XDG_DATA_HOME/wharf, else ~/.local/share/wharf]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Address the API server listens on (port 0 picks a free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,

    /// How long a node credential is valid; nodes renew theirs when a third is left
    #[arg(long, value_name = "DURATION", default_value = "8760h", value_parser = super::node::parse_duration)]
    node_credential_validity: std::time::Duration,

    /// Static user tokens, one `token,user,uid,"group1,group2"` per line (as
    /// kube-apiserver's flag); RBAC decides what those users may do
    #[arg(long, value_name = "FILE")]
    token_auth_file: Option<PathBuf>,

    #[command(flatten)]
    service_accounts: ServiceAccountArgs,

    #[command(flatten)]
    store: StoreArgs,

    #[command(flatten)]
    election: ElectionArgs,

    /// Take a snapshot of the cluster's state this often (e.g. 6h; off unless given)
    #[arg(long, value_name = "DURATION", value_parser = super::node::parse_duration)]
    snapshot_interval: Option<std::time::Duration>,
    /// How many scheduled snapshots to keep (the oldest beyond are deleted)
    #[arg(long, value_name = "N", default_value_t = 5)]
    snapshot_retention: usize,
    /// Where scheduled snapshots go [default: DATA_DIR/snapshots]
    #[arg(long, value_name = "DIR")]
    snapshot_dir: Option<PathBuf>,
}

/// Leader election of the scheduler and the controller manager (as kube-scheduler's flags).
#[derive(Debug, Args)]
pub struct ElectionArgs {
    /// Run the scheduler and the controllers only while this member holds their Lease in
    /// kube-system (members on one etcd take turns); `--leader-elect=false` runs them
    /// unconditionally
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    leader_elect: bool,
    /// How long the other members wait after the holder's last renewal before taking over
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = super::node::parse_duration)]
    leader_elect_lease_duration: std::time::Duration,
    /// How long the holder keeps trying to renew before it stops the loops
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::node::parse_duration)]
    leader_elect_renew_deadline: std::time::Duration,
    /// How often members try to take the lease and the holder renews it
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = super::node::parse_duration)]
    leader_elect_retry_period: std::time::Duration,
}

impl ElectionArgs {
    pub fn apply(&self, config: &mut ControlConfig) -> anyhow::Result<()> {
        let election = &mut config.election;
        election.enabled = self.leader_elect;
        election.lease_duration = self.leader_elect_lease_duration;
        election.renew_deadline = self.leader_elect_renew_deadline;
        election.retry_period = self.leader_elect_retry_period;
        election.validate()?;
        Ok(())
    }
}

/// ServiceAccount token settings shared by `wharf control` and `wharf up`.
#[derive(Debug, Args)]
pub struct ServiceAccountArgs {
    /// `iss` of the ServiceAccount tokens this server issues, and the audience they are
    /// for (as kube-apiserver's flag)
    #[arg(long, value_name = "URL", default_value = wharf_control::apiserver::serviceaccounts::DEFAULT_ISSUER)]
    service_account_issuer: String,

    /// The longest life a ServiceAccount token gets; longer requests get this
    #[arg(long, value_name = "DURATION", value_parser = super::node::parse_duration)]
    service_account_max_token_expiration: Option<std::time::Duration>,
}

impl ServiceAccountArgs {
    pub fn apply(&self, config: &mut ControlConfig) {
        config.service_account_issuer = self.service_account_issuer.clone();
        config.service_account_max_token_expiration = self.service_account_max_token_expiration;
    }
}

/// Store settings shared by `wharf control` and `wharf up`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// How many changes watches can resume from; older resourceVersions get 410 Gone
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    watch_history: usize,

    /// How long an Event is kept after its last write; then the store deletes it
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = super::node::parse_duration)]
    event_ttl: std::time::Duration,

    /// Encrypt Secrets at rest (AES-GCM, keys in DATA_DIR/pki/encryption-keys.json);
    /// `--secrets-encryption=false` stores them as they are
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    secrets_encryption: bool,

    /// Write an audit log (audit.k8s.io/v1 Events, JSON lines) of every request that
    /// changes state or is refused
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,

    /// Rotate the audit log when it reaches this many megabytes
    #[arg(long, value_name = "MB", default_value_t = 100)]
    audit_log_maxsize: u64,

    /// Rotated audit logs kept
    #[arg(long, value_name = "N", default_value_t = 10)]
    audit_log_maxbackup: usize,

    /// Where the cluster state lives: `fjall` (embedded, in the data dir) or `etcd`
    #[arg(long, value_enum, default_value = "fjall")]
    store: StoreKind,

    /// Client URLs of the etcd members, comma-separated (with --store etcd)
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,

    /// Key prefix of this cluster in etcd
    #[arg(long, value_name = "PREFIX", default_value = wharf_control::store::DEFAULT_PREFIX)]
    etcd_prefix: String,

    /// CA certificate that signed the etcd members' serving certificates (PEM)
    #[arg(long, value_name = "FILE")]
    etcd_cafile: Option<PathBuf>,

    /// Client certificate for etcd (PEM), with --etcd-keyfile
    #[arg(long, value_name = "FILE", requires = "etcd_keyfile")]
    etcd_certfile: Option<PathBuf>,

    /// Key of the client certificate for etcd (PEM), with --etcd-certfile
    #[arg(long, value_name = "FILE", requires = "etcd_certfile")]
    etcd_keyfile: Option<PathBuf>,

    /// How often etcd's history is compacted (to the revision of the previous round);
    /// 0 never compacts (another member or an operator does)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = super::node::parse_duration)]
    etcd_compaction_interval: std::time::Duration,

    /// How often each HorizontalPodAutoscaler is evaluated
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = super::node::parse_duration)]
    horizontal_pod_autoscaler_sync_period: std::time::Duration,

    /// How often the API server samples every node's usage for the dashboard's graphs
    /// (an hour kept in memory); 0 keeps none
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = super::node::parse_duration)]
    usage_history_interval: std::time::Duration,

    /// For tests: the CronJob controller and Job TTLs read the time from this file
    /// (RFC 3339), so a test can move it instead of waiting
    #[arg(long, value_name = "FILE", hide = true)]
    controller_clock_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    Fjall,
    Etcd,
}

impl StoreArgs {
    pub fn apply(&self, config: &mut ControlConfig) -> anyhow::Result<()> {
        config.watch_history = self.watch_history;
        config.api.event_ttl = self.event_ttl;
        config.api.usage_history_interval = self.usage_history_interval;
        config.controllers.hpa_sync_period = self.horizontal_pod_autoscaler_sync_period;
        if let Some(path) = &self.controller_clock_file {
            config.controllers.clock =
                wharf_control::controllers::clock::Clock::following_file(path.clone());
        }
        config.encrypt_secrets = self.secrets_encryption;
        config.audit = self.audit_log.as_ref().map(|path| AuditConfig {
            path: path.clone(),
            max_size_bytes: self.audit_log_maxsize.saturating_mul(1 << 20),
            max_backups: self.audit_log_maxbackup,
        });
        config.backend = match self.store {
            StoreKind::Fjall => StoreBackend::Fjall,
            StoreKind::Etcd => StoreBackend::Etcd(self.etcd_config()?),
        };
        Ok(())
    }

    fn etcd_config(&self) -> anyhow::Result<EtcdConfig> {
        if self.etcd_endpoints.is_empty() {
            anyhow::bail!("--store etcd needs --etcd-endpoints URL[,URL...]");
        }
        let prefix = &self.etcd_prefix;
        if !prefix.starts_with('/') || prefix.ends_with('/') {
            anyhow::bail!(
                "--etcd-prefix {prefix:?}: must start with '/' and not end with it (like /registry)"
            );
        }
        let mut config = EtcdConfig::new(self.etcd_endpoints.clone());
        config.prefix = prefix.clone();
        let tls = [&self.etcd_cafile, &self.etcd_certfile, &self.etcd_keyfile];
        if tls.iter().any(|f| f.is_some()) {
            config.tls = Some(EtcdTls {
                ca_file: self.etcd_cafile.clone(),
                cert_file: self.etcd_certfile.clone(),
                key_file: self.etcd_keyfile.clone(),
            });
        }
        config.compaction_interval = Some(self.etcd_compaction_interval).filter(|d| !d.is_zero());
        Ok(config)
    }
}

pub async fn run(args: ControlArgs) -> anyhow::Result<()> {
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => super::default_data_dir()?,
    };
    let mut config = ControlConfig::new(&data_dir);
    config.listen = args.listen;
    config.snapshots = args
        .snapshot_interval
        .filter(|i| !i.is_zero())
        .map(|interval| wharf_control::snapshot::ScheduleConfig {
            interval,
            retention: args.snapshot_retention.max(1),
            dir: args
                .snapshot_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("snapshots")),
        });
    config.api.node_credential_validity = args.node_credential_validity;
    config.token_auth_file = args.token_auth_file;
    args.service_accounts.apply(&mut config);
    args.store.apply(&mut config)?;
    args.election.apply(&mut config)?;
    let identity = if config.election.enabled {
        config.election.identity.clone()
    } else {
        String::new()
    };
    let shutdown = CancellationToken::new();
    let plane = wharf_control::start(config, shutdown.clone())
        .await
        .map_err(one_line)?;
    eprintln!(
        "wharf control: serving on https://{}, kubeconfig {}{}",
        plane.local_addr,
        plane.kubeconfig.display(),
        if identity.is_empty() {
            String::new()
        } else {
            format!(", leader election as {identity}")
        }
    );

    let stopped = plane.wait();
    tokio::pin!(stopped);
    tokio::select! {
        // The server ended on its own: that is an error, or nothing to wait for.
        result = &mut stopped => return result.map_err(one_line),
        signal = shutdown_signal() => signal.context("listening for signals")?,
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    stopped.await.map_err(one_line)
}

/// A [`ControlError`]'s message already names its cause; printing the source chain too
/// would repeat it.
fn one_line(err: ControlError) -> anyhow::Error {
    anyhow::anyhow!("{err}")
}

/// Resolves on Ctrl-C, or SIGTERM on unix (what service managers and `kill` send).
pub(crate) async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        store: StoreArgs,
    }

    #[derive(Parser)]
    struct ElectionCli {
        #[command(flatten)]
        election: ElectionArgs,
    }

    #[test]
    fn leader_election_is_on_by_default_with_kube_schedulers_timings() {
        use std::time::Duration;
        let parse = |args: &[&str]| {
            let cli =
                ElectionCli::try_parse_from(std::iter::once("wharf").chain(args.iter().copied()))?;
            let mut config = ControlConfig::new("/nonexistent");
            cli.election
                .apply(&mut config)
                .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))?;
            Ok::<_, clap::Error>(config.election)
        };
        let e = parse(&[]).unwrap();
        assert!(e.enabled);
        assert_eq!(
            (e.lease_duration, e.renew_deadline, e.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        assert!(!parse(&["--leader-elect=false"]).unwrap().enabled);
        assert!(parse(&["--leader-elect"]).unwrap().enabled);
        let e = parse(&[
            "--leader-elect-lease-duration",
            "3s",
            "--leader-elect-renew-deadline",
            "2s",
            "--leader-elect-retry-period",
            "500ms",
        ])
        .unwrap();
        assert_eq!(e.retry_period, Duration::from_millis(500));
        assert!(parse(&["--leader-elect-renew-deadline", "20s"]).is_err());
    }

    fn applied(args: &[&str]) -> ControlConfig {
        let cli =
            Cli::try_parse_from(std::iter::once("wharf").chain(args.iter().copied())).unwrap();
        let mut config = ControlConfig::new("/nonexistent");
        cli.store.apply(&mut config).unwrap();
        config
    }

    #[test]
    fn event_ttl_defaults_to_an_hour_and_is_set_by_the_flag() {
        use std::time::Duration;
        assert_eq!(applied(&[]).api.event_ttl, Duration::from_secs(3600));
        assert_eq!(
            applied(&["--event-ttl", "30m"]).api.event_ttl,
            Duration::from_secs(1800)
        );
        assert!(Cli::try_parse_from(["wharf", "--event-ttl", "soon"]).is_err());
    }

    #[test]
    fn the_store_is_fjall_unless_etcd_is_asked_for_with_its_endpoints() {
        use std::time::Duration;
        assert!(matches!(applied(&[]).backend, StoreBackend::Fjall));
        let config = applied(&[
            "--store",
            "etcd",
            "--etcd-endpoints",
            "https://a:2379,https://b:2379",
            "--etcd-cafile",
            "/ca.crt",
        ]);
        let StoreBackend::Etcd(etcd) = config.backend else {
            panic!("expected etcd");
        };
        assert_eq!(etcd.endpoints, ["https://a:2379", "https://b:2379"]);
        assert_eq!(etcd.prefix, "/registry");
        assert_eq!(etcd.compaction_interval, Some(Duration::from_secs(300)));
        let tls = etcd.tls.unwrap();
        assert_eq!(tls.ca_file, Some(PathBuf::from("/ca.crt")));
        assert_eq!(tls.cert_file, None);

        let refused = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("wharf").chain(args.iter().copied()));
            match cli {
                Err(_) => true,
                Ok(cli) => cli
                    .store
                    .apply(&mut ControlConfig::new("/nonexistent"))
                    .is_err(),
            }
        };
        assert!(refused(&["--store", "etcd"]), "no endpoints");
        assert!(refused(&[
            "--store",
            "etcd",
            "--etcd-endpoints",
            "http://a:2379",
            "--etcd-prefix",
            "registry/"
        ]));
        assert!(
            refused(&[
                "--store",
                "etcd",
                "--etcd-endpoints",
                "http://a:2379",
                "--etcd-certfile",
                "/c"
            ]),
            "a certificate without its key"
        );
        assert!(refused(&["--store", "zookeeper"]));
    }
}
