//! `wharf token create|list|delete`: the node tokens machines join the cluster with.
//!
//! A token is `wharf-node.<id>.<secret>`; the cluster keeps only the SHA-256 of the secret,
//! in the Secret `kube-system/wharf-node-token-<id>` (see
//! [`wharf_control::apiserver::auth`]), so `create` is the only time the whole token is
//! seen: it prints it alone on stdout, for `TOKEN=$(wharf token create)`. `delete`
//! removes the Secret, which revokes the token for the next request.
//!
//! `create --kubeconfig-out FILE` also writes what a machine needs to join with that
//! token: a kubeconfig with the cluster's CA and server (from the admin kubeconfig, or
//! `--server`) and the token as its only credential, mode 0600, so that `wharf node
//! --kubeconfig FILE --name N` runs on another machine without the admin credential ever
//! leaving this one. Building the file is a pure function of the admin kubeconfig
//! ([`node_kubeconfig`]); the token is created first and deleted again if the file cannot
//! be written, so a failed command leaves no usable token behind.

use super::cluster::{Cluster, is_not_found, kubeconfig_path};
use super::{finish, report};
use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::Kubeconfig;
use std::path::{Path, PathBuf};
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
        /// Also write a kubeconfig for a node joining with this token (cluster CA, server,
        /// the token), mode 0600
        #[arg(long, value_name = "FILE")]
        kubeconfig_out: Option<PathBuf>,
        /// The API server URL the written kubeconfig points at, as the joining machine
        /// reaches it [default: the admin kubeconfig's server]; repeated (or a comma list)
        /// for several control plane members, each a cluster and context of its own that
        /// `wharf node` fails over between
        #[arg(long, value_name = "URL", requires = "kubeconfig_out", value_parser = parse_server,
              value_delimiter = ',')]
        server: Vec<String>,
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

/// `--server`: an `https://` (or `http://`) URL with a host.
pub(super) fn parse_server(text: &str) -> Result<String, String> {
    let text = text.trim().trim_end_matches('/');
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL ({e}): use e.g. https://192.168.1.10:6443"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("https" | "http"), Some(host)) if !host.is_empty() => Ok(text.to_string()),
        _ => Err(format!(
            "{text:?} is not an http(s) URL with a host: use e.g. https://192.168.1.10:6443"
        )),
    }
}

/// `kubeconfig` is the global `--kubeconfig` flag: `create --kubeconfig-out` reads the
/// cluster's CA and server from the same file the client was made from.
pub async fn run(
    cluster: &Cluster,
    kubeconfig: Option<PathBuf>,
    args: TokenArgs,
) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Create {
            ttl,
            description,
            kubeconfig_out,
            server,
        } => {
            let out = match kubeconfig_out {
                Some(path) => Some(JoinKubeconfig::prepare(kubeconfig, path, server)?),
                None => None,
            };
            create(
                cluster,
                ttl,
                description.as_deref().unwrap_or_default(),
                out,
            )
            .await
        }
        TokenCommand::List => list(cluster).await,
        TokenCommand::Delete { ids } => delete(cluster, &ids).await,
    }
}

/// Where `--kubeconfig-out` writes, and the cluster it describes, read before the token
/// is created so that a bad admin kubeconfig fails without creating anything.
struct JoinKubeconfig {
    path: PathBuf,
    cluster: ClusterAccess,
    /// The other control plane members' servers.
    more_servers: Vec<String>,
}

impl JoinKubeconfig {
    fn prepare(flag: Option<PathBuf>, path: PathBuf, servers: Vec<String>) -> anyhow::Result<Self> {
        let mut servers = servers.into_iter();
        let server = servers.next();
        let more_servers: Vec<String> = servers.collect();
        let (admin_path, _) = kubeconfig_path(flag)?;
        let admin = Kubeconfig::read_from(&admin_path)
            .with_context(|| format!("reading kubeconfig {}", admin_path.display()))?;
        let base = admin_path.parent().unwrap_or(Path::new("."));
        let mut cluster = cluster_access(&admin, base)
            .with_context(|| format!("kubeconfig {}", admin_path.display()))?;
        match server {
            Some(server) => cluster.server = server,
            None if loopback_server(&cluster.server) => eprintln!(
                "warning: {} points at {}, which other machines cannot reach; pass --server \
                 with an address of this machine the API server's certificate covers",
                path.display(),
                cluster.server
            ),
            None => {}
        }
        Ok(JoinKubeconfig {
            path,
            cluster,
            more_servers,
        })
    }
}

