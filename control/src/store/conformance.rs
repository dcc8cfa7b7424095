//! The backend conformance suite: what every [`Store`] must do, as one generic function
//! over a factory of fresh stores, so that each backend (fjall now, etcd next, and the
//! watch cache over either) runs the same checks.
//!
//! A backend plugs in with a [`Backend`]: a fresh, empty store, and a way to make it
//! forget old revisions (compaction), which every backend has but none in the same shape.
#![allow(clippy::unwrap_used)]

use super::{Event, EventKind, Revision, Store, StoreError, Write, list_at};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

/// One fresh store under test.
pub trait Backend: Send + Sync {
    fn store(&self) -> Arc<dyn Store>;
    /// Compacts the store's log as far as it will go (the latest revision may stay), so
    /// that a watch from revision 0 is `Expired`. Answers the compacted-through revision.
    fn compact(&self) -> BoxFuture<'_, Revision>;
}

const LIMIT: Duration = Duration::from_secs(20);

async fn t<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("a store call timed out")
}

fn v(s: &str) -> Bytes {
    Bytes::from(format!("{{\"v\":\"{s}\"}}"))
}

async fn take(store: &dyn Store, prefix: &str, after: Revision, n: usize) -> Vec<Arc<Event>> {
    let mut stream = t(store.watch(prefix, after)).await.expect("watch starts");
    let mut out = Vec::new();
    while out.len() < n {
        match t(stream.next()).await {
            Some(Ok(event)) => out.push(event),
            Some(Err(e)) => panic!("watch failed after {} events: {e}", out.len()),
            None => panic!("watch ended after {} events", out.len()),
        }
    }
    out
}

/// Runs every check, each on a fresh store from `factory`.
pub async fn run<B: Backend, F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = B>,
{
    compare_and_swap(factory().await.store().as_ref()).await;
    already_exists_takes_no_revision(factory().await.store().as_ref()).await;
    txn_is_all_or_nothing(factory().await.store().as_ref()).await;
    watch_from_a_revision_has_no_gaps_or_duplicates(factory().await.store()).await;
    expired_after_compaction(&factory().await).await;
    list_is_consistent_at_its_revision(factory().await.store().as_ref()).await;
    pages_at_one_revision(factory().await.store().as_ref()).await;
    delete_events_carry_the_last_value(factory().await.store().as_ref()).await;
}

