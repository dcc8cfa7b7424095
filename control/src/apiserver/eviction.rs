//! The `pods/eviction` subresource: `POST /api/v1/namespaces/NS/pods/NAME/eviction` with
//! a policy/v1 `Eviction` body, what `kubectl drain` (and `wharf drain`) uses to move pods
//! off a node.
//!
//! Why a subresource and not a plain DELETE: an eviction is a *request* to delete that the
//! server may refuse for the sake of the workload (PodDisruptionBudgets answer 429 Too
//! Many Requests when a disruption would break their budget), and authorization tells the
//! two apart (`create pods/eviction` vs `delete pods`).
//!
//! The budget: the PodDisruptionBudget of the pod's namespace whose selector matches it
//! (more than one is an error, as in Kubernetes) is spent by a compare-and-swap on its
//! status ([`spend`]: `disruptionsAllowed` less one, the pod recorded in
//! `disruptedPods`), so two concurrent evictions cannot both spend the last disruption.
//! With none left the answer is 429 `Cannot evict pod as it would violate the pod's
//! disruption budget.` with a `DisruptionBudget` cause saying what the budget needs;
//! `kubectl drain` and `wharf drain` retry until the disruption controller sees a
//! replacement Ready elsewhere. A pod that is not Ready spends nothing, and is evicted
//! only while the budget is met (`unhealthyPodEvictionPolicy: IfHealthyBudget`, or
//! always with `AlwaysAllow`); pods that are pending, ended or already being deleted are
//! not guarded.
//!
//! An allowed eviction marks the pod with the `DisruptionTarget` condition (reason
//! `EvictionByEvictionAPI`), then deletes it with the Eviction's `deleteOptions` through
//! the same delete path as a DELETE (graceful on its node); the answer is
//! kube-apiserver's `201` Status `Success`. An eviction of a pod already being deleted
//! succeeds without changing it (unless it shortens the grace).

use super::AppState;
use super::auth::Identity;
use super::authz::{self, Verb};
use super::error::ApiError;
use super::fieldcheck::FieldCheck;
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
    let current = store::get_object(state, &pod, name).await?;
    if guarded(&current) {
        spend_budget(state, &pod, &current, opts.dry_run).await?;
        if !opts.dry_run {
            mark_disruption_target(state, &pod, name).await?;
        }
    }
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

/// The message of a refused eviction, as Kubernetes words it.
pub const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// Whether a budget guards the pod: not pending, not ended, not being deleted.
fn guarded(pod: &Value) -> bool {
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    pod.pointer("/metadata/deletionTimestamp").is_none()
        && !matches!(phase, "Pending" | "Succeeded" | "Failed" | "")
}

fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Ready")
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
}

/// The budget after evicting `pod` (named `name`, Ready or not) at `now`; `Ok(None)` when
/// the eviction spends nothing. Pure: the eviction runs it inside a compare-and-swap.
pub fn spend(
    pdb: &Value,
    name: &str,
    ready: bool,
    now: jiff::Timestamp,
) -> Result<Option<Value>, ApiError> {
    let pdb_name = pdb
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let int = |p: &str| pdb.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let refuse = |message: String| ApiError::TooManyRequests {
        message: VIOLATION.into(),
        causes: vec![("DisruptionBudget".into(), message)],
    };
    let generation = int("/metadata/generation");
    if pdb
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64)
        .is_none_or(|g| g < generation)
    {
        return Err(refuse(format!(
            "The disruption budget {pdb_name} is still being processed by the server."
        )));
    }
    let (current, desired) = (int("/status/currentHealthy"), int("/status/desiredHealthy"));
    if !ready {
        let always = pdb
            .pointer("/spec/unhealthyPodEvictionPolicy")
            .and_then(Value::as_str)
            == Some("AlwaysAllow");
        return if always || current >= desired {
            Ok(None)
        } else {
            Err(refuse(format!(
                "The disruption budget {pdb_name} does not allow evicting pods currently"
            )))
        };
    }
    let allowed = int("/status/disruptionsAllowed");
    if allowed < 0 {
        return Err(ApiError::Forbidden(format!(
            "poddisruptionbudgets.policy \"{pdb_name}\" is forbidden: pdb disruptions allowed is negative"
        )));
    }
    if allowed == 0 {
        return Err(refuse(format!(
            "The disruption budget {pdb_name} needs {desired} healthy pods and has {current} currently"
        )));
    }
    let mut next = pdb.clone();
    if let Some(status) = next.get_mut("status").and_then(Value::as_object_mut) {
        status.insert("disruptionsAllowed".into(), json!(allowed - 1));
        let disrupted = status.entry("disruptedPods").or_insert_with(|| json!({}));
        if !disrupted.is_object() {
            *disrupted = json!({});
        }
        if let Some(d) = disrupted.as_object_mut() {
            d.insert(name.into(), json!(now.to_string()));
        }
    }
    Ok(Some(next))
}

