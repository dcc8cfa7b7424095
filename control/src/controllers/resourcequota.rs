//! The resource quota controller: keeps each ResourceQuota's `status.hard` (its spec's)
//! and `status.used` (a recount of what the namespace holds), as Kubernetes' does.
//!
//! Quota admission raises `status.used` as objects are created ([`crate::apiserver::quota`]);
//! this controller brings it back to the truth: down when objects go (pods that end or
//! are deleted, within moments, since pods are watched; other kinds on a 10 s resync), and
//! for charges of creates that failed after they were charged. The counting is the one
//! admission uses ([`crate::api::quota::usage`]), over the kinds the quota's `hard` names.
//! [`decide`] is pure over (quota, the namespace's objects by kind).
//!
//! Why a recount may not lower `used` at once: admission charges the quota before it
//! stores the object, so a recount can miss an object charged a moment ago and not
//! stored yet; lowering `used` then would let one more in than the quota allows. So the
//! status is written with a compare-and-swap on the quota as read *before* the recount
//! (a charge in between makes it fail and recount), and a lower `used` is written only
//! when the quota went uncharged for [`SETTLE`] and a recount still says so: every
//! object charged before then has been stored, or its create failed.

use super::common::{self, Backoff, Error};
use crate::api::kinds::{KINDS, ResourceKind};
use crate::api::quota::{self, Usage};
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often every quota is recounted without a change seen.
const RESYNC: Duration = Duration::from_secs(10);
/// How long a quota must go uncharged before a recount may lower its `used`.
const SETTLE: Duration = Duration::from_secs(1);

/// Starts the controller; it stops when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    pods: &mut super::informer::SharedInformer<Pod>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        backoff: Backoff::default(),
        lowering: Mutex::new(HashMap::new()),
    });
    let controller = Controller::new(
        Api::<ResourceQuota>::all(client.clone()),
        watcher::Config::default(),
    );
    let quotas = controller.store();
    let outcomes = controller
        .watches_shared_stream(pods.subscribe(), move |pod: Arc<Pod>| {
            let ns = pod.metadata.namespace.clone();
            quotas
                .state()
                .into_iter()
                .filter(|q| q.metadata.namespace == ns)
                .map(|q| ObjectRef::from_obj(&*q))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx);
    tasks.spawn(common::drive("resourcequota", outcomes, shutdown));
}

/// The kinds whose objects count toward `resource`.
pub fn kinds_for(resource: &str) -> Vec<&'static ResourceKind> {
    let core = |plural: &str| {
        KINDS
            .iter()
            .find(|k| k.group.is_empty() && k.plural == plural)
    };
    let found = match resource {
        "pods" | "count/pods" | "cpu" | "memory" | "requests.cpu" | "requests.memory"
        | "limits.cpu" | "limits.memory" => core("pods"),
        "services" | "services.nodeports" | "services.loadbalancers" => core("services"),
        other => match other.strip_prefix("count/") {
            Some(name) => KINDS
                .iter()
                .find(|k| k.namespaced && k.qualified_plural() == name),
            None => core(other),
        },
    };
    found.into_iter().collect()
}

/// The quota's status for the namespace's `objects` (by kind).
pub fn decide(quota: &ResourceQuota, objects: &[(&ResourceKind, Vec<Value>)]) -> Value {
    let hard = quota
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let mut used = Usage::new();
    for resource in hard.keys() {
        let mut sum = 0i64;
        for (kind, items) in objects {
            if !kinds_for(resource).contains(kind) {
                continue;
            }
            for obj in items {
                if obj.pointer("/metadata/deletionTimestamp").is_some() && kind.plural == "pods" {
                    continue;
                }
                let (u, _) = quota::usage(kind, obj);
                sum = sum.saturating_add(u.get(resource).copied().unwrap_or(0));
            }
        }
        used.insert(resource.clone(), sum);
    }
    json!({"hard": hard, "used": quota::write_map(&used)})
}

// ---------------------------------------------------------------------------------------
// Doing

struct Ctx {
    client: kube::Client,
    backoff: Backoff,
    /// Quotas whose recount was lower than their `used`: the resourceVersion seen then
    /// and when.
    lowering: Mutex<HashMap<String, (String, Instant)>>,
}

