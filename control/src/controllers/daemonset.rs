//! The DaemonSet controller: one pod of each DaemonSet on every node that is eligible for
//! it, following nodes as they join, change and leave.
//!
//! - **Eligibility** ([`node_fit`]) is Kubernetes' `NodeShouldRunDaemonPod`: the
//!   template's `nodeSelector`, its required node affinity terms, and the node's taints
//!   against the pod's tolerations, to which the controller adds what Kubernetes adds to
//!   daemon pods (`not-ready` and `unreachable` NoExecute, the memory/disk/PID pressure
//!   and `unschedulable` NoSchedule taints, all with `Exists`), so a daemon keeps running
//!   on a cordoned or unreachable node. A NoSchedule taint the pod does not tolerate
//!   keeps a new pod off the node but leaves a running one; an untolerated NoExecute taint
//!   removes it.
//! - **Placement without the scheduler.** The controller sets `spec.nodeName` on the pods
//!   it creates, as Kubernetes' DaemonSet controller did before it handed placement to
//!   the scheduler (1.12, ScheduleDaemonSetPods). The eligibility check above is the
//!   scheduler's job done here; what this skips is resource fitting, which a per-node
//!   daemon is expected to pass anyway. It also means daemons run with no scheduler at
//!   all, which the laptop cluster relies on.
//! - **Level-triggered, live reads.** A reconcile is triggered by the DaemonSet, by its
//!   pods (`owns`) and by any Node change; it then lists the nodes and the DaemonSet's
//!   pods *through the API*, not from a watch cache. The in-process API is a memory read
//!   away, and a live list already shows the pods created by the previous reconcile, so
//!   no expectations bookkeeping is needed to avoid creating a pod twice.
//! - **Decide apart from do.** [`decide`] is pure: from the DaemonSet, the nodes and its
//!   pods it returns the pods to create (by node) and delete (with why), and the status.
//!   Per node: none and eligible → create; failed → delete (recreated once gone); more
//!   than one → keep the oldest; not eligible any longer → delete. A node that still has
//!   a terminating pod gets its new pod once the old one is gone, as in Kubernetes.
//! - **Rolling updates.** Pods carry the `controller-revision-hash` label: a hash of the
//!   template (Kubernetes keeps ControllerRevisions; wharf does not serve that kind, so
//!   the hash is the revision). With `updateStrategy: RollingUpdate`, old pods that are
//!   not available go at once, and available old pods are deleted only while fewer than
//!   `maxUnavailable` of the desired nodes are without an available pod; the replacement
//!   is created once the old pod is gone. `maxSurge` is not implemented (Kubernetes'
//!   default, 0, is what runs). `OnDelete` replaces pods only when a user deletes them.
//! - **Status**: desired/current/misscheduled/ready/available/unavailable/updated
//!   numbers and `observedGeneration`, as `kubectl get ds` shows them.
//!
//! Events (`daemonset-controller`): `SuccessfulCreate`, `SuccessfulDelete`,
//! `FailedDaemonPod` and `FailedCreate`.

use super::ControllerConfig;
use super::common::{self, Backoff, Claim, Error};
use super::nodelifecycle::{
    NO_EXECUTE, NO_SCHEDULE, TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE, tolerated,
};
use crate::events::{self, EventType, Recorder};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, PodTemplateSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "daemonset-controller";
/// The label with the template revision of a daemon pod.
pub const HASH_LABEL: &str = "controller-revision-hash";
/// A DaemonSet is looked at again this often even without a change.
const RESYNC: Duration = Duration::from_secs(60);

/// Starts the controller; it stops when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    config: &ControllerConfig,
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
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let daemonsets = controller.store();
    let reconciles = controller
        .owns_shared_stream(pods.subscribe())
        .watches(
            Api::<Node>::all(client),
            watcher::Config::default(),
            move |_node: Node| {
                daemonsets
                    .state()
                    .iter()
                    .map(|ds| ObjectRef::from_obj(&**ds))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            common::metered(config.workqueue.queue("daemonset"), reconcile),
            error_policy,
            ctx,
        )
        .for_each(|outcome| {
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "daemonset controller");
            }
            futures::future::ready(())
        });
    tasks.spawn(super::gc::run_until_shutdown(shutdown, reconciles));
}

