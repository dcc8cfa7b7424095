//! End-to-end: the lifecycle controllers with the real binary. Most tests run `wharf
//! control` alone and simulate nodes through the API (a Node with a Ready condition and a
//! Lease in `kube-node-lease` that the test renews, as a node agent would), so they need
//! no guests and no scheduler: DaemonSets, Jobs, node failure and eviction, cascading
//! deletion in all three propagation policies, namespace deletion, cordon and drain.
//! Two tests use real nodes and the sample guests: one kills a `wharf node` process and
//! watches its pods move, one runs a Job of batch-p1 pods to completion on `wharf up`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ControlProcess, Output, wharf};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::future::Future;
use std::time::Duration;

/// How long a controller may take to act on a change.
const SETTLE: Duration = Duration::from_secs(30);

/// Polls `check` until it answers `Some`, for at most `timeout`; panics with `what` and
/// the last answer's description otherwise.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let why = match check().await {
            Ok(v) => return v,
            Err(why) => why,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {timeout:?}; last: {why}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn from<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

async fn create<T>(api: &Api<T>, v: Value) -> T
where
    T: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &from::<T>(v))
        .await
        .unwrap()
}

/// A node that exists only as API objects: its Node (Ready) and a Lease that a task
/// renews every second until the node "dies" (the handle is dropped or `stop` is called).
struct SimNode {
    name: String,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl SimNode {
    async fn join(client: &kube::Client, name: &str) -> SimNode {
        let nodes: Api<Node> = Api::all(client.clone());
        create(
            &nodes,
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}),
        )
        .await;
        let now = Timestamp::now().to_string();
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady",
                     "message": "simulated", "lastHeartbeatTime": now, "lastTransitionTime": now}]}})),
            )
            .await
            .unwrap();
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
        create(
            &leases,
            json!({"metadata": {"name": name}, "spec": {"holderIdentity": name,
                "leaseDurationSeconds": 40, "renewTime": MicroTime(Timestamp::now())}}),
        )
        .await;
        let mut node = SimNode {
            name: name.to_string(),
            renewer: None,
        };
        node.start_renewing(client);
        node
    }

    fn start_renewing(&mut self, client: &kube::Client) {
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
        let name = self.name.clone();
        self.renewer = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let patch = json!({"spec": {"renewTime": MicroTime(Timestamp::now())}});
                let _ = leases
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
        }));
    }

    /// The node stops renewing its lease: it has died.
    fn stop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn node_name(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn pod_manifest(name: &str, node: Option<&str>) -> Value {
    json!({"metadata": {"name": name},
           "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "app", "image": "app.wasm"}]}})
}

async fn events_about(client: &kube::Client, ns: &str, name: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
}

fn has_event(events: &[Event], reason: &str) -> bool {
    events.iter().any(|e| e.reason.as_deref() == Some(reason))
}

/// Waits for an Event with `reason` about object `name` (events are recorded after the
/// change they report).
async fn wait_event(client: &kube::Client, ns: &str, name: &str, reason: &str) {
    eventually(
        &format!("a {reason} Event about {name}"),
        SETTLE,
        || async {
            let events = events_about(client, ns, name).await;
            has_event(&events, reason)
                .then_some(())
                .ok_or(format!("{events:?}"))
        },
    )
    .await;
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\nstdout: {}\nstderr: {}",
        out.stdout_text(),
        out.stderr_text()
    );
}

#[tokio::test]
async fn daemonset_runs_one_pod_per_node_and_follows_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(dir.path()).await;
    let client = cp.client().await;
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        nodes.push(SimNode::join(&client, name).await);
    }
    let dss: Api<DaemonSet> = Api::default_namespaced(client.clone());
    create(
        &dss,
        json!({"metadata": {"name": "agent"}, "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                         "spec": {"containers": [{"name": "agent", "image": "agent.wasm"}]}}}}),
    )
    .await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let by_node = |want: &'static [&'static str]| {
        let pods = pods.clone();
        move || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels("app=agent"))
                    .await
                    .map_err(|e| e.to_string())?;
                let mut placed: Vec<String> = list
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .map(node_name)
                    .collect();
                placed.sort();
                if placed == want {
                    Ok(list.items)
                } else {
                    Err(format!("pods on {placed:?}"))
                }
            }
        }
    };
    let placed = eventually("one pod per node", SETTLE, by_node(&["n1", "n2", "n3"])).await;
    let pod = &placed[0];
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("DaemonSet", Some(true))
    );
    assert!(
        pod.metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key("controller-revision-hash")
    );
    let tolerations = pod.spec.as_ref().unwrap().tolerations.clone().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable"))
    );
    eventually("the DaemonSet's status", SETTLE, || async {
        let ds = dss.get("agent").await.map_err(|e| e.to_string())?;
        let s = ds.status.unwrap_or_default();
        if s.desired_number_scheduled == 3
            && s.current_number_scheduled == 3
            && s.updated_number_scheduled == Some(3)
            && s.observed_generation == ds.metadata.generation
        {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;

    // A node joins: it gets its pod.
    nodes.push(SimNode::join(&client, "n4").await);
    eventually(
        "a pod on the new node",
        SETTLE,
        by_node(&["n1", "n2", "n3", "n4"]),
    )
    .await;

    // A node leaves: its pod is deleted, and the status follows.
    let node_api: Api<Node> = Api::all(client.clone());
    node_api
        .delete("n2", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "no live pod on the departed node",
        SETTLE,
        by_node(&["n1", "n3", "n4"]),
    )
    .await;
    eventually("the status without the departed node", SETTLE, || async {
        let s = dss
            .get("agent")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        (s.desired_number_scheduled == 3 && s.current_number_scheduled == 3)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    wait_event(&client, "default", "agent", "SuccessfulCreate").await;
    let out = wharf(&cp.kubeconfig(), &["get", "ds"]).await;
    assert_ok(&out, "wharf get ds");
    assert!(out.stdout_text().contains("agent"), "{}", out.stdout_text());
}

#[tokio::test]
async fn job_runs_parallel_pods_to_completion_and_fails_past_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(dir.path()).await;
    let client = cp.client().await;
    let jobs: Api<Job> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let job = create(
        &jobs,
        json!({"metadata": {"name": "pi"}, "spec": {"parallelism": 3, "completions": 5,
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "pi", "image": "pi.wasm"}]}}}}),
    )
    .await;
    let uid = job.metadata.uid.clone().unwrap();
    let selector = format!("batch.kubernetes.io/controller-uid={uid}");
    let live = |pods: Api<Pod>, selector: String| async move {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(list.items)
    };
    // Nothing runs these pods: the test finishes them as a node would, through the status.
    let succeed = |name: String| {
        let pods = pods.clone();
        async move {
            pods.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
            )
            .await
            .unwrap();
        }
    };
    let mut finished = 0;
    while finished < 5 {
        let running = eventually("the job's running pods", SETTLE, || async {
            let items = live(pods.clone(), selector.clone()).await?;
            let running: Vec<Pod> = items
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Succeeded"))
                .collect();
            let want = 3.min(5 - finished);
            if running.len() > 3 {
                panic!("more than parallelism pods: {}", running.len());
            }
            let n = running.len();
            (n == want)
                .then_some(running)
                .ok_or(format!("{n} running, want {want}"))
        })
        .await;
        let pod = &running[0];
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get("job-name").map(String::as_str), Some("pi"));
        assert_eq!(
            pod.metadata.owner_references.as_ref().unwrap()[0].kind,
            "Job"
        );
        // Two at a time, so parallelism is checked while pods finish.
        for p in running.iter().take(2) {
            succeed(p.metadata.name.clone().unwrap()).await;
            finished += 1;
        }
    }
    let done = eventually("the job completes", SETTLE, || async {
        let j = jobs.get("pi").await.map_err(|e| e.to_string())?;
        let s = j.status.clone().unwrap_or_default();
        let complete = s
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Complete" && c.status == "True");
        complete.then_some(s).ok_or(format!("{:?}", j.status))
    })
    .await;
    assert_eq!(done.succeeded, Some(5));
    assert_eq!(done.active, Some(0));
    assert!(done.completion_time.is_some() && done.start_time.is_some());
    assert!(
        done.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "SuccessCriteriaMet")
    );
    assert_eq!(live(pods.clone(), selector.clone()).await.unwrap().len(), 5);
    wait_event(&client, "default", "pi", "SuccessfulCreate").await;
    wait_event(&client, "default", "pi", "Completed").await;
    // `wharf get events`: kubectl's columns, oldest first (Completed comes last).
    let out = wharf(&cp.kubeconfig(), &["get", "events"]).await;
    assert_ok(&out, "wharf get events");
    let text = out.stdout_text();
    let header = text.lines().next().unwrap();
    for col in ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"] {
        assert!(header.contains(col), "{text}");
    }
    assert!(text.contains("job/pi"), "{text}");
    let job_lines: Vec<&str> = text.lines().filter(|l| l.contains("job/pi")).collect();
    assert!(job_lines.last().unwrap().contains("Completed"), "{text}");

    // backoffLimit 0: the first failed pod fails the Job.
    create(
        &jobs,
        json!({"metadata": {"name": "fragile"}, "spec": {"backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "c.wasm"}]}}}}),
    )
    .await;
    let pod = eventually("the fragile job's pod", SETTLE, || async {
        let list = pods
            .list(&ListParams::default().labels("job-name=fragile"))
            .await
            .map_err(|e| e.to_string())?;
        list.items.into_iter().next().ok_or("no pod".to_string())
    })
    .await;
    pods.patch_status(
        pod.metadata.name.as_deref().unwrap(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Failed"}})),
    )
    .await
    .unwrap();
    let failed_reason = |name: &'static str| {
        let jobs = jobs.clone();
        move || {
            let jobs = jobs.clone();
            async move {
                let j = jobs.get(name).await.map_err(|e| e.to_string())?;
                j.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Failed" && c.status == "True"))
                    .and_then(|c| c.reason.clone())
                    .ok_or(format!("{:?}", j.status))
            }
        }
    };
    let reason = eventually("the fragile job fails", SETTLE, failed_reason("fragile")).await;
    assert_eq!(reason, "BackoffLimitExceeded");
    wait_event(&client, "default", "fragile", "BackoffLimitExceeded").await;

    // activeDeadlineSeconds: the job fails DeadlineExceeded and its pods go.
    create(
        &jobs,
        json!({"metadata": {"name": "slow"}, "spec": {"activeDeadlineSeconds": 2, "parallelism": 2, "completions": 2,
            "template": {"spec": {"restartPolicy": "OnFailure",
                "containers": [{"name": "c", "image": "c.wasm"}]}}}}),
    )
    .await;
    let reason = eventually("the slow job fails", SETTLE, failed_reason("slow")).await;
    assert_eq!(reason, "DeadlineExceeded");
    let left = pods
        .list(&ListParams::default().labels("job-name=slow"))
        .await
        .unwrap();
    assert!(left.items.is_empty(), "{:?}", left.items);
}

#[tokio::test]
async fn an_unreachable_node_is_tainted_and_its_pods_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(dir.path()).await;
    let client = cp.client().await;
    let mut node = SimNode::join(&client, "sim").await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    create(&pods, pod_manifest("doomed", Some("sim"))).await;
    let mut patient = pod_manifest("patient", Some("sim"));
    patient["spec"]["tolerations"] = json!([{"key": "node.kubernetes.io/unreachable",
        "operator": "Exists", "effect": "NoExecute"}]);
    create(&pods, patient).await;
    let nodes: Api<Node> = Api::all(client.clone());

    // The node dies: no more lease renewals.
    node.stop();
    let died = tokio::time::Instant::now();
    let sim = eventually("the node turns Unknown and tainted", SETTLE, || async {
        let n = nodes.get("sim").await.map_err(|e| e.to_string())?;
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .cloned();
        let tainted = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| {
                t.iter()
                    .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
            });
        match ready {
            Some(r) if r.status == "Unknown" && tainted => Ok(r),
            other => Err(format!("ready {other:?}, tainted {tainted}")),
        }
    })
    .await;
    assert!(
        died.elapsed() >= Duration::from_secs(5),
        "{:?}",
        died.elapsed()
    );
    assert_eq!(sim.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        sim.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    let out = wharf(&cp.kubeconfig(), &["get", "nodes"]).await;
    assert_ok(&out, "wharf get nodes");
    assert!(
        out.stdout_text()
            .lines()
            .any(|l| l.starts_with("sim ") && l.contains("NotReady")),
        "{}",
        out.stdout_text()
    );

    // The pod without a toleration is evicted after pod_eviction_timeout, with an Event,
    // and, as its node cannot confirm, force-deleted after its grace period and a margin.
    eventually("the pod is evicted", SETTLE, || async {
        let p = pods.get_opt("doomed").await.map_err(|e| e.to_string())?;
        match p {
            None => Ok(()),
            Some(p) if p.metadata.deletion_timestamp.is_some() => Ok(()),
            Some(_) => Err("not marked".into()),
        }
    })
    .await;
    wait_event(&client, "default", "doomed", "TaintManagerEviction").await;
    eventually("the evicted pod is removed", SETTLE, || async {
        match pods.get_opt("doomed").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(p) => Err(format!("{:?}", p.metadata.deletion_timestamp)),
        }
    })
    .await;
    // The pod that tolerates the taint stays.
    let kept = pods.get("patient").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none());

    // The node comes back: the taints go.
    node.start_renewing(&client);
    eventually("the taints are removed", SETTLE, || async {
        let n = nodes.get("sim").await.map_err(|e| e.to_string())?;
        let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
        taints
            .iter()
            .all(|t| t.key != "node.kubernetes.io/unreachable")
            .then_some(())
            .ok_or(format!("{taints:?}"))
    })
    .await;
}