/// Whether `new` lowers any amount of `old` (both `{"hard", "used"}`).
fn lowers(old: &Value, new: &Value) -> bool {
    let before = quota::read_map(old.get("used"));
    let after = quota::read_map(new.get("used"));
    after
        .iter()
        .any(|(k, v)| before.get(k).is_some_and(|b| v < b))
}

async fn reconcile(q: Arc<ResourceQuota>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = common::key(&q.metadata);
    if q.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = q.metadata.namespace.clone().unwrap_or_default();
    let name = q.metadata.name.clone().unwrap_or_default();
    let api = Api::<ResourceQuota>::namespaced(ctx.client.clone(), &ns);
    // The quota as it is before the recount: the write is a compare-and-swap on it.
    let Some(q) = api
        .get_opt(&name)
        .await
        .map_err(Error::api("reading quota", &key))?
    else {
        return Ok(Action::await_change());
    };
    let rv = q.metadata.resource_version.clone().unwrap_or_default();
    let mut kinds: Vec<&'static ResourceKind> = Vec::new();
    for resource in q
        .spec
        .iter()
        .flat_map(|s| s.hard.iter().flatten())
        .map(|(k, _)| k)
    {
        for k in kinds_for(resource) {
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
    }
    let mut objects = Vec::new();
    for kind in kinds {
        let resource = ApiResource {
            group: kind.group.into(),
            version: kind.version.into(),
            api_version: kind.api_version(),
            kind: kind.kind.into(),
            plural: kind.plural.into(),
        };
        let items = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &resource)
            .list(&ListParams::default())
            .await
            .map_err(Error::api("listing what a quota counts", &key))?
            .items
            .into_iter()
            .filter_map(|o| serde_json::to_value(o).ok())
            .collect();
        objects.push((kind, items));
    }
    let status = decide(&q, &objects);
    let old = serde_json::to_value(q.status.clone().unwrap_or_default()).unwrap_or_default();
    if lowers(&old, &status) {
        let mut lowering = ctx.lowering.lock().unwrap_or_else(|e| e.into_inner());
        match lowering.get(&key) {
            Some((seen, since)) if *seen == rv && since.elapsed() >= SETTLE => {
                lowering.remove(&key);
            }
            Some((seen, _)) if *seen == rv => return Ok(Action::requeue(SETTLE)),
            _ => {
                lowering.insert(key.clone(), (rv, Instant::now()));
                return Ok(Action::requeue(SETTLE));
            }
        }
    } else {
        ctx.lowering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
    if old != status {
        let mut patch = common::status_patch(&old, &status);
        patch["metadata"] = json!({"resourceVersion": rv});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            // Charged meanwhile: recount.
            Err(e) if common::code_of(&e) == Some(409) => {
                return Ok(Action::requeue(Duration::from_millis(50)));
            }
            Err(e) => return Err(Error::api("writing the status of quota", &key)(e)),
        }
    }
    ctx.backoff.succeeded(&key);
    Ok(Action::requeue(RESYNC))
}

fn error_policy(q: Arc<ResourceQuota>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let key = common::key(&q.metadata);
    if error.code() != Some(409) {
        tracing::warn!(quota = %key, %error, "resourcequota");
    }
    Action::requeue(ctx.backoff.failed(&key))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::kinds::resolve;

    #[test]
    fn recounts_what_the_quota_names() {
        let q: ResourceQuota = serde_json::from_value(json!({"metadata": {"name": "q"},
            "spec": {"hard": {"pods": "3", "requests.cpu": "2", "count/deployments.apps": "1", "configmaps": "5"}}}))
        .unwrap();
        let pod = |cpu: &str, phase: &str| {
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a",
                "resources": {"requests": {"cpu": cpu}}}]}, "status": {"phase": phase}})
        };
        let objects = [
            (
                resolve("pod").unwrap(),
                vec![
                    pod("500m", "Running"),
                    pod("1", "Succeeded"),
                    pod("250m", "Pending"),
                ],
            ),
            (resolve("deploy").unwrap(), vec![json!({}), json!({})]),
        ];
        let status = decide(&q, &objects);
        assert_eq!(
            status["used"],
            json!({"configmaps": "0", "count/deployments.apps": "2", "pods": "2", "requests.cpu": "750m"})
        );
        assert_eq!(status["hard"]["pods"], "3");
        assert_eq!(kinds_for("count/jobs.batch"), [resolve("job").unwrap()]);
        assert!(kinds_for("count/widgets.example.com").is_empty());
    }
}
