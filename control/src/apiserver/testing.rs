//! The one harness of the API handler tests: a whole router on a real store in a temp
//! dir, requests through `oneshot` (every one under a timeout), and an in-process
//! `kube::Client` on the same router for tests that speak as a client library does.

use super::auth::{Authenticator, Identity};
use super::{ApiConfig, AppState, router};
use crate::store::{CacheConfig, FjallStore, Store, StoreConfig, WatchCache};
use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The admin's bearer token.
pub const ADMIN_TOKEN: &str = "test-token";

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A router on its own store, with the `default` namespace created.
#[derive(Clone)]
pub struct TestApi {
    pub router: Router,
    pub state: AppState,
    pub store: Arc<dyn Store>,
    /// The backend under the watch cache, for what only the embedded backend tells (its
    /// compaction, its TTL sweeper).
    pub fjall: Arc<FjallStore>,
    _dir: Arc<tempfile::TempDir>,
}

impl TestApi {
    /// The default configuration.
    pub async fn new() -> TestApi {
        TestApi::with(ApiConfig::default(), |_| {}).await
    }

    /// `config`, and a store configured by `store_config`.
    pub async fn with(config: ApiConfig, store_config: impl FnOnce(&mut StoreConfig)) -> TestApi {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sc = StoreConfig::new(dir.path().join("store"));
        store_config(&mut sc);
        // As the control plane runs it: the watch cache over the backend, keeping no more
        // history than the backend's log.
        let cache = CacheConfig {
            events: CacheConfig::default().events.min(sc.log_max_events),
            ..CacheConfig::default()
        };
        let fjall = Arc::new(FjallStore::open(sc).expect("store"));
        // One registry, as the control plane has it: the store's calls are timed and
        // `/metrics` serves what the requests count.
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = crate::metrics::ControlMetrics::register(&mut registry);
        let metered: Arc<dyn Store> = Arc::new(crate::store::Metered::new(
            fjall.clone(),
            metrics.store.clone(),
        ));
        let cache = Arc::new(
            WatchCache::start(metered, cache)
                .await
                .expect("watch cache"),
        );
        registry.register_collector(Box::new(crate::metrics::StorageObjects(cache.clone())));
        let store: Arc<dyn Store> = cache;
        let auth = Arc::new(Authenticator::new());
        auth.add_token(ADMIN_TOKEN, Identity::admin());
        auth.set_token_issuer(
            super::serviceaccounts::TokenIssuer::generate(super::serviceaccounts::DEFAULT_ISSUER)
                .expect("service account key"),
        );
        // The cluster CA: nodes' certificates are signed with it, and fake nodes
        // ([`TestApi::serve_node`]) are called over TLS with it.
        let mut config = config;
        let pki_dir = dir.path().join("pki");
        crate::pki::Pki::load_or_generate(&pki_dir, "127.0.0.1:0".parse().expect("address"))
            .expect("pki");
        if config.node_tls.is_none() {
            config.node_tls = Some(
                crate::nodetls::apiserver_client_config(&pki_dir, std::time::SystemTime::now())
                    .expect("node client TLS"),
            );
        }
        config.pki_dir.get_or_insert(pki_dir);
        let state = AppState {
            store: store.clone(),
            auth,
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
            rbac: Default::default(),
            kinds: Default::default(),
            metrics,
            registry: Arc::new(registry),
            resource_samples: Default::default(),
        };
        let api = TestApi {
            router: router(state.clone()),
            state,
            store,
            fjall,
            _dir: Arc::new(dir),
        };
        let (code, body) = api
            .send(
                "POST",
                "/api/v1/namespaces",
                Some(json!({"metadata": {"name": "default"}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
        api
    }

    /// Registers the Node `name` as a node agent would: Ready, at 127.0.0.1 (hostname
    /// `localhost`), with its server at `port` when given.
    pub async fn ready_node(&self, name: &str, port: Option<u16>) {
        let (code, body) = self
            .send(
                "POST",
                "/api/v1/nodes",
                Some(json!({"metadata": {"name": name}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "creating node {name}: {body}");
        let mut status = json!({
            "addresses": [{"type": "Hostname", "address": "localhost"},
                          {"type": "InternalIP", "address": "127.0.0.1"}],
            "conditions": [{"type": "Ready", "status": "True"}]});
        if let Some(port) = port {
            status["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": port}});
        }
        let (code, body) = self
            .send_as(
                "PATCH",
                &format!("/api/v1/nodes/{name}/status"),
                "application/merge-patch+json",
                Some(json!({ "status": status })),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "readying node {name}: {body}");
    }

    /// Serves `app` as a node's server on `listener`: TLS with a certificate of this
    /// API's CA for 127.0.0.1, a client certificate of the CA required.
    pub fn serve_node(&self, listener: tokio::net::TcpListener, app: Router) {
        tokio::spawn(crate::controlplane::serve_tls(
            listener,
            tokio_rustls::TlsAcceptor::from(self.node_server_tls()),
            app,
            Default::default(),
            self.state.shutdown.clone(),
        ));
    }

    /// A node server's TLS for node `n1` at 127.0.0.1, certified by this API's CA, with
    /// client certificates required (as nodes' tunnels and servers are).
    pub fn node_server_tls(&self) -> Arc<rustls::ServerConfig> {
        let dir = self.state.config.pki_dir.clone().expect("pki dir");
        let ca = std::fs::read_to_string(dir.join(crate::pki::CA_CERT)).expect("ca");
        let ip = "127.0.0.1".parse().expect("ip");
        let (key, csr) = crate::nodetls::node_csr("n1", &[ip], &[]).expect("csr");
        let cert = crate::nodetls::sign_node_csr(
            &dir,
            "n1",
            &csr,
            &["127.0.0.1".into()],
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
        .expect("node certificate");
        let cert = Arc::new(
            crate::nodetls::ReloadableCert::from_pem(&cert, &key.serialize_pem()).expect("cert"),
        );
        crate::nodetls::server_config(&ca, cert, true, &[b"http/1.1"]).expect("tls")
    }

    /// The store's current revision.
    pub async fn revision(&self) -> u64 {
        self.store.revision().await.expect("revision")
    }

    /// Lets `token` in as `identity`.
    pub fn add_token(&self, token: &str, identity: Identity) {
        self.state.auth.add_token(token, identity);
    }

    /// A `kube::Client` on the router, as the control plane's own components use.
    pub fn client(&self) -> kube::Client {
        super::in_process_client(self.router.clone())
    }

    /// Sends `req` and answers the status and the body (JSON, else the text as a string).
    pub async fn request(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.router.clone().oneshot(req))
            .await
            .expect("request timed out")
            .expect("infallible");
        let code = resp.status();
        let bytes = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
            .await
            .expect("reading the body timed out")
            .expect("body")
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
        (code, value)
    }

    /// A JSON request as the admin.
    pub async fn send(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send_as(method, uri, "application/json", body).await
    }

    /// A request as the admin with the Content-Type `content_type` (none if empty).
    pub async fn send_as(
        &self,
        method: &str,
        uri: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.send_with(ADMIN_TOKEN, method, uri, content_type, body)
            .await
    }

    /// A request with bearer `token`.
    pub async fn send_with(
        &self,
        token: &str,
        method: &str,
        uri: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"));
        if !content_type.is_empty() {
            req = req.header("content-type", content_type);
        }
        let body = body
            .map(|b| Body::from(b.to_string()))
            .unwrap_or_else(Body::empty);
        self.request(req.body(body).expect("request")).await
    }
}