/// Spends the budget of the pod's PodDisruptionBudget, if it has one.
async fn spend_budget(
    state: &AppState,
    pod_target: &Target,
    pod: &Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    let Some(kind) = crate::api::find_kind("policy/v1", "PodDisruptionBudget") else {
        return Ok(());
    };
    let budgets = Target {
        kind,
        namespace: pod_target.namespace.clone(),
        name: None,
        subresource: None,
    };
    let filter = store::Filter::from_query(kind, &crate::apiserver::request::Query::parse(None))?;
    let (_, page) = store::list(
        state,
        &budgets,
        &filter,
        &crate::apiserver::paging::ListOptions::default(),
    )
    .await?;
    let labels = pod
        .pointer("/metadata/labels")
        .map(crate::api::selector::object_labels_of_map)
        .unwrap_or_default();
    let matching: Vec<&Value> = page
        .items
        .iter()
        .filter(|b| {
            b.pointer("/spec/selector")
                .is_some_and(|s| crate::api::validation::label_selector_matches(s, &labels))
        })
        .collect();
    let pdb = match matching[..] {
        [] => return Ok(()),
        [one] => one,
        _ => {
            return Err(ApiError::Internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
                    .into(),
            ));
        }
    };
    let pdb_name = pdb
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let ready = pod_ready(pod);
    let now = crate::controllers::common::now();
    let fields = FieldCheck::new(&crate::apiserver::request::Query::parse(None), Vec::new())?;
    let target = Target {
        name: Some(pdb_name.clone()),
        subresource: Some("status".into()),
        ..budgets
    };
    store::update_with(
        state,
        &target,
        &pdb_name,
        true,
        dry_run,
        &fields,
        |current| Ok(spend(current, &name, ready, now)?.unwrap_or_else(|| current.clone())),
    )
    .await?;
    Ok(())
}

/// The `DisruptionTarget` condition an evicted pod carries while it stops.
async fn mark_disruption_target(
    state: &AppState,
    pod: &Target,
    name: &str,
) -> Result<(), ApiError> {
    let fields = FieldCheck::new(&crate::apiserver::request::Query::parse(None), Vec::new())?;
    let target = Target {
        subresource: Some("status".into()),
        ..pod.clone()
    };
    let now = crate::controllers::common::now().to_string();
    store::update_with(state, &target, name, true, false, &fields, |current| {
        let mut next = current.clone();
        set_pod_condition(
            &mut next,
            json!({"type": "DisruptionTarget", "status": "True",
                "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting",
                "lastTransitionTime": now}),
        );
        Ok(next)
    })
    .await?;
    Ok(())
}

