//! The disruption controller: keeps each PodDisruptionBudget's status, which the eviction
//! subresource spends ([`crate::apiserver::eviction`]), as Kubernetes' does.
//!
//! - **Expected pods.** With an integer `minAvailable`, the pods the selector matches;
//!   with a percentage or `maxUnavailable`, the scale of the pods' controllers
//!   (Deployment, ReplicaSet, ReplicationController, StatefulSet: each counted once), so
//!   a budget of "50%" means half of what the workload should run, not of what runs now.
//! - **Healthy pods** are Ready and not being deleted, and not evicted a moment ago
//!   (`status.disruptedPods`, which the eviction subresource fills; an entry goes when
//!   the pod is gone or after two minutes).
//! - `desiredHealthy` is `minAvailable` (rounded up from a percentage) or the expected
//!   pods less `maxUnavailable`; `disruptionsAllowed` is what is healthy beyond it, and the
//!   `DisruptionAllowed` condition says whether any is (`SufficientPods` /
//!   `InsufficientPods`). Pods of a controller whose scale cannot be read make the budget
//!   allow nothing (`NoControllers` / `CalculateExpectedPodCountFailed`), as Kubernetes.
//!
//! [`decide`] is pure over (budget, its pods, the expected scale, now).

use super::common::{self, Backoff, Error};
use crate::events::{EventType, Recorder};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "controllermanager";
/// How long an evicted pod counts as disrupted before its deletion is seen.
const DELETION_TIMEOUT: SignedDuration = SignedDuration::from_secs(120);

/// Starts the controller; it stops when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    pods: &mut super::informer::SharedInformer<Pod>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), COMPONENT),
        backoff: Backoff::default(),
    });
    let controller = Controller::new(
        Api::<PodDisruptionBudget>::all(client.clone()),
        watcher::Config::default(),
    );
    let budgets = controller.store();
    // A pod's change reaches every budget of its namespace that selects it.
    let outcomes = controller
        .watches_shared_stream(pods.subscribe(), move |pod: Arc<Pod>| {
            let ns = pod.metadata.namespace.clone();
            budgets
                .state()
                .into_iter()
                .filter(|b| b.metadata.namespace == ns)
                .filter(|b| selects(b, &pod))
                .map(|b| ObjectRef::from_obj(&*b))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx);
    tasks.spawn(common::drive("disruption", outcomes, shutdown));
}

/// Whether the budget selects the pod (`policy/v1`: an empty selector selects every pod
/// of the namespace; a missing one none).
pub fn selects(pdb: &PodDisruptionBudget, pod: &Pod) -> bool {
    let Some(spec) = pdb.spec.as_ref() else {
        return false;
    };
    common::selects(spec.selector.as_ref(), pod.metadata.labels.as_ref())
}

// ---------------------------------------------------------------------------------------
// Deciding

fn healthy(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && common::is_pod_ready(pod)
}

/// What `expected` pods and the budget make of `desiredHealthy`, with how many pods are
/// expected; `Err` when the budget needs the controllers' scale and it is unknown.
fn desired(
    pdb: &PodDisruptionBudget,
    pods: usize,
    scale: Option<i32>,
) -> Result<(i32, i32), &'static str> {
    let spec = pdb.spec.clone().unwrap_or_default();
    let pods = i32::try_from(pods).unwrap_or(i32::MAX);
    let scaled = |v: &IntOrString, total: i32| {
        super::deployment::scaled_value(v, total, true).map_err(|_| "invalid budget")
    };
    match (&spec.max_unavailable, &spec.min_available) {
        (Some(max), _) => {
            let expected = scale.ok_or("scale")?;
            Ok((expected, (expected - scaled(max, expected)?).max(0)))
        }
        (None, Some(IntOrString::Int(n))) => Ok((pods, *n)),
        (None, Some(min)) => {
            let expected = scale.ok_or("scale")?;
            Ok((expected, scaled(min, expected)?))
        }
        // Neither: `minAvailable: 1`'s default in older versions; policy/v1 has none,
        // and Kubernetes then allows no disruption (desired = expected pods).
        (None, None) => Ok((pods, pods)),
    }
}

