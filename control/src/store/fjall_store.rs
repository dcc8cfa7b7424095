//! [`FjallStore`]: the default [`Store`], embedded in the control-plane process on top of
//! [fjall](https://docs.rs/fjall) 3 (an LSM-tree with atomic cross-keyspace batches and a
//! write-ahead journal). One data dir, no server to start.
//!
//! # Key layout
//!
//! Four keyspaces in one fjall database, always written together in one atomic batch:
//!
//! | keyspace  | key                          | value |
//! |-----------|------------------------------|-------|
//! | `objects` | the store key, UTF-8 (`core/pods/default/web-1`) | 8-byte BE `mod_revision`, 8-byte BE `create_revision`, then the JSON |
//! | `log`     | 8-byte BE revision (so keys sort by revision) | one encoded [`Event`], see below |
//! | `meta`    | `revision`, `compacted`      | 8-byte BE: the last written revision; the revision the log is compacted through |
//! | `expiry`  | the store key of an object written with a TTL | 8-byte BE deadline, [`Clock`] milliseconds |
//!
//! A `log` value is: format byte (`1`), 8-byte BE wall-clock milliseconds of the write
//! (for age-based compaction), kind byte (0 put, 1 delete), prev byte (0 none, 1 present,
//! 2 same as the object — a delete), 4-byte BE key length and key, then the object
//! (8-byte BE `mod_revision`, 8-byte BE `create_revision`, 4-byte BE length, bytes) and,
//! if the prev byte is 1, the previous object in the same shape.
//!
//! # Reads: everything is in memory
//!
//! Every object is also held in a `BTreeMap` behind a `RwLock`, loaded from `objects` at
//! open (the writer checks preconditions against it, as etcd keeps its index in memory).
//! `get` and `list` only read that map: they never touch the disk and a list's `(items,
//! revision)` is taken under one lock, so it is consistent. Recent events are not kept
//! here: fanning events out to many watchers is the job of the backend-agnostic
//! [`super::WatchCache`] above this store, which holds the one live watch of it.
//!
//! # Writes: one writer thread, group commit
//!
//! Every write is a message to one dedicated OS thread (not a tokio task, because fjall is
//! synchronous and an fsync must not stall the runtime); the caller awaits a oneshot reply.
//! The writer takes everything queued (up to `max_batch` ops), checks each op's
//! precondition (exists / does not exist / `mod_revision` compare-and-swap) against memory
//! plus an overlay of the earlier ops of the same batch, gives the ops that pass
//! consecutive revisions, and writes their objects, their log entries and the new `meta`
//! revision in ONE fjall batch, committed with an fsync of the journal. Only then does it
//! apply them to memory, advance the visible revision, wake the watchers and reply. So a
//! reader never sees a write that is not durable, and a write that was acknowledged
//! survives `kill -9` or a power cut. An op whose precondition fails takes no revision; a
//! txn is decided whole (against its own earlier ops too): if one of its ops fails, none
//! of them takes effect. One fsync is shared by the whole batch: under concurrent load the
//! cost of durability is paid once per batch, not once per write (the lever measured in
//! `BENCHMARKS.md`).
//!
//! **Durability: `PersistMode::SyncData` (`fdatasync`).** fjall preallocates each journal
//! file (64 MiB, `set_len` + `fsync` at creation) and `fsync`s both the file and its
//! directory when it rotates to a new journal, so an append to the active journal changes
//! no metadata that is needed to read it back; `fdatasync` flushes the data (and, per
//! POSIX, the file size should it grow) and skips the inode timestamps that `SyncAll`
//! would also write. Same guarantee, one less metadata write per commit.
//!
//! If a commit (journal write or fsync) fails, every op of that batch gets
//! [`StoreError::Io`] and the store enters a failed state that refuses every further
//! write: after a failed fsync the state of the disk is unknown (and fjall poisons the
//! database), so the only safe way on is to reopen, which recovers from the journal.
//!
//! # Crash story
//!
//! A fresh store is created whole in a sibling `DIR.init` and renamed into place, so a
//! process killed during its very first start leaves no half-created database: the next
//! start removes the leftover and creates it again (see `initialise_if_fresh`).
//!
//! fjall recovers its journal on open: a batch is either wholly present or wholly absent,
//! and every batch that was acknowledged was fsynced first. Because objects, log entry and
//! `meta.revision` are in the same batch, they always agree. On open the store loads
//! `objects` into memory and takes the current revision as the maximum of
//! `meta.revision`, the last `log` key and the largest `mod_revision` (they are equal
//! unless something is wrong, which is logged), so revisions are never reused across
//! restarts. The compacted-through revision is `meta.compacted`, cross-checked with the
//! first `log` key. Watches started after a restart replay older revisions from the `log`
//! keyspace on disk.
//!
//! # Watch
//!
//! A watch stream keeps a position (the last revision it has passed) and loops: read a
//! bounded chunk of the `log` keyspace after the position on tokio's blocking pool (just
//! written entries are still in fjall's memtable); filter by key prefix; when caught up, await a `tokio::sync::watch` notification of the
//! next committed revision. Nothing is pushed to watchers, so a slow watcher never lags
//! or drops: it only reads from further back. Order, no gaps and no duplicates follow
//! from the log having exactly one entry per revision. If the revisions a watcher needs
//! were compacted away meanwhile, it yields [`StoreError::Expired`] and ends. All streams
//! end (`None`) when the store closes.
//!
//! # TTLs
//!
//! A write with a `ttl` records its deadline in `expiry` in the same batch (a write
//! without one, or a delete, removes it); the deadlines are also kept in memory, ordered.
//! Every `compaction_interval` the writer deletes the objects whose deadline has passed,
//! as ordinary deletes with their events, which is what an etcd lease does when it runs
//! out. Deadlines use the configured [`Clock`], so tests drive time instead of waiting.
//!
//! # Compaction
//!
//! The log keeps a window bounded by count (`log_max_events`) and by age (`log_max_age`),
//! whichever keeps fewer events, and always keeps the latest event. The writer thread
//! compacts every `compaction_interval` (at most 10 000 entries per pass, so writes are
//! never held up for long): it advances the in-memory compacted-through revision first
//! (so new watches from before it are refused at once), then deletes the old log entries
//! and records `meta.compacted` in one batch. That batch is not fsynced on its own: if it
//! is lost in a crash, the entries simply come back and are compacted again.
//! [`Store::oldest_watchable`] is the compacted-through revision: a watch after `r` needs
//! `r + 1..`, which are still in the log.
//!
//! Ages use the wall clock: a clock that jumps back keeps entries longer, one that jumps
//! forward compacts them earlier (the count bound still holds).

use super::cache::event_bytes;
use super::{
    Event, EventKind, ListResult, Revision, Store, StoreError, StoredObject, WatchStream, Write,
};
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use futures::future::BoxFuture;
use futures::stream::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, watch};

const OBJECTS: &str = "objects";
const LOG: &str = "log";
const META: &str = "meta";
const EXPIRY: &str = "expiry";
const META_REVISION: &[u8] = b"revision";
const META_COMPACTED: &[u8] = b"compacted";

/// Format byte of a `log` value.
const LOG_FORMAT: u8 = 1;
/// Bytes of events after which a watcher's read of the disk log stops (at least one
/// event is always read).
const WATCH_READ_BYTES: usize = 8 * 1024 * 1024;
/// Most expired objects one sweep deletes.
const SWEEP_CHUNK: usize = 1000;
/// Most log entries one compaction pass deletes.
const COMPACTION_CHUNK: u64 = 10_000;
/// The durability of a write batch; see the module doc.
const DURABILITY: PersistMode = PersistMode::SyncData;

/// How to open a [`FjallStore`]. [`StoreConfig::new`] gives the defaults; the fields are
/// public so tests (and operators) can shrink or grow the windows.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The data dir; created if missing. Only one process may open it at a time.
    pub dir: PathBuf,
    /// Most events the revision log keeps (default 100 000).
    pub log_max_events: usize,
    /// Oldest event the revision log keeps (default 15 minutes). With `log_max_events`,
    /// whichever keeps fewer events wins; the latest event is always kept.
    pub log_max_age: Duration,
    /// Most writes committed together with one fsync (default 256).
    pub max_batch: usize,
    /// How often the writer compacts the log (default 1 s).
    pub compaction_interval: Duration,
    /// Most log entries a watcher reads from the log at a time (default 1024).
    pub watch_chunk: usize,
    /// The clock object TTLs are measured with (default: the system clock); tests drive
    /// their own.
    pub clock: Clock,
}

/// A wall clock, for object TTLs.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(Arc::new(SystemTime::now))
    }

    /// A clock that reads `now`.
    pub fn new(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    fn millis(&self) -> u64 {
        (self.0)()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

impl StoreConfig {
    /// The defaults, with the data in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            log_max_events: 100_000,
            log_max_age: Duration::from_secs(15 * 60),
            max_batch: 256,
            compaction_interval: Duration::from_secs(1),
            watch_chunk: 1024,
            clock: Clock::system(),
        }
    }
}

/// Counters of the writer, for benchmarks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// fjall batches committed with an fsync (each holds one or more writes).
    pub commits: u64,
    /// Writes that took a revision.
    pub writes: u64,
}

/// The embedded, durable [`Store`]. See the module doc for the design.
///
/// Open it with [`FjallStore::open`]; drop it or call [`FjallStore::close`] to stop the
/// writer thread, release the data dir and end every watch stream.
pub struct FjallStore {
    shared: Arc<Shared>,
    sender: mpsc::Sender<Command>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore")
            .field("revision", &self.current_revision())
            .field("oldest_watchable", &self.oldest_watchable())
            .finish_non_exhaustive()
    }
}

