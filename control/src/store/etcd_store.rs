//! [`EtcdStore`]: the store on a real etcd cluster, through etcd's v3 API.
//!
//! Why etcd: it is how a cluster outgrows one machine. Several `wharf control` members
//! share one etcd cluster, which replicates by Raft and keeps answering while a majority
//! of its members is up; the embedded [`super::FjallStore`] stays the default.
//!
//! # Mapping
//!
//! - A store key `K` is the etcd key `PREFIX/K` (default prefix `/registry`, as
//!   kube-apiserver's), so one etcd can hold several clusters under different prefixes.
//! - An object's revisions are etcd's: `mod_revision` (the resourceVersion) and
//!   `create_revision`. Every write is an etcd txn comparing them: a create compares
//!   `create_revision == 0` (absent), a compare-and-swap `mod_revision == expected`, an
//!   unconditional update or delete `create_revision > 0` (present). A multi-key
//!   [`Store::txn`] is ONE etcd txn, so all of its events share one revision. When the
//!   compares fail, the same txn reads every key it named, and the first write whose
//!   precondition fails answers the error, as the trait asks.
//! - etcd forbids writing one key twice in a txn; so does this store (`Io`).
//! - The **revision** of the store is the last revision written under the prefix, not
//!   etcd's: every txn also puts the key `PREFIX` itself (outside `PREFIX/`, so no list or
//!   watch sees it), and its `mod_revision` is the store's revision. A list answers it
//!   (read in the same etcd txn as the first page), so a watch of the store from a list's
//!   revision always reaches it, even when other clusters write to the same etcd. Deletes
//!   by an expired lease do not move it: such a delete reaches watchers after the revision
//!   a list answered, which they apply like any other.
//! - Lists are range reads at one etcd revision, [`LIST_PAGE`] keys a request: the first
//!   page fixes the revision and the later pages are read at it.
//! - A TTL write attaches an etcd lease. Leases are shared: writes with the same TTL
//!   within a short window (5% of the TTL, at most a minute, as kube-apiserver does) reuse
//!   one lease granted for the TTL plus that window, so a busy event stream costs a lease
//!   grant a minute, not one per event. An object expires between its TTL and TTL plus
//!   the window after its last write.
//! - Watches start at `after + 1` with `prev_kv`, so a delete event carries the last value
//!   and an update the value it replaced. A start (or a watcher falling) behind etcd's
//!   compaction is answered by etcd with the compacted revision: the stream yields
//!   `Expired` and ends. etcd going away ends it with `Unavailable`.
//! - etcd keeps every revision until it is compacted: the store compacts periodically
//!   ([`EtcdConfig::compaction_interval`], 5 minutes as kube-apiserver), each time to the
//!   revision it saw at the previous round, so watchers always have one interval of
//!   history to resume from.
//! - Errors: a connection failure, a timeout or etcd without a leader (no quorum) is
//!   [`StoreError::Unavailable`] keeping etcd's error as its source (the API answers 503);
//!   anything else is `Io`.
//!
//! # Failover between members
//!
//! The client spreads requests over every endpoint it was given, and its balancer keeps
//! a member whose process is gone in the pool: each request sent there fails at once
//! (connection refused), and as a failing endpoint has no requests pending it is even
//! picked more often than a busy live one. So with several endpoints the store probes
//! each member every [`HEALTH_INTERVAL`] (a `status` call over a connection of its own,
//! within [`PROBE_TIMEOUT`]) and keeps in the pool only those that answered
//! ([`pool_changes`]); a member that answers again is put back. When none answers, the
//! pool is left as it is: requests then fail with `Unavailable`, which is what the
//! cluster is. Between a member's death and the next probe, requests sent to it fail
//! with `Unavailable` and are retried by their callers, as any 503.
//!
//! # Restores: the revision epoch
//!
//! An etcd restored from a snapshot (`etcdctl snapshot restore`) is back at the
//! snapshot's revision, and etcd 3.4 cannot move it forward (`--bump-revision
//! --mark-compacted` came later). Clients that saw later revisions before the restore
//! would then watch from a revision that is still to come and miss everything written
//! until the restored etcd reaches it: a node would never learn that the pods made after
//! the snapshot are gone. So the marker's value records the etcd cluster the store runs
//! on (its cluster ID, which a restore into a new cluster changes) and an offset added
//! to every etcd revision. A member connecting to a cluster other than the recorded one
//! moves the offset [`crate::snapshot::REVISION_BUMP`] further (one CAS on the marker,
//! so concurrent members move it once): every resourceVersion handed out before is
//! below the new offset, and a watch from one is `Expired` (410), so clients list again,
//! as after the embedded store's restore. A restore must use a new
//! `--initial-cluster-token` (a cluster ID is derived from it and the members' URLs).

use super::{Event, EventKind, ListResult, Revision, Store, StoreError, StoredObject, Write};
use super::{WatchStream, one_write_per_key};
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, PutOptions,
    TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Keys read per range request of a list.
pub const LIST_PAGE: i64 = 500;

/// The default key prefix, kube-apiserver's.
pub const DEFAULT_PREFIX: &str = "/registry";

/// The default interval between compactions, kube-apiserver's.
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Where the etcd cluster is and how to talk to it.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Client URLs of the members (`http://127.0.0.1:2379`, `https://a:2379`, ...).
    pub endpoints: Vec<String>,
    /// Every key is under `PREFIX/`; must start with `/` and not end with it.
    pub prefix: String,
    /// Client TLS: the CA that signed the members' certificates, and a client
    /// certificate and key if the members ask for one.
    pub tls: Option<EtcdTls>,
    /// How long one request may take before it is `Unavailable` (default 10 s).
    pub request_timeout: Duration,
    /// Compact every this long (`None`: never; another member or an operator does).
    pub compaction_interval: Option<Duration>,
}

