//! Starting and stopping a whole control plane: store, API server, credentials.
//!
//! [`start`] returns once the listener is bound and the store is open, with the bound
//! address (so tests and `wharf up` can use port 0), and serves until the shutdown token
//! is cancelled; [`ControlPlane::wait`] then resolves after open connections drained.
//!
//! The API is served over HTTPS only (HTTP/1.1 and HTTP/2 by ALPN), with the cluster's own
//! CA from [`crate::pki`]: client-go sends a bearer token only over https, and tokens must
//! not cross the network in clear.
//!
//! First start of a data dir generates the admin token (`DATA_DIR/admin.token`, mode 0600),
//! the CA and serving certificate (`DATA_DIR/pki/`), and a kubeconfig (`DATA_DIR/kubeconfig`,
//! mode 0600) that points at `https://ADDR` with the token and the CA certificate; later
//! starts reuse the token and the CA, renew the serving certificate when [`crate::pki`]
//! says so, and rewrite the kubeconfig with the address now bound.

use crate::apiserver::auth::{Authenticator, Identity, generate_token};
use crate::apiserver::{self, ApiConfig, AppState};
use crate::pki::{self, Pki, PkiError};
use crate::store::encryption::Encryption;
use crate::store::{
    CacheConfig, EtcdConfig, EtcdStore, FjallStore, Store, StoreConfig, StoreError, WatchCache,
};
use base64::Engine;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// How long a client has, once connected, to complete the TLS handshake (the default of
/// [`ServeTimeouts::handshake`]).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's headers: after the handshake, the first
/// request; on an HTTP/1 keep-alive connection, each next one (the default of
/// [`ServeTimeouts::header_read`]; kube-apiserver allows 32 s).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 connections are pinged this often when idle; one whose peer does not answer
/// within [`H2_KEEPALIVE_TIMEOUT`] is closed.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the API server waits on a client that sends nothing. Every connection holds a
/// file descriptor: without these bounds, a thousand clients that connect (or finish TLS)
/// and then stay silent exhaust the process's descriptors and the API stops answering.
#[derive(Debug, Clone, Copy)]
pub struct ServeTimeouts {
    /// From accept to the end of the TLS handshake.
    pub handshake: Duration,
    /// From the end of the handshake to the first request's headers (and, on HTTP/1,
    /// from the end of one response to the next request's headers).
    pub header_read: Duration,
}

impl Default for ServeTimeouts {
    fn default() -> Self {
        ServeTimeouts {
            handshake: HANDSHAKE_TIMEOUT,
            header_read: HEADER_READ_TIMEOUT,
        }
    }
}
/// How long shutdown waits for open connections to finish before closing them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run a control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub api: ApiConfig,
    /// Run the scheduler and the controllers in this process (the default). Tests of the
    /// API alone turn them off.
    pub run_components: bool,
    pub scheduler: crate::scheduler::SchedulerConfig,
    pub controllers: crate::controllers::ControllerConfig,
    /// Most changes the store's revision log keeps for watches to resume from; a watch
    /// from an older resourceVersion gets 410 Gone (kube-apiserver's watch cache size).
    pub watch_history: usize,
    /// Bounds on clients that connect and send nothing.
    pub timeouts: ServeTimeouts,
    /// Static user tokens (`--token-auth-file`, see [`crate::apiserver::auth`]).
    pub token_auth_file: Option<PathBuf>,
    /// Where the cluster state lives.
    pub backend: StoreBackend,
    /// Encrypt Secrets at rest (keys in `DATA_DIR/pki/encryption-keys.json`).
    pub encrypt_secrets: bool,
    /// Where the audit log goes (`None`: no audit log).
    pub audit: Option<apiserver::audit::AuditConfig>,
    /// `iss` of ServiceAccount tokens (`--service-account-issuer`).
    pub service_account_issuer: String,
    /// The longest life a ServiceAccount token gets
    /// (`--service-account-max-token-expiration`); unbounded when `None`.
    pub service_account_max_token_expiration: Option<Duration>,
    /// Leader election of the scheduler and the controller manager among the members
    /// serving one store.
    pub election: crate::leaderelection::ElectionConfig,
    /// Scheduled snapshots of the state (`--snapshot-interval`), if any.
    pub snapshots: Option<crate::snapshot::ScheduleConfig>,
}

