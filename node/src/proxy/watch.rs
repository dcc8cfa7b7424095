//! The one watch of Services and EndpointSlices a node keeps, feeding both the proxy and
//! the DNS, with the Nodes (their addresses and tunnels, for endpoints on other machines).
//!
//! Two kube-runtime watchers (which re-list on 410 and reconnect on their own) fill two
//! maps; after every event the whole [`Snapshot`] is rebuilt ([`model::build`]) and
//! published on a `tokio::sync::watch` channel with the next generation number. There is
//! no batching delay: an endpoint change reaches the proxy's endpoint sets and the DNS zone
//! as soon as the event arrives (a rebuild of a few hundred Services takes microseconds; a
//! watch channel keeps only the newest snapshot, so a burst of events coalesces by itself
//! when a consumer is slower than the watch). Nothing is published until both initial lists
//! arrived, so consumers never act on half a cluster. Nodes are kept only as the
//! [`NodeInfo`] the proxy needs, so their heartbeats (a status write every few seconds
//! per node) change nothing and publish nothing.

use super::local::{self, ReadyPods};
use super::model::{self, NodeInfo, Snapshot};
use crate::reachability::{ApiHealth, api_retry_delay};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::watcher;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The receiving side: the newest snapshot.
pub type SnapshotRx = watch::Receiver<Arc<Snapshot>>;

/// A channel holding the empty, unsynced snapshot.
pub fn channel() -> (watch::Sender<Arc<Snapshot>>, SnapshotRx) {
    watch::channel(Arc::new(Snapshot::default()))
}

fn key(meta: &kube::api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("")
    )
}

/// One watched kind: its objects, and the list being rebuilt during a re-list.
struct Mirror<K> {
    objects: BTreeMap<String, K>,
    relist: Option<BTreeMap<String, K>>,
    synced: bool,
}

impl<K: kube::Resource> Mirror<K> {
    fn new() -> Self {
        Mirror {
            objects: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }

    /// Applies one watcher event; returns whether the visible objects changed.
    fn apply(&mut self, event: watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                let k = key(obj.meta());
                self.relist.get_or_insert_with(BTreeMap::new).insert(k, obj);
                false
            }
            watcher::Event::InitDone => {
                self.objects = self.relist.take().unwrap_or_default();
                self.synced = true;
                true
            }
            watcher::Event::Apply(obj) => {
                self.objects.insert(key(obj.meta()), obj);
                true
            }
            watcher::Event::Delete(obj) => self.objects.remove(&key(obj.meta())).is_some(),
        }
    }
}

/// A watched kind kept only as the projection a consumer needs (a Node's address and
/// tunnel, a pod's address and ports), by key; events that leave the projections as they
/// were (status heartbeats, unrelated fields) change nothing.
pub(crate) struct Projected<K, T> {
    pub(crate) items: BTreeMap<String, T>,
    relist: Option<BTreeMap<String, T>>,
    pub(crate) synced: bool,
    key: fn(&K) -> Option<String>,
    project: fn(&K) -> Option<T>,
}

impl<K, T: PartialEq> Projected<K, T> {
    /// `key` names an object (`None`: ignored); `project` gives what is kept of it
    /// (`None`: nothing, as if it did not exist).
    pub(crate) fn new(key: fn(&K) -> Option<String>, project: fn(&K) -> Option<T>) -> Self {
        Projected {
            items: BTreeMap::new(),
            relist: None,
            synced: false,
            key,
            project,
        }
    }

    /// Applies one watcher event; returns whether any projection changed.
    pub(crate) fn apply(&mut self, event: watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                if let (Some(k), Some(v)) = ((self.key)(&obj), (self.project)(&obj)) {
                    self.relist.get_or_insert_with(BTreeMap::new).insert(k, v);
                }
                false
            }
            watcher::Event::InitDone => {
                let next = self.relist.take().unwrap_or_default();
                let changed = !self.synced || next != self.items;
                self.items = next;
                self.synced = true;
                changed
            }
            watcher::Event::Apply(obj) => {
                let Some(k) = (self.key)(&obj) else {
                    return false;
                };
                match (self.project)(&obj) {
                    Some(v) if self.items.get(&k) == Some(&v) => false,
                    Some(v) => {
                        self.items.insert(k, v);
                        true
                    }
                    None => self.items.remove(&k).is_some(),
                }
            }
            watcher::Event::Delete(obj) => {
                (self.key)(&obj).is_some_and(|k| self.items.remove(&k).is_some())
            }
        }
    }
}

/// The Nodes as the proxy needs them, by name.
pub(crate) fn node_infos() -> Projected<Node, NodeInfo> {
    Projected::new(
        |n: &Node| n.metadata.name.clone(),
        |n: &Node| NodeInfo::of(n).map(|(_, info)| info),
    )
}

