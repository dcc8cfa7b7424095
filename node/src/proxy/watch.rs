//! The one watch of Services and EndpointSlices a node keeps, feeding both the proxy and
//! the DNS.
//!
//! Two kube-runtime watchers (which re-list on 410 and reconnect on their own) fill two
//! maps; after every event the whole [`Snapshot`] is rebuilt ([`model::build`]) and
//! published on a `tokio::sync::watch` channel with the next generation number. There is
//! no batching delay: an endpoint change reaches the proxy's endpoint sets and the DNS zone
//! as soon as the event arrives (a rebuild of a few hundred Services takes microseconds; a
//! watch channel keeps only the newest snapshot, so a burst of events coalesces by itself
//! when a consumer is slower than the watch). Nothing is published until both initial lists
//! arrived, so consumers never act on half a cluster.

use super::model::{self, Snapshot};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::watcher;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
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

/// Watches until shutdown, publishing a snapshot after every change.
pub async fn run(
    client: kube::Client,
    tx: watch::Sender<Arc<Snapshot>>,
    shutdown: CancellationToken,
) {
    let services = watcher::watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let slices = watcher::watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    );
    let mut services = std::pin::pin!(services);
    let mut slices = std::pin::pin!(slices);
    let mut svc = Mirror::<Service>::new();
    let mut eps = Mirror::<EndpointSlice>::new();
    let mut generation = 0u64;
    loop {
        let changed = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = services.next() => match e {
                Some(Ok(e)) => svc.apply(e),
                Some(Err(e)) => { backoff("services", e, &shutdown).await; false }
                None => return,
            },
            e = slices.next() => match e {
                Some(Ok(e)) => eps.apply(e),
                Some(Err(e)) => { backoff("endpointslices", e, &shutdown).await; false }
                None => return,
            },
        };
        if changed && svc.synced && eps.synced {
            generation += 1;
            let snapshot = model::build(generation, svc.objects.values(), eps.objects.values());
            tx.send_replace(Arc::new(snapshot));
        }
    }
}

/// The watcher retries by itself on the next poll; this only keeps a failing API server
/// from being hammered.
async fn backoff(what: &str, error: watcher::Error, shutdown: &CancellationToken) {
    tracing::warn!(%error, "{what} watch failed; retrying");
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
}