/// The store backend of a control plane.
#[derive(Debug, Clone, Default)]
pub enum StoreBackend {
    /// The embedded store in `DATA_DIR/store` (the default).
    #[default]
    Fjall,
    /// An etcd cluster; the data dir keeps only credentials.
    Etcd(EtcdConfig),
}

impl ControlConfig {
    /// Defaults: listen on 127.0.0.1:6443, 3 MiB bodies.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ControlConfig {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 6443)),
            api: ApiConfig::default(),
            run_components: true,
            scheduler: Default::default(),
            controllers: Default::default(),
            watch_history: StoreConfig::new("").log_max_events,
            timeouts: ServeTimeouts::default(),
            token_auth_file: None,
            backend: StoreBackend::Fjall,
            encrypt_secrets: true,
            audit: None,
            service_account_issuer: crate::apiserver::serviceaccounts::DEFAULT_ISSUER.into(),
            service_account_max_token_expiration: None,
            election: Default::default(),
            snapshots: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot open the store in {dir}: {error}")]
    Store { dir: PathBuf, error: StoreError },
    #[error("cannot use the etcd store at {endpoints}: {error}")]
    Etcd {
        endpoints: String,
        error: StoreError,
    },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("bootstrapping the cluster: {0}")]
    Bootstrap(String),
    #[error("the cluster certificates: {0}")]
    Pki(#[from] PkiError),
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

/// A running control plane.
pub struct ControlPlane {
    pub local_addr: SocketAddr,
    pub kubeconfig: PathBuf,
    /// The cluster CA's certificate (`DATA_DIR/pki/ca.crt`), what clients verify with.
    pub ca_cert: PathBuf,
    pub admin_token: String,
    pub state: AppState,
    router: axum::Router,
    server: JoinHandle<Result<(), std::io::Error>>,
    /// The scheduler and controllers.
    components: JoinSet<()>,
}

impl ControlPlane {
    /// A client that calls this control plane's API in process, as the system identity.
    pub fn client(&self) -> kube::Client {
        apiserver::in_process_client(self.router.clone())
    }

    /// A client for a node that runs in this process (`wharf up`): as [`Self::client`],
    /// and its lists and watches leave out managedFields, as the control plane's own
    /// components' do ([`apiserver::WithoutManagedFields`]).
    pub fn component_client(&self) -> kube::Client {
        apiserver::component_client(self.router.clone())
    }

    /// The store (for components that are part of the control plane process).
    pub fn store(&self) -> Arc<dyn Store> {
        self.state.store.clone()
    }

    /// Resolves when the server has stopped after the shutdown token was cancelled.
    pub async fn wait(mut self) -> Result<(), ControlError> {
        while self.components.join_next().await.is_some() {}
        match self.server.await {
            Ok(r) => r.map_err(ControlError::Serve),
            Err(e) => Err(ControlError::Serve(std::io::Error::other(e))),
        }
    }
}

/// What a store failure while starting is, named by where the store is.
fn store_failed(config: &ControlConfig, error: StoreError) -> ControlError {
    match &config.backend {
        StoreBackend::Fjall => ControlError::Store {
            dir: config.data_dir.join("store"),
            error,
        },
        StoreBackend::Etcd(etcd) => ControlError::Etcd {
            endpoints: etcd.endpoints.join(","),
            error,
        },
    }
}

/// The backend of `config`, under the encryption of Secrets (when on) and the watch
/// cache.
async fn open_store(
    config: &ControlConfig,
    metrics: &crate::metrics::StoreMetrics,
) -> Result<(Arc<WatchCache>, Option<Arc<Encryption>>), ControlError> {
    let failed = |error| store_failed(config, error);
    let backend: Arc<dyn Store> = match &config.backend {
        StoreBackend::Fjall => {
            let mut store_config = StoreConfig::new(config.data_dir.join("store"));
            store_config.log_max_events = config.watch_history.max(1);
            let store = tokio::task::spawn_blocking(move || FjallStore::open(store_config))
                .await
                .map_err(|e| ControlError::Bootstrap(format!("opening the store: {e}")))?
                .map_err(failed)?;
            Arc::new(store)
        }
        StoreBackend::Etcd(etcd) => {
            Arc::new(EtcdStore::connect(etcd.clone()).await.map_err(failed)?)
        }
    };
    // Every call to the backend is timed, whichever backend it is.
    let backend: Arc<dyn Store> = Arc::new(crate::store::Metered::new(backend, metrics.clone()));
    let (backend, encryption) = if config.encrypt_secrets {
        let path = config.data_dir.join("pki").join("encryption-keys.json");
        let prefixes = vec![crate::store::collection_prefix("", "secrets", None)];
        let (encryption, store) =
            tokio::task::spawn_blocking(move || Encryption::open(path, backend, prefixes))
                .await
                .map_err(|e| ControlError::Bootstrap(format!("opening the encryption keys: {e}")))?
                .map_err(|e| ControlError::Bootstrap(e.to_string()))?;
        (store, Some(encryption))
    } else {
        (backend, None)
    };
    // One watch of the backend feeds every API watcher and serves lists; it keeps no more
    // history than `--watch-history` promises.
    let cache_config = CacheConfig {
        events: CacheConfig::default()
            .events
            .min(config.watch_history.max(1)),
        history: Some(u64::try_from(config.watch_history.max(1)).unwrap_or(u64::MAX)),
        ..CacheConfig::default()
    };
    Ok((
        Arc::new(
            WatchCache::start(backend, cache_config)
                .await
                .map_err(failed)?,
        ),
        encryption,
    ))
}

/// Opens the store, bootstraps credentials and system namespaces, binds and serves.
pub async fn start(
    config: ControlConfig,
    shutdown: CancellationToken,
) -> Result<ControlPlane, ControlError> {
    let dir = config.data_dir.clone();
    create_private_dir(&dir)?;
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|error| ControlError::Listen {
                addr: config.listen,
                error,
            })?;
    let local_addr = listener
        .local_addr()
        .map_err(|error| ControlError::Listen {
            addr: config.listen,
            error,
        })?;
    // One registry for the process: the API server, the scheduler and the controller
    // manager all register here, and `/metrics` serves it.
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = crate::metrics::ControlMetrics::register(&mut registry);
    let (cache, encryption) = open_store(&config, &metrics.store).await?;
    registry.register_collector(Box::new(crate::metrics::StorageObjects(cache.clone())));
    let registry = Arc::new(registry);
    let store: Arc<dyn Store> = cache;
    // The allocators must hold what the stored Services and Nodes hold before the first
    // allocation (stores from before they existed, leaks after a hand edit).
    apiserver::ipam::repair(store.as_ref())
        .await
        .map_err(|e| ControlError::Bootstrap(format!("repairing the address allocators: {e}")))?;

    let admin_token = load_or_create_token(&dir.join("admin.token")).await?;
    let auth = Arc::new(Authenticator::new());
    auth.add_token(admin_token.clone(), Identity::admin());
    if let Some(path) = &config.token_auth_file {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|error| ControlError::Io {
                path: path.clone(),
                error,
            })?;
        let tokens = crate::apiserver::auth::parse_token_file(&text)
            .map_err(|e| ControlError::Bootstrap(format!("{}: {e}", path.display())))?;
        for (token, identity) in tokens {
            auth.add_token(token, identity);
        }
    }

    pki::install_crypto_provider();
    let pki_dir = dir.join("pki");
    let pki = tokio::task::spawn_blocking(move || Pki::load_or_generate(&pki_dir, local_addr))
        .await
        .map_err(|e| ControlError::Bootstrap(format!("preparing certificates: {e}")))??;
    if let Some(reason) = &pki.generated.server {
        tracing::info!(%reason, "generated a serving certificate");
    }
    let pki_dir = dir.join("pki");
    let sa_key = tokio::task::spawn_blocking(move || pki::load_or_generate_sa_key(&pki_dir))
        .await
        .map_err(|e| {
            ControlError::Bootstrap(format!("preparing the service account key: {e}"))
        })??;
    auth.set_token_issuer(
        crate::apiserver::serviceaccounts::TokenIssuer::new(
            &sa_key,
            config.service_account_issuer.clone(),
            config.service_account_max_token_expiration,
        )
        .map_err(|e| ControlError::Bootstrap(e.to_string()))?,
    );
    let tls = TlsAcceptor::from(pki.server_config()?);
    let kubeconfig = dir.join("kubeconfig");
    write_private(
        &kubeconfig,
        kubeconfig_yaml(local_addr, &admin_token, pki.ca_cert_pem())?.as_bytes(),
    )
    .await?;

    // Nodes are called over TLS with a client certificate of the cluster CA, and sign
    // their own certificates' requests with it (see `crate::nodetls`).
    let mut api = config.api.clone();
    api.address = Some(local_addr.ip());
    let pki_dir = dir.join("pki");
    api.pki_dir = Some(pki_dir.clone());
    api.node_tls = Some(
        tokio::task::spawn_blocking(move || {
            crate::nodetls::apiserver_client_config(&pki_dir, std::time::SystemTime::now())
        })
        .await
        .map_err(|e| ControlError::Bootstrap(format!("preparing node TLS: {e}")))?
        .map_err(|e| ControlError::Bootstrap(format!("preparing node TLS: {e}")))?,
    );
    let state = AppState {
        store: store.clone(),
        auth,
        config: Arc::new(api),
        shutdown: shutdown.clone(),
        rbac: Default::default(),
        kinds: Default::default(),
        metrics: metrics.clone(),
        registry,
        resource_samples: Default::default(),
    };
    let usage_history = Arc::new(apiserver::usage_history::UsageHistory::default());
    let mut router = apiserver::router(state.clone())
        .merge(crate::oci::router(state.clone(), dir.join("registry")))
        .merge(crate::dashboard::router())
        .merge(apiserver::usage_history::router(
            state.clone(),
            usage_history.clone(),
        ));
    if let Some(encryption) = encryption {
        router = router.merge(apiserver::secrets_encrypt::router(
            state.clone(),
            encryption,
        ));
    }
    // The in-process client (the control plane's own components) is not audited: only
    // what comes over the network is.
    let served = match &config.audit {
        Some(audit) => {
            let log = apiserver::audit::AuditLog::start(audit.clone()).map_err(|error| {
                ControlError::Io {
                    path: audit.path.clone(),
                    error,
                }
            })?;
            router.clone().layer(axum::middleware::from_fn_with_state(
                log,
                apiserver::audit::record,
            ))
        }
        None => router.clone(),
    };
    bootstrap_namespaces(&router).await?;
    bootstrap_ingress_class(&router).await?;
    bootstrap_storage_class(&router).await?;
    apiserver::priority::bootstrap(apiserver::in_process_client(router.clone()))
        .await
        .map_err(|e| {
            ControlError::Bootstrap(format!("creating the system PriorityClasses: {e}"))
        })?;
    reconcile_rbac(&router).await?;
    apiserver::proxy::ensure_node_proxy_secret(&apiserver::in_process_client(router.clone()))
        .await
        .map_err(|e| ControlError::Bootstrap(e.to_string()))?;

    let mut components = JoinSet::new();
    if config.run_components {
        start_components(
            &config,
            state.config.node_tls.clone(),
            &metrics,
            apiserver::component_client(router.clone()),
            &shutdown,
            &mut components,
        );
    }
    if !config.api.usage_history_interval.is_zero() {
        components.spawn(apiserver::usage_history::run(
            state.clone(),
            usage_history,
            config.api.usage_history_interval,
            shutdown.clone(),
        ));
    }
    if let Some(schedule) = config.snapshots.clone() {
        components.spawn(crate::snapshot::run_schedule(
            store.clone(),
            schedule,
            shutdown.clone(),
        ));
    }
    let server = tokio::spawn(serve_tls(listener, tls, served, config.timeouts, shutdown));
    tracing::info!(%local_addr, kubeconfig = %kubeconfig.display(), "control plane serving");
    Ok(ControlPlane {
        local_addr,
        kubeconfig,
        ca_cert: pki.ca_cert_path(),
        admin_token,
        state,
        router,
        server,
        components,
    })
}

