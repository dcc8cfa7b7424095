//! Copying a cluster's state from one store into another, as `wharf migrate` does from the
//! embedded store into etcd.
//!
//! Why it is simple: objects are stored without their resourceVersion (the revision of
//! the write is stamped in when read), so each value is copied as it is and arrives whole;
//! only the resourceVersions change, to the target's revisions. The allocator state is
//! ordinary keys and comes along. Events get the target's TTL again (their age restarts).

use super::{Store, StoreError, Write, collection_prefix};
use std::time::Duration;

/// Creates per txn (etcd takes at most 128 operations in one by default).
pub const BATCH: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the target store already holds {0} objects; migrate into an empty store (another etcd prefix)"
    )]
    NotEmpty(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether `key` is an Event's (which expires after `--event-ttl`).
pub fn is_event(key: &str) -> bool {
    key.starts_with(&collection_prefix("", "events", None))
        || key.starts_with(&collection_prefix("events.k8s.io", "events", None))
}

/// Copies every object of `from` into `to`, which must be empty; Events expire after
/// `event_ttl` in `to`. Answers how many objects were copied. `from` should not be written
/// meanwhile (its control plane stopped): the copy is its state at one revision.
pub async fn copy_all(
    from: &dyn Store,
    to: &dyn Store,
    event_ttl: Duration,
) -> Result<usize, MigrateError> {
    let present = to.list("").await?.items.len();
    if present > 0 {
        return Err(MigrateError::NotEmpty(present));
    }
    let listed = from.list("").await?;
    for chunk in listed.items.chunks(BATCH) {
        let writes = chunk
            .iter()
            .map(|o| Write::Create {
                key: o.key.clone(),
                value: o.value.clone(),
                ttl: is_event(&o.key).then_some(event_ttl),
            })
            .collect();
        to.txn(writes).await?;
    }
    Ok(listed.items.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::conformance::etcd::fresh_store;
    use crate::store::{FjallStore, StoreConfig};
    use bytes::Bytes;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_object_moves_from_fjall_to_etcd_whole() {
        let dir = tempfile::tempdir().unwrap();
        let fjall = FjallStore::open(StoreConfig::new(dir.path())).unwrap();
        let n = BATCH * 2 + 5;
        for i in 0..n {
            let value = Bytes::from(format!("{{\"i\":{i}}}"));
            fjall
                .create(&format!("core/configmaps/ns/c{i:04}"), value)
                .await
                .unwrap();
        }
        fjall
            .create_with_ttl(
                "core/events/ns/e1",
                Bytes::from_static(b"{}"),
                Some(Duration::from_secs(3600)),
            )
            .await
            .unwrap();
        let etcd = fresh_store().await;
        let copied = copy_all(&fjall, etcd.as_ref(), Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(copied, n + 1);
        let before = fjall.list("").await.unwrap().items;
        let after = etcd.list("").await.unwrap().items;
        let shape = |items: &[crate::store::StoredObject]| -> Vec<(String, Bytes)> {
            items
                .iter()
                .map(|o| (o.key.clone(), o.value.clone()))
                .collect()
        };
        assert_eq!(shape(&after), shape(&before));
        // Once is all: a second copy would mix two clusters.
        assert!(matches!(
            copy_all(&fjall, etcd.as_ref(), Duration::from_secs(3600)).await,
            Err(MigrateError::NotEmpty(k)) if k == n + 1
        ));
        assert!(is_event("core/events/ns/e1") && is_event("events.k8s.io/events/ns/e"));
        assert!(!is_event("core/eventsx/ns/e") && !is_event("core/pods/ns/events"));
    }
}