/// Files of the client TLS configuration (PEM).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: DEFAULT_PREFIX.to_owned(),
            tls: None,
            request_timeout: Duration::from_secs(10),
            compaction_interval: Some(DEFAULT_COMPACTION_INTERVAL),
        }
    }
}

/// The etcd backend. See the module doc.
pub struct EtcdStore {
    client: Client,
    /// `PREFIX/`: every key of the store starts with it.
    root: String,
    /// `PREFIX`: the key whose `mod_revision` is the store's revision.
    marker: String,
    /// What every txn writes to the marker: the [`Epoch`] this store runs in.
    marker_value: Vec<u8>,
    /// Added to every etcd revision (see "Restores" in the module doc).
    offset: Revision,
    leases: tokio::sync::Mutex<HashMap<u64, Lease>>,
    /// The endpoints requests are balanced over now (see "Failover between members").
    pool: Arc<std::sync::Mutex<BTreeSet<String>>>,
    /// The compaction and member probe loops, which end with the store.
    _tasks: Vec<Background>,
}

/// A task that is aborted when this is dropped (with the store, or when `connect` fails
/// after starting it).
struct Background(tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often every member is probed when there are several.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// How long a member may take to answer a probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What changes in the balanced pool after a probe round: the endpoints to add (answered,
/// not in the pool) and to remove (in the pool, did not answer). When no member answered,
/// nothing is removed: an empty pool would make every request wait for its timeout
/// instead of failing at once.
pub fn pool_changes(
    in_pool: &BTreeSet<String>,
    healthy: &BTreeSet<String>,
) -> (Vec<String>, Vec<String>) {
    let add = healthy.difference(in_pool).cloned().collect();
    let remove = if healthy.is_empty() {
        Vec::new()
    } else {
        in_pool.difference(healthy).cloned().collect()
    };
    (add, remove)
}

/// Probes every endpoint each [`HEALTH_INTERVAL`] and moves the balanced pool of `client`
/// to those that answered ([`pool_changes`]).
async fn keep_pool_healthy(
    client: Client,
    endpoints: Vec<String>,
    options: ConnectOptions,
    pool: Arc<std::sync::Mutex<BTreeSet<String>>>,
) {
    // One connection per member, so that a probe reaches exactly that member.
    let mut probes = Vec::new();
    for endpoint in &endpoints {
        match Client::connect([endpoint.as_str()], Some(options.clone())).await {
            Ok(probe) => probes.push((endpoint.clone(), probe)),
            Err(e) => tracing::warn!(%endpoint, error = %e, "etcd: cannot probe this member"),
        }
    }
    let mut ticks = tokio::time::interval(HEALTH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let answers = futures::future::join_all(probes.iter().map(|(endpoint, probe)| {
            let mut probe = probe.clone();
            async move {
                let answered = tokio::time::timeout(PROBE_TIMEOUT, probe.status())
                    .await
                    .is_ok_and(|r| r.is_ok());
                (endpoint.clone(), answered)
            }
        }))
        .await;
        let healthy: BTreeSet<String> = answers
            .into_iter()
            .filter_map(|(endpoint, answered)| answered.then_some(endpoint))
            .collect();
        let in_pool = pool.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (add, remove) = pool_changes(&in_pool, &healthy);
        for endpoint in add {
            match client.add_endpoint(&endpoint).await {
                Ok(()) => {
                    tracing::info!(%endpoint, "etcd member answers again: back in the pool");
                    pool.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(endpoint);
                }
                Err(e) => tracing::warn!(%endpoint, error = %e, "etcd: adding a member back"),
            }
        }
        for endpoint in remove {
            match client.remove_endpoint(&endpoint).await {
                Ok(()) => {
                    tracing::warn!(%endpoint, "etcd member does not answer: out of the pool");
                    pool.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&endpoint);
                }
                Err(e) => tracing::warn!(%endpoint, error = %e, "etcd: removing a member"),
            }
        }
    }
}

/// A lease granted for writes with one TTL.
#[derive(Clone, Copy, Debug)]
struct Lease {
    id: i64,
    granted: Instant,
}

/// How writes with a TTL share leases: the lease a write with `ttl` attaches, given the
/// one granted last for the same TTL (if any) at `now`. `Ok(id)` reuses it, `Err(secs)`
/// asks for a new lease of `secs`.
fn lease_for(ttl: Duration, last: Option<Lease>, now: Instant) -> Result<i64, i64> {
    let ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    let ttl_secs = ttl_secs.max(1);
    // 5% of the TTL, at most a minute.
    let reuse_secs = (ttl_secs / 20).min(60);
    match last {
        Some(lease) if now.duration_since(lease.granted) < Duration::from_secs(reuse_secs) => {
            Ok(lease.id)
        }
        _ => Err(i64::try_from(ttl_secs + reuse_secs).unwrap_or(i64::MAX)),
    }
}

/// The TTL bucket of a write: its TTL in whole seconds, rounded up.
fn ttl_bucket(ttl: Duration) -> u64 {
    (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1)
}

/// What an etcd error means for the caller: the cluster not answering (transport,
/// timeout, no leader, overloaded) is `Unavailable`; the rest is `Io`.
fn store_error(what: &str, error: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    let unavailable = match &error {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) => true,
        E::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Unknown
        ),
        _ => false,
    };
    if unavailable {
        StoreError::unavailable(format!("etcd {what}"), error)
    } else {
        StoreError::Io(format!("etcd {what}: {error}"))
    }
}

/// Whether etcd refused an operation because the revision it names is compacted.
fn is_compacted(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::OutOfRange && s.message().contains("compacted"))
}