/// The scheduler and the controller manager, each under its own leader election (see
/// [`crate::leaderelection`]): with several members on one store, each runs in one of them.
fn start_components(
    config: &ControlConfig,
    node_tls: Option<Arc<rustls::ClientConfig>>,
    metrics: &crate::metrics::ControlMetrics,
    client: kube::Client,
    shutdown: &CancellationToken,
    components: &mut JoinSet<()>,
) {
    use crate::leaderelection::{self, CONTROLLER_MANAGER_LEASE, SCHEDULER_LEASE};
    let mut election = config.election.clone();
    // The embedded store is locked by this process: no other member can exist.
    election.exclusive |= matches!(config.backend, StoreBackend::Fjall);
    election.metrics = metrics.leader.clone();
    let mut scheduler = config.scheduler.clone();
    scheduler.metrics = metrics.scheduler.clone();
    let scheduler_client = client.clone();
    components.spawn(leaderelection::run(
        client.clone(),
        SCHEDULER_LEASE,
        election.clone(),
        shutdown.clone(),
        move |token, tasks| {
            crate::scheduler::start(scheduler_client.clone(), &scheduler, token, tasks)
        },
    ));
    let mut controllers = config.controllers.clone();
    controllers.workqueue = metrics.workqueue.clone();
    controllers.node_tls = node_tls;
    let controllers_client = client.clone();
    components.spawn(leaderelection::run(
        client,
        CONTROLLER_MANAGER_LEASE,
        election,
        shutdown.clone(),
        move |token, tasks| {
            crate::controllers::start_all(controllers_client.clone(), &controllers, token, tasks)
        },
    ));
}