/// Watches until shutdown, publishing a snapshot after every change, of the watches or
/// of this node's Ready pods (`local`, joined in by [`super::local::join`]).
pub async fn run(
    client: kube::Client,
    tx: watch::Sender<Arc<Snapshot>>,
    mut local: watch::Receiver<ReadyPods>,
    health: Arc<ApiHealth>,
    shutdown: CancellationToken,
) {
    let services = watcher::watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let slices = watcher::watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    );
    let nodes = watcher::watcher(Api::<Node>::all(client), watcher::Config::default());
    let mut services = std::pin::pin!(services);
    let mut slices = std::pin::pin!(slices);
    let mut nodes = std::pin::pin!(nodes);
    let mut svc = Mirror::<Service>::new();
    let mut eps = Mirror::<EndpointSlice>::new();
    let mut nds = node_infos();
    let mut generation = 0u64;
    let mut refused = BTreeMap::new();
    let mut failures = 0u32;
    let mut local_open = true;
    let mut local_backends = local::LocalBackends::new();
    loop {
        let mut only_local = false;
        let changed = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = local.changed(), if local_open => {
                local_open = c.is_ok();
                only_local = true;
                local_open
            }
            e = services.next() => match e {
                Some(Ok(e)) => { health.ok(); failures = 0; svc.apply(e) }
                Some(Err(e)) => { backoff("services watch", e, &health, &mut failures, &shutdown).await; false }
                None => return,
            },
            e = slices.next() => match e {
                Some(Ok(e)) => { health.ok(); failures = 0; eps.apply(e) }
                Some(Err(e)) => { backoff("endpointslices watch", e, &health, &mut failures, &shutdown).await; false }
                None => return,
            },
            e = nodes.next() => match e {
                Some(Ok(e)) => { health.ok(); failures = 0; nds.apply(e) }
                Some(Err(e)) => { backoff("nodes watch", e, &health, &mut failures, &shutdown).await; false }
                None => return,
            },
        };
        if changed && svc.synced && eps.synced && nds.synced {
            // A pod's readiness that no Service asleep at zero cares about publishes
            // nothing (which Services those are, the last snapshot says).
            if only_local
                && local::backends(&tx.borrow(), svc.objects.values(), &local.borrow())
                    == local_backends
            {
                continue;
            }
            generation += 1;
            let mut snapshot = model::build(generation, svc.objects.values(), eps.objects.values());
            local_backends = local::backends(&snapshot, svc.objects.values(), &local.borrow());
            local::join(&mut snapshot, &local_backends);
            snapshot.nodes = nds.items.clone();
            model::confine_to_pod_ranges(&mut snapshot);
            if snapshot.refused != refused {
                for (service, ips) in &snapshot.refused {
                    tracing::warn!(%service, ?ips, "endpoints outside every node's pod range ignored");
                }
                refused = snapshot.refused.clone();
            }
            tx.send_replace(Arc::new(snapshot));
        }
    }
}

/// The watcher retries by itself on the next poll; this only keeps a failing API server
/// from being hammered (back-off with jitter), and reports the failure to the node's
/// [`ApiHealth`], which logs an outage once.
pub(crate) async fn backoff(
    what: &str,
    error: watcher::Error,
    health: &ApiHealth,
    failures: &mut u32,
    shutdown: &CancellationToken,
) {
    health.failed(what, &error);
    let delay = api_retry_delay(*failures);
    *failures = failures.saturating_add(1);
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(name: &str, address: &str, heartbeat: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": {crate::tunnel::TUNNEL_ANNOTATION: format!("{address}:10251")}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": address}],
                "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn node_heartbeats_change_nothing() {
        let mut m = node_infos();
        assert!(!m.apply(watcher::Event::Init));
        assert!(!m.apply(watcher::Event::InitApply(node(
            "a",
            "10.0.0.1",
            "2030-01-01T00:00:00Z"
        ))));
        assert!(
            m.apply(watcher::Event::InitDone),
            "the first sync is a change"
        );
        assert_eq!(m.items["a"].tunnel, Some("10.0.0.1:10251".parse().unwrap()));
        // A heartbeat: same address and tunnel.
        assert!(!m.apply(watcher::Event::Apply(node(
            "a",
            "10.0.0.1",
            "2030-01-01T00:00:10Z"
        ))));
        // A new address is a change, and so is a new node or a deleted one.
        assert!(m.apply(watcher::Event::Apply(node(
            "a",
            "10.0.0.9",
            "2030-01-01T00:00:20Z"
        ))));
        assert!(m.apply(watcher::Event::Apply(node(
            "b",
            "10.0.0.2",
            "2030-01-01T00:00:20Z"
        ))));
        assert!(m.apply(watcher::Event::Delete(node(
            "b",
            "10.0.0.2",
            "2030-01-01T00:00:30Z"
        ))));
        // A re-list that finds the same nodes changes nothing.
        assert!(!m.apply(watcher::Event::Init));
        assert!(!m.apply(watcher::Event::InitApply(node(
            "a",
            "10.0.0.9",
            "2030-01-01T00:00:40Z"
        ))));
        assert!(!m.apply(watcher::Event::InitDone));
    }
}
