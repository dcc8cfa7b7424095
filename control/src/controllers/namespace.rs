//! The namespace controller: empties a namespace that is being deleted, then lets it go.
//!
//! Deleting a Namespace does not remove it: the API server marks it (`deletionTimestamp`,
//! `status.phase: Terminating`) and keeps it while its `spec.finalizers` holds
//! `kubernetes`, which every namespace gets at creation. Nothing new may be created in it
//! from then on. This controller, on a namespace in that state:
//!
//! 1. deletes everything in it, kind by kind through the dynamic API for every namespaced
//!    kind of the kinds table and of the established CustomResourceDefinitions (a
//!    `deletecollection` per kind with what is left): pods on
//!    nodes stop gracefully and are removed when their node confirms, objects with
//!    finalizers wait for them, owners and dependents go together;
//! 2. waits, looking again every second, until nothing is left, saying what remains in
//!    the namespace's conditions (`NamespaceContentRemaining`,
//!    `NamespaceFinalizersRemaining`) as Kubernetes does;
//! 3. hands back its finalizer with `PUT /api/v1/namespaces/NAME/finalize` (the API
//!    server then removes the namespace, unless other finalizers still hold it).
//!
//! Why not delete synchronously in the API server's DELETE: pods must be allowed their
//! grace period on their nodes and finalizers must run, which takes longer than a request
//! should; and a controller keeps trying after a restart, where a request would leave a
//! half-emptied namespace behind.
//!
//! [`decide`] is pure: from what a namespace still holds it says what to delete, what the
//! conditions say, and whether to finalize.

use super::ControllerConfig;
use super::common::{self, Backoff, Error};
use super::gc::{api_resource, dynamic_api};
use crate::api::kinds::{KINDS, ResourceKind};
use crate::api::wellknown::NAMESPACE_FINALIZER;
use crate::apiserver::registry::custom::{self, definition};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "namespace-controller";
/// How often a namespace that still has content is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// Starts the controller; it stops when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    config: &ControllerConfig,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        backoff: Backoff::default(),
    });
    let reconciles = Controller::new(Api::<Namespace>::all(client), watcher::Config::default())
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            common::metered(config.workqueue.queue("namespace"), reconcile),
            error_policy,
            ctx,
        )
        .for_each(|outcome| {
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "namespace controller");
            }
            futures::future::ready(())
        });
    tasks.spawn(super::gc::run_until_shutdown(shutdown, reconciles));
}

/// What is left of one kind in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remaining {
    pub kind: &'static ResourceKind,
    /// Objects of the kind still there.
    pub total: usize,
    /// Of those, not yet marked for deletion: they need a delete.
    pub undeleted: usize,
    /// Finalizers holding objects of the kind: (finalizer, objects).
    pub finalizers: Vec<(String, usize)>,
}

#[derive(Debug, PartialEq)]
pub struct Plan {
    /// Kinds with objects to delete.
    pub delete: Vec<&'static ResourceKind>,
    /// The namespace's conditions from now on, if they change.
    pub conditions: Option<Vec<NamespaceCondition>>,
    /// `spec.finalizers` to hand back with `finalize`, once the namespace is empty.
    pub finalize: Option<Vec<String>>,
}

fn set(
    conditions: &mut Vec<NamespaceCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) {
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c)
            if c.status == status
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(message.as_str()) => {}
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(Time(now));
            }
            c.status = status.into();
            c.reason = Some(reason.into());
            c.message = Some(message);
        }
        None => conditions.push(NamespaceCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(Time(now)),
        }),
    }
}

