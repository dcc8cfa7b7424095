//! The durable store behind the API server: objects, one global revision, and a revision
//! log that serves watches.
//!
//! Why a trait: the API server only ever speaks to [`Store`], so a second backend (etcd,
//! for a highly available control plane) can be added without touching a handler. The
//! default backend is [`FjallStore`], embedded, one data dir, no server to start.
//!
//! # Model
//!
//! - A **key** is `GROUP/RESOURCE/NAMESPACE/NAME` (`core` for the legacy group, an empty
//!   namespace for cluster-scoped kinds), e.g. `apps/deployments/default/web` or
//!   `core/nodes//node-1`. Names and namespaces never contain `/`, so a prefix such as
//!   `core/pods/` (every pod) or `core/pods/default/` (one namespace) selects exactly a
//!   collection.
//! - A **value** is the object's JSON as the API server wants it stored, *without*
//!   `metadata.resourceVersion`: the resourceVersion is the revision of the write that
//!   produced the value ([`StoredObject::mod_revision`]), stamped in by the API server when
//!   it decodes, as kube-apiserver does over etcd.
//! - Every successful create, update or delete takes the next **revision**, a global
//!   counter; revisions are never reused, also across restarts.
//! - The **revision log** holds one [`Event`] per revision for a bounded window. A watch
//!   started after revision `N` replays the log from `N + 1`, then follows live writes, in
//!   revision order, with no gaps and no duplicates. If `N` is older than the window,
//!   [`Store::watch`] answers [`StoreError::Expired`] (the API server's 410 Gone).

mod fjall_store;

pub use fjall_store::{FjallStore, StoreConfig, StoreStats};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use std::sync::Arc;

/// The global write counter; an object's resourceVersion.
pub type Revision = u64;

/// One object as stored, with the revisions of its creation and of its last write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    /// JSON without `metadata.resourceVersion`.
    pub value: Bytes,
    /// Revision of the write that produced `value`: the object's resourceVersion.
    pub mod_revision: Revision,
    /// Revision of the create.
    pub create_revision: Revision,
}

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A create (when `prev` is `None`) or an update.
    Put,
    /// A delete; `Event::object` is the last value, at the revision of the delete.
    Delete,
}

/// One entry of the revision log, as watchers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub revision: Revision,
    pub kind: EventKind,
    /// For `Put` the new object (its `mod_revision` is `revision`); for `Delete` the
    /// object as it was just before the delete (its `mod_revision` is the older one).
    pub object: StoredObject,
    /// The object before this write, if it existed. Lets a filtered watch tell an object
    /// that stopped matching (sent as DELETED) from one that never matched.
    pub prev: Option<StoredObject>,
    /// What a consumer derives from this event once for all its readers (the API server's
    /// watch keeps the parsed JSON here, so nine watchers parse an event once, not nine
    /// times). Not part of the event's identity.
    pub memo: Memo,
}

/// A write-once slot of any type, shared by every holder of an `Arc<Event>`. Equality
/// ignores it and a clone starts empty: it is a cache, never state.
#[derive(Default)]
pub struct Memo(std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>);

impl Memo {
    /// The value of type `T` in the slot, computing it with `init` if the slot is empty.
    /// `None` if the slot already holds a value of another type.
    pub fn get_or_init<T: std::any::Any + Send + Sync>(
        &self,
        init: impl FnOnce() -> T,
    ) -> Option<Arc<T>> {
        self.0
            .get_or_init(|| Arc::new(init()))
            .clone()
            .downcast::<T>()
            .ok()
    }
}

impl Clone for Memo {
    fn clone(&self) -> Self {
        Memo::default()
    }
}

impl PartialEq for Memo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Memo {}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Memo(set)"
        } else {
            "Memo(empty)"
        })
    }
}

/// A consistent list: every object under a prefix as of `revision`.
#[derive(Clone, Debug)]
pub struct ListResult {
    pub items: Vec<StoredObject>,
    pub revision: Revision,
}

