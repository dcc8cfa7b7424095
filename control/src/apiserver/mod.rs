//! The Kubernetes-shaped API server.
//!
//! One axum router serves every kind through generic handlers driven by the kinds table
//! ([`crate::api::KINDS`], and the rows CustomResourceDefinitions add,
//! [`AppState::kinds`]): dispatch ([`resources`]) resolves a URL to a
//! [`request::Target`] (kind, namespace, name, subresource) and chooses the verb from the
//! method and query; the generic registry ([`registry`]) moves the object as JSON between
//! the client, the kind's strategy (defaults, validation, server-filled fields) and the
//! [`Store`].
//!
//! The same router serves TCP clients and the control plane's own components: the
//! in-process [`kube::Client`] built by [`in_process_client`] calls the router as a tower
//! service, so a controller sees exactly what a user sees, without a socket.

pub mod attach;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod binding;
pub mod discovery;
pub mod endpoint_addresses;
pub mod error;
pub mod eviction;
pub mod exec;
pub mod fieldcheck;
pub mod followed;
pub mod host_path;
pub mod ipam;
pub mod limitranger;
pub mod metrics;
pub mod nodecert;
pub mod objects;
pub mod openapi;
pub mod paging;
pub mod portforward;
pub mod priority;
pub mod protobuf;
pub mod proxy;
pub mod quota;
pub mod rbac;
pub mod registry;
pub mod request;
pub mod resource_metrics;
pub mod resources;
pub mod reviews;
pub mod scale;
pub mod secrets_encrypt;
pub mod serviceaccounts;
pub mod services;
pub mod table;
pub mod usage_history;
pub mod watch;

use crate::store::Store;
use auth::{Authenticator, Identity};
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::{any, get, post};
use error::ApiError;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Tunables of the API server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
    /// How often an idle watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Where Service cluster IPs and node ports come from.
    pub services: services::ServiceRanges,
    /// How long a node credential is valid from its creation; nodes renew theirs when a
    /// third of it is left (`wharf control --node-credential-validity`).
    pub node_credential_validity: Duration,
    /// How long an Event lives after its last write (`wharf control --event-ttl`, an hour
    /// by default, as kube-apiserver's `--event-ttl`): the store deletes it then.
    pub event_ttl: Duration,
    /// How often the dashboard's usage history samples the nodes (`wharf control
    /// --usage-history-interval`); zero keeps none ([`usage_history`]).
    pub usage_history_interval: Duration,
    /// The cluster CA's directory (`DATA_DIR/pki`), which node certificates are signed
    /// with (`nodes/NAME/certificate`, see [`nodecert`]); `None` signs none.
    pub pki_dir: Option<std::path::PathBuf>,
    /// How the API server calls nodes (logs, stats): TLS with its client certificate,
    /// verifying the node's against the cluster CA (see [`crate::nodetls`]); `None`
    /// reaches no node.
    pub node_tls: Option<Arc<rustls::ClientConfig>>,
    /// The address the API server listens on (set when it binds): port-forward reaches
    /// the pods of nodes at this address directly and those of nodes elsewhere through
    /// their tunnel. `None` is taken as listening on every address.
    pub address: Option<std::net::IpAddr>,
}