// ---------------------------------------------------------------------------------------
// Eligibility

/// Where a daemon pod may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFit {
    /// A new pod goes there.
    pub should_run: bool,
    /// A pod already there may stay.
    pub should_continue: bool,
}

/// The tolerations Kubernetes adds to every daemon pod.
const DAEMON_TOLERATIONS: [(&str, &str); 6] = [
    (TAINT_NOT_READY, NO_EXECUTE),
    (TAINT_UNREACHABLE, NO_EXECUTE),
    ("node.kubernetes.io/disk-pressure", NO_SCHEDULE),
    ("node.kubernetes.io/memory-pressure", NO_SCHEDULE),
    ("node.kubernetes.io/pid-pressure", NO_SCHEDULE),
    (TAINT_UNSCHEDULABLE, NO_SCHEDULE),
];

/// The template's tolerations plus the daemon ones it lacks.
pub fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    for (key, effect) in DAEMON_TOLERATIONS {
        let present = tolerations.iter().any(|t| {
            t.key.as_deref() == Some(key)
                && t.effect.as_deref() == Some(effect)
                && t.operator.as_deref() == Some("Exists")
        });
        if !present {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Default::default()
            });
        }
    }
    tolerations
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let int = |s: &str| s.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => match (value.and_then(int), values.first().and_then(|x| int(x))) {
            (Some(v), Some(bound)) if req.operator == "Gt" => v > bound,
            (Some(v), Some(bound)) => v < bound,
            _ => false,
        },
        _ => false,
    }
}

/// A node selector term: every expression on labels and every field (only
/// `metadata.name`) must match; an empty term matches nothing.
fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    exprs
        .iter()
        .all(|e| requirement_matches(e, labels.and_then(|l| l.get(&e.key)).map(String::as_str)))
        && fields.iter().all(|f| {
            f.key == "metadata.name" && requirement_matches(f, node.metadata.name.as_deref())
        })
}

/// Whether a daemon pod with `spec` (its tolerations already completed by
/// [`daemon_tolerations`]) should run on, or may stay on, `node`.
pub fn node_fit(spec: &PodSpec, node: &Node) -> NodeFit {
    let never = NodeFit {
        should_run: false,
        should_continue: false,
    };
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selected = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let affine = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|required| {
            required
                .node_selector_terms
                .iter()
                .any(|t| term_matches(t, node))
        });
    if !selected || !affine {
        return never;
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let mut fit = NodeFit {
        should_run: true,
        should_continue: true,
    };
    for taint in node.spec.iter().flat_map(|s| s.taints.iter().flatten()) {
        if tolerated(tolerations, taint) {
            continue;
        }
        match taint.effect.as_str() {
            NO_EXECUTE => return never,
            NO_SCHEDULE => fit.should_run = false,
            _ => {}
        }
    }
    fit
}

// ---------------------------------------------------------------------------------------
// Templates and revisions

/// A stable hash of the pod template: the revision a daemon pod was made from. FNV-1a over
/// the template's JSON, so it stays the same across builds and restarts.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:010x}", hash & 0xff_ffff_ffff)
}

/// The pod the DaemonSet runs on `node`.
pub fn pod_for(ds: &DaemonSet, hash: &str, node: &str) -> Pod {
    let template = ds.spec.template.clone();
    let template_meta = template.metadata.unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    let mut spec = template.spec.unwrap_or_default();
    spec.tolerations = Some(daemon_tolerations(&spec));
    spec.node_name = Some(node.to_string());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                ds.metadata.name.as_deref().unwrap_or("daemon")
            )),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template_meta.annotations,
            owner_references: Some(vec![common::controller_ref(
                "DaemonSet",
                "apps/v1",
                &ds.metadata,
            )]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

// ---------------------------------------------------------------------------------------
// Deciding

/// Why a daemon pod is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its container failed: it is replaced once gone.
    Failed,
    /// A second pod on the same node.
    Duplicate,
    /// The node is no longer eligible (selector, affinity, NoExecute taint) or gone.
    NotEligible,
    /// Made from an older template: the rolling update replaces it.
    Outdated,
}

