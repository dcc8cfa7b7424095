//! End-to-end: the ReplicaSet and Deployment controllers of a real `wharf control`, and the
//! `describe`, `scale` and `rollout` commands around them.
//!
//! No node runs here: the pods' templates name a scheduler that does not exist
//! (`schedulerName: wharf-test`), so the real scheduler leaves them alone, and where a
//! test needs running pods it plays the kubelet itself: it watches the pods and marks each
//! new one Running and Ready through `pods/status`. Invariants of a rollout are checked
//! on every state of a watch stream of the pods and ReplicaSets, read from a version taken
//! before the change up to a marker object created after it, so no state is missed and
//! nothing is sampled by sleeping.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ControlProcess, TIMEOUT, wharf};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{reflector, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use tokio::task::JoinSet;

/// A Deployment (or ReplicaSet) manifest of `replicas` pods running `image`.
fn workload(kind: &str, name: &str, replicas: u32, image: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: {kind}
metadata:
  name: {name}
spec:
  replicas: {replicas}
{extra_spec}  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      schedulerName: wharf-test
      containers:
      - name: app
        image: {image}
"
    )
}

async fn apply(kubeconfig: &Path, dir: &Path, file: &str, yaml: &str) {
    let path = dir.join(file);
    std::fs::write(&path, yaml).unwrap();
    let out = wharf(kubeconfig, &["apply", "-f", path.to_str().unwrap()]).await;
    assert!(out.status.success(), "apply {file}: {}", out.stderr_text());
}

fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The file name of a pod's image (`wharf apply` resolves relative images against the
/// manifest's directory).
fn image(pod: &Pod) -> String {
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    image.rsplit('/').next().unwrap_or_default().to_string()
}

fn owner_uid(pod: &Pod) -> Option<String> {
    pod.owner_references()
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.clone())
}

/// Waits, watching, until `cond` holds for the objects of `api` with `labels`; answers
/// them. Panics with the last state seen after [`TIMEOUT`].
async fn wait_for<K>(api: &Api<K>, labels: &str, what: &str, cond: impl Fn(&[K]) -> bool) -> Vec<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().labels(labels);
    let events = reflector::reflector(writer, watcher(api.clone(), config));
    let mut events = std::pin::pin!(events);
    let found = tokio::time::timeout(TIMEOUT, async {
        while let Some(event) = events.next().await {
            if matches!(
                event,
                Ok(watcher::Event::InitDone)
                    | Ok(watcher::Event::Apply(_))
                    | Ok(watcher::Event::Delete(_))
            ) {
                let objects: Vec<K> = reader.state().iter().map(|o| (**o).clone()).collect();
                if cond(&objects) {
                    return objects;
                }
            }
        }
        Vec::new()
    })
    .await;
    match found {
        Ok(objects) => objects,
        Err(_) => panic!(
            "not {what} within {TIMEOUT:?}; last seen:\n{:#?}",
            reader.state()
        ),
    }
}

fn active_pods(pods: &[Pod]) -> Vec<&Pod> {
    pods.iter().filter(|p| is_active(p)).collect()
}