impl ApiConfig {
    /// The TTL objects of `kind` are stored with, if they expire: Events do.
    pub fn ttl_of(&self, kind: &crate::api::kinds::ResourceKind) -> Option<Duration> {
        (kind.kind == "Event" && matches!(kind.group, "" | "events.k8s.io"))
            .then_some(self.event_ttl)
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 3 * 1024 * 1024,
            bookmark_interval: Duration::from_secs(30),
            services: services::ServiceRanges::default(),
            node_credential_validity: Duration::from_secs(365 * 24 * 3600),
            event_ttl: Duration::from_secs(3600),
            usage_history_interval: Duration::from_secs(15),
            pki_dir: None,
            node_tls: None,
            address: None,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub auth: Arc<Authenticator>,
    pub config: Arc<ApiConfig>,
    /// Cancelled when the server shuts down: ends every open watch so that draining
    /// connections finishes.
    pub shutdown: CancellationToken,
    /// The RBAC policy the authorizer reads, following the store.
    pub rbac: Arc<rbac::cache::PolicyCache>,
    /// The kinds served: the built-ins and what CustomResourceDefinitions add,
    /// following the store.
    pub kinds: Arc<registry::custom::Kinds>,
    /// The control plane's metric families (the API server counts requests here).
    pub metrics: crate::metrics::ControlMetrics,
    /// What `/metrics` serves: the process's registry, where `metrics` is registered.
    pub registry: Arc<prometheus_client::registry::Registry>,
    /// The nodes' recent stats samples, which `metrics.k8s.io` rates are computed from.
    pub resource_samples: Arc<resource_metrics::Samples>,
}

/// The whole API: health and version endpoints without authentication, everything else
/// behind the bearer-token check. Discovery and `/version` answer with and without a
/// trailing slash, as kube-apiserver does: the Kubernetes OpenAPI spec (and so every
/// client generated from it, such as the Python client) names them `/version/`, `/api/`,
/// `/apis/apps/v1/`.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api", get(discovery::api_versions))
        .route("/api/", get(discovery::api_versions))
        .route("/apis", get(discovery::api_groups))
        .route("/apis/", get(discovery::api_groups))
        .route("/api/{version}", get(discovery::core_resources))
        .route("/api/{version}/", get(discovery::core_resources))
        .route("/apis/{group}", get(discovery::api_group))
        .route("/apis/{group}/", get(discovery::api_group))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
        .route("/apis/{group}/{version}/", get(discovery::group_resources))
        .route("/openapi/v3", get(openapi::index))
        .route("/openapi/v3/{*path}", get(openapi::group_version))
        .route(
            &reviews::Review::SelfSubjectAccess.path(),
            post(self_subject_access_review),
        )
        .route(
            &reviews::Review::SubjectAccess.path(),
            post(subject_access_review),
        )
        .route(
            &reviews::Review::SelfSubjectRules.path(),
            post(self_subject_rules_review),
        )
        .route(
            &reviews::Review::SelfSubject.path(),
            post(self_subject_review),
        )
        .route(&reviews::Review::Token.path(), post(token_review))
        .route(
            serviceaccounts::OPENID_CONFIGURATION_PATH,
            get(serviceaccounts::openid_configuration),
        )
        .route(serviceaccounts::JWKS_PATH, get(serviceaccounts::jwks))
        .route(crate::snapshot::API_PATH, get(crate::snapshot::serve))
        .route(metrics::PATH, get(metrics::serve))
        .route(metrics::TARGETS_PATH, get(metrics::serve_targets))
        .route("/api/{version}/{*rest}", any(core_resource))
        .route("/apis/{group}/{version}/{*rest}", any(group_resource))
        .fallback(not_found)
        // Runs after the identity layer below.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authz::authorize_non_resource,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            protobuf::negotiate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_identity,
        ));
    Router::new()
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .route("/version", get(discovery::version))
        .route("/version/", get(discovery::version))
        .merge(api)
        // Outermost: every request is counted, refused ones too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::record,
        ))
        .with_state(state)
}

async fn health() -> &'static str {
    "ok"
}

async fn not_found() -> ApiError {
    ApiError::NotFound {
        subject: Default::default(),
        message: "the server could not find the requested resource".into(),
    }
}

async fn core_resource(
    State(state): State<AppState>,
    Path((version, rest)): Path<(String, String)>,
    req: Request,
) -> Response {
    resources::dispatch(state, "", &version, &rest, req).await
}

async fn group_resource(
    State(state): State<AppState>,
    Path((group, version, rest)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    resources::dispatch(state, &group, &version, &rest, req).await
}

async fn self_subject_access_review(State(state): State<AppState>, req: Request) -> Response {
    reviews::create(state, reviews::Review::SelfSubjectAccess, req).await
}

async fn subject_access_review(State(state): State<AppState>, req: Request) -> Response {
    reviews::create(state, reviews::Review::SubjectAccess, req).await
}

async fn self_subject_rules_review(State(state): State<AppState>, req: Request) -> Response {
    reviews::create(state, reviews::Review::SelfSubjectRules, req).await
}

async fn self_subject_review(State(state): State<AppState>, req: Request) -> Response {
    reviews::create(state, reviews::Review::SelfSubject, req).await
}

async fn token_review(State(state): State<AppState>, req: Request) -> Response {
    reviews::create(state, reviews::Review::Token, req).await
}

/// A `kube::Client` that calls `router` in process, as the system identity: no TCP, the
/// same handlers and semantics as any client.
pub fn in_process_client(router: Router) -> kube::Client {
    client_of(router, false)
}

/// Marks a request whose lists and watches leave out `metadata.managedFields`. The
/// control plane's own components never read them (the API server works out field
/// ownership from what it stores), yet every pod carries at least two entries (its
/// creator's, naming each field of the spec, and its node's, naming each field of the
/// status): kube-controller-manager and kube-scheduler strip them from their informer
/// caches; here they are not encoded for these watchers in the first place, nor decoded
/// and held by them. Only [`component_client`] sets it: a request extension, which no
/// caller over the network can send. An update of an object read this way keeps the
/// stored managedFields, as any update that does not mention them.
#[derive(Clone, Copy, Debug)]
pub struct WithoutManagedFields;

/// [`in_process_client`] for the control plane's own components (scheduler, controllers)
/// and the nodes that run in its process: its lists and watches come without
/// managedFields ([`WithoutManagedFields`]).
pub fn component_client(router: Router) -> kube::Client {
    client_of(router, true)
}

fn client_of(router: Router, without_managed_fields: bool) -> kube::Client {
    use tower::ServiceExt;
    let service = router.map_request(move |mut req: http::Request<kube::client::Body>| {
        req.extensions_mut().insert(Identity::system());
        if without_managed_fields {
            req.extensions_mut().insert(WithoutManagedFields);
        }
        req.map(axum::body::Body::new)
    });
    kube::Client::new(service, "default")
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