/// Creates or completes the bootstrap RBAC policy. Members starting together on one store
/// race to write the same objects: a conflict means another wrote first, so read again.
async fn reconcile_rbac(router: &axum::Router) -> Result<(), ControlError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match apiserver::rbac::bootstrap::reconcile(apiserver::in_process_client(router.clone()))
            .await
        {
            Ok(()) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempts < 10 => {
                tokio::time::sleep(Duration::from_millis(50 * attempts)).await;
            }
            Err(e) => {
                return Err(ControlError::Bootstrap(format!(
                    "reconciling the bootstrap RBAC policy: {e}"
                )));
            }
        }
    }
}

/// Creates the built-in IngressClass `wharf` (the default class, served by the node
/// proxies) unless it exists; an admin's later edits to it are kept.
async fn bootstrap_ingress_class(router: &axum::Router) -> Result<(), ControlError> {
    use k8s_openapi::api::networking::v1::IngressClass;
    use kube::api::{Api, PostParams};
    let class: IngressClass =
        serde_json::from_value(apiserver::registry::strategies::ingressclass::builtin())
            .map_err(|e| ControlError::Bootstrap(format!("the built-in IngressClass: {e}")))?;
    let api: Api<IngressClass> = Api::all(apiserver::in_process_client(router.clone()));
    match api.create(&PostParams::default(), &class).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(ControlError::Bootstrap(format!(
            "creating the IngressClass {}: {e}",
            apiserver::registry::strategies::ingressclass::WHARF_CLASS
        ))),
    }
}