/// Plays the kubelet for every pod of the default namespace: marks it Running and Ready.
fn kubelet(client: kube::Client, tasks: &mut JoinSet<()>) {
    tasks.spawn(async move {
        let api: Api<Pod> = Api::default_namespaced(client);
        let events = watcher::watcher(api.clone(), watcher::Config::default());
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let (Ok(watcher::Event::Apply(pod)) | Ok(watcher::Event::InitApply(pod))) = event
            else {
                continue;
            };
            if !is_active(&pod) || is_ready(&pod) {
                continue;
            }
            let now = jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let status = json!({"status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            }});
            // A pod deleted meanwhile answers 404: nothing to do.
            let _ = api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await;
        }
    });
}

/// Every state of the objects of `api` with label `app=APP`, starting from `list` and
/// following the watch from its version until an object named `marker` shows up: one
/// entry per event, the objects by name.
async fn history<K>(
    api: Api<K>,
    list: kube::api::ObjectList<K>,
    app: String,
    marker: String,
) -> Vec<BTreeMap<String, K>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let ours = |o: &K| o.labels().get("app") == Some(&app);
    let mut version = list.metadata.resource_version.clone().unwrap_or_default();
    let mut current: BTreeMap<String, K> = list
        .items
        .into_iter()
        .filter(|o| ours(o))
        .map(|o| (o.name_any(), o))
        .collect();
    let mut states = vec![current.clone()];
    loop {
        let events = api.watch(&WatchParams::default(), &version).await.unwrap();
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let (object, deleted) = match event.unwrap() {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => (o, false),
                WatchEvent::Deleted(o) => (o, true),
                WatchEvent::Bookmark(b) => {
                    version = b.metadata.resource_version;
                    continue;
                }
                WatchEvent::Error(e) => panic!("watch failed: {e:?}"),
            };
            version = object.resource_version().unwrap_or_default();
            if object.name_any() == marker {
                return states;
            }
            if !ours(&object) {
                continue;
            }
            if deleted {
                current.remove(&object.name_any());
            } else {
                current.insert(object.name_any(), object);
            }
            states.push(current.clone());
        }
    }
}

/// Starts following pods and replica sets of app=web (see [`history`]).
async fn follow(
    pods: &Api<Pod>,
    rss: &Api<ReplicaSet>,
    marker: &str,
) -> (
    tokio::task::JoinHandle<Vec<BTreeMap<String, Pod>>>,
    tokio::task::JoinHandle<Vec<BTreeMap<String, ReplicaSet>>>,
) {
    let pod_list = pods.list(&ListParams::default()).await.unwrap();
    let rs_list = rss.list(&ListParams::default()).await.unwrap();
    (
        tokio::spawn(history(pods.clone(), pod_list, "web".into(), marker.into())),
        tokio::spawn(history(rss.clone(), rs_list, "web".into(), marker.into())),
    )
}

/// Creates the markers that end [`history`] watches.
async fn mark(client: &kube::Client, marker: &str) {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": marker},
        "spec": {"schedulerName": "wharf-test", "containers": [{"name": "m", "image": "marker.wasm"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let rss: Api<ReplicaSet> = Api::default_namespaced(client.clone());
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": marker},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"marker": marker}},
                 "template": {"metadata": {"labels": {"marker": marker}},
                              "spec": {"schedulerName": "wharf-test",
                                       "containers": [{"name": "m", "image": "marker.wasm"}]}}}
    }))
    .unwrap();
    rss.create(&PostParams::default(), &rs).await.unwrap();
}

