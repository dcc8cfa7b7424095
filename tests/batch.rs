//! End-to-end: scheduled and budgeted workloads. CronJobs through kubectl (`create
//! cronjob`, `create job --from=cronjob/...`), PodDisruptionBudgets holding a drain,
//! ResourceQuotas refusing pods, and preemption by priority.
//!
//! A CronJob firing on schedule is tested at the controller level against a real API
//! server in-process with a driven clock (`controllers::cronjob` tests): a whole cluster
//! cannot be made to reach the next minute without waiting for it.
#![allow(clippy::unwrap_used)]

mod common;

use common::kubectl::Kubectl;
use common::{ControlProcess, within};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::Duration;

/// Polls `f` until it answers `Some`, for at most `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node that exists only as API objects (Ready, with `cpu` allocatable) and a Lease a
/// task renews while the handle lives. The test plays its kubelet where it matters.
struct SimNode(tokio::task::JoinHandle<()>);

impl Drop for SimNode {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn sim_node(client: &kube::Client, name: &str, cpu: &str) -> SimNode {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name,
        "labels": {"kubernetes.io/hostname": name}}}))
    .unwrap();
    within(
        "creating a node",
        nodes.create(&PostParams::default(), &node),
    )
    .await
    .unwrap();
    let now = jiff::Timestamp::now().to_string();
    let resources = json!({"cpu": cpu, "memory": "8Gi", "pods": "110"});
    let status = json!({"status": {"capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
            "renewTime": MicroTime(jiff::Timestamp::now())}}))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let name = name.to_string();
    SimNode(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let patch = json!({"spec": {"renewTime": MicroTime(jiff::Timestamp::now())}});
            let _ = leases
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
    }))
}

fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

/// What the kubelet would report of a pod that started: Running and Ready.
async fn report_ready(pods: &Api<Pod>, name: &str) {
    let now = jiff::Timestamp::now().to_string();
    let status = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_cron_jobs_and_jobs_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(dir.path()).await;
    let kubeconfig = control.kubeconfig();
    let k = Kubectl {
        kubeconfig: &kubeconfig,
    };

    let out = k
        .ok(&[
            "create",
            "cronjob",
            "tick",
            "--image=hello.wasm",
            "--schedule=*/1 * * * *",
        ])
        .await;
    assert!(out.contains("cronjob.batch/tick created"), "{out}");
    let table = k.ok(&["get", "cronjobs"]).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"
        ]
    );
    assert!(table.contains("*/1 * * * *"), "{table}");
    let spec = k
        .ok(&[
            "get",
            "cj",
            "tick",
            "-o",
            "jsonpath={.spec.concurrencyPolicy} {.spec.successfulJobsHistoryLimit} {.spec.jobTemplate.spec.template.spec.restartPolicy}",
        ])
        .await;
    assert_eq!(spec, "Allow 3 OnFailure");

    // A Job made now from the CronJob's template, owned by it.
    let out = k
        .ok(&["create", "job", "by-hand", "--from=cronjob/tick"])
        .await;
    assert!(out.contains("job.batch/by-hand created"), "{out}");
    let job = k
        .ok(&[
            "get",
            "job",
            "by-hand",
            "-o",
            "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name} {.metadata.annotations.cronjob\\.kubernetes\\.io/instantiate} {.spec.template.spec.containers[0].image}",
        ])
        .await;
    assert_eq!(job, "CronJob/tick manual hello.wasm");

    // Kubernetes' words for a bad schedule and zone.
    let bad = k
        .run(&[
            "create",
            "cronjob",
            "bad",
            "--image=hello.wasm",
            "--schedule=61 * * * *",
        ])
        .await;
    assert!(!bad.ok);
    assert!(
        bad.stderr.contains(
            "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
        ),
        "{}",
        bad.stderr
    );
    let zone = k
        .run(&[
            "patch",
            "cronjob",
            "tick",
            "--type=merge",
            "-p",
            r#"{"spec":{"timeZone":"Mars/Base"}}"#,
        ])
        .await;
    assert!(
        zone.stderr
            .contains("spec.timeZone: Invalid value: \"Mars/Base\": unknown time zone Mars/Base"),
        "{}",
        zone.stderr
    );
}