async fn compare_and_swap(store: &dyn Store) {
    let a1 = t(store.create("c/r/ns/a", v("1"))).await.unwrap();
    assert_eq!(a1.create_revision, a1.mod_revision);
    let a2 = t(store.update("c/r/ns/a", v("2"), Some(a1.mod_revision)))
        .await
        .unwrap();
    assert!(a2.mod_revision > a1.mod_revision);
    assert_eq!(a2.create_revision, a1.create_revision);
    let stale = t(store.update("c/r/ns/a", v("3"), Some(a1.mod_revision))).await;
    assert_eq!(
        stale.unwrap_err(),
        StoreError::Conflict {
            key: "c/r/ns/a".into(),
            expected: a1.mod_revision,
            actual: a2.mod_revision
        }
    );
    assert!(matches!(
        t(store.delete("c/r/ns/a", Some(a1.mod_revision))).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        t(store.update("c/r/ns/none", v("x"), None))
            .await
            .unwrap_err(),
        StoreError::NotFound {
            key: "c/r/ns/none".into()
        }
    );
    assert_eq!(
        t(store.get("c/r/ns/a")).await.unwrap().unwrap().value,
        v("2")
    );
    // Unconditional writes still need the object to exist (update) or not (create).
    t(store.update("c/r/ns/a", v("4"), None)).await.unwrap();
    t(store.delete("c/r/ns/a", None)).await.unwrap();
    assert_eq!(t(store.get("c/r/ns/a")).await.unwrap(), None);
}

async fn already_exists_takes_no_revision(store: &dyn Store) {
    t(store.create("c/r/ns/a", v("1"))).await.unwrap();
    let before = t(store.revision()).await.unwrap();
    assert_eq!(
        t(store.create("c/r/ns/a", v("again"))).await.unwrap_err(),
        StoreError::AlreadyExists {
            key: "c/r/ns/a".into()
        }
    );
    assert_eq!(t(store.revision()).await.unwrap(), before);
    assert_eq!(
        t(store.get("c/r/ns/a")).await.unwrap().unwrap().value,
        v("1")
    );
}

async fn txn_is_all_or_nothing(store: &dyn Store) {
    let b = t(store.create("c/r/ns/b", v("b"))).await.unwrap();
    t(store.create("c/r/ns/c", v("c"))).await.unwrap();
    let before = t(store.revision()).await.unwrap();
    let failing = vec![
        Write::Create {
            key: "c/r/ns/a".into(),
            value: v("a"),
            ttl: None,
        },
        Write::Update {
            key: "c/r/ns/b".into(),
            value: v("b2"),
            expected: Some(b.mod_revision + 100),
            ttl: None,
        },
    ];
    assert!(matches!(
        t(store.txn(failing)).await,
        Err(StoreError::Conflict { ref key, .. }) if key == "c/r/ns/b"
    ));
    assert_eq!(t(store.get("c/r/ns/a")).await.unwrap(), None);
    assert_eq!(t(store.revision()).await.unwrap(), before);

    let events = t(store.txn(vec![
        Write::Create {
            key: "c/r/ns/a".into(),
            value: v("a"),
            ttl: None,
        },
        Write::Update {
            key: "c/r/ns/b".into(),
            value: v("b2"),
            expected: Some(b.mod_revision),
            ttl: None,
        },
        Write::Delete {
            key: "c/r/ns/c".into(),
            expected: None,
        },
    ]))
    .await
    .unwrap();
    let shape: Vec<(EventKind, &str)> = events
        .iter()
        .map(|e| (e.kind, e.object.key.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            (EventKind::Put, "c/r/ns/a"),
            (EventKind::Put, "c/r/ns/b"),
            (EventKind::Delete, "c/r/ns/c")
        ]
    );
    assert!(events.windows(2).all(|w| w[0].revision <= w[1].revision));
    // Watchers see the txn's events too, in the same order.
    let seen = take(store, "c/r/ns/", before, 3).await;
    assert_eq!(
        seen.iter()
            .map(|e| e.object.key.as_str())
            .collect::<Vec<_>>(),
        ["c/r/ns/a", "c/r/ns/b", "c/r/ns/c"]
    );
    assert_eq!(t(store.txn(Vec::new())).await.unwrap(), Vec::new());
}

async fn watch_from_a_revision_has_no_gaps_or_duplicates(store: Arc<dyn Store>) {
    const WRITERS: usize = 4;
    const EACH: usize = 25;
    let start = t(store.revision()).await.unwrap();
    let mut all = t(store.watch("c/", start)).await.unwrap();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.spawn(async move {
            for i in 0..EACH {
                let key = format!("c/r/w{w}/{i}");
                let made = store.create(&key, v("x")).await.unwrap();
                store
                    .update(&key, v("y"), Some(made.mod_revision))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = t(writers.join_next()).await {
        done.unwrap();
    }
    let total = WRITERS * EACH * 2;
    let mut seen = Vec::new();
    while seen.len() < total {
        seen.push(t(all.next()).await.expect("stream ended").unwrap());
    }
    let revisions: Vec<Revision> = seen.iter().map(|e| e.revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "in order, once each"
    );
    assert!(revisions[0] > start);
    // Every write is there: each key's create then its update.
    for w in 0..WRITERS {
        for i in 0..EACH {
            let key = format!("c/r/w{w}/{i}");
            let of_key: Vec<_> = seen.iter().filter(|e| e.object.key == key).collect();
            assert_eq!(of_key.len(), 2, "{key}");
            assert!(
                of_key[0].prev.is_none() && of_key[1].prev.is_some(),
                "{key}"
            );
        }
    }
    // A watch from the middle starts right after it.
    let middle = revisions[total / 2];
    let rest = take(store.as_ref(), "c/", middle, total - total / 2 - 1).await;
    assert_eq!(
        rest.iter().map(|e| e.revision).collect::<Vec<_>>(),
        revisions[total / 2 + 1..]
    );
}

async fn expired_after_compaction<B: Backend>(backend: &B) {
    let store = backend.store();
    for i in 0..10 {
        t(store.create(&format!("c/r/ns/{i}"), v("x")))
            .await
            .unwrap();
    }
    let through = t(backend.compact()).await;
    assert!(through >= 1, "compacted through {through}");
    let mut w = t(store.watch("", 0)).await.expect("the watch starts");
    match t(w.next()).await {
        Some(Err(StoreError::Expired { requested, oldest })) => {
            assert_eq!(requested, 0);
            assert!(oldest >= 1);
        }
        other => panic!("expected Expired, got {other:?}"),
    }
    assert!(t(w.next()).await.is_none(), "the stream ends after Expired");
    // From the compacted-through revision on, the events are still there.
    let latest = t(store.revision()).await.unwrap();
    let after = take(store.as_ref(), "", through, 1).await;
    assert!(after[0].revision > through && after[0].revision <= latest);
}

async fn list_is_consistent_at_its_revision(store: &dyn Store) {
    for i in 0..5 {
        t(store.create(&format!("c/r/a/{i}"), v("x")))
            .await
            .unwrap();
        t(store.create(&format!("c/r/b/{i}"), v("x")))
            .await
            .unwrap();
    }
    let listed = t(store.list("c/r/a/")).await.unwrap();
    let keys: Vec<&str> = listed.items.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        ["c/r/a/0", "c/r/a/1", "c/r/a/2", "c/r/a/3", "c/r/a/4"],
        "ordered by key, only the prefix"
    );
    assert!(
        listed
            .items
            .iter()
            .all(|o| o.mod_revision <= listed.revision)
    );
    // A watch from the list's revision misses nothing and repeats nothing.
    let late = t(store.create("c/r/a/late", v("l"))).await.unwrap();
    let next = take(store, "c/r/a/", listed.revision, 1).await;
    assert_eq!(next[0].object, late);
    // And the collection at an earlier revision can be rebuilt from a later list.
    let now = t(store.list("c/r/a/")).await.unwrap();
    let then = t(list_at(store, "c/r/a/", now, listed.revision))
        .await
        .unwrap();
    assert_eq!(then, listed.items);
}

async fn pages_at_one_revision(store: &dyn Store) {
    for i in 0..7 {
        t(store.create(&format!("c/r/p/{i}"), v(&i.to_string())))
            .await
            .unwrap();
    }
    // Page 1 (limit 3) fixes the revision; writes land before the next pages, which are
    // served at that revision (the continue token's), as the API server does.
    let first = t(store.list("c/r/p/")).await.unwrap();
    let at = first.revision;
    let snapshot = first.items.clone();
    let mut pages = vec![first.items[..3].to_vec()];
    let mut last_key = pages[0][2].key.clone();
    t(store.delete("c/r/p/4", None)).await.unwrap();
    t(store.create("c/r/p/9", v("9"))).await.unwrap();
    let current = t(store.get("c/r/p/5")).await.unwrap().unwrap();
    t(store.update("c/r/p/5", v("changed"), Some(current.mod_revision)))
        .await
        .unwrap();
    loop {
        let now = t(store.list("c/r/p/")).await.unwrap();
        let items = t(list_at(store, "c/r/p/", now, at)).await.unwrap();
        let page: Vec<_> = items
            .into_iter()
            .filter(|o| o.key > last_key)
            .take(3)
            .collect();
        let Some(last) = page.last() else {
            break;
        };
        last_key = last.key.clone();
        pages.push(page);
    }
    assert_eq!(
        pages.concat(),
        snapshot,
        "every page shows the first page's revision"
    );
    assert_eq!(pages.len(), 3);
}

async fn delete_events_carry_the_last_value(store: &dyn Store) {
    let made = t(store.create("c/r/ns/d", v("1"))).await.unwrap();
    let updated = t(store.update("c/r/ns/d", v("2"), Some(made.mod_revision)))
        .await
        .unwrap();
    let deleted = t(store.delete("c/r/ns/d", Some(updated.mod_revision)))
        .await
        .unwrap();
    assert_eq!(deleted.kind, EventKind::Delete);
    assert_eq!(
        deleted.object, updated,
        "the last value, at its own revision"
    );
    assert!(deleted.revision > updated.mod_revision);
    let seen = take(store, "c/r/ns/", updated.mod_revision, 1).await;
    assert_eq!(seen[0].kind, EventKind::Delete);
    assert_eq!(seen[0].object, updated);
    assert_eq!(seen[0].revision, deleted.revision);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CacheConfig, FjallStore, StoreConfig, WatchCache};

    struct Fjall {
        store: Arc<FjallStore>,
        _dir: tempfile::TempDir,
    }

    fn fjall_config(dir: &tempfile::TempDir) -> StoreConfig {
        let mut c = StoreConfig::new(dir.path());
        c.log_max_events = 2;
        c.compaction_interval = Duration::from_secs(3600);
        c
    }

    async fn fjall() -> Fjall {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FjallStore::open(fjall_config(&dir)).unwrap());
        Fjall { store, _dir: dir }
    }

    impl Backend for Fjall {
        fn store(&self) -> Arc<dyn Store> {
            self.store.clone()
        }
        fn compact(&self) -> BoxFuture<'_, Revision> {
            Box::pin(async { self.store.compact_now().await.unwrap() })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fjall_conforms() {
        run(fjall).await;
    }

    /// The watch cache over fjall, with a ring as short as the log.
    struct Cached {
        cache: Arc<WatchCache>,
        fjall: Fjall,
    }

    impl Backend for Cached {
        fn store(&self) -> Arc<dyn Store> {
            self.cache.clone()
        }
        fn compact(&self) -> BoxFuture<'_, Revision> {
            self.fjall.compact()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watch_cache_over_fjall_conforms() {
        run(|| async {
            let fjall = fjall().await;
            let config = CacheConfig {
                events: 2,
                ..CacheConfig::default()
            };
            let cache = Arc::new(
                WatchCache::start(fjall.store.clone(), config)
                    .await
                    .unwrap(),
            );
            Cached { cache, fjall }
        })
        .await;
    }
}

/// The suite against a real etcd (Debian's `etcd-server`, installed by `scripts/deps`):
/// one server for the test binary, a fresh key prefix per store.
#[cfg(test)]
pub(crate) mod etcd {
    use super::*;
    use crate::store::{CacheConfig, EtcdConfig, EtcdStore, WatchCache, local_etcd::LocalEtcd};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The shared server's client URL (started on first use).
    pub(crate) async fn server_url() -> String {
        tokio::task::spawn_blocking(|| LocalEtcd::shared().map(|s| s.client_url.clone()))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("the etcd these tests need did not start: {e}"))
    }

    /// Tests that compact the shared server hold this, so no other test's history goes
    /// away under it.
    pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// A store under a prefix no other store of this process uses.
    pub(crate) async fn fresh_store() -> Arc<EtcdStore> {
        static N: AtomicU64 = AtomicU64::new(0);
        let mut config = EtcdConfig::new(vec![server_url().await]);
        config.prefix = format!(
            "/test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        config.compaction_interval = None;
        Arc::new(EtcdStore::connect(config).await.unwrap())
    }

    pub(crate) struct Etcd {
        pub(crate) store: Arc<EtcdStore>,
    }

    impl Backend for Etcd {
        fn store(&self) -> Arc<dyn Store> {
            self.store.clone()
        }
        fn compact(&self) -> BoxFuture<'_, Revision> {
            Box::pin(async {
                // Keep the latest revision: a watch from the one before it still works.
                let latest = self.store.revision().await.unwrap();
                self.store.compact(latest).await.unwrap();
                latest - 1
            })
        }
    }

    async fn etcd() -> Etcd {
        Etcd {
            store: fresh_store().await,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_conforms() {
        let _serial = SERIAL.lock().await;
        run(etcd).await;
    }

    struct Cached {
        cache: Arc<WatchCache>,
        etcd: Etcd,
    }

    impl Backend for Cached {
        fn store(&self) -> Arc<dyn Store> {
            self.cache.clone()
        }
        fn compact(&self) -> BoxFuture<'_, Revision> {
            self.etcd.compact()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watch_cache_over_etcd_conforms() {
        let _serial = SERIAL.lock().await;
        run(|| async {
            let etcd = etcd().await;
            let config = CacheConfig {
                events: 2,
                ..CacheConfig::default()
            };
            let cache = Arc::new(WatchCache::start(etcd.store.clone(), config).await.unwrap());
            Cached { cache, etcd }
        })
        .await;
    }
}
