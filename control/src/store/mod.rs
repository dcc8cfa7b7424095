//! The durable store behind the API server: objects, one global revision, and a revision
//! log that serves watches.
//!
//! Why a trait: the API server only ever speaks to [`Store`], so a second backend (etcd,
//! for a highly available control plane) can be added without touching a handler. The
//! default backend is [`FjallStore`], embedded, one data dir, no server to start.
//! [`EtcdStore`] keeps the cluster in an etcd cluster (`wharf control --store etcd`).
//!
//! # Layers
//!
//! ```text
//! API server ──> WatchCache (lists, watch fan-out) ──> backend (FjallStore, or etcd)
//! ```
//!
//! [`WatchCache`] is itself a [`Store`]: it holds ONE watch of the backend and serves
//! every API watcher and every list from memory, for any backend. A backend only has to
//! be a correct store (the test-only `conformance` suite checks it): atomic, durable writes
//! with compare-and-swap and a multi-key [`Store::txn`], consistent lists, watches from
//! a revision that report `Expired` as a stream item, and TTLs on writes (an etcd lease,
//! fjall's sweeper). Nothing above the seam keeps state a second API server would need:
//! address allocation is store state changed in txns (see `apiserver::ipam`).
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
//!   the stream of [`Store::watch`] starts with [`StoreError::Expired`] (the API server's
//!   410 Gone): a remote backend learns that only once its watch runs, so it is an item.

mod cache;
#[cfg(test)]
pub(crate) mod conformance;
pub mod encryption;
mod etcd_store;
mod fjall_store;
pub mod local_etcd;
pub mod metered;
pub mod migrate;

pub use cache::{CacheConfig, WatchCache};
pub use etcd_store::{
    DEFAULT_COMPACTION_INTERVAL, DEFAULT_PREFIX, EtcdConfig, EtcdStore, EtcdTls, LIST_PAGE,
};
pub use fjall_store::{Clock, FjallStore, StoreConfig, StoreStats, create_restored};
pub use metered::Metered;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::Duration;

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

/// A compute-once slot of any type, shared by every holder of an `Arc<Event>`. Equality
/// ignores it and a clone starts empty: it is a cache, never state.
///
/// A memo can be *retired* (the watch cache retires those of events its watchers have
/// left behind): a retired memo computes for each caller and keeps nothing, so what it
/// held (parsed JSON is several times the stored bytes) does not stay for as long as the
/// event stays in the ring.
#[derive(Default)]
pub struct Memo(std::sync::Mutex<MemoSlot>);

#[derive(Default)]
enum MemoSlot {
    #[default]
    Empty,
    Set(Arc<dyn std::any::Any + Send + Sync>),
    Retired,
}

impl Memo {
    /// The value of type `T` in the slot, computing it with `init` if the slot is empty
    /// (and for each call once it is retired). `None` if the slot already holds a value
    /// of another type.
    pub fn get_or_init<T: std::any::Any + Send + Sync>(
        &self,
        init: impl FnOnce() -> T,
    ) -> Option<Arc<T>> {
        // Computing under the lock makes a second caller wait for the first one's value
        // rather than compute it again. Nothing panics while holding it.
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let value = match &*slot {
            MemoSlot::Set(value) => value.clone(),
            MemoSlot::Retired => return Some(Arc::new(init())),
            MemoSlot::Empty => {
                let value: Arc<dyn std::any::Any + Send + Sync> = Arc::new(init());
                *slot = MemoSlot::Set(value.clone());
                value
            }
        };
        value.downcast::<T>().ok()
    }

    /// Drops what the slot holds, and keeps nothing from now on.
    pub fn retire(&self) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = MemoSlot::Retired;
    }

    fn is_set(&self) -> bool {
        matches!(
            *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            MemoSlot::Set(_)
        )
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
        f.write_str(if self.is_set() {
            "Memo(set)"
        } else {
            "Memo(empty)"
        })
    }
}

