//! The ServiceAccount controller: every namespace has a ServiceAccount named `default`,
//! as kube-controller-manager's controller of that name keeps it.
//!
//! Why: pods that name no ServiceAccount run as `default`, and clients (the Python
//! client's e2e suite, Helm charts) wait for it to exist before they create anything in a
//! new namespace. The controller reconciles namespaces; a change to any ServiceAccount
//! named `default` (its deletion above all) queues its namespace again, so a deleted one
//! is recreated at once. A namespace being deleted gets none (it would only be deleted
//! again, and the API refuses creates there). What to do is [`decide`], pure.

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The ServiceAccount every namespace has.
pub const DEFAULT: &str = "default";

/// What the controller does for one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    CreateDefault,
}

/// `Step::CreateDefault` when a live namespace lacks its `default` ServiceAccount.
pub fn decide(namespace_deleting: bool, default_exists: bool) -> Step {
    if namespace_deleting || default_exists {
        Step::Nothing
    } else {
        Step::CreateDefault
    }
}

#[derive(Debug, thiserror::Error)]
#[error("ensuring the default ServiceAccount: {0}")]
pub struct Error(#[from] kube::Error);

struct Ctx {
    client: kube::Client,
    backoff: super::common::Backoff,
}

pub fn start(client: kube::Client, shutdown: CancellationToken, tasks: &mut JoinSet<()>) {
    let controller = Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    );
    let reconciles = controller
        .watches(
            Api::<ServiceAccount>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={DEFAULT}")),
            |sa: ServiceAccount| {
                sa.metadata
                    .namespace
                    .map(|ns| ObjectRef::<Namespace>::new(&ns))
            },
        )
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            reconcile,
            error_policy,
            Arc::new(Ctx {
                client,
                backoff: Default::default(),
            }),
        );
    tasks.spawn(super::common::drive("serviceaccount", reconciles, shutdown));
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let Some(name) = ns.metadata.name.as_deref() else {
        return Ok(Action::await_change());
    };
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), name);
    let exists = api.get_opt(DEFAULT).await?.is_some();
    if decide(ns.metadata.deletion_timestamp.is_some(), exists) == Step::CreateDefault {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(DEFAULT.into()),
                namespace: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            // Created meanwhile, or the namespace began terminating: nothing to do.
            Ok(_) => {}
            Err(e) if matches!(super::common::code_of(&e), Some(409 | 403 | 404)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    ctx.backoff.succeeded(name);
    Ok(Action::await_change())
}

fn error_policy(ns: Arc<Namespace>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let key = ns.metadata.name.clone().unwrap_or_default();
    tracing::debug!(namespace = %key, %error, "serviceaccount controller");
    Action::requeue(ctx.backoff.failed(&key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::testing::TestApi;
    use http::StatusCode;
    use serde_json::{Value, json};
    use std::time::{Duration, Instant};

    #[test]
    fn only_a_live_namespace_without_one_gets_one() {
        assert_eq!(decide(false, false), Step::CreateDefault);
        assert_eq!(decide(false, true), Step::Nothing);
        assert_eq!(decide(true, false), Step::Nothing);
        assert_eq!(decide(true, true), Step::Nothing);
    }

    async fn wait_for_default(api: &TestApi, ns: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        let path = format!("/api/v1/namespaces/{ns}/serviceaccounts/default");
        loop {
            let (code, sa) = api.send("GET", &path, None).await;
            if code == StatusCode::OK {
                return sa;
            }
            assert!(Instant::now() < deadline, "no default ServiceAccount: {sa}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn every_namespace_gets_a_default_service_account_and_keeps_it() {
        let api = TestApi::new().await;
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        start(api.client(), shutdown.clone(), &mut tasks);
        wait_for_default(&api, "default", Duration::from_secs(5)).await;

        let (code, out) = api
            .send(
                "POST",
                "/api/v1/namespaces",
                Some(json!({"metadata": {"name": "team-a"}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{out}");
        let first = wait_for_default(&api, "team-a", Duration::from_secs(1)).await;

        let (code, out) = api
            .send(
                "DELETE",
                "/api/v1/namespaces/team-a/serviceaccounts/default",
                None,
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{out}");
        let again = wait_for_default(&api, "team-a", Duration::from_secs(5)).await;
        assert_ne!(first["metadata"]["uid"], again["metadata"]["uid"]);

        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
    }
}