/// An owner (a ConfigMap: the collector is generic over kinds) with three dependents of
/// three kinds, one of which owns a pod in turn.
async fn owner_with_dependents(client: &kube::Client, name: &str) -> (ConfigMap, Vec<String>) {
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let owner = create(&cms, json!({"metadata": {"name": name}})).await;
    let owner_ref = |o: &ConfigMap, block: bool| {
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": o.metadata.name,
                "uid": o.metadata.uid, "blockOwnerDeletion": block}])
    };
    let child = create(
        &cms,
        json!({"metadata": {"name": format!("{name}-child"), "ownerReferences": owner_ref(&owner, true)}}),
    )
    .await;
    create(
        &secrets,
        json!({"metadata": {"name": format!("{name}-secret"), "ownerReferences": owner_ref(&owner, false)}}),
    )
    .await;
    let mut pod = pod_manifest(&format!("{name}-pod"), None);
    pod["metadata"]["ownerReferences"] = owner_ref(&owner, true);
    create(&pods, pod).await;
    let mut grandchild = pod_manifest(&format!("{name}-grandchild"), None);
    grandchild["metadata"]["ownerReferences"] = owner_ref(&child, true);
    create(&pods, grandchild).await;
    let names = ["child", "secret", "pod", "grandchild"]
        .iter()
        .map(|s| format!("{name}-{s}"))
        .collect();
    (owner, names)
}

