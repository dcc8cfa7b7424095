//! End-to-end: StatefulSets with persistent volumes on a real `wharf up` cluster of two
//! nodes, running the `kv-store` sample.
//!
//! One cluster, one story, in the order a user meets it: the set starts in order (pod
//! `i+1` only once `i` is Running and Ready), each replica's claim is bound to a
//! `local-path` volume on the node its pod runs on, each replica answers at its own DNS
//! name through the headless Service, data written to a replica survives the deletion of
//! its pod (the replacement gets the same claim, on the same node), a partitioned rollout
//! updates only the ordinals at or above the partition (and `kubectl rollout undo` takes it
//! back), a scale-down stops pods from the highest ordinal down while their claims stay
//! (and deleting one reclaims its volume and directory), a
//! pod naming a claim that does not exist stays Pending with Kubernetes' message, and the
//! data is still there after the whole cluster restarts.
//!
//! Run alone: `flock /tmp/wharf-e2e.lock cargo test --test stateful`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures::StreamExt as _;
use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SET: &str = "kv";

fn manifest(port: u16, replicas: u32) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {SET}
spec:
  clusterIP: None
  selector:
    app: {SET}
  ports:
    - name: http
      port: {port}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {SET}
spec:
  serviceName: {SET}
  replicas: {replicas}
  selector:
    matchLabels:
      app: {SET}
  template:
    metadata:
      labels:
        app: {SET}
    spec:
      containers:
        - name: kv
          image: {image}
          ports:
            - containerPort: {port}
              name: http
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
          readinessProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 1
          volumeMounts:
            - name: data
              mountPath: /data
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: ["ReadWriteOnce"]
        resources:
          requests:
            storage: 64Mi
"#,
        image = sample("kv-store", "kv_store"),
    )
}

fn ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && condition(pod, "Ready") == Some("True")
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn revision(pod: &Pod) -> String {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("controller-revision-hash"))
        .cloned()
        .unwrap_or_default()
}

/// Watches the set's pods until `done` holds for the latest state of every pod, calling
/// `check` with the previous and new state of the pod that changed (and the others), so
/// ordering rules are checked at every step.
async fn watch_pods(
    cluster: &Cluster,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&BTreeMap<String, Pod>, Option<&Pod>, &Pod),
    done: impl Fn(&BTreeMap<String, Pod>) -> bool,
) -> BTreeMap<String, Pod> {
    let api = cluster.pods();
    let mut state: BTreeMap<String, Pod> = BTreeMap::new();
    let finished = tokio::time::timeout(timeout, async {
        let config = watcher::Config::default().labels(&format!("app={SET}"));
        let stream = watcher(api, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    let n = name(&p);
                    check(&state, state.get(&n), &p);
                    state.insert(n, p);
                }
                Ok(watcher::Event::Delete(p)) => {
                    state.remove(&name(&p));
                }
                Ok(watcher::Event::Init) => state.clear(),
                _ => {}
            }
            if done(&state) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(finished, Ok(true)),
        "{what}: not done within {timeout:?}; pods: {:?}\n--- wharf up log:\n{}",
        state
            .values()
            .map(|p| (
                name(p),
                phase(p).to_string(),
                condition(p, "Ready").map(str::to_string)
            ))
            .collect::<Vec<_>>(),
        cluster.log_tail(40)
    );
    state
}

