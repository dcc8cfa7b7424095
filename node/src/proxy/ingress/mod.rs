//! Ingress: the node proxy serves `networking.k8s.io/v1` Ingresses of the class `wharf`
//! (the cluster's default) over HTTP on a node port (`--ingress-http-port`, 8080 by
//! default) and HTTPS (`--ingress-https-port`, 8443), on the node's address, shared
//! with the other nodes of the machine by `SO_REUSEPORT`.
//!
//! - [`table`] (pure) turns (Ingresses, Services and their endpoints, TLS Secrets) into a
//!   [`table::RouteTable`];
//! - [`run`] watches Ingresses and Secrets, takes the proxy's Service snapshots, and on
//!   every change rebuilds the table and swaps it in whole (an `Arc` behind a lock, read
//!   once per request): an edit routes differently as soon as its watch event arrives,
//!   nothing polls;
//! - every backend Service port gets the proxy's own L7 stack ([`super::http::stack`]:
//!   metrics, shedding, retries, the balancer) over an endpoint set that the rebuild
//!   resets, so endpoint picking is the Service proxy's;
//! - HTTPS picks the certificate by SNI from the table (the `kubernetes.io/tls` Secrets
//!   the Ingresses name); a name with no certificate fails its handshake.
//!
//! Answers of its own: 404 when no rule (and no default backend) matches, 503 with the
//! reason when the backend Service does not exist, lacks the port, or has no ready
//! endpoint. A backend Service asleep at zero is the exception: its requests are held
//! and its wake-up asked for, by the same [`super::wake`] layer as the Service proxy's.

pub mod table;

use super::ProxyConfig;
use super::balance::PolicyCell;
use super::discover::EndpointSet;
use super::http::{self, HttpClient, HttpStack, ResponseBody};
use super::metrics::PortStats;
use super::model::{ServiceKey, Snapshot};
use super::wake::{PortWake, Signal};
use super::watch::SnapshotRx;
use crate::reachability::ApiHealth;
use futures::StreamExt;
use http::error_response;
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use table::{Backend, Decision, RouteTable};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The class this proxy serves.
pub const CLASS: &str = "wharf";

/// What requests are served from: swapped whole on every change.
#[derive(Default)]
struct Live {
    table: RouteTable,
    /// A stack is `Send` but not `Sync`: each request clones it out of its mutex.
    stacks: HashMap<(ServiceKey, u16), std::sync::Mutex<HttpStack>>,
    certs: HashMap<String, Arc<rustls::sign::CertifiedKey>>,
}

/// The current [`Live`], shared by the listeners and the rebuilding loop.
#[derive(Default)]
struct Current(RwLock<Arc<Live>>);

impl Current {
    fn get(&self) -> Arc<Live> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    fn set(&self, live: Live) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(live);
    }
}

/// Whether this proxy serves `ingress`: class `wharf`, or none named.
pub fn served(ingress: &Ingress) -> bool {
    let annotated = ingress
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/ingress.class"))
        .map(String::as_str);
    match (
        ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref()),
        annotated,
    ) {
        (Some(class), _) | (None, Some(class)) => class == CLASS,
        (None, None) => true,
    }
}

/// How the Ingress reaches its backends: the proxy's HTTP client (through the node's
/// dialer), and the signal that asks for a sleeping Service's wake-up.
pub struct Upstream {
    pub client: HttpClient,
    pub signal: Arc<dyn Signal>,
}