#[tokio::test]
async fn a_replica_set_keeps_its_pods_adopts_and_releases() {
    let tmp = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(&tmp.path().join("data")).await;
    let kc = control.kubeconfig();
    let client = control.client().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(client.clone());

    apply(
        &kc,
        tmp.path(),
        "rs.yaml",
        &workload("ReplicaSet", "web", 3, "v1.wasm", ""),
    )
    .await;
    let rs = rss.get("web").await.unwrap();
    let uid = rs.uid().unwrap();
    let owned = |pods: &[Pod]| -> Vec<Pod> {
        pods.iter()
            .filter(|p| is_active(p) && owner_uid(p).as_deref() == Some(uid.as_str()))
            .cloned()
            .collect()
    };
    let first = wait_for(&pods, "app=web", "3 pods", |p| owned(p).len() == 3).await;
    for pod in owned(&first) {
        assert!(pod.name_any().starts_with("web-"), "{}", pod.name_any());
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-"));
        let owner = &pod.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("ReplicaSet", "web")
        );
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        assert_eq!(image(&pod), "v1.wasm");
    }

    // A deleted pod is replaced.
    let victim = owned(&first)[0].name_any();
    let out = wharf(&kc, &["delete", "pod", &victim]).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    let after = wait_for(&pods, "app=web", "3 pods again", |p| {
        let o = owned(p);
        o.len() == 3 && o.iter().all(|p| p.name_any() != victim)
    })
    .await;
    assert_eq!(owned(&after).len(), 3);

    // An orphan that matches is adopted, and one pod too many goes.
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stray", "labels": {"app": "web"}},
        "spec": {"schedulerName": "wharf-test", "containers": [{"name": "app", "image": "v1.wasm"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &orphan).await.unwrap();
    wait_for(
        &pods,
        "app=web",
        "the orphan adopted and the count back to 3",
        |p| {
            let o = owned(p);
            o.len() == 3
                && p.iter()
                    .all(|p| !is_active(p) || owner_uid(p).as_deref() == Some(uid.as_str()))
        },
    )
    .await;

    // A pod relabelled out of the selector is released and replaced.
    let keep =
        owned(&wait_for(&pods, "app=web", "3 owned", |p| owned(p).len() == 3).await)[0].name_any();
    let relabel = json!({"metadata": {"labels": {"app": "elsewhere"}}});
    pods.patch(&keep, &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .unwrap();
    wait_for(
        &pods,
        "app=web",
        "a replacement for the released pod",
        |p| owned(p).len() == 3,
    )
    .await;
    let released = wait_for(&pods, "app=elsewhere", "the pod released", |p| {
        p.len() == 1 && owner_uid(&p[0]).is_none()
    })
    .await;
    assert_eq!(released[0].name_any(), keep);

    // The status says so, and the events are there.
    let rs = wait_for(&rss, "", "the status up to date", |r| {
        r.iter().any(|rs| {
            rs.status.as_ref().is_some_and(|s| {
                s.replicas == 3
                    && s.fully_labeled_replicas == Some(3)
                    && s.observed_generation == rs.metadata.generation
            })
        })
    })
    .await;
    assert_eq!(rs[0].status.as_ref().unwrap().ready_replicas, None);
    // `describe` reads the status again: the controller may still be writing it (the
    // release and its replacement are two writes), so ask until it settles, within a
    // deadline.
    let expected = [
        "Name:         web\n",
        "Replicas:     3 current / 3 desired\n",
        "Pods Status:  0 Running / 3 Waiting / 0 Succeeded / 0 Failed\n",
        "Events:\n",
        "SuccessfulCreate",
        "Created pod: web-",
        "SuccessfulDelete",
        "replicaset-controller",
    ];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = wharf(&kc, &["describe", "rs", "web"]).await;
        assert!(out.status.success(), "{}", out.stderr_text());
        let text = out.stdout_text();
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|e| !text.contains(e))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing:?} not in:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    control.terminate().await;
}

