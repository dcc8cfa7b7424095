//! `wharf token create|list|delete`: the node tokens machines join the cluster with.
//!
//! A token is `wharf-node.<id>.<secret>`; the cluster keeps only the SHA-256 of the secret,
//! in the Secret `kube-system/wharf-node-token-<id>` (see
//! [`wharf_control::apiserver::auth`]), so `create` is the only time the whole token is
//! seen: it prints it alone on stdout, for `TOKEN=$(wharf token create)`. `delete`
//! removes the Secret, which revokes the token for the next request.

use super::cluster::{Cluster, is_not_found};
use super::{finish, report};
use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, PostParams};
use wharf_control::api::ResourceKind;
use wharf_control::api::kinds::resolve;
use wharf_control::api::printers::human_duration;
use wharf_control::apiserver::auth::{
    NODE_TOKEN_NAMESPACE, NODE_TOKEN_SECRET_TYPE, NodeToken, NodeTokenInfo, is_node_token_id,
    node_token_secret_name,
};

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a node token and print it (the cluster keeps only its hash: it is shown once)
    Create {
        /// How long the token is valid (`24h`, `90m`, `7d`); `0` never expires
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_ttl)]
        ttl: Ttl,
        /// What the token is for, shown by `wharf token list`
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// List node tokens: ID, TTL, EXPIRES, DESCRIPTION
    List,
    /// Delete node tokens (by id, or the whole token): nodes can no longer use them
    Delete {
        #[arg(value_name = "ID", required = true)]
        ids: Vec<String>,
    },
}

/// A token's lifetime; `None` is forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(pub Option<SignedDuration>);

/// `0` (forever), a duration in h/m/s as Go and kubeadm write them (`24h`, `1h30m`), or
/// whole days (`7d`).
fn parse_ttl(text: &str) -> Result<Ttl, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Ttl(None));
    }
    let duration = match text.strip_suffix('d').map(str::parse::<i64>) {
        Some(Ok(days)) => SignedDuration::from_hours(days.saturating_mul(24)),
        _ => text.parse::<SignedDuration>().map_err(|_| {
            format!("{text:?} is not a duration: use e.g. 24h, 1h30m, 7d, or 0 for never")
        })?,
    };
    if duration.is_zero() {
        return Ok(Ttl(None));
    }
    if duration.is_negative() {
        return Err(format!("{text:?} is negative"));
    }
    Ok(Ttl(Some(duration)))
}

fn secret_kind() -> anyhow::Result<&'static ResourceKind> {
    resolve("secret").ok_or_else(|| anyhow!("the Secret kind is not served"))
}

pub async fn run(cluster: &Cluster, args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Create { ttl, description } => {
            create(cluster, ttl, description.as_deref().unwrap_or_default()).await
        }
        TokenCommand::List => list(cluster).await,
        TokenCommand::Delete { ids } => delete(cluster, &ids).await,
    }
}

async fn create(cluster: &Cluster, ttl: Ttl, description: &str) -> anyhow::Result<()> {
    let token = NodeToken::generate();
    let expiration = match ttl.0 {
        None => None,
        Some(d) => Some(
            Timestamp::now()
                .checked_add(d)
                .context("the TTL is too long")?,
        ),
    };
    let body = serde_json::to_vec(&token.to_secret(expiration, description))?;
    let at = cluster.at(secret_kind()?, Some(NODE_TOKEN_NAMESPACE));
    cluster
        .send(at.create(&PostParams::default(), body))
        .await
        .map_err(|e| cluster.explain(e))?;
    println!("{token}");
    Ok(())
}

