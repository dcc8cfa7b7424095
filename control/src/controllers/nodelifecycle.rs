//! Node lifecycle: notice nodes that stopped reporting, taint them, and move their pods.
//!
//! Two level-triggered controllers, as Kubernetes splits them
//! (`pkg/controller/nodelifecycle` and its NoExecute taint manager):
//!
//! - **Node health** (keyed by Node; triggered by Node and Lease changes, requeued for the
//!   moment a node's grace runs out). A node is alive while its Lease in
//!   `kube-node-lease` (`spec.renewTime`) or its Ready condition's `lastHeartbeatTime`
//!   keeps moving. The controller does not compare those times with its own clock (the
//!   node's clock may differ, and after a control-plane restart every lease looks old):
//!   like Kubernetes' `nodeHealthMap` it remembers *when it saw them change*, so a node
//!   gets `node_monitor_grace` from the last change this controller observed, and a
//!   freshly started controller gives every node a full grace. A node silent for longer
//!   gets every condition `Unknown` (reason `NodeStatusUnknown`, message `Kubelet stopped
//!   posting node status.`), which `wharf get nodes` prints as `NotReady`, and the
//!   `node.kubernetes.io/unreachable` taint with effects NoExecute and NoSchedule (a node
//!   that says Ready=False gets `node.kubernetes.io/not-ready` instead, and a cordoned
//!   node `node.kubernetes.io/unschedulable:NoSchedule`, as TaintNodesByCondition does).
//!   Once the node renews its Lease again the taints go at once; its Ready condition comes
//!   back with the node's own next status heartbeat.
//! - **Taint eviction** (keyed by Pod; triggered by Pod changes and by changes of the
//!   pod's Node). A pod on a node with a NoExecute taint it does not tolerate is deleted
//!   (the `TaintManagerEviction` Event says so); one that tolerates it for
//!   `tolerationSeconds` is deleted that long after the taint's `timeAdded`. Kubernetes'
//!   `DefaultTolerationSeconds` admission gives every pod 300 s tolerations for
//!   `unreachable` and `not-ready`; wharf does not add them to pods and instead treats a
//!   pod *without* a toleration for those two taints as tolerating them for
//!   `pod_eviction_timeout` (4 s by default, a laptop default: a dead node's pods are
//!   replaced within seconds, not minutes). DaemonSet pods tolerate them forever.
//!   Kubernetes also marks the pods of an unreachable node Ready=False at once; wharf does
//!   not, because its node agent writes a pod's status only when its own view changes (it
//!   does not resync), so a node that was only slow would leave its pods NotReady for
//!   good. Within `pod_eviction_timeout` they are deleted anyway, and a terminating pod
//!   leaves Services.
//!
//! **Pods on a dead node.** A deleted pod is removed when its node confirms it stopped;
//! a dead node never does, and Kubernetes leaves such pods `Terminating` until the node
//! comes back or someone force-deletes them. Their owners do not wait for them (a
//! terminating pod is not an active replica), so replacements run elsewhere at once; what
//! stays is a pod that lists forever and a namespace that cannot finish deleting. wharf
//! force-deletes (grace 0) a terminating pod whose node still has the unreachable taint
//! once its grace period has passed plus `node_monitor_grace`. That is safe here because
//! wharf runs no StatefulSets (nothing relies on at-most-one pod per identity), and a
//! node that comes back stops every pod that is no longer in the API (its pod watch
//! relists and its workers see the pod gone). Pods bound to a Node that does not exist
//! are force-deleted too, once they are older than `orphaned_pod_grace` (Kubernetes'
//! PodGC quarantine: a pod may name a node that has not registered yet).

use super::ControllerConfig;
use super::common::{self, Backoff, Error};
use crate::events::{self, EventType, Recorder};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::api::wellknown::{TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE};
/// The taints this controller owns: it adds and removes them, and leaves others alone.
const MANAGED_TAINTS: [&str; 3] = [TAINT_UNREACHABLE, TAINT_NOT_READY, TAINT_UNSCHEDULABLE];
pub const NO_EXECUTE: &str = "NoExecute";
pub const NO_SCHEDULE: &str = "NoSchedule";
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The conditions a node reports and this controller turns Unknown when it goes silent.
const NODE_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
pub const NODE_COMPONENT: &str = "node-controller";
pub const EVICTION_COMPONENT: &str = "taint-eviction-controller";
/// A node that is fine is still looked at this often (a missed watch event costs no more).
const RESYNC: Duration = Duration::from_secs(30);