/// A PUT with a body on a fresh HTTP/1.0 connection: the status.
async fn http_put(addr: SocketAddr, path: &str, body: &str) -> u16 {
    let put = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "PUT {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(30), put)
        .await
        .expect("PUT timed out")
        .expect("PUT failed");
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The A records the cluster DNS at `server` answers for `name`.
async fn dns_a(server: SocketAddr, name: &str) -> Vec<IpAddr> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    socket
        .send_to(&msg.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await
    else {
        return Vec::new();
    };
    Message::from_vec(&buf[..n])
        .map(|m| {
            m.answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_statefulset_keeps_names_order_claims_and_data() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let dns: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cluster = Cluster::up_with(
        dir.path(),
        2,
        &["--dns-listen", &dns.to_string(), "--dns-external", "refuse"],
    )
    .await;
    let port = free_port();
    cluster.apply("kv.yaml", &manifest(port, 3)).await;

    // Ordered start: a pod appears only when every lower ordinal is Running and Ready.
    let pods = watch_pods(
        &cluster,
        "three ready replicas",
        POD_TIMEOUT * 3,
        |state, before, pod| {
            if before.is_some() {
                return;
            }
            let i: u32 = name(pod)
                .rsplit('-')
                .next()
                .and_then(|i| i.parse().ok())
                .unwrap();
            for lower in 0..i {
                let lower = format!("{SET}-{lower}");
                assert!(
                    state.get(&lower).is_some_and(ready),
                    "{} was created before {lower} was ready",
                    name(pod)
                );
            }
        },
        |state| state.len() == 3 && state.values().all(ready),
    )
    .await;
    assert_eq!(
        pods.keys().collect::<Vec<_>>(),
        ["kv-0", "kv-1", "kv-2"],
        "ordinal names"
    );

    // Each claim is bound to a local-path volume on its pod's node.
    let claims: Api<PersistentVolumeClaim> = Api::default_namespaced(cluster.client.clone());
    let volumes: Api<PersistentVolume> = Api::all(cluster.client.clone());
    for pod in pods.values() {
        let claim = claims.get(&format!("data-{}", name(pod))).await.unwrap();
        assert_eq!(
            claim.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Bound")
        );
        assert_eq!(
            claim
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref()),
            Some("local-path")
        );
        let pv_name = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .unwrap();
        let pv = volumes.get(&pv_name).await.unwrap();
        let node = wharf_control::api::storage::volume_node(&pv).unwrap();
        assert_eq!(node, node_of(pod), "{pv_name} pinned to the pod's node");
        let path = wharf_control::api::storage::volume_path(&pv).unwrap();
        assert!(
            std::path::Path::new(path).starts_with(&cluster.data_dir),
            "{path} in the cluster's data dir"
        );
        assert!(
            std::path::Path::new(path).is_dir(),
            "{path} made by its node"
        );
    }

    // Each replica answers at its own name through the headless Service.
    for pod in pods.values() {
        let fqdn = format!("{}.{SET}.default.svc.cluster.local.", name(pod));
        let want = vec![pod_ip(pod)];
        let mut last = Vec::new();
        let answered = tokio::time::timeout(TIMEOUT, async {
            loop {
                last = dns_a(dns, &fqdn).await;
                if last == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(answered.is_ok(), "{fqdn}: {last:?}, want {want:?}");
        let body = http_ok(SocketAddr::new(pod_ip(pod), port), "/", TIMEOUT).await;
        assert!(body.starts_with(&format!("pod {}\n", name(pod))), "{body}");
    }

    // Data survives the pod: the replacement has the same claim, on the same node.
    let kv1 = &pods["kv-1"];
    let addr = SocketAddr::new(pod_ip(kv1), port);
    assert_eq!(http_put(addr, "/kv/greeting", "hello from kv-1").await, 200);
    let kv0 = SocketAddr::new(pod_ip(&pods["kv-0"]), port);
    assert_eq!(http_put(kv0, "/kv/kept", "across restarts").await, 200);
    let old_uid = kv1.metadata.uid.clone().unwrap();
    cluster
        .pods()
        .delete("kv-1", &DeleteParams::default())
        .await
        .unwrap();
    let back = cluster
        .wait_pod("kv-1", "recreated and ready", POD_TIMEOUT, |p| {
            p.metadata.uid.as_deref() != Some(old_uid.as_str()) && ready(p)
        })
        .await;
    assert_eq!(node_of(&back), node_of(kv1), "same node as its volume");
    let value = http_ok(
        SocketAddr::new(pod_ip(&back), port),
        "/kv/greeting",
        TIMEOUT,
    )
    .await;
    assert_eq!(value, "hello from kv-1");

    // Partitioned rollout: only ordinals >= 2 move to the new revision.
    let sets: Api<StatefulSet> = Api::default_namespaced(cluster.client.clone());
    let old_revision = revision(&pods["kv-0"]);
    let patch = json!({"spec": {
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
        "template": {"metadata": {"annotations": {"kv.example/version": "2"}}}}});
    sets.patch(SET, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let rolled = watch_pods(
        &cluster,
        "kv-2 updated",
        POD_TIMEOUT * 2,
        |_, _, _| {},
        |state| {
            state.len() == 3
                && state.values().all(ready)
                && state
                    .get("kv-2")
                    .is_some_and(|p| revision(p) != old_revision)
        },
    )
    .await;
    assert_eq!(
        revision(&rolled["kv-0"]),
        old_revision,
        "below the partition"
    );
    assert_eq!(
        revision(&rolled["kv-1"]),
        old_revision,
        "below the partition"
    );
    let status = tokio::time::timeout(TIMEOUT, async {
        loop {
            let sts = sets.get(SET).await.unwrap();
            let s = sts.status.clone().unwrap_or_default();
            if s.updated_replicas == Some(1) && s.ready_replicas == Some(3) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("status shows one updated replica");
    assert_eq!(
        status.current_revision.as_deref(),
        Some(old_revision.as_str())
    );
    assert_eq!(status.update_revision, Some(revision(&rolled["kv-2"])));
    let out = cluster
        .wharf(&["rollout", "status", "statefulset/kv", "--timeout", "30s"])
        .await;
    assert!(out.status.success(), "{}", out.stderr_text());
    assert_eq!(
        out.stdout_text(),
        "partitioned roll out complete: 1 new pods have been updated...\n"
    );

    // kubectl reads the ControllerRevisions: undo puts kv-2 back on the old revision.
    let kubectl = common::kubectl::Kubectl {
        kubeconfig: &cluster.kubeconfig,
    };
    let undo = kubectl.run(&["rollout", "undo", "statefulset/kv"]).await;
    assert!(undo.ok, "kubectl rollout undo: {}", undo.stderr);
    assert_eq!(undo.stdout.trim(), "statefulset.apps/kv rolled back");
    watch_pods(
        &cluster,
        "kv-2 rolled back",
        POD_TIMEOUT * 2,
        |_, _, _| {},
        |state| {
            state.len() == 3
                && state
                    .values()
                    .all(|p| ready(p) && revision(p) == old_revision)
        },
    )
    .await;

    // Ordered stop: scaling to one removes kv-2, then kv-1; their claims stay.
    let scale = json!({"spec": {"replicas": 1}});
    sets.patch(SET, &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .unwrap();
    watch_pods(
        &cluster,
        "scaled to one",
        POD_TIMEOUT,
        |state, _, pod| {
            if name(pod) == "kv-1" && pod.metadata.deletion_timestamp.is_some() {
                assert!(
                    !state.contains_key("kv-2"),
                    "kv-1 was deleted while kv-2 was still there"
                );
            }
        },
        |state| state.keys().eq(["kv-0"]),
    )
    .await;
    let left: Vec<String> = claims
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(
        left,
        ["data-kv-0", "data-kv-1", "data-kv-2"],
        "claims retained"
    );

    // Deleting a claim no pod uses releases its volume; reclaim Delete removes the volume
    // and its node removes the directory.
    let claim2 = claims.get("data-kv-2").await.unwrap();
    let pv2 = claim2.spec.and_then(|s| s.volume_name).unwrap();
    let dir2 = wharf_control::api::storage::volume_path(&volumes.get(&pv2).await.unwrap())
        .unwrap()
        .to_string();
    assert!(std::path::Path::new(&dir2).is_dir());
    claims
        .delete("data-kv-2", &DeleteParams::default())
        .await
        .unwrap();
    let reclaimed = tokio::time::timeout(TIMEOUT, async {
        loop {
            let claim_gone = claims.get_opt("data-kv-2").await.unwrap().is_none();
            let pv_gone = volumes.get_opt(&pv2).await.unwrap().is_none();
            if claim_gone && pv_gone && !std::path::Path::new(&dir2).exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        reclaimed.is_ok(),
        "claim, volume {pv2} and {dir2} not all gone\n--- wharf up log:\n{}",
        cluster.log_tail(30)
    );

    // A pod whose claim does not exist is Pending with Kubernetes' message.
    let missing = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: orphan
spec:
  containers:
    - name: kv
      image: {}
  volumes:
    - name: data
      persistentVolumeClaim:
        claimName: nope
"#,
        sample("kv-store", "kv_store")
    );
    cluster.apply("orphan.yaml", &missing).await;
    let pending = cluster
        .wait_pod("orphan", "reported unschedulable", TIMEOUT, |p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "PodScheduled" && c.status == "False")
        })
        .await;
    let message = pending
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled")
        .and_then(|c| c.message)
        .unwrap_or_default();
    assert_eq!(
        message,
        "0/2 nodes are available: persistentvolumeclaim \"nope\" not found."
    );

    // The data outlives the whole cluster: after a restart kv-0 still has it.
    cluster.terminate().await;
    let cluster = Cluster::up_with(
        dir.path(),
        2,
        &["--dns-listen", &dns.to_string(), "--dns-external", "refuse"],
    )
    .await;
    let kv0 = cluster
        .wait_pod("kv-0", "ready after the restart", POD_TIMEOUT, ready)
        .await;
    let kept = http_ok(SocketAddr::new(pod_ip(&kv0), port), "/kv/kept", TIMEOUT).await;
    assert_eq!(kept, "across restarts");
    cluster.terminate().await;
}