/// What a client needs to reach and trust the API server.
use wharf_control::kubeconfig::Cluster as ClusterAccess;

/// The cluster of the admin kubeconfig's current context (else its only cluster), with
/// a `certificate-authority` file (relative to `base`, the kubeconfig's directory) read
/// and embedded, so the written kubeconfig stands alone on another machine.
pub(super) fn cluster_access(admin: &Kubeconfig, base: &Path) -> anyhow::Result<ClusterAccess> {
    let context_cluster = admin.current_context.as_ref().and_then(|current| {
        admin
            .contexts
            .iter()
            .find(|c| &c.name == current)
            .and_then(|c| c.context.as_ref())
            .map(|c| c.cluster.clone())
    });
    let named = match (&context_cluster, admin.clusters.as_slice()) {
        (Some(name), clusters) => clusters.iter().find(|c| &c.name == name).ok_or_else(|| {
            anyhow!("the current context names cluster {name:?}, which is not in clusters[]")
        })?,
        (None, [only]) => only,
        (None, []) => bail!("it has no clusters"),
        (None, _) => bail!("it has several clusters and no current-context to choose one"),
    };
    let cluster = named
        .cluster
        .as_ref()
        .ok_or_else(|| anyhow!("clusters[{}].cluster is missing", named.name))?;
    let server = cluster
        .server
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow!("clusters[{}].cluster.server is missing", named.name))?;
    let ca_data = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) if !data.is_empty() => Some(data.clone()),
        (_, Some(file)) if !file.is_empty() => {
            let file = base.join(file);
            let pem = std::fs::read(&file).with_context(|| {
                format!(
                    "clusters[{}].cluster.certificate-authority: reading {}",
                    named.name,
                    file.display()
                )
            })?;
            Some(base64(pem))
        }
        _ => None,
    };
    Ok(ClusterAccess {
        name: named.name.clone(),
        server: server.trim_end_matches('/').to_string(),
        ca_data,
        tls_server_name: cluster.tls_server_name.clone(),
        insecure_skip_tls_verify: cluster.insecure_skip_tls_verify.unwrap_or(false),
    })
}

