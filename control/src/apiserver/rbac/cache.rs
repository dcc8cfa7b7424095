//! The [`Policy`] the authorizer reads, kept current by watching the store: the thin,
//! stateful part of RBAC. A request reads the snapshot (one lock, no store call); the
//! snapshot is rebuilt whole from one list whenever a Role, ClusterRole or binding
//! changes (they change rarely, and a rebuild resolves aggregation consistently).
//!
//! The first request that needs it lists and starts the watch, so every way of building
//! an API server gets one without wiring. The watch task ends with the server's shutdown
//! token or when the cache is dropped. A watch that fails or expires re-lists.
//!
//! A denial is answered only after the snapshot is rebuilt from a fresh list and still
//! denies ([`PolicyCache::refresh`]): a binding created a moment ago takes effect on
//! the very next request, whatever the watch's lag.

use super::{Policy, STORE_PREFIX};
use crate::store::{Store, StoreError};
use futures::StreamExt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

type Slot = Arc<RwLock<Option<Arc<Policy>>>>;

/// The current policy, and the task that follows the store.
#[derive(Default)]
pub struct PolicyCache {
    current: Slot,
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for PolicyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyCache").finish_non_exhaustive()
    }
}

impl Drop for PolicyCache {
    fn drop(&mut self) {
        if let Ok(mut f) = self.follower.lock()
            && let Some(task) = f.take()
        {
            task.abort();
        }
    }
}

async fn load(store: &dyn Store) -> Result<(Arc<Policy>, u64), StoreError> {
    let listed = store.list(STORE_PREFIX).await?;
    let objects = listed.items.iter().filter_map(|o| {
        let v = serde_json::from_slice(&o.value).ok()?;
        Some((o.key.as_str(), v))
    });
    Ok((Arc::new(Policy::from_stored(objects)), listed.revision))
}

fn put(slot: &Slot, policy: Arc<Policy>) {
    if let Ok(mut s) = slot.write() {
        *s = Some(policy);
    }
}

impl PolicyCache {
    /// The current policy; the first call lists and starts following the store.
    pub async fn get(
        &self,
        store: &Arc<dyn Store>,
        shutdown: &CancellationToken,
    ) -> Result<Arc<Policy>, StoreError> {
        if let Some(p) = self.current.read().ok().and_then(|s| s.clone()) {
            return Ok(p);
        }
        let (policy, revision) = load(store.as_ref()).await?;
        put(&self.current, policy.clone());
        if let Ok(mut follower) = self.follower.lock()
            && follower.is_none()
        {
            *follower = Some(tokio::spawn(follow(
                self.current.clone(),
                store.clone(),
                shutdown.clone(),
                revision,
            )));
        }
        Ok(policy)
    }

    /// The policy as stored now (a fresh list), which also becomes the current one.
    pub async fn refresh(&self, store: &Arc<dyn Store>) -> Result<Arc<Policy>, StoreError> {
        let (policy, _) = load(store.as_ref()).await?;
        put(&self.current, policy.clone());
        Ok(policy)
    }
}

/// Rebuilds the snapshot after every change under [`STORE_PREFIX`] from `revision` on.
async fn follow(slot: Slot, store: Arc<dyn Store>, shutdown: CancellationToken, mut revision: u64) {
    const RETRY: Duration = Duration::from_secs(1);
    loop {
        let changed = match store.watch(STORE_PREFIX, revision).await {
            Ok(mut stream) => tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => matches!(ev, Some(Ok(_))),
            },
            Err(e) => {
                tracing::warn!(error = %e, "watching RBAC objects; retrying");
                false
            }
        };
        if !changed {
            // Expired, ended or failed: re-list after a pause (not a wait for state).
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
        match load(store.as_ref()).await {
            Ok((policy, rev)) => {
                put(&slot, policy);
                revision = rev;
            }
            Err(e) => tracing::warn!(error = %e, "listing RBAC objects; retrying"),
        }
    }
}