/// What readers, watchers and the writer share.
struct Shared {
    state: RwLock<State>,
    /// The `log` keyspace, for watchers. `None` once closed.
    log: RwLock<Option<Keyspace>>,
    /// A receiver to clone for each watcher; the writer thread owns the sender, so every
    /// `changed()` fails once the writer has exited.
    revisions: watch::Receiver<Revision>,
    closed: AtomicBool,
    commits: AtomicU64,
    writes: AtomicU64,
    watch_chunk: usize,
}

/// The in-memory view; changed only by the writer thread, after a durable commit.
struct State {
    objects: BTreeMap<String, StoredObject>,
    revision: Revision,
    compacted: Revision,
    /// The deadline (clock milliseconds) of every object written with a TTL.
    expiries: HashMap<String, u64>,
    /// The same, ordered by deadline, for the sweeper.
    deadlines: BTreeSet<(u64, String)>,
}

impl Shared {
    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        // The writer never panics while holding the lock; if it somehow did, the state is
        // still the last fully applied one, since a batch is applied with no fallible step.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    /// Reads the log entries `from..=upper` from disk (blocking). `Ok(None)` if the store is
    /// closed; `Expired` if `from` is no longer in the log.
    fn read_log(
        &self,
        from: Revision,
        upper: Revision,
    ) -> Result<Option<Vec<Arc<Event>>>, StoreError> {
        let guard = self.log.read().unwrap_or_else(PoisonError::into_inner);
        let Some(log) = guard.as_ref() else {
            return Ok(None);
        };
        let mut events = Vec::new();
        let mut bytes = 0usize;
        let entries = log.range(from.to_be_bytes()..=upper.to_be_bytes());
        for (expect, item) in (from..).zip(entries) {
            // A chunk is bounded in bytes too: a watcher far behind on large objects
            // holds a few megabytes at a time, not `watch_chunk` of them.
            if bytes >= WATCH_READ_BYTES {
                break;
            }
            let (key, value) = item
                .into_inner()
                .map_err(|e| io_err(format!("reading the revision log at {expect}"), e))?;
            let revision = decode_revision_key(&key)?;
            if revision != expect {
                if events.is_empty() {
                    break; // `from` itself is gone: compacted meanwhile.
                }
                return Err(StoreError::Io(format!(
                    "the revision log is missing revision {expect} (found {revision})"
                )));
            }
            let (event, _time) = decode_log_entry(revision, &value)?;
            bytes += event_bytes(&event);
            events.push(Arc::new(event));
        }
        if events.is_empty() {
            let oldest = self.read_state().compacted;
            return Err(StoreError::Expired {
                requested: from.saturating_sub(1),
                oldest,
            });
        }
        Ok(Some(events))
    }
}

type Reply = oneshot::Sender<Result<Vec<Arc<Event>>, StoreError>>;

/// An event a batch will commit, with the TTL deadline of its object (clock milliseconds).
type Decided = (Arc<Event>, Option<u64>);

enum Command {
    /// One txn: all of its writes or none.
    Write {
        writes: Vec<Write>,
        reply: Reply,
    },
    Compact {
        reply: oneshot::Sender<Result<Revision, StoreError>>,
    },
    Sweep {
        reply: oneshot::Sender<usize>,
    },
    Close,
}

/// The event `write` produces at `revision` if `current` is the object now, or why not.
fn apply(
    write: &Write,
    current: Option<&StoredObject>,
    revision: Revision,
) -> Result<Event, StoreError> {
    match (write, current) {
        (Write::Create { key, .. }, Some(_)) => Err(StoreError::AlreadyExists { key: key.clone() }),
        (Write::Create { key, value, .. }, None) => Ok(Event {
            revision,
            kind: EventKind::Put,
            object: StoredObject {
                key: key.clone(),
                value: value.clone(),
                mod_revision: revision,
                create_revision: revision,
            },
            prev: None,
            memo: Default::default(),
        }),
        (Write::Update { key, .. } | Write::Delete { key, .. }, None) => {
            Err(StoreError::NotFound { key: key.clone() })
        }
        (
            Write::Update {
                key,
                value,
                expected,
                ..
            },
            Some(cur),
        ) => {
            check_expected(key, *expected, cur)?;
            Ok(Event {
                revision,
                kind: EventKind::Put,
                object: StoredObject {
                    key: key.clone(),
                    value: value.clone(),
                    mod_revision: revision,
                    create_revision: cur.create_revision,
                },
                prev: Some(cur.clone()),
                memo: Default::default(),
            })
        }
        (Write::Delete { key, expected }, Some(cur)) => {
            check_expected(key, *expected, cur)?;
            Ok(Event {
                revision,
                kind: EventKind::Delete,
                object: cur.clone(),
                prev: Some(cur.clone()),
                memo: Default::default(),
            })
        }
    }
}

fn check_expected(
    key: &str,
    expected: Option<Revision>,
    cur: &StoredObject,
) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != cur.mod_revision => Err(StoreError::Conflict {
            key: key.to_owned(),
            expected,
            actual: cur.mod_revision,
        }),
        _ => Ok(()),
    }
}

