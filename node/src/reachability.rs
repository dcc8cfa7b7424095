//! Whether the control plane answers, as this node's tasks see it, and how long they wait
//! before asking again.
//!
//! While the control plane is away every task of a node fails at once: the pod watch, the
//! proxy's three watches, the mirrors' watches, the lease, the heartbeat and every pod's
//! status write. Logging each failure, and retrying each on a short fixed timer, made a
//! node write about eleven warnings a second for as long as the outage lasted. Instead:
//!
//! - the node keeps one [`ApiHealth`] that all its tasks report to; the first failure
//!   after a success logs `control plane unreachable` once (with its error), the first
//!   success after failures logs `control plane reachable again after ...` once, and the
//!   failures between are logged at debug level only;
//! - each retry loop waits [`retry_delay`]: exponential back-off with jitter, so the
//!   node's tasks neither hammer the API server nor all come back in the same instant.
//!
//! [`Reachability`] is the pure decision (what changed, if anything); [`ApiHealth`] wraps
//! it in a lock and does the logging.

use rand::Rng;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A transition worth one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The first failure after a success (or since start).
    Unreachable,
    /// The first success after failures, and how long they lasted.
    Reachable { after: Duration },
}

/// Whether the control plane is reachable: pure, the clock is a parameter.
#[derive(Debug, Default, Clone)]
pub struct Reachability {
    /// When the current outage began, if there is one.
    down_since: Option<Instant>,
    /// Failures since then.
    failures: u64,
}

impl Reachability {
    /// A call failed at `now`.
    pub fn failure(&mut self, now: Instant) -> Option<Change> {
        self.failures += 1;
        if self.down_since.is_some() {
            return None;
        }
        self.down_since = Some(now);
        Some(Change::Unreachable)
    }

    /// A call succeeded at `now`.
    pub fn success(&mut self, now: Instant) -> Option<Change> {
        let since = self.down_since.take()?;
        self.failures = 0;
        Some(Change::Reachable {
            after: now.saturating_duration_since(since),
        })
    }

    pub fn is_down(&self) -> bool {
        self.down_since.is_some()
    }

    /// Failures in the current outage.
    pub fn failures(&self) -> u64 {
        self.failures
    }
}

/// Back-off before retry number `attempt + 1` (0 after the first failure): `base`
/// doubling per attempt up to `max`, then jittered into its upper half (`jitter` in
/// `[0, 1)`), so retries spread out and never come faster than half the back-off.
pub fn retry_delay(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    let full = base.saturating_mul(factor).min(max);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The usual back-off of a node's API retry loops: 500 ms doubling to 30 s.
pub fn api_retry_delay(attempt: u32) -> Duration {
    retry_delay(
        attempt,
        Duration::from_millis(500),
        Duration::from_secs(30),
        rand::rng().random::<f64>(),
    )
}

/// The node's shared view of the control plane; logs each change once.
#[derive(Debug)]
pub struct ApiHealth {
    node: String,
    state: Mutex<Reachability>,
    /// When the outage began, on the wall clock, for the log line.
    since_wall: Mutex<Option<jiff::Timestamp>>,
}

impl ApiHealth {
    pub fn new(node: impl Into<String>) -> Self {
        ApiHealth {
            node: node.into(),
            state: Mutex::new(Reachability::default()),
            since_wall: Mutex::new(None),
        }
    }

    /// A call to the API failed: `what` failed with `error`.
    pub fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        let change = match self.state.lock() {
            Ok(mut s) => s.failure(Instant::now()),
            Err(_) => None,
        };
        if change == Some(Change::Unreachable) {
            let now = jiff::Timestamp::now();
            if let Ok(mut w) = self.since_wall.lock() {
                *w = Some(now);
            }
            tracing::warn!(node = %self.node, %error, "control plane unreachable since {now} ({what}); retrying with back-off");
        } else {
            tracing::debug!(node = %self.node, %error, "{what} failed");
        }
    }

    /// A call to the API succeeded.
    pub fn ok(&self) {
        let change = match self.state.lock() {
            Ok(mut s) => s.success(Instant::now()),
            Err(_) => None,
        };
        if let Some(Change::Reachable { after }) = change {
            let since = self.since_wall.lock().ok().and_then(|mut w| w.take());
            tracing::info!(
                node = %self.node,
                ?since,
                "control plane reachable again after {}",
                human(after)
            );
        }
    }

    pub fn is_down(&self) -> bool {
        self.state.lock().map(|s| s.is_down()).unwrap_or(false)
    }
}

/// `20s`, `1m5s`, `350ms`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else if s > 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_one_change_down_and_one_back_up() {
        let t0 = Instant::now();
        let mut r = Reachability::default();
        assert_eq!(r.success(t0), None, "up and staying up is no news");
        assert_eq!(r.failure(t0), Some(Change::Unreachable));
        for i in 1..=50 {
            assert_eq!(r.failure(t0 + Duration::from_millis(100 * i)), None);
        }
        assert!(r.is_down());
        assert_eq!(r.failures(), 51);
        assert_eq!(
            r.success(t0 + Duration::from_secs(20)),
            Some(Change::Reachable {
                after: Duration::from_secs(20)
            })
        );
        assert!(!r.is_down());
        assert_eq!(r.success(t0 + Duration::from_secs(21)), None);
        // The next outage is news again.
        assert_eq!(
            r.failure(t0 + Duration::from_secs(30)),
            Some(Change::Unreachable)
        );
    }

    #[test]
    fn retry_delay_doubles_to_the_cap_and_jitters_within_its_upper_half() {
        let (base, max) = (Duration::from_millis(500), Duration::from_secs(30));
        let top: Vec<u128> = (0..9)
            .map(|n| retry_delay(n, base, max, 0.999_999).as_millis())
            .collect();
        assert_eq!(
            top,
            [499, 999, 1999, 3999, 7999, 15999, 29999, 29999, 29999]
        );
        let low: Vec<u128> = (0..8)
            .map(|n| retry_delay(n, base, max, 0.0).as_millis())
            .collect();
        assert_eq!(low, [250, 500, 1000, 2000, 4000, 8000, 15000, 15000]);
        assert_eq!(retry_delay(1000, base, max, 0.0), Duration::from_secs(15));
        for _ in 0..100 {
            let d = api_retry_delay(3);
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_secs(4),
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_minute_of_outage_costs_a_handful_of_retries_per_loop() {
        // What the old fixed 500 ms timer did 120 times, the back-off does a few times.
        let (base, max) = (Duration::from_millis(500), Duration::from_secs(30));
        let mut elapsed = Duration::ZERO;
        let mut attempts = 0;
        while elapsed < Duration::from_secs(60) {
            elapsed += retry_delay(attempts, base, max, 0.0);
            attempts += 1;
        }
        assert!(attempts <= 10, "{attempts}");
    }
}