/// Whether etcd refused a write because its lease is gone (expired, revoked).
fn is_lease_not_found(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::NotFound && s.message().contains("lease not found"))
}

/// The end of the etcd range of keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // Every key from `prefix` on.
}

/// The store revision of etcd revision `value` under `offset` (0 stays 0: no revision).
fn revision_of(offset: Revision, value: i64) -> Revision {
    match u64::try_from(value) {
        Ok(0) | Err(_) => 0,
        Ok(value) => value.saturating_add(offset),
    }
}

/// The etcd revision of store revision `value` under `offset`; a revision from before
/// the offset (an earlier epoch) is 0, which no key's `mod_revision` equals.
fn rev_i64(offset: Revision, value: Revision) -> i64 {
    if value < offset {
        return 0;
    }
    i64::try_from(value - offset).unwrap_or(i64::MAX)
}

/// What the marker key's value records: the etcd cluster the store last connected to and
/// the offset of its revisions (see "Restores" in the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Epoch {
    cluster: u64,
    offset: Revision,
}

/// The epoch a member connecting to etcd cluster `cluster` runs in, given what the marker
/// records (`None`: no marker or an empty one, from before epochs were recorded), and
/// whether the marker must be written. A different cluster is a restore: the offset
/// moves past every revision handed out before.
fn epoch_on_connect(recorded: Option<Epoch>, cluster: u64) -> (Epoch, bool) {
    match recorded {
        Some(epoch) if epoch.cluster == cluster => (epoch, false),
        Some(epoch) => (
            Epoch {
                cluster,
                offset: epoch.offset.saturating_add(crate::snapshot::REVISION_BUMP),
            },
            true,
        ),
        None => (Epoch { cluster, offset: 0 }, true),
    }
}

/// Why a write's precondition fails against the key's current state, if it does: the
/// same checks the etcd compares made, named as the trait's errors.
fn precondition(write: &Write, current: Option<&KeyValue>, offset: Revision) -> Option<StoreError> {
    let key = write.key().to_owned();
    let (expected, must_exist) = match write {
        Write::Create { .. } => {
            return current.map(|_| StoreError::AlreadyExists { key });
        }
        Write::Update { expected, .. } | Write::Delete { expected, .. } => (*expected, true),
    };
    let Some(current) = current else {
        return must_exist.then_some(StoreError::NotFound { key });
    };
    let actual = revision_of(offset, current.mod_revision());
    match expected {
        Some(expected) if expected != actual => Some(StoreError::Conflict {
            key,
            expected,
            actual,
        }),
        _ => None,
    }
}

/// The object an etcd key-value is, its key without the store's `root`.
fn decode_object(root: &str, offset: Revision, kv: &KeyValue) -> Result<StoredObject, StoreError> {
    let key = kv
        .key()
        .strip_prefix(root.as_bytes())
        .and_then(|k| std::str::from_utf8(k).ok())
        .ok_or_else(|| {
            StoreError::Io(format!(
                "etcd answered key {:?} outside {root}",
                String::from_utf8_lossy(kv.key()),
            ))
        })?;
    Ok(StoredObject {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        mod_revision: revision_of(offset, kv.mod_revision()),
        create_revision: revision_of(offset, kv.create_revision()),
    })
}

/// The event a watched etcd event is.
fn decode_event(
    root: &str,
    offset: Revision,
    event: &etcd_client::Event,
) -> Result<Event, StoreError> {
    let kv = event
        .kv()
        .ok_or_else(|| StoreError::Io("etcd sent a watch event without its key".into()))?;
    let prev = event
        .prev_kv()
        .map(|p| decode_object(root, offset, p))
        .transpose()?;
    let revision = revision_of(offset, kv.mod_revision());
    Ok(match event.event_type() {
        etcd_client::EventType::Put => Event {
            revision,
            kind: EventKind::Put,
            object: decode_object(root, offset, kv)?,
            prev,
            memo: Default::default(),
        },
        etcd_client::EventType::Delete => {
            // The previous value is gone only if etcd compacted it meanwhile; the key is
            // all a watcher then learns.
            let object = match &prev {
                Some(prev) => prev.clone(),
                None => StoredObject {
                    mod_revision: 0,
                    create_revision: 0,
                    ..decode_object(root, offset, kv)?
                },
            };
            Event {
                revision,
                kind: EventKind::Delete,
                object,
                prev,
                memo: Default::default(),
            }
        }
    })
}