/// Starts both controllers; they stop when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    config: &ControllerConfig,
    pod_informer: &mut super::informer::SharedInformer<Pod>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let health = Arc::new(HealthCtx {
        client: client.clone(),
        config: config.clone(),
        recorder: Recorder::new(client.clone(), NODE_COMPONENT),
        probes: Mutex::default(),
        backoff: Backoff::default(),
    });
    let nodes = Api::<Node>::all(client.clone());
    let leases = Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE);
    let health_loop = Controller::new(nodes, watcher::Config::default())
        .watches(leases, watcher::Config::default(), |lease: Lease| {
            lease
                .metadata
                .name
                .map(|name| ObjectRef::<Node>::new(&name))
        })
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile_node, node_error_policy, health)
        .for_each(|outcome| {
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "node health controller");
            }
            futures::future::ready(())
        });
    tasks.spawn(super::gc::run_until_shutdown(shutdown.clone(), health_loop));

    let (node_cache, node_writer) = reflector::store::<Node>();
    let node_changes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .touched_objects();
    let eviction = Arc::new(EvictionCtx {
        client: client.clone(),
        config: config.clone(),
        recorder: Recorder::new(client.clone(), EVICTION_COMPONENT),
        first_seen: Mutex::default(),
        backoff: Backoff::default(),
        nodes: node_cache,
    });
    let feed = pod_informer.feed();
    let pods = feed.store.clone();
    let controller = Controller::for_shared_stream(feed.changes, feed.store);
    let eviction_loop = controller
        .watches_stream(node_changes, move |node: Node| {
            let name = node.metadata.name.unwrap_or_default();
            pods.state()
                .into_iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&name))
                .map(|p| ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile_pod, pod_error_policy, eviction)
        .for_each(|outcome| {
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "taint eviction controller");
            }
            futures::future::ready(())
        });
    tasks.spawn(super::gc::run_until_shutdown(shutdown, eviction_loop));
}

// ---------------------------------------------------------------------------------------
// Taints and tolerations

pub use crate::api::tolerations::{tolerated, tolerates};

fn taint(key: &str, effect: &str, now: Timestamp) -> Taint {
    Taint {
        key: key.to_string(),
        effect: effect.to_string(),
        time_added: Some(Time(now)),
        value: None,
    }
}

fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// What the node controller writes to a node.
#[derive(Debug, Default, PartialEq)]
pub struct NodePlan {
    /// The node's conditions from now on, when they change.
    pub conditions: Option<Vec<NodeCondition>>,
    /// The node's taints from now on, when they change.
    pub taints: Option<Vec<Taint>>,
    /// The node just went silent: record `NodeNotReady`.
    pub went_silent: bool,
    /// When to look again if nothing changes.
    pub requeue: Duration,
}