/// Creates the namespaces every cluster has, through the API like any client would.
async fn bootstrap_namespaces(router: &axum::Router) -> Result<(), ControlError> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, PostParams};
    let client = apiserver::in_process_client(router.clone());
    let api: Api<Namespace> = Api::all(client);
    for name in crate::api::wellknown::SYSTEM_NAMESPACES {
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(ControlError::Bootstrap(format!(
                    "creating namespace {name}: {e}"
                )));
            }
        }
    }
    Ok(())
}

/// Creates the built-in `local-path` StorageClass (the cluster's default, as k3s ships
/// one) when it is missing: like the system namespaces, it is there after every start.
async fn bootstrap_storage_class(router: &axum::Router) -> Result<(), ControlError> {
    use k8s_openapi::api::storage::v1::StorageClass;
    use kube::api::{Api, PostParams};
    let api: Api<StorageClass> = Api::all(apiserver::in_process_client(router.clone()));
    match api
        .create(
            &PostParams::default(),
            &crate::controllers::persistentvolume::local_path_class(),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(ControlError::Bootstrap(format!(
            "creating the local-path storage class: {e}"
        ))),
    }
}

/// Serves `app` over TLS until `shutdown`, then drains: stops accepting, asks every
/// connection to finish (HTTP/2 GOAWAY, HTTP/1 close after the response in flight), waits
/// up to [`DRAIN_TIMEOUT`] and closes what is left. Watches end on the same token.
pub async fn serve_tls(
    listener: TcpListener,
    tls: TlsAcceptor,
    app: axum::Router,
    timeouts: ServeTimeouts,
    shutdown: CancellationToken,
) -> Result<(), std::io::Error> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The timer arms hyper's HTTP/1 header read timeout (a client that never finishes its
    // headers, or stays silent on a keep-alive connection) and HTTP/2 keep-alive pings (a
    // peer that is gone); CONNECT is for websockets over HTTP/2.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .enable_connect_protocol();
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    tracing::warn!(error = %e, "a connection task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    connections.spawn(serve_connection(
                        tcp,
                        peer,
                        tls.clone(),
                        builder.clone(),
                        app.clone(),
                        timeouts,
                        graceful.watcher(),
                        shutdown.clone(),
                    ));
                }
                Err(e) => accept_error(e).await,
            },
        }
    }
    drop(listener);
    let open = connections.len();
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open,
            left = connections.len(),
            "connections still open after {DRAIN_TIMEOUT:?}; closing them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// One connection: the TLS handshake (bounded by [`ServeTimeouts::handshake`], so a slow
