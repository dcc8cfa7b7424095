//! A snapshot built from every stored object under one key prefix, kept current by
//! watching the store: what a request reads without a store call (the RBAC policy,
//! [`super::rbac::cache`]; the kinds that CustomResourceDefinitions add,
//! [`super::registry::custom::Kinds`]).
//!
//! The first read lists and starts the watch, so every way of building an API server gets
//! one without wiring. The watch task ends with the server's shutdown token, when the
//! snapshot is dropped, or when the store is: it holds the store weakly, so a server
//! dropped without a shutdown closes its store as before; a watch that fails or expires
//! re-lists. [`Followed::refresh`]
//! rebuilds from a fresh list at once, for a reader that must see a write of a moment
//! ago whatever the watch's lag.

use crate::store::{Store, StoreError};
use futures::StreamExt;
use serde_json::Value;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Builds the snapshot from the stored objects (their keys and decoded JSON, in key
/// order).
pub type Build<T> = Arc<dyn Fn(Vec<(String, Value)>) -> T + Send + Sync>;

type Slot<T> = Arc<RwLock<Option<Arc<T>>>>;

/// The snapshot of what is under `prefix`, and the task that follows the store.
pub struct Followed<T> {
    prefix: String,
    build: Build<T>,
    current: Slot<T>,
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl<T> std::fmt::Debug for Followed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Followed")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl<T> Drop for Followed<T> {
    fn drop(&mut self) {
        if let Ok(mut f) = self.follower.lock()
            && let Some(task) = f.take()
        {
            task.abort();
        }
    }
}

async fn load<T>(
    store: &dyn Store,
    prefix: &str,
    build: &Build<T>,
) -> Result<(T, u64), StoreError> {
    let listed = store.list(prefix).await?;
    let objects = listed
        .items
        .iter()
        .filter_map(|o| Some((o.key.clone(), serde_json::from_slice(&o.value).ok()?)))
        .collect();
    Ok((build(objects), listed.revision))
}

fn put<T>(slot: &Slot<T>, value: Arc<T>) {
    if let Ok(mut s) = slot.write() {
        *s = Some(value);
    }
}

impl<T: Send + Sync + 'static> Followed<T> {
    pub fn new(prefix: String, build: Build<T>) -> Self {
        Followed {
            prefix,
            build,
            current: Arc::new(RwLock::new(None)),
            follower: Mutex::new(None),
        }
    }

    /// The current snapshot; the first call lists and starts following the store.
    pub async fn get(
        &self,
        store: &Arc<dyn Store>,
        shutdown: &CancellationToken,
    ) -> Result<Arc<T>, StoreError> {
        if let Some(v) = self.current.read().ok().and_then(|s| s.clone()) {
            return Ok(v);
        }
        let (value, revision) = load(store.as_ref(), &self.prefix, &self.build).await?;
        let value = Arc::new(value);
        put(&self.current, value.clone());
        if let Ok(mut follower) = self.follower.lock()
            && follower.is_none()
        {
            *follower = Some(tokio::spawn(follow(
                self.current.clone(),
                Arc::downgrade(store),
                self.prefix.clone(),
                self.build.clone(),
                shutdown.clone(),
                revision,
            )));
        }
        Ok(value)
    }

    /// The snapshot as stored now (a fresh list), which also becomes the current one.
    pub async fn refresh(&self, store: &Arc<dyn Store>) -> Result<Arc<T>, StoreError> {
        let (value, _) = load(store.as_ref(), &self.prefix, &self.build).await?;
        let value = Arc::new(value);
        put(&self.current, value.clone());
        Ok(value)
    }
}

/// Rebuilds the snapshot after every change under `prefix` from `revision` on.
async fn follow<T>(
    slot: Slot<T>,
    store: Weak<dyn Store>,
    prefix: String,
    build: Build<T>,
    shutdown: CancellationToken,
    mut revision: u64,
) {
    const RETRY: Duration = Duration::from_secs(1);
    loop {
        let Some(strong) = store.upgrade() else {
            return;
        };
        let watched = strong.watch(&prefix, revision).await;
        drop(strong);
        let changed = match watched {
            Ok(mut stream) => tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => matches!(ev, Some(Ok(_))),
            },
            Err(e) => {
                tracing::warn!(error = %e, %prefix, "watching; retrying");
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
        let Some(strong) = store.upgrade() else {
            return;
        };
        match load(strong.as_ref(), &prefix, &build).await {
            Ok((value, rev)) => {
                put(&slot, Arc::new(value));
                revision = rev;
            }
            Err(e) => tracing::warn!(error = %e, %prefix, "listing; retrying"),
        }
    }
}