/// A pod to delete: name, uid, node, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doomed {
    pub name: String,
    pub uid: String,
    pub node: String,
    pub why: Why,
}

#[derive(Debug, PartialEq)]
pub struct Plan {
    /// Nodes that get a new pod.
    pub create: Vec<String>,
    pub delete: Vec<Doomed>,
    pub status: DaemonSetStatus,
    /// When a pod becomes available (minReadySeconds), if that is still to come.
    pub requeue: Option<Duration>,
}

fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

fn doomed(pod: &Pod, why: Why) -> Doomed {
    Doomed {
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        node: node_of(pod).to_string(),
        why,
    }
}

fn failed(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

fn max_unavailable(ds: &DaemonSet, desired: i32) -> i32 {
    let value = ds
        .spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.clone());
    let n = match value {
        Some(IntOrString::Int(n)) => n,
        Some(IntOrString::String(s)) => {
            match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
                // Percentages round up, as for DaemonSets in Kubernetes.
                Some(p) => i32::try_from((i64::from(desired) * p + 99) / 100).unwrap_or(i32::MAX),
                None => s.parse().unwrap_or(1),
            }
        }
        None => 1,
    };
    n.max(1)
}

/// Decides what the DaemonSet needs now: `pods` are the ones it controls.
pub fn decide(ds: &DaemonSet, nodes: &[Node], pods: &[Pod], now: Timestamp) -> Plan {
    let spec = ds.spec.clone();
    let hash = template_hash(&spec.template);
    let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
    pod_spec.tolerations = Some(daemon_tolerations(&pod_spec));
    let min_ready = spec.min_ready_seconds.unwrap_or(0);

    let mut by_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    let mut delete = Vec::new();
    for pod in pods {
        let node = node_of(pod);
        let known = nodes
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(node));
        if known {
            by_node.entry(node).or_default().push(pod);
        } else if pod.metadata.deletion_timestamp.is_none() {
            // Placed on a node that left the cluster, or never placed by us.
            delete.push(doomed(pod, Why::NotEligible));
        }
    }

    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut create = Vec::new();
    let mut status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        ..Default::default()
    };
    let (mut ready, mut available, mut updated) = (0, 0, 0);
    let mut requeue: Option<Duration> = None;
    // Per desired node, the pod that stays (after this round's deletions), if any.
    let mut staying: Vec<(&str, Option<&Pod>)> = Vec::new();
    for node in sorted {
        let name = node.metadata.name.as_deref().unwrap_or("");
        let fit = node_fit(&pod_spec, node);
        let here = by_node.get(name).cloned().unwrap_or_default();
        if fit.should_run {
            status.desired_number_scheduled += 1;
        }
        if !here.is_empty() {
            if fit.should_run {
                status.current_number_scheduled += 1;
            } else {
                status.number_misscheduled += 1;
            }
        }
        let mut keep: Option<&Pod> = None;
        if here.is_empty() {
            if fit.should_run {
                create.push(name.to_string());
            }
        } else if fit.should_continue {
            let mut running: Vec<&Pod> = Vec::new();
            for pod in here
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
            {
                if failed(pod) {
                    delete.push(doomed(pod, Why::Failed));
                } else {
                    running.push(pod);
                }
            }
            running.sort_by(|a, b| {
                let at = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
                at(a)
                    .cmp(&at(b))
                    .then(a.metadata.name.cmp(&b.metadata.name))
            });
            for extra in running.iter().skip(1) {
                delete.push(doomed(extra, Why::Duplicate));
            }
            keep = running.first().copied();
        } else {
            for pod in here
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
            {
                delete.push(doomed(pod, Why::NotEligible));
            }
        }
        if !fit.should_run {
            continue;
        }
        if let Some(pod) = keep {
            let labels = pod.metadata.labels.as_ref();
            if labels.and_then(|l| l.get(HASH_LABEL)) == Some(&hash) {
                updated += 1;
            }
            if common::is_pod_ready(pod) {
                ready += 1;
            }
            match common::available_at(pod, min_ready) {
                Some(at) if at < now => available += 1,
                Some(at) => {
                    let wait = Duration::try_from(at.duration_since(now)).unwrap_or_default()
                        + Duration::from_millis(50);
                    requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
                }
                None => {}
            }
        }
        staying.push((name, keep));
    }

    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    if rolling {
        let budget = max_unavailable(ds, status.desired_number_scheduled);
        let mut unavailable = 0;
        let mut candidates = Vec::new();
        for (_, keep) in &staying {
            let Some(pod) = keep else {
                unavailable += 1;
                continue;
            };
            let current =
                pod.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL)) == Some(&hash);
            let is_available = common::is_pod_available(pod, min_ready, now);
            if current {
                if !is_available {
                    unavailable += 1;
                }
            } else if !is_available {
                // Not serving anyway: replacing it costs nothing.
                delete.push(doomed(pod, Why::Outdated));
            } else {
                candidates.push(*pod);
            }
        }
        let room = usize::try_from((budget - unavailable).max(0)).unwrap_or(0);
        for pod in candidates.into_iter().take(room) {
            delete.push(doomed(pod, Why::Outdated));
        }
    }

    status.number_ready = ready;
    status.number_available = Some(available);
    status.number_unavailable = Some(status.desired_number_scheduled - available);
    status.updated_number_scheduled = Some(updated);
    status.collision_count = ds.status.as_ref().and_then(|s| s.collision_count);
    status.conditions = ds.status.as_ref().and_then(|s| s.conditions.clone());
    Plan {
        create,
        delete,
        status,
        requeue,
    }
}

