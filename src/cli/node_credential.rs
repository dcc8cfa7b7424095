//! A node's own credential: how `wharf node` turns a join token into a long-lived
//! identity of its own, and keeps it valid.
//!
//! Why: a join token is short-lived (24 h by default) and says only "some machine the
//! administrator let in", not which node. As a kubelet's TLS bootstrap does, the node uses
//! its join token once, to create its node credential: it makes a random
//! `wharf-node-credential.<id>.<secret>` token itself, writes it to `DATA_DIR/
//! node-credential` (0600) *before* asking, so a crash after the server accepted it still
//! leaves it on disk, and creates the Secret that holds its hash and its node name. The
//! API server sets the expiration (`wharf control --node-credential-validity`) and answers
//! as `system:node:<name>` from then on. When a third of the validity is left, the node
//! makes the next credential with its current one, switches every request to it at once
//! (the token lives in one shared cell that a layer of the client's stack reads per
//! request), and deletes the old Secret. A restarted node uses the credential on disk;
//! only a node whose credential is gone (deleted by an administrator, or expired while the
//! node was off) needs a join token again.
//!
//! A kubeconfig with any other token (the admin's, or a node credential written by hand)
//! is used as it is.

use super::cluster;
use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use secrecy::ExposeSecret as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wharf_control::apiserver::auth::{NODE_TOKEN_NAMESPACE, NodeToken, TokenKind};

/// The node credential in the node's data dir.
pub const CREDENTIAL_FILE: &str = "node-credential";

/// The bearer token every request of a node's client carries; replaced on renewal.
type TokenCell = Arc<RwLock<String>>;

/// The client of a node, and what renews its credential (`None` when the kubeconfig's
/// own token is used as it is).
pub struct NodeClient {
    pub client: kube::Client,
    pub renewer: Option<Renewer>,
    /// The cluster CA of the kubeconfig (PEM), what the node gives guests as `ca.crt`.
    pub cluster_ca_pem: Option<String>,
}

/// The CA certificates a client config trusts, as PEM.
fn ca_pem(config: &kube::Config) -> Option<String> {
    use base64::Engine as _;
    let certs = config.root_cert.as_ref().filter(|c| !c.is_empty())?;
    let mut pem = String::new();
    for der in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    Some(pem)
}

impl NodeClient {
    /// The token the node presents now: its renewed credential, else the kubeconfig's.
    pub fn token_source(
        &self,
        kubeconfig_token: Option<String>,
    ) -> Arc<dyn Fn() -> Option<String> + Send + Sync> {
        match &self.renewer {
            Some(r) => {
                let cell = r.cell.clone();
                Arc::new(move || {
                    cell.read()
                        .ok()
                        .map(|t| t.clone())
                        .filter(|t| !t.is_empty())
                })
            }
            None => Arc::new(move || kubeconfig_token.clone()),
        }
    }
}