/// Which of `names` (dependents of several kinds) still exist.
async fn existing(client: &kube::Client, names: &[String]) -> Vec<String> {
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let mut out = Vec::new();
    for n in names {
        let found = if n.ends_with("-child") {
            cms.get_opt(n).await.unwrap().is_some()
        } else if n.ends_with("-secret") {
            secrets.get_opt(n).await.unwrap().is_some()
        } else {
            pods.get_opt(n).await.unwrap().is_some()
        };
        if found {
            out.push(n.clone());
        }
    }
    out
}

#[tokio::test]
async fn cascading_deletion_in_all_three_policies() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(dir.path()).await;
    let client = cp.client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());

    // Background (the default): the owner goes at once, the dependents after it.
    let (_, names) = owner_with_dependents(&client, "bg").await;
    let out = wharf(&cp.kubeconfig(), &["delete", "configmap", "bg"]).await;
    assert_ok(&out, "wharf delete configmap bg");
    assert!(cms.get_opt("bg").await.unwrap().is_none());
    eventually("background: dependents gone", SETTLE, || async {
        let left = existing(&client, &names).await;
        left.is_empty().then_some(()).ok_or(format!("{left:?}"))
    })
    .await;

    // Foreground: the owner stays (foregroundDeletion) until its blocking dependents are
    // gone; a dependent held by its own finalizer holds the owner too.
    let (_, names) = owner_with_dependents(&client, "fg").await;
    cms.patch(
        "fg-child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
    )
    .await
    .unwrap();
    let marked = cms
        .delete("fg", &DeleteParams::foreground())
        .await
        .unwrap()
        .left()
        .expect("the owner is kept while its dependents go");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(
        marked.metadata.finalizers,
        Some(vec!["foregroundDeletion".to_string()])
    );
    eventually("foreground: the other dependents gone", SETTLE, || async {
        let left = existing(&client, &names).await;
        (left == ["fg-child"])
            .then_some(())
            .ok_or(format!("{left:?}"))
    })
    .await;
    assert!(
        cms.get_opt("fg").await.unwrap().is_some(),
        "held by fg-child"
    );
    cms.patch(
        "fg-child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("foreground: the owner goes last", SETTLE, || async {
        match cms.get_opt("fg").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(o) => Err(format!("{:?}", o.metadata.finalizers)),
        }
    })
    .await;
    assert!(existing(&client, &names).await.is_empty());

    // Orphan: the owner goes, the dependents stay without their reference to it.
    let (owner, names) = owner_with_dependents(&client, "or").await;
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..Default::default()
    };
    cms.delete("or", &params).await.unwrap();
    eventually("orphan: the owner goes", SETTLE, || async {
        match cms.get_opt("or").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(o) => Err(format!("{:?}", o.metadata.finalizers)),
        }
    })
    .await;
    let child = cms.get("or-child").await.unwrap();
    assert!(child.metadata.owner_references.is_none_or(|r| r.is_empty()));
    assert_eq!(existing(&client, &names).await, names);
    // The grandchild still belongs to the (orphaned, still existing) child.
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let grandchild = pods.get("or-grandchild").await.unwrap();
    assert_eq!(grandchild.metadata.owner_references.unwrap().len(), 1);
    let _ = owner;
}

