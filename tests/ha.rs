//! High availability end to end: three etcd members and three `wharf control` members on
//! loopback serving one cluster, a node that knows every member (its join kubeconfig from
//! `wharf token create --server A,B,C` lists them all), a Deployment running. While a
//! client writes through one member and a watch is open through another, the member
//! holding the scheduler and controller manager Leases and then one etcd member are killed
//! with SIGKILL:
//! - (a) another member takes both Leases within 20 s, and a scale-up made after the kill
//!   converges (scheduler, controllers and the node's failover all work);
//! - (b) writes continue once an etcd member is gone;
//! - (d) the watch, through the member that died, resumes on another member from its last
//!   resourceVersion and misses nothing;
//! - (c) every write the client saw acknowledged is there;
//! - (e) every member answers with the same objects.

#![allow(clippy::unwrap_used)]

mod common;

use futures::TryStreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wharf_control::store::local_etcd::LocalEtcd;

const LEASES: [&str; 2] = ["wharf-scheduler", "wharf-controller-manager"];
/// The acceptance bound on a lease failover.
const FAILOVER_WITHIN: Duration = Duration::from_secs(20);

/// The holders of the scheduler and controller manager Leases, as `client` reads them.
async fn holders(client: &kube::Client) -> Vec<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let mut out = Vec::new();
    for name in LEASES {
        let holder = match api.get_opt(name).await {
            Ok(Some(lease)) => lease.spec.and_then(|s| s.holder_identity),
            _ => None,
        };
        out.push(holder.unwrap_or_default());
    }
    out
}

/// A second member of the cluster of `first`: the cluster CA, the admin token, the
/// ServiceAccount signing key and the Secrets' encryption keys are shared (copied into its
/// data dir before its first start), so its serving certificate chains to the same CA, the
/// admin kubeconfig and every token work against it, and it reads the Secrets the others
/// wrote.
fn share_credentials(first: &Path, member: &Path) {
    std::fs::create_dir_all(member.join("pki")).unwrap();
    for file in [
        "pki/ca.crt",
        "pki/ca.key",
        "pki/sa.key",
        "pki/encryption-keys.json",
        "admin.token",
    ] {
        std::fs::copy(first.join(file), member.join(file)).unwrap();
    }
}

/// The names of the writer's ConfigMaps and the Deployment's state, as `client` lists them.
async fn objects(client: &kube::Client) -> (BTreeMap<String, String>, Option<String>) {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let listed = cms
        .list(&ListParams::default().labels("writer=ha"))
        .await
        .unwrap();
    let names = listed
        .items
        .into_iter()
        .map(|c| {
            (
                c.metadata.name.unwrap(),
                c.metadata.resource_version.unwrap(),
            )
        })
        .collect();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let rv = deploys
        .get("hello")
        .await
        .ok()
        .and_then(|d| d.metadata.resource_version);
    (names, rv)
}

