//! `/metrics` and the request counters behind it.
//!
//! Every request through the router (over TCP, and the control plane's own components
//! through the in-process client, as kube-apiserver counts its loopback clients) is
//! classified as Kubernetes' request info does ([`classify`], a pure function of the
//! method, path and query) and counted in `apiserver_request_total` and
//! `apiserver_request_duration_seconds`. The duration is until the response's headers:
//! a watch or a log stream counts its set-up, not its life.
//!
//! `/metrics` is a non-resource URL: the authorizer lets through whom RBAC allows `get`
//! on it (`system:monitoring`, and cluster-admin). `apiserver_storage_objects` is read
//! from the watch cache when scraped.

use super::AppState;
use crate::metrics::{RequestDurationLabels, RequestLabels};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use std::time::Instant;

/// The path of the metrics endpoint.
pub const PATH: &str = "/metrics";
/// Prometheus HTTP service discovery of the nodes' `/metrics` (`http_sd_configs`): the
/// node servers' addresses as the Nodes publish them, for scrapers without Kubernetes
/// service discovery.
pub const TARGETS_PATH: &str = "/metrics/targets";

/// What a request is, as Kubernetes labels it in metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Classified {
    /// `GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`, `APPLY`, `DELETE`,
    /// `DELETECOLLECTION`, `CONNECT`; a non-resource request's method.
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    /// `resource` (one named object), `namespace` (a namespaced collection), `cluster`;
    /// empty for non-resource requests.
    pub scope: String,
}

/// Subresources that are served as streams and counted as `CONNECT`, as Kubernetes does.
const CONNECT_SUBRESOURCES: &[&str] = &["exec", "attach", "portforward", "proxy"];

/// Classifies a request by its method, path and query (pure).
pub fn classify(method: &Method, path: &str, query: Option<&str>, apply: bool) -> Classified {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        _ => {
            return Classified {
                verb: method.as_str().to_owned(),
                ..Classified::default()
            };
        }
    };
    let (watch_path, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let (namespaced, resource, name, subresource) = match rest {
        ["namespaces", _ns, resource, tail @ ..] => (true, *resource, tail.first(), tail.get(1)),
        [resource, tail @ ..] => (false, *resource, tail.first(), tail.get(1)),
        [] => (false, "", None, None),
    };
    let watch_query = query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
    });
    let subresource = subresource.copied().unwrap_or_default();
    let verb = if watch_path || (watch_query && *method == Method::GET) {
        "WATCH"
    } else if CONNECT_SUBRESOURCES.contains(&subresource) {
        "CONNECT"
    } else {
        match (method, name.is_some()) {
            (&Method::GET, true) => "GET",
            (&Method::GET, false) => "LIST",
            (&Method::DELETE, false) => "DELETECOLLECTION",
            (&Method::PATCH, _) if apply => "APPLY",
            (m, _) => m.as_str(),
        }
    };
    let scope = if name.is_some() {
        "resource"
    } else if namespaced {
        "namespace"
    } else {
        "cluster"
    };
    Classified {
        verb: verb.to_owned(),
        group: group.to_owned(),
        version: version.to_owned(),
        resource: resource.to_owned(),
        subresource: subresource.to_owned(),
        scope: scope.to_owned(),
    }
}

/// Middleware: counts and times every request.
pub async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let apply = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/apply-patch"));
    let mut c = classify(req.method(), req.uri().path(), req.uri().query(), apply);
    let response = next.run(req).await;
    // A made-up resource is counted without its name (bounded label values).
    if !c.resource.is_empty() && !state.kinds.serves(&state, &c.group, &c.resource).await {
        c.resource.clear();
        c.subresource.clear();
    }
    let m = &state.metrics.apiserver;
    m.durations
        .get_or_create(&RequestDurationLabels {
            verb: c.verb.clone(),
            group: c.group.clone(),
            version: c.version.clone(),
            resource: c.resource.clone(),
            subresource: c.subresource.clone(),
            scope: c.scope.clone(),
            component: "apiserver".into(),
        })
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            verb: c.verb,
            group: c.group,
            version: c.version,
            resource: c.resource,
            subresource: c.subresource,
            scope: c.scope,
            component: "apiserver".into(),
            code: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