/// Decides a node's conditions and taints from how long ago this controller last saw it
/// report (`since_report`).
pub fn decide_node(
    node: &Node,
    since_report: Duration,
    now: Timestamp,
    config: &ControllerConfig,
) -> NodePlan {
    let grace = config.node_monitor_grace;
    let alive = since_report < grace;
    let mut plan = NodePlan {
        requeue: if alive {
            (grace - since_report + Duration::from_millis(50)).min(RESYNC)
        } else {
            RESYNC
        },
        ..Default::default()
    };
    let current: Vec<NodeCondition> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if !alive {
        let never = current.iter().all(|c| c.type_ != "Ready");
        let (reason, message) = if never {
            (
                "NodeStatusNeverUpdated",
                "Kubelet never posted node status.",
            )
        } else {
            ("NodeStatusUnknown", "Kubelet stopped posting node status.")
        };
        let mut conditions = current.clone();
        for ty in NODE_CONDITIONS {
            match conditions.iter_mut().find(|c| c.type_ == ty) {
                Some(c) if c.status == "Unknown" => {}
                Some(c) => {
                    c.status = "Unknown".into();
                    c.reason = Some(reason.into());
                    c.message = Some(message.into());
                    c.last_transition_time = Some(Time(now));
                }
                None if never => conditions.push(NodeCondition {
                    type_: ty.into(),
                    status: "Unknown".into(),
                    reason: Some(reason.into()),
                    message: Some(message.into()),
                    last_transition_time: Some(Time(now)),
                    last_heartbeat_time: None,
                }),
                None => {}
            }
        }
        if conditions != current {
            plan.went_silent = condition(node, "Ready").is_none_or(|c| c.status != "Unknown");
            plan.conditions = Some(conditions);
        }
    }

    // The taints the node should carry now, of those this controller manages.
    let ready = condition(node, "Ready").map(|c| c.status.as_str());
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    if !alive {
        wanted.extend([
            (TAINT_UNREACHABLE, NO_SCHEDULE),
            (TAINT_UNREACHABLE, NO_EXECUTE),
        ]);
    } else if ready == Some("False") {
        wanted.extend([
            (TAINT_NOT_READY, NO_SCHEDULE),
            (TAINT_NOT_READY, NO_EXECUTE),
        ]);
    }
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        wanted.push((TAINT_UNSCHEDULABLE, NO_SCHEDULE));
    }
    let current_taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut taints: Vec<Taint> = current_taints
        .iter()
        .filter(|t| {
            !MANAGED_TAINTS.contains(&t.key.as_str())
                || wanted.contains(&(t.key.as_str(), t.effect.as_str()))
        })
        .cloned()
        .collect();
    for (key, effect) in wanted {
        if !taints.iter().any(|t| t.key == key && t.effect == effect) {
            taints.push(taint(key, effect, now));
        }
    }
    if taints != current_taints {
        plan.taints = Some(taints);
    }
    plan
}

// ---------------------------------------------------------------------------------------
// Node health: the executor

struct HealthCtx {
    client: kube::Client,
    config: ControllerConfig,
    recorder: Recorder,
    /// Per node: what it last reported (lease renewTime, Ready heartbeat) and when this
    /// controller saw that change.
    probes: Mutex<HashMap<String, Probe>>,
    backoff: Backoff,
}

#[derive(Debug, Clone, PartialEq)]
struct Probe {
    signature: (Option<String>, Option<String>),
    seen_at: Timestamp,
}

impl HealthCtx {
    /// How long since the node last reported, as this controller observed it.
    fn since_report(&self, name: &str, signature: (Option<String>, Option<String>)) -> Duration {
        let now = Timestamp::now();
        let Ok(mut probes) = self.probes.lock() else {
            return Duration::ZERO;
        };
        let probe = probes.entry(name.to_string()).or_insert_with(|| Probe {
            signature: signature.clone(),
            seen_at: now,
        });
        if probe.signature != signature {
            *probe = Probe {
                signature,
                seen_at: now,
            };
        }
        Duration::try_from(now.duration_since(probe.seen_at)).unwrap_or_default()
    }
}

async fn reconcile_node(node: Arc<Node>, ctx: Arc<HealthCtx>) -> Result<Action, Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let leases = Api::<Lease>::namespaced(ctx.client.clone(), LEASE_NAMESPACE);
    let lease = leases
        .get_opt(&name)
        .await
        .map_err(Error::api("reading the lease of node", &name))?;
    let renewed = lease
        .and_then(|l| l.spec)
        .and_then(|s| s.renew_time)
        .map(|t| t.0.to_string());
    let heartbeat = condition(&node, "Ready")
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0.to_string());
    let since = ctx.since_report(&name, (renewed, heartbeat));
    let now = common::now();
    let plan = decide_node(&node, since, now, &ctx.config);

    let nodes = Api::<Node>::all(ctx.client.clone());
    let mut version = node.metadata.resource_version.clone();
    if let Some(conditions) = &plan.conditions {
        let patch = json!({
            "metadata": {"resourceVersion": version},
            "status": {"conditions": conditions},
        });
        let written = nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::api("marking unknown the conditions of node", &name))?;
        version = written.metadata.resource_version;
        if plan.went_silent {
            tracing::info!(node = %name, "node stopped reporting; marking it NotReady");
            let about = events::reference("Node", "v1", &node.metadata);
            ctx.recorder
                .record(
                    &about,
                    EventType::Normal,
                    "NodeNotReady",
                    &format!("Node {name} status is now: NodeNotReady"),
                )
                .await;
        }
    }
    if let Some(taints) = &plan.taints {
        let patch = json!({
            "metadata": {"resourceVersion": version},
            "spec": {"taints": if taints.is_empty() { json!(null) } else { json!(taints) }},
        });
        nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::api("updating the taints of node", &name))?;
    }
    ctx.backoff.succeeded(&name);
    Ok(Action::requeue(plan.requeue))
}

