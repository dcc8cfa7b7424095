//! The scheduling queue: which pending pod to try next, and when to try again.
//!
//! Kubernetes' shape, three places a pending pod can be:
//!
//! - **active**: ready to be tried, highest `spec.priority` first, then first come;
//! - **backoff**: failed recently; waits `initial * 2^(attempts-1)` (capped) before it is
//!   active again, so a pod that keeps failing does not spin the scheduler;
//! - **unschedulable**: no node fits and nothing has changed since. It stays parked until
//!   the cluster changes in a way that may help (a node added or changed, a pod deleted:
//!   [`Queue::move_all`]), or until `max_unschedulable` passes as a safety net.
//!
//! A pod being decided or bound is **in flight**. If the cluster changed while it was in
//! flight and it then fails, it goes to backoff rather than unschedulable, so the change
//! that may have made room is not missed (Kubernetes' "move request cycle").
//!
//! Heaps are lazy: an entry pushed into a heap carries a sequence number, and a heap item
//! whose number no longer matches its entry is stale and skipped.

use super::framework::PodInfo;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Backoff {
        until: Instant,
    },
    Unschedulable {
        since: Instant,
    },
    /// Popped during move cycle `cycle`.
    InFlight {
        cycle: u64,
    },
}

#[derive(Debug)]
struct Entry {
    info: Arc<PodInfo>,
    state: State,
    attempts: u32,
    last_failure: Option<Instant>,
    seq: u64,
}

/// The queue's tunables.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// How long a pod parks as unschedulable before it is retried anyway.
    pub max_unschedulable: Duration,
}

impl Backoff {
    /// The back-off after `attempts` failures.
    pub fn after(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

#[derive(Debug)]
pub struct Queue {
    entries: HashMap<Arc<str>, Entry>,
    /// (priority, first come first) -> uid.
    active: BinaryHeap<(i32, Reverse<u64>, Arc<str>)>,
    backoff: BinaryHeap<Reverse<(Instant, u64, Arc<str>)>>,
    seq: u64,
    /// Bumped by every cluster change that may help pods fit.
    move_cycle: u64,
    config: Backoff,
}

/// Counts, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub active: usize,
    pub backoff: usize,
    pub unschedulable: usize,
    pub in_flight: usize,
}

impl Queue {
    pub fn new(config: Backoff) -> Queue {
        Queue {
            entries: HashMap::new(),
            active: BinaryHeap::new(),
            backoff: BinaryHeap::new(),
            seq: 0,
            move_cycle: 0,
            config,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn activate(&mut self, uid: &Arc<str>) {
        let seq = self.next_seq();
        if let Some(e) = self.entries.get_mut(uid) {
            e.state = State::Active;
            e.seq = seq;
            self.active
                .push((e.info.priority, Reverse(seq), uid.clone()));
        }
    }

    fn back_off(&mut self, uid: &Arc<str>, until: Instant) {
        let seq = self.next_seq();
        if let Some(e) = self.entries.get_mut(uid) {
            e.state = State::Backoff { until };
            e.seq = seq;
            self.backoff.push(Reverse((until, seq, uid.clone())));
        }
    }

    /// Active again, or in backoff if its back-off has not run out.
    fn requeue(&mut self, uid: &Arc<str>, now: Instant) {
        let until = self.entries.get(uid).and_then(|e| {
            e.last_failure
                .map(|t| t + self.config.after(e.attempts))
                .filter(|until| *until > now)
        });
        match until {
            Some(until) => self.back_off(uid, until),
            None => self.activate(uid),
        }
    }

    /// A pending pod seen by the watch: added, or its latest version recorded. A parked
    /// pod whose spec or labels changed is given another chance.
    pub fn upsert(&mut self, info: Arc<PodInfo>, now: Instant) {
        let uid = info.uid.clone();
        match self.entries.get_mut(&uid) {
            None => {
                self.entries.insert(
                    uid.clone(),
                    Entry {
                        info,
                        state: State::Active,
                        attempts: 0,
                        last_failure: None,
                        seq: 0,
                    },
                );
                self.activate(&uid);
            }
            Some(e) => {
                let changed = e.info.pod.spec != info.pod.spec || e.info.labels != info.labels;
                e.info = info;
                if changed && matches!(e.state, State::Unschedulable { .. }) {
                    self.requeue(&uid, now);
                }
            }
        }
    }

    /// Updates the pod's object if it is queued, without adding it.
    pub fn update_if_present(&mut self, info: Arc<PodInfo>) {
        if let Some(e) = self.entries.get_mut(&info.uid) {
            e.info = info;
        }
    }

    /// Forgets a pod (bound, deleted, no longer ours).
    pub fn remove(&mut self, uid: &str) -> bool {
        self.entries.remove(uid).is_some()
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.entries.contains_key(uid)
    }

    /// The latest version of a queued pod.
    pub fn info(&self, uid: &str) -> Option<Arc<PodInfo>> {
        self.entries.get(uid).map(|e| e.info.clone())
    }

    /// The next pod to try, now in flight.
    pub fn pop(&mut self) -> Option<Arc<PodInfo>> {
        while let Some((_, Reverse(seq), uid)) = self.active.pop() {
            let cycle = self.move_cycle;
            if let Some(e) = self.entries.get_mut(&uid)
                && e.seq == seq
                && e.state == State::Active
            {
                e.state = State::InFlight { cycle };
                return Some(e.info.clone());
            }
        }
        None
    }

    /// The pod in flight was bound: it leaves the queue.
    pub fn done(&mut self, uid: &str) {
        self.entries.remove(uid);
    }

    /// The pod in flight failed. `unschedulable`: no node fits (park it unless the
    /// cluster changed meanwhile); otherwise an error (back off).
    pub fn failed(&mut self, uid: &Arc<str>, unschedulable: bool, now: Instant) {
        let move_cycle = self.move_cycle;
        let Some(e) = self.entries.get_mut(uid) else {
            return;
        };
        e.attempts = e.attempts.saturating_add(1);
        e.last_failure = Some(now);
        let moved_meanwhile = matches!(e.state, State::InFlight { cycle } if cycle != move_cycle);
        if unschedulable && !moved_meanwhile {
            e.state = State::Unschedulable { since: now };
            e.seq = 0;
        } else {
            let until = now + self.config.after(e.attempts);
            self.back_off(uid, until);
        }
    }

    /// The cluster changed in a way that may let parked pods fit: retry them all (each
    /// after its back-off).
    pub fn move_all(&mut self, now: Instant) {
        self.move_cycle += 1;
        let parked: Vec<Arc<str>> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Unschedulable { .. }))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in parked {
            self.requeue(&uid, now);
        }
    }