/// Base64 (standard alphabet), through the API types' own encoding of bytes.
fn base64(bytes: Vec<u8>) -> String {
    match serde_json::to_value(k8s_openapi::ByteString(bytes)) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Whether a server URL names a loopback address or `localhost`.
fn loopback_server(server: &str) -> bool {
    let Some(host) = server
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
    else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The kubeconfig a node joins with: the cluster, and the node token as the only user.
fn node_kubeconfig(
    cluster: &ClusterAccess,
    more_servers: &[String],
    token: &NodeToken,
) -> anyhow::Result<String> {
    let user = format!("wharf-node-{}", token.id());
    Ok(wharf_control::kubeconfig::render(
        &wharf_control::kubeconfig::Kubeconfig {
            cluster,
            user: &user,
            credential: wharf_control::kubeconfig::Credential::Token(&token.to_string()),
            context: &user,
            namespace: None,
            more_servers,
        },
    )?)
}

/// Writes `contents` to `path` with mode 0600, atomically
/// ([`wharf_control::fsutil::write_private`]).
pub(super) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    wharf_control::fsutil::write_private(path, contents.as_bytes())
}

async fn create(
    cluster: &Cluster,
    ttl: Ttl,
    description: &str,
    out: Option<JoinKubeconfig>,
) -> anyhow::Result<()> {
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
    if let Some(out) = out {
        let written = node_kubeconfig(&out.cluster, &out.more_servers, &token).and_then(|yaml| {
            write_private(&out.path, &yaml)
                .with_context(|| format!("writing {}", out.path.display()))
        });
        if let Err(e) = written {
            // No file, no token: a token nobody holds should not stay valid.
            let _ = cluster
                .send(at.delete(&token.secret_name(), &DeleteParams::default()))
                .await;
            return Err(e.context("the token was deleted again"));
        }
        eprintln!(
            "wrote {} (server {}): on the joining machine run `wharf node --kubeconfig {} --name NAME --address IP`",
            out.path.display(),
            out.cluster.server,
            out.path.display()
        );
    }
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
            kind: wharf_control::apiserver::auth::TokenKind::Join,
            id: id.into(),
            secret_sha256: String::new(),
            expiration: expiration.map(|e| e.parse().unwrap()),
            description: description.into(),
            node: None,
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

    fn admin(yaml: &str) -> Kubeconfig {
        Kubeconfig::from_yaml(yaml).unwrap()
    }

    const ADMIN: &str = "apiVersion: v1
kind: Config
clusters:
- name: other
  cluster: {server: https://10.9.9.9:6443}
- name: wharf
  cluster:
    server: https://127.0.0.1:6443/
    certificate-authority-data: UEVN
users:
- name: wharf-admin
  user: {token: admin-secret}
contexts:
- name: wharf
  context: {cluster: wharf, user: wharf-admin}
current-context: wharf
";

    #[test]
    fn join_kubeconfig_has_the_cluster_and_only_the_node_token() {
        let access = cluster_access(&admin(ADMIN), Path::new("/nowhere")).unwrap();
        assert_eq!(access.name, "wharf");
        assert_eq!(access.server, "https://127.0.0.1:6443");
        assert_eq!(access.ca_data.as_deref(), Some("UEVN"));
        let token = NodeToken::generate();
        let yaml = node_kubeconfig(&access, &[], &token).unwrap();
        assert!(!yaml.contains("admin-secret"), "{yaml}");
        // It reads back as a kubeconfig whose current context uses the node token.
        let written = admin(&yaml);
        let user = written.current_context.clone().unwrap();
        assert_eq!(user, format!("wharf-node-{}", token.id()));
        let auth = written
            .auth_infos
            .iter()
            .find(|a| a.name == user)
            .and_then(|a| a.auth_info.clone())
            .unwrap();
        assert_eq!(
            serde_json::to_value(&auth).unwrap()["token"],
            token.to_string()
        );
        let again = cluster_access(&written, Path::new("/nowhere")).unwrap();
        assert_eq!(again, access);
    }

    #[test]
    fn a_ca_file_is_embedded_and_missing_parts_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "PEM").unwrap();
        let with_file = admin(
            "clusters:\n- name: c\n  cluster: {server: 'https://h:1', certificate-authority: ca.crt}\n",
        );
        let access = cluster_access(&with_file, dir.path()).unwrap();
        assert_eq!(access.ca_data.as_deref(), Some("UEVN"));
        let missing = cluster_access(&with_file, Path::new("/nowhere")).unwrap_err();
        assert!(
            format!("{missing:#}").contains("clusters[c].cluster.certificate-authority"),
            "{missing:#}"
        );
        let no_server = admin("clusters:\n- name: c\n  cluster: {}\n");
        let err = cluster_access(&no_server, dir.path()).unwrap_err();
        assert_eq!(err.to_string(), "clusters[c].cluster.server is missing");
        let two = admin(
            "clusters:\n- {name: a, cluster: {server: 'https://a'}}\n- {name: b, cluster: {server: 'https://b'}}\n",
        );
        assert!(cluster_access(&two, dir.path()).is_err());
    }

    #[test]
    fn servers_are_checked() {
        assert_eq!(
            parse_server("https://192.168.1.10:6443/").unwrap(),
            "https://192.168.1.10:6443"
        );
        assert!(parse_server("192.168.1.10:6443").is_err());
        assert!(parse_server("ftp://host").is_err());
        assert!(loopback_server("https://127.0.0.1:6443"));
        assert!(loopback_server("https://localhost:6443"));
        assert!(loopback_server("https://[::1]:6443"));
        assert!(!loopback_server("https://10.0.0.1:6443"));
    }

    #[test]
    fn private_files_are_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.kubeconfig");
        std::fs::write(&path, "old").unwrap();
        write_private(&path, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Nothing else is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn delete_takes_ids_or_tokens() {
        let token = NodeToken::generate();
        assert_eq!(token_id(&token.to_string()).unwrap(), token.id());
        assert_eq!(token_id("abc123").unwrap(), "abc123");
        assert!(token_id("ABC").is_err());
    }
}