#[tokio::test]
async fn a_deployment_scales_6_9_3_and_scale_checks_its_precondition() {
    let tmp = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(&tmp.path().join("data")).await;
    let kc = control.kubeconfig();
    let client = control.client().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(client.clone());

    apply(
        &kc,
        tmp.path(),
        "web.yaml",
        &workload("Deployment", "web", 6, "v1.wasm", ""),
    )
    .await;
    for n in [6usize, 9, 3] {
        if n != 6 {
            let out = wharf(&kc, &["scale", "deploy/web", "--replicas", &n.to_string()]).await;
            assert!(out.status.success(), "{}", out.stderr_text());
            assert_eq!(out.stdout_text(), "deployment.apps/web scaled\n");
        }
        wait_for(&pods, "app=web", &format!("{n} pods"), |p| {
            active_pods(p).len() == n
        })
        .await;
        let rs = wait_for(&rss, "app=web", "one replica set of that size", |r| {
            r.len() == 1 && r[0].spec.replicas == Some(n as i32)
        })
        .await;
        let annotations = rs[0].annotations();
        assert_eq!(annotations["deployment.kubernetes.io/revision"], "1");
        assert_eq!(
            annotations["deployment.kubernetes.io/desired-replicas"],
            n.to_string()
        );
        let hash = rs[0].labels()["pod-template-hash"].clone();
        assert_eq!(rs[0].name_any(), format!("web-{hash}"));
    }

    // A precondition that does not hold changes nothing.
    let out = wharf(
        &kc,
        &[
            "scale",
            "deploy/web",
            "--replicas",
            "5",
            "--current-replicas",
            "4",
        ],
    )
    .await;
    assert!(!out.status.success());
    assert_eq!(
        out.stderr_text(),
        "error: Expected replicas to be 4, was 3\n"
    );
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
    assert_eq!(deployments.get("web").await.unwrap().spec.replicas, Some(3));
    let out = wharf(
        &kc,
        &[
            "scale",
            "deployment",
            "web",
            "--replicas",
            "4",
            "--current-replicas",
            "3",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr_text());
    wait_for(&pods, "app=web", "4 pods", |p| active_pods(p).len() == 4).await;
    // Replica sets scale too.
    let rs_name = rss.list(&ListParams::default()).await.unwrap().items[0].name_any();
    let out = wharf(&kc, &["scale", &format!("rs/{rs_name}"), "--replicas", "4"]).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    assert_eq!(
        out.stdout_text(),
        format!("replicaset.apps/{rs_name} scaled\n")
    );

    // describe shows the scaling events.
    let deployment = wait_for(&deployments, "", "the status up to date", |d| {
        d.iter().any(|d| {
            d.status.as_ref().is_some_and(|s| {
                s.replicas == Some(4) && s.observed_generation == d.metadata.generation
            })
        })
    })
    .await;
    assert_eq!(
        deployment[0].status.as_ref().unwrap().updated_replicas,
        Some(4)
    );
    let out = wharf(&kc, &["describe", "deployment", "web"]).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    let text = out.stdout_text();
    for expected in [
        "Replicas:               4 desired | 4 updated | 4 total | 0 available | 4 unavailable\n",
        "StrategyType:           RollingUpdate\n",
        "RollingUpdateStrategy:  25% max unavailable, 25% max surge\n",
        &format!("NewReplicaSet:   {rs_name} (4/4 replicas created)\n"),
        "Events:\n",
        &format!("Scaled up replica set {rs_name} from 0 to 6"),
        &format!("Scaled up replica set {rs_name} from 6 to 9"),
        &format!("Scaled down replica set {rs_name} from 9 to 3"),
        "deployment-controller",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    let out = wharf(&kc, &["describe", "deploy", "nope"]).await;
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("NotFound"),
        "{}",
        out.stderr_text()
    );
    control.terminate().await;
}

/// The rollout bounds of a Deployment of 4 with maxSurge 1 and maxUnavailable 1.
const REPLICAS: usize = 4;
const MAX_PODS: usize = REPLICAS + 1;
const MIN_READY: usize = REPLICAS - 1;

fn check_pods(states: &[BTreeMap<String, Pod>]) -> Vec<String> {
    let mut images = Vec::new();
    for (i, state) in states.iter().enumerate() {
        let active: Vec<&Pod> = state.values().filter(|p| is_active(p)).collect();
        let ready = active.iter().filter(|p| is_ready(p)).count();
        assert!(
            active.len() <= MAX_PODS,
            "state {i}: {} pods > {MAX_PODS}",
            active.len()
        );
        assert!(ready >= MIN_READY, "state {i}: {ready} ready < {MIN_READY}");
        for p in active {
            let img = image(p);
            if !images.contains(&img) {
                images.push(img);
            }
        }
    }
    images
}

fn check_replica_sets(states: &[BTreeMap<String, ReplicaSet>]) {
    for (i, state) in states.iter().enumerate() {
        let total: i32 = state.values().map(|rs| rs.spec.replicas.unwrap_or(0)).sum();
        assert!(
            total as usize <= MAX_PODS,
            "state {i}: replica sets ask for {total} > {MAX_PODS}"
        );
    }
}

async fn rollout_status(kc: &Path) -> String {
    let out = wharf(kc, &["rollout", "status", "deploy/web", "--timeout", "60s"]).await;
    assert!(
        out.status.success(),
        "rollout status failed: {}{}",
        out.stdout_text(),
        out.stderr_text()
    );
    let text = out.stdout_text();
    assert!(
        text.ends_with("deployment \"web\" successfully rolled out\n"),
        "{text}"
    );
    text
}

#[tokio::test]
async fn a_rolling_update_stays_within_its_bounds_and_undo_goes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(&tmp.path().join("data")).await;
    let kc = control.kubeconfig();
    let client = control.client().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(client.clone());
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
    let mut tasks = JoinSet::new();
    kubelet(client.clone(), &mut tasks);

    let strategy = "  strategy:\n    rollingUpdate:\n      maxSurge: 1\n      maxUnavailable: 1\n";
    let v1 = workload("Deployment", "web", REPLICAS as u32, "v1.wasm", strategy);
    let v2 = workload("Deployment", "web", REPLICAS as u32, "v2.wasm", strategy);
    apply(&kc, tmp.path(), "web.yaml", &v1).await;
    rollout_status(&kc).await;
    wait_for(&pods, "app=web", "4 ready pods", |p| {
        let a = active_pods(p);
        a.len() == REPLICAS && a.iter().all(|p| is_ready(p))
    })
    .await;

    // Roll out v2, following every pod and replica set state on the way.
    let (pod_states, rs_states) = follow(&pods, &rss, "marker-v2").await;
    apply(&kc, tmp.path(), "web.yaml", &v2).await;
    rollout_status(&kc).await;
    wait_for(&pods, "app=web", "4 ready v2 pods", |p| {
        let a = active_pods(p);
        a.len() == REPLICAS && a.iter().all(|p| is_ready(p) && image(p) == "v2.wasm")
    })
    .await;
    mark(&client, "marker-v2").await;
    let pod_states = tokio::time::timeout(TIMEOUT, pod_states)
        .await
        .unwrap()
        .unwrap();
    let rs_states = tokio::time::timeout(TIMEOUT, rs_states)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(check_pods(&pod_states), ["v1.wasm", "v2.wasm"]);
    check_replica_sets(&rs_states);
    assert!(
        pod_states.len() > 8,
        "the rollout went through {} states",
        pod_states.len()
    );

    let out = wharf(&kc, &["rollout", "history", "deploy/web"]).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    assert_eq!(
        out.stdout_text(),
        "deployment.apps/web\nREVISION  CHANGE-CAUSE\n1         <none>\n2         <none>\n\n"
    );

    // Undo: back to the v1 template, as revision 3 of the same ReplicaSet.
    let (pod_states, rs_states) = follow(&pods, &rss, "marker-undo").await;
    let out = wharf(&kc, &["rollout", "undo", "deploy/web"]).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "deployment.apps/web rolled back\n");
    rollout_status(&kc).await;
    wait_for(&pods, "app=web", "4 ready v1 pods", |p| {
        let a = active_pods(p);
        a.len() == REPLICAS && a.iter().all(|p| is_ready(p) && image(p) == "v1.wasm")
    })
    .await;
    mark(&client, "marker-undo").await;
    let pod_states = tokio::time::timeout(TIMEOUT, pod_states)
        .await
        .unwrap()
        .unwrap();
    let rs_states = tokio::time::timeout(TIMEOUT, rs_states)
        .await
        .unwrap()
        .unwrap();
    let images = check_pods(&pod_states);
    assert_eq!(images, ["v2.wasm", "v1.wasm"]);
    check_replica_sets(&rs_states);

    let d = deployments.get("web").await.unwrap();
    let template_image = d.spec.template.spec.as_ref().unwrap().containers[0]
        .image
        .clone();
    assert!(template_image.unwrap().ends_with("/v1.wasm"));
    assert_eq!(d.annotations()["deployment.kubernetes.io/revision"], "3");
    let sets = wait_for(&rss, "app=web", "v1 at 4 and v2 at 0", |r| {
        r.len() == 2
            && r.iter().all(|rs| {
                let img = rs
                    .spec
                    .template
                    .as_ref()
                    .and_then(|t| t.spec.as_ref())
                    .map(|s| s.containers[0].image.clone());
                if img.flatten().is_some_and(|i| i.ends_with("/v1.wasm")) {
                    rs.spec.replicas == Some(4)
                } else {
                    rs.spec.replicas == Some(0)
                }
            })
    })
    .await;
    let v1_set = sets.iter().find(|rs| rs.spec.replicas == Some(4)).unwrap();
    assert_eq!(
        v1_set.annotations()["deployment.kubernetes.io/revision"],
        "3"
    );
    assert_eq!(
        v1_set.annotations()["deployment.kubernetes.io/revision-history"],
        "1"
    );
    let out = wharf(&kc, &["rollout", "history", "deploy/web"]).await;
    assert_eq!(
        out.stdout_text(),
        "deployment.apps/web\nREVISION  CHANGE-CAUSE\n2         <none>\n3         <none>\n\n"
    );
    let out = wharf(
        &kc,
        &["rollout", "history", "deploy/web", "--revision", "2"],
    )
    .await;
    assert!(
        out.stdout_text()
            .starts_with("deployment.apps/web with revision #2\nPod Template:\n"),
        "{}",
        out.stdout_text()
    );
    assert!(
        out.stdout_text().contains("/v2.wasm\n"),
        "{}",
        out.stdout_text()
    );
    let out = wharf(
        &kc,
        &["rollout", "undo", "deploy/web", "--to-revision", "9"],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        out.stderr_text()
            .contains("unable to find specified revision 9 in history"),
        "{}",
        out.stderr_text()
    );

    // describe shows the rollout's events and conditions.
    let out = wharf(&kc, &["describe", "deploy/web"]).await;
    let text = out.stdout_text();
    for expected in [
        "Replicas:               4 desired | 4 updated | 4 total | 4 available | 0 unavailable\n",
        "RollingUpdateStrategy:  1 max unavailable, 1 max surge\n",
        "  Available      True    MinimumReplicasAvailable\n",
        "  Progressing    True    NewReplicaSetAvailable\n",
        &format!(
            "NewReplicaSet:   {} (4/4 replicas created)\n",
            v1_set.name_any()
        ),
        "Scaled down replica set",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    drop(tasks);
    control.terminate().await;
}