impl FjallStore {
    /// Opens (or creates) the store in `config.dir`: recovers fjall's journal, loads every
    /// object into memory and starts the writer thread.
    ///
    /// This blocks on disk I/O proportional to the data set: call it at startup or from
    /// `tokio::task::spawn_blocking`. Fails with [`StoreError::Io`] if the dir cannot be
    /// opened, is locked by another process, or holds data this version cannot read.
    pub fn open(config: StoreConfig) -> Result<FjallStore, StoreError> {
        let dir = config.dir.clone();
        let ctx = |what: &str| format!("opening the store in {}: {what}", dir.display());
        initialise_if_fresh(&config.dir)?;
        let db = Database::builder(&config.dir)
            .open()
            .map_err(|e| io_err(ctx("database"), e))?;
        let objects = db
            .keyspace(OBJECTS, KeyspaceCreateOptions::default)
            .map_err(|e| io_err(ctx("keyspace objects"), e))?;
        let log = db
            .keyspace(LOG, KeyspaceCreateOptions::default)
            .map_err(|e| io_err(ctx("keyspace log"), e))?;
        let meta = db
            .keyspace(META, KeyspaceCreateOptions::default)
            .map_err(|e| io_err(ctx("keyspace meta"), e))?;
        let expiry = db
            .keyspace(EXPIRY, KeyspaceCreateOptions::default)
            .map_err(|e| io_err(ctx("keyspace expiry"), e))?;

        let recovered = recover(&objects, &log, &meta, &expiry).map_err(|e| match e {
            StoreError::Io(msg) => StoreError::Io(ctx(&msg)),
            other => other,
        })?;
        tracing::debug!(
            dir = %config.dir.display(),
            objects = recovered.objects.len(),
            revision = recovered.revision,
            compacted = recovered.compacted,
            "store opened"
        );

        let (rev_tx, rev_rx) = watch::channel(recovered.revision);
        let shared = Arc::new(Shared {
            state: RwLock::new(State {
                objects: recovered.objects,
                revision: recovered.revision,
                compacted: recovered.compacted,
                deadlines: recovered
                    .expiries
                    .iter()
                    .map(|(k, d)| (*d, k.clone()))
                    .collect(),
                expiries: recovered.expiries,
            }),
            log: RwLock::new(Some(log.clone())),
            revisions: rev_rx,
            closed: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            watch_chunk: config.watch_chunk.max(1),
        });
        let (sender, receiver) = mpsc::channel();
        let writer = Writer {
            db,
            objects,
            log,
            meta,
            expiry,
            clock: config.clock.clone(),
            shared: shared.clone(),
            receiver,
            revisions: rev_tx,
            failed: None,
            max_batch: config.max_batch.max(1),
            log_max_events: config.log_max_events,
            log_max_age: config.log_max_age,
            compaction_interval: config.compaction_interval,
        };
        let handle = std::thread::Builder::new()
            .name("wharf-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Io(ctx(&format!("starting the writer thread: {e}"))))?;
        Ok(FjallStore {
            shared,
            sender,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Stops the store: writes already queued are committed, later ones fail with
    /// [`StoreError::Closed`], reads fail with `Closed`, every watch stream ends after the
    /// events it can still read from memory, and the data dir is released (so it can be
    /// reopened) by the time this returns. Idempotent; `Drop` calls it.
    ///
    /// Blocks until the writer thread has finished its current batch (one fsync), so in
    /// async code prefer calling it from `spawn_blocking` or at shutdown.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        // Waits for in-flight disk reads of watchers; later ones see `None` and end.
        drop(
            self.shared
                .log
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // Fails only if the writer already exited, which join then observes.
            let _ = self.sender.send(Command::Close);
            if handle.join().is_err() {
                tracing::error!("the store writer thread panicked");
            }
        }
    }

    /// Runs a compaction pass now (instead of waiting for the periodic one) and returns
    /// the revision the log is compacted through. Mostly for tests.
    pub async fn compact_now(&self) -> Result<Revision, StoreError> {
        self.shared.check_open()?;
        let (reply, rx) = oneshot::channel();
        self.sender
            .send(Command::Compact { reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Deletes the objects whose TTL has passed now (instead of waiting for the periodic
    /// sweep) and returns how many. Mostly for tests, which drive the clock.
    pub async fn sweep_now(&self) -> Result<usize, StoreError> {
        self.shared.check_open()?;
        let (reply, rx) = oneshot::channel();
        self.sender
            .send(Command::Sweep { reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Counters of the writer: commits (fsyncs) and writes so far, since open.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
        }
    }

    /// Queues a txn for the writer and returns the future of its reply. If the caller
    /// drops the future, the txn still happens (or not) as if it had waited.
    fn submit(
        &self,
        writes: Vec<Write>,
    ) -> BoxFuture<'static, Result<Vec<Arc<Event>>, StoreError>> {
        let queued = self.shared.check_open().and_then(|()| {
            let (reply, rx) = oneshot::channel();
            self.sender
                .send(Command::Write { writes, reply })
                .map_err(|_| StoreError::Closed)?;
            Ok(rx)
        });
        Box::pin(async move {
            match queued {
                // The writer drops the reply without answering only when it is gone.
                Ok(rx) => rx.await.unwrap_or(Err(StoreError::Closed)),
                Err(e) => Err(e),
            }
        })
    }

    /// The revision the log is compacted through: a watch after it still gets every event
    /// (for tests and diagnostics; the API never asks).
    pub fn oldest_watchable(&self) -> Revision {
        self.shared.read_state().compacted
    }

    /// The revision of the last committed write (for tests and diagnostics).
    pub fn current_revision(&self) -> Revision {
        self.shared.read_state().revision
    }
}

impl Drop for FjallStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Store for FjallStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<StoredObject>, StoreError>> {
        let result = self
            .shared
            .check_open()
            .map(|()| self.shared.read_state().objects.get(key).cloned());
        Box::pin(futures::future::ready(result))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<ListResult, StoreError>> {
        let result = self.shared.check_open().map(|()| {
            let state = self.shared.read_state();
            let items = state
                .objects
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect();
            ListResult {
                items,
                revision: state.revision,
            }
        });
        Box::pin(futures::future::ready(result))
    }

    fn txn<'a>(&'a self, writes: Vec<Write>) -> BoxFuture<'a, Result<Vec<Arc<Event>>, StoreError>> {
        if writes.is_empty() {
            return Box::pin(futures::future::ready(Ok(Vec::new())));
        }
        self.submit(writes)
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        let result = self.shared.check_open().map(|()| {
            let oldest = self.shared.read_state().compacted;
            if after < oldest {
                let expired = StoreError::Expired {
                    requested: after,
                    oldest,
                };
                return futures::stream::once(futures::future::ready(Err(expired))).boxed();
            }
            let watcher = Watcher {
                shared: self.shared.clone(),
                prefix: prefix.to_owned(),
                position: after,
                revisions: self.shared.revisions.clone(),
                pending: VecDeque::new(),
            };
            futures::stream::unfold(Some(watcher), |watcher| async move {
                let mut watcher = watcher?;
                match watcher.next_event().await? {
                    Ok(event) => Some((Ok(event), Some(watcher))),
                    Err(e) => Some((Err(e), None)),
                }
            })
            .boxed()
        });
        Box::pin(futures::future::ready(result))
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        let result = self
            .shared
            .check_open()
            .map(|()| self.shared.read_state().revision);
        Box::pin(futures::future::ready(result))
    }
}

/// The state of one watch stream.
struct Watcher {
    shared: Arc<Shared>,
    prefix: String,
    /// Every revision up to this one has been delivered or filtered out.
    position: Revision,
    revisions: watch::Receiver<Revision>,
    /// Matching events read but not yet yielded.
    pending: VecDeque<Arc<Event>>,
}

enum Step {
    Progress,
    CaughtUp,
    Closed,
}

impl Watcher {
    /// The next matching event; `None` once the store is closed and everything it had
    /// committed was delivered.
    async fn next_event(&mut self) -> Option<Result<Arc<Event>, StoreError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            // Marked before looking at the state: a commit after this point, even one that
            // `fill` just missed, makes `changed()` return at once.
            self.revisions.mark_unchanged();
            match self.fill().await {
                Ok(Step::Progress) => {}
                Ok(Step::CaughtUp) => {
                    if self.revisions.changed().await.is_err() {
                        return None; // The writer is gone: the store is closed.
                    }
                }
                Ok(Step::Closed) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Moves `position` forward over the next chunk of revisions of the log, queueing
    /// those that match the prefix.
    async fn fill(&mut self) -> Result<Step, StoreError> {
        let from = self.position + 1;
        let chunk = self.shared.watch_chunk;
        let upper = {
            let state = self.shared.read_state();
            if state.revision < from {
                return Ok(Step::CaughtUp);
            }
            state.revision.min(from.saturating_add(chunk as u64 - 1))
        };
        let shared = self.shared.clone();
        let read = tokio::task::spawn_blocking(move || shared.read_log(from, upper))
            .await
            .map_err(|e| StoreError::Io(format!("reading the revision log: {e}")))?;
        let Some(events) = read? else {
            return Ok(Step::Closed);
        };
        for event in events {
            self.position = event.revision;
            if event.object.key.starts_with(&self.prefix) {
                self.pending.push_back(event);
            }
        }
        Ok(Step::Progress)
    }
}

/// The writer thread: the only code that changes the database or the in-memory state.
struct Writer {
    db: Database,
    objects: Keyspace,
    log: Keyspace,
    meta: Keyspace,
    expiry: Keyspace,
    clock: Clock,
    shared: Arc<Shared>,
    receiver: mpsc::Receiver<Command>,
    revisions: watch::Sender<Revision>,
    /// Set when a commit failed; every later write is refused with this message.
    failed: Option<String>,
    max_batch: usize,
    log_max_events: usize,
    log_max_age: Duration,
    compaction_interval: Duration,
}

impl Writer {
    fn run(mut self) {
        let mut next_compaction = Instant::now() + self.compaction_interval;
        let mut batch: Vec<(Vec<Write>, Reply)> = Vec::with_capacity(self.max_batch);
        let mut compact_requests = Vec::new();
        let mut sweep_requests: Vec<oneshot::Sender<usize>> = Vec::new();
        loop {
            let wait = next_compaction.saturating_duration_since(Instant::now());
            let mut closing = false;
            let mut next = match self.receiver.recv_timeout(wait) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    closing = true;
                    None
                }
            };
            // Group commit: take what is queued, up to the cap. A compaction request ends
            // the batch so it sees every write queued before it.
            while let Some(command) = next.take() {
                match command {
                    Command::Write { writes, reply } => batch.push((writes, reply)),
                    Command::Compact { reply } => {
                        compact_requests.push(reply);
                        break;
                    }
                    Command::Sweep { reply } => {
                        sweep_requests.push(reply);
                        break;
                    }
                    Command::Close => {
                        closing = true;
                        break;
                    }
                }
                if batch.len() >= self.max_batch {
                    break;
                }
                next = match self.receiver.try_recv() {
                    Ok(command) => Some(command),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => {
                        closing = true;
                        None
                    }
                };
            }
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
            if closing {
                break;
            }
            let due = Instant::now() >= next_compaction;
            if due || !sweep_requests.is_empty() {
                let swept = self.sweep();
                for reply in sweep_requests.drain(..) {
                    let _ = reply.send(swept);
                }
            }
            if due || !compact_requests.is_empty() {
                let result = self.compact();
                let more = matches!(result, Ok((_, true)));
                for reply in compact_requests.drain(..) {
                    let _ = reply.send(result.clone().map(|(through, _)| through));
                }
                if let Err(e) = result {
                    tracing::error!("compacting the revision log: {e}");
                }
                if due || more {
                    next_compaction = if more {
                        Instant::now()
                    } else {
                        Instant::now() + self.compaction_interval
                    };
                }
            }
        }
        // Anything still queued after Close is refused; dropping the receiver then makes
        // later sends fail, and dropping `revisions` ends every watch stream.
        while let Ok(command) = self.receiver.try_recv() {
            match command {
                Command::Write { reply, .. } => {
                    let _ = reply.send(Err(StoreError::Closed));
                }
                Command::Compact { reply } => {
                    let _ = reply.send(Err(StoreError::Closed));
                }
                Command::Sweep { .. } | Command::Close => {}
            }
        }
        tracing::debug!("store writer stopped");
    }

    /// Checks, commits (one fsync) and applies one batch of writes, then replies to each.
    fn commit(&mut self, batch: &mut Vec<(Vec<Write>, Reply)>) {
        if let Some(reason) = &self.failed {
            let err = refused(reason);
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(err.clone()));
            }
            return;
        }

        // Decide: preconditions against memory plus the earlier txns of this batch. A txn
        // decides against its own earlier writes too, and leaves no trace if one fails.
        let now = self.clock.millis();
        let mut outcomes: Vec<Result<Vec<Decided>, StoreError>> = Vec::with_capacity(batch.len());
        let last = {
            let state = self.shared.read_state();
            let mut overlay: HashMap<&str, Option<StoredObject>> = HashMap::new();
            let mut revision = state.revision;
            for (writes, _) in batch.iter() {
                let mut local: HashMap<&str, Option<StoredObject>> = HashMap::new();
                let mut events = Vec::with_capacity(writes.len());
                let mut failed = None;
                for write in writes {
                    let key = write.key();
                    let current = match local.get(key).or_else(|| overlay.get(key)) {
                        Some(in_batch) => in_batch.as_ref(),
                        None => state.objects.get(key),
                    };
                    match apply(write, current, revision + events.len() as u64 + 1) {
                        Ok(event) => {
                            let after = match event.kind {
                                EventKind::Put => Some(event.object.clone()),
                                EventKind::Delete => None,
                            };
                            local.insert(key, after);
                            let deadline = match write {
                                Write::Create { ttl, .. } | Write::Update { ttl, .. } => {
                                    ttl.map(|ttl| {
                                        now.saturating_add(
                                            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                                        )
                                    })
                                }
                                Write::Delete { .. } => None,
                            };
                            events.push((Arc::new(event), deadline));
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                outcomes.push(match failed {
                    Some(e) => Err(e),
                    None => {
                        revision += events.len() as u64;
                        overlay.extend(local);
                        Ok(events)
                    }
                });
            }
            revision
        };

        let events: Vec<&Decided> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .flatten()
            .collect();
        if !events.is_empty() {
            if let Err(e) = self.persist(&events, last) {
                let reason = e.to_string();
                tracing::error!("store commit failed, refusing further writes: {reason}");
                self.failed = Some(reason);
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
                return;
            }

            // Durable: now make it visible.
            {
                let mut state = self.shared.write_state();
                for (event, deadline) in &events {
                    let key = &event.object.key;
                    if let Some(old) = state.expiries.remove(key) {
                        state.deadlines.remove(&(old, key.clone()));
                    }
                    if let Some(deadline) = deadline {
                        state.expiries.insert(key.clone(), *deadline);
                        state.deadlines.insert((*deadline, key.clone()));
                    }
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
                }
                state.revision = last;
            }
            self.shared.commits.fetch_add(1, Ordering::Relaxed);
            self.shared
                .writes
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            self.revisions.send_replace(last);
        }

        for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
            let _ = reply.send(outcome.map(|events| events.into_iter().map(|(e, _)| e).collect()));
        }
    }

    /// Writes `events` (objects, log entries, TTL deadlines, meta revision) in one fjall
    /// batch and fsyncs.
    fn persist(&self, events: &[&Decided], last: Revision) -> Result<(), StoreError> {
        let time = wall_clock_millis();
        let mut batch = self.db.batch().durability(Some(DURABILITY));
        // Whether each key has a deadline on disk, as this batch goes.
        let mut has_deadline: HashMap<&str, bool> = HashMap::new();
        let state = self.shared.read_state();
        for (event, deadline) in events {
            let key = event.object.key.as_bytes();
            let had = *has_deadline
                .entry(event.object.key.as_str())
                .or_insert_with(|| state.expiries.contains_key(&event.object.key));
            match deadline {
                Some(d) => batch.insert(&self.expiry, key, d.to_be_bytes()),
                None if had => batch.remove(&self.expiry, key),
                None => {}
            }
            has_deadline.insert(event.object.key.as_str(), deadline.is_some());
            match event.kind {
                EventKind::Put => batch.insert(&self.objects, key, encode_object(&event.object)),
                EventKind::Delete => batch.remove(&self.objects, key),
            }
            batch.insert(
                &self.log,
                event.revision.to_be_bytes(),
                encode_log_entry(event, time),
            );
        }
        drop(state);
        batch.insert(&self.meta, META_REVISION, last.to_be_bytes());
        batch
            .commit()
            .map_err(|e| io_err(format!("committing revisions up to {last}"), e))
    }

    /// Deletes the objects whose TTL has passed (at most [`SWEEP_CHUNK`]), each as a
    /// normal delete with its event, as an etcd lease expiring does. Returns how many.
    fn sweep(&mut self) -> usize {
        let now = self.clock.millis();
        let expired: Vec<String> = self
            .shared
            .read_state()
            .deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .take(SWEEP_CHUNK)
            .map(|(_, key)| key.clone())
            .collect();
        if expired.is_empty() {
            return 0;
        }
        let count = expired.len();
        let mut batch: Vec<(Vec<Write>, Reply)> = expired
            .into_iter()
            .map(|key| {
                // Nobody awaits these replies.
                let (reply, _) = oneshot::channel();
                (
                    vec![Write::Delete {
                        key,
                        expected: None,
                    }],
                    reply,
                )
            })
            .collect();
        self.commit(&mut batch);
        tracing::debug!(count, "deleted objects whose TTL passed");
        count
    }

    /// One compaction pass. Returns the compacted-through revision and whether more is
    /// left to compact (the pass is capped at [`COMPACTION_CHUNK`] entries).
    fn compact(&mut self) -> Result<(Revision, bool), StoreError> {
        if let Some(reason) = &self.failed {
            return Err(refused(reason));
        }
        let (revision, compacted) = {
            let state = self.shared.read_state();
            (state.revision, state.compacted)
        };
        // Always keep the latest event.
        let max_cut = revision.saturating_sub(1);
        if max_cut <= compacted {
            return Ok((compacted, false));
        }
        let limit = max_cut.min(compacted + COMPACTION_CHUNK);
        let keep = u64::try_from(self.log_max_events).unwrap_or(u64::MAX);
        let by_count = revision.saturating_sub(keep).min(max_cut);
        let mut cut = by_count.max(compacted);
        let mut more = cut > limit;
        cut = cut.min(limit);

        // By age: walk forward from the cut while entries are older than the window.
        if cut < limit {
            let max_age = u64::try_from(self.log_max_age.as_millis()).unwrap_or(u64::MAX);
            let cutoff = wall_clock_millis().saturating_sub(max_age);
            let mut reached_young = false;
            for item in self
                .log
                .range((cut + 1).to_be_bytes()..=limit.to_be_bytes())
            {
                let (key, value) = item
                    .into_inner()
                    .map_err(|e| io_err("reading the revision log for compaction".into(), e))?;
                let entry_revision = decode_revision_key(&key)?;
                if log_entry_time(entry_revision, &value)? > cutoff {
                    reached_young = true;
                    break;
                }
                cut = entry_revision;
            }
            if !reached_young && cut == limit && limit < max_cut {
                more = true;
            }
        }
        if cut <= compacted {
            return Ok((compacted, false));
        }

        // Refuse new watches from before the cut first, then delete.
        self.shared.write_state().compacted = cut;
        let mut batch = self.db.batch();
        for r in compacted + 1..=cut {
            batch.remove(&self.log, r.to_be_bytes());
        }
        batch.insert(&self.meta, META_COMPACTED, cut.to_be_bytes());
        if let Err(e) = batch.commit() {
            let err = io_err(format!("compacting the revision log through {cut}"), e);
            self.failed = Some(err.to_string());
            return Err(err);
        }
        tracing::debug!(
            through = cut,
            removed = cut - compacted,
            "compacted the revision log"
        );
        Ok((cut, more))
    }
}

struct Recovered {
    objects: BTreeMap<String, StoredObject>,
    expiries: HashMap<String, u64>,
    revision: Revision,
    compacted: Revision,
}

/// Rebuilds the in-memory state from disk; see "Crash story" in the module doc.
fn recover(
    objects: &Keyspace,
    log: &Keyspace,
    meta: &Keyspace,
    expiry: &Keyspace,
) -> Result<Recovered, StoreError> {
    let read_meta = |key: &[u8]| -> Result<Revision, StoreError> {
        match meta
            .get(key)
            .map_err(|e| io_err("reading meta".into(), e))?
        {
            Some(v) => decode_u64(&v).ok_or_else(|| StoreError::Io("corrupt meta value".into())),
            None => Ok(0),
        }
    };
    let meta_revision = read_meta(META_REVISION)?;
    let meta_compacted = read_meta(META_COMPACTED)?;
    let log_key = |guard: Option<fjall::Guard>| -> Result<Option<Revision>, StoreError> {
        guard
            .map(|g| {
                let key = g
                    .key()
                    .map_err(|e| io_err("reading the revision log".into(), e))?;
                decode_revision_key(&key)
            })
            .transpose()
    };
    let log_first = log_key(log.first_key_value())?;
    let log_last = log_key(log.last_key_value())?;

    let mut map = BTreeMap::new();
    let mut max_mod = 0;
    for item in objects.iter() {
        let (key, value) = item
            .into_inner()
            .map_err(|e| io_err("reading objects".into(), e))?;
        let key = String::from_utf8(key.to_vec())
            .map_err(|_| StoreError::Io("an object key is not UTF-8".into()))?;
        let object = decode_object(&key, &value)?;
        max_mod = max_mod.max(object.mod_revision);
        map.insert(key, object);
    }

    let revision = meta_revision.max(log_last.unwrap_or(0)).max(max_mod);
    if revision != meta_revision || log_last.is_some_and(|l| l != revision) {
        tracing::warn!(
            meta_revision,
            ?log_last,
            max_mod_revision = max_mod,
            "store revisions disagree on open; continuing after the largest"
        );
    }
    let compacted = match log_first {
        Some(first) => meta_compacted.max(first - 1),
        None => meta_compacted.max(revision),
    }
    .min(revision);
    // Deadlines of objects that exist (one written and deleted in a crash window is gone).
    let mut expiries = HashMap::new();
    for item in expiry.iter() {
        let (key, value) = item
            .into_inner()
            .map_err(|e| io_err("reading expiries".into(), e))?;
        let key = String::from_utf8(key.to_vec())
            .map_err(|_| StoreError::Io("an expiry key is not UTF-8".into()))?;
        let deadline =
            decode_u64(&value).ok_or_else(|| StoreError::Io("corrupt expiry value".into()))?;
        if map.contains_key(&key) {
            expiries.insert(key, deadline);
        }
    }
    Ok(Recovered {
        expiries,
        objects: map,
        revision,
        compacted,
    })
}

/// fjall's format marker: written (and fsynced) last when a database is created, so a
/// data dir without a readable one was never fully created and holds no data.
const FJALL_VERSION_MARKER: &str = "version";
/// fjall's lock file: the first file it creates in a new database.
const FJALL_LOCK_FILE: &str = "lock";

/// The sibling directory a fresh store is created in before it is renamed into place.
fn init_dir(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".init");
    dir.with_file_name(name)
}

/// Where a data dir stands before it is opened.
#[derive(Debug, PartialEq, Eq)]
enum DirState {
    /// Absent or empty: create a store in it.
    Fresh,
    /// fjall's files without a readable format marker: a first start that was killed
    /// while fjall created the database (it holds no data). Remove it and start again.
    Interrupted,
    /// Anything else: open it (fjall reports what it cannot read).
    Existing,
}

fn dir_state(dir: &Path) -> std::io::Result<DirState> {
    let mut entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirState::Fresh),
        Err(e) => return Err(e),
    };
    if entries.next().transpose()?.is_none() {
        return Ok(DirState::Fresh);
    }
    let marker = match std::fs::metadata(dir.join(FJALL_VERSION_MARKER)) {
        Ok(m) => m.len() > 0,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    if !marker && dir.join(FJALL_LOCK_FILE).try_exists()? {
        Ok(DirState::Interrupted)
    } else {
        Ok(DirState::Existing)
    }
}

/// Creates a new store atomically: fjall writes several files before the one that marks
/// the database as created, so a process killed in those first milliseconds left a data
/// dir fjall refuses to open (`File exists`, `InvalidVersion`). Instead the database and
/// its keyspaces are created in `DIR.init`, made durable, closed, and renamed over `DIR`
/// (a rename replaces an absent or empty directory in one step), then the parent is
/// fsynced. A kill at any point leaves either no store (the next start removes the
/// leftover `DIR.init` and begins again) or a complete one.
fn initialise_if_fresh(dir: &Path) -> Result<(), StoreError> {
    let ctx = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Io(format!(
            "initialising the store in {}: {what}: {e}",
            dir.display()
        ))
    };
    let tmp = init_dir(dir);
    match std::fs::remove_dir_all(&tmp) {
        Ok(()) => tracing::warn!(
            dir = %tmp.display(),
            "removed the leftover of an interrupted store initialisation"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ctx("removing the leftover temporary dir", &e)),
    }
    match dir_state(dir).map_err(|e| ctx("reading the data dir", &e))? {
        DirState::Existing => return Ok(()),
        DirState::Fresh => {}
        DirState::Interrupted => {
            tracing::warn!(
                dir = %dir.display(),
                "the store's first initialisation was interrupted; starting it again"
            );
            std::fs::remove_dir_all(dir).map_err(|e| ctx("removing the half-created store", &e))?;
        }
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| ctx("creating the parent dir", &e))?;
    }
    {
        let db = Database::builder(&tmp)
            .open()
            .map_err(|e| ctx("creating the database", &e))?;
        for name in [OBJECTS, LOG, META] {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| ctx(&format!("creating keyspace {name}"), &e))?;
        }
        db.persist(PersistMode::SyncAll)
            .map_err(|e| ctx("syncing the new database", &e))?;
        // Dropping the database stops its threads and releases its lock before the rename.
    }
    std::fs::rename(&tmp, dir).map_err(|e| ctx("moving the new store into place", &e))?;
    #[cfg(unix)]
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|f| f.sync_all())
            .map_err(|e| ctx("syncing the parent dir", &e))?;
    }
    Ok(())
}