    /// Moves pods whose back-off ran out to active.
    pub fn flush_backoff(&mut self, now: Instant) {
        while let Some(Reverse((until, seq, uid))) = self.backoff.peek().cloned() {
            if until > now {
                break;
            }
            self.backoff.pop();
            if self
                .entries
                .get(&uid)
                .is_some_and(|e| e.seq == seq && matches!(e.state, State::Backoff { .. }))
            {
                self.activate(&uid);
            }
        }
    }

    /// Retries pods parked for longer than `max_unschedulable`.
    pub fn flush_unschedulable(&mut self, now: Instant) {
        let max = self.config.max_unschedulable;
        let stale: Vec<Arc<str>> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Unschedulable { since } if now.duration_since(since) >= max))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            self.activate(&uid);
        }
    }

    /// When the earliest back-off runs out.
    pub fn next_backoff(&self) -> Option<Instant> {
        self.backoff.peek().map(|Reverse((until, _, _))| *until)
    }

    /// Whether a pod may be ready to pop (stale heap items aside).
    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    /// The uids queued but not in flight (what a relist must see again).
    pub fn waiting(&self) -> Vec<Arc<str>> {
        self.entries
            .iter()
            .filter(|(_, e)| !matches!(e.state, State::InFlight { .. }))
            .map(|(uid, _)| uid.clone())
            .collect()
    }

    pub fn stats(&self) -> QueueStats {
        let mut s = QueueStats::default();
        for e in self.entries.values() {
            match e.state {
                State::Active => s.active += 1,
                State::Backoff { .. } => s.backoff += 1,
                State::Unschedulable { .. } => s.unschedulable += 1,
                State::InFlight { .. } => s.in_flight += 1,
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::testing::*;
    use serde_json::json;

    fn config() -> Backoff {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
            max_unschedulable: Duration::from_secs(60),
        }
    }

    fn p(name: &str) -> Arc<PodInfo> {
        Arc::new(pod(name))
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let b = config();
        let secs: Vec<u64> = (1..=6).map(|a| b.after(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.after(1000), Duration::from_secs(10));
    }

    #[test]
    fn higher_priority_first_then_first_come() {
        let mut q = Queue::new(config());
        let now = Instant::now();
        q.upsert(p("a"), now);
        q.upsert(p("b"), now);
        q.upsert(
            Arc::new(pod_with("urgent", json!({}), json!({"priority": 1000}))),
            now,
        );
        let order: Vec<String> = std::iter::from_fn(|| q.pop())
            .map(|i| i.name.clone())
            .collect();
        assert_eq!(order, ["urgent", "a", "b"]);
        assert_eq!(q.stats().in_flight, 3);
    }

    #[test]
    fn unschedulable_pods_wait_for_a_cluster_change_then_their_backoff() {
        let mut q = Queue::new(config());
        let t0 = Instant::now();
        let a = p("a");
        q.upsert(a.clone(), t0);
        assert!(q.pop().is_some());
        q.failed(&a.uid, true, t0);
        assert_eq!(q.stats().unschedulable, 1);
        q.flush_backoff(t0 + Duration::from_secs(30));
        assert!(q.pop().is_none(), "parked until something changes");
        // A node was added 0.5 s later: it waits out its 1 s back-off first.
        q.move_all(t0 + Duration::from_millis(500));
        assert_eq!(q.stats().backoff, 1);
        assert_eq!(q.next_backoff(), Some(t0 + Duration::from_secs(1)));
        q.flush_backoff(t0 + Duration::from_millis(900));
        assert!(q.pop().is_none());
        q.flush_backoff(t0 + Duration::from_secs(1));
        assert_eq!(q.pop().map(|i| i.uid.clone()), Some(a.uid.clone()));
        // A change long after the failure makes it active at once.
        q.failed(&a.uid, true, t0 + Duration::from_secs(1));
        q.move_all(t0 + Duration::from_secs(20));
        assert!(q.pop().is_some());
    }

    #[test]
    fn a_change_while_in_flight_is_not_missed() {
        let mut q = Queue::new(config());
        let t0 = Instant::now();
        let a = p("a");
        q.upsert(a.clone(), t0);
        assert!(q.pop().is_some());
        q.move_all(t0);
        q.failed(&a.uid, true, t0);
        assert_eq!(
            q.stats().backoff,
            1,
            "not parked: the change may have helped"
        );
    }

    #[test]
    fn errors_back_off_and_parked_pods_retry_after_the_safety_net() {
        let mut q = Queue::new(config());
        let t0 = Instant::now();
        let a = p("a");
        q.upsert(a.clone(), t0);
        q.pop();
        q.failed(&a.uid, false, t0);
        q.flush_backoff(t0 + Duration::from_secs(1));
        q.pop();
        q.failed(&a.uid, true, t0 + Duration::from_secs(1));
        q.flush_unschedulable(t0 + Duration::from_secs(30));
        assert!(q.pop().is_none());
        q.flush_unschedulable(t0 + Duration::from_secs(61));
        assert!(q.pop().is_some());
    }

    #[test]
    fn updates_to_a_parked_pod_retry_it_only_if_the_spec_or_labels_changed() {
        let mut q = Queue::new(config());
        let t0 = Instant::now();
        let a = p("a");
        q.upsert(a.clone(), t0);
        q.pop();
        q.failed(&a.uid, true, t0);
        // Our own status write comes back through the watch: nothing to retry.
        q.upsert(a.clone(), t0 + Duration::from_secs(5));
        assert_eq!(q.stats().unschedulable, 1);
        let relabelled = Arc::new(pod_with("a", json!({"x": "y"}), json!({})));
        q.upsert(relabelled, t0 + Duration::from_secs(5));
        assert!(q.pop().is_some());
        q.remove(&a.uid);
        assert!(!q.contains(&a.uid));
    }
}