/// Connects a node named `node` with the kubeconfig (`flag`, else as kubectl finds it):
/// with its own credential, obtained with the kubeconfig's join token if need be.
///
/// With `servers`, the client fails over between those control plane members (see
/// [`super::failover`]) instead of using the kubeconfig's one server.
pub async fn connect(
    flag: Option<PathBuf>,
    servers: &[String],
    node: &str,
    data_dir: &Path,
) -> anyhow::Result<NodeClient> {
    let (mut config, path) = cluster::load_config(flag).await?;
    let cluster_ca_pem = ca_pem(&config);
    // Without --server, the members the kubeconfig lists (if it lists several).
    let listed;
    let servers = if servers.is_empty() {
        listed = kube::config::Kubeconfig::read_from(&path)
            .map(|k| super::failover::kubeconfig_members(&k))
            .unwrap_or_default();
        if !listed.is_empty() {
            tracing::info!(members = ?listed, "failing over between the control plane members of the kubeconfig");
        }
        &listed[..]
    } else {
        servers
    };
    let given = config
        .auth_info
        .token
        .as_ref()
        .map(|t| t.expose_secret().trim().to_string());
    let Some(join) = given
        .as_deref()
        .and_then(NodeToken::parse)
        .filter(|t| t.kind() == TokenKind::Join)
    else {
        let client = super::failover::client(config, servers, |c| Ok(kube::Client::try_from(c)?))
            .with_context(|| format!("kubeconfig {}", path.display()))?;
        return Ok(NodeClient {
            client,
            renewer: None,
            cluster_ca_pem,
        });
    };
    let join_client =
        super::failover::client(config.clone(), servers, |c| Ok(kube::Client::try_from(c)?))
            .with_context(|| format!("kubeconfig {}", path.display()))?;
    config.auth_info.token = None;
    config.auth_info.token_file = None;
    let file = data_dir.join(CREDENTIAL_FILE);
    let stored = read_credential(&file)?;
    let cell: TokenCell = Arc::new(RwLock::new(
        stored.as_ref().map(ToString::to_string).unwrap_or_default(),
    ));
    let client = super::failover::client(config, servers, |c| client_with_cell(c, cell.clone()))?;
    let secrets = |c: &kube::Client| Api::<Secret>::namespaced(c.clone(), NODE_TOKEN_NAMESPACE);

    // The credential on disk, if the server still takes it.
    if let Some(current) = stored {
        match secrets(&client).get(&current.secret_name()).await {
            Ok(secret) => {
                tracing::info!(node, id = current.id(), "using the node credential on disk");
                return Ok(NodeClient {
                    renewer: Some(Renewer::new(
                        client.clone(),
                        cell,
                        file,
                        node,
                        current,
                        &secret,
                    )),
                    client,
                    cluster_ca_pem,
                });
            }
            Err(kube::Error::Api(s)) if s.code == 401 => {
                tracing::warn!(
                    node,
                    "the node credential on disk is not valid any more ({}); joining again with the join token",
                    s.message
                );
            }
            Err(e) => return Err(anyhow!(e).context("checking the node credential on disk")),
        }
    }
    // Join: a new credential, on disk first, then its Secret made with the join token.
    let fresh = NodeToken::generate_kind(TokenKind::Credential);
    write_credential(&file, &fresh)?;
    let body: Secret = serde_json::from_value(fresh.to_credential_secret(node))?;
    let created = secrets(&join_client)
        .create(&PostParams::default(), &body)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) => anyhow!(
                "joining as node {node:?} with the join token {}: {} ({})",
                join.id(),
                s.message,
                s.code
            ),
            other => anyhow!(other).context("joining with the join token"),
        })?;
    tracing::info!(node, id = fresh.id(), "joined: node credential created");
    if let Ok(mut t) = cell.write() {
        *t = fresh.to_string();
    }
    Ok(NodeClient {
        renewer: Some(Renewer::new(
            client.clone(),
            cell,
            file,
            node,
            fresh,
            &created,
        )),
        client,
        cluster_ca_pem,
    })
}

/// A kube client whose every request carries the token in `cell` at the time it is sent.
fn client_with_cell(config: kube::Config, cell: TokenCell) -> anyhow::Result<kube::Client> {
    let layer =
        tower::util::MapRequestLayer::new(move |mut req: http::Request<kube::client::Body>| {
            let token = cell.read().map(|t| t.clone()).unwrap_or_default();
            if let Ok(mut value) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
                value.set_sensitive(true);
                req.headers_mut().insert(http::header::AUTHORIZATION, value);
            }
            req
        });
    let builder = kube::client::ClientBuilder::try_from(config)?;
    Ok(builder.with_layer(&layer).build())
}

fn read_credential(file: &Path) -> anyhow::Result<Option<NodeToken>> {
    match std::fs::read_to_string(file) {
        Ok(text) => NodeToken::parse(text.trim())
            .filter(|t| t.kind() == TokenKind::Credential)
            .map(Some)
            .ok_or_else(|| anyhow!("{} does not hold a node credential", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!(e).context(format!("reading {}", file.display()))),
    }
}

fn write_credential(file: &Path, token: &NodeToken) -> anyhow::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    super::token::write_private(file, &format!("{token}\n"))
        .with_context(|| format!("writing {}", file.display()))
}