// ---------------------------------------------------------------------------------------
// Doing

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    backoff: Backoff,
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = common::key(&ds.metadata);
    if ds.metadata.deletion_timestamp.is_some() {
        // Its pods are the garbage collector's now.
        return Ok(Action::await_change());
    }
    let ns = ds.metadata.namespace.clone().unwrap_or_default();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let selector = ds.spec.selector.clone();
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(Error::api("listing nodes for daemonset", &key))?
        .items;
    let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let listed = pods_api
        .list(&ListParams::default().labels(&common::selector_string(&selector)))
        .await
        .map_err(Error::api("listing pods of daemonset", &key))?
        .items;
    let owner = common::controller_ref("DaemonSet", "apps/v1", &ds.metadata);
    let mut pods = Vec::new();
    for pod in listed {
        let matches = common::selects(Some(&selector), pod.metadata.labels.as_ref());
        match common::claim(&uid, false, matches, &pod.metadata) {
            Claim::Owned => pods.push(pod),
            Claim::Adopt => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let patch = common::adopt_patch(&pod.metadata, &owner);
                pods_api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(Error::api("adopting pod", format!("{ns}/{name}")))?;
                pods.push(pod);
            }
            Claim::Release | Claim::Ignore => {}
        }
    }

    let plan = decide(&ds, &nodes, &pods, common::now());
    let about = events::reference("DaemonSet", "apps/v1", &ds.metadata);
    let hash = template_hash(&ds.spec.template);
    for node in &plan.create {
        let pod = pod_for(&ds, &hash, node);
        common::create_pod_recorded(&pods_api, &pod, &ctx.recorder, &about)
            .await
            .map_err(Error::api("creating a pod for daemonset", &key))?;
    }
    for pod in &plan.delete {
        if pod.why == Why::Failed {
            ctx.recorder
                .record(
                    &about,
                    EventType::Warning,
                    "FailedDaemonPod",
                    &format!(
                        "Found failed daemon pod {ns}/{} on node {}, will try to kill it",
                        pod.name, pod.node
                    ),
                )
                .await;
        }
        let deleted = common::delete_pod_with_uid(&pods_api, &pod.name, &pod.uid)
            .await
            .map_err(Error::api("deleting a pod of daemonset", &key))?;
        if deleted {
            ctx.recorder
                .record(
                    &about,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {}", pod.name),
                )
                .await;
        }
    }
    common::write_status_if_changed(
        &Api::<DaemonSet>::namespaced(ctx.client.clone(), &ns),
        ds.metadata.name.as_deref().unwrap_or_default(),
        ds.status.as_ref(),
        &plan.status,
    )
    .await
    .map_err(Error::api("writing the status of daemonset", &key))?;
    ctx.backoff.succeeded(&key);
    Ok(Action::requeue(plan.requeue.unwrap_or(RESYNC).min(RESYNC)))
}

