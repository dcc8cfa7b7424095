//! Allocation state in the store: Service cluster IPs, Service node ports and node pod
//! ranges, each a set kept under a reserved key and changed in the same store txn as the
//! object that takes or frees a value.
//!
//! Why in the store, and why a txn: several API servers may serve one store (etcd), so no
//! lock in one process can keep two of them from handing out the same address. As
//! kube-apiserver keeps its range allocations in etcd, each allocator is one stored object
//! (see [`RANGES`]); a write that takes values adds them to the set and a write that frees
//! them removes them, and the object's own write and the set's compare-and-swap update are
//! one [`Store::txn`]. Two servers that pick the same value race on the set's revision:
//! one txn commits, the other sees `Conflict` and allocates again against the new set. A
//! crash can never leave a value taken by no object or held by two, because the object and
//! the set change together. [`repair`] rebuilds every set from the objects on start, for
//! stores written before the sets existed (and for any hand edit).
//!
//! Allocation reads one small object instead of listing every Service or Node, so
//! registering the n-th Node costs O(n) in the size of the set, not a list of all Nodes
//! under a lock.
//!
//! Pod ranges: every node gets a distinct /16 inside 127.0.0.0/8 as its `spec.podCIDR`, so
//! that pods of several nodes on one machine never share an address and any user may bind
//! them (all of 127/8 is loopback on Linux). Ranges are handed out from 127.64.0.0 to
//! 127.127.0.0 (64 nodes per machine); a Node that brings its own `podCIDR` keeps it (one
//! inside that pool must be free).

use super::AppState;
use super::error::{ApiError, Subject};
use super::objects::{decode, meta_str};
use super::request::Target;
use crate::api::kinds::ResourceKind;
use crate::api::validation::{FieldError, Reason};
use crate::store::{Event, Revision, Store, StoreError, StoredObject, Write, collection_prefix};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The allocator of Service cluster IPs.
pub const SERVICE_IPS: &str = "ranges/serviceips";
/// The allocator of Service node ports.
pub const SERVICE_NODE_PORTS: &str = "ranges/servicenodeports";
/// The allocator of node pod ranges.
pub const POD_CIDRS: &str = "ranges/podcidrs";
/// Every allocator key. `ranges/` is no API group, so no collection prefix selects them.
pub const RANGES: [&str; 3] = [SERVICE_IPS, SERVICE_NODE_PORTS, POD_CIDRS];

/// How long a write keeps retrying when other writers changed an allocator meanwhile.
/// Every Service or Node write that allocates goes through one key per allocator, so a
/// burst of N concurrent creates is N rounds of compare-and-swap: the bound is time, not a
/// count of lost rounds, as a count would fail the unlucky writers of a large burst.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// Retries with jittered exponential back-off (1 ms doubling to 32 ms) until `RETRY_FOR`
/// has passed, so that writers that lost a round do not all come back at once.
struct Backoff {
    deadline: tokio::time::Instant,
    attempt: u32,
}

impl Backoff {
    fn new() -> Self {
        Self {
            deadline: tokio::time::Instant::now() + RETRY_FOR,
            attempt: 0,
        }
    }

    /// Waits before the next attempt; false once the time is up.
    async fn wait(&mut self) -> bool {
        if tokio::time::Instant::now() >= self.deadline {
            return false;
        }
        let cap_ms = 1u64 << self.attempt.min(5);
        self.attempt += 1;
        let ms = rand::random_range(0..=cap_ms);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        true
    }
}

/// The first pod range after the ones in `taken` (pure).
pub fn next_free(taken: &BTreeSet<String>) -> Option<String> {
    pod_pool().find(|cidr| !taken.contains(cidr))
}

/// Every pod range the control plane hands out.
fn pod_pool() -> impl Iterator<Item = String> {
    (64u8..=127).map(|x| format!("127.{x}.0.0/16"))
}

fn in_pod_pool(cidr: &str) -> bool {
    pod_pool().any(|c| c == cidr)
}

/// Sets `spec.podCIDR` on a Node object that has none, from the ranges not in `taken`; a
/// given range from the pool must not be taken (pure).
pub fn assign(node: &mut Value, taken: &BTreeSet<String>) -> Result<(), FieldError> {
    if let Some(given) = node
        .pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
    {
        if in_pod_pool(given) && taken.contains(given) {
            return Err(FieldError::invalid(
                "spec.podCIDR",
                given,
                "provided range is already allocated",
            ));
        }
        return Ok(());
    }
    let cidr = next_free(taken).ok_or_else(|| {
        FieldError::new(
            "spec.podCIDR",
            Reason::Invalid,
            None,
            "every pod range in 127.64.0.0-127.127.255.255 is taken",
        )
    })?;
    if let Some(map) = node.as_object_mut() {
        let spec = map.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            spec.insert("podCIDR".into(), json!(cidr));
            spec.insert("podCIDRs".into(), json!([cidr]));
        }
    }
    Ok(())
}

