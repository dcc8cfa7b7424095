//! An hour of CPU and memory per container, kept by the API server for the dashboard's
//! graphs, so that opening a pod shows its last hour at once (no Prometheus needed).
//!
//! Why here and like this:
//! - **Sampled the way `metrics.k8s.io` is read.** Every `--usage-history-interval` (15 s
//!   by default) the API server asks every node for its `/stats/summary`, as it does to
//!   answer PodMetrics, and keeps one point per pod: each container's CPU (nanocores,
//!   averaged since the previous sample), memory, and for an HTTP handler the requests
//!   per second it received over the same window. A ring per pod keeps an hour; a pod
//!   not seen for an hour is forgotten; a pod recreated under the same name (another uid)
//!   starts a new ring.
//! - **Authorized as PodMetrics are.** `GET /wharf/v1/namespaces/NS/pods/NAME/usage`
//!   answers for whoever may `get` `pods.metrics.k8s.io` in NS (the `view` role and up,
//!   through `system:aggregated-metrics-reader`), with the same 401/403 as the API.
//! - **In memory, per API server.** Each member of a highly available control plane keeps
//!   its own history from the moment it starts; nothing is written to the store.

use super::AppState;
use super::auth;
use super::authz::{self, Verb};
use super::error::ApiError;
use super::request::Target;
use super::resource_metrics::{self, NodeUsage};
use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a pod's points are kept.
pub const KEEP: SignedDuration = SignedDuration::from_secs(3600);

/// One container at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPoint {
    pub name: String,
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
    /// HTTP requests per second it received (a `wasi:http` handler only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
}

/// One pod at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub timestamp: Timestamp,
    pub containers: Vec<ContainerPoint>,
}

#[derive(Debug, Default)]
struct Ring {
    uid: String,
    points: VecDeque<Point>,
}

/// Every pod's last hour.
#[derive(Debug, Default)]
pub struct UsageHistory {
    pods: Mutex<HashMap<(String, String), Ring>>,
}

impl UsageHistory {
    /// Adds a node's usage: one point per pod at the usage's time, dropping points older
    /// than [`KEEP`] and the rings of pods not seen for that long.
    pub fn record(&self, usage: &NodeUsage) {
        let now = usage.timestamp;
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        for pod in &usage.pods {
            let ring = pods
                .entry((pod.namespace.clone(), pod.name.clone()))
                .or_default();
            if ring.uid != pod.uid {
                *ring = Ring {
                    uid: pod.uid.clone(),
                    points: VecDeque::new(),
                };
            }
            if ring.points.back().is_some_and(|p| p.timestamp >= now) {
                continue;
            }
            ring.points.push_back(Point {
                timestamp: now,
                containers: pod
                    .containers
                    .iter()
                    .map(|c| ContainerPoint {
                        name: c.name.clone(),
                        cpu_nanocores: c.cpu_nanocores,
                        memory_bytes: c.memory_bytes,
                        requests_per_second: c.request_millis_per_second.map(|m| m as f64 / 1000.0),
                    })
                    .collect(),
            });
        }
        let horizon = now - KEEP;
        pods.retain(|_, ring| {
            while ring.points.front().is_some_and(|p| p.timestamp < horizon) {
                ring.points.pop_front();
            }
            !ring.points.is_empty()
        });
    }