fn error_policy(ds: Arc<DaemonSet>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let key = common::key(&ds.metadata);
    if error.code() != Some(409) {
        tracing::warn!(daemonset = %key, %error, "daemonset");
    }
    Action::requeue(ctx.backoff.failed(&key))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn ds(spec_extra: Value) -> DaemonSet {
        let mut spec = json!({
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                         "spec": {"containers": [{"name": "a", "image": "agent.wasm"}]}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
        });
        if let (Some(s), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
            for (k, v) in extra {
                s.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "default", "uid": "ds-uid", "generation": 3},
            "spec": spec,
        }))
        .unwrap()
    }

    fn node(name: &str, extra: Value) -> Node {
        let mut n = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
        if let (Some(m), Some(e)) = (n.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if k == "labels" {
                    m["metadata"]["labels"]
                        .as_object_mut()
                        .unwrap()
                        .extend(v.as_object().unwrap().clone());
                } else {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        serde_json::from_value(n).unwrap()
    }

    fn pod_on(ds: &DaemonSet, name: &str, node: &str, hash: &str, ready: bool, age: i64) -> Pod {
        let mut pod = pod_for(ds, hash, node);
        pod.metadata.name = Some(name.into());
        pod.metadata.uid = Some(format!("uid-{name}"));
        pod.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(-age)),
        );
        pod.status = Some(
            serde_json::from_value(json!({"phase": "Running", "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" },
                 "lastTransitionTime": ts(-age).to_string()}]}))
            .unwrap(),
        );
        pod
    }

    fn current_hash(ds: &DaemonSet) -> String {
        template_hash(&ds.spec.template)
    }

    #[test]
    fn one_pod_per_eligible_node() {
        let d = ds(
            json!({"template": {"metadata": {"labels": {"app": "agent"}},
            "spec": {"nodeSelector": {"tier": "edge"}, "containers": [{"name": "a", "image": "a.wasm"}]}}}),
        );
        let nodes = [
            node("n1", json!({"labels": {"tier": "edge"}})),
            node("n2", json!({"labels": {"tier": "core"}})),
            node("n3", json!({"labels": {"tier": "edge"}})),
        ];
        let plan = decide(&d, &nodes, &[], ts(0));
        assert_eq!(plan.create, ["n1", "n3"]);
        assert!(plan.delete.is_empty());
        assert_eq!(plan.status.desired_number_scheduled, 2);
        assert_eq!(plan.status.current_number_scheduled, 0);
        assert_eq!(plan.status.observed_generation, Some(3));

        // Created and running; a node that stops matching loses its pod; one whose node
        // left the cluster is deleted too.
        let hash = current_hash(&d);
        let pods = [
            pod_on(&d, "a1", "n1", &hash, true, 10),
            pod_on(&d, "a3", "n3", &hash, true, 10),
            pod_on(&d, "a9", "gone", &hash, true, 10),
        ];
        let nodes = [
            node("n1", json!({"labels": {"tier": "edge"}})),
            node("n2", json!({"labels": {"tier": "core"}})),
            node("n3", json!({"labels": {"tier": "core"}})),
        ];
        let plan = decide(&d, &nodes, &pods, ts(0));
        assert!(plan.create.is_empty());
        let deleted: Vec<(&str, Why)> = plan
            .delete
            .iter()
            .map(|p| (p.name.as_str(), p.why))
            .collect();
        assert_eq!(
            deleted,
            [("a9", Why::NotEligible), ("a3", Why::NotEligible)]
        );
        assert_eq!(plan.status.desired_number_scheduled, 1);
        assert_eq!(plan.status.current_number_scheduled, 1);
        assert_eq!(plan.status.number_misscheduled, 1);
        assert_eq!(plan.status.number_ready, 1);
        assert_eq!(plan.status.number_available, Some(1));
        assert_eq!(plan.status.updated_number_scheduled, Some(1));
    }

    #[test]
    fn taints_and_affinity_decide_eligibility() {
        let spec = daemon_tolerations(&PodSpec::default());
        let with = |s: &PodSpec, n: &Node| node_fit(s, n);
        let mut daemon = PodSpec {
            tolerations: Some(spec),
            ..Default::default()
        };
        // Daemon pods stay on unreachable and cordoned nodes.
        let unreachable = node(
            "n1",
            json!({"spec": {"unschedulable": true, "taints": [
            {"key": TAINT_UNREACHABLE, "effect": "NoExecute"},
            {"key": TAINT_UNSCHEDULABLE, "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            with(&daemon, &unreachable),
            NodeFit {
                should_run: true,
                should_continue: true
            }
        );
        // An untolerated NoSchedule keeps new pods away but running ones stay.
        let dedicated = node(
            "n1",
            json!({"spec": {"taints": [{"key": "gpu", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            with(&daemon, &dedicated),
            NodeFit {
                should_run: false,
                should_continue: true
            }
        );
        let evicting = node(
            "n1",
            json!({"spec": {"taints": [{"key": "gpu", "effect": "NoExecute"}]}}),
        );
        assert_eq!(
            with(&daemon, &evicting),
            NodeFit {
                should_run: false,
                should_continue: false
            }
        );
        daemon
            .tolerations
            .as_mut()
            .unwrap()
            .push(serde_json::from_value(json!({"key": "gpu", "operator": "Exists"})).unwrap());
        assert!(with(&daemon, &evicting).should_run);

        // Required node affinity: terms are ORed, expressions ANDed, fields by name.
        daemon.affinity = Some(serde_json::from_value(json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]},
                                      {"key": "cores", "operator": "Gt", "values": ["2"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["special"]}]}]}}})).unwrap());
        assert!(
            with(
                &daemon,
                &node("x", json!({"labels": {"zone": "a", "cores": "4"}}))
            )
            .should_run
        );
        assert!(
            !with(
                &daemon,
                &node("x", json!({"labels": {"zone": "a", "cores": "2"}}))
            )
            .should_run
        );
        assert!(
            !with(
                &daemon,
                &node("x", json!({"labels": {"zone": "c", "cores": "8"}}))
            )
            .should_run
        );
        assert!(with(&daemon, &node("special", json!({}))).should_run);
    }

    #[test]
    fn pods_carry_node_tolerations_owner_and_revision() {
        let d = ds(json!({}));
        let pod = pod_for(&d, "abc", "n2");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n2"));
        assert!(
            spec.tolerations
                .unwrap()
                .iter()
                .any(|t| t.key.as_deref() == Some(TAINT_UNREACHABLE)
                    && t.effect.as_deref() == Some("NoExecute")
                    && t.toleration_seconds.is_none())
        );
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels.get("app").map(String::as_str), Some("agent"));
        assert_eq!(labels.get(HASH_LABEL).map(String::as_str), Some("abc"));
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("DaemonSet", "ds-uid", Some(true))
        );
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("agent-"));
        // The revision follows the template, and only the template.
        let mut changed = d.clone();
        assert_eq!(current_hash(&changed), current_hash(&d));
        changed.spec.template.spec.as_mut().unwrap().containers[0].image = Some("v2.wasm".into());
        assert_ne!(current_hash(&changed), current_hash(&d));
    }

    #[test]
    fn failed_duplicate_and_terminating_pods() {
        let d = ds(json!({}));
        let hash = current_hash(&d);
        let nodes = [
            node("n1", json!({})),
            node("n2", json!({})),
            node("n3", json!({})),
        ];
        let mut failed_pod = pod_on(&d, "f", "n1", &hash, false, 5);
        failed_pod.status.as_mut().unwrap().phase = Some("Failed".into());
        let mut terminating = pod_on(&d, "t", "n3", &hash, true, 5);
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(0)));
        let pods = [
            failed_pod,
            pod_on(&d, "old", "n2", &hash, true, 50),
            pod_on(&d, "new", "n2", &hash, true, 5),
            terminating,
        ];
        let plan = decide(&d, &nodes, &pods, ts(0));
        let deleted: Vec<(&str, Why)> = plan
            .delete
            .iter()
            .map(|p| (p.name.as_str(), p.why))
            .collect();
        assert_eq!(deleted, [("f", Why::Failed), ("new", Why::Duplicate)]);
        // n3's pod is still terminating: its replacement waits for it to be gone.
        assert!(plan.create.is_empty());
        assert_eq!(plan.status.current_number_scheduled, 3);
    }

    #[test]
    fn rolling_update_respects_max_unavailable() {
        let d = ds(json!({}));
        let hash = current_hash(&d);
        let nodes = [
            node("n1", json!({})),
            node("n2", json!({})),
            node("n3", json!({})),
        ];
        let old = |name: &str, node: &str| pod_on(&d, name, node, "old-rev", true, 100);
        // All old and available: one at a time.
        let pods = [old("a", "n1"), old("b", "n2"), old("c", "n3")];
        let plan = decide(&d, &nodes, &pods, ts(0));
        let deleted: Vec<(&str, Why)> = plan
            .delete
            .iter()
            .map(|p| (p.name.as_str(), p.why))
            .collect();
        assert_eq!(deleted, [("a", Why::Outdated)]);
        assert_eq!(plan.status.updated_number_scheduled, Some(0));

        // n1 is being replaced (no pod yet): the budget is spent, nothing more goes.
        let plan = decide(&d, &nodes, &pods[1..], ts(0));
        assert_eq!(plan.create, ["n1"]);
        assert!(plan.delete.is_empty());
        // The new pod is not ready yet: still spent.
        let fresh = pod_on(&d, "a2", "n1", &hash, false, 1);
        let pods2 = [fresh, old("b", "n2"), old("c", "n3")];
        assert!(decide(&d, &nodes, &pods2, ts(0)).delete.is_empty());
        // Ready: the next one goes; an old pod that is not available goes at once anyway.
        let mut broken = old("c", "n3");
        broken.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        let pods3 = [
            pod_on(&d, "a2", "n1", &hash, true, 1),
            old("b", "n2"),
            broken,
        ];
        let plan = decide(&d, &nodes, &pods3, ts(0));
        let deleted: Vec<&str> = plan.delete.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(deleted, ["c", "b"]);
        assert_eq!(plan.status.updated_number_scheduled, Some(1));

        // A percentage rounds up; OnDelete replaces nothing.
        let pct = ds(
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "50%"}}}),
        );
        assert_eq!(max_unavailable(&pct, 3), 2);
        let on_delete = ds(json!({"updateStrategy": {"type": "OnDelete"}}));
        assert!(decide(&on_delete, &nodes, &pods, ts(0)).delete.is_empty());
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let d = ds(json!({"minReadySeconds": 30}));
        let hash = current_hash(&d);
        let nodes = [node("n1", json!({}))];
        let pods = [pod_on(&d, "a", "n1", &hash, true, 10)];
        let plan = decide(&d, &nodes, &pods, ts(0));
        assert_eq!(plan.status.number_ready, 1);
        assert_eq!(plan.status.number_available, Some(0));
        assert_eq!(plan.status.number_unavailable, Some(1));
        assert_eq!(plan.requeue, Some(Duration::from_millis(20_050)));
    }
}