#[tokio::test]
async fn rollout_status_fails_once_the_progress_deadline_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(&tmp.path().join("data")).await;
    let kc = control.kubeconfig();
    // No kubelet: the pods never get ready, so the rollout cannot progress.
    let yaml = workload(
        "Deployment",
        "web",
        2,
        "v1.wasm",
        "  progressDeadlineSeconds: 2\n",
    );
    apply(&kc, tmp.path(), "web.yaml", &yaml).await;
    let out = wharf(
        &kc,
        &["rollout", "status", "deploy/web", "--timeout", "50s"],
    )
    .await;
    assert!(!out.status.success(), "{}", out.stdout_text());
    assert_eq!(
        out.stderr_text(),
        "error: deployment \"web\" exceeded its progress deadline\n"
    );
    assert!(
        out.stdout_text().contains("Waiting for deployment \"web\" rollout to finish: 0 of 2 updated replicas are available...\n"),
        "{}",
        out.stdout_text()
    );
    let out = wharf(&kc, &["describe", "deploy", "web"]).await;
    assert!(
        out.stdout_text()
            .contains("  Progressing    False   ProgressDeadlineExceeded\n"),
        "{}",
        out.stdout_text()
    );

    // A timeout of its own ends a wait with kubectl's message.
    let yaml = workload("Deployment", "other", 2, "v1.wasm", "");
    apply(&kc, tmp.path(), "other.yaml", &yaml).await;
    let out = wharf(
        &kc,
        &["rollout", "status", "deploy/other", "--timeout", "1s"],
    )
    .await;
    assert!(!out.status.success());
    assert_eq!(
        out.stderr_text(),
        "error: timed out waiting for the condition\n"
    );
    control.terminate().await;
}

