//! [`WatchCache`]: the watch cache between the API server and any backend, as
//! kube-apiserver's cacher sits above etcd.
//!
//! Why above the backend: every API watcher (each controller informer, each `kubectl get
//! -w`, each node) would otherwise be one watch on the backend; with a remote backend that
//! is one gRPC stream each, and every event decoded once per watcher. Here ONE backend
//! watch of every key feeds an in-memory copy of every object and a bounded ring of recent
//! events, and every API watcher reads the ring. The same cache serves either backend.
//!
//! # What is served from where
//!
//! - Writes and `get` go to the backend (a `get` must see the caller's own last write).
//! - `list` is a consistent read from the cache: it asks the backend for its current
//!   revision, waits until the cache has applied it, and answers from memory at the
//!   cache's revision (at least that one). If the cache does not catch up within
//!   `sync_timeout`, the backend answers the list itself.
//! - `watch` after `r` reads the ring while it still holds every event after `r`; a
//!   watcher further back (or one the ring has overtaken) is handed to a backend watch
//!   from its position, which answers `Expired` if the backend's log no longer reaches it.
//!   With [`CacheConfig::history`] (the control plane's `--watch-history`), a watcher more
//!   than that many revisions behind is `Expired` at once, whatever the backend still
//!   holds: etcd keeps every revision until its next compaction, and the promise of
//!   `--watch-history` (older resourceVersions get 410, as kube-apiserver's watch cache
//!   answers beyond its window) must not depend on the backend.
//!
//! # The feed
//!
//! One task lists every key and then follows a backend watch from the list's revision,
//! applying each event to the objects and the ring before waking the watchers. If the
//! backend reports `Expired` (the feed fell behind a compaction) it lists again and starts
//! the ring afresh, so watchers older than that go to the backend; if the backend is
//! unavailable it retries from the last applied revision. The task ends when the backend
//! closes, and is aborted when the cache is dropped.

use super::{
    Event, EventKind, ListResult, Revision, Store, StoreError, StoredObject, WatchStream, Write,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::watch;

/// How large the cache's ring is and how long a list waits for it.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Events kept in memory for watchers (default 10 000); older ones come from the
    /// backend.
    pub events: usize,
    /// Most bytes of objects (new and previous values) the ring holds (default 64 MiB);
    /// with `events`, whichever keeps fewer events wins, and the latest event is always
    /// kept. Counting alone would let 10 000 versions of a large object sit in memory.
    pub bytes: usize,
    /// Most events a watcher takes from the ring at a time (default 1024).
    pub watch_chunk: usize,
    /// How many of the newest events keep what watchers derived from them once for all
    /// (the API server's parsed JSON, in [`Memo`](super::Memo)s; default 1024). Watchers
    /// keep up within a few events, so older memos are retired: a ring of 10 000 parsed
    /// objects would hold several times the ring's bytes. A watcher further behind
    /// derives for itself.
    pub memo_window: usize,
    /// How long a list waits for the cache to reach the backend's revision before asking
    /// the backend (default 3 s).
    pub sync_timeout: Duration,
    /// Pause before the feed retries an unavailable backend (default 1 s).
    pub retry: Duration,
    /// How many revisions back a watch may start (see the module doc); `None` (the
    /// default): as far back as the backend reaches.
    pub history: Option<Revision>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            events: 10_000,
            bytes: 64 * 1024 * 1024,
            watch_chunk: 1024,
            memo_window: 1024,
            sync_timeout: Duration::from_secs(3),
            retry: Duration::from_secs(1),
            history: None,
        }
    }
}

/// A [`Store`] that serves lists and watches from memory over `backend`. See the module
/// doc.
pub struct WatchCache {
    backend: Arc<dyn Store>,
    shared: Arc<Shared>,
    feed: tokio::task::JoinHandle<()>,
}

struct Shared {
    state: RwLock<State>,
    /// The cache's revision, for watchers and lists to wait on.
    revisions: watch::Sender<Revision>,
    config: CacheConfig,
}