/// client holds nothing but its own task), the bytes that tell HTTP/1.1 from HTTP/2
/// (bounded by [`ServeTimeouts::header_read`]: hyper would wait for them forever), then
/// HTTP/1.1 or HTTP/2 until it ends or the graceful shutdown has it finish.
#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: TlsAcceptor,
    builder: auto::Builder<TokioExecutor>,
    app: axum::Router,
    timeouts: ServeTimeouts,
    watcher: Watcher,
    shutdown: CancellationToken,
) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "setting TCP_NODELAY");
    }
    let stream = tokio::select! {
        _ = shutdown.cancelled() => return,
        handshake = tokio::time::timeout(timeouts.handshake, tls_handshake(tcp, &tls)) => {
            match handshake {
                Ok(Ok(Some(stream))) => stream,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    // A verified client certificate is the identity of every request on the connection
    // (the handshake refused any certificate the cluster CA did not sign).
    let client_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(pki::client_identity)
        .map(|(user, groups)| apiserver::auth::ClientCert::new(user, groups));
    let stream = tokio::select! {
        _ = shutdown.cancelled() => return,
        first = tokio::time::timeout(timeouts.header_read, read_preface(stream)) => match first {
            Ok(Ok(Some(stream))) => stream,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "reading the first request failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no request after the TLS handshake; closing");
                return;
            }
        }
    };
    // Handlers (the audit log) see the client's address.
    let app = app.layer(axum::Extension(axum::extract::ConnectInfo(peer)));
    let app = tower::ServiceExt::map_request(app, move |mut req: http::Request<_>| {
        if let Some(cert) = &client_cert {
            req.extensions_mut().insert(cert.clone());
        }
        req
    });
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(app));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// HTTP/2's connection preface, what a client speaking HTTP/2 sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the first bytes of a connection until they tell HTTP/1 from HTTP/2 (they leave
/// the HTTP/2 preface, or complete it), and gives back a stream that replays them; `None`
/// if the client closed first. hyper makes the same choice from the same bytes, but
/// without a bound on how long it waits for them.
async fn read_preface<S: tokio::io::AsyncRead + Unpin>(
    mut stream: S,
) -> std::io::Result<Option<Replay<S>>> {
    let mut seen = Vec::with_capacity(H2_PREFACE.len());
    let mut buf = [0u8; 24];
    loop {
        let n = stream
            .read(&mut buf[..H2_PREFACE.len() - seen.len()])
            .await?;
        if n == 0 {
            return Ok(None);
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.len() == H2_PREFACE.len() || !H2_PREFACE.starts_with(&seen) {
            return Ok(Some(Replay {
                head: seen,
                pos: 0,
                inner: stream,
            }));
        }
    }
}

/// A stream whose first bytes were already read: it yields them again, then the rest.
struct Replay<S> {
    head: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Replay<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.head.len() {
            let n = (this.head.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What Go's HTTPS servers (kube-apiserver among them) answer to plain HTTP.
const PLAIN_HTTP_REPLY: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The TLS handshake; `None` when the client spoke something else and was answered.
async fn tls_handshake(
    mut tcp: TcpStream,
    tls: &TlsAcceptor,
) -> std::io::Result<Option<TlsStream<TcpStream>>> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    // Every TLS connection starts with a handshake record (content type 22).
    if first[0] == 0x16 {
        return tls.accept(tcp).await.map(Some);
    }
    // Plain HTTP (a request line starts with a method in capitals): say why it fails, as
    // kube-apiserver does, instead of a TLS alert the client cannot read.
    if first[0].is_ascii_uppercase() {
        tcp.write_all(PLAIN_HTTP_REPLY).await?;
        tcp.shutdown().await?;
        // Read what the client sent until it closes, so closing does not reset the
        // connection before the client has read the answer. Bounded by the handshake
        // timeout around this function.
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
    }
    Ok(None)
}

/// Accept errors are mostly per connection (nothing to do); others, like running out of
/// file descriptors, call for a pause before trying again (as axum and hyper do).
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept error");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The address a client on this machine uses: a wildcard listen address is reached on
/// loopback.
fn client_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// The admin kubeconfig: the server's client address, the CA, the admin token.
fn kubeconfig_yaml(
    addr: SocketAddr,
    token: &str,
    ca_cert_pem: &str,
) -> Result<String, ControlError> {
    let cluster = crate::kubeconfig::Cluster {
        name: "wharf".into(),
        server: format!("https://{}", client_addr(addr)),
        ca_data: Some(base64::engine::general_purpose::STANDARD.encode(ca_cert_pem)),
        tls_server_name: None,
        insecure_skip_tls_verify: false,
    };
    crate::kubeconfig::render(&crate::kubeconfig::Kubeconfig {
        cluster: &cluster,
        user: "wharf-admin",
        credential: crate::kubeconfig::Credential::Token(token),
        context: "wharf",
        namespace: Some("default"),
        more_servers: &[],
    })
    .map_err(|e| ControlError::Bootstrap(format!("writing the kubeconfig: {e}")))
}

fn create_private_dir(dir: &Path) -> Result<(), ControlError> {
    std::fs::create_dir_all(dir).map_err(|error| ControlError::Io {
        path: dir.to_path_buf(),
        error,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|error| {
            ControlError::Io {
                path: dir.to_path_buf(),
                error,
            }
        })?;
    }
    Ok(())
}

async fn load_or_create_token(path: &Path) -> Result<String, ControlError> {
    match tokio::fs::read_to_string(path).await {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => create_token(path).await,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_token(path).await,
        Err(error) => Err(ControlError::Io {
            path: path.to_path_buf(),
            error,
        }),
    }
}

async fn create_token(path: &Path) -> Result<String, ControlError> {
    let token = generate_token();
    write_private(path, format!("{token}\n").as_bytes()).await?;
    Ok(token)
}

/// Writes a file readable only by its owner, atomically (temp file, fsync, rename), so a
/// crash never leaves a half-written credential.
async fn write_private(path: &Path, contents: &[u8]) -> Result<(), ControlError> {
    let path = path.to_path_buf();
    let contents = contents.to_vec();
    tokio::task::spawn_blocking(move || {
        write_private_blocking(&path, &contents).map_err(|error| ControlError::Io { path, error })
    })
    .await
    .map_err(|e| ControlError::Bootstrap(format!("writing a credential: {e}")))?
}

/// [`write_private`] for blocking code ([`crate::fsutil::write_private`]).
pub(crate) use crate::fsutil::write_private as write_private_blocking;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, ListParams, WatchParams};

    async fn client(kubeconfig: &Path) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    #[test]
    fn kubeconfig_points_at_https_with_the_ca_and_loopback_for_wildcards() {
        let yaml = kubeconfig_yaml("0.0.0.0:6443".parse().unwrap(), "tok", "PEM").unwrap();
        assert!(yaml.contains("server: https://127.0.0.1:6443\n"), "{yaml}");
        assert!(
            yaml.contains("certificate-authority-data: UEVN\n"),
            "{yaml}"
        );
        let yaml = kubeconfig_yaml("[::]:6443".parse().unwrap(), "tok", "PEM").unwrap();
        assert!(yaml.contains("server: https://[::1]:6443\n"), "{yaml}");
        let yaml = kubeconfig_yaml("10.0.0.1:7000".parse().unwrap(), "tok", "PEM").unwrap();
        assert!(yaml.contains("server: https://10.0.0.1:7000\n"), "{yaml}");
    }

    /// A TLS connection to the plane, verified with its CA, offering `alpn`.
    async fn tls_connect(
        plane: &ControlPlane,
        alpn: &[u8],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        use rustls::pki_types::pem::PemObject;
        let ca = rustls::pki_types::CertificateDer::from_pem_file(&plane.ca_cert).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(pki::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(plane.local_addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.unwrap()
    }

    /// Waits (bounded) for the server to close `stream`; what it read meanwhile.
    async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 1024];
            // A reset or a close without TLS close_notify also counts as closed.
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(read.is_ok(), "the server kept the silent connection open");
        got
    }

    #[tokio::test]
    async fn silent_connections_are_closed_after_the_handshake_and_header_timeouts() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = ControlConfig::new(tmp.path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.run_components = false;
        config.timeouts = ServeTimeouts {
            handshake: Duration::from_millis(300),
            header_read: Duration::from_millis(300),
        };
        let shutdown = CancellationToken::new();
        let plane = start(config, shutdown.clone()).await.unwrap();
        let started = std::time::Instant::now();

        // Connects and never starts TLS.
        let mut tcp = TcpStream::connect(plane.local_addr).await.unwrap();
        // Finishes TLS, then sends nothing: over HTTP/1.1 and over HTTP/2.
        let mut h1 = tls_connect(&plane, b"http/1.1").await;
        let mut h2 = tls_connect(&plane, b"h2").await;
        // Sends the start of the HTTP/2 preface (so neither protocol is known yet).
        let mut partial_preface = tls_connect(&plane, b"h2").await;
        partial_preface.write_all(b"PRI * HT").await.unwrap();
        partial_preface.flush().await.unwrap();
        // Sends half of an HTTP/1 request's headers.
        let mut partial_headers = tls_connect(&plane, b"http/1.1").await;
        partial_headers
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .unwrap();
        partial_headers.flush().await.unwrap();

        closed_by_server(&mut tcp).await;
        closed_by_server(&mut h1).await;
        closed_by_server(&mut h2).await;
        closed_by_server(&mut partial_preface).await;
        let answer = closed_by_server(&mut partial_headers).await;
        assert!(
            !String::from_utf8_lossy(&answer).contains("200 OK"),
            "{answer:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));

        // A client that does send its request is served, and its keep-alive connection
        // is closed once it stays silent.
        let mut ok = tls_connect(&plane, b"http/1.1").await;
        ok.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let answer = closed_by_server(&mut ok).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn serves_tls_answers_plain_http_with_400_and_drains_on_shutdown() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = ControlConfig::new(tmp.path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        let shutdown = CancellationToken::new();
        let plane = start(config, shutdown.clone()).await.unwrap();
        assert_eq!(plane.ca_cert, tmp.path().join("pki").join("ca.crt"));

        // Plain HTTP to the TLS port: a readable 400, then the connection closes.
        let mut plain = TcpStream::connect(plane.local_addr).await.unwrap();
        plain
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.0 400 Bad Request"), "{answer}");
        assert!(answer.contains("HTTPS server"), "{answer}");

        // Garbage, and a client that connects and says nothing, hold nothing up.
        let mut garbage = TcpStream::connect(plane.local_addr).await.unwrap();
        garbage.write_all(&[0u8; 64]).await.unwrap();
        let _silent = TcpStream::connect(plane.local_addr).await.unwrap();

        // The kubeconfig works over TLS, verifying the server with its CA.
        let client = client(&plane.kubeconfig).await;
        let api: Api<Namespace> = Api::all(client.clone());
        let names: Vec<String> = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .into_iter()
            .filter_map(|ns| ns.metadata.name)
            .collect();
        assert!(names.iter().any(|n| n == "default"), "{names:?}");

        // A watch open at shutdown ends, and the server drains well before the handshake
        // timeout of the silent client.
        let mut watch = api
            .watch(&WatchParams::default(), "0")
            .await
            .unwrap()
            .boxed();
        assert!(watch.next().await.is_some());
        shutdown.cancel();
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(20), plane.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(
            started.elapsed() < HANDSHAKE_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        let rest = tokio::time::timeout(Duration::from_secs(10), async {
            while watch.next().await.is_some() {}
        })
        .await;
        assert!(rest.is_ok(), "the watch did not end");
    }

    #[tokio::test]
    async fn a_restart_keeps_the_ca_and_the_old_kubeconfig_ca_still_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = ControlConfig::new(tmp.path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        let shutdown = CancellationToken::new();
        let plane = start(config.clone(), shutdown.clone()).await.unwrap();
        let ca = std::fs::read(&plane.ca_cert).unwrap();
        shutdown.cancel();
        plane.wait().await.unwrap();

        let shutdown = CancellationToken::new();
        let plane = start(config, shutdown.clone()).await.unwrap();
        assert_eq!(std::fs::read(&plane.ca_cert).unwrap(), ca);
        let api: Api<Namespace> = Api::all(client(&plane.kubeconfig).await);
        api.get("default").await.unwrap();
        shutdown.cancel();
        plane.wait().await.unwrap();
    }
}