/// A hello-http Deployment of `replicas` on `port`, answering with its `VERSION`.
fn hello_deployment(replicas: u32, port: u16, version: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
  annotations:
    kubernetes.io/change-cause: version {version}
spec:
  replicas: {replicas}
  strategy:
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  selector:
    matchLabels: {{app: hello}}
  template:
    metadata:
      labels: {{app: hello}}
    spec:
      containers:
        - name: hello
          image: {image}
          ports:
            - containerPort: {port}
          env:
            - {{name: VERSION, value: "{version}"}}
          readinessProbe:
            httpGet: {{path: /, port: {port}}}
            periodSeconds: 1
"#,
        image = common::sample("hello-http", "hello_http"),
    )
}

#[tokio::test]
async fn a_deployment_rolls_real_pods_on_a_cluster() {
    common::build_samples().await;
    let tmp = tempfile::tempdir().unwrap();
    let cluster = common::Cluster::up(tmp.path(), 3).await;
    let port = common::free_port();
    let pods = cluster.pods();
    let timeout = common::POD_TIMEOUT.as_secs().to_string() + "s";
    let rolled_out = |out: common::Output| {
        assert!(
            out.status.success(),
            "rollout status: {}{}\n--- wharf up log:\n{}",
            out.stdout_text(),
            out.stderr_text(),
            cluster.log_tail(30)
        );
        assert!(
            out.stdout_text()
                .ends_with("deployment \"hello\" successfully rolled out\n")
        );
    };

    cluster
        .apply("hello.yaml", &hello_deployment(3, port, "1"))
        .await;
    rolled_out(
        cluster
            .wharf(&["rollout", "status", "deploy/hello", "--timeout", &timeout])
            .await,
    );
    let running = wait_for(&pods, "app=hello", "3 ready pods", |p| {
        let a = active_pods(p);
        a.len() == 3 && a.iter().all(|p| is_ready(p))
    })
    .await;
    for pod in active_pods(&running) {
        let addr = std::net::SocketAddr::new(common::pod_ip(pod), port);
        common::http_ok(addr, "/", common::POD_TIMEOUT).await;
    }

    // A new version rolls out with surge 1 and nothing unavailable; the old pods stop.
    cluster
        .apply("hello.yaml", &hello_deployment(3, port, "2"))
        .await;
    rolled_out(
        cluster
            .wharf(&["rollout", "status", "deploy/hello", "--timeout", &timeout])
            .await,
    );
    let deployment: Api<Deployment> = Api::default_namespaced(cluster.client.clone());
    let d = deployment.get("hello").await.unwrap();
    assert_eq!(d.annotations()["deployment.kubernetes.io/revision"], "2");
    let out = cluster
        .wharf(&["rollout", "history", "deployment/hello"])
        .await;
    assert_eq!(
        out.stdout_text(),
        "deployment.apps/hello\nREVISION  CHANGE-CAUSE\n1         version 1\n2         version 2\n\n"
    );

    // Back to version 1, then down to nothing: every pod stops and goes.
    let out = cluster
        .wharf(&["rollout", "undo", "deploy/hello", "--to-revision", "1"])
        .await;
    assert_eq!(
        out.stdout_text(),
        "deployment.apps/hello rolled back\n",
        "{}",
        out.stderr_text()
    );
    rolled_out(
        cluster
            .wharf(&["rollout", "status", "deploy/hello", "--timeout", &timeout])
            .await,
    );
    let out = cluster
        .wharf(&["scale", "deploy/hello", "--replicas", "0"])
        .await;
    assert!(out.status.success(), "{}", out.stderr_text());
    wait_for(&pods, "app=hello", "no pods", |p| p.is_empty()).await;
    cluster.terminate().await;
}

#[tokio::test]
async fn six_replicas_spread_two_per_node_and_scaling_converges() {
    common::build_samples().await;
    let tmp = tempfile::tempdir().unwrap();
    let cluster = common::Cluster::up(tmp.path(), 3).await;
    let port = common::free_port();
    let pods = cluster.pods();
    cluster
        .apply("hello.yaml", &hello_deployment(6, port, "1"))
        .await;
    let running = wait_for(&pods, "app=hello", "6 ready pods", |p| {
        let a = active_pods(p);
        a.len() == 6 && a.iter().all(|p| is_ready(p))
    })
    .await;
    let mut per_node: std::collections::BTreeMap<String, usize> = Default::default();
    for pod in active_pods(&running) {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
        *per_node.entry(node).or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{per_node:?}"
    );

    for (replicas, what) in [(9usize, "9 ready pods"), (3, "3 ready pods")] {
        let out = cluster
            .wharf(&["scale", "deploy/hello", "--replicas", &replicas.to_string()])
            .await;
        assert!(out.status.success(), "{}", out.stderr_text());
        wait_for(&pods, "app=hello", what, |p| {
            let a = active_pods(p);
            a.len() == replicas && a.iter().all(|p| is_ready(p))
        })
        .await;
    }
}
