//! ClusterRole aggregation, as Kubernetes' controller of that name: a ClusterRole with an
//! `aggregationRule` has its `rules` kept equal to the union of the rules of the
//! ClusterRoles its selectors pick (`admin`, `edit` and `view` from the roles labelled
//! `rbac.authorization.k8s.io/aggregate-to-*`), so that what is stored shows what is
//! granted. The authorizer does not wait for it: it resolves aggregation itself
//! ([`crate::apiserver::rbac`]); this keeps the objects honest for readers.
//!
//! ClusterRoles are few, so every change to any of them re-checks every aggregated one
//! against a reflector's view ([`crate::apiserver::rbac::aggregated_rules`], pure).

use crate::apiserver::rbac::aggregated_rules;
use futures::StreamExt;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub fn start(client: kube::Client, shutdown: CancellationToken, tasks: &mut JoinSet<()>) {
    tasks.spawn(run(Api::all(client), shutdown));
}

async fn run(api: Api<ClusterRole>, shutdown: CancellationToken) {
    let (reader, writer) = reflector::store();
    let events =
        reflector(writer, watcher(api.clone(), watcher::Config::default())).default_backoff();
    futures::pin_mut!(events);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => e,
        };
        match event {
            None => return,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "cluster role aggregation: watch");
                continue;
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
            Some(Ok(_)) => {}
        }
        let roles: Vec<ClusterRole> = reader.state().iter().map(|r| (**r).clone()).collect();
        for (name, rules) in aggregated_rules(&roles) {
            let current = roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(name.as_str()))
                .and_then(|r| r.rules.clone())
                .unwrap_or_default();
            if current == rules {
                continue;
            }
            let patch = serde_json::json!({"rules": rules});
            if let Err(e) = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!(error = %e, role = %name, "cluster role aggregation: write");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::apiserver::rbac::bootstrap;
    use crate::apiserver::testing::TestApi;
    use http::StatusCode;
    use serde_json::{Value, json};
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn aggregated_roles_hold_the_rules_they_pick() {
        let api = TestApi::new().await;
        bootstrap::reconcile(api.client()).await.expect("bootstrap");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        super::start(api.client(), shutdown.clone(), &mut tasks);
        let (code, out) = api
            .send(
                "POST",
                "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                Some(json!({"metadata": {"name": "widgets-view",
                    "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
                    "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}]})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{out}");
        let holds_widgets = |role: &Value| {
            role["rules"]
                .as_array()
                .is_some_and(|rules| rules.iter().any(|r| r["resources"] == json!(["widgets"])))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for name in ["view", "edit", "admin"] {
            loop {
                let (_, role) = api
                    .send(
                        "GET",
                        &format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}"),
                        None,
                    )
                    .await;
                if holds_widgets(&role) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} never got the widget rule: {role}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
    }
}
