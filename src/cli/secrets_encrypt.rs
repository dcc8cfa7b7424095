//! `wharf secrets-encrypt status|rotate`: encryption of Secrets at rest, as k3s's
//! `secrets-encrypt` command drives it. `status` shows the keys and how many stored
//! Secrets each encrypts (`plaintext` for those written before encryption was on);
//! `rotate` makes a new key primary, re-encrypts every Secret with it (plaintext ones
//! too) and retires the old keys, while the cluster keeps serving.

use super::cluster::Cluster;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use http::{Method, Request};

#[derive(Debug, Args)]
pub struct SecretsEncryptArgs {
    #[command(subcommand)]
    pub command: SecretsEncryptCommand,
}

#[derive(Debug, Subcommand)]
pub enum SecretsEncryptCommand {
    /// Show the keys and what each encrypts
    Status,
    /// Encrypt every Secret with a new key and retire the old ones
    Rotate,
}

/// The status as the command prints it.
fn render(status: &serde_json::Value) -> String {
    let mut out = format!(
        "Encryption Status: {}\nCurrent Key: {}\nKeys: {}\n",
        if status["enabled"].as_bool() == Some(true) {
            "Enabled"
        } else {
            "Disabled"
        },
        status["primaryKey"].as_str().unwrap_or("-"),
        status["keys"]
            .as_array()
            .map(|k| k
                .iter()
                .filter_map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
    );
    out.push_str("Secrets by key:\n");
    for (key, n) in status["secretsByKey"].as_object().into_iter().flatten() {
        out.push_str(&format!("  {key}: {n}\n"));
    }
    out
}

pub async fn run(cluster: &Cluster, args: SecretsEncryptArgs) -> anyhow::Result<()> {
    let (method, path) = match args.command {
        SecretsEncryptCommand::Status => (Method::GET, "/wharf/v1/secrets-encrypt/status"),
        SecretsEncryptCommand::Rotate => (Method::POST, "/wharf/v1/secrets-encrypt/rotate"),
    };
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(kube::client::Body::from(Vec::new()))?;
    let resp = cluster.client().send(req).await.context(path)?;
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await?
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status == http::StatusCode::NOT_FOUND {
        bail!(
            "this control plane does not encrypt Secrets (started with --secrets-encryption=false)"
        );
    }
    if !status.is_success() {
        bail!(
            "{status}: {}",
            json["message"]
                .as_str()
                .unwrap_or(&String::from_utf8_lossy(&body))
        );
    }
    print!("{}", render(&json));
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn status_reads_as_a_report() {
        let s = serde_json::json!({"enabled": true, "primaryKey": "key-2", "keys": ["key-2"],
            "secretsByKey": {"key-2": 3}});
        assert_eq!(
            super::render(&s),
            "Encryption Status: Enabled\nCurrent Key: key-2\nKeys: key-2\nSecrets by key:\n  key-2: 3\n"
        );
    }
}