/// Serves Ingresses until `shutdown`. Returns at once when both ports are 0.
pub async fn run(
    client: kube::Client,
    config: ProxyConfig,
    node_address: IpAddr,
    upstream: Upstream,
    mut snapshots: SnapshotRx,
    health: Arc<ApiHealth>,
    shutdown: CancellationToken,
) {
    if config.ingress_http_port == 0 && config.ingress_https_port == 0 {
        return;
    }
    let current = Arc::new(Current::default());
    let mut tasks = JoinSet::new();
    if config.ingress_http_port != 0 {
        let addr = SocketAddr::new(node_address, config.ingress_http_port);
        match super::listener::bind_tcp(addr) {
            Ok(l) => {
                tracing::info!(%addr, "serving Ingresses over HTTP");
                tasks.spawn(serve_http(l, current.clone(), shutdown.clone()));
            }
            Err(e) => tracing::warn!(%addr, error = %e, "cannot listen for Ingress HTTP"),
        }
    }
    if config.ingress_https_port != 0 {
        let addr = SocketAddr::new(node_address, config.ingress_https_port);
        match (super::listener::bind_tcp(addr), tls_config(current.clone())) {
            (Ok(l), Ok(tls)) => {
                tracing::info!(%addr, "serving Ingresses over HTTPS");
                tasks.spawn(serve_https(l, tls, current.clone(), shutdown.clone()));
            }
            (Err(e), _) => {
                tracing::warn!(%addr, error = %e, "cannot listen for Ingress HTTPS")
            }
            (_, Err(e)) => tracing::warn!(error = %e, "cannot set up Ingress TLS"),
        }
    }

    // The Ingresses and Secrets, followed; every event wakes the rebuild.
    let changed = Arc::new(Notify::new());
    let (ingresses, ing_writer) = reflector::store::<Ingress>();
    let (secrets, secret_writer) = reflector::store::<Secret>();
    tasks.spawn(follow(
        reflector(
            ing_writer,
            watcher(
                Api::<Ingress>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .boxed(),
        changed.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(follow(
        reflector(
            secret_writer,
            watcher(
                Api::<Secret>::all(client),
                watcher::Config::default().fields("type=kubernetes.io/tls"),
            ),
        )
        .default_backoff()
        .boxed(),
        changed.clone(),
        health,
        shutdown.clone(),
    ));

    let mut backends: HashMap<(ServiceKey, u16), BackendStack> = HashMap::new();
    loop {
        let snapshot: Arc<Snapshot> = snapshots.borrow_and_update().clone();
        let served_ingresses: Vec<Ingress> = ingresses
            .state()
            .iter()
            .filter(|i| served(i))
            .map(|i| (**i).clone())
            .collect();
        let tls: BTreeMap<String, Secret> = secrets
            .state()
            .iter()
            .map(|s| {
                (
                    format!(
                        "{}/{}",
                        s.metadata.namespace.as_deref().unwrap_or_default(),
                        s.metadata.name.as_deref().unwrap_or_default()
                    ),
                    (**s).clone(),
                )
            })
            .collect();
        let table = RouteTable::build(&served_ingresses, &snapshot, &tls);
        current.set(executor(&table, &mut backends, &upstream, &config));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = snapshots.changed() => if r.is_err() { break },
            _ = changed.notified() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// One backend Service port's stack, kept across rebuilds: its endpoint set and its
/// wake-up state are updated in place.
struct BackendStack {
    endpoints: Arc<EndpointSet>,
    wake: Arc<PortWake>,
    stack: HttpStack,
}

/// The live state for `table`: a stack per backend Service port (kept across rebuilds,
/// its endpoint set reset), and the parsed certificates.
fn executor(
    table: &RouteTable,
    backends: &mut HashMap<(ServiceKey, u16), BackendStack>,
    upstream: &Upstream,
    config: &ProxyConfig,
) -> Live {
    let mut used = HashMap::new();
    for backend in table.backends() {
        let Backend::Service {
            key,
            port,
            endpoints,
            wake,
        } = backend
        else {
            continue;
        };
        let id = (key.clone(), *port);
        let b = backends.entry(id.clone()).or_insert_with(|| {
            let set = Arc::new(EndpointSet::new());
            let port_wake = Arc::new(PortWake::new(
                key.clone(),
                *port,
                set.clone(),
                upstream.signal.clone(),
                config.hold_timeout,
                config.max_held,
            ));
            let stack = http::stack(
                set.clone(),
                Arc::new(PolicyCell::new(Default::default())),
                Arc::new(PortStats::default()),
                upstream.client.clone(),
                config,
                Some(port_wake.clone()),
            );
            BackendStack {
                endpoints: set,
                wake: port_wake,
                stack,
            }
        });
        b.wake.set_workload(wake.clone());
        b.endpoints.reset(endpoints.iter().copied());
        used.insert(id, std::sync::Mutex::new(b.stack.clone()));
    }
    backends.retain(|id, _| used.contains_key(id));
    let mut certs = HashMap::new();
    for (host, cert) in &table.certificates {
        match certified_key(&cert.cert_pem, &cert.key_pem) {
            Ok(key) => {
                certs.insert(host.clone(), Arc::new(key));
            }
            Err(e) => {
                tracing::warn!(secret = %cert.secret, %host, error = %e, "unusable TLS Secret")
            }
        }
    }
    Live {
        table: table.clone(),
        stacks: used,
        certs,
    }
}

/// Follows one reflector's stream until shutdown, waking the rebuild on every event.
async fn follow<K>(
    stream: futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>,
    changed: Arc<Notify>,
    health: Arc<ApiHealth>,
    shutdown: CancellationToken,
) {
    let mut stream = stream;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = stream.next() => e,
        };
        match event {
            None => return,
            Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
            Some(Ok(_)) => {
                health.ok();
                changed.notify_one();
            }
            Some(Err(e)) => tracing::debug!(error = %e, "ingress watch"),
        }
    }
}

/// A certificate chain and key from PEM.
fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if certs.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("tls.key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("tls.key: {e}"))?;
    Ok(rustls::sign::CertifiedKey::new(certs, signing))
}

/// Picks the certificate by SNI from the live table.
struct BySni(Arc<Current>);

impl std::fmt::Debug for BySni {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BySni")
    }
}

impl rustls::server::ResolvesServerCert for BySni {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let name = table::host_only(hello.server_name()?);
        let live = self.0.get();
        live.certs.get(&name).cloned().or_else(|| {
            let (_, suffix) = name.split_once('.')?;
            live.certs.get(&format!("*.{suffix}")).cloned()
        })
    }
}

fn tls_config(current: Arc<Current>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(BySni(current)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The answer to one request, from the live table.
async fn handle(
    current: Arc<Current>,
    req: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().host().map(str::to_owned))
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let live = current.get();
    let stack = match live.table.route(&host, &path) {
        Decision::NoRule => {
            return error_response(
                hyper::StatusCode::NOT_FOUND,
                format!("wharf ingress: no rule matches host {host:?} path {path:?}"),
            );
        }
        Decision::Route(Backend::Unavailable(why)) => {
            return error_response(
                hyper::StatusCode::SERVICE_UNAVAILABLE,
                format!("wharf ingress: {why}"),
            );
        }
        Decision::Route(Backend::Service {
            key,
            port,
            endpoints,
            wake,
        }) => {
            if endpoints.is_empty() && wake.is_none() {
                return error_response(
                    hyper::StatusCode::SERVICE_UNAVAILABLE,
                    format!("wharf ingress: service {key} port {port} has no ready endpoints"),
                );
            }
            match live.stacks.get(&(key.clone(), *port)) {
                Some(s) => s.lock().unwrap_or_else(PoisonError::into_inner).clone(),
                None => {
                    return error_response(
                        hyper::StatusCode::SERVICE_UNAVAILABLE,
                        format!("wharf ingress: service {key} port {port} is not ready"),
                    );
                }
            }
        }
    };
    drop(live);
    http::proxy_request(stack, req).await
}

/// Serves HTTP/1.1 on one connection until it ends or the node stops.
async fn serve_connection<IO>(io: IO, current: Arc<Current>, shutdown: CancellationToken)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let current = current.clone();
        async move { Ok::<_, Infallible>(handle(current, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::select! {
        done = conn => if let Err(e) = done {
            tracing::debug!(error = %e, "ingress connection ended with an error");
        },
        _ = shutdown.cancelled() => {}
    }
}

async fn serve_http(
    listener: tokio::net::TcpListener,
    current: Arc<Current>,
    shutdown: CancellationToken,
) {
    let stop = shutdown.clone();
    super::listener::accept_loop(listener, "ingress", stop, move |stream, _| {
        let _ = stream.set_nodelay(true);
        Some(serve_connection(stream, current.clone(), shutdown.clone()))
    })
    .await
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn serve_https(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    current: Arc<Current>,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let stop = shutdown.clone();
    super::listener::accept_loop(listener, "ingress tls", stop, move |stream, peer| {
        let _ = stream.set_nodelay(true);
        let (acceptor, current, shutdown) = (acceptor.clone(), current.clone(), shutdown.clone());
        Some(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_connection(tls, current, shutdown).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "ingress TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "ingress TLS handshake timed out"),
            }
        })
    })
    .await
}