/// Creates a new store in `dir` (which must not exist) holding `objects` as they are,
/// revisions included, at `revision` with all history before it compacted (a watch from
/// an older resourceVersion answers 410 and its client lists again), as a snapshot
/// restore makes it. Objects for which `ttl` answers a duration expire that long after
/// `clock`'s now. Made beside `dir` and renamed into place, so an interrupted restore
/// leaves no store.
pub fn create_restored(
    dir: &Path,
    objects: &[StoredObject],
    revision: Revision,
    ttl: impl Fn(&str) -> Option<Duration>,
    clock: &Clock,
) -> Result<(), StoreError> {
    let ctx = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Io(format!(
            "restoring the store in {}: {what}: {e}",
            dir.display()
        ))
    };
    if dir.exists() {
        return Err(StoreError::Io(format!(
            "{} exists: move it away first (with its control plane stopped)",
            dir.display()
        )));
    }
    let tmp = init_dir(dir);
    match std::fs::remove_dir_all(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ctx("removing a leftover temporary dir", &e)),
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| ctx("creating the parent dir", &e))?;
    }
    {
        let db = Database::builder(&tmp)
            .open()
            .map_err(|e| ctx("creating the database", &e))?;
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| ctx(&format!("creating keyspace {name}"), &e))
        };
        let (objects_ks, _log, meta, expiry) = (
            keyspace(OBJECTS)?,
            keyspace(LOG)?,
            keyspace(META)?,
            keyspace(EXPIRY)?,
        );
        let now = clock.millis();
        let mut batch = db.batch().durability(Some(DURABILITY));
        for object in objects {
            batch.insert(&objects_ks, object.key.as_bytes(), encode_object(object));
            if let Some(ttl) = ttl(&object.key) {
                let deadline =
                    now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
                batch.insert(&expiry, object.key.as_bytes(), deadline.to_be_bytes());
            }
        }
        batch.insert(&meta, META_REVISION, revision.to_be_bytes());
        batch.insert(&meta, META_COMPACTED, revision.to_be_bytes());
        batch.commit().map_err(|e| ctx("writing the objects", &e))?;
        db.persist(PersistMode::SyncAll)
            .map_err(|e| ctx("syncing the database", &e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| ctx("moving the store into place", &e))?;
    #[cfg(unix)]
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|f| f.sync_all())
            .map_err(|e| ctx("syncing the parent dir", &e))?;
    }
    Ok(())
}