/// The objects under `prefix` as they were at revision `at`, from a list taken at a later
/// revision (`listed`) and the revision log in between, for any backend: the events after
/// `at` are read from a watch and undone newest first (a create removes its object, an
/// update or delete puts back the value before it). `Expired` when the log no longer
/// reaches `at`. A paginated list serves its later pages this way, so every page shows the
/// collection at the first page's revision, as etcd-backed pages do.
pub async fn list_at(
    store: &dyn Store,
    prefix: &str,
    listed: ListResult,
    at: Revision,
) -> Result<Vec<StoredObject>, StoreError> {
    use futures::StreamExt as _;
    use std::collections::BTreeMap;
    if at >= listed.revision {
        return Ok(listed.items);
    }
    // Every revision has exactly one event, so a watch of every key reaches `listed`'s
    // revision and stops there; only this prefix's events are kept.
    let mut stream = store.watch("", at)?;
    let mut undo = Vec::new();
    let mut reached = false;
    while let Some(event) = stream.next().await {
        let event = event?;
        if event.object.key.starts_with(prefix) {
            undo.push(event.clone());
        }
        if event.revision >= listed.revision {
            reached = true;
            break;
        }
    }
    // A stream that ends early (the store closing) must not pass for the old state.
    if !reached {
        return Err(StoreError::Closed);
    }
    let mut objects: BTreeMap<String, StoredObject> = listed
        .items
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect();
    for event in undo.iter().rev() {
        let key = event.object.key.clone();
        match (event.kind, &event.prev) {
            (EventKind::Put, None) => {
                objects.remove(&key);
            }
            (EventKind::Put, Some(prev)) => {
                objects.insert(key, prev.clone());
            }
            (EventKind::Delete, _) => {
                objects.insert(key, event.object.clone());
            }
        }
    }
    Ok(objects.into_values().collect())
}

/// A live watch: events in revision order. It ends only when the store closes, or with an
/// error (`Expired` if it fell behind the compaction window).
pub type WatchStream = BoxStream<'static, Result<Arc<Event>, StoreError>>;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("{key} not found")]
    NotFound { key: String },
    #[error("{key} already exists")]
    AlreadyExists { key: String },
    #[error("{key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    #[error("revision {requested} is compacted; the oldest revision still watchable is {oldest}")]
    Expired {
        requested: Revision,
        oldest: Revision,
    },
    #[error("store is closed")]
    Closed,
    #[error("store I/O failed: {0}")]
    Io(String),
}

/// The operations the API server needs of a store. Every write is atomic with its log
/// entry and durable when the future resolves `Ok`.
pub trait Store: Send + Sync + 'static {
    /// The object at `key`, if any.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<StoredObject>, StoreError>>;

    /// Every object whose key starts with `prefix`, ordered by key, and the revision this
    /// list is consistent with (a watch from that revision misses nothing).
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<ListResult, StoreError>>;

    /// Creates `key`; `AlreadyExists` if it is present.
    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<StoredObject, StoreError>>;

    /// Replaces `key`, which must exist. With `expected = Some(rev)` the write happens only
    /// if the object's `mod_revision` is still `rev` (compare-and-swap), else `Conflict`.
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<StoredObject, StoreError>>;

    /// Deletes `key` (with the same compare-and-swap as `update`) and returns the delete
    /// event.
    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<Event, StoreError>>;

    /// Events under `prefix` with a revision greater than `after`. `Expired` if the log no
    /// longer holds every revision after `after`.
    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    /// The revision of the last acknowledged write.
    fn revision(&self) -> Revision;

    /// The oldest revision `r` such that `watch(_, r)` still succeeds.
    fn oldest_watchable(&self) -> Revision;
}

/// The key of an object; `namespace` is empty for cluster-scoped kinds.
pub fn object_key(group: &str, resource: &str, namespace: &str, name: &str) -> String {
    format!("{}/{resource}/{namespace}/{name}", group_segment(group))
}

/// The prefix of a collection: all namespaces when `namespace` is `None`.
pub fn collection_prefix(group: &str, resource: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{}/{resource}/{ns}/", group_segment(group)),
        None => format!("{}/{resource}/", group_segment(group)),
    }
}

fn group_segment(group: &str) -> &str {
    if group.is_empty() { "core" } else { group }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefixes_nest() {
        let k = object_key("apps", "deployments", "default", "web");
        assert_eq!(k, "apps/deployments/default/web");
        assert!(k.starts_with(&collection_prefix("apps", "deployments", Some("default"))));
        assert!(k.starts_with(&collection_prefix("apps", "deployments", None)));
        assert!(!k.starts_with(&collection_prefix("apps", "deployments", Some("def"))));
        assert_eq!(object_key("", "nodes", "", "n1"), "core/nodes//n1");
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_memo_computes_once_is_typed_and_is_not_state() {
        let memo = Memo::default();
        let mut calls = 0;
        let a = memo.get_or_init(|| {
            calls += 1;
            7u32
        });
        let b = memo.get_or_init(|| {
            calls += 1;
            8u32
        });
        assert_eq!(calls, 1);
        assert!(Arc::ptr_eq(a.as_ref().unwrap(), b.as_ref().unwrap()));
        assert!(memo.get_or_init(|| "other type").is_none());
        let clone = memo.clone();
        assert_eq!(*clone.get_or_init(|| 9u32).unwrap(), 9);
        assert_eq!(memo, Memo::default());
    }
}
