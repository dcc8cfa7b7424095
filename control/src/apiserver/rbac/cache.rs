//! The [`Policy`] the authorizer reads, kept current by watching the store: the thin,
//! stateful part of RBAC. A request reads the snapshot (one lock, no store call); the
//! snapshot is rebuilt whole from one list whenever a Role, ClusterRole or binding
//! changes (they change rarely, and a rebuild resolves aggregation consistently).
//!
//! The following is [`Followed`]'s: the first request that needs it lists and starts the
//! watch, so every way of building an API server gets one without wiring; the watch
//! ends with the server's shutdown token or when the cache is dropped; a watch that
//! fails or expires re-lists.
//!
//! A denial is answered only after the snapshot is rebuilt from a fresh list and still
//! denies ([`PolicyCache::refresh`]): a binding created a moment ago takes effect on
//! the very next request, whatever the watch's lag.

use super::{Policy, STORE_PREFIX};
use crate::apiserver::followed::Followed;
use crate::store::{Store, StoreError};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The current policy, following the store.
#[derive(Debug)]
pub struct PolicyCache {
    followed: Followed<Policy>,
}

impl Default for PolicyCache {
    fn default() -> Self {
        PolicyCache {
            followed: Followed::new(
                STORE_PREFIX.to_string(),
                Arc::new(|objects| {
                    Policy::from_stored(objects.iter().map(|(k, v)| (k.as_str(), v.clone())))
                }),
            ),
        }
    }
}

impl PolicyCache {
    /// The current policy; the first call lists and starts following the store.
    pub async fn get(
        &self,
        store: &Arc<dyn Store>,
        shutdown: &CancellationToken,
    ) -> Result<Arc<Policy>, StoreError> {
        self.followed.get(store, shutdown).await
    }

    /// The policy as stored now (a fresh list), which also becomes the current one.
    pub async fn refresh(&self, store: &Arc<dyn Store>) -> Result<Arc<Policy>, StoreError> {
        self.followed.refresh(store).await
    }
}