fn io_err(context: String, e: fjall::Error) -> StoreError {
    let detail = match e {
        fjall::Error::Locked => "the data dir is locked by another process".to_owned(),
        fjall::Error::Poisoned => "a previous fsync failed; the database is poisoned".to_owned(),
        other => format!("{other:?}"),
    };
    StoreError::Io(format!("{context}: {detail}"))
}

/// The error of every write after a failed commit.
fn refused(reason: &str) -> StoreError {
    StoreError::Io(format!(
        "the store refuses writes after an earlier I/O failure ({reason}); reopen it to recover"
    ))
}

fn wall_clock_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn decode_revision_key(key: &[u8]) -> Result<Revision, StoreError> {
    decode_u64(key).ok_or_else(|| StoreError::Io(format!("corrupt revision log key {key:?}")))
}

/// `objects` value: mod_revision, create_revision, JSON.
fn encode_object(object: &StoredObject) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + object.value.len());
    out.extend_from_slice(&object.mod_revision.to_be_bytes());
    out.extend_from_slice(&object.create_revision.to_be_bytes());
    out.extend_from_slice(&object.value);
    out
}

fn decode_object(key: &str, bytes: &[u8]) -> Result<StoredObject, StoreError> {
    let corrupt = || StoreError::Io(format!("corrupt stored object {key}"));
    let (mod_revision, rest) = bytes.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let (create_revision, value) = rest.split_first_chunk::<8>().ok_or_else(corrupt)?;
    Ok(StoredObject {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(value),
        mod_revision: u64::from_be_bytes(*mod_revision),
        create_revision: u64::from_be_bytes(*create_revision),
    })
}

const PREV_NONE: u8 = 0;
const PREV_PRESENT: u8 = 1;
const PREV_SAME: u8 = 2;

/// `log` value; the layout is in the module doc.
fn encode_log_entry(event: &Event, time_millis: u64) -> Vec<u8> {
    let object = &event.object;
    let prev_len = event.prev.as_ref().map_or(0, |p| 20 + p.value.len());
    let mut out = Vec::with_capacity(15 + object.key.len() + 20 + object.value.len() + prev_len);
    out.push(LOG_FORMAT);
    out.extend_from_slice(&time_millis.to_be_bytes());
    out.push(match event.kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    });
    out.push(match &event.prev {
        None => PREV_NONE,
        Some(prev) if prev == object => PREV_SAME,
        Some(_) => PREV_PRESENT,
    });
    put_bytes(&mut out, object.key.as_bytes());
    put_object(&mut out, object);
    if let Some(prev) = &event.prev
        && prev != object
    {
        put_object(&mut out, prev);
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys are < 64 KiB (fjall) and values far below 4 GiB (the API server limits bodies).
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_object(out: &mut Vec<u8>, object: &StoredObject) {
    out.extend_from_slice(&object.mod_revision.to_be_bytes());
    out.extend_from_slice(&object.create_revision.to_be_bytes());
    put_bytes(out, &object.value);
}

/// A cursor over a `log` value that fails (rather than panics) on truncated input.
struct Cursor<'a> {
    rest: &'a [u8],
    revision: Revision,
}

impl<'a> Cursor<'a> {
    fn corrupt(&self) -> StoreError {
        StoreError::Io(format!(
            "corrupt revision log entry at revision {}",
            self.revision
        ))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.rest.len() < n {
            return Err(self.corrupt());
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        decode_u64(self.take(8)?).ok_or_else(|| self.corrupt())
    }

    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let len: [u8; 4] = self.take(4)?.try_into().map_err(|_| self.corrupt())?;
        let len = usize::try_from(u32::from_be_bytes(len)).map_err(|_| self.corrupt())?;
        self.take(len)
    }

    fn object(&mut self, key: &str) -> Result<StoredObject, StoreError> {
        let mod_revision = self.u64()?;
        let create_revision = self.u64()?;
        let value = Bytes::copy_from_slice(self.bytes()?);
        Ok(StoredObject {
            key: key.to_owned(),
            value,
            mod_revision,
            create_revision,
        })
    }
}