/// Decides the next step for a namespace being deleted, from what it still holds.
pub fn decide(ns: &Namespace, remaining: &[Remaining], now: Timestamp) -> Plan {
    let left: Vec<&Remaining> = remaining.iter().filter(|r| r.total > 0).collect();
    let current = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut conditions = current.clone();
    if left.is_empty() {
        set(
            &mut conditions,
            "NamespaceContentRemaining",
            "False",
            "ContentRemoved",
            "All content successfully removed".into(),
            now,
        );
        set(
            &mut conditions,
            "NamespaceFinalizersRemaining",
            "False",
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished".into(),
            now,
        );
    } else {
        let what = left
            .iter()
            .map(|r| {
                format!(
                    "{} has {} resource instances",
                    r.kind.qualified_plural(),
                    r.total
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        set(
            &mut conditions,
            "NamespaceContentRemaining",
            "True",
            "SomeResourcesRemain",
            format!("Some resources are remaining: {what}"),
            now,
        );
        let mut finalizers: Vec<(String, usize)> = Vec::new();
        for (f, n) in left.iter().flat_map(|r| r.finalizers.iter()) {
            match finalizers.iter_mut().find(|(g, _)| g == f) {
                Some((_, m)) => *m += n,
                None => finalizers.push((f.clone(), *n)),
            }
        }
        finalizers.sort();
        if finalizers.is_empty() {
            set(
                &mut conditions,
                "NamespaceFinalizersRemaining",
                "False",
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
                now,
            );
        } else {
            let what = finalizers
                .iter()
                .map(|(f, n)| format!("{f} in {n} resource instances"))
                .collect::<Vec<_>>()
                .join(", ");
            set(
                &mut conditions,
                "NamespaceFinalizersRemaining",
                "True",
                "SomeFinalizersRemain",
                format!("Some content in the namespace has finalizers remaining: {what}"),
                now,
            );
        }
    }
    let finalize = left.is_empty().then(|| {
        ns.spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != NAMESPACE_FINALIZER)
            .collect()
    });
    Plan {
        delete: left
            .iter()
            .filter(|r| r.undeleted > 0)
            .map(|r| r.kind)
            .collect(),
        conditions: (conditions != current).then_some(conditions),
        finalize,
    }
}

struct Ctx {
    client: kube::Client,
    backoff: Backoff,
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let ours = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|f| f == NAMESPACE_FINALIZER));
    if ns.metadata.deletion_timestamp.is_none() || !ours {
        return Ok(Action::await_change());
    }
    let mut remaining = Vec::new();
    let kinds = namespaced_kinds(&ctx.client)
        .await
        .map_err(Error::api("listing the kinds in namespace", &name))?;
    for kind in kinds {
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &name, &api_resource(kind));
        let items = match api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            // A custom kind whose definition went away meanwhile.
            Err(e) if common::code_of(&e) == Some(404) => continue,
            Err(e) => return Err(Error::api("listing the content of namespace", &name)(e)),
        };
        let mut finalizers: Vec<(String, usize)> = Vec::new();
        for f in items
            .iter()
            .flat_map(|o| o.metadata.finalizers.iter().flatten())
        {
            match finalizers.iter_mut().find(|(g, _)| g == f) {
                Some((_, n)) => *n += 1,
                None => finalizers.push((f.clone(), 1)),
            }
        }
        remaining.push(Remaining {
            kind,
            total: items.len(),
            undeleted: items
                .iter()
                .filter(|o| o.metadata.deletion_timestamp.is_none())
                .count(),
            finalizers,
        });
    }
    let plan = decide(&ns, &remaining, common::now());
    for kind in &plan.delete {
        let api = dynamic_api(&ctx.client, kind, Some(&name));
        match api
            .delete_collection(&DeleteParams::background(), &ListParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if common::code_of(&e) == Some(404) => {}
            Err(e) => return Err(Error::api("deleting the content of namespace", &name)(e)),
        }
    }
    let namespaces = Api::<Namespace>::all(ctx.client.clone());
    if let Some(conditions) = &plan.conditions {
        let patch = json!({"status": {"conditions": conditions}});
        match namespaces
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if common::code_of(&e) == Some(404) => return Ok(Action::await_change()),
            Err(e) => return Err(Error::api("writing the conditions of namespace", &name)(e)),
        }
    }
    let Some(finalizers) = plan.finalize else {
        return Ok(Action::requeue(RECHECK));
    };
    let body = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name},
        "spec": {"finalizers": finalizers},
    });
    match namespaces
        .replace_subresource("finalize", &name, &PostParams::default(), &body)
        .await
    {
        Ok(_) => tracing::info!(namespace = %name, "namespace emptied; finalized"),
        Err(e) if common::code_of(&e) == Some(404) => {}
        Err(e) => return Err(Error::api("finalizing namespace", &name)(e)),
    }
    ctx.backoff.succeeded(&name);
    Ok(Action::await_change())
}