struct State {
    objects: BTreeMap<String, StoredObject>,
    /// Every event up to this revision is applied.
    revision: Revision,
    ring: VecDeque<Arc<Event>>,
    ring_bytes: usize,
    /// The ring holds every event with a revision greater than this.
    complete_after: Revision,
    /// The backend closed: no event will come.
    closed: bool,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned state is still a whole one.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces everything with a fresh list; the ring starts at its revision.
    fn reset(&self, listed: ListResult) {
        {
            let mut state = self.write();
            state.objects = listed
                .items
                .into_iter()
                .map(|o| (o.key.clone(), o))
                .collect();
            state.revision = listed.revision;
            state.ring.clear();
            state.ring_bytes = 0;
            state.complete_after = listed.revision;
        }
        self.revisions.send_replace(listed.revision);
    }

    /// Applies the events of one revision at once (a txn's events share it), so that no
    /// watcher or list ever sees part of a revision: a watcher that took part of one would
    /// skip the rest, as it resumes after the revision it has reached.
    fn apply(&self, batch: Vec<Arc<Event>>) {
        let Some(revision) = batch.last().map(|e| e.revision) else {
            return;
        };
        {
            let mut state = self.write();
            if revision <= state.revision {
                return; // Already applied (a resumed feed may repeat its last revision).
            }
            let batch_len = batch.len();
            for event in batch {
                match event.kind {
                    EventKind::Put => {
                        state
                            .objects
                            .insert(event.object.key.clone(), event.object.clone());
                    }
                    EventKind::Delete => {
                        state.objects.remove(&event.object.key);
                    }
                }
                if self.config.events == 0 {
                    state.complete_after = revision;
                } else {
                    state.ring_bytes += event_bytes(&event);
                    state.ring.push_back(event);
                }
            }
            state.revision = revision;
            // The events that just left the memo window (a batch of several may move it
            // by several).
            let len = state.ring.len();
            let window = self.config.memo_window;
            let leaving = len.saturating_sub(window + batch_len)..len.saturating_sub(window);
            for old in state.ring.range(leaving) {
                old.memo.retire();
            }
            while state.ring.len() > self.config.events
                || (state.ring_bytes > self.config.bytes && state.ring.len() > 1)
            {
                if let Some(old) = state.ring.pop_front() {
                    state.ring_bytes -= event_bytes(&old);
                    state.complete_after = old.revision;
                }
            }
        }
        self.revisions.send_replace(revision);
    }

    fn close(&self) {
        self.write().closed = true;
        self.revisions.send_modify(|_| {});
    }
}

/// What an event held in memory costs, for [`CacheConfig::bytes`] (and the backend's
/// bounded log reads): its key and the bytes of its new and previous values.
pub(crate) fn event_bytes(event: &Event) -> usize {
    event.object.key.len()
        + event.object.value.len()
        + event.prev.as_ref().map_or(0, |p| p.value.len())
}

impl WatchCache {
    /// Lists every key of `backend` and starts following it. Call from within a tokio
    /// runtime; the feed task runs until the backend closes or the cache is dropped.
    pub async fn start(
        backend: Arc<dyn Store>,
        config: CacheConfig,
    ) -> Result<WatchCache, StoreError> {
        let listed = backend.list("").await?;
        let (revisions, _) = watch::channel(listed.revision);
        let shared = Arc::new(Shared {
            state: RwLock::new(State {
                objects: BTreeMap::new(),
                revision: 0,
                ring: VecDeque::new(),
                ring_bytes: 0,
                complete_after: 0,
                closed: false,
            }),
            revisions,
            config,
        });
        let from = listed.revision;
        shared.reset(listed);
        let feed = tokio::spawn(feed(backend.clone(), shared.clone(), from));
        Ok(WatchCache {
            backend,
            shared,
            feed,
        })
    }