/// Waits until every client lists the same objects (watch caches catch up).
async fn same_objects_everywhere(clients: &[&kube::Client]) {
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        let mut seen = Vec::new();
        for c in clients {
            seen.push(objects(c).await);
        }
        if seen.windows(2).all(|w| w[0] == w[1]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the members disagree: {:?}",
            seen.iter()
                .map(|(cms, rv)| (cms.len(), rv.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until Deployment hello has `n` ready replicas, through `client`.
async fn ready_replicas(client: &kube::Client, n: i32) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + common::POD_TIMEOUT;
    loop {
        let ready = api
            .get("hello")
            .await
            .ok()
            .and_then(|d| d.status)
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        if ready == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Deployment hello has {ready} ready replicas, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes ConfigMaps `w-0`, `w-1`, … through `client` until `stop`; a write whose answer is
/// lost is sent again (AlreadyExists then means the first one was applied). Answers the
/// names whose creation was acknowledged.
async fn writer(
    client: kube::Client,
    acked: Arc<Mutex<Vec<String>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut i = 0;
    while !stop.is_cancelled() {
        let name = format!("w-{i}");
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"writer": "ha"}},
            "data": {"i": i.to_string()},
        }))
        .unwrap();
        let write = tokio::time::timeout(
            Duration::from_secs(10),
            api.create(&PostParams::default(), &cm),
        )
        .await;
        match write {
            Ok(Ok(_)) => {}
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => {}
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        acked.lock().unwrap().push(name);
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Watches the writer's ConfigMaps through `members[0]` from `rv`; when that watch ends or
/// fails, resumes through the next member from the last resourceVersion it saw (after a
/// 410, relists). Sends every added name.
async fn resuming_watch(
    members: Vec<kube::Client>,
    mut rv: String,
    seen: Arc<Mutex<Vec<String>>>,
    resumed: Arc<Mutex<Vec<(usize, String)>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let params = WatchParams::default().labels("writer=ha").timeout(60);
    let mut member = 0;
    while !stop.is_cancelled() {
        let api: Api<ConfigMap> = Api::namespaced(members[member].clone(), "default");
        let stream = match api.watch(&params, &rv).await {
            Ok(s) => s,
            Err(_) => {
                member = (member + 1) % members.len();
                resumed.lock().unwrap().push((member, rv.clone()));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = stream.try_next() => next,
            };
            match next {
                Ok(Some(WatchEvent::Added(cm))) => {
                    rv = cm.metadata.resource_version.clone().unwrap();
                    seen.lock().unwrap().push(cm.metadata.name.unwrap());
                }
                Ok(Some(WatchEvent::Modified(o) | WatchEvent::Deleted(o))) => {
                    rv = o.metadata.resource_version.unwrap();
                }
                Ok(Some(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                Ok(Some(WatchEvent::Error(e))) if e.code == 410 => {
                    // Too old: relist, and take up from the list's revision.
                    let list = api
                        .list(&ListParams::default().labels("writer=ha"))
                        .await
                        .unwrap();
                    rv = list.metadata.resource_version.unwrap();
                    let mut seen = seen.lock().unwrap();
                    for cm in list.items {
                        let name = cm.metadata.name.unwrap();
                        if !seen.contains(&name) {
                            seen.push(name);
                        }
                    }
                    break;
                }
                Ok(Some(WatchEvent::Error(_))) | Err(_) => {
                    // The member is gone (or failed): the next one, from where we were.
                    member = (member + 1) % members.len();
                    resumed.lock().unwrap().push((member, rv.clone()));
                    break;
                }
                // The server ended the watch (its timeout): again from the same member.
                Ok(None) => break,
            }
        }
    }
}

#[tokio::test]
async fn three_members_on_three_etcd_survive_losing_the_leader_and_an_etcd_member() {
    common::build_samples().await;
    let tmp = tempfile::tempdir().unwrap();
    let etcd = tokio::task::spawn_blocking(|| LocalEtcd::cluster(3))
        .await
        .unwrap()
        .unwrap();
    let endpoints = etcd
        .iter()
        .map(|m| m.client_url.clone())
        .collect::<Vec<_>>()
        .join(",");
    let flags = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoints,
        "--etcd-prefix",
        "/ha",
        "--leader-elect-lease-duration",
        "6s",
        "--leader-elect-renew-deadline",
        "4s",
        "--leader-elect-retry-period",
        "1s",
    ];

    // The first member starts alone and takes both Leases.
    let dirs: Vec<_> = (1..=3).map(|i| tmp.path().join(format!("m{i}"))).collect();
    let mut m1 = common::ControlProcess::start_with(&dirs[0], &flags).await;
    let c1 = m1.client().await;
    let first = common::within("the first member to take both leases", async {
        loop {
            let h = holders(&c1).await;
            if h.iter().all(|h| !h.is_empty()) {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(first[0], first[1], "one member holds both: {first:?}");
    share_credentials(&dirs[0], &dirs[1]);
    share_credentials(&dirs[0], &dirs[2]);
    let m2 = common::ControlProcess::start_with(&dirs[1], &flags).await;
    let m3 = common::ControlProcess::start_with(&dirs[2], &flags).await;
    // The admin kubeconfig of each works: the members share the CA and the token.
    let (c2, c3) = (m2.client().await, m3.client().await);
    let servers = [&m1, &m2, &m3]
        .iter()
        .map(|m| format!("https://{}", m.addr))
        .collect::<Vec<_>>()
        .join(",");

    // The node joins with a token whose kubeconfig lists every member (a cluster and a
    // context each): it fails over between them without being told.
    let join = tmp.path().join("node.kubeconfig");
    let out = common::wharf(
        &m1.kubeconfig(),
        &[
            "token",
            "create",
            "--kubeconfig-out",
            join.to_str().unwrap(),
            "--server",
            &servers,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr_text());
    let node =
        common::NodeProcess::start(tmp.path(), &join, "n1", "127.0.0.1".parse().unwrap(), &[])
            .await;
    common::wait_node_ready(&c2, "n1", common::TIMEOUT).await;
    let port = common::free_port();
    let manifest = tmp.path().join("hello.yaml");
    std::fs::write(&manifest, common::hello_deployment("hello", 2, port)).unwrap();
    let out = common::wharf(
        &m1.kubeconfig(),
        &["apply", "-f", manifest.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr_text());
    ready_replicas(&c3, 2).await;
    // The later members wait: the first still holds both Leases.
    assert_eq!(holders(&c3).await, first);
    // (e) Every member serves the same objects.
    same_objects_everywhere(&[&c1, &c2, &c3]).await;

    // A writer through m3 and a watch through m1 (which will die), from now on.
    let cms: Api<ConfigMap> = Api::namespaced(c1.clone(), "default");
    let start_rv = cms
        .list(&ListParams::default().labels("writer=ha"))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let stop_watch = tokio_util::sync::CancellationToken::new();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writing = tokio::spawn(writer(c3.clone(), acked.clone(), stop.clone()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let resumed = Arc::new(Mutex::new(Vec::new()));
    let watching = tokio::spawn(resuming_watch(
        vec![c1.clone(), c2.clone(), c3.clone()],
        start_rv,
        seen.clone(),
        resumed.clone(),
        stop_watch.clone(),
    ));
    let acks = || acked.lock().unwrap().len();
    let at_least = |n: usize, what: &'static str| {
        let acked = acked.clone();
        common::within(what, async move {
            while acked.lock().unwrap().len() < n {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    at_least(10, "the first writes").await;

    // (a) The member holding the Leases dies: another takes them within 20 s.
    // It is m1, which holds them since it started (its identity is on its start line).
    let holding = holders(&c2).await;
    assert_eq!(
        holding,
        [m1.identity.clone().unwrap(), m1.identity.clone().unwrap()],
        "m1 no longer holds both leases"
    );
    m1.kill().await;
    let killed_at = Instant::now();
    let taken = tokio::time::timeout(FAILOVER_WITHIN, async {
        loop {
            let h = holders(&c2).await;
            if h.iter().all(|h| !h.is_empty() && *h != first[0]) {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no member took the leases within {FAILOVER_WITHIN:?}"));
    let failover = killed_at.elapsed();
    eprintln!("lease failover took {failover:?}: {taken:?}");
    // A scale-up made after the kill converges: new pods scheduled and running.
    let deploys: Api<Deployment> = Api::namespaced(c2.clone(), "default");
    deploys
        .patch(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    ready_replicas(&c3, 3).await;
    // (b) An etcd member dies: writes continue.
    let killed = etcd[0].client_url.clone();
    let etcd = tokio::task::spawn_blocking(move || {
        etcd[0].kill().unwrap();
        etcd
    })
    .await
    .unwrap();
    at_least(acks() + 20, "writes after an etcd member died").await;
    eprintln!("killed etcd member {killed}; writes continue");

    let writes_before_stop = acks();
    at_least(writes_before_stop + 10, "writes after the leader died").await;

    // (c) Every acknowledged write is there, read through either surviving member.
    stop.cancel();
    writing.await.unwrap();
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    for client in [&c2, &c3] {
        let (present, _) = objects(client).await;
        let missing: Vec<_> = acked.iter().filter(|n| !present.contains_key(*n)).collect();
        assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    }

    // (d) The watch through m1 went on through another member: it sees every
    // acknowledged write, once.
    let all_seen = {
        let seen = seen.clone();
        let acked = acked.clone();
        tokio::time::timeout(common::TIMEOUT, async move {
            loop {
                if acked.iter().all(|n| seen.lock().unwrap().contains(n)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
    };
    stop_watch.cancel();
    watching.await.unwrap();
    let resumed = resumed.lock().unwrap().clone();
    let seen = seen.lock().unwrap().clone();
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    let unseen: Vec<_> = acked.difference(&unique).collect();
    assert!(
        all_seen.is_ok(),
        "the watch missed {unseen:?} (resumed {resumed:?})"
    );
    assert_eq!(unique.len(), seen.len(), "events repeated: {seen:?}");
    assert!(
        !resumed.is_empty(),
        "the watch never had to resume elsewhere"
    );

    // (e) The surviving members agree, through kube clients and through kubectl, which
    // also shows the new holder of the scheduler's Lease.
    same_objects_everywhere(&[&c2, &c3]).await;
    let (k2, k3) = (m2.kubeconfig(), m3.kubeconfig());
    let (k2, k3) = (
        common::kubectl::Kubectl { kubeconfig: &k2 },
        common::kubectl::Kubectl { kubeconfig: &k3 },
    );
    let names = ["get", "configmaps", "-l", "writer=ha", "-o", "name"];
    let through_m2 = k2.ok(&names).await;
    assert_eq!(through_m2.lines().count(), objects(&c2).await.0.len());
    assert_eq!(k3.ok(&names).await, through_m2);
    let holder = [
        "get",
        "lease",
        "-n",
        "kube-system",
        "wharf-scheduler",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ];
    // A surviving member holds it (after the etcd member's death it may have moved
    // between the survivors: a holder whose etcd connection went with it may miss its
    // short renew deadline and hand over), and both members show the same holder.
    let shown = k2.ok(&holder).await;
    let survivors = [m2.identity.clone().unwrap(), m3.identity.clone().unwrap()];
    assert!(survivors.contains(&shown), "{shown:?} not in {survivors:?}");
    k3.until(&holder, |o| o == shown).await;
    eprintln!(
        "{} acknowledged writes, watch resumed {resumed:?}, lease failover {failover:?}",
        acked.len()
    );

    drop(node);
    m2.terminate().await;
    m3.terminate().await;
    tokio::task::spawn_blocking(move || drop(etcd))
        .await
        .unwrap();
}
