//! Image pulls as the kubelet does them: which policy a container pulls with, which
//! credentials its pod's `imagePullSecrets` give, and the Events' wording.
//!
//! The decisions are pure functions here; the worker runs the pull against the runtime
//! (which owns the registry protocol, the image store and the one-download-per-image rule)
//! and records the Events.

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::Api;
use std::time::Duration;
use wharf_runtime::{PullPolicy, RegistryCredential, credential_host, default_pull_policy};

/// The secret type whose `.dockerconfigjson` holds registry credentials.
pub const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// The older secret type whose `.dockercfg` holds the `auths` map itself.
pub const DOCKER_CFG: &str = "kubernetes.io/dockercfg";

/// The container's `imagePullPolicy`, or Kubernetes' default for its image when unset (or
/// unknown): `Always` for `:latest` or no tag, `IfNotPresent` otherwise.
pub fn policy(c: &Container) -> PullPolicy {
    let image = c.image.as_deref().unwrap_or("");
    c.image_pull_policy
        .as_deref()
        .and_then(PullPolicy::parse)
        .or_else(|| PullPolicy::parse(default_pull_policy(image)))
        .unwrap_or_default()
}

/// The credentials in one pull secret, in the order of its `auths` keys. A secret of
/// another type, or one that does not parse, gives an error naming why.
pub fn credentials(secret: &Secret) -> Result<Vec<RegistryCredential>, String> {
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    let key = match kind {
        DOCKER_CONFIG_JSON => ".dockerconfigjson",
        DOCKER_CFG => ".dockercfg",
        other => {
            return Err(format!(
                "secret type {other:?} is not {DOCKER_CONFIG_JSON:?} or {DOCKER_CFG:?}"
            ));
        }
    };
    let raw = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("the secret has no {key} key"))?;
    let doc: serde_json::Value =
        serde_json::from_slice(&raw.0).map_err(|e| format!("{key} is not JSON: {e}"))?;
    let auths = if kind == DOCKER_CONFIG_JSON {
        doc.get("auths")
    } else {
        Some(&doc)
    };
    let Some(auths) = auths.and_then(|a| a.as_object()) else {
        return Err(format!("{key} has no \"auths\" object"));
    };
    let mut out = Vec::new();
    for (registry, entry) in auths {
        let field = |k: &str| entry.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let (mut username, mut password) =
            (field("username").to_string(), field("password").to_string());
        if username.is_empty() && !field("auth").is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(field("auth"))
                .map_err(|e| format!("auths[{registry:?}].auth is not base64: {e}"))?;
            let decoded = String::from_utf8_lossy(&decoded).into_owned();
            let (u, p) = decoded.split_once(':').ok_or_else(|| {
                format!("auths[{registry:?}].auth is not base64 of USER:PASSWORD")
            })?;
            (username, password) = (u.to_string(), p.to_string());
        }
        if username.is_empty() {
            continue;
        }
        out.push(RegistryCredential {
            registry: credential_host(registry).to_string(),
            username,
            password,
        });
    }
    Ok(out)
}

/// Reads the pod's `imagePullSecrets` (the Node authorizer lets a node read the Secrets its
/// pods reference). Returns the credentials found and the names of the secrets that could
/// not be read or parsed, for the kubelet's `FailedToRetrieveImagePullSecret` Event.
pub async fn pod_credentials(
    client: &kube::Client,
    pod: &Pod,
) -> (Vec<RegistryCredential>, Vec<String>) {
    let names: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.image_pull_secrets.iter().flatten())
        .map(|r| r.name.clone())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let (mut found, mut missing) = (Vec::new(), Vec::new());
    for name in names {
        match api.get_opt(&name).await {
            Ok(Some(secret)) => match credentials(&secret) {
                Ok(c) => found.extend(c),
                Err(e) => {
                    tracing::warn!(secret = %name, "ignoring an image pull secret: {e}");
                    missing.push(name);
                }
            },
            Ok(None) => missing.push(name),
            Err(e) => {
                tracing::warn!(secret = %name, "reading an image pull secret: {e}");
                missing.push(name);
            }
        }
    }
    (found, missing)
}

/// Go's `time.Duration` formatting at millisecond precision, as the kubelet's messages
/// show durations: `41ms`, `1.234s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = format!("{:.3}", d.as_secs_f64());
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    format!("{secs}s")
}

/// The `Pulled` Event's message after a pull, as the kubelet words it.
pub fn pulled_message(image: &str, pulling: Duration, total: Duration, size: u64) -> String {
    format!(
        "Successfully pulled image {image:?} in {} ({} including waiting). Image size: {size} bytes.",
        go_duration(pulling),
        go_duration(total)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn container(image: &str, policy: Option<&str>) -> Container {
        Container {
            name: "c".into(),
            image: Some(image.into()),
            image_pull_policy: policy.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn policies() {
        assert_eq!(policy(&container("r.io/a", None)), PullPolicy::Always);
        assert_eq!(
            policy(&container("r.io/a:1", None)),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            policy(&container("r.io/a:1", Some("Never"))),
            PullPolicy::Never
        );
        assert_eq!(
            policy(&container("r.io/a", Some("IfNotPresent"))),
            PullPolicy::IfNotPresent
        );
        assert_eq!(policy(&container("a.wasm", None)), PullPolicy::IfNotPresent);
    }

    fn secret(kind: &str, key: &str, json: serde_json::Value) -> Secret {
        Secret {
            type_: Some(kind.into()),
            data: Some(
                [(key.to_string(), ByteString(json.to_string().into_bytes()))]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn docker_config_secrets() {
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:s3:cret");
        let s = secret(
            DOCKER_CONFIG_JSON,
            ".dockerconfigjson",
            serde_json::json!({"auths": {
                "https://index.docker.io/v1/": {"auth": auth},
                "127.0.0.1:5000": {"username": "alice", "password": "pw"}}}),
        );
        let c = credentials(&s).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            (
                c[0].registry.as_str(),
                c[0].username.as_str(),
                c[0].password.as_str()
            ),
            ("index.docker.io", "bob", "s3:cret")
        );
        assert_eq!(
            (c[1].registry.as_str(), c[1].username.as_str()),
            ("127.0.0.1:5000", "alice")
        );
        let old = secret(
            DOCKER_CFG,
            ".dockercfg",
            serde_json::json!({"r.io": {"auth": auth}}),
        );
        assert_eq!(credentials(&old).unwrap()[0].registry, "r.io");
        let opaque = secret("Opaque", ".dockerconfigjson", serde_json::json!({}));
        assert!(credentials(&opaque).unwrap_err().contains("Opaque"));
        let bad = secret(
            DOCKER_CONFIG_JSON,
            ".dockerconfigjson",
            serde_json::json!({"auths": {"r": {"auth": "!!"}}}),
        );
        assert!(credentials(&bad).unwrap_err().contains("base64"));
    }

    #[test]
    fn messages() {
        assert_eq!(go_duration(Duration::from_millis(41)), "41ms");
        assert_eq!(go_duration(Duration::from_millis(1234)), "1.234s");
        assert_eq!(go_duration(Duration::from_millis(2000)), "2s");
        assert_eq!(
            pulled_message(
                "r.io/a:1",
                Duration::from_millis(41),
                Duration::from_millis(41),
                81234
            ),
            "Successfully pulled image \"r.io/a:1\" in 41ms (41ms including waiting). Image size: 81234 bytes."
        );
    }
}