fn log_entry_time(revision: Revision, bytes: &[u8]) -> Result<u64, StoreError> {
    let mut cursor = Cursor {
        rest: bytes,
        revision,
    };
    if cursor.u8()? != LOG_FORMAT {
        return Err(cursor.corrupt());
    }
    cursor.u64()
}

fn decode_log_entry(revision: Revision, bytes: &[u8]) -> Result<(Event, u64), StoreError> {
    let mut cursor = Cursor {
        rest: bytes,
        revision,
    };
    if cursor.u8()? != LOG_FORMAT {
        return Err(cursor.corrupt());
    }
    let time = cursor.u64()?;
    let kind = match cursor.u8()? {
        0 => EventKind::Put,
        1 => EventKind::Delete,
        _ => return Err(cursor.corrupt()),
    };
    let prev_flag = cursor.u8()?;
    let key = std::str::from_utf8(cursor.bytes()?).map_err(|_| cursor.corrupt())?;
    let object = cursor.object(key)?;
    let prev = match prev_flag {
        PREV_NONE => None,
        PREV_SAME => Some(object.clone()),
        PREV_PRESENT => Some(cursor.object(key)?),
        _ => return Err(cursor.corrupt()),
    };
    if !cursor.rest.is_empty() {
        return Err(cursor.corrupt());
    }
    Ok((
        Event {
            revision,
            kind,
            object,
            prev,
            memo: Default::default(),
        },
        time,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::{Stream, StreamExt};
    use std::future::Future;

    const LIMIT: Duration = Duration::from_secs(20);

    /// Every await in these tests is bounded.
    async fn t<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(LIMIT, f).await.expect("timed out")
    }

    fn config(dir: &tempfile::TempDir) -> StoreConfig {
        let mut c = StoreConfig::new(dir.path());
        // No surprise compaction passes: tests compact explicitly.
        c.compaction_interval = Duration::from_secs(3600);
        c
    }

    fn open(dir: &tempfile::TempDir) -> FjallStore {
        FjallStore::open(config(dir)).unwrap()
    }

    fn v(s: &str) -> Bytes {
        Bytes::from(format!("{{\"v\":\"{s}\"}}"))
    }

    /// The next `n` events of a stream, in order.
    async fn take<S>(stream: &mut S, n: usize) -> Vec<Arc<Event>>
    where
        S: Stream<Item = Result<Arc<Event>, StoreError>> + Unpin,
    {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(t(stream.next()).await.expect("stream ended").unwrap());
        }
        out
    }

    /// The error a watch after `after` starts with, and that the stream ends after it.
    async fn expired(store: &FjallStore, after: Revision) -> StoreError {
        let mut w = t(store.watch("", after)).await.unwrap();
        let err = t(w.next()).await.expect("an item").unwrap_err();
        assert!(t(w.next()).await.is_none(), "the stream ends after Expired");
        err
    }

    fn revisions(events: &[Arc<Event>]) -> Vec<Revision> {
        events.iter().map(|e| e.revision).collect()
    }

    #[tokio::test]
    async fn create_get_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert_eq!(store.current_revision(), 0);
        let a = t(store.create("core/pods/default/a", v("a")))
            .await
            .unwrap();
        assert_eq!((a.mod_revision, a.create_revision), (1, 1));
        assert_eq!(a.value, v("a"));
        t(store.create("core/pods/other/b", v("b"))).await.unwrap();
        t(store.create("core/nodes//n1", v("n"))).await.unwrap();
        t(store.create("core/podsx/default/z", v("z")))
            .await
            .unwrap();

        assert_eq!(
            t(store.get("core/pods/default/a")).await.unwrap(),
            Some(a.clone())
        );
        assert_eq!(t(store.get("core/pods/default/nope")).await.unwrap(), None);

        let all = t(store.list("core/pods/")).await.unwrap();
        assert_eq!(all.revision, 4);
        let keys: Vec<_> = all.items.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["core/pods/default/a", "core/pods/other/b"]);
        let ns = t(store.list("core/pods/default/")).await.unwrap();
        assert_eq!(ns.items, vec![a]);
        assert_eq!(t(store.list("")).await.unwrap().items.len(), 4);
        assert_eq!(store.stats().writes, 4);
    }

    #[tokio::test]
    async fn create_existing_is_already_exists_and_takes_no_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        t(store.create("k/r/ns/a", v("1"))).await.unwrap();
        let err = t(store.create("k/r/ns/a", v("2"))).await.unwrap_err();
        assert_eq!(
            err,
            StoreError::AlreadyExists {
                key: "k/r/ns/a".into()
            }
        );
        assert_eq!(store.current_revision(), 1);
        assert_eq!(
            t(store.get("k/r/ns/a")).await.unwrap().unwrap().value,
            v("1")
        );
    }

    #[tokio::test]
    async fn update_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let missing = t(store.update("k/r/ns/a", v("x"), None)).await.unwrap_err();
        assert_eq!(
            missing,
            StoreError::NotFound {
                key: "k/r/ns/a".into()
            }
        );

        let a1 = t(store.create("k/r/ns/a", v("1"))).await.unwrap();
        let a2 = t(store.update("k/r/ns/a", v("2"), Some(a1.mod_revision)))
            .await
            .unwrap();
        assert_eq!((a2.mod_revision, a2.create_revision), (2, 1));

        // A stale revision conflicts and changes nothing.
        let err = t(store.update("k/r/ns/a", v("3"), Some(a1.mod_revision)))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            StoreError::Conflict {
                key: "k/r/ns/a".into(),
                expected: 1,
                actual: 2
            }
        );
        assert_eq!(store.current_revision(), 2);
        assert_eq!(t(store.get("k/r/ns/a")).await.unwrap(), Some(a2.clone()));

        // Unconditional update.
        let a3 = t(store.update("k/r/ns/a", v("3"), None)).await.unwrap();
        assert_eq!((a3.mod_revision, a3.create_revision), (3, 1));
        assert_eq!(a3.value, v("3"));
    }

    #[tokio::test]
    async fn delete_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let a1 = t(store.create("k/r/ns/a", v("1"))).await.unwrap();
        let a2 = t(store.update("k/r/ns/a", v("2"), None)).await.unwrap();
        let err = t(store.delete("k/r/ns/a", Some(a1.mod_revision)))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ));
        assert!(t(store.get("k/r/ns/a")).await.unwrap().is_some());

        let ev = t(store.delete("k/r/ns/a", Some(a2.mod_revision)))
            .await
            .unwrap();
        assert_eq!(ev.revision, 3);
        assert_eq!(ev.kind, EventKind::Delete);
        assert_eq!(ev.object, a2);
        assert_eq!(ev.prev, Some(a2));
        assert_eq!(t(store.get("k/r/ns/a")).await.unwrap(), None);
        let gone = t(store.delete("k/r/ns/a", None)).await.unwrap_err();
        assert_eq!(
            gone,
            StoreError::NotFound {
                key: "k/r/ns/a".into()
            }
        );

        // Recreating starts a new life with a new create_revision.
        let b = t(store.create("k/r/ns/a", v("b"))).await.unwrap();
        assert_eq!((b.mod_revision, b.create_revision), (4, 4));
    }

    #[tokio::test]
    async fn revisions_strictly_increase_and_failures_take_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut seen = Vec::new();
        for i in 0..5 {
            let key = format!("k/r/ns/{i}");
            seen.push(t(store.create(&key, v("c"))).await.unwrap().mod_revision);
            assert!(t(store.create(&key, v("again"))).await.is_err());
            seen.push(
                t(store.update(&key, v("u"), None))
                    .await
                    .unwrap()
                    .mod_revision,
            );
            assert!(t(store.update(&key, v("u"), Some(1_000))).await.is_err());
            seen.push(t(store.delete(&key, None)).await.unwrap().revision);
            assert!(t(store.delete(&key, None)).await.is_err());
        }
        assert_eq!(seen, (1..=15).collect::<Vec<_>>());
        assert_eq!(store.current_revision(), 15);
    }

    #[tokio::test]
    async fn watch_replays_from_zero_then_follows_live() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let a = t(store.create("k/r/ns/a", v("1"))).await.unwrap();
        t(store.update("k/r/ns/a", v("2"), None)).await.unwrap();
        t(store.delete("k/r/ns/a", None)).await.unwrap();

        let mut w = t(store.watch("", 0)).await.unwrap();
        let replay = take(&mut w, 3).await;
        assert_eq!(revisions(&replay), [1, 2, 3]);
        assert_eq!(replay[0].kind, EventKind::Put);
        assert_eq!(replay[0].object, a);
        assert_eq!(replay[0].prev, None);
        assert_eq!(replay[1].prev, Some(a));
        assert_eq!(replay[2].kind, EventKind::Delete);
        assert_eq!(replay[2].object.mod_revision, 2);

        t(store.create("k/r/ns/b", v("b"))).await.unwrap();
        t(store.create("k/r/ns/c", v("c"))).await.unwrap();
        let live = take(&mut w, 2).await;
        assert_eq!(revisions(&live), [4, 5]);
        assert_eq!(live[1].object.key, "k/r/ns/c");
    }

    #[tokio::test]
    async fn watch_from_the_middle_starts_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for i in 0..10 {
            t(store.create(&format!("k/r/ns/{i}"), v("x")))
                .await
                .unwrap();
        }
        let mut w = t(store.watch("", 6)).await.unwrap();
        t(store.create("k/r/ns/live", v("x"))).await.unwrap();
        assert_eq!(revisions(&take(&mut w, 5).await), [7, 8, 9, 10, 11]);
        // Caught up: nothing more is pending.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), w.next())
                .await
                .is_err()
        );

        // Watching from the current revision yields only later writes.
        let mut w = t(store.watch("", store.current_revision())).await.unwrap();
        t(store.create("k/r/ns/later", v("x"))).await.unwrap();
        assert_eq!(revisions(&take(&mut w, 1).await), [12]);
    }

    #[tokio::test]
    async fn watch_filters_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        t(store.create("core/pods/default/a", v("a")))
            .await
            .unwrap(); // 1
        t(store.create("core/pods/kube-system/b", v("b")))
            .await
            .unwrap(); // 2
        t(store.create("core/podsx/default/c", v("c")))
            .await
            .unwrap(); // 3
        let mut pods = t(store.watch("core/pods/", 0)).await.unwrap();
        let mut default = t(store.watch("core/pods/default/", 0)).await.unwrap();
        t(store.delete("core/pods/default/a", None)).await.unwrap(); // 4
        t(store.create("core/nodes//n", v("n"))).await.unwrap(); // 5
        t(store.create("core/pods/default/d", v("d")))
            .await
            .unwrap(); // 6

        assert_eq!(revisions(&take(&mut pods, 4).await), [1, 2, 4, 6]);
        assert_eq!(revisions(&take(&mut default, 3).await), [1, 4, 6]);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), pods.next())
                .await
                .is_err()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_watcher_sees_every_revision_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&dir);
        c.watch_chunk = 16;
        let store = Arc::new(FjallStore::open(c).unwrap());
        // The watcher runs while the writers write, until it sees the sentinel key.
        let mut w = t(store.watch("", 0)).await.unwrap();
        let watcher = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(event) = w.next().await {
                let event = event.unwrap();
                seen.push(event.revision);
                if event.object.key == "k/r/done/x" {
                    break;
                }
            }
            seen
        });

        const WRITERS: usize = 16;
        const PER_WRITER: usize = 40;
        let mut tasks = tokio::task::JoinSet::new();
        for wi in 0..WRITERS {
            let store = store.clone();
            tasks.spawn(async move {
                let mut ok = 0u64;
                for i in 0..PER_WRITER {
                    // Every writer fights over one shared key with CAS, and owns others.
                    let own = format!("k/r/w{wi}/{i}");
                    let obj = store.create(&own, v("c")).await.unwrap();
                    store
                        .update(&own, v("u"), Some(obj.mod_revision))
                        .await
                        .unwrap();
                    ok += 2;
                    let shared = "k/r/shared/x";
                    match store.get(shared).await.unwrap() {
                        None => ok += u64::from(store.create(shared, v("s")).await.is_ok()),
                        Some(cur) => {
                            ok += u64::from(
                                store
                                    .update(shared, v("s"), Some(cur.mod_revision))
                                    .await
                                    .is_ok(),
                            )
                        }
                    }
                }
                ok
            });
        }
        let mut successes = 0;
        while let Some(done) = t(tasks.join_next()).await {
            successes += done.unwrap();
        }
        assert!(successes >= (WRITERS * PER_WRITER * 2) as u64);
        let done = t(store.create("k/r/done/x", v("d"))).await.unwrap();
        assert_eq!(done.mod_revision, successes + 1);

        let seen = t(watcher).await.unwrap();
        assert_eq!(seen, (1..=successes + 1).collect::<Vec<_>>());
        // Group commit happened: fewer fsyncs than writes.
        let stats = store.stats();
        assert_eq!(stats.writes, successes + 1);
        assert!(stats.commits < stats.writes, "{stats:?}");
    }

    #[tokio::test]
    async fn live_watcher_started_first_sees_concurrent_writes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir));
        let mut w = t(store.watch("k/", 0)).await.unwrap();
        let writes: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.create(&format!("k/r/ns/{i}"), v("x")).await })
            })
            .collect();
        let events = take(&mut w, 200).await;
        assert_eq!(revisions(&events), (1..=200).collect::<Vec<_>>());
        for write in writes {
            t(write).await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn expired_at_watch_time_after_count_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&dir);
        c.log_max_events = 3;
        let store = FjallStore::open(c).unwrap();
        for i in 0..10 {
            t(store.create(&format!("k/r/ns/{i}"), v("x")))
                .await
                .unwrap();
        }
        assert_eq!(store.oldest_watchable(), 0);
        assert_eq!(t(store.compact_now()).await.unwrap(), 7);
        assert_eq!(store.oldest_watchable(), 7);
        let err = expired(&store, 6).await;
        assert_eq!(
            err,
            StoreError::Expired {
                requested: 6,
                oldest: 7
            }
        );
        let mut w = t(store.watch("", 7)).await.unwrap();
        assert_eq!(revisions(&take(&mut w, 3).await), [8, 9, 10]);
        // Idempotent.
        assert_eq!(t(store.compact_now()).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn age_compaction_keeps_the_latest_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&dir);
        c.log_max_age = Duration::ZERO;
        let store = FjallStore::open(c).unwrap();
        for i in 0..5 {
            t(store.create(&format!("k/r/ns/{i}"), v("x")))
                .await
                .unwrap();
        }
        assert_eq!(t(store.compact_now()).await.unwrap(), 4);
        assert!(matches!(
            expired(&store, 3).await,
            StoreError::Expired { .. }
        ));
        let mut w = t(store.watch("", 4)).await.unwrap();
        assert_eq!(revisions(&take(&mut w, 1).await), [5]);
    }

    #[tokio::test]
    async fn watcher_behind_a_compaction_gets_expired_then_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&dir);
        c.log_max_events = 2;
        let store = FjallStore::open(c).unwrap();
        for i in 0..6 {
            t(store.create(&format!("k/r/ns/{i}"), v("x")))
                .await
                .unwrap();
        }
        let mut w = t(store.watch("", 0)).await.unwrap(); // fine: nothing compacted yet
        assert_eq!(t(store.compact_now()).await.unwrap(), 4);
        let err = t(w.next()).await.unwrap().unwrap_err();
        assert_eq!(
            err,
            StoreError::Expired {
                requested: 0,
                oldest: 4
            }
        );
        assert!(t(w.next()).await.is_none());
    }

    #[tokio::test]
    async fn watchers_read_the_disk_log_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&dir);
        c.watch_chunk = 7;
        let store = FjallStore::open(c).unwrap();
        for i in 0..50 {
            let key = format!("k/r/{}/{i}", if i % 2 == 0 { "even" } else { "odd" });
            t(store.create(&key, v(&i.to_string()))).await.unwrap();
        }
        let mut all = t(store.watch("", 0)).await.unwrap();
        let events = take(&mut all, 50).await;
        assert_eq!(revisions(&events), (1..=50).collect::<Vec<_>>());
        assert_eq!(events[9].object.value, v("9"));
        assert_eq!(events[9].object.key, "k/r/odd/9");
        // Filtered reads from disk skip the other keys without gaps.
        let mut even = t(store.watch("k/r/even/", 10)).await.unwrap();
        let got = take(&mut even, 20).await;
        assert_eq!(revisions(&got), (11..=50).step_by(2).collect::<Vec<_>>());
        t(store.create("k/r/even/live", v("l"))).await.unwrap();
        assert_eq!(revisions(&take(&mut even, 1).await), [51]);
    }

    #[tokio::test]
    async fn reopen_keeps_objects_revisions_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let store = open(&dir);
            t(store.create("k/r/ns/a", v("a1"))).await.unwrap(); // 1
            t(store.create("k/r/ns/b", v("b1"))).await.unwrap(); // 2
            t(store.update("k/r/ns/a", v("a2"), Some(1))).await.unwrap(); // 3
            t(store.delete("k/r/ns/b", None)).await.unwrap(); // 4
            t(store.create("k/r/ns/c", v("c1"))).await.unwrap(); // 5
            let list = t(store.list("")).await.unwrap();
            store.close();
            list
        };
        let store = open(&dir);
        assert_eq!(store.current_revision(), 5);
        assert_eq!(store.oldest_watchable(), 0);
        let after = t(store.list("")).await.unwrap();
        assert_eq!(after.items, before.items);
        assert_eq!(after.revision, 5);
        let a = t(store.get("k/r/ns/a")).await.unwrap().unwrap();
        assert_eq!(
            (a.mod_revision, a.create_revision, a.value),
            (3, 1, v("a2"))
        );

        // Revisions continue; a watch from before the reopen replays from the disk log.
        let mut w = t(store.watch("", 0)).await.unwrap();
        let c2 = t(store.update("k/r/ns/c", v("c2"), Some(5))).await.unwrap();
        assert_eq!(c2.mod_revision, 6);
        let events = take(&mut w, 6).await;
        assert_eq!(revisions(&events), [1, 2, 3, 4, 5, 6]);
        assert_eq!(events[2].prev.as_ref().unwrap().value, v("a1"));
        assert_eq!(events[3].kind, EventKind::Delete);
        assert_eq!(events[3].object.key, "k/r/ns/b");
        assert_eq!(events[5].object, c2);
        drop(w);

        // Compaction state survives too.
        let mut c = config(&dir);
        c.log_max_events = 2;
        store.close();
        let store = FjallStore::open(c.clone()).unwrap();
        assert_eq!(t(store.compact_now()).await.unwrap(), 4);
        drop(store);
        let store = FjallStore::open(c).unwrap();
        assert_eq!(store.oldest_watchable(), 4);
        assert_eq!(store.current_revision(), 6);
        assert!(matches!(
            expired(&store, 3).await,
            StoreError::Expired { .. }
        ));
        let mut w = t(store.watch("", 4)).await.unwrap();
        assert_eq!(revisions(&take(&mut w, 2).await), [5, 6]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_txns_on_one_key_let_exactly_one_through_and_leave_no_trace_of_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir));
        let range = t(store.create("k/ranges/x", v("0"))).await.unwrap();
        // Many txns take the same compare-and-swap at once (most land in one batch):
        // each also creates its own object, which must exist only if its txn won.
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..32 {
            let store = store.clone();
            tasks.spawn(async move {
                let writes = vec![
                    Write::Create {
                        key: format!("k/obj/ns/{i}"),
                        value: v("o"),
                        ttl: None,
                    },
                    Write::Update {
                        key: "k/ranges/x".into(),
                        value: v(&i.to_string()),
                        expected: Some(range.mod_revision),
                        ttl: None,
                    },
                ];
                (i, store.txn(writes).await)
            });
        }
        let mut winners = Vec::new();
        while let Some(done) = t(tasks.join_next()).await {
            let (i, result) = done.unwrap();
            match result {
                Ok(events) => {
                    assert_eq!(events.len(), 2);
                    winners.push(i);
                }
                Err(e) => assert!(matches!(e, StoreError::Conflict { .. }), "{e}"),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let objects = t(store.list("k/obj/")).await.unwrap();
        assert_eq!(objects.items.len(), 1);
        assert_eq!(objects.items[0].key, format!("k/obj/ns/{}", winners[0]));
        // The losers took no revision: one create, one txn of two writes.
        assert_eq!(store.current_revision(), 3);
    }

    /// A clock tests move by hand: milliseconds since the epoch.
    fn manual_clock(start: u64) -> (Clock, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(start));
        let read = now.clone();
        let clock =
            Clock::new(move || UNIX_EPOCH + Duration::from_millis(read.load(Ordering::SeqCst)));
        (clock, now)
    }

    #[tokio::test]
    async fn objects_with_a_ttl_are_deleted_once_it_passes_also_after_a_reopen() {
        const HOUR: u64 = 3_600_000;
        let dir = tempfile::tempdir().unwrap();
        let (clock, now) = manual_clock(1_000 * HOUR);
        let mut c = config(&dir);
        c.clock = clock;
        let ttl = Some(Duration::from_millis(HOUR));
        let store = FjallStore::open(c.clone()).unwrap();
        t(store.create_with_ttl("k/ev/ns/a", v("a"), ttl))
            .await
            .unwrap();
        t(store.create("k/ev/ns/b", v("b"))).await.unwrap();
        let c1 = t(store.create_with_ttl("k/ev/ns/c", v("c"), ttl))
            .await
            .unwrap();
        let d1 = t(store.create_with_ttl("k/ev/ns/d", v("d"), ttl))
            .await
            .unwrap();
        // Half an hour on, c is written again (its TTL starts over) and d loses its TTL.
        now.fetch_add(HOUR / 2, Ordering::SeqCst);
        t(store.update_with_ttl("k/ev/ns/c", v("c2"), Some(c1.mod_revision), ttl))
            .await
            .unwrap();
        t(store.update("k/ev/ns/d", v("d2"), Some(d1.mod_revision)))
            .await
            .unwrap();
        let mut w = t(store.watch("k/ev/", store.current_revision()))
            .await
            .unwrap();
        assert_eq!(t(store.sweep_now()).await.unwrap(), 0, "nothing is due yet");
        now.fetch_add(HOUR / 2 + 1, Ordering::SeqCst);
        assert_eq!(t(store.sweep_now()).await.unwrap(), 1);
        assert_eq!(t(store.get("k/ev/ns/a")).await.unwrap(), None);
        // An expiry is an ordinary delete event carrying the last value.
        let gone = take(&mut w, 1).await.remove(0);
        assert_eq!(
            (
                gone.kind,
                gone.object.key.as_str(),
                gone.object.value.clone()
            ),
            (EventKind::Delete, "k/ev/ns/a", v("a"))
        );
        drop(w);
        store.close();

        // The deadline of c survives a restart.
        now.fetch_add(HOUR, Ordering::SeqCst);
        let store = FjallStore::open(c).unwrap();
        assert_eq!(t(store.sweep_now()).await.unwrap(), 1);
        let left: Vec<String> = t(store.list("k/ev/"))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(left, ["k/ev/ns/b", "k/ev/ns/d"]);
    }

    #[tokio::test]
    async fn close_ends_watches_and_refuses_work() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        t(store.create("k/r/ns/a", v("a"))).await.unwrap();
        let mut w = t(store.watch("", 0)).await.unwrap();
        assert_eq!(revisions(&take(&mut w, 1).await), [1]);
        store.close();
        // A watch waiting for more ends.
        assert!(t(w.next()).await.is_none());
        assert_eq!(
            t(store.create("k/r/ns/b", v("b"))).await.unwrap_err(),
            StoreError::Closed
        );
        assert_eq!(
            t(store.get("k/r/ns/a")).await.unwrap_err(),
            StoreError::Closed
        );
        assert!(matches!(
            t(store.watch("", 0)).await,
            Err(StoreError::Closed)
        ));
        store.close(); // idempotent
        // The data dir is released.
        drop(open(&dir));
    }

    #[tokio::test]
    async fn dropping_the_store_ends_watch_streams() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut w = t(store.watch("", 0)).await.unwrap();
        let waiting = tokio::spawn(async move { w.next().await.is_none() });
        drop(store);
        assert!(t(waiting).await.unwrap());
    }

    #[tokio::test]
    async fn second_open_of_the_same_dir_fails() {
        let dir = tempfile::tempdir().unwrap();
        let _store = open(&dir);
        let err = FjallStore::open(config(&dir)).unwrap_err();
        assert!(
            matches!(err, StoreError::Io(ref m) if m.contains("locked")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_fresh_store_is_created_aside_and_renamed_into_place() {
        let parent = tempfile::tempdir().unwrap();
        let mut c = config(&parent);
        c.dir = parent.path().join("store");
        let store = FjallStore::open(c.clone()).unwrap();
        t(store.create("k", v("a"))).await.unwrap();
        drop(store);
        assert!(!init_dir(&c.dir).exists());
        let store = FjallStore::open(c).unwrap();
        assert_eq!(t(store.get("k")).await.unwrap().unwrap().value, v("a"));
    }

    #[tokio::test]
    async fn an_interrupted_first_start_is_cleaned_up_and_started_again() {
        let parent = tempfile::tempdir().unwrap();
        let mut c = config(&parent);
        c.dir = parent.path().join("store");
        // What a kill during fjall's creation leaves: its lock file and journal, and a
        // format marker not yet written; and a half-created `.init` dir beside it.
        std::fs::create_dir_all(c.dir.join("keyspaces")).unwrap();
        std::fs::write(c.dir.join(FJALL_LOCK_FILE), b"").unwrap();
        std::fs::write(c.dir.join("0.jnl"), b"").unwrap();
        std::fs::write(c.dir.join(FJALL_VERSION_MARKER), b"").unwrap();
        let tmp = init_dir(&c.dir);
        std::fs::create_dir_all(tmp.join("keyspaces")).unwrap();
        std::fs::write(tmp.join(FJALL_LOCK_FILE), b"").unwrap();
        let store = FjallStore::open(c.clone()).unwrap();
        assert!(!tmp.exists(), "the leftover temporary dir is removed");
        t(store.create("k", v("a"))).await.unwrap();
        drop(store);
        let store = FjallStore::open(c).unwrap();
        assert_eq!(t(store.get("k")).await.unwrap().unwrap().value, v("a"));
    }

    #[test]
    fn a_dir_with_data_is_never_taken_for_an_interrupted_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(dir_state(dir.path()).unwrap(), DirState::Fresh);
        assert_eq!(
            dir_state(&dir.path().join("absent")).unwrap(),
            DirState::Fresh
        );
        drop(FjallStore::open(config(&dir)).unwrap());
        assert_eq!(dir_state(dir.path()).unwrap(), DirState::Existing);
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("notes.txt"), b"mine").unwrap();
        assert_eq!(dir_state(other.path()).unwrap(), DirState::Existing);
    }

    #[test]
    fn log_entries_round_trip() {
        let obj = |rev, val: &str| StoredObject {
            key: "core/pods/ns/p".into(),
            value: Bytes::from(val.to_owned()),
            mod_revision: rev,
            create_revision: 1,
        };
        let cases = [
            Event {
                revision: 1,
                kind: EventKind::Put,
                object: obj(1, "{}"),
                prev: None,
                memo: Default::default(),
            },
            Event {
                revision: 7,
                kind: EventKind::Put,
                object: obj(7, "{\"b\":2}"),
                prev: Some(obj(3, "{\"a\":1}")),
                memo: Default::default(),
            },
            Event {
                revision: 9,
                kind: EventKind::Delete,
                object: obj(7, "{\"b\":2}"),
                prev: Some(obj(7, "{\"b\":2}")),
                memo: Default::default(),
            },
        ];
        for ev in cases {
            let bytes = encode_log_entry(&ev, 1234);
            assert_eq!(log_entry_time(ev.revision, &bytes).unwrap(), 1234);
            let (back, time) = decode_log_entry(ev.revision, &bytes).unwrap();
            assert_eq!((back, time), (ev.clone(), 1234));
            // Truncation is an error, not a panic.
            for cut in 0..bytes.len() {
                assert!(decode_log_entry(ev.revision, &bytes[..cut]).is_err());
            }
        }
        let o = obj(5, "{\"x\":1}");
        assert_eq!(decode_object(&o.key, &encode_object(&o)).unwrap(), o);
        assert!(decode_object("k", &[0; 15]).is_err());
    }
}