/// `wharf drain` of a node holding both replicas of a Deployment whose budget keeps one
/// available: the first eviction goes through, the second is refused with Kubernetes'
/// 429 and retried, and the drain finishes only once the first replica's replacement is
/// Ready on the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disruption_budget_holds_a_drain_until_a_replica_is_ready_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(dir.path()).await;
    let kubeconfig = control.kubeconfig();
    let client = control.client().await;
    let _n1 = sim_node(&client, "n1", "4").await;
    let _n2 = sim_node(&client, "n2", "4").await;
    let out = common::wharf(&kubeconfig, &["cordon", "n2"]).await;
    assert!(out.status.success(), "{}", out.stderr_text());

    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::default_namespaced(client.clone());
    let deploy = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {
        "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "web", "image": "web.wasm"}]}}}}))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let web = ListParams::default().labels("app=web");
    let first = eventually("both replicas on n1", Duration::from_secs(30), || async {
        let items = pods.list(&web).await.ok()?.items;
        (items.len() == 2 && items.iter().all(|p| node_of(p) == "n1")).then_some(items)
    })
    .await;
    for p in &first {
        report_ready(&pods, p.metadata.name.as_deref().unwrap()).await;
    }
    let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::default_namespaced(client.clone());
    let pdb = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}))
    .unwrap();
    budgets.create(&PostParams::default(), &pdb).await.unwrap();
    eventually(
        "one disruption allowed",
        Duration::from_secs(30),
        || async {
            let s = budgets.get_status("web").await.ok()?.status?;
            (s.disruptions_allowed == Some(1) && s.current_healthy == Some(2)).then_some(())
        },
    )
    .await;
    let out = common::wharf(&kubeconfig, &["uncordon", "n2"]).await;
    assert!(out.status.success(), "{}", out.stderr_text());

    let drain = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["drain", "n1", "--grace-period", "0", "--timeout", "90s"])
        .stdout(std::fs::File::create(dir.path().join("drain.out")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("drain.err")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut drain = drain;
    // The first replica is evicted; its replacement lands on n2 and is not Ready yet.
    let replacement = eventually("a replacement on n2", Duration::from_secs(30), || async {
        let items = pods.list(&web).await.ok()?.items;
        items
            .into_iter()
            .find(|p| node_of(p) == "n2")
            .and_then(|p| p.metadata.name)
    })
    .await;
    // Meanwhile the budget refuses the second eviction (the drain retries every 5 s).
    let remaining: Vec<Pod> = pods
        .list(&web)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| node_of(p) == "n1")
        .collect();
    assert_eq!(remaining.len(), 1, "one replica must stay on n1");
    let kept = remaining[0].metadata.name.clone().unwrap();
    // The budget refuses the drain's eviction (429, which the drain retries every 5 s, as
    // kubectl does): its retry message is the evidence. (Not evicted from here: kube's
    // client retries a 429 itself, with a back-off growing to minutes.)
    let held = format!(
        "error when evicting pods/\"{kept}\" -n \"default\" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget."
    );
    eventually(
        "the drain held by the budget",
        Duration::from_secs(30),
        || async {
            let stderr = std::fs::read_to_string(dir.path().join("drain.err")).ok()?;
            stderr.contains(&held).then_some(())
        },
    )
    .await;
    assert!(
        pods.get_opt(&kept).await.unwrap().is_some(),
        "the drain must wait for the budget"
    );

    // The replacement becomes Ready: the budget allows one more, the drain finishes.
    report_ready(&pods, &replacement).await;
    eventually(
        "the budget allowing one more",
        Duration::from_secs(30),
        || async {
            let s = budgets.get_status("web").await.ok()?.status?;
            (s.disruptions_allowed == Some(1)).then_some(())
        },
    )
    .await;
    let status = tokio::time::timeout(Duration::from_secs(60), drain.wait()).await;
    let stdout = std::fs::read_to_string(dir.path().join("drain.out")).unwrap();
    let stderr = std::fs::read_to_string(dir.path().join("drain.err")).unwrap();
    let budget = budgets.get_status("web").await.unwrap().status;
    let status = status
        .unwrap_or_else(|_| panic!("the drain did not finish:\n{stdout}\n{stderr}\n{budget:?}"));
    assert!(status.unwrap().success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("node/n1 drained"), "{stdout}");
    assert!(pods.get_opt(&kept).await.unwrap().is_none());
}