/// The namespaced kinds a namespace may hold: the built-ins, and one served version of
/// every established namespaced CustomResourceDefinition (its versions are one
/// collection).
async fn namespaced_kinds(
    client: &kube::Client,
) -> Result<Vec<&'static ResourceKind>, kube::Error> {
    let mut kinds: Vec<&'static ResourceKind> = KINDS
        .iter()
        .filter(|k| k.namespaced && k.strategy.owns_storage())
        .collect();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds.list(&ListParams::default()).await?.items {
        let Ok(crd) = serde_json::to_value(&crd) else {
            continue;
        };
        if definition::is_established(&crd)
            && let Some(row) = custom::rows_of(&crd).first()
            && row.namespaced
        {
            kinds.push(row);
        }
    }
    Ok(kinds)
}

fn error_policy(ns: Arc<Namespace>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let name = ns.metadata.name.clone().unwrap_or_default();
    if error.code() != Some(409) {
        tracing::warn!(namespace = %name, %error, "namespace deletion");
    }
    Action::requeue(ctx.backoff.failed(&name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::kinds::resolve;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn terminating() -> Namespace {
        serde_json::from_value(
            json!({"metadata": {"name": "team", "deletionTimestamp": ts(0).to_string()},
            "spec": {"finalizers": ["kubernetes", "example.com/other"]},
            "status": {"phase": "Terminating"}}),
        )
        .unwrap()
    }

    fn left(kind: &str, total: usize, undeleted: usize, finalizers: &[(&str, usize)]) -> Remaining {
        Remaining {
            kind: resolve(kind).unwrap(),
            total,
            undeleted,
            finalizers: finalizers
                .iter()
                .map(|(f, n)| (f.to_string(), *n))
                .collect(),
        }
    }

    #[test]
    fn deletes_what_is_left_and_says_so() {
        let ns = terminating();
        let plan = decide(
            &ns,
            &[
                left("pod", 2, 1, &[]),
                left("cm", 0, 0, &[]),
                left("rs", 1, 0, &[("foregroundDeletion", 1)]),
            ],
            ts(1),
        );
        assert_eq!(
            plan.delete.iter().map(|k| k.kind).collect::<Vec<_>>(),
            ["Pod"]
        );
        assert_eq!(plan.finalize, None);
        let conditions = plan.conditions.unwrap();
        let content = conditions
            .iter()
            .find(|c| c.type_ == "NamespaceContentRemaining")
            .unwrap();
        assert_eq!(content.status, "True");
        assert_eq!(
            content.message.as_deref(),
            Some(
                "Some resources are remaining: pods has 2 resource instances, replicasets.apps has 1 resource instances"
            )
        );
        let finalizers = conditions
            .iter()
            .find(|c| c.type_ == "NamespaceFinalizersRemaining")
            .unwrap();
        assert_eq!(
            finalizers.message.as_deref(),
            Some(
                "Some content in the namespace has finalizers remaining: foregroundDeletion in 1 resource instances"
            )
        );
    }

    #[test]
    fn an_empty_namespace_hands_back_its_finalizer_only() {
        let mut ns = terminating();
        let plan = decide(&ns, &[left("pod", 0, 0, &[])], ts(1));
        assert!(plan.delete.is_empty());
        assert_eq!(plan.finalize, Some(vec!["example.com/other".to_string()]));
        // Conditions already say so: nothing to write.
        ns.status.as_mut().unwrap().conditions = plan.conditions;
        let again = decide(&ns, &[], ts(2));
        assert_eq!(again.conditions, None);
    }
}
