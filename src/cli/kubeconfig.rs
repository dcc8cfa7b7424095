//! `wharf kubeconfig create --user NAME [--group G]... [--ttl D] -o FILE`: a kubeconfig
//! for a person or a CI job, with a client certificate the cluster CA signs.
//!
//! As kube-apiserver's x509 authentication reads it, the certificate's CommonName is the
//! user and each Organization a group; RBAC decides what they may do (bind a Role to the
//! user or a group). The command runs where the control plane's data dir is, as it signs
//! with the CA key in `DATA_DIR/pki` (as k3s' certificate commands do); the server and CA
//! come from the admin kubeconfig there, or `--server`. The certificate cannot be revoked
//! before it expires (no CRLs, as in Kubernetes): give it a `--ttl` that fits, and take
//! its permissions away by deleting its bindings.

use super::token::{cluster_access, parse_server};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use wharf_control::kubeconfig::{Credential, Kubeconfig};

#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    #[command(subcommand)]
    pub command: KubeconfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum KubeconfigCommand {
    /// Write a kubeconfig whose user is a client certificate signed by the cluster CA
    Create {
        /// The user name (the certificate's CommonName)
        #[arg(long, value_name = "NAME")]
        user: String,
        /// A group of the user (an Organization of the certificate); repeatable
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// How long the certificate is valid
        #[arg(long, value_name = "DURATION", default_value = "8760h", value_parser = super::node::parse_duration)]
        ttl: Duration,
        /// Where to write the kubeconfig (mode 0600)
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// The control plane's data dir, holding the CA
        /// [default: $XDG_DATA_HOME/wharf, else ~/.local/share/wharf]
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// The API server URL the kubeconfig points at [default: the admin kubeconfig's]
        #[arg(long, value_name = "URL", value_parser = parse_server)]
        server: Option<String>,
    },
}

pub async fn run(args: KubeconfigArgs) -> anyhow::Result<()> {
    let KubeconfigCommand::Create {
        user,
        groups,
        ttl,
        output,
        data_dir,
        server,
    } = args.command;
    if user.trim().is_empty() {
        anyhow::bail!("--user must not be empty");
    }
    if ttl.is_zero() {
        anyhow::bail!("--ttl must be longer than 0s");
    }
    let data_dir = match data_dir {
        Some(d) => d,
        None => super::default_data_dir()?,
    };
    let admin_path = data_dir.join("kubeconfig");
    let admin = kube::config::Kubeconfig::read_from(&admin_path)
        .with_context(|| format!("reading the admin kubeconfig {}", admin_path.display()))?;
    let mut cluster = cluster_access(&admin, &data_dir)
        .with_context(|| format!("kubeconfig {}", admin_path.display()))?;
    if let Some(server) = server {
        cluster.server = server;
    }
    let pki = data_dir.join("pki");
    let (u, g) = (user.clone(), groups.clone());
    let cert = tokio::task::spawn_blocking(move || {
        wharf_control::pki::issue_client_cert(&pki, &u, &g, ttl, SystemTime::now())
    })
    .await
    .context("issuing the certificate")??;
    let kubeconfig = Kubeconfig {
        cluster: &cluster,
        user: &user,
        credential: Credential::ClientCert {
            cert_pem: &cert.cert_pem,
            key_pem: &cert.key_pem,
        },
        context: &user,
        namespace: None,
        more_servers: &[],
    };
    wharf_control::kubeconfig::write(&output, &kubeconfig)
        .with_context(|| format!("writing {}", output.display()))?;
    let until = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::try_from(ttl)?)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    eprintln!(
        "wrote {}: user {user:?}, groups [{}], valid until {until}",
        output.display(),
        groups.join(", ")
    );
    Ok(())
}