/// Sets a pod condition by type (replacing one of the same type).
pub fn set_pod_condition(pod: &mut Value, condition: Value) {
    let Some(obj) = pod.as_object_mut() else {
        return;
    };
    let status = obj.entry("status").or_insert_with(|| json!({}));
    let Some(status) = status.as_object_mut() else {
        return;
    };
    let list = status.entry("conditions").or_insert_with(|| json!([]));
    let Some(list) = list.as_array_mut() else {
        return;
    };
    let ty = condition.get("type").cloned();
    list.retain(|c| c.get("type") != ty.as_ref());
    list.push(condition);
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
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, DeleteParams, EvictParams, PostParams};

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
        let api = crate::apiserver::testing::TestApi::new().await;
        let client = api.client();
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

    #[test]
    fn spending_a_budget() {
        let pdb = |allowed: i64, observed: i64| {
            json!({"metadata": {"name": "web", "generation": 2},
                "spec": {"minAvailable": 1},
                "status": {"observedGeneration": observed, "disruptionsAllowed": allowed,
                    "currentHealthy": 2, "desiredHealthy": 1}})
        };
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let next = spend(&pdb(1, 2), "web-1", true, now).unwrap().unwrap();
        assert_eq!(next.pointer("/status/disruptionsAllowed"), Some(&json!(0)));
        assert_eq!(
            next.pointer("/status/disruptedPods/web-1"),
            Some(&json!(now.to_string()))
        );
        let refused = spend(&next, "web-2", true, now).unwrap_err();
        assert_eq!(refused.code(), StatusCode::TOO_MANY_REQUESTS);
        let status = refused.status();
        assert_eq!(status["message"], VIOLATION);
        assert_eq!(status["reason"], "TooManyRequests");
        assert_eq!(
            status["details"]["causes"][0],
            json!({"reason": "DisruptionBudget",
                "message": "The disruption budget web needs 1 healthy pods and has 2 currently"})
        );
        // A budget the controller has not seen yet refuses.
        let stale = spend(&pdb(1, 1), "web-1", true, now).unwrap_err();
        assert!(
            stale.status()["details"]["causes"][0]["message"]
                .as_str()
                .unwrap()
                .contains("still being processed")
        );
        // A pod that is not Ready spends nothing while the budget is met.
        assert!(spend(&next, "web-3", false, now).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_budget_kept_by_the_disruption_controller_refuses_the_second_eviction() {
        use k8s_openapi::api::policy::v1::PodDisruptionBudget;
        let api = crate::apiserver::testing::TestApi::new().await;
        let client = api.client();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut informers = crate::controllers::informer::Informers::new(&client);
        crate::controllers::disruption::start(
            client.clone(),
            &mut informers.pods,
            shutdown.clone(),
            &mut tasks,
        );
        informers.start(shutdown.clone(), &mut tasks);
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        for name in ["web-1", "web-2"] {
            let pod: Pod = serde_json::from_value(
                json!({"metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "a", "image": "a.wasm"}]}}),
            )
            .unwrap();
            pods.create(&PostParams::default(), &pod).await.unwrap();
            let status = json!({"status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}]}});
            pods.patch_status(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(status),
            )
            .await
            .unwrap();
        }
        let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({"metadata": {"name": "web"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}))
        .unwrap();
        budgets.create(&PostParams::default(), &pdb).await.unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let s = budgets
                .get_status("web")
                .await
                .unwrap()
                .status
                .unwrap_or_default();
            if s.disruptions_allowed == Some(1) && s.observed_generation == Some(1) {
                assert_eq!(
                    (s.current_healthy, s.desired_healthy, s.expected_pods),
                    (Some(2), Some(1), Some(2))
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "budget status: {s:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }

        pods.evict("web-1", &EvictParams::default()).await.unwrap();
        let evicted = pods.get("web-1").await.unwrap();
        assert!(evicted.metadata.deletion_timestamp.is_some());
        let condition = evicted
            .status
            .unwrap()
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "DisruptionTarget")
            .unwrap();
        assert_eq!(condition.reason.as_deref(), Some("EvictionByEvictionAPI"));
        match pods.evict("web-2", &EvictParams::default()).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 429);
                assert_eq!(s.message, VIOLATION);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            pods.get("web-2")
                .await
                .unwrap()
                .metadata
                .deletion_timestamp
                .is_none()
        );
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
    }
}