fn node_error_policy(node: Arc<Node>, error: &Error, ctx: Arc<HealthCtx>) -> Action {
    let name = node.metadata.name.clone().unwrap_or_default();
    if error.code() != Some(409) {
        tracing::warn!(node = %name, %error, "node health");
    }
    Action::requeue(ctx.backoff.failed(&name))
}

// ---------------------------------------------------------------------------------------
// Taint eviction

/// What happens to a pod because of its node.
#[derive(Debug, PartialEq)]
pub enum PodAction {
    Nothing,
    /// Delete it (gracefully): its node has a NoExecute taint it does not tolerate (any
    /// longer). The string names the taint.
    Evict(String),
    /// Remove it now (grace 0): it can never be confirmed by its node.
    ForceDelete(ForceReason),
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum ForceReason {
    /// Bound to a Node that does not exist.
    Orphaned,
    /// Terminating on an unreachable node past its grace period.
    Unreachable,
}

#[derive(Debug, PartialEq)]
pub struct PodPlan {
    pub action: PodAction,
    /// When to look again if nothing changes.
    pub requeue: Option<Duration>,
}

fn until(at: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or_default() + Duration::from_millis(50)
}

/// Decides what a pod's node means for the pod. `taint_added` tells when a taint was put
/// on the node (its `timeAdded`, else when this controller first saw it).
pub fn decide_pod(
    pod: &Pod,
    node: Option<&Node>,
    taint_added: &dyn Fn(&Taint) -> Timestamp,
    now: Timestamp,
    config: &ControllerConfig,
) -> PodPlan {
    let mut plan = PodPlan {
        action: PodAction::Nothing,
        requeue: None,
    };
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty)
    {
        return plan;
    }
    let Some(node) = node else {
        let created = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(now, |t| t.0);
        let at = created + SignedDuration::try_from(config.orphaned_pod_grace).unwrap_or_default();
        if at <= now {
            plan.action = PodAction::ForceDelete(ForceReason::Orphaned);
        } else {
            plan.requeue = Some(until(at, now));
        }
        return plan;
    };
    let taints: Vec<&Taint> = node
        .spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
        .filter(|t| t.effect == NO_EXECUTE)
        .collect();
    let unreachable = taints.iter().any(|t| t.key == TAINT_UNREACHABLE);
    if let Some(deleted) = &pod.metadata.deletion_timestamp {
        if unreachable {
            let margin = SignedDuration::try_from(config.node_monitor_grace).unwrap_or_default();
            let at = deleted.0 + margin;
            if at <= now {
                plan.action = PodAction::ForceDelete(ForceReason::Unreachable);
            } else {
                plan.requeue = Some(until(at, now));
            }
        }
        return plan;
    }
    if !common::is_pod_active(pod) {
        return plan;
    }
    let tolerations: &[Toleration] = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    // The earliest moment some taint stops being tolerated.
    let mut evict_at: Option<(Timestamp, &str)> = None;
    for t in taints {
        let matching: Vec<&Toleration> = tolerations.iter().filter(|x| tolerates(x, t)).collect();
        let seconds = if matching.is_empty() {
            if t.key == TAINT_UNREACHABLE || t.key == TAINT_NOT_READY {
                Some(i64::try_from(config.pod_eviction_timeout.as_secs()).unwrap_or(i64::MAX))
            } else {
                Some(0)
            }
        } else if matching.iter().any(|x| x.toleration_seconds.is_none()) {
            None // tolerated forever
        } else {
            matching.iter().filter_map(|x| x.toleration_seconds).min()
        };
        if let Some(s) = seconds {
            let at = taint_added(t) + SignedDuration::from_secs(s.max(0));
            if evict_at.is_none_or(|(e, _)| at < e) {
                evict_at = Some((at, t.key.as_str()));
            }
        }
    }
    match evict_at {
        Some((at, key)) if at <= now => plan.action = PodAction::Evict(key.to_string()),
        Some((at, _)) => plan.requeue = Some(until(at, now)),
        None => {}
    }
    plan
}