async fn list(cluster: &Cluster) -> anyhow::Result<()> {
    let at = cluster.at(secret_kind()?, Some(NODE_TOKEN_NAMESPACE));
    let params = ListParams::default().fields(&format!("type={NODE_TOKEN_SECRET_TYPE}"));
    let listed = cluster
        .send(at.list(&params))
        .await
        .map_err(|e| cluster.explain(e))?;
    let mut tokens = Vec::new();
    for item in listed["items"].as_array().into_iter().flatten() {
        match NodeTokenInfo::from_secret(item) {
            Ok(info) => tokens.push(info),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    if tokens.is_empty() {
        eprintln!("No node tokens found.");
        return Ok(());
    }
    for line in table(&tokens, Timestamp::now()) {
        println!("{line}");
    }
    Ok(())
}

/// The rows of `wharf token list`, aligned, header first.
fn table(tokens: &[NodeTokenInfo], now: Timestamp) -> Vec<String> {
    let mut rows = vec![["ID", "TTL", "EXPIRES", "DESCRIPTION"].map(String::from)];
    for t in tokens {
        let (ttl, expires) = match t.expiration {
            None => ("<forever>".to_string(), "<never>".to_string()),
            Some(at) => {
                let left = at.as_second() - now.as_second();
                let ttl = if left <= 0 {
                    "<invalid>".to_string()
                } else {
                    human_duration(left)
                };
                (ttl, at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            }
        };
        rows.push([t.id.clone(), ttl, expires, t.description.clone()]);
    }
    let mut widths = [0usize; 4];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            row.iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("   ")
                .trim_end()
                .to_string()
        })
        .collect()
}

/// The token id an argument of `delete` names: an id, or a whole token.
fn token_id(arg: &str) -> anyhow::Result<String> {
    if let Some(token) = NodeToken::parse(arg) {
        return Ok(token.id().to_string());
    }
    if is_node_token_id(arg) {
        return Ok(arg.to_string());
    }
    bail!("{arg:?} is neither a node token id (6 characters a-z, 0-9) nor a node token")
}

async fn delete(cluster: &Cluster, args: &[String]) -> anyhow::Result<()> {
    let at = cluster.at(secret_kind()?, Some(NODE_TOKEN_NAMESPACE));
    let mut failed = false;
    for arg in args {
        let id = match token_id(arg) {
            Ok(id) => id,
            Err(e) => {
                report(&e);
                failed = true;
                continue;
            }
        };
        let name = node_token_secret_name(&id);
        match cluster
            .send(at.delete(&name, &DeleteParams::default()))
            .await
        {
            Ok(_) => println!("node token \"{id}\" deleted"),
            Err(e) if is_not_found(&e) => {
                report(&anyhow!("node token \"{id}\" not found"));
                failed = true;
            }
            Err(e) => {
                report(&cluster.explain(e));
                failed = true;
            }
        }
    }
    finish(failed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ttls_read_like_kubeadm() {
        assert_eq!(parse_ttl("0"), Ok(Ttl(None)));
        assert_eq!(parse_ttl("0s"), Ok(Ttl(None)));
        assert_eq!(
            parse_ttl("24h"),
            Ok(Ttl(Some(SignedDuration::from_hours(24))))
        );
        assert_eq!(
            parse_ttl("1h30m"),
            Ok(Ttl(Some(SignedDuration::from_mins(90))))
        );
        assert_eq!(
            parse_ttl("7d"),
            Ok(Ttl(Some(SignedDuration::from_hours(168))))
        );
        assert!(parse_ttl("-1h").is_err());
        assert!(parse_ttl("soon").is_err());
    }

    #[test]
    fn lists_show_time_left_and_expiry() {
        let now: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let info = |id: &str, expiration: Option<&str>, description: &str| NodeTokenInfo {
            id: id.into(),
            secret_sha256: String::new(),
            expiration: expiration.map(|e| e.parse().unwrap()),
            description: description.into(),
        };
        let lines = table(
            &[
                info("abc123", Some("2030-01-02T00:00:00Z"), "laptop"),
                info("def456", None, ""),
                info("old999", Some("2029-12-31T00:00:00Z"), "gone"),
            ],
            now,
        );
        assert_eq!(
            lines,
            [
                "ID       TTL         EXPIRES                DESCRIPTION",
                "abc123   24h         2030-01-02T00:00:00Z   laptop",
                "def456   <forever>   <never>",
                "old999   <invalid>   2029-12-31T00:00:00Z   gone",
            ]
        );
    }

    #[test]
    fn delete_takes_ids_or_tokens() {
        let token = NodeToken::generate();
        assert_eq!(token_id(&token.to_string()).unwrap(), token.id());
        assert_eq!(token_id("abc123").unwrap(), "abc123");
        assert!(token_id("ABC").is_err());
    }
}