/// `GET /metrics`: the process's registry in the Prometheus text format.
pub async fn serve(State(state): State<AppState>) -> Response {
    match crate::metrics::encode(&state.registry) {
        Ok(text) => (
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(_) => {
            super::error::ApiError::Internal("encoding the metrics failed".into()).into_response()
        }
    }
}

/// The HTTP service discovery document of the nodes' servers (pure): one target group per
/// Node with an address (`InternalIP`, else `ExternalIP`) and a server port, labelled
/// with the node's name.
pub fn node_targets(nodes: &[serde_json::Value]) -> serde_json::Value {
    let groups: Vec<serde_json::Value> = nodes
        .iter()
        .filter_map(|n| {
            let name = n.pointer("/metadata/name")?.as_str()?;
            let port = n
                .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")?
                .as_i64()
                .filter(|p| *p > 0)?;
            let addrs = n.pointer("/status/addresses")?.as_array()?;
            let of = |ty: &str| {
                addrs
                    .iter()
                    .find(|a| a["type"] == ty)
                    .and_then(|a| a["address"].as_str())
            };
            let ip = of("InternalIP").or_else(|| of("ExternalIP"))?;
            let host = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V6(_)) => format!("[{ip}]:{port}"),
                _ => format!("{ip}:{port}"),
            };
            Some(serde_json::json!({"targets": [host], "labels": {"node": name}}))
        })
        .collect();
    serde_json::Value::Array(groups)
}

/// `GET /metrics/targets`: [`node_targets`] of the stored Nodes.
pub async fn serve_targets(State(state): State<AppState>) -> Response {
    let prefix = crate::store::collection_prefix("", "nodes", None);
    match state.store.list(&prefix).await {
        Ok(listed) => {
            let nodes: Vec<serde_json::Value> = listed
                .items
                .iter()
                .filter_map(|o| serde_json::from_slice(&o.value).ok())
                .collect();
            axum::Json(node_targets(&nodes)).into_response()
        }
        Err(e) => super::error::ApiError::from_store(e, Default::default()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_targets_are_their_servers_by_name() {
        let node = |name: &str, ip: &str, port: i64| {
            serde_json::json!({"metadata": {"name": name}, "status": {
                "addresses": [{"type": "Hostname", "address": "h"}, {"type": "InternalIP", "address": ip}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}})
        };
        assert_eq!(
            node_targets(&[
                node("n1", "127.0.0.1", 40001),
                node("n2", "::1", 40002),
                node("n3", "127.0.0.1", 0)
            ]),
            serde_json::json!([
                {"targets": ["127.0.0.1:40001"], "labels": {"node": "n1"}},
                {"targets": ["[::1]:40002"], "labels": {"node": "n2"}},
            ])
        );
    }

    fn c(method: Method, path: &str, query: Option<&str>) -> (String, String, String, String) {
        let c = classify(&method, path, query, false);
        (c.verb, c.resource, c.subresource, c.scope)
    }

    fn t(verb: &str, resource: &str, sub: &str, scope: &str) -> (String, String, String, String) {
        (verb.into(), resource.into(), sub.into(), scope.into())
    }

    #[test]
    fn requests_are_classified_as_kubernetes_does() {
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/default/pods", None),
            t("LIST", "pods", "", "namespace")
        );
        assert_eq!(
            c(
                Method::GET,
                "/api/v1/pods",
                Some("watch=true&resourceVersion=3")
            ),
            t("WATCH", "pods", "", "cluster")
        );
        assert_eq!(
            c(Method::GET, "/api/v1/watch/namespaces/default/pods", None),
            t("WATCH", "pods", "", "namespace")
        );
        assert_eq!(
            c(
                Method::GET,
                "/apis/apps/v1/namespaces/default/deployments/web",
                None
            ),
            t("GET", "deployments", "", "resource")
        );
        assert_eq!(
            c(
                Method::PUT,
                "/api/v1/namespaces/default/pods/web/status",
                None
            ),
            t("PUT", "pods", "status", "resource")
        );
        assert_eq!(
            c(Method::DELETE, "/api/v1/namespaces/default/pods", None),
            t("DELETECOLLECTION", "pods", "", "namespace")
        );
        assert_eq!(
            c(
                Method::POST,
                "/api/v1/namespaces/default/pods/web/exec",
                None
            ),
            t("CONNECT", "pods", "exec", "resource")
        );
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/kube-system", None),
            t("GET", "namespaces", "", "resource")
        );
        assert_eq!(c(Method::GET, "/metrics", None), t("GET", "", "", ""));
        assert_eq!(c(Method::GET, "/api/v1", None), t("GET", "", "", ""));
        let apply = classify(
            &Method::PATCH,
            "/apis/apps/v1/namespaces/default/deployments/web",
            None,
            true,
        );
        assert_eq!(
            (apply.verb.as_str(), apply.group.as_str()),
            ("APPLY", "apps")
        );
    }
}
