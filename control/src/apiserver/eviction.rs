//! The `pods/eviction` subresource: `POST /api/v1/namespaces/NS/pods/NAME/eviction` with
//! a policy/v1 `Eviction` body, what `kubectl drain` (and `wharf drain`) uses to move pods
//! off a node.
//!
//! Why a subresource and not a plain DELETE: an eviction is a *request* to delete that the
//! server may refuse for the sake of the workload (PodDisruptionBudgets answer 429 Too
//! Many Requests when a disruption would break their budget), and authorization tells the
//! two apart (`create pods/eviction` vs `delete pods`). wharf serves no
//! PodDisruptionBudgets yet, so an eviction is always allowed: the pod is deleted with the
//! Eviction's `deleteOptions` through the same delete path as a DELETE (graceful on its
//! node), and the answer is kube-apiserver's `201` Status `Success`. An eviction of a pod
//! already being deleted succeeds without changing it (unless it shortens the grace).

use super::AppState;
use super::auth::Identity;
use super::authz::{self, Verb};
use super::error::ApiError;
use super::objects::json_response;
use super::registry::store::{self, DeleteOptions, delete_options_from};
use super::registry::subresources::{Serve, SubRequest, Subresource};
use super::request::Target;
use super::request::{JSON, Query, read_json};
use axum::body::Body;
use axum::response::Response;
use futures::future::BoxFuture;
use http::{Method, StatusCode};
use serde_json::{Value, json};

/// `pods/NAME/eviction`.
pub static EVICTION: Subresource = Subresource {
    name: "eviction",
    body: Some(("policy", "v1", "Eviction")),
    schema: Some(crate::api::typed::schema::<k8s_openapi::api::policy::v1::Eviction>),
    verbs: &["create"],
    serve: Serve::Handler(handle),
};

fn handle(req: SubRequest<'_>) -> BoxFuture<'_, Result<Response, ApiError>> {
    Box::pin(async move {
        let identity = req.parts.extensions.get::<Identity>().cloned();
        serve(
            req.state,
            req.target,
            identity.as_ref(),
            req.parts,
            req.body,
        )
        .await
    })
}

/// Handles a request to `pods/NAME/eviction`.
pub async fn serve(
    state: &AppState,
    target: &Target,
    identity: Option<&Identity>,
    parts: &http::request::Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(name) = target.name.as_deref() else {
        return Err(ApiError::MethodNotAllowed(
            "an eviction names its pod: POST .../pods/NAME/eviction".into(),
        ));
    };
    if parts.method != Method::POST {
        return Err(ApiError::MethodNotAllowed(format!(
            "{} is not supported on pods/eviction; use POST",
            parts.method
        )));
    }
    // A POST to a named object maps to no verb in the generic dispatch: evicting is
    // `create` on `pods/eviction`, as Kubernetes authorizes it.
    authz::enforce(state, identity, Verb::Create, target).await?;
    let query = Query::parse(parts.uri.query());
    let body = read_json(body, &parts.headers, state, JSON).await?;
    let mut opts = eviction_options(&body, name)?;
    if query.get("dryRun") == Some("All") {
        opts.dry_run = true;
    }
    let pod = Target {
        subresource: None,
        ..target.clone()
    };
    store::delete(state, &pod, name, &opts).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }),
    ))
}

/// The delete options of an Eviction body, after checking it names the pod of the URL.
/// `delete_options` is accepted beside `deleteOptions`: kube-rs sends that spelling.
fn eviction_options(body: &Value, name: &str) -> Result<DeleteOptions, ApiError> {
    if !body.is_object() {
        return Err(ApiError::BadRequest(
            "the body of an eviction must be a policy/v1 Eviction object".into(),
        ));
    }
    if let Some(kind) = body.get("kind").and_then(Value::as_str)
        && kind != "Eviction"
    {
        return Err(ApiError::BadRequest(format!(
            "the body of an eviction must be an Eviction, not a {kind}"
        )));
    }
    if let Some(sent) = body.pointer("/metadata/name").and_then(Value::as_str)
        && !sent.is_empty()
        && sent != name
    {
        return Err(ApiError::BadRequest(format!(
            "name in URL does not match name in Eviction object: {name} vs {sent}"
        )));
    }
    match body
        .get("deleteOptions")
        .or_else(|| body.get("delete_options"))
    {
        Some(opts) if opts.is_object() => delete_options_from(opts),
        Some(Value::Null) | None => Ok(Default::default()),
        Some(_) => Err(ApiError::BadRequest(
            "deleteOptions must be a DeleteOptions object".into(),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::apiserver::auth::Authenticator;
    use crate::store::{FjallStore, Store, StoreConfig};
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, DeleteParams, EvictParams, PostParams};
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    #[test]
    fn eviction_bodies_name_their_pod() {
        let body = json!({"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": "web-1"}, "deleteOptions": {"gracePeriodSeconds": 3}});
        let opts = eviction_options(&body, "web-1").unwrap();
        assert_eq!(opts.grace_period_seconds, Some(3));
        assert!(eviction_options(&body, "web-2").is_err());
        let kube_rs = json!({"metadata": {"name": "web-1"}, "delete_options": {"propagationPolicy": "Foreground"}});
        let opts = eviction_options(&kube_rs, "web-1").unwrap();
        assert_eq!(opts.propagation_policy.as_deref(), Some("Foreground"));
        assert!(eviction_options(&json!({"kind": "Pod"}), "x").is_err());
        assert!(eviction_options(&json!([]), "x").is_err());
        let bare = eviction_options(&json!({}), "x").unwrap();
        assert_eq!(bare.grace_period_seconds, None);
    }

    #[tokio::test]
    async fn evicting_a_pod_deletes_it_gracefully_and_answers_201() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(FjallStore::open(StoreConfig::new(dir.path().join("store"))).unwrap());
        let state = AppState {
            store,
            auth: Arc::new(Authenticator::new()),
            config: Arc::default(),
            shutdown: CancellationToken::new(),
        };
        let client = crate::apiserver::in_process_client(crate::apiserver::router(state));
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let ns = serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let pod = |name: &str, node: Option<&str>| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"nodeName": node, "containers": [{"name": "a", "image": "a.wasm"}]}}))
            .unwrap()
        };
        pods.create(&PostParams::default(), &pod("free", None))
            .await
            .unwrap();
        pods.create(&PostParams::default(), &pod("bound", Some("n1")))
            .await
            .unwrap();

        // kube-rs's evict, as `wharf drain` sends it.
        pods.evict("free", &EvictParams::default()).await.unwrap();
        assert!(pods.get_opt("free").await.unwrap().is_none());
        pods.evict(
            "bound",
            &EvictParams {
                delete_options: Some(DeleteParams {
                    grace_period_seconds: Some(7),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let marked = pods.get("bound").await.unwrap();
        assert!(marked.metadata.deletion_timestamp.is_some());
        assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(7));
        // Evicting a pod being deleted succeeds; a missing pod is 404.
        pods.evict("bound", &EvictParams::default()).await.unwrap();
        match pods.evict("nope", &EvictParams::default()).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
            other => panic!("{other:?}"),
        }
    }
}
