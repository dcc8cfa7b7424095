//! One client over several control plane members (`wharf node --server A --server B`).
//!
//! A kubeconfig names one server per cluster; with several members serving one store, a
//! node must keep working when the member it talks to dies. [`client`] builds one client
//! per member (same credentials and CA: every member's serving certificate chains to the
//! cluster CA) and sends each request to the member that answered last; a request whose
//! member cannot be reached goes to the next one. Only requests that cannot have had an
//! effect are sent again: reads (GET, HEAD, OPTIONS; watches are GETs) after any transport
//! error, writes only when the connection could not be made. A watch whose member dies
//! ends with an error, and the watcher's next request goes to a live member, from the
//! resourceVersion it last saw.

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, Response};
use kube::client::Body;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};

/// How long connecting to one member may take before the next is tried.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The members, and which one answered last.
#[derive(Clone)]
struct Failover {
    members: Arc<Vec<kube::Client>>,
    current: Arc<AtomicUsize>,
}

/// A client for `config` that fails over between `servers` (`config`'s own server when
/// there are none); `make` builds the client of one member from its config.
pub fn client(
    config: kube::Config,
    servers: &[String],
    make: impl Fn(kube::Config) -> anyhow::Result<kube::Client>,
) -> anyhow::Result<kube::Client> {
    if servers.is_empty() {
        return make(config);
    }
    let namespace = config.default_namespace.clone();
    let mut members = Vec::new();
    for server in servers {
        let mut one = config.clone();
        one.cluster_url = server
            .parse()
            .with_context(|| format!("--server {server:?}: not a URL"))?;
        one.connect_timeout = Some(CONNECT_TIMEOUT);
        members.push(make(one).with_context(|| format!("--server {server}"))?);
    }
    if members.len() == 1 {
        return members.pop().context("one member");
    }
    let service = Failover {
        members: Arc::new(members),
        current: Arc::new(AtomicUsize::new(0)),
    };
    Ok(kube::Client::new(service, namespace))
}

/// The control plane members a kubeconfig lists: the server of its current context's
/// cluster first, then those of its other clusters with the same CA (the other members,
/// as `wharf token create --server A --server B` writes them). Empty when there is only
/// one.
pub fn kubeconfig_members(kubeconfig: &kube::config::Kubeconfig) -> Vec<String> {
    let current = kubeconfig.current_context.as_deref().and_then(|name| {
        kubeconfig
            .contexts
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.context.as_ref())
            .map(|c| c.cluster.clone())
    });
    let Some(first) = current
        .and_then(|name| kubeconfig.clusters.iter().find(|c| c.name == name))
        .and_then(|c| c.cluster.as_ref())
    else {
        return Vec::new();
    };
    let (Some(server), Some(ca)) = (&first.server, &first.certificate_authority_data) else {
        return Vec::new();
    };
    let mut servers = vec![server.clone()];
    for other in kubeconfig
        .clusters
        .iter()
        .filter_map(|c| c.cluster.as_ref())
    {
        if other.certificate_authority_data.as_ref() == Some(ca)
            && let Some(s) = &other.server
            && !servers.contains(s)
        {
            servers.push(s.clone());
        }
    }
    if servers.len() > 1 {
        servers
    } else {
        Vec::new()
    }
}

/// Whether `method` may be sent again after any transport error.
fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether the error is the member not being reachable at all (the request never left).
fn not_connected(error: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper_util::client::legacy::Error>()
            && h.is_connect()
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
            )
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The order in which members are tried: the last that answered first.
fn order(current: usize, members: usize) -> impl Iterator<Item = usize> {
    (0..members).map(move |i| (current + i) % members)
}

impl tower::Service<Request<Body>> for Failover {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, kube::Error>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // Request bodies are whole objects: kept so the request can be sent again.
            let body: Bytes = body.collect_bytes().await?;
            let start = this.current.load(Ordering::Relaxed);
            let mut last = None;
            for index in order(start, this.members.len()) {
                let mut again = Request::new(Body::from(body.clone()));
                *again.method_mut() = parts.method.clone();
                *again.uri_mut() = parts.uri.clone();
                *again.version_mut() = parts.version;
                *again.headers_mut() = parts.headers.clone();
                match this.members[index].send(again).await {
                    Ok(response) => {
                        this.current.store(index, Ordering::Relaxed);
                        return Ok(response);
                    }
                    Err(e) if idempotent(&parts.method) || not_connected(&e) => {
                        tracing::warn!(member = index, error = %e, "control plane member unreachable; trying the next");
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                kube::Error::Service("no control plane member configured".into())
            }))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_lists_the_members_that_share_its_clusters_ca() {
        let yaml = "apiVersion: v1
kind: Config
clusters:
- {name: w, cluster: {server: 'https://a:6443', certificate-authority-data: Q0E=}}
- {name: w-2, cluster: {server: 'https://b:6443', certificate-authority-data: Q0E=}}
- {name: other, cluster: {server: 'https://x:6443', certificate-authority-data: T1RIRVI=}}
users: [{name: u, user: {token: t}}]
contexts:
- {name: c2, context: {cluster: w-2, user: u}}
- {name: c, context: {cluster: w, user: u}}
current-context: c2
";
        let k = kube::config::Kubeconfig::from_yaml(yaml).unwrap();
        assert_eq!(kubeconfig_members(&k), ["https://b:6443", "https://a:6443"]);
        // A CA no other cluster has: one member, nothing to fail over to.
        let one = yaml.replace("current-context: c2", "current-context: x");
        let one = one.replace(
            "contexts:\n",
            "contexts:\n- {name: x, context: {cluster: other, user: u}}\n",
        );
        let k = kube::config::Kubeconfig::from_yaml(&one).unwrap();
        assert_eq!(kubeconfig_members(&k), Vec::<String>::new());
    }

    #[test]
    fn members_are_tried_from_the_last_that_answered_round_the_list() {
        assert_eq!(order(0, 3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(order(2, 3).collect::<Vec<_>>(), [2, 0, 1]);
        assert!(idempotent(&Method::GET));
        assert!(!idempotent(&Method::POST));
        assert!(!idempotent(&Method::PATCH));
    }

    /// Two members, the first not listening: reads and writes reach the second, and the
    /// client then stays with it.
    #[tokio::test]
    async fn a_dead_member_is_skipped_for_reads_and_for_writes_that_never_connected() {
        use wharf_control::ControlConfig;
        let tmp = tempfile::tempdir().unwrap();
        let mut config = ControlConfig::new(tmp.path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.run_components = false;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let plane = wharf_control::start(config, shutdown.clone())
            .await
            .unwrap();
        // A port nobody listens on: bound, then closed.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let kubeconfig = kube::config::Kubeconfig::read_from(&plane.kubeconfig).unwrap();
        let base = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let servers = [
            format!("https://{dead_addr}"),
            format!("https://{}", plane.local_addr),
        ];
        let c = client(base, &servers, |c| Ok(kube::Client::try_from(c)?)).unwrap();
        let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(c.clone(), "default");
        let cm = serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
        let done = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            cms.create(&Default::default(), &cm).await.unwrap();
            cms.get("x").await.unwrap();
        })
        .await;
        assert!(done.is_ok());
        shutdown.cancel();
    }
}