#[tokio::test]
async fn deleting_a_namespace_deletes_everything_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(dir.path()).await;
    let client = cp.client().await;
    let _node = SimNode::join(&client, "sim").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = create(&namespaces, json!({"metadata": {"name": "doomed"}})).await;
    assert_eq!(
        ns.spec.and_then(|s| s.finalizers),
        Some(vec!["kubernetes".to_string()])
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "doomed");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "doomed");
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), "doomed");
    create(&cms, json!({"metadata": {"name": "settings"}})).await;
    create(&secrets, json!({"metadata": {"name": "token"}})).await;
    create(&pods, pod_manifest("loose", None)).await;
    create(&pods, pod_manifest("bound", Some("sim"))).await;
    create(
        &dss,
        json!({"metadata": {"name": "agent"}, "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                         "spec": {"containers": [{"name": "agent", "image": "agent.wasm"}]}}}}),
    )
    .await;

    let out = wharf(&cp.kubeconfig(), &["delete", "namespace", "doomed"]).await;
    assert_ok(&out, "wharf delete namespace doomed");
    let marked = namespaces.get("doomed").await.unwrap();
    assert_eq!(
        marked.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    match cms
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "late"}})),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403),
        other => panic!("created in a terminating namespace: {other:?}"),
    }
    // The pods bound to the (simulated) node are stopped by it: the test confirms each
    // one once it is marked, as a node agent does, until the namespace is gone.
    eventually("the namespace is gone", SETTLE, || async {
        for p in pods
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
        {
            if p.metadata.deletion_timestamp.is_some() {
                let _ = pods
                    .delete(
                        p.metadata.name.as_deref().unwrap(),
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..Default::default()
                        },
                    )
                    .await;
            }
        }
        match namespaces
            .get_opt("doomed")
            .await
            .map_err(|e| e.to_string())?
        {
            None => Ok(()),
            Some(ns) => Err(format!("{:?}", ns.status)),
        }
    })
    .await;
    for (what, n) in [
        (
            "configmaps",
            cms.list(&ListParams::default()).await.unwrap().items.len(),
        ),
        (
            "secrets",
            secrets
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
        ),
        (
            "pods",
            pods.list(&ListParams::default()).await.unwrap().items.len(),
        ),
        (
            "daemonsets",
            dss.list(&ListParams::default()).await.unwrap().items.len(),
        ),
    ] {
        assert_eq!(n, 0, "{what} left in the deleted namespace");
    }
    // The name can be used again.
    create(&namespaces, json!({"metadata": {"name": "doomed"}})).await;
}