impl EtcdStore {
    /// A store on the etcd cluster of `config`. Writes the revision key if the prefix has
    /// none yet (a store that was never written to still has a revision to watch from:
    /// etcd's revision 1 may be long compacted), so an etcd that is down is
    /// `Unavailable` here already.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore, StoreError> {
        let prefix = config.prefix.clone();
        if !prefix.starts_with('/') || prefix.ends_with('/') {
            return Err(StoreError::Io(format!(
                "etcd prefix {prefix:?} must start with '/' and not end with it"
            )));
        }
        let mut options = ConnectOptions::new()
            .with_timeout(config.request_timeout)
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true);
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls_options(tls).await?);
        }
        let client = Client::connect(&config.endpoints, Some(options.clone()))
            .await
            .map_err(|e| store_error("connect", e))?;
        let pool = Arc::new(std::sync::Mutex::new(
            config.endpoints.iter().cloned().collect::<BTreeSet<_>>(),
        ));
        let mut tasks = Vec::new();
        if config.endpoints.len() > 1 {
            tasks.push(Background(tokio::spawn(keep_pool_healthy(
                client.clone(),
                config.endpoints.clone(),
                options,
                pool.clone(),
            ))));
        }
        if let Some(every) = config.compaction_interval {
            tasks.push(Background(tokio::spawn(compact_periodically(
                client.clone(),
                prefix.clone(),
                every,
            ))));
        }
        let epoch = connect_epoch(&client, &prefix).await?;
        let marker_value = serde_json::to_vec(&epoch)
            .map_err(|e| StoreError::Io(format!("encoding the store's epoch: {e}")))?;
        Ok(EtcdStore {
            client,
            root: format!("{prefix}/"),
            marker: prefix,
            marker_value,
            offset: epoch.offset,
            leases: tokio::sync::Mutex::new(HashMap::new()),
            pool,
            _tasks: tasks,
        })
    }

    /// The endpoints requests are balanced over now: those that answered the last probe
    /// (see "Failover between members").
    pub fn endpoints_in_use(&self) -> BTreeSet<String> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    fn object(&self, kv: &KeyValue) -> Result<StoredObject, StoreError> {
        decode_object(&self.root, self.offset, kv)
    }

    /// Compacts etcd's history through `revision` (a watch from `revision - 1` on still
    /// works), waiting until it is done. Compacting to a revision already compacted is
    /// not an error.
    pub async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        match rev_i64(self.offset, revision) {
            0 => Ok(()), // Before this epoch: nothing of it to compact.
            raw => compact(&self.client, raw).await,
        }
    }

    /// The lease for a write with `ttl`, granting one if the last is too old.
    async fn lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let bucket = ttl_bucket(ttl);
        let mut leases = self.leases.lock().await;
        let now = Instant::now();
        match lease_for(ttl, leases.get(&bucket).copied(), now) {
            Ok(id) => Ok(id),
            Err(secs) => {
                let granted = self
                    .client
                    .clone()
                    .lease_grant(secs, None)
                    .await
                    .map_err(|e| store_error("lease grant", e))?;
                leases.insert(
                    bucket,
                    Lease {
                        id: granted.id(),
                        granted: now,
                    },
                );
                Ok(granted.id())
            }
        }
    }

    async fn txn_once(&self, writes: &[Write]) -> Result<Vec<Arc<Event>>, TxnError> {
        let mut compares = Vec::with_capacity(writes.len());
        let mut ops = Vec::with_capacity(writes.len() + 1);
        let mut reads = Vec::with_capacity(writes.len());
        for write in writes {
            let key = self.full(write.key());
            match write {
                Write::Create { value, ttl, .. } | Write::Update { value, ttl, .. } => {
                    let mut put = PutOptions::new().with_prev_key();
                    if let Some(ttl) = ttl {
                        put = put.with_lease(self.lease(*ttl).await?);
                    }
                    ops.push(TxnOp::put(key.clone(), value.to_vec(), Some(put)));
                }
                Write::Delete { .. } => {
                    ops.push(TxnOp::delete(
                        key.clone(),
                        Some(DeleteOptions::new().with_prev_key()),
                    ));
                }
            }
            compares.push(match write {
                Write::Create { .. } => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Write::Update {
                    expected: Some(rev),
                    ..
                }
                | Write::Delete {
                    expected: Some(rev),
                    ..
                } => {
                    Compare::mod_revision(key.clone(), CompareOp::Equal, rev_i64(self.offset, *rev))
                }
                Write::Update { expected: None, .. } | Write::Delete { expected: None, .. } => {
                    Compare::create_revision(key.clone(), CompareOp::Greater, 0)
                }
            });
            reads.push(TxnOp::get(key, None));
        }
        ops.push(TxnOp::put(
            self.marker.clone(),
            self.marker_value.clone(),
            None,
        ));
        let txn = etcd_client::Txn::new()
            .when(compares)
            .and_then(ops)
            .or_else(reads);
        let response = match self.client.clone().txn(txn).await {
            Ok(response) => response,
            Err(e) if is_lease_not_found(&e) => return Err(TxnError::LeaseGone),
            Err(e) => return Err(store_error("txn", e).into()),
        };
        let responses = response.op_responses();
        if !response.succeeded() {
            for (write, read) in writes.iter().zip(&responses) {
                let current = match read {
                    TxnOpResponse::Get(get) => get.kvs().first(),
                    _ => None,
                };
                if let Some(error) = precondition(write, current, self.offset) {
                    return Err(error.into());
                }
            }
            return Err(
                StoreError::Io("etcd refused a txn whose preconditions hold".into()).into(),
            );
        }
        let revision = revision_of(self.offset, response.header().map_or(0, |h| h.revision()));
        let mut events = Vec::with_capacity(writes.len());
        for (write, done) in writes.iter().zip(&responses) {
            let prev = match done {
                TxnOpResponse::Put(put) => put.prev_key(),
                TxnOpResponse::Delete(delete) => delete.prev_kvs().first(),
                _ => None,
            }
            .map(|kv| self.object(kv))
            .transpose()?;
            let event = match (write, prev) {
                (Write::Delete { .. }, Some(prev)) => Event {
                    revision,
                    kind: EventKind::Delete,
                    object: prev.clone(),
                    prev: Some(prev),
                    memo: Default::default(),
                },
                (Write::Delete { key, .. }, None) => {
                    return Err(StoreError::Io(format!(
                        "etcd deleted {key} without its previous value"
                    ))
                    .into());
                }
                (Write::Create { key, value, .. } | Write::Update { key, value, .. }, prev) => {
                    Event {
                        revision,
                        kind: EventKind::Put,
                        object: StoredObject {
                            key: key.clone(),
                            value: value.clone(),
                            mod_revision: revision,
                            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                        },
                        prev,
                        memo: Default::default(),
                    }
                }
            };
            events.push(Arc::new(event));
        }
        Ok(events)
    }
}

enum TxnError {
    Store(StoreError),
    /// A reused lease expired meanwhile: grant a new one and try again.
    LeaseGone,
}