/// A quota of one pod: the second pod is refused with Kubernetes' words, and
/// `kubectl describe quota` shows used and hard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_refuses_the_pod_beyond_it() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(dir.path()).await;
    let kubeconfig = control.kubeconfig();
    let k = Kubectl {
        kubeconfig: &kubeconfig,
    };
    k.ok(&[
        "create",
        "quota",
        "small",
        "--hard=pods=1,count/configmaps=5",
    ])
    .await;
    k.until(
        &[
            "get",
            "quota",
            "small",
            "-o",
            "jsonpath={.status.used.pods}",
        ],
        |s| s == "0",
    )
    .await;
    k.ok(&["run", "one", "--image=hello.wasm", "--restart=Never"])
        .await;
    let two = k
        .run(&["run", "two", "--image=hello.wasm", "--restart=Never"])
        .await;
    assert!(!two.ok);
    assert!(
        two.stderr.contains(
            "pods \"two\" is forbidden: exceeded quota: small, requested: pods=1, used: pods=1, limited: pods=1"
        ),
        "{}",
        two.stderr
    );
    let described = k.ok(&["describe", "quota", "small"]).await;
    let rows: Vec<Vec<&str>> = described
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.contains(&vec!["Resource", "Used", "Hard"]),
        "{described}"
    );
    assert!(rows.contains(&vec!["pods", "1", "1"]), "{described}");
    assert!(
        rows.contains(&vec!["count/configmaps", "0", "5"]),
        "{described}"
    );
}

/// A node full of low-priority pods: a pod of a higher PriorityClass preempts one of
/// them, which gets the DisruptionTarget condition and a `Preempted` event, and takes
/// its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_pod_preempts_a_lower_one() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(dir.path()).await;
    let client = control.client().await;
    let _n1 = sim_node(&client, "n1", "1").await;
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
    let system = classes.get("system-cluster-critical").await.unwrap();
    assert_eq!(system.value, Some(2_000_000_000));
    for (name, value) in [("low", 10), ("high", 1000)] {
        let pc =
            serde_json::from_value(json!({"metadata": {"name": name}, "value": value})).unwrap();
        classes.create(&PostParams::default(), &pc).await.unwrap();
    }
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod = |name: &str, class: &str, cpu: &str| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
            "priorityClassName": class, "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "a", "image": "a.wasm",
                "resources": {"requests": {"cpu": cpu}}}]}}))
        .unwrap()
    };
    for name in ["low-1", "low-2"] {
        let created = pods
            .create(&PostParams::default(), &pod(name, "low", "500m"))
            .await
            .unwrap();
        assert_eq!(created.spec.unwrap().priority, Some(10));
    }
    eventually("the low pods bound", Duration::from_secs(30), || async {
        let items = pods.list(&Default::default()).await.ok()?.items;
        (items.iter().filter(|p| node_of(p) == "n1").count() == 2).then_some(())
    })
    .await;

    pods.create(&PostParams::default(), &pod("urgent", "high", "500m"))
        .await
        .unwrap();
    let urgent = eventually("the urgent pod bound", Duration::from_secs(30), || async {
        let p = pods.get("urgent").await.ok()?;
        (node_of(&p) == "n1").then_some(p)
    })
    .await;
    assert_eq!(urgent.spec.as_ref().unwrap().priority, Some(1000));
    assert_eq!(
        urgent.status.unwrap().nominated_node_name.as_deref(),
        Some("n1")
    );
    let left: Vec<String> = pods
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .filter(|n| n.starts_with("low-"))
        .collect();
    assert_eq!(left.len(), 1, "exactly one victim: {left:?}");
    let events: Api<Event> = Api::default_namespaced(client.clone());
    let preempted = eventually("the Preempted event", Duration::from_secs(30), || async {
        events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Preempted"))
    })
    .await;
    let victim = preempted.involved_object.name.clone().unwrap();
    assert!(victim.starts_with("low-") && !left.contains(&victim));
    assert!(preempted.message.unwrap().ends_with(" on node n1"),);
}
