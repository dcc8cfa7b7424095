//! End-to-end: the scheduler of the real `wharf control` binary placing pods on
//! simulated nodes.
//!
//! A simulated node is what a node agent would register, made through the API: a Node
//! with allocatable and a `Ready=True` condition, and a Lease in `kube-node-lease` that
//! this test renews every second (so the node lifecycle controller keeps it alive). No
//! runtime runs: the tests look at bindings, conditions and Events only.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ControlProcess, TIMEOUT, within};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

const LEASES: &str = "kube-node-lease";

/// Simulated nodes whose Leases stay renewed while this lives.
struct SimNodes {
    client: kube::Client,
    alive: Arc<Mutex<Vec<String>>>,
    renewer: JoinHandle<()>,
}

impl Drop for SimNodes {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

impl SimNodes {
    fn new(client: kube::Client) -> SimNodes {
        let alive: Arc<Mutex<Vec<String>>> = Arc::default();
        let renewer = tokio::spawn({
            let client = client.clone();
            let alive = alive.clone();
            async move {
                let leases: Api<Lease> = Api::namespaced(client, LEASES);
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let names = alive.lock().unwrap().clone();
                    for name in names {
                        let patch =
                            json!({"spec": {"renewTime": MicroTime(jiff::Timestamp::now())}});
                        let _ = leases
                            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await;
                    }
                }
            }
        });
        SimNodes {
            client,
            alive,
            renewer,
        }
    }

    /// Registers a node with `memory` (and 4 CPUs, 110 pods); `extra` is merged into the
    /// Node (labels, taints, ...). `ready: false` makes a node that never reported (its
    /// Ready condition `Unknown`, no Lease).
    async fn add(&self, name: &str, memory: &str, extra: Value, ready: bool) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {}});
        json_patch::merge(&mut node, &extra);
        let node: Node = serde_json::from_value(node).unwrap();
        within(
            "creating a node",
            nodes.create(&PostParams::default(), &node),
        )
        .await
        .unwrap();
        let resources = json!({"cpu": "4", "memory": memory, "pods": "110"});
        let status = if ready { "True" } else { "Unknown" };
        let patch = json!({"status": {"capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": status, "reason": "KubeletReady",
                            "lastHeartbeatTime": now(), "lastTransitionTime": now()}]}});
        within(
            "reporting node status",
            nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
        .unwrap();
        if ready {
            let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASES);
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": LEASES},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now()}}))
            .unwrap();
            within(
                "creating a lease",
                leases.create(&PostParams::default(), &lease),
            )
            .await
            .unwrap();
            self.alive.lock().unwrap().push(name.to_string());
        }
    }
}

fn pod(name: &str, memory: &str, extra: Value) -> Pod {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "app.wasm",
            "resources": {"requests": {"cpu": "100m", "memory": memory}}}]}});
    json_patch::merge(&mut pod, &extra);
    serde_json::from_value(pod).unwrap()
}