/// One allocator as read: its values and the revision its update must compare against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Range {
    pub key: &'static str,
    /// `None` while the allocator was never written.
    pub revision: Option<Revision>,
    pub allocated: BTreeSet<String>,
}

impl Range {
    /// The write that replaces this allocator's set with `allocated`, if it is unchanged.
    fn write(&self, allocated: &BTreeSet<String>) -> Write {
        let value = bytes::Bytes::from(json!({ "allocated": allocated }).to_string());
        match self.revision {
            None => Write::Create {
                key: self.key.to_owned(),
                value,
                ttl: None,
            },
            Some(rev) => Write::Update {
                key: self.key.to_owned(),
                value,
                expected: Some(rev),
                ttl: None,
            },
        }
    }
}

/// Reads the allocator at `key`.
pub async fn read(store: &dyn Store, key: &'static str) -> Result<Range, StoreError> {
    let Some(stored) = store.get(key).await? else {
        return Ok(Range {
            key,
            ..Range::default()
        });
    };
    let value: Value = serde_json::from_slice(&stored.value)
        .map_err(|e| StoreError::Io(format!("allocator {key} is not JSON: {e}")))?;
    let allocated = value
        .get("allocated")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    Ok(Range {
        key,
        revision: Some(stored.mod_revision),
        allocated,
    })
}

/// The kinds whose objects hold allocated values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    Service,
    Node,
}

impl Holder {
    pub fn of(kind: &ResourceKind) -> Option<Holder> {
        match (kind.group, kind.kind) {
            ("", "Service") => Some(Holder::Service),
            ("", "Node") => Some(Holder::Node),
            _ => None,
        }
    }