impl From<StoreError> for TxnError {
    fn from(e: StoreError) -> Self {
        TxnError::Store(e)
    }
}

/// Reads the marker and settles the epoch this member runs in (see "Restores" in the
/// module doc), writing it when it changes by a CAS on the marker: a member that loses
/// the race reads the winner's epoch.
async fn connect_epoch(client: &Client, marker: &str) -> Result<Epoch, StoreError> {
    let failed = |e| store_error("connect", e);
    loop {
        let got = client.clone().get(marker, None).await.map_err(failed)?;
        let cluster = got.header().map_or(0, |h| h.cluster_id());
        let current = got.kvs().first();
        let recorded = match current.map(KeyValue::value) {
            None | Some([]) => None,
            Some(value) => Some(serde_json::from_slice::<Epoch>(value).map_err(|e| {
                StoreError::Io(format!(
                    "etcd key {marker} does not hold a wharf store's epoch ({e}); is the prefix another program's?"
                ))
            })?),
        };
        let (epoch, write) = epoch_on_connect(recorded, cluster);
        if !write {
            return Ok(epoch);
        }
        if let Some(before) = recorded {
            tracing::warn!(
                recorded_cluster = before.cluster,
                cluster,
                offset = epoch.offset,
                "the store's etcd is a different cluster than before (restored from a snapshot?): \
                 resourceVersions move past every earlier one, clients list again"
            );
        }
        let unchanged = match current {
            Some(kv) => Compare::mod_revision(marker, CompareOp::Equal, kv.mod_revision()),
            None => Compare::create_revision(marker, CompareOp::Equal, 0),
        };
        let value = serde_json::to_vec(&epoch)
            .map_err(|e| StoreError::Io(format!("encoding the store's epoch: {e}")))?;
        let txn = etcd_client::Txn::new()
            .when([unchanged])
            .and_then([TxnOp::put(marker, value, None)]);
        if client.clone().txn(txn).await.map_err(failed)?.succeeded() {
            return Ok(epoch);
        }
    }
}

async fn tls_options(tls: &EtcdTls) -> Result<etcd_client::TlsOptions, StoreError> {
    async fn read(path: &PathBuf) -> Result<Vec<u8>, StoreError> {
        tokio::fs::read(path)
            .await
            .map_err(|e| StoreError::Io(format!("reading {}: {e}", path.display())))
    }
    let mut options = etcd_client::TlsOptions::new();
    if let Some(ca) = &tls.ca_file {
        options = options.ca_certificate(etcd_client::Certificate::from_pem(read(ca).await?));
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            options = options.identity(etcd_client::Identity::from_pem(
                read(cert).await?,
                read(key).await?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Io(
                "an etcd client certificate needs both a certificate and a key file".into(),
            ));
        }
    }
    Ok(options)
}

/// Compacts etcd through its own revision `revision`.
async fn compact(client: &Client, revision: i64) -> Result<(), StoreError> {
    let options = etcd_client::CompactionOptions::new().with_physical();
    match client.clone().compact(revision, Some(options)).await {
        Ok(_) => Ok(()),
        Err(e) if is_compacted(&e) => Ok(()),
        Err(e) => Err(store_error("compact", e)),
    }
}

/// Every `every`, compacts to the revision seen at the previous round.
async fn compact_periodically(client: Client, marker: String, every: Duration) {
    let mut previous: Option<i64> = None;
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await; // The first tick is at once.
    loop {
        ticks.tick().await;
        let now = match client.clone().get(marker.clone(), None).await {
            Ok(r) => r.header().map(|h| h.revision()),
            Err(e) => {
                tracing::warn!(error = %e, "etcd compaction: reading the revision failed");
                continue;
            }
        };
        if let Some(target) = previous.filter(|&p| p > 0) {
            match compact(&client, target).await {
                Ok(()) => tracing::debug!(revision = target, "compacted etcd"),
                Err(e) => tracing::warn!(error = %e, revision = target, "etcd compaction failed"),
            }
        }
        previous = now;
    }
}