    /// The points kept for a pod, oldest first.
    pub fn of(&self, namespace: &str, name: &str) -> Vec<Point> {
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.get(&(namespace.to_string(), name.to_string()))
            .map(|r| r.points.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Samples every node each `interval` until `shutdown`.
pub async fn run(
    state: AppState,
    history: Arc<UsageHistory>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sampled = tokio::select! {
            _ = shutdown.cancelled() => return,
            sampled = resource_metrics::usage_of_all_nodes(&state) => sampled,
        };
        match sampled {
            Ok(usages) => usages.values().for_each(|u| history.record(u)),
            Err(e) => tracing::debug!(error = %e, "usage history: listing nodes"),
        }
    }
}

/// `GET /wharf/v1/namespaces/{ns}/pods/{name}/usage`, authenticated and authorized as a
/// `get` of the pod's PodMetrics.
pub fn router(state: AppState, history: Arc<UsageHistory>) -> Router {
    Router::new()
        .route(
            "/wharf/v1/namespaces/{namespace}/pods/{name}/usage",
            get(serve),
        )
        .with_state((state.clone(), history))
        .layer(axum::middleware::from_fn_with_state(
            state,
            auth::require_identity,
        ))
}

async fn serve(
    State((state, history)): State<(AppState, Arc<UsageHistory>)>,
    Path((namespace, name)): Path<(String, String)>,
    identity: Option<axum::Extension<auth::Identity>>,
) -> Response {
    let Some(kind) = crate::api::find_kind(
        &format!("{}/{}", resource_metrics::GROUP, resource_metrics::VERSION),
        "PodMetrics",
    ) else {
        return ApiError::Internal("PodMetrics is not a served kind".into()).into_response();
    };
    let target = Target {
        kind,
        namespace: Some(namespace.clone()),
        name: Some(name.clone()),
        subresource: None,
    };
    if let Err(e) = authz::enforce(&state, identity.as_deref(), Verb::Get, &target).await {
        return e.into_response();
    }
    axum::Json(serde_json::json!({
        "kind": "PodUsageHistory",
        "apiVersion": "wharf.dev/v1",
        "metadata": {"name": name, "namespace": namespace},
        "points": history.of(&namespace, &name),
    }))
    .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::apiserver::resource_metrics::{ContainerUsage, PodUsage};

    fn usage(at: i64, pods: &[(&str, &str, u64)]) -> NodeUsage {
        NodeUsage {
            timestamp: Timestamp::from_second(1_800_000_000 + at).unwrap(),
            window: Duration::from_secs(15),
            pods: pods
                .iter()
                .map(|(name, uid, cpu)| PodUsage {
                    namespace: "default".into(),
                    name: (*name).into(),
                    uid: (*uid).into(),
                    containers: vec![ContainerUsage {
                        name: "app".into(),
                        cpu_nanocores: *cpu,
                        memory_bytes: 1 << 20,
                        request_millis_per_second: Some(2500),
                    }],
                })
                .collect(),
        }
    }

    fn cpus(h: &UsageHistory, name: &str) -> Vec<u64> {
        h.of("default", name)
            .iter()
            .map(|p| p.containers[0].cpu_nanocores)
            .collect()
    }

    #[tokio::test]
    async fn served_to_those_who_may_get_pod_metrics() {
        use crate::apiserver::testing::TestApi;
        use axum::http::StatusCode;
        use serde_json::json;
        let mut api = TestApi::new().await;
        let history = Arc::new(UsageHistory::default());
        history.record(&usage(0, &[("web", "u1", 250_000_000)]));
        let full = std::mem::replace(&mut api.router, router(api.state.clone(), history));
        api.add_token(
            "alice-token",
            auth::Identity {
                user: "alice".into(),
                groups: vec!["system:authenticated".into()],
            },
        );
        let uri = "/wharf/v1/namespaces/default/pods/web/usage";
        let (code, body) = api.send("GET", uri, None).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["kind"], "PodUsageHistory");
        assert_eq!(
            body["points"][0]["containers"][0]["cpuNanocores"],
            250_000_000
        );
        assert_eq!(body["points"][0]["containers"][0]["memoryBytes"], 1 << 20);
        assert_eq!(body["points"][0]["containers"][0]["requestsPerSecond"], 2.5);

        let (code, body) = api.send_with("alice-token", "GET", uri, "", None).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(
            body["message"],
            "pods.metrics.k8s.io \"web\" is forbidden: User \"alice\" cannot get resource \"pods\" in API group \"metrics.k8s.io\" in the namespace \"default\""
        );
        let (code, _) = api.send_with("wrong", "GET", uri, "", None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);

        // Granted get on pods.metrics.k8s.io in default (as `view` grants it): allowed.
        let usage_router = std::mem::replace(&mut api.router, full);
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "metrics", "namespace": "default"},
            "rules": [{"apiGroups": ["metrics.k8s.io"], "resources": ["pods"], "verbs": ["get"]}]});
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "alice-metrics", "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "metrics"},
            "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]});
        let rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/default";
        let (code, body) = api.send("POST", &format!("{rbac}/roles"), Some(role)).await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
        let (code, body) = api
            .send("POST", &format!("{rbac}/rolebindings"), Some(binding))
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
        api.router = usage_router;
        let (code, body) = api.send_with("alice-token", "GET", uri, "", None).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let (code, body) = api
            .send_with(
                "alice-token",
                "GET",
                "/wharf/v1/namespaces/other/pods/web/usage",
                "",
                None,
            )
            .await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    }

    #[test]
    fn keeps_an_hour_per_pod_and_starts_over_for_a_new_uid() {
        let h = UsageHistory::default();
        h.record(&usage(0, &[("web", "u1", 1), ("db", "u2", 5)]));
        h.record(&usage(15, &[("web", "u1", 2)]));
        // The same time again (another member's sample of it) adds nothing.
        h.record(&usage(15, &[("web", "u1", 9)]));
        assert_eq!(cpus(&h, "web"), [1, 2]);
        // An hour later the first points go, and db (not seen since) with them.
        h.record(&usage(3601, &[("web", "u1", 3)]));
        assert_eq!(cpus(&h, "web"), [2, 3]);
        assert!(h.of("default", "db").is_empty());
        // web recreated: a new uid, a new ring.
        h.record(&usage(3616, &[("web", "u9", 7)]));
        assert_eq!(cpus(&h, "web"), [7]);
        assert!(h.of("other", "web").is_empty());
    }
}