/// A consistent list: every object under a prefix as of `revision`. The revision is one
/// that a watch of every key reaches (a write under the store's keys): a backend that
/// shares its keyspace with others answers the last revision under its own prefix.
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
    // Every revision has at least one event, so a watch of every key reaches `listed`'s
    // revision and stops there; only this prefix's events are kept.
    use futures::FutureExt as _;
    let mut stream = store.watch("", at).await?;
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
    // The other events of that revision (a txn, on a backend that gives a txn one
    // revision) are delivered with it: take those that are ready.
    while let Some(Some(Ok(event))) = stream.next().now_or_never() {
        if event.revision != listed.revision {
            break;
        }
        if event.object.key.starts_with(prefix) {
            undo.push(event.clone());
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

/// A live watch: events in revision order. It ends only when the store closes, or after
/// an error item (`Expired` if it starts or falls behind the compaction window,
/// `Unavailable` if the backend went away).
pub type WatchStream = BoxStream<'static, Result<Arc<Event>, StoreError>>;

/// What the backend's failure was, kept whole for the log (the API answers a generic
/// message). Cloning shares it.
#[derive(Clone)]
pub struct Source(pub Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Source {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
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
    /// The backend cannot answer now (down, no quorum, timed out) but may later: the API
    /// answers 503 with `Retry-After`, and the cause is logged from `source`.
    #[error("store unavailable: {what}")]
    Unavailable {
        what: String,
        #[source]
        source: Source,
    },
    #[error("store I/O failed: {0}")]
    Io(String),
}

impl StoreError {
    /// An [`StoreError::Unavailable`] about `what`, caused by `source`.
    pub fn unavailable(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError::Unavailable {
            what: what.into(),
            source: Source(Arc::from(source.into())),
        }
    }
}

/// Errors compare by what they say (an `Unavailable`'s source by its message), so tests
/// can assert on them.
impl PartialEq for StoreError {
    fn eq(&self, other: &Self) -> bool {
        use StoreError as E;
        match (self, other) {
            (E::NotFound { key: a }, E::NotFound { key: b })
            | (E::AlreadyExists { key: a }, E::AlreadyExists { key: b })
            | (E::Io(a), E::Io(b)) => a == b,
            (
                E::Conflict {
                    key: a,
                    expected: ea,
                    actual: aa,
                },
                E::Conflict {
                    key: b,
                    expected: eb,
                    actual: ab,
                },
            ) => (a, ea, aa) == (b, eb, ab),
            (
                E::Expired {
                    requested: ra,
                    oldest: oa,
                },
                E::Expired {
                    requested: rb,
                    oldest: ob,
                },
            ) => (ra, oa) == (rb, ob),
            (E::Closed, E::Closed) => true,
            (
                E::Unavailable {
                    what: a,
                    source: sa,
                },
                E::Unavailable {
                    what: b,
                    source: sb,
                },
            ) => a == b && sa.to_string() == sb.to_string(),
            _ => false,
        }
    }
}

impl Eq for StoreError {}

/// One write of a [`Store::txn`]. The preconditions are those of [`Store::create`],
/// [`Store::update`] and [`Store::delete`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Creates `key`; `AlreadyExists` if present. With a `ttl` the object is deleted (a
    /// normal delete event) once it has not been written for that long: etcd attaches a
    /// lease, fjall's writer sweeps.
    Create {
        key: String,
        value: Bytes,
        ttl: Option<Duration>,
    },
    /// Replaces `key`, which must exist, if its `mod_revision` is `expected` (when given).
    /// The `ttl` replaces the object's previous one (`None`: it no longer expires).
    Update {
        key: String,
        value: Bytes,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    },
    /// Deletes `key`, which must exist, if its `mod_revision` is `expected` (when given).
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

impl Write {
    /// The key this write changes.
    pub fn key(&self) -> &str {
        match self {
            Write::Create { key, .. } | Write::Update { key, .. } | Write::Delete { key, .. } => {
                key
            }
        }
    }
}

/// The operations the API server needs of a store. Every write is atomic with its log
/// entry and durable when the future resolves `Ok`.
///
/// What a backend must provide, and what it may not assume of its callers:
/// - Reads and writes are async and may fail with [`StoreError::Unavailable`] (a remote
///   backend is down or has no quorum); nothing is answered from a synchronous getter.
/// - [`Store::txn`] is the only multi-key write: all of its writes happen or none does.
///   Its events may share one revision (etcd) or take consecutive ones (fjall); watchers
///   see revisions in non-decreasing order either way.
/// - A watch reports everything, including "too old" ([`StoreError::Expired`]), as items
///   of its stream, because a remote backend learns it only once the watch is running.
pub trait Store: Send + Sync + 'static {
    /// The object at `key`, if any.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<StoredObject>, StoreError>>;

    /// Every object whose key starts with `prefix`, ordered by key, and the revision this
    /// list is consistent with (a watch from that revision misses nothing).
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<ListResult, StoreError>>;

    /// Applies `writes` atomically: either every precondition holds and every write takes
    /// effect (the events are answered in order), or nothing changes and the error of the
    /// first failing write is answered. An empty `writes` is a no-op. A txn writes each key
    /// at most once: etcd refuses a key twice in one txn, so callers may not rely on it
    /// (see [`one_write_per_key`]).
    fn txn<'a>(&'a self, writes: Vec<Write>) -> BoxFuture<'a, Result<Vec<Arc<Event>>, StoreError>>;

    /// Events under `prefix` with a revision greater than `after`, in revision order. If
    /// the log no longer holds every revision after `after`, the stream's first item is
    /// `Expired`, and it ends. An `Err` here means the watch could not start at all
    /// (closed, unavailable).
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>>;

    /// The revision of the last acknowledged write, as the backend knows it now.
    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>>;

    /// Creates `key`; `AlreadyExists` if it is present.
    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<StoredObject, StoreError>> {
        self.create_with_ttl(key, value, None)
    }

    /// Creates `key`, to be deleted once it has not been written for `ttl` (see
    /// [`Write::Create`]).
    fn create_with_ttl<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<StoredObject, StoreError>> {
        let write = Write::Create {
            key: key.to_owned(),
            value,
            ttl,
        };
        Box::pin(async move { one(self.txn(vec![write]).await?).map(|e| e.object.clone()) })
    }

    /// Replaces `key`, which must exist. With `expected = Some(rev)` the write happens only
    /// if the object's `mod_revision` is still `rev` (compare-and-swap), else `Conflict`.
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<StoredObject, StoreError>> {
        self.update_with_ttl(key, value, expected, None)
    }

    /// [`Store::update`] with the object's new `ttl` (see [`Write::Update`]).
    fn update_with_ttl<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<StoredObject, StoreError>> {
        let write = Write::Update {
            key: key.to_owned(),
            value,
            expected,
            ttl,
        };
        Box::pin(async move { one(self.txn(vec![write]).await?).map(|e| e.object.clone()) })
    }

    /// Deletes `key` (with the same compare-and-swap as `update`) and returns the delete
    /// event.
    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<Event, StoreError>> {
        let write = Write::Delete {
            key: key.to_owned(),
            expected,
        };
        Box::pin(async move { one(self.txn(vec![write]).await?).map(|e| Event::clone(&e)) })
    }
}

/// `Io` if `writes` writes a key more than once, which a txn may not (see [`Store::txn`]).
pub fn one_write_per_key(writes: &[Write]) -> Result<(), StoreError> {
    let mut keys: Vec<&str> = writes.iter().map(Write::key).collect();
    keys.sort_unstable();
    match keys.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(StoreError::Io(format!(
            "a txn writes {} more than once",
            w[0]
        ))),
        None => Ok(()),
    }
}

/// The single event of a one-write txn.
fn one(mut events: Vec<Arc<Event>>) -> Result<Arc<Event>, StoreError> {
    match (events.pop(), events.is_empty()) {
        (Some(event), true) => Ok(event),
        _ => Err(StoreError::Io(
            "the store answered a one-write txn with another number of events".into(),
        )),
    }
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

        // Retired: what it held is dropped, and each call computes without keeping.
        let held = a.unwrap();
        drop(b);
        memo.retire();
        assert_eq!(Arc::strong_count(&held), 1, "the memo let go of its value");
        let mut calls = 0;
        for want in [10u32, 11] {
            let got = memo.get_or_init(|| {
                calls += 1;
                want
            });
            assert_eq!(*got.unwrap(), want);
        }
        assert_eq!(calls, 2);
        assert_eq!(format!("{memo:?}"), "Memo(empty)");
    }
}