impl Store for EtcdStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<StoredObject>, StoreError>> {
        Box::pin(async move {
            let response = self
                .client
                .clone()
                .get(self.full(key), None)
                .await
                .map_err(|e| store_error("get", e))?;
            response.kvs().first().map(|kv| self.object(kv)).transpose()
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<ListResult, StoreError>> {
        Box::pin(async move {
            let start = self.full(prefix).into_bytes();
            let end = prefix_end(&start);
            // The first page and the store's revision, at one etcd revision.
            let first = etcd_client::Txn::new().and_then([
                TxnOp::get(
                    start.clone(),
                    Some(
                        GetOptions::new()
                            .with_range(end.clone())
                            .with_limit(LIST_PAGE),
                    ),
                ),
                TxnOp::get(self.marker.clone(), None),
            ]);
            let response = self
                .client
                .clone()
                .txn(first)
                .await
                .map_err(|e| store_error("list", e))?;
            let at = response.header().map_or(0, |h| h.revision());
            let mut items = Vec::new();
            let mut revision = 0;
            let mut more = false;
            for (i, part) in response.op_responses().iter().enumerate() {
                let TxnOpResponse::Get(get) = part else {
                    continue;
                };
                if i == 0 {
                    for kv in get.kvs() {
                        items.push(self.object(kv)?);
                    }
                    more = get.more();
                } else {
                    revision = get
                        .kvs()
                        .first()
                        .map_or(0, |kv| revision_of(self.offset, kv.mod_revision()));
                }
            }
            while more {
                let Some(last) = items.last() else { break };
                let mut from = self.full(&last.key).into_bytes();
                from.push(0);
                let options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(LIST_PAGE)
                    .with_revision(at);
                let page = self
                    .client
                    .clone()
                    .get(from, Some(options))
                    .await
                    .map_err(|e| store_error("list", e))?;
                for kv in page.kvs() {
                    items.push(self.object(kv)?);
                }
                more = page.more() && !page.kvs().is_empty();
            }
            Ok(ListResult { items, revision })
        })
    }

    fn txn<'a>(&'a self, writes: Vec<Write>) -> BoxFuture<'a, Result<Vec<Arc<Event>>, StoreError>> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(Vec::new());
            }
            one_write_per_key(&writes)?;
            match self.txn_once(&writes).await {
                Ok(events) => Ok(events),
                Err(TxnError::Store(e)) => Err(e),
                Err(TxnError::LeaseGone) => {
                    self.leases.lock().await.clear();
                    match self.txn_once(&writes).await {
                        Ok(events) => Ok(events),
                        Err(TxnError::Store(e)) => Err(e),
                        Err(TxnError::LeaseGone) => Err(StoreError::Io(
                            "etcd lost a lease granted for this write".into(),
                        )),
                    }
                }
            }
        })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        Box::pin(async move {
            if after < self.offset {
                // A revision of an earlier epoch: what came after it is unknowable here.
                let expired = StoreError::Expired {
                    requested: after,
                    oldest: self.offset,
                };
                return Ok(futures::stream::once(futures::future::ready(Err(expired))).boxed());
            }
            let start = self.full(prefix).into_bytes();
            let options = WatchOptions::new()
                .with_range(prefix_end(&start))
                .with_start_revision(rev_i64(self.offset, after.saturating_add(1)))
                .with_prev_key();
            let stream = self
                .client
                .clone()
                .watch(start, Some(options))
                .await
                .map_err(|e| store_error("watch", e))?;
            let root = self.root.clone();
            struct State {
                stream: etcd_client::WatchStream,
                ready: VecDeque<Result<Arc<Event>, StoreError>>,
                done: bool,
                root: String,
                offset: Revision,
                after: Revision,
            }
            let state = State {
                stream,
                ready: VecDeque::new(),
                done: false,
                root,
                offset: self.offset,
                after,
            };
            let events = futures::stream::unfold(state, |mut s| async move {
                loop {
                    if let Some(item) = s.ready.pop_front() {
                        return Some((item, s));
                    }
                    if s.done {
                        return None;
                    }
                    match s.stream.message().await {
                        Ok(Some(response)) => {
                            if response.compact_revision() > 0 {
                                s.done = true;
                                s.ready.push_back(Err(StoreError::Expired {
                                    requested: s.after,
                                    oldest: revision_of(s.offset, response.compact_revision())
                                        .saturating_sub(1),
                                }));
                                continue;
                            }
                            for event in response.events() {
                                let event = decode_event(&s.root, s.offset, event).map(Arc::new);
                                if let Ok(e) = &event {
                                    s.after = e.revision;
                                }
                                let failed = event.is_err();
                                s.ready.push_back(event);
                                if failed {
                                    s.done = true;
                                    break;
                                }
                            }
                            if response.canceled() && !s.done {
                                s.done = true;
                                s.ready.push_back(Err(StoreError::unavailable(
                                    "etcd watch",
                                    format!("canceled: {}", response.cancel_reason()),
                                )));
                            }
                        }
                        Ok(None) => {
                            s.done = true;
                            s.ready.push_back(Err(StoreError::unavailable(
                                "etcd watch",
                                "the stream ended",
                            )));
                        }
                        Err(e) => {
                            s.done = true;
                            s.ready.push_back(Err(store_error("watch", e)));
                        }
                    }
                }
            });
            Ok(events.boxed())
        })
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(async move {
            let response = self
                .client
                .clone()
                .get(self.marker.clone(), None)
                .await
                .map_err(|e| store_error("revision", e))?;
            Ok(response
                .kvs()
                .first()
                .map_or(0, |kv| revision_of(self.offset, kv.mod_revision())))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::conformance::etcd::{SERIAL, fresh_store};
    use crate::store::local_etcd::LocalEtcd;

    #[test]
    fn writes_with_one_ttl_share_a_lease_for_a_while() {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        // No lease yet: one for the TTL plus 5% of it, at most a minute.
        assert_eq!(lease_for(hour, None, now), Err(3660));
        assert_eq!(lease_for(Duration::from_secs(100), None, now), Err(105));
        let lease = Lease {
            id: 7,
            granted: now,
        };
        assert_eq!(
            lease_for(hour, Some(lease), now + Duration::from_secs(59)),
            Ok(7)
        );
        assert_eq!(
            lease_for(hour, Some(lease), now + Duration::from_secs(60)),
            Err(3660)
        );
        // A TTL too short for a window gets a lease per write.
        assert_eq!(
            lease_for(Duration::from_millis(1500), Some(lease), now),
            Err(2)
        );
        assert_eq!(ttl_bucket(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn a_different_etcd_cluster_moves_the_epoch_past_every_earlier_revision() {
        let bump = crate::snapshot::REVISION_BUMP;
        // A fresh prefix, or one from before epochs: recorded, offset 0.
        assert_eq!(
            epoch_on_connect(None, 7),
            (
                Epoch {
                    cluster: 7,
                    offset: 0
                },
                true
            )
        );
        let epoch = Epoch {
            cluster: 7,
            offset: bump,
        };
        // The same cluster again (a restarted member): as it was.
        assert_eq!(epoch_on_connect(Some(epoch), 7), (epoch, false));
        // A restored one: one more bump.
        assert_eq!(
            epoch_on_connect(Some(epoch), 9),
            (
                Epoch {
                    cluster: 9,
                    offset: 2 * bump
                },
                true
            )
        );
        // Revisions of an earlier epoch name no etcd revision.
        assert_eq!(revision_of(bump, 5), bump + 5);
        assert_eq!(revision_of(bump, 0), 0);
        assert_eq!(rev_i64(bump, bump + 5), 5);
        assert_eq!(rev_i64(bump, 5), 0);
    }

    #[test]
    fn prefix_ends_are_the_next_key() {
        assert_eq!(prefix_end(b"/registry/"), b"/registry0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn a_txn_may_write_a_key_once() {
        let del = |k: &str| Write::Delete {
            key: k.into(),
            expected: None,
        };
        assert!(crate::store::one_write_per_key(&[del("a"), del("b")]).is_ok());
        assert_eq!(
            crate::store::one_write_per_key(&[del("a"), del("b"), del("a")]),
            Err(StoreError::Io("a txn writes a more than once".into()))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_txn_writing_a_key_twice_is_refused_whole() {
        let store = fresh_store().await;
        let before = store.revision().await.unwrap();
        let writes = vec![
            Write::Create {
                key: "c/r/ns/a".into(),
                value: Bytes::from_static(b"{}"),
                ttl: None,
            },
            Write::Delete {
                key: "c/r/ns/a".into(),
                expected: None,
            },
        ];
        assert!(matches!(
            store.txn(writes).await,
            Err(StoreError::Io(m)) if m.contains("more than once")
        ));
        assert_eq!(store.revision().await.unwrap(), before);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_etcd_that_does_not_answer_is_unavailable_with_its_cause() {
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = EtcdConfig::new(vec![format!("http://127.0.0.1:{port}")]);
        config.request_timeout = Duration::from_secs(2);
        config.compaction_interval = None;
        let error = tokio::time::timeout(Duration::from_secs(20), EtcdStore::connect(config))
            .await
            .unwrap()
            .err()
            .unwrap();
        let StoreError::Unavailable { what, source } = &error else {
            panic!("expected Unavailable, got {error:?}");
        };
        assert_eq!(what, "etcd connect");
        assert!(!source.to_string().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ttl_writes_expire_as_delete_events_and_reuse_one_lease() {
        let store = fresh_store().await;
        let from = store.revision().await.unwrap();
        let ttl = Some(Duration::from_secs(1));
        let mut watch = store.watch("c/", from).await.unwrap();
        store
            .create_with_ttl("c/ev/ns/a", Bytes::from_static(b"{}"), ttl)
            .await
            .unwrap();
        store
            .create_with_ttl("c/ev/ns/b", Bytes::from_static(b"{}"), ttl)
            .await
            .unwrap();
        let long = Some(Duration::from_secs(3600));
        store
            .create_with_ttl("c/ev/ns/c", Bytes::from_static(b"{}"), long)
            .await
            .unwrap();
        store
            .create_with_ttl("c/ev/ns/d", Bytes::from_static(b"{}"), long)
            .await
            .unwrap();
        // The hour-long writes share one lease; the second-long ones cannot (no window).
        let lease_of = |key: &'static str| {
            let store = store.clone();
            async move {
                let got = store.client.clone().get(store.full(key), None).await;
                got.unwrap().kvs()[0].lease()
            }
        };
        assert_eq!(lease_of("c/ev/ns/c").await, lease_of("c/ev/ns/d").await);
        assert_ne!(lease_of("c/ev/ns/c").await, 0);
        let mut deleted = Vec::new();
        while deleted.len() < 2 {
            let event = tokio::time::timeout(Duration::from_secs(20), watch.next())
                .await
                .expect("the short-lived objects expire")
                .unwrap()
                .unwrap();
            if event.kind == EventKind::Delete {
                assert_eq!(event.object.value, Bytes::from_static(b"{}"));
                deleted.push(event.object.key.clone());
            }
        }
        deleted.sort();
        assert_eq!(deleted, ["c/ev/ns/a", "c/ev/ns/b"]);
        assert!(store.get("c/ev/ns/c").await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lists_longer_than_a_page_read_every_page_in_key_order() {
        let _serial = SERIAL.lock().await;
        let store = fresh_store().await;
        let n = usize::try_from(LIST_PAGE).unwrap() * 2 + 7;
        let writes: Vec<Write> = (0..n)
            .map(|i| Write::Create {
                key: format!("c/r/ns/{i:05}"),
                value: Bytes::from_static(b"{}"),
                ttl: None,
            })
            .collect();
        // etcd takes at most 128 operations a txn by default.
        for chunk in writes.chunks(100) {
            store.txn(chunk.to_vec()).await.unwrap();
        }
        let listed = store.list("c/r/").await.unwrap();
        assert_eq!(listed.items.len(), n);
        assert!(listed.items.windows(2).all(|w| w[0].key < w[1].key));
        assert_eq!(listed.revision, store.revision().await.unwrap());
    }

    #[test]
    fn the_pool_keeps_the_members_that_answer() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let all = set(&["a", "b", "c"]);
        // b stopped answering: out; nothing to add.
        assert_eq!(
            pool_changes(&all, &set(&["a", "c"])),
            (vec![], vec!["b".to_string()])
        );
        // b answers again: back in.
        assert_eq!(
            pool_changes(&set(&["a", "c"]), &all),
            (vec!["b".to_string()], vec![])
        );
        // Nobody answers: the pool stays, so requests fail at once instead of waiting.
        assert_eq!(pool_changes(&all, &set(&[])), (vec![], vec![]));
        // Only a member out of the pool answers: it comes in, the silent ones go.
        assert_eq!(
            pool_changes(&set(&["a", "b"]), &set(&["c"])),
            (
                vec!["c".to_string()],
                vec!["a".to_string(), "b".to_string()]
            )
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_continue_when_one_of_three_members_dies() {
        let mut members = tokio::task::spawn_blocking(|| LocalEtcd::cluster(3))
            .await
            .unwrap()
            .unwrap();
        let mut config = EtcdConfig::new(members.iter().map(|m| m.client_url.clone()).collect());
        config.request_timeout = Duration::from_secs(2);
        config.compaction_interval = None;
        let store = EtcdStore::connect(config).await.unwrap();
        let value = || Bytes::from_static(b"{}");
        store.create("c/r/ns/before", value()).await.unwrap();
        // The leader goes: the survivors must elect another one.
        let mut leader = None;
        for (i, member) in members.iter().enumerate() {
            let mut client = Client::connect([member.client_url.as_str()], None)
                .await
                .unwrap();
            let status = client.status().await.unwrap();
            if status.header().map(|h| h.member_id()) == Some(status.leader()) {
                leader = Some(i);
            }
        }
        let dead = members.remove(leader.expect("one member leads"));
        let dead_url = dead.client_url.clone();
        tokio::task::spawn_blocking(move || drop(dead))
            .await
            .unwrap();
        // Each write is retried while etcd elects a leader or the client moves off the
        // dead member (`Unavailable`), and must land within the deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for i in 0..20 {
            let key = format!("c/r/ns/after-{i}");
            loop {
                match store.create(&key, value()).await {
                    Ok(_) => break,
                    // A create that landed before its answer was lost is there now.
                    Err(StoreError::AlreadyExists { .. }) => break,
                    Err(StoreError::Unavailable { .. })
                        if tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("write {i} after a member died: {e}"),
                }
            }
        }
        // A read may also meet the dead member once before the client drops it.
        let listed = loop {
            match store.list("c/r/ns/").await {
                Ok(listed) => break listed,
                Err(StoreError::Unavailable { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("list after a member died: {e}"),
            }
        };
        assert_eq!(listed.items.len(), 21);
        // The probes take the dead member out of the pool; from then on no request is
        // sent to it, and none fails.
        tokio::time::timeout(Duration::from_secs(10), async {
            while store.endpoints_in_use().contains(&dead_url) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the dead member is still in the pool");
        assert_eq!(store.endpoints_in_use().len(), 2);
        for i in 0..100 {
            store
                .create(&format!("c/r/ns/later-{i}"), value())
                .await
                .unwrap_or_else(|e| panic!("write {i} with the dead member out: {e}"));
            store
                .get(&format!("c/r/ns/later-{i}"))
                .await
                .unwrap_or_else(|e| panic!("read {i} with the dead member out: {e}"));
        }
    }

    /// An `etcdctl snapshot restore` brings etcd back to the snapshot's revision: the
    /// store on the restored etcd hands out revisions past every one the store handed out
    /// before, and a watch or a compare-and-swap from one of those fails (`Expired`,
    /// `Conflict`) instead of silently missing what the restored etcd writes next.
    #[tokio::test]
    async fn a_store_on_a_restored_etcd_moves_past_every_earlier_revision() {
        let etcd = tokio::task::spawn_blocking(LocalEtcd::start)
            .await
            .unwrap()
            .unwrap();
        let config = |url: &str| {
            let mut config = EtcdConfig::new(vec![url.to_owned()]);
            config.compaction_interval = None;
            config
        };
        let store = EtcdStore::connect(config(&etcd.client_url)).await.unwrap();
        let value = || Bytes::from_static(b"{}");
        let kept = store.create("c/r/ns/kept", value()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("etcd.snap");
        let saved = tokio::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.client_url, "snapshot", "save"])
            .arg(&snapshot)
            .output();
        let saved = tokio::time::timeout(Duration::from_secs(30), saved)
            .await
            .unwrap()
            .unwrap();
        assert!(saved.status.success(), "{saved:?}");
        // After the snapshot: more revisions than the restored etcd writes below.
        for i in 0..5 {
            store
                .update("c/r/ns/kept", value(), None)
                .await
                .unwrap_or_else(|e| panic!("update {i}: {e}"));
        }
        let seen = store.revision().await.unwrap();
        drop(store);
        tokio::task::spawn_blocking(move || drop(etcd))
            .await
            .unwrap();

        let restored = tokio::task::spawn_blocking(move || LocalEtcd::restored(&snapshot))
            .await
            .unwrap()
            .unwrap();
        let store = EtcdStore::connect(config(&restored.client_url))
            .await
            .unwrap();
        let back = store.get("c/r/ns/kept").await.unwrap().unwrap();
        assert!(back.mod_revision > seen, "{} <= {seen}", back.mod_revision);
        assert_eq!(
            back.mod_revision,
            kept.mod_revision + crate::snapshot::REVISION_BUMP
        );
        // A watcher that saw `seen` must list again.
        let mut watch = store.watch("c/r/", seen).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap();
        assert!(
            matches!(first, Some(Err(StoreError::Expired { .. }))),
            "{first:?}"
        );
        // A write naming the revision the object had before the restore conflicts.
        let stale = store.update("c/r/ns/kept", value(), Some(kept.mod_revision));
        assert!(
            matches!(stale.await, Err(StoreError::Conflict { .. })),
            "a stale compare-and-swap went through"
        );
        // Watches from the new revisions see new writes; a second member on the same etcd
        // runs in the same epoch (no second bump).
        let now = store.revision().await.unwrap();
        let mut watch = store.watch("c/r/", now).await.unwrap();
        let second = EtcdStore::connect(config(&restored.client_url))
            .await
            .unwrap();
        let made = second.create("c/r/ns/new", value()).await.unwrap();
        assert!(made.mod_revision > now);
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.object.key, "c/r/ns/new");
        assert_eq!(event.revision, made.mod_revision);
        drop((store, second));
        tokio::task::spawn_blocking(move || drop(restored))
            .await
            .unwrap();
    }
}