/// The budget's status for `pods` (those it selects) at `now`; `scale` is the sum of the
/// pods' controllers' replicas when it could be read.
pub fn decide(
    pdb: &PodDisruptionBudget,
    pods: &[Pod],
    scale: Option<i32>,
    now: Timestamp,
) -> PodDisruptionBudgetStatus {
    let old = pdb.status.clone().unwrap_or_default();
    // Evicted pods stay counted as disrupted until they are seen going, for a while.
    let disrupted: BTreeMap<String, Time> = old
        .disrupted_pods
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, at)| {
            at.0 + DELETION_TIMEOUT > now
                && pods.iter().any(|p| {
                    p.metadata.name.as_deref() == Some(name.as_str())
                        && p.metadata.deletion_timestamp.is_none()
                })
        })
        .collect();
    let current = pods
        .iter()
        .filter(|p| healthy(p))
        .filter(|p| !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or_default()))
        .count();
    let current = i32::try_from(current).unwrap_or(i32::MAX);
    let (expected, desired_healthy, allowed, reason) = match desired(pdb, pods.len(), scale) {
        Ok((expected, desired_healthy)) => {
            let allowed = if expected <= 0 {
                0
            } else {
                (current - desired_healthy).max(0)
            };
            let reason = if allowed > 0 {
                "SufficientPods"
            } else {
                "InsufficientPods"
            };
            (expected, desired_healthy, allowed, reason)
        }
        Err(_) => (0, 0, 0, "SyncFailed"),
    };
    let status_of = |b: bool| if b { "True" } else { "False" };
    let keep_time = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed" && c.status == status_of(allowed > 0))
        .map(|c| c.last_transition_time.clone());
    let condition = Condition {
        type_: "DisruptionAllowed".into(),
        status: status_of(allowed > 0).into(),
        reason: reason.into(),
        message: String::new(),
        last_transition_time: keep_time.unwrap_or(Time(now)),
        observed_generation: pdb.metadata.generation,
    };
    PodDisruptionBudgetStatus {
        current_healthy: Some(current),
        desired_healthy: Some(desired_healthy),
        disruptions_allowed: Some(allowed),
        expected_pods: Some(expected),
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        observed_generation: pdb.metadata.generation,
        conditions: Some(vec![condition]),
    }
}

// ---------------------------------------------------------------------------------------
// Doing

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    backoff: Backoff,
}

/// The summed replicas of the pods' controllers, each counted once; `Err` with the name
/// of a pod whose controller has no scale that can be read.
async fn scale_of(ctx: &Ctx, ns: &str, pods: &[Pod]) -> Result<i32, String> {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(owner) = common::controller_of(&pod.metadata) else {
            return Err(name);
        };
        let replicas = match owner.kind.as_str() {
            "ReplicaSet" => {
                let rs = Api::<ReplicaSet>::namespaced(ctx.client.clone(), ns)
                    .get_opt(&owner.name)
                    .await
                    .ok()
                    .flatten()
                    .ok_or_else(|| name.clone())?;
                // A Deployment's ReplicaSets are counted by the Deployment.
                match common::controller_of(&rs.metadata).filter(|o| o.kind == "Deployment") {
                    Some(d) => {
                        if !seen.insert(("Deployment", d.uid.clone())) {
                            continue;
                        }
                        Api::<Deployment>::namespaced(ctx.client.clone(), ns)
                            .get_opt(&d.name)
                            .await
                            .ok()
                            .flatten()
                            .and_then(|d| d.spec.replicas)
                            .unwrap_or(1)
                    }
                    None => {
                        if !seen.insert(("ReplicaSet", owner.uid.clone())) {
                            continue;
                        }
                        rs.spec.replicas.unwrap_or(1)
                    }
                }
            }
            "ReplicationController" => {
                if !seen.insert(("ReplicationController", owner.uid.clone())) {
                    continue;
                }
                Api::<ReplicationController>::namespaced(ctx.client.clone(), ns)
                    .get_opt(&owner.name)
                    .await
                    .ok()
                    .flatten()
                    .ok_or_else(|| name.clone())?
                    .spec
                    .and_then(|s| s.replicas)
                    .unwrap_or(1)
            }
            "StatefulSet" => {
                if !seen.insert(("StatefulSet", owner.uid.clone())) {
                    continue;
                }
                Api::<StatefulSet>::namespaced(ctx.client.clone(), ns)
                    .get_opt(&owner.name)
                    .await
                    .ok()
                    .flatten()
                    .ok_or_else(|| name.clone())?
                    .spec
                    .replicas
                    .unwrap_or(1)
            }
            _ => return Err(name),
        };
        total += replicas;
    }
    Ok(total)
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = common::key(&pdb.metadata);
    if pdb.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pdb.metadata.namespace.clone().unwrap_or_default();
    let pods: Vec<Pod> = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(Error::api("listing pods of budget", &key))?
        .items
        .into_iter()
        .filter(|p| selects(&pdb, p))
        .collect();
    let spec = pdb.spec.clone().unwrap_or_default();
    let needs_scale = spec.max_unavailable.is_some()
        || matches!(spec.min_available, Some(IntOrString::String(_)));
    let scale = if needs_scale {
        match scale_of(&ctx, &ns, &pods).await {
            Ok(n) => Some(n),
            Err(pod) => {
                let about =
                    crate::events::reference("PodDisruptionBudget", "policy/v1", &pdb.metadata);
                ctx.recorder
                    .record(
                        &about,
                        EventType::Warning,
                        "CalculateExpectedPodCountFailed",
                        &format!("Failed to calculate the number of expected pods: found no controllers for pod {pod:?}"),
                    )
                    .await;
                None
            }
        }
    } else {
        None
    };
    let now = common::now();
    let status = decide(&pdb, &pods, scale, now);
    common::write_status_if_changed(
        &Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &ns),
        pdb.metadata.name.as_deref().unwrap_or_default(),
        pdb.status.as_ref(),
        &status,
    )
    .await
    .map_err(Error::api("writing the status of budget", &key))?;
    ctx.backoff.succeeded(&key);
    // Disrupted pods expire: look again when the oldest does.
    let next = status
        .disrupted_pods
        .iter()
        .flatten()
        .map(|(_, t)| t.0 + DELETION_TIMEOUT)
        .min()
        .map(|at| Duration::try_from(at.duration_since(now)).unwrap_or_default());
    Ok(match next {
        Some(d) => Action::requeue(d + Duration::from_millis(100)),
        None => Action::await_change(),
    })
}