    /// The allocators this kind takes values from.
    fn ranges(self) -> &'static [&'static str] {
        match self {
            Holder::Service => &[SERVICE_IPS, SERVICE_NODE_PORTS],
            Holder::Node => &[POD_CIDRS],
        }
    }

    /// The values `obj` holds, as `(allocator, value)` (pure).
    pub fn held(self, obj: &Value) -> BTreeSet<(&'static str, String)> {
        let mut out = BTreeSet::new();
        let spec = obj.get("spec");
        match self {
            Holder::Service => {
                let ips = spec
                    .and_then(|s| s.get("clusterIPs"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .chain(spec.and_then(|s| s.get("clusterIP")));
                for ip in ips.filter_map(Value::as_str) {
                    if let Ok(ip) = ip.parse::<std::net::Ipv4Addr>() {
                        out.insert((SERVICE_IPS, ip.to_string()));
                    }
                }
                let ports = spec
                    .and_then(|s| s.get("ports"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.get("nodePort"))
                    .chain(spec.and_then(|s| s.get("healthCheckNodePort")));
                for port in ports.filter_map(Value::as_i64).filter(|p| *p > 0) {
                    out.insert((SERVICE_NODE_PORTS, port.to_string()));
                }
            }
            Holder::Node => {
                if let Some(cidr) = spec
                    .and_then(|s| s.get("podCIDR"))
                    .and_then(Value::as_str)
                    .filter(|c| in_pod_pool(c))
                {
                    out.insert((POD_CIDRS, cidr.to_owned()));
                }
            }
        }
        out
    }
}

/// Why [`commit`] did not store a write.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another object took `value` since it was chosen: allocate again.
    #[error("{value} is already allocated in {range}")]
    Taken { range: &'static str, value: String },
}

/// Stores `write`, the write of an object of `kind` that held `before` and will hold
/// `after` (`None`: absent), in one txn with the allocator changes between the two. An
/// allocator changed meanwhile by another server is read again and the txn retried;
/// [`CommitError::Taken`] if a value this write takes was taken meanwhile. Kinds that hold
/// nothing are written alone.
pub async fn commit(
    store: &dyn Store,
    kind: &ResourceKind,
    write: Write,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Result<Vec<Arc<Event>>, CommitError> {
    let Some(holder) = Holder::of(kind) else {
        return Ok(store.txn(vec![write]).await?);
    };
    let held = |obj: Option<&Value>| obj.map(|o| holder.held(o)).unwrap_or_default();
    let (old, new) = (held(before), held(after));
    if old == new {
        return Ok(store.txn(vec![write]).await?);
    }
    let mut backoff = Backoff::new();
    loop {
        let mut writes = vec![write.clone()];
        for &key in holder.ranges() {
            let adds: Vec<&String> = new
                .difference(&old)
                .filter(|(r, _)| *r == key)
                .map(|(_, v)| v)
                .collect();
            let removes: Vec<&String> = old
                .difference(&new)
                .filter(|(r, _)| *r == key)
                .map(|(_, v)| v)
                .collect();
            if adds.is_empty() && removes.is_empty() {
                continue;
            }
            let range = read(store, key).await?;
            let mut allocated = range.allocated.clone();
            for v in removes {
                allocated.remove(v);
            }
            for v in adds {
                if !allocated.insert(v.clone()) {
                    return Err(CommitError::Taken {
                        range: key,
                        value: v.clone(),
                    });
                }
            }
            writes.push(range.write(&allocated));
        }
        match store.txn(writes).await {
            Ok(events) => return Ok(events),
            // Another server changed an allocator between the read and the txn.
            Err(StoreError::Conflict { key, .. } | StoreError::AlreadyExists { key })
                if RANGES.contains(&key.as_str()) => {}
            Err(e) => return Err(e.into()),
        }
        if !backoff.wait().await {
            break;
        }
    }
    Err(StoreError::Conflict {
        key: holder.ranges()[0].to_owned(),
        expected: 0,
        actual: 0,
    }
    .into())
}

/// Node IPAM for a Node being created: fills `spec.podCIDR` from the pod ranges no other
/// Node holds (the Node strategy's admission).
pub async fn admit_node(
    state: &AppState,
    target: &Target,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let subject = Subject {
        group: String::new(),
        resource: "nodes".into(),
        name: meta_str(obj, "name").unwrap_or_default().to_owned(),
    };
    let taken = read(state.store.as_ref(), POD_CIDRS)
        .await
        .map_err(|e| ApiError::from_store(e, subject.clone()))?;
    assign(obj, &taken.allocated).map_err(|e| ApiError::invalid(subject, target.kind.kind, vec![e]))
}

/// Creates `obj` at `key` together with what its admission allocated, for any kind (kinds
/// that hold nothing are written alone). If another server took one of its values first,
/// the kind's admission runs again on `original`, the object as it was before admission.
/// Returns what was stored and the object it was encoded from.
pub async fn store_create(
    state: &AppState,
    target: &Target,
    key: &str,
    mut obj: Value,
    original: Value,
) -> Result<(StoredObject, Value), ApiError> {
    let name = meta_str(&obj, "name").unwrap_or_default().to_owned();
    let subject = Subject {
        group: target.kind.group.to_owned(),
        resource: target.kind.plural.to_owned(),
        name,
    };
    let mut backoff = Backoff::new();
    loop {
        let write = Write::Create {
            key: key.to_owned(),
            value: super::registry::store::encode_stored(target.kind, &obj)?,
            ttl: state.config.ttl_of(target.kind),
        };
        match commit(state.store.as_ref(), target.kind, write, None, Some(&obj)).await {
            Ok(events) => {
                return events
                    .first()
                    .map(|e| (e.object.clone(), obj))
                    .ok_or_else(|| ApiError::Internal("a create stored nothing".into()));
            }
            Err(CommitError::Store(e)) => return Err(ApiError::from_store(e, subject)),
            Err(CommitError::Taken { .. }) => {
                obj = original.clone();
                let admitted = target
                    .kind
                    .strategy
                    .admit_create(state, target, &mut obj)
                    .await?;
                drop(admitted);
            }
        }
        if !backoff.wait().await {
            break;
        }
    }
    Err(ApiError::conflict(
        subject,
        "too many concurrent allocations; please try again",
    ))
}

/// Deletes `key` (whose object is `current`) if its revision is still `expected`, freeing
/// what it held in the same txn.
pub async fn delete(
    store: &dyn Store,
    kind: &ResourceKind,
    key: &str,
    expected: Revision,
    current: &Value,
) -> Result<Event, StoreError> {
    let write = Write::Delete {
        key: key.to_owned(),
        expected: Some(expected),
    };
    match commit(store, kind, write, Some(current), None).await {
        Ok(events) => events
            .first()
            .map(|e| Event::clone(e))
            .ok_or_else(|| StoreError::Io("a delete stored nothing".into())),
        Err(CommitError::Store(e)) => Err(e),
        // A delete only frees values.
        Err(CommitError::Taken { range, value }) => Err(StoreError::Io(format!(
            "freeing {value} in {range} found it taken"
        ))),
    }
}

/// Makes every allocator hold exactly what the stored objects hold (as kube-apiserver's
/// repair loops do): for stores written before the allocators existed, and after a hand
/// edit. Safe with other servers running: every change of what objects hold changes the
/// allocator in the same txn, so a concurrent one fails this compare-and-swap and the
/// pass starts again.
pub async fn repair(store: &dyn Store) -> Result<(), StoreError> {
    for (holder, resource) in [(Holder::Service, "services"), (Holder::Node, "nodes")] {
        let mut backoff = Backoff::new();
        loop {
            let mut ranges = Vec::new();
            for &key in holder.ranges() {
                ranges.push(read(store, key).await?);
            }
            let listed = store.list(&collection_prefix("", resource, None)).await?;
            let mut held = BTreeSet::new();
            for stored in &listed.items {
                match decode(stored) {
                    Ok(obj) => held.extend(holder.held(&obj)),
                    Err(e) => {
                        tracing::warn!(key = %stored.key, "allocator repair skips an object: {e}")
                    }
                }
            }
            let writes: Vec<Write> = ranges
                .iter()
                .filter_map(|range| {
                    let want: BTreeSet<String> = held
                        .iter()
                        .filter(|(r, _)| *r == range.key)
                        .map(|(_, v)| v.clone())
                        .collect();
                    if want == range.allocated && range.revision.is_some() {
                        return None;
                    }
                    let leaked = range.allocated.difference(&want).count();
                    let missing = want.difference(&range.allocated).count();
                    if leaked + missing > 0 {
                        tracing::info!(range = range.key, leaked, missing, "repaired an allocator");
                    }
                    Some(range.write(&want))
                })
                .collect();
            match store.txn(writes).await {
                Ok(_) => break,
                Err(StoreError::Conflict { key, .. } | StoreError::AlreadyExists { key })
                    if RANGES.contains(&key.as_str()) =>
                {
                    if !backoff.wait().await {
                        return Err(StoreError::Conflict {
                            key,
                            expected: 0,
                            actual: 0,
                        });
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn taken(cidrs: &[&str]) -> BTreeSet<String> {
        cidrs.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn assigns_distinct_ranges_and_keeps_given_ones() {
        let mut b = json!({"metadata": {"name": "b"}});
        assign(&mut b, &taken(&["127.64.0.0/16"])).expect("free");
        assert_eq!(b.pointer("/spec/podCIDR"), Some(&json!("127.65.0.0/16")));
        let mut c = json!({"spec": {"podCIDR": "10.1.0.0/16"}});
        assign(&mut c, &taken(&["10.1.0.0/16"])).expect("kept: not from the pool");
        assert_eq!(c.pointer("/spec/podCIDR"), Some(&json!("10.1.0.0/16")));
        let mut d = json!({"spec": {"podCIDR": "127.64.0.0/16"}});
        let err = assign(&mut d, &taken(&["127.64.0.0/16"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.podCIDR: Invalid value: \"127.64.0.0/16\": provided range is already allocated"
        );
        let all: BTreeSet<String> = pod_pool().collect();
        assert!(assign(&mut json!({}), &all).is_err());
    }

    #[test]
    fn held_values_are_those_of_the_allocators() {
        let svc = json!({"spec": {"clusterIP": "127.250.0.9", "clusterIPs": ["127.250.0.9"],
            "ports": [{"port": 80, "nodePort": 30080}, {"port": 81}],
            "healthCheckNodePort": 30100}});
        let held: Vec<_> = Holder::Service.held(&svc).into_iter().collect();
        assert_eq!(
            held,
            [
                (SERVICE_IPS, "127.250.0.9".to_string()),
                (SERVICE_NODE_PORTS, "30080".to_string()),
                (SERVICE_NODE_PORTS, "30100".to_string()),
            ]
        );
        assert!(
            Holder::Service
                .held(&json!({"spec": {"clusterIP": "None"}}))
                .is_empty()
        );
        let node = json!({"spec": {"podCIDR": "127.70.0.0/16"}});
        assert_eq!(Holder::Node.held(&node).len(), 1);
        assert!(
            Holder::Node
                .held(&json!({"spec": {"podCIDR": "10.0.0.0/16"}}))
                .is_empty()
        );
    }
}
