//! Writing kubeconfig files: the admin kubeconfig the control plane writes at start and
//! the join kubeconfig `wharf token create --kubeconfig-out` writes for a node. One
//! shape, one writer ([`render`], [`write()`]), so both read back the same way with
//! kubectl, kube-rs and wharf.

use base64::Engine as _;
use std::path::Path;

/// The cluster entry: where the API server is and how to trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub server: String,
    /// `certificate-authority-data`: the CA certificate(s), base64 of the PEM.
    pub ca_data: Option<String>,
    pub tls_server_name: Option<String>,
    pub insecure_skip_tls_verify: bool,
}

/// How the kubeconfig's user proves who it is.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// A bearer token.
    Token(&'a str),
    /// A client certificate and its key (PEM), signed by the cluster CA.
    ClientCert { cert_pem: &'a str, key_pem: &'a str },
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Token(_) => "Token(..)",
            Credential::ClientCert { .. } => "ClientCert(..)",
        })
    }
}

/// A kubeconfig with one cluster, one user (a bearer token or a client certificate)
/// and one context (the current one, named `context`), optionally with a default
/// namespace.
///
/// A kubeconfig names one server per cluster: the other members of a control plane
/// (`more_servers`) are listed as clusters `NAME-2`, `NAME-3`, … with the same CA, each
/// with its context `CONTEXT-2`, … (`kubectl config use-context` switches; `wharf node`
/// fails over between all of them).
#[derive(Debug, Clone)]
pub struct Kubeconfig<'a> {
    pub cluster: &'a Cluster,
    pub user: &'a str,
    pub credential: Credential<'a>,
    pub context: &'a str,
    pub namespace: Option<&'a str>,
    pub more_servers: &'a [String],
}

/// The kubeconfig as YAML.
pub fn render(k: &Kubeconfig<'_>) -> Result<String, serde_saphyr::ser::Error> {
    let c = k.cluster;
    let access = |server: &str| {
        let mut access = serde_json::Map::new();
        access.insert("server".into(), server.into());
        if let Some(ca) = &c.ca_data {
            access.insert("certificate-authority-data".into(), ca.clone().into());
        }
        if let Some(name) = &c.tls_server_name {
            access.insert("tls-server-name".into(), name.clone().into());
        }
        if c.insecure_skip_tls_verify {
            access.insert("insecure-skip-tls-verify".into(), true.into());
        }
        access
    };
    let context = |cluster: &str| {
        let mut context = serde_json::json!({"cluster": cluster, "user": k.user});
        if let Some(ns) = k.namespace {
            context["namespace"] = ns.into();
        }
        context
    };
    let mut clusters = vec![serde_json::json!({"name": c.name, "cluster": access(&c.server)})];
    let mut contexts = vec![serde_json::json!({"name": k.context, "context": context(&c.name)})];
    for (i, server) in k.more_servers.iter().enumerate() {
        let cluster = format!("{}-{}", c.name, i + 2);
        clusters.push(serde_json::json!({"name": cluster, "cluster": access(server)}));
        contexts.push(serde_json::json!({
            "name": format!("{}-{}", k.context, i + 2),
            "context": context(&cluster),
        }));
    }
    let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    let user = match k.credential {
        Credential::Token(token) => serde_json::json!({"token": token}),
        Credential::ClientCert { cert_pem, key_pem } => serde_json::json!({
            "client-certificate-data": b64(cert_pem),
            "client-key-data": b64(key_pem),
        }),
    };
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": clusters,
        "users": [{"name": k.user, "user": user}],
        "contexts": contexts,
        "current-context": k.context,
        "preferences": {},
    });
    serde_saphyr::to_string(&config)
}

/// Writes the kubeconfig to `path`, owner-only and atomically
/// ([`crate::fsutil::write_private`]). Blocking.
pub fn write(path: &Path, k: &Kubeconfig<'_>) -> std::io::Result<()> {
    let yaml = render(k).map_err(std::io::Error::other)?;
    crate::fsutil::write_private(path, yaml.as_bytes())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_as_a_kubeconfig_with_its_context_current() {
        let cluster = Cluster {
            name: "wharf".into(),
            server: "https://127.0.0.1:6443".into(),
            ca_data: Some("UEVN".into()),
            tls_server_name: Some("wharf.local".into()),
            insecure_skip_tls_verify: false,
        };
        let yaml = render(&Kubeconfig {
            cluster: &cluster,
            user: "admin",
            credential: Credential::Token("tok"),
            context: "wharf",
            namespace: Some("default"),
            more_servers: &[],
        })
        .unwrap();
        let k = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(k.current_context.as_deref(), Some("wharf"));
        let c = k.clusters[0].cluster.clone().unwrap();
        assert_eq!(c.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(c.certificate_authority_data.as_deref(), Some("UEVN"));
        assert_eq!(c.tls_server_name.as_deref(), Some("wharf.local"));
        let ctx = k.contexts[0].context.clone().unwrap();
        assert_eq!(
            (
                ctx.cluster.as_str(),
                ctx.user.as_deref(),
                ctx.namespace.as_deref()
            ),
            ("wharf", Some("admin"), Some("default"))
        );
        let auth = serde_json::to_value(k.auth_infos[0].auth_info.clone().unwrap()).unwrap();
        assert_eq!(auth["token"], "tok");
    }

    #[test]
    fn more_members_are_clusters_and_contexts_of_their_own_with_the_same_ca() {
        let cluster = Cluster {
            name: "wharf".into(),
            server: "https://a:6443".into(),
            ca_data: Some("UEVN".into()),
            tls_server_name: None,
            insecure_skip_tls_verify: false,
        };
        let more = ["https://b:6443".to_string(), "https://c:6443".to_string()];
        let yaml = render(&Kubeconfig {
            cluster: &cluster,
            user: "node",
            credential: Credential::Token("tok"),
            context: "node",
            namespace: None,
            more_servers: &more,
        })
        .unwrap();
        let k = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(k.current_context.as_deref(), Some("node"));
        let servers: Vec<(String, Option<String>, Option<String>)> = k
            .clusters
            .iter()
            .map(|c| {
                let a = c.cluster.clone().unwrap();
                (c.name.clone(), a.server, a.certificate_authority_data)
            })
            .collect();
        assert_eq!(
            servers,
            [
                (
                    "wharf".into(),
                    Some("https://a:6443".into()),
                    Some("UEVN".into())
                ),
                (
                    "wharf-2".into(),
                    Some("https://b:6443".into()),
                    Some("UEVN".into())
                ),
                (
                    "wharf-3".into(),
                    Some("https://c:6443".into()),
                    Some("UEVN".into())
                ),
            ]
        );
        let contexts: Vec<(String, String)> = k
            .contexts
            .iter()
            .map(|c| (c.name.clone(), c.context.clone().unwrap().cluster))
            .collect();
        assert_eq!(
            contexts,
            [
                ("node".into(), "wharf".into()),
                ("node-2".into(), "wharf-2".into()),
                ("node-3".into(), "wharf-3".into()),
            ]
        );
    }
}