/// When to renew a credential issued at `issued` that expires at `expires`: when a third
/// of its validity is left.
pub fn renew_at(issued: jiff::Timestamp, expires: jiff::Timestamp) -> jiff::Timestamp {
    let validity = expires.duration_since(issued);
    expires.checked_sub(validity / 3).unwrap_or(expires)
}

/// The issue and expiry times of a node-credential Secret as the server stored it.
fn validity_of(secret: &Secret) -> Option<(jiff::Timestamp, jiff::Timestamp)> {
    let issued = secret.metadata.creation_timestamp.as_ref()?.0;
    let raw = secret.data.as_ref()?.get("expiration")?;
    let expires: jiff::Timestamp = std::str::from_utf8(&raw.0).ok()?.parse().ok()?;
    Some((issued, expires))
}

/// Renews a node's credential before it expires (see the module docs).
pub struct Renewer {
    client: kube::Client,
    cell: TokenCell,
    file: PathBuf,
    node: String,
    current: NodeToken,
    times: Option<(jiff::Timestamp, jiff::Timestamp)>,
}

impl Renewer {
    fn new(
        client: kube::Client,
        cell: TokenCell,
        file: PathBuf,
        node: &str,
        current: NodeToken,
        secret: &Secret,
    ) -> Self {
        Renewer {
            client,
            cell,
            file,
            node: node.to_string(),
            current,
            times: validity_of(secret),
        }
    }

    /// Renews until `shutdown`; failures are retried with back-off while the current
    /// credential lasts.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let Some(_) = self.times else {
            tracing::info!(node = %self.node, "the node credential does not expire");
            return;
        };
        let mut retry = Duration::from_secs(1);
        loop {
            let Some((issued, expires)) = self.times else {
                return;
            };
            let wait = renew_at(issued, expires)
                .duration_since(jiff::Timestamp::now())
                .try_into()
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match self.renew().await {
                Ok(()) => retry = Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(node = %self.node, error = %format!("{e:#}"), "renewing the node credential failed; retrying in {retry:?}");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    async fn renew(&mut self) -> anyhow::Result<()> {
        let secrets = Api::<Secret>::namespaced(self.client.clone(), NODE_TOKEN_NAMESPACE);
        let next = NodeToken::generate_kind(TokenKind::Credential);
        let body: Secret = serde_json::from_value(next.to_credential_secret(&self.node))?;
        let created = secrets
            .create(&PostParams::default(), &body)
            .await
            .context("creating the next node credential")?;
        let Some(times) = validity_of(&created) else {
            bail!(
                "the server's node credential {} has no expiration",
                next.id()
            );
        };
        // On disk first: a restart from here on uses the new one.
        write_credential(&self.file, &next)?;
        if let Ok(mut t) = self.cell.write() {
            *t = next.to_string();
        }
        let old = std::mem::replace(&mut self.current, next);
        self.times = Some(times);
        tracing::info!(node = %self.node, id = self.current.id(), expires = %times.1, "node credential renewed");
        if let Err(e) = secrets
            .delete(&old.secret_name(), &DeleteParams::default())
            .await
        {
            // It expires by itself; the token cleaner removes it then.
            tracing::warn!(node = %self.node, id = old.id(), error = %e, "deleting the previous node credential failed");
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renewal_starts_when_a_third_is_left() {
        let issued: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let expires: jiff::Timestamp = "2030-01-01T00:00:30Z".parse().unwrap();
        assert_eq!(
            renew_at(issued, expires),
            "2030-01-01T00:00:20Z".parse::<jiff::Timestamp>().unwrap()
        );
    }

    #[test]
    fn the_credential_file_holds_only_a_credential() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub").join(CREDENTIAL_FILE);
        assert!(read_credential(&file).unwrap().is_none());
        let token = NodeToken::generate_kind(TokenKind::Credential);
        write_credential(&file, &token).unwrap();
        assert_eq!(read_credential(&file).unwrap(), Some(token));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&file, NodeToken::generate().to_string()).unwrap();
        assert!(
            read_credential(&file).is_err(),
            "a join token is not a credential"
        );
    }
}
