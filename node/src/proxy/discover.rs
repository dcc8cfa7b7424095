//! Endpoint discovery: the set of endpoints a Service port balances over, changed only
//! through a small seam — [`EndpointSet::reset`], [`EndpointSet::add`],
//! [`EndpointSet::remove`] — as linkerd2-proxy's discovery does.
//!
//! The proxy's reconciler calls `reset` with the routable addresses of every new snapshot
//! (level-triggered); `reset` keeps the entry of every address that remains, with its load
//! counter, so that
//! - connections and requests already running on a remaining endpoint are untouched (they
//!   never depended on the set: they hold their own stream and a [`LoadGuard`]);
//! - an endpoint that leaves (deleted, not ready, terminating) gets no new work, while what
//!   it is already doing finishes: its guards still point at its counter;
//! - the balancer's view of load survives the change (a reset does not make a busy
//!   endpoint look idle).
//!
//! Readers take a cheap snapshot (`Arc<[Endpoint]>`), so a pick never waits on a writer.
//! A request held for a Service scaled to zero ([`super::wake`]) waits for the set to gain
//! an endpoint with [`EndpointSet::wait_nonempty`]: every change wakes the waiters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// One endpoint: where it is, and how many connections or requests are in flight to it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    load: Arc<AtomicUsize>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            load: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Connections or requests in flight.
    pub fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    /// Counts one more in flight until the guard is dropped.
    pub fn track(&self) -> LoadGuard {
        self.load.fetch_add(1, Ordering::Relaxed);
        LoadGuard(self.load.clone())
    }
}

/// One connection or request in flight to an endpoint; dropping it ends it.
#[derive(Debug)]
pub struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a reset changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The endpoints of one Service port.
#[derive(Debug, Default)]
pub struct EndpointSet {
    current: RwLock<Arc<[Endpoint]>>,
    changed: tokio::sync::Notify,
}

impl EndpointSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// The endpoints now, for one pick.
    pub fn snapshot(&self) -> Arc<[Endpoint]> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes the set exactly `addrs` (in that order, without duplicates), keeping the entries
    /// of addresses that remain.
    pub fn reset(&self, addrs: impl IntoIterator<Item = SocketAddr>) -> Change {
        let mut guard = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let old = guard.clone();
        let mut next: Vec<Endpoint> = Vec::new();
        let mut change = Change::default();
        for addr in addrs {
            if next.iter().any(|e| e.addr == addr) {
                continue;
            }
            match old.iter().find(|e| e.addr == addr) {
                Some(existing) => next.push(existing.clone()),
                None => {
                    change.added.push(addr);
                    next.push(Endpoint::new(addr));
                }
            }
        }
        change.removed = old
            .iter()
            .filter(|e| !next.iter().any(|n| n.addr == e.addr))
            .map(|e| e.addr)
            .collect();
        if !change.is_empty() {
            *guard = next.into();
            drop(guard);
            self.changed.notify_waiters();
        }
        change
    }

    /// Returns once the set has an endpoint (at once if it has one now).
    pub async fn wait_nonempty(&self) {
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a change between the check and the wait
            // is not missed.
            notified.as_mut().enable();
            if !self.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Adds one endpoint; false if it was there.
    pub fn add(&self, addr: SocketAddr) -> bool {
        let current = self.snapshot();
        !self
            .reset(current.iter().map(|e| e.addr).chain([addr]))
            .added
            .is_empty()
    }

    /// Removes one endpoint; false if it was not there. Work in flight to it continues.
    pub fn remove(&self, addr: SocketAddr) -> bool {
        let current = self.snapshot();
        !self
            .reset(current.iter().map(|e| e.addr).filter(|a| *a != addr))
            .removed
            .is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reset_keeps_remaining_endpoints_and_their_load() {
        let set = EndpointSet::new();
        set.reset([a("127.0.0.1:1"), a("127.0.0.1:2")]);
        let busy = set.snapshot()[0].track();
        let leaving = set.snapshot()[1].track();
        let change = set.reset([a("127.0.0.1:1"), a("127.0.0.1:3"), a("127.0.0.1:3")]);
        assert_eq!(
            change,
            Change {
                added: vec![a("127.0.0.1:3")],
                removed: vec![a("127.0.0.1:2")],
            }
        );
        let now = set.snapshot();
        assert_eq!(now.len(), 2);
        // The remaining endpoint is the same entry: its in-flight work still counts.
        assert_eq!(now[0].load(), 1);
        assert_eq!(now[1].load(), 0);
        drop(busy);
        assert_eq!(now[0].load(), 0);
        // Work on the removed endpoint ends normally.
        drop(leaving);
        // A reset to the same set changes nothing.
        assert!(set.reset([a("127.0.0.1:1"), a("127.0.0.1:3")]).is_empty());
        assert!(Arc::ptr_eq(&now, &set.snapshot()));
    }

    #[test]
    fn add_and_remove() {
        let set = EndpointSet::new();
        assert!(set.add(a("127.0.0.1:1")));
        assert!(!set.add(a("127.0.0.1:1")));
        assert!(set.add(a("127.0.0.1:2")));
        assert_eq!(set.len(), 2);
        assert!(set.remove(a("127.0.0.1:1")));
        assert!(!set.remove(a("127.0.0.1:1")));
        assert_eq!(set.snapshot()[0].addr, a("127.0.0.1:2"));
    }

    #[tokio::test]
    async fn waiters_are_released_when_an_endpoint_arrives() {
        let set = Arc::new(EndpointSet::new());
        let waiting = tokio::spawn({
            let set = set.clone();
            async move { set.wait_nonempty().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        set.reset([a("127.0.0.1:1")]);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        // Nonempty: at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), set.wait_nonempty())
            .await
            .unwrap();
    }
}