async fn create(pods: &Api<Pod>, pod: &Pod) {
    within("creating a pod", pods.create(&PostParams::default(), pod))
        .await
        .unwrap();
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn scheduled_condition(pod: &Pod) -> Option<(String, String, String)> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")?;
    Some((
        c.status.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

/// Waits until the pod is bound; answers its node.
async fn bound(pods: &Api<Pod>, name: &str) -> String {
    let pod = tokio::time::timeout(
        TIMEOUT,
        await_condition(pods.clone(), name, |p: Option<&Pod>| {
            p.and_then(node_of).is_some()
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("pod {name} was not bound within {TIMEOUT:?}"))
    .unwrap()
    .unwrap();
    node_of(&pod).unwrap().to_string()
}

/// Waits until the pod says `PodScheduled=False` with `message`.
async fn unschedulable_with(pods: &Api<Pod>, name: &str, message: &str) {
    let waited = tokio::time::timeout(
        TIMEOUT,
        await_condition(pods.clone(), name, |p: Option<&Pod>| {
            p.and_then(scheduled_condition)
                .is_some_and(|(s, r, m)| s == "False" && r == "Unschedulable" && m == message)
        }),
    )
    .await;
    if waited.is_err() {
        let now = pods.get(name).await.ok();
        panic!(
            "pod {name} never reported {message:?}; it has {:?}",
            now.as_ref().and_then(scheduled_condition)
        );
    }
}

/// Polls (with a deadline) for an Event about `pod` with `reason` and `message`.
async fn event(client: &kube::Client, pod: &str, reason: &str, message: &str) {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let params = ListParams::default().fields(&format!("involvedObject.name={pod}"));
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    while tokio::time::Instant::now() < deadline {
        seen = within("listing events", events.list(&params))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| {
                (
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default(),
                    e.source.and_then(|s| s.component).unwrap_or_default(),
                )
            })
            .collect::<Vec<_>>();
        if seen
            .iter()
            .any(|(r, m, c)| r == reason && m == message && c == "default-scheduler")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {reason} event {message:?} for {pod}; events: {seen:?}");
}

#[tokio::test]
async fn a_pod_that_fits_nowhere_says_why_and_a_node_that_fits_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(dir.path()).await;
    let client = control.client().await;
    let sim = SimNodes::new(client.clone());
    sim.add("small-1", "1Gi", json!({}), true).await;
    sim.add("small-2", "1Gi", json!({}), true).await;
    // A node that went away: the lifecycle controller's taint, never a heartbeat.
    sim.add(
        "gone",
        "64Gi",
        json!({"spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}]}}),
        false,
    )
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    create(&pods, &pod("big", "2Gi", json!({}))).await;
    let message = "0/3 nodes are available: 1 node(s) had untolerated taint \
                   {node.kubernetes.io/unreachable: }, 2 Insufficient memory.";
    unschedulable_with(&pods, "big", message).await;
    event(&client, "big", "FailedScheduling", message).await;
    let p = pods.get("big").await.unwrap();
    assert_eq!(node_of(&p), None);
    assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Pending"));

    // Nobody touches the pod: a node with room appears and the pod lands there.
    sim.add("large", "8Gi", json!({}), true).await;
    assert_eq!(bound(&pods, "big").await, "large");
    let p = pods.get("big").await.unwrap();
    assert_eq!(
        scheduled_condition(&p).map(|(s, _, _)| s).as_deref(),
        Some("True")
    );
    event(
        &client,
        "big",
        "Scheduled",
        "Successfully assigned default/big to large",
    )
    .await;

    // Small pods fill what is left, and never the unreachable node.
    for i in 0..6 {
        create(&pods, &pod(&format!("small-{i}"), "256Mi", json!({}))).await;
    }
    for i in 0..6 {
        assert_ne!(bound(&pods, &format!("small-{i}")).await, "gone");
    }
    control.terminate().await;
}

#[tokio::test]
async fn selectors_taints_tolerations_and_cordons() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(dir.path()).await;
    let client = control.client().await;
    let sim = SimNodes::new(client.clone());
    sim.add(
        "hdd",
        "4Gi",
        json!({"metadata": {"labels": {"disk": "hdd"}}}),
        true,
    )
    .await;
    sim.add(
        "ssd",
        "4Gi",
        json!({"metadata": {"labels": {"disk": "ssd"}}}),
        true,
    )
    .await;
    sim.add(
        "gpu",
        "4Gi",
        json!({"metadata": {"labels": {"disk": "ssd", "gpu": "yes"}},
               "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        true,
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // nodeSelector: of the two ssd nodes only the untainted one is open.
    create(
        &pods,
        &pod(
            "fast",
            "128Mi",
            json!({"spec": {"nodeSelector": {"disk": "ssd"}}}),
        ),
    )
    .await;
    assert_eq!(bound(&pods, "fast").await, "ssd");

    // A toleration plus required node affinity (Exists) reaches the tainted node.
    create(
        &pods,
        &pod(
            "trainer",
            "128Mi",
            json!({"spec": {
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]}}}}}),
        ),
    )
    .await;
    assert_eq!(bound(&pods, "trainer").await, "gpu");

    // Pods without a toleration never land on the tainted node.
    for i in 0..6 {
        create(&pods, &pod(&format!("web-{i}"), "64Mi", json!({}))).await;
    }
    for i in 0..6 {
        assert_ne!(bound(&pods, &format!("web-{i}")).await, "gpu");
    }

    // Cordoned: the ssd node takes nothing new, and says so; uncordoned, it does.
    let nodes: Api<Node> = Api::all(client.clone());
    let cordon = |on: bool| json!({"spec": {"unschedulable": on}});
    nodes
        .patch("ssd", &PatchParams::default(), &Patch::Merge(&cordon(true)))
        .await
        .unwrap();
    // The scheduler decides on its Node cache, as kube-scheduler does: a pod created just
    // after the cordon may be scheduled before the cache has it, and bind to ssd. Such a
    // pod is removed and another one tried; a scheduler that ignored cordons would bind
    // every one and fail at the deadline.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut attempt = 0;
    let fast2 = loop {
        attempt += 1;
        let name = format!("fast-2-{attempt}");
        create(
            &pods,
            &pod(
                &name,
                "128Mi",
                json!({"spec": {"nodeSelector": {"disk": "ssd"}}}),
            ),
        )
        .await;
        let decided = tokio::time::timeout_at(
            deadline,
            await_condition(pods.clone(), &name, |p: Option<&Pod>| {
                p.is_some_and(|p| {
                    node_of(p).is_some()
                        || scheduled_condition(p).is_some_and(|(s, _, _)| s == "False")
                })
            }),
        )
        .await
        .unwrap_or_else(|_| {
            panic!("pod {name}: neither bound nor unschedulable within {TIMEOUT:?}")
        })
        .unwrap()
        .unwrap();
        if node_of(&decided).is_none() {
            break name;
        }
        pods.delete(&name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    };
    unschedulable_with(
        &pods,
        &fast2,
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
         1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable.",
    )
    .await;
    nodes
        .patch(
            "ssd",
            &PatchParams::default(),
            &Patch::Merge(&cordon(false)),
        )
        .await
        .unwrap();
    assert_eq!(bound(&pods, &fast2).await, "ssd");
    control.terminate().await;
}

#[tokio::test]
async fn required_anti_affinity_keeps_one_replica_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(dir.path()).await;
    let client = control.client().await;
    let sim = SimNodes::new(client.clone());
    for n in ["n1", "n2", "n3"] {
        sim.add(n, "4Gi", json!({}), true).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let replica = |name: &str| {
        pod(
            name,
            "64Mi",
            json!({"metadata": {"labels": {"app": "web"}},
                   "spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                       {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}),
        )
    };
    // Created at once: each decision sees the replicas assumed before it.
    for i in 1..=4 {
        create(&pods, &replica(&format!("web-{i}"))).await;
    }
    // Three of the four land, one per node; which three is the scheduler's choice.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let (placed, waiting) = loop {
        let list = within(
            "listing replicas",
            pods.list(&ListParams::default().labels("app=web")),
        )
        .await
        .unwrap();
        let mut placed = Vec::new();
        let mut waiting = Vec::new();
        for p in &list.items {
            let name = p.metadata.name.clone().unwrap();
            match node_of(p) {
                Some(n) => placed.push((name, n.to_string())),
                None => waiting.push(name),
            }
        }
        assert!(placed.len() <= 3, "two replicas share a node: {placed:?}");
        if placed.len() == 3 {
            break (placed, waiting.pop().unwrap());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {placed:?} were placed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut nodes: Vec<&str> = placed.iter().map(|(_, n)| n.as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"], "{placed:?}");
    unschedulable_with(
        &pods,
        &waiting,
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.",
    )
    .await;

    // A replica goes away: the waiting one takes its node, with nobody touching it.
    let (gone, freed) = placed[0].clone();
    within(
        "deleting a replica",
        pods.delete(&gone, &DeleteParams::default().grace_period(0)),
    )
    .await
    .unwrap();
    assert_eq!(bound(&pods, &waiting).await, freed);
    control.terminate().await;
}