    /// How many objects of each resource the cache holds, by the resource's metric name
    /// (`pods`, `deployments.apps`): `apiserver_storage_objects`.
    pub fn object_counts(&self) -> BTreeMap<String, i64> {
        let mut counts = BTreeMap::new();
        for key in self.shared.read().objects.keys() {
            *counts
                .entry(super::metered::resource_of_key(key))
                .or_insert(0) += 1;
        }
        counts
    }

    /// The revision the cache has applied (for tests and diagnostics).
    pub fn cached_revision(&self) -> Revision {
        self.shared.read().revision
    }

    /// Waits until the cache has applied `revision`; `false` if it did not within
    /// `sync_timeout` or the backend closed first.
    async fn wait_for(&self, revision: Revision) -> bool {
        let mut rx = self.shared.revisions.subscribe();
        let reached = async {
            loop {
                {
                    let state = self.shared.read();
                    if state.revision >= revision {
                        return true;
                    }
                    if state.closed {
                        return false;
                    }
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(self.shared.config.sync_timeout, reached)
            .await
            .unwrap_or(false)
    }
}

impl Drop for WatchCache {
    fn drop(&mut self) {
        self.feed.abort();
        self.shared.close();
    }
}

/// The feed task: see the module doc.
async fn feed(backend: Arc<dyn Store>, shared: Arc<Shared>, mut from: Revision) {
    let retry = shared.config.retry;
    loop {
        let mut stream = match backend.watch("", from).await {
            Ok(stream) => stream,
            Err(StoreError::Closed) => break,
            Err(e) => {
                tracing::warn!("the watch cache cannot watch the store, retrying: {e}");
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        let mut ended = true;
        // The events of the revision being read: applied together once the next revision
        // starts or nothing more is ready (a backend hands a txn's events over at once).
        let mut batch: Vec<Arc<Event>> = Vec::new();
        loop {
            let item = if batch.is_empty() {
                stream.next().await
            } else {
                match stream.next().now_or_never() {
                    Some(item) => item,
                    None => {
                        from = from.max(batch[0].revision);
                        shared.apply(std::mem::take(&mut batch));
                        continue;
                    }
                }
            };
            let Some(item) = item else {
                break;
            };
            match item {
                Ok(event) => {
                    if batch
                        .last()
                        .is_some_and(|last| last.revision != event.revision)
                    {
                        from = from.max(batch[0].revision);
                        shared.apply(std::mem::take(&mut batch));
                    }
                    batch.push(event);
                }
                Err(StoreError::Expired { .. }) => {
                    tracing::warn!(
                        from,
                        "the watch cache fell behind the store's log; listing again"
                    );
                    match backend.list("").await {
                        Ok(listed) => {
                            from = listed.revision;
                            shared.reset(listed);
                        }
                        Err(StoreError::Closed) => break,
                        Err(e) => {
                            tracing::warn!("the watch cache cannot list the store: {e}");
                            tokio::time::sleep(retry).await;
                        }
                    }
                    ended = false;
                    break;
                }
                Err(StoreError::Closed) => break,
                Err(e) => {
                    tracing::warn!(from, "the watch cache's store watch failed, resuming: {e}");
                    tokio::time::sleep(retry).await;
                    ended = false;
                    break;
                }
            }
        }
        if ended {
            break; // The backend closed.
        }
    }
    shared.close();
}

impl Store for WatchCache {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<StoredObject>, StoreError>> {
        self.backend.get(key)
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<ListResult, StoreError>> {
        Box::pin(async move {
            let want = self.backend.revision().await?;
            if !self.wait_for(want).await {
                return self.backend.list(prefix).await;
            }
            let state = self.shared.read();
            let items = state
                .objects
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect();
            Ok(ListResult {
                items,
                revision: state.revision,
            })
        })
    }

    fn txn<'a>(&'a self, writes: Vec<Write>) -> BoxFuture<'a, Result<Vec<Arc<Event>>, StoreError>> {
        self.backend.txn(writes)
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        let watcher = Watcher {
            shared: self.shared.clone(),
            backend: self.backend.clone(),
            prefix: prefix.to_owned(),
            position: after,
            revisions: self.shared.revisions.subscribe(),
            pending: VecDeque::new(),
            fallback: None,
        };
        let stream = futures::stream::unfold(Some(watcher), |watcher| async move {
            let mut watcher = watcher?;
            match watcher.next_event().await? {
                Ok(event) => Some((Ok(event), Some(watcher))),
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed();
        Box::pin(futures::future::ready(Ok(stream)))
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        self.backend.revision()
    }
}

/// One API watcher of the cache.
struct Watcher {
    shared: Arc<Shared>,
    backend: Arc<dyn Store>,
    prefix: String,
    /// Every event up to this revision has been delivered or filtered out.
    position: Revision,
    revisions: watch::Receiver<Revision>,
    pending: VecDeque<Arc<Event>>,
    /// Set once the ring no longer reaches `position`: the rest comes from the backend.
    fallback: Option<WatchStream>,
}

enum Step {
    Progress,
    CaughtUp,
    Behind,
    Closed,
}

impl Watcher {
    async fn next_event(&mut self) -> Option<Result<Arc<Event>, StoreError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if let Some(fallback) = &mut self.fallback {
                return fallback.next().await;
            }
            // Marked before looking: an event applied after this wakes `changed()`.
            self.revisions.mark_unchanged();
            match self.fill() {
                Step::Progress => {}
                Step::CaughtUp => {
                    if self.revisions.changed().await.is_err() {
                        return None;
                    }
                }
                Step::Behind => {
                    if let Some(expired) = self.beyond_history() {
                        return Some(Err(expired));
                    }
                    match self.backend.watch(&self.prefix, self.position).await {
                        Ok(stream) => self.fallback = Some(stream),
                        Err(e) => return Some(Err(e)),
                    }
                }
                Step::Closed => return None,
            }
        }
    }

    /// `Expired` if `position` is further behind the cache's revision than
    /// [`CacheConfig::history`] allows.
    fn beyond_history(&self) -> Option<StoreError> {
        let history = self.shared.config.history?;
        let oldest = self.shared.read().revision.saturating_sub(history);
        (self.position < oldest).then_some(StoreError::Expired {
            requested: self.position,
            oldest,
        })
    }

    /// Takes the next chunk of the ring after `position` (never splitting the events of
    /// one revision), queueing those under the prefix.
    fn fill(&mut self) -> Step {
        let state = self.shared.read();
        if self.position < state.complete_after {
            return Step::Behind;
        }
        if self.position >= state.revision {
            return if state.closed {
                Step::Closed
            } else {
                Step::CaughtUp
            };
        }
        let start = state.ring.partition_point(|e| e.revision <= self.position);
        let chunk = self.shared.config.watch_chunk.max(1);
        for (taken, event) in state.ring.range(start..).enumerate() {
            if taken >= chunk && event.revision != self.position {
                break;
            }
            self.position = event.revision;
            if event.object.key.starts_with(&self.prefix) {
                self.pending.push_back(event.clone());
            }
        }
        Step::Progress
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{FjallStore, StoreConfig};

    const LIMIT: Duration = Duration::from_secs(20);

    async fn t<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(LIMIT, f).await.expect("timed out")
    }

    fn v(s: &str) -> bytes::Bytes {
        bytes::Bytes::from(format!("{{\"v\":\"{s}\"}}"))
    }

    async fn take(stream: &mut WatchStream, n: usize) -> Vec<Arc<Event>> {
        let mut out = Vec::new();
        while out.len() < n {
            out.push(t(stream.next()).await.expect("stream ended").unwrap());
        }
        out
    }

    fn revisions(events: &[Arc<Event>]) -> Vec<Revision> {
        events.iter().map(|e| e.revision).collect()
    }

    fn backend(dir: &tempfile::TempDir, log_max_events: usize) -> Arc<FjallStore> {
        let mut c = StoreConfig::new(dir.path());
        c.compaction_interval = Duration::from_secs(3600);
        c.log_max_events = log_max_events;
        Arc::new(FjallStore::open(c).unwrap())
    }

    #[tokio::test]
    async fn watchers_share_one_backend_watch_and_lists_see_every_acknowledged_write() {
        let dir = tempfile::tempdir().unwrap();
        let fjall = backend(&dir, 100_000);
        t(fjall.create("k/r/ns/before", v("b"))).await.unwrap();
        let cache = t(WatchCache::start(fjall.clone(), CacheConfig::default()))
            .await
            .unwrap();
        let mut all = t(cache.watch("", 0)).await.unwrap(); // from the backend's log
        let mut ns = t(cache.watch("k/r/ns/", 1)).await.unwrap(); // from the ring
        for i in 0..20 {
            let written = t(cache.create(&format!("k/r/ns/{i}"), v("x")))
                .await
                .unwrap();
            // Read-your-writes: a list right after a write sees it.
            let listed = t(cache.list("k/r/ns/")).await.unwrap();
            assert!(listed.revision >= written.mod_revision);
            assert!(listed.items.iter().any(|o| o.key == written.key));
        }
        assert_eq!(
            revisions(&take(&mut all, 21).await),
            (1..=21).collect::<Vec<_>>()
        );
        assert_eq!(
            revisions(&take(&mut ns, 20).await),
            (2..=21).collect::<Vec<_>>()
        );
        let deleted = t(cache.delete("k/r/ns/3", None)).await.unwrap();
        let event = take(&mut ns, 1).await.remove(0);
        assert_eq!(event.kind, EventKind::Delete);
        assert_eq!(
            event.object, deleted.object,
            "the delete carries the last value"
        );
    }

    #[tokio::test]
    async fn a_watcher_the_ring_no_longer_reaches_is_served_by_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let fjall = backend(&dir, 100_000);
        let config = CacheConfig {
            events: 3,
            ..CacheConfig::default()
        };
        let cache = t(WatchCache::start(fjall.clone(), config)).await.unwrap();
        for i in 0..10 {
            t(cache.create(&format!("k/r/ns/{i}"), v("x")))
                .await
                .unwrap();
        }
        t(cache.list("")).await.unwrap(); // the cache has applied everything
        assert_eq!(cache.shared.read().ring.len(), 3);
        let mut w = t(cache.watch("", 2)).await.unwrap();
        assert_eq!(
            revisions(&take(&mut w, 8).await),
            (3..=10).collect::<Vec<_>>()
        );
        t(cache.create("k/r/ns/live", v("l"))).await.unwrap();
        assert_eq!(revisions(&take(&mut w, 1).await), [11]);
    }

    #[tokio::test]
    async fn memos_of_events_behind_the_window_are_retired() {
        let dir = tempfile::tempdir().unwrap();
        let fjall = backend(&dir, 100_000);
        let config = CacheConfig {
            memo_window: 2,
            ..CacheConfig::default()
        };
        let cache = t(WatchCache::start(fjall.clone(), config)).await.unwrap();
        let mut w = t(cache.watch("", 0)).await.unwrap();
        let memoize = |e: &Event| {
            let revision = e.revision;
            e.memo.get_or_init(move || revision)
        };
        let mut seen = Vec::new();
        for i in 0..5 {
            t(cache.create(&format!("k/r/ns/{i}"), v("x")))
                .await
                .unwrap();
            let event = take(&mut w, 1).await.remove(0);
            memoize(&event);
            seen.push(event);
        }
        let set: Vec<bool> = seen
            .iter()
            .map(|e| format!("{:?}", e.memo) == "Memo(set)")
            .collect();
        assert_eq!(
            set,
            [false, false, false, true, true],
            "the two newest keep theirs"
        );
        // A watcher that far behind still gets its value, computed for it.
        assert_eq!(*memoize(&seen[0]).unwrap(), seen[0].revision);
        assert_eq!(format!("{:?}", seen[0].memo), "Memo(empty)");
    }

    #[tokio::test]
    async fn a_watcher_beyond_the_history_is_expired_though_the_backend_reaches_it() {
        let dir = tempfile::tempdir().unwrap();
        let fjall = backend(&dir, 100_000); // the backend keeps everything
        let config = CacheConfig {
            events: 3,
            history: Some(5),
            ..CacheConfig::default()
        };
        let cache = t(WatchCache::start(fjall.clone(), config)).await.unwrap();
        for i in 0..10 {
            t(cache.create(&format!("k/r/ns/{i}"), v("x")))
                .await
                .unwrap();
        }
        t(cache.list("")).await.unwrap(); // the cache has applied everything
        let mut old = t(cache.watch("", 2)).await.unwrap();
        let first = t(old.next()).await;
        assert!(
            matches!(
                first,
                Some(Err(StoreError::Expired {
                    requested: 2,
                    oldest: 5
                }))
            ),
            "{first:?}"
        );
        assert!(
            t(old.next()).await.is_none(),
            "the stream ends after Expired"
        );
        // Within the history, behind the ring: from the backend.
        let mut w = t(cache.watch("", 5)).await.unwrap();
        assert_eq!(
            revisions(&take(&mut w, 5).await),
            (6..=10).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn the_ring_is_bounded_in_bytes_and_keeps_the_latest_event() {
        let dir = tempfile::tempdir().unwrap();
        let fjall = backend(&dir, 100_000);
        let config = CacheConfig {
            bytes: 10_000,
            ..CacheConfig::default()
        };
        let cache = t(WatchCache::start(fjall.clone(), config)).await.unwrap();
        let big = "x".repeat(3_000);
        let mut current = t(cache.create("k/r/ns/big", v(&big))).await.unwrap();
        for _ in 0..30 {
            current = t(cache.update("k/r/ns/big", v(&big), Some(current.mod_revision)))
                .await
                .unwrap();
        }
        t(cache.list("")).await.unwrap();
        {
            let state = cache.shared.read();
            // Each update holds its new and previous value: ~6 KB, so one event fits.
            assert_eq!(state.ring.len(), 1);
            assert_eq!(state.ring_bytes, event_bytes(&state.ring[0]));
        }
        let huge = "y".repeat(20_000);
        t(cache.create("k/r/ns/huge", v(&huge))).await.unwrap();
        t(cache.list("")).await.unwrap();
        assert_eq!(cache.shared.read().ring.len(), 1);
        let mut all = t(cache.watch("", 0)).await.unwrap();
        assert_eq!(
            revisions(&take(&mut all, 32).await),
            (1..=32).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_watch_from_a_revision_compacted_everywhere_is_expired() {
        let dir = tempfile::tempdir().unwrap();
        let fjall = backend(&dir, 2);
        let config = CacheConfig {
            events: 2,
            ..CacheConfig::default()
        };
        let cache = t(WatchCache::start(fjall.clone(), config)).await.unwrap();
        for i in 0..6 {
            t(cache.create(&format!("k/r/ns/{i}"), v("x")))
                .await
                .unwrap();
        }
        t(cache.list("")).await.unwrap();
        t(fjall.compact_now()).await.unwrap();
        let mut w = t(cache.watch("", 1)).await.unwrap();
        assert!(matches!(
            t(w.next()).await.unwrap(),
            Err(StoreError::Expired { .. })
        ));
        assert!(t(w.next()).await.is_none());
    }

    #[tokio::test]
    async fn closing_the_backend_ends_the_cache_watches() {
        let dir = tempfile::tempdir().unwrap();
        let fjall = backend(&dir, 100_000);
        let cache = t(WatchCache::start(fjall.clone(), CacheConfig::default()))
            .await
            .unwrap();
        t(cache.create("k/r/ns/a", v("a"))).await.unwrap();
        let mut w = t(cache.watch("", 0)).await.unwrap();
        t(cache.list("")).await.unwrap(); // applied before the close
        fjall.close();
        assert_eq!(revisions(&take(&mut w, 1).await), [1]);
        assert!(t(w.next()).await.is_none());
    }
}
