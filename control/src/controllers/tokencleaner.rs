//! The token cleaner: deletes join tokens and node credentials once they have expired.
//!
//! Why: an expired token authenticates nothing, but its Secret would stay forever, and
//! `wharf token list` would grow with every machine that ever joined and every renewal a
//! node skipped deleting. As kube-controller-manager's token cleaner does for bootstrap
//! tokens, this deletes the Secrets of both kinds (`wharf.dev/node-token`,
//! `wharf.dev/node-credential` in `kube-system`) whose `expiration` has passed. Which ones
//! is a pure function of the Secrets and the time ([`expired`]); the loop around it looks
//! again every `interval`, which is all the precision a clean-up needs (an expired token
//! is already refused when it is presented).

use crate::apiserver::auth::{NODE_TOKEN_NAMESPACE, NodeTokenInfo};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::Value;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The names of the token Secrets (API form) that expired at or before `now`.
pub fn expired(secrets: &[Value], now: jiff::Timestamp) -> Vec<String> {
    secrets
        .iter()
        .filter_map(|s| {
            let info = NodeTokenInfo::from_secret(s).ok()?;
            let at = info.expiration?;
            (at <= now).then(|| {
                s.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            })
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// Starts the cleaner; it looks every `interval` until `shutdown`.
pub fn start(
    client: kube::Client,
    interval: Duration,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    tasks.spawn(async move {
        let secrets: Api<Secret> = Api::namespaced(client, NODE_TOKEN_NAMESPACE);
        loop {
            if let Err(e) = clean(&secrets).await {
                tracing::debug!(error = %e, "token cleaner: looking for expired tokens failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    });
}

async fn clean(secrets: &Api<Secret>) -> Result<(), kube::Error> {
    let list = secrets.list(&ListParams::default()).await?;
    let values: Vec<Value> = list
        .items
        .iter()
        .filter_map(|s| serde_json::to_value(s).ok())
        .collect();
    for name in expired(&values, jiff::Timestamp::now()) {
        match secrets.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(secret = %name, "token cleaner: deleted an expired token"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::apiserver::auth::{NodeToken, TokenKind};

    #[test]
    fn expired_tokens_and_credentials_are_picked_and_nothing_else() {
        let now: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let hour = jiff::SignedDuration::from_hours(1);
        let old_join = NodeToken::generate();
        let live_join = NodeToken::generate();
        let forever = NodeToken::generate();
        let old_cred = NodeToken::generate_kind(TokenKind::Credential);
        let mut old_cred_secret = old_cred.to_credential_secret("node-1");
        old_cred_secret["data"]["expiration"] = serde_json::json!("MjAyOS0xMi0zMVQyMzowMDowMFo="); // 2029-12-31T23:00:00Z
        let other = serde_json::json!({"metadata": {"name": "app"}, "type": "Opaque",
                                       "data": {"expiration": "MjAwMC0wMS0wMVQwMDowMDowMFo="}});
        let secrets = vec![
            old_join.to_secret(Some(now - hour), ""),
            live_join.to_secret(Some(now + hour), ""),
            forever.to_secret(None, ""),
            old_cred_secret,
            other,
        ];
        assert_eq!(
            expired(&secrets, now),
            vec![old_join.secret_name(), old_cred.secret_name()]
        );
    }
}