struct EvictionCtx {
    client: kube::Client,
    config: ControllerConfig,
    recorder: Recorder,
    /// Taints without `timeAdded`, by (node, key, effect): when this controller first saw
    /// them, the start of their tolerationSeconds.
    first_seen: Mutex<HashMap<(String, String, String), Timestamp>>,
    backoff: Backoff,
    /// Every Node, as the watch last told: read for each pod change, so a pod's change
    /// costs no request. A decision to delete is taken again on the live Node.
    nodes: Store<Node>,
}

async fn reconcile_pod(pod: Arc<Pod>, ctx: Arc<EvictionCtx>) -> Result<Action, Error> {
    let Some(node_name) = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
    else {
        return Ok(Action::await_change());
    };
    let key = common::key(&pod.metadata);
    let now = common::now();
    let taint_added = |t: &Taint| -> Timestamp {
        if let Some(at) = &t.time_added {
            return at.0;
        }
        ctx.first_seen
            .lock()
            .map(|mut seen| {
                *seen
                    .entry((node_name.clone(), t.key.clone(), t.effect.clone()))
                    .or_insert(now)
            })
            .unwrap_or(now)
    };
    let cached = ctx.nodes.get(&ObjectRef::new(&node_name));
    let mut plan = decide_pod(&pod, cached.as_deref(), &taint_added, now, &ctx.config);
    if !matches!(plan.action, PodAction::Nothing) {
        // The cache may lag (a node just registered, a taint just removed): a pod is
        // deleted only for what the Node says now.
        let live = Api::<Node>::all(ctx.client.clone())
            .get_opt(&node_name)
            .await
            .map_err(Error::api("reading node", &node_name))?;
        plan = decide_pod(&pod, live.as_ref(), &taint_added, now, &ctx.config);
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let about = events::reference("Pod", "v1", &pod.metadata);
    let uid_only = Preconditions {
        uid: pod.metadata.uid.clone(),
        resource_version: None,
    };
    match &plan.action {
        PodAction::Nothing => {}
        PodAction::Evict(taint) => {
            tracing::info!(pod = %key, node = %node_name, %taint, "evicting a pod from a tainted node");
            let params = DeleteParams {
                preconditions: Some(uid_only),
                ..Default::default()
            };
            match pods.delete(&name, &params).await {
                Ok(_) => {
                    ctx.recorder
                        .record(
                            &about,
                            EventType::Normal,
                            "TaintManagerEviction",
                            &format!("Marking for deletion Pod {key}"),
                        )
                        .await
                }
                Err(e) if matches!(common::code_of(&e), Some(404 | 409)) => {}
                Err(e) => return Err(Error::api("evicting pod", &key)(e)),
            }
        }
        PodAction::ForceDelete(reason) => {
            tracing::info!(pod = %key, node = %node_name, ?reason, "force-deleting a pod its node cannot stop");
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(uid_only),
                ..Default::default()
            };
            match pods.delete(&name, &params).await {
                Ok(_) => {}
                Err(e) if matches!(common::code_of(&e), Some(404 | 409)) => {}
                Err(e) => return Err(Error::api("force-deleting pod", &key)(e)),
            }
        }
    }
    ctx.backoff.succeeded(&key);
    Ok(match plan.requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

fn pod_error_policy(pod: Arc<Pod>, error: &Error, ctx: Arc<EvictionCtx>) -> Action {
    let key = common::key(&pod.metadata);
    if error.code() != Some(409) {
        tracing::warn!(pod = %key, %error, "taint eviction");
    }
    Action::requeue(ctx.backoff.failed(&key))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).unwrap()
    }

    fn ready_node() -> Node {
        node(
            json!({"metadata": {"name": "n1"}, "status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "lastHeartbeatTime": "2023-11-14T22:13:20Z", "lastTransitionTime": "2023-11-14T22:13:20Z"},
            {"type": "MemoryPressure", "status": "False"}]}}),
        )
    }

    fn config() -> ControllerConfig {
        ControllerConfig::default()
    }

    #[test]
    fn tolerations_match_like_kubernetes() {
        let t = taint(TAINT_UNREACHABLE, NO_EXECUTE, ts(0));
        let tol = |v: serde_json::Value| -> Toleration { serde_json::from_value(v).unwrap() };
        assert!(tolerates(
            &tol(json!({"key": TAINT_UNREACHABLE, "operator": "Exists"})),
            &t
        ));
        assert!(tolerates(&tol(json!({"operator": "Exists"})), &t));
        assert!(tolerates(
            &tol(json!({"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute"})),
            &t
        ));
        assert!(!tolerates(
            &tol(json!({"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoSchedule"})),
            &t
        ));
        assert!(!tolerates(
            &tol(json!({"key": "other", "operator": "Exists"})),
            &t
        ));
        // Equal (the default) compares values; the taint has none.
        assert!(tolerates(&tol(json!({"key": TAINT_UNREACHABLE})), &t));
        assert!(!tolerates(
            &tol(json!({"key": TAINT_UNREACHABLE, "value": "x"})),
            &t
        ));
    }

    #[test]
    fn a_silent_node_becomes_unknown_and_unreachable() {
        let n = ready_node();
        let fresh = decide_node(&n, Duration::from_secs(1), ts(10), &config());
        assert_eq!(fresh.conditions, None);
        assert_eq!(fresh.taints, None);
        assert!(fresh.requeue <= Duration::from_secs(5) + Duration::from_millis(50));

        let silent = decide_node(&n, Duration::from_secs(7), ts(10), &config());
        assert!(silent.went_silent);
        let conditions = silent.conditions.unwrap();
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "Unknown");
        assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(
            ready.message.as_deref(),
            Some("Kubelet stopped posting node status.")
        );
        // The heartbeat stays what the node last posted: writing Unknown is no report.
        assert_eq!(
            ready.last_heartbeat_time,
            condition(&n, "Ready").unwrap().last_heartbeat_time
        );
        let memory = conditions
            .iter()
            .find(|c| c.type_ == "MemoryPressure")
            .unwrap();
        assert_eq!(memory.status, "Unknown");
        let taints = silent.taints.unwrap();
        let keys: Vec<(&str, &str)> = taints
            .iter()
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                (TAINT_UNREACHABLE, NO_SCHEDULE),
                (TAINT_UNREACHABLE, NO_EXECUTE)
            ]
        );
        assert_eq!(taints[1].time_added, Some(Time(ts(10))));

        // Applied: nothing more to write, and no second NodeNotReady.
        let mut marked = n.clone();
        marked.status.as_mut().unwrap().conditions = Some(conditions);
        marked.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(taints.clone()),
            ..Default::default()
        });
        let again = decide_node(&marked, Duration::from_secs(20), ts(30), &config());
        assert_eq!(
            again,
            NodePlan {
                requeue: RESYNC,
                ..Default::default()
            }
        );

        // The lease moves again: the taints go at once, Ready waits for the node.
        let back = decide_node(&marked, Duration::ZERO, ts(40), &config());
        assert_eq!(back.taints, Some(vec![]));
        assert_eq!(back.conditions, None);
    }

    #[test]
    fn managed_taints_follow_ready_false_and_cordons_and_others_stay() {
        let n = node(json!({"metadata": {"name": "n1"},
            "spec": {"unschedulable": true, "taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}}));
        let plan = decide_node(&n, Duration::ZERO, ts(0), &config());
        let keys: Vec<(&str, &str)> = plan
            .taints
            .as_ref()
            .unwrap()
            .iter()
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("dedicated", NO_SCHEDULE),
                (TAINT_NOT_READY, NO_SCHEDULE),
                (TAINT_NOT_READY, NO_EXECUTE),
                (TAINT_UNSCHEDULABLE, NO_SCHEDULE)
            ]
        );
        assert_eq!(plan.conditions, None);
    }

    #[test]
    fn a_node_that_never_reported_gets_unknown_conditions() {
        let n = node(json!({"metadata": {"name": "n1"}}));
        let plan = decide_node(&n, Duration::from_secs(60), ts(0), &config());
        let conditions = plan.conditions.unwrap();
        assert_eq!(conditions.len(), 4);
        assert!(conditions.iter().all(
            |c| c.status == "Unknown" && c.reason.as_deref() == Some("NodeStatusNeverUpdated")
        ));
    }

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn unreachable_node(added: i64) -> Node {
        node(json!({"metadata": {"name": "n1"}, "spec": {"taints": [
            {"key": TAINT_UNREACHABLE, "effect": "NoSchedule", "timeAdded": ts(added).to_string()},
            {"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": ts(added).to_string()}]},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}))
    }

    fn running_pod(tolerations: serde_json::Value) -> Pod {
        pod(
            json!({"metadata": {"name": "p", "namespace": "default", "creationTimestamp": ts(-100).to_string()},
            "spec": {"nodeName": "n1", "tolerations": tolerations, "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
        )
    }

    fn added(t: &Taint) -> Timestamp {
        t.time_added.as_ref().map_or(ts(0), |t| t.0)
    }

    #[test]
    fn pods_are_evicted_after_their_toleration() {
        let n = unreachable_node(0);
        let cfg = config();
        // No toleration: the laptop default, pod_eviction_timeout (4 s).
        let p = running_pod(json!([]));
        let early = decide_pod(&p, Some(&n), &added, ts(1), &cfg);
        assert_eq!(early.action, PodAction::Nothing);
        assert_eq!(early.requeue, Some(Duration::from_millis(3050)));
        let late = decide_pod(&p, Some(&n), &added, ts(4), &cfg);
        assert_eq!(late.action, PodAction::Evict(TAINT_UNREACHABLE.into()));

        // An explicit toleration decides; one without seconds tolerates forever.
        let patient = running_pod(json!([{"key": TAINT_UNREACHABLE, "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 30}]));
        assert_eq!(
            decide_pod(&patient, Some(&n), &added, ts(10), &cfg).action,
            PodAction::Nothing
        );
        assert_eq!(
            decide_pod(&patient, Some(&n), &added, ts(30), &cfg).action,
            PodAction::Evict(TAINT_UNREACHABLE.into())
        );
        let forever = running_pod(
            json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]),
        );
        let plan = decide_pod(&forever, Some(&n), &added, ts(1000), &cfg);
        assert_eq!((plan.action, plan.requeue), (PodAction::Nothing, None));

        // Any other NoExecute taint without a toleration evicts at once.
        let other = node(json!({"metadata": {"name": "n1"}, "spec": {"taints": [
            {"key": "maintenance", "effect": "NoExecute"}]}}));
        assert_eq!(
            decide_pod(&p, Some(&other), &|_| ts(0), ts(0), &cfg).action,
            PodAction::Evict("maintenance".into())
        );
        // Pods that ended, or on a healthy node, stay.
        let healthy = ready_node();
        assert_eq!(
            decide_pod(&p, Some(&healthy), &added, ts(100), &cfg).action,
            PodAction::Nothing
        );
        let mut done = p.clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(
            decide_pod(&done, Some(&n), &added, ts(100), &cfg).action,
            PodAction::Nothing
        );
    }

    #[test]
    fn pods_a_node_cannot_stop_are_force_deleted() {
        let cfg = config();
        let n = unreachable_node(0);
        let mut terminating = running_pod(json!([]));
        terminating.metadata.deletion_timestamp = Some(Time(ts(30)));
        let plan = decide_pod(&terminating, Some(&n), &added, ts(31), &cfg);
        assert_eq!(plan.action, PodAction::Nothing);
        assert_eq!(plan.requeue, Some(Duration::from_millis(5050)));
        assert_eq!(
            decide_pod(&terminating, Some(&n), &added, ts(36), &cfg).action,
            PodAction::ForceDelete(ForceReason::Unreachable)
        );
        // On a live node the node finishes it.
        assert_eq!(
            decide_pod(&terminating, Some(&ready_node()), &added, ts(100), &cfg).action,
            PodAction::Nothing
        );
        // Bound to a node that does not exist: after the quarantine.
        let p = running_pod(json!([]));
        let plan = decide_pod(&p, None, &added, ts(-95), &cfg);
        assert_eq!(plan.action, PodAction::Nothing);
        assert!(plan.requeue.is_some());
        assert_eq!(
            decide_pod(&p, None, &added, ts(0), &cfg).action,
            PodAction::ForceDelete(ForceReason::Orphaned)
        );
        // Unscheduled pods are the scheduler's.
        let pending = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        assert_eq!(
            decide_pod(&pending, None, &added, ts(0), &cfg).action,
            PodAction::Nothing
        );
    }
}