fn error_policy(pdb: Arc<PodDisruptionBudget>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let key = common::key(&pdb.metadata);
    if error.code() != Some(409) {
        tracing::warn!(budget = %key, %error, "disruption");
    }
    Action::requeue(ctx.backoff.failed(&key))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn pdb(spec: Value, status: Value) -> PodDisruptionBudget {
        let mut s = json!({"selector": {"matchLabels": {"app": "web"}}});
        s.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "default", "generation": 2},
            "spec": s, "status": status}),
        )
        .unwrap()
    }

    fn pod(name: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "web"}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}))
        .unwrap()
    }

    fn counts(s: &PodDisruptionBudgetStatus) -> (i32, i32, i32, i32) {
        (
            s.current_healthy.unwrap(),
            s.desired_healthy.unwrap(),
            s.disruptions_allowed.unwrap(),
            s.expected_pods.unwrap(),
        )
    }

    #[test]
    fn min_available_and_max_unavailable_as_numbers_and_percentages() {
        let pods = [pod("a", true), pod("b", true), pod("c", false)];
        let s = decide(
            &pdb(json!({"minAvailable": 1}), json!({})),
            &pods,
            None,
            ts(0),
        );
        assert_eq!(counts(&s), (2, 1, 1, 3));
        assert_eq!(s.observed_generation, Some(2));
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "SufficientPods")
        );

        let s = decide(
            &pdb(json!({"minAvailable": 2}), json!({})),
            &pods,
            None,
            ts(0),
        );
        assert_eq!(counts(&s), (2, 2, 0, 3));
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InsufficientPods")
        );

        // Percentages and maxUnavailable count from the controllers' scale (4 here).
        let s = decide(
            &pdb(json!({"minAvailable": "50%"}), json!({})),
            &pods,
            Some(4),
            ts(0),
        );
        assert_eq!(counts(&s), (2, 2, 0, 4));
        let s = decide(
            &pdb(json!({"maxUnavailable": 1}), json!({})),
            &pods,
            Some(3),
            ts(0),
        );
        assert_eq!(counts(&s), (2, 2, 0, 3));
        let s = decide(
            &pdb(json!({"maxUnavailable": "50%"}), json!({})),
            &pods,
            Some(3),
            ts(0),
        );
        // 50% of 3 rounds up to 2 unavailable: one must stay healthy.
        assert_eq!(counts(&s), (2, 1, 1, 3));
        // The scale could not be read: nothing allowed.
        let s = decide(
            &pdb(json!({"maxUnavailable": 1}), json!({})),
            &pods,
            None,
            ts(0),
        );
        assert_eq!(s.disruptions_allowed, Some(0));
    }

    #[test]
    fn evicted_pods_count_as_disrupted_until_seen_going_or_two_minutes() {
        let pods = [pod("a", true), pod("b", true)];
        let status = json!({"disruptedPods": {"a": ts(0).to_string(), "gone": ts(0).to_string()}});
        let s = decide(
            &pdb(json!({"minAvailable": 1}), status.clone()),
            &pods,
            None,
            ts(10),
        );
        assert_eq!(counts(&s), (1, 1, 0, 2));
        assert_eq!(s.disrupted_pods.unwrap().keys().collect::<Vec<_>>(), ["a"]);
        let s = decide(
            &pdb(json!({"minAvailable": 1}), status),
            &pods,
            None,
            ts(121),
        );
        assert_eq!(counts(&s), (2, 1, 1, 2));
        assert_eq!(s.disrupted_pods, None);
    }
}