#[tokio::test]
async fn cordon_uncordon_and_drain() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(dir.path()).await;
    let kc = cp.kubeconfig();
    let client = cp.client().await;
    let _n1 = SimNode::join(&client, "n1").await;
    let _n2 = SimNode::join(&client, "n2").await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());

    let out = wharf(&kc, &["cordon", "n1"]).await;
    assert_ok(&out, "wharf cordon");
    assert_eq!(out.stdout_text(), "node/n1 cordoned\n");
    let out = wharf(&kc, &["cordon", "n1"]).await;
    assert_eq!(out.stdout_text(), "node/n1 already cordoned\n");
    assert_eq!(
        nodes.get("n1").await.unwrap().spec.unwrap().unschedulable,
        Some(true)
    );
    eventually("the unschedulable taint", SETTLE, || async {
        let n = nodes.get("n1").await.map_err(|e| e.to_string())?;
        let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
        taints
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unschedulable" && t.effect == "NoSchedule")
            .then_some(())
            .ok_or(format!("{taints:?}"))
    })
    .await;
    let out = wharf(&kc, &["get", "nodes"]).await;
    assert!(
        out.stdout_text().contains("SchedulingDisabled"),
        "{}",
        out.stdout_text()
    );
    let out = wharf(&kc, &["uncordon", "n1"]).await;
    assert_ok(&out, "wharf uncordon");
    assert_eq!(out.stdout_text(), "node/n1 uncordoned\n");

    // On n1: a pod with a controller, one without, and a DaemonSet's.
    let keeper = create(&cms, json!({"metadata": {"name": "keeper"}})).await;
    let mut managed = pod_manifest("managed", Some("n1"));
    managed["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap",
        "name": "keeper", "uid": keeper.metadata.uid, "controller": true}]);
    create(&pods, managed).await;
    create(&pods, pod_manifest("loner", Some("n1"))).await;
    create(&pods, pod_manifest("elsewhere", Some("n2"))).await;
    let dss: Api<DaemonSet> = Api::default_namespaced(client.clone());
    create(
        &dss,
        json!({"metadata": {"name": "agent"}, "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                         "spec": {"containers": [{"name": "agent", "image": "agent.wasm"}]}}}}),
    )
    .await;
    let daemon = eventually("a daemon pod on n1", SETTLE, || async {
        let list = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|p| node_name(p) == "n1")
            .ok_or("none".to_string())
    })
    .await;

    // Without flags, drain refuses the DaemonSet's pod and the unmanaged one, as kubectl.
    let out = wharf(&kc, &["drain", "n1", "--timeout", "20s"]).await;
    assert!(!out.status.success());
    let err = out.stderr_text();
    assert!(
        err.contains(
            "cannot delete Pods that declare no controller (use --force to override): default/loner"
        ),
        "{err}"
    );
    assert!(
        err.contains("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)"),
        "{err}"
    );
    assert!(
        out.stdout_text().contains("node/n1 cordoned"),
        "{}",
        out.stdout_text()
    );

    let out = wharf(
        &kc,
        &[
            "drain",
            "n1",
            "--ignore-daemonsets",
            "--force",
            "--grace-period",
            "0",
            "--timeout",
            "30s",
        ],
    )
    .await;
    assert_ok(&out, "wharf drain");
    let text = out.stdout_text();
    for line in [
        "node/n1 already cordoned",
        "evicting pod default/managed",
        "evicting pod default/loner",
        "pod/managed evicted",
        "pod/loner evicted",
        "node/n1 drained",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
    assert!(
        out.stderr_text()
            .contains("Warning: ignoring DaemonSet-managed Pods"),
        "{}",
        out.stderr_text()
    );
    assert!(pods.get_opt("managed").await.unwrap().is_none());
    assert!(pods.get_opt("loner").await.unwrap().is_none());
    assert!(pods.get_opt("elsewhere").await.unwrap().is_some());
    let still = pods
        .get(daemon.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert!(still.metadata.deletion_timestamp.is_none());
    let out = wharf(&kc, &["uncordon", "n1"]).await;
    assert_eq!(out.stdout_text(), "node/n1 uncordoned\n");
}

/// Kubernetes' acceptance for node failure: two real `wharf node` processes, a
/// Deployment's pods on both; SIGKILL one node and its pods run on the other within 15 s
/// while it shows NotReady. Needs the scheduler and the Deployment and ReplicaSet
/// controllers, and the sample guests.
#[tokio::test]
async fn killing_a_node_moves_its_pods_to_the_other_node() {
    common::build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(&dir.path().join("control")).await;
    let client = cp.client().await;
    let mut processes = Vec::new();
    for name in ["node-a", "node-b"] {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .args([
                "node",
                "--name",
                name,
                "--port",
                "0",
                "--dns-listen",
                "off",
                "--data-dir",
            ])
            .arg(dir.path().join(name))
            .arg("--image-dir")
            .arg(common::samples_dir())
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        processes.push(child);
    }
    let nodes: Api<Node> = Api::all(client.clone());
    eventually("both nodes Ready", Duration::from_secs(60), || async {
        let list = nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let ready = list
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        (ready == 2).then_some(()).ok_or(format!("{ready} ready"))
    })
    .await;
    let image = common::sample("ticker", "ticker");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::default_namespaced(client.clone());
    create(
        &deployments,
        json!({"metadata": {"name": "tick"}, "spec": {"replicas": 4,
            "selector": {"matchLabels": {"app": "tick"}},
            "template": {"metadata": {"labels": {"app": "tick"}},
                "spec": {"terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "tick", "image": image}]}}}}),
    )
    .await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let running_on = |pods: Api<Pod>| async move {
        let list = pods
            .list(&ListParams::default().labels("app=tick"))
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(
            list.items
                .iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                })
                .map(node_name)
                .collect::<Vec<_>>(),
        )
    };
    let placed = eventually("four pods running", Duration::from_secs(90), || async {
        let on = running_on(pods.clone()).await?;
        (on.len() == 4)
            .then_some(on.clone())
            .ok_or(format!("{on:?}"))
    })
    .await;
    // Kill a node that runs pods.
    let victim = placed[0].clone();
    let index = if victim == "node-a" { 0 } else { 1 };
    processes[index].start_kill().unwrap();
    processes[index].wait().await.unwrap();
    let killed = tokio::time::Instant::now();
    eventually(
        "the pods run on the other node",
        Duration::from_secs(15),
        || async {
            let on = running_on(pods.clone()).await?;
            (on.len() == 4 && on.iter().all(|n| *n != victim))
                .then_some(())
                .ok_or(format!("{on:?}"))
        },
    )
    .await;
    let moved = killed.elapsed();
    let n = nodes.get(&victim).await.unwrap();
    let ready = n
        .status
        .and_then(|s| s.conditions)
        .and_then(|c| c.into_iter().find(|c| c.type_ == "Ready"))
        .unwrap();
    assert_eq!(ready.status, "Unknown");
    let out = wharf(&cp.kubeconfig(), &["get", "nodes"]).await;
    assert!(
        out.stdout_text()
            .lines()
            .any(|l| l.starts_with(&victim) && l.contains("NotReady")),
        "{}",
        out.stdout_text()
    );
    eprintln!("pods moved off the killed node in {moved:?}");
    let _ = futures::stream::iter(processes).map(drop).count().await;
}

/// A Job of real pods: the batch-p1 guest (a WASI preview1 command) on a `wharf up` node,
/// three completions three at a time.
#[tokio::test]
async fn a_job_of_real_pods_runs_to_completion_on_a_node() {
    common::build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::Cluster::up(dir.path(), 1).await;
    let manifest = format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: primes
spec:
  completions: 3
  parallelism: 3
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: primes
          image: {image}
          args: ["1000"]
"#,
        image = common::sample("batch-p1", "batch_p1")
    );
    cluster.apply("job.yaml", &manifest).await;
    let jobs: Api<Job> = Api::default_namespaced(cluster.client.clone());
    let status = eventually("the job completes", common::POD_TIMEOUT, || async {
        let j = jobs.get("primes").await.map_err(|e| e.to_string())?;
        let s = j.status.clone().unwrap_or_default();
        s.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Complete" && c.status == "True")
            .then_some(s)
            .ok_or(format!("{:?}", j.status))
    })
    .await;
    assert_eq!(status.succeeded, Some(3));
    assert_eq!(status.failed.unwrap_or(0), 0);
    let out = cluster.wharf(&["get", "jobs"]).await;
    assert_ok(&out, "wharf get jobs");
    let line = out
        .stdout_text()
        .lines()
        .find(|l| l.starts_with("primes"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(line.contains("Complete") && line.contains("3/3"), "{line}");
    let pods: Api<Pod> = Api::default_namespaced(cluster.client.clone());
    let done = pods
        .list(&ListParams::default().labels("job-name=primes"))
        .await
        .unwrap();
    assert_eq!(done.items.len(), 3);
    cluster.terminate().await;
}

/// An Indexed Job gives each pod its index (`JOB_COMPLETION_INDEX`, read by the guest) and
/// completes when every index succeeded; a pod failure policy fails a Job at the first
/// pod that exits with a listed code, whatever its `backoffLimit`.
#[tokio::test]
async fn an_indexed_job_and_a_pod_failure_policy_on_a_node() {
    common::build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::Cluster::up(dir.path(), 1).await;
    let manifest = format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: shards
spec:
  completionMode: Indexed
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: shard
          image: {batch}
          args: ["1000"]
          env:
            - name: ECHO_ENV
              value: JOB_COMPLETION_INDEX
---
apiVersion: batch/v1
kind: Job
metadata:
  name: strict
spec:
  backoffLimit: 6
  podFailurePolicy:
    rules:
      - action: FailJob
        onExitCodes:
          operator: In
          values: [134]
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: crash
          image: {crasher}
          args: ["panic"]
"#,
        batch = common::sample("batch-p1", "batch_p1"),
        crasher = common::sample("crasher", "crasher"),
    );
    cluster.apply("jobs.yaml", &manifest).await;
    let jobs: Api<Job> = Api::default_namespaced(cluster.client.clone());
    let ended = |name: &'static str, condition: &'static str| {
        let jobs = jobs.clone();
        async move {
            eventually(name, common::POD_TIMEOUT, || async {
                let j = jobs.get(name).await.map_err(|e| e.to_string())?;
                let s = j.status.clone().unwrap_or_default();
                s.conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == condition && c.status == "True")
                    .map(|c| (s.clone(), c.clone()))
                    .ok_or(format!("{:?}", j.status))
            })
            .await
        }
    };
    let (status, _) = ended("shards", "Complete").await;
    assert_eq!(status.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(status.succeeded, Some(3));
    let pods: Api<Pod> = Api::default_namespaced(cluster.client.clone());
    let shards = pods
        .list(&ListParams::default().labels("job-name=shards"))
        .await
        .unwrap()
        .items;
    assert_eq!(shards.len(), 3);
    for pod in &shards {
        let name = pod.metadata.name.clone().unwrap();
        let index =
            &pod.metadata.annotations.as_ref().unwrap()["batch.kubernetes.io/job-completion-index"];
        assert!(name.starts_with(&format!("shards-{index}-")), "{name}");
        let log = tokio::time::timeout(common::TIMEOUT, pods.logs(&name, &Default::default()))
            .await
            .unwrap()
            .unwrap();
        assert!(
            log.contains(&format!("JOB_COMPLETION_INDEX={index}\n")),
            "{name}: {log}"
        );
    }

    let (status, failed) = ended("strict", "Failed").await;
    assert_eq!(failed.reason.as_deref(), Some("PodFailurePolicy"));
    let crashed = pods
        .list(&ListParams::default().labels("job-name=strict"))
        .await
        .unwrap()
        .items;
    assert_eq!(crashed.len(), 1, "one pod, no retry");
    let pod = crashed[0].metadata.name.clone().unwrap();
    assert_eq!(
        failed.message.as_deref(),
        Some(
            format!(
                "Container crash for pod default/{pod} failed with exit code 134 matching FailJob rule at index 0"
            )
            .as_str()
        )
    );
    assert_eq!(status.failed, Some(1));
    cluster.terminate().await;
}

/// A CronJob on a whole cluster, its clock driven through `--controller-clock-file`:
/// every minute, on a real node. The first run completes (the CronJob records
/// `lastSuccessfulTime`); with `Replace`, a long-running Job is replaced by the next
/// minute's.
#[tokio::test]
async fn a_cron_job_fires_each_minute_of_a_driven_clock_on_a_node() {
    use k8s_openapi::api::batch::v1::CronJob;
    common::build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    // Until the file exists the clock stands still at the control plane's start. A
    // CronJob counts its times from its creation, stamped with the real time, so the
    // driven times lie a little ahead of it (of the times missed since, only the latest
    // runs, as in Kubernetes).
    let base = (Timestamp::now().as_second() / 60 + 3) * 60;
    let at = |seconds: i64| Timestamp::from_second(base + seconds).unwrap();
    let clock_arg = clock.display().to_string();
    let cluster =
        common::Cluster::up_with(dir.path(), 1, &["--controller-clock-file", &clock_arg]).await;
    let manifest = format!(
        r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: primes
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: primes
              image: {batch}
              args: ["1000"]
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: ticker
spec:
  schedule: "* * * * *"
  concurrencyPolicy: Replace
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 0
          containers:
            - name: ticker
              image: {ticker}
"#,
        batch = common::sample("batch-p1", "batch_p1"),
        ticker = common::sample("ticker", "ticker"),
    );
    cluster.apply("cronjobs.yaml", &manifest).await;
    let jobs: Api<Job> = Api::default_namespaced(cluster.client.clone());
    let cron_jobs: Api<CronJob> = Api::default_namespaced(cluster.client.clone());
    // Jobs are named by the scheduled minute, in minutes since the epoch.
    let minute = |t: Timestamp| t.as_second() / 60;
    let job_names = || async {
        let mut names: Vec<String> = jobs
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .filter_map(|j| j.metadata.name)
            .collect();
        names.sort();
        Ok::<_, String>(names)
    };

    // The next minute: both fire once.
    std::fs::write(&clock, at(0).to_string()).unwrap();
    let first = minute(at(0));
    let want = vec![format!("primes-{first}"), format!("ticker-{first}")];
    eventually("the first minute's jobs", common::POD_TIMEOUT, || async {
        let names = job_names().await?;
        (names == want).then_some(()).ok_or(format!("{names:?}"))
    })
    .await;
    let status = eventually("primes succeeded", common::POD_TIMEOUT, || async {
        let cj = cron_jobs
            .get_status("primes")
            .await
            .map_err(|e| e.to_string())?;
        let s = cj.status.unwrap_or_default();
        s.last_successful_time
            .is_some()
            .then_some(s.clone())
            .ok_or(format!("{s:?}"))
    })
    .await;
    assert_eq!(
        status.last_schedule_time.map(|t| t.0.to_string()),
        Some(at(0).to_string())
    );
    let pods: Api<Pod> = Api::default_namespaced(cluster.client.clone());
    eventually("the ticker running", common::POD_TIMEOUT, || async {
        let items = pods
            .list(&ListParams::default().labels(&format!("job-name=ticker-{first}")))
            .await
            .map_err(|e| e.to_string())?
            .items;
        items
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .then_some(())
            .ok_or(format!("{} pods", items.len()))
    })
    .await;

    // A minute later: the finished primes job stays beside the new one; the running
    // ticker job is replaced.
    std::fs::write(&clock, at(60).to_string()).unwrap();
    let second = minute(at(60));
    let want = vec![
        format!("primes-{first}"),
        format!("primes-{second}"),
        format!("ticker-{second}"),
    ];
    eventually("the second minute's jobs", common::POD_TIMEOUT, || async {
        let names = job_names().await?;
        (names == want).then_some(()).ok_or(format!("{names:?}"))
    })
    .await;
    cluster.terminate().await;
}
