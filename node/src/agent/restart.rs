//! Whether and when a container that ended is started again.
//!
//! Kubernetes' rules: `restartPolicy` decides whether (Always: every exit; OnFailure: a
//! non-zero exit; Never: no), and an exponential back-off decides when: the base delay
//! (10 s by default) doubles with every restart up to a cap (5 minutes), and resets once a
//! container has run cleanly for twice the cap. While it waits, the container shows
//! `CrashLoopBackOff`. Pure functions; the worker owns the timers.

use std::time::Duration;

/// Back-off settings (the base is configurable so that tests stay fast).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay before restart number `restarts + 1`, given how many back-offs in a row
    /// the container has had.
    pub fn delay(&self, consecutive: u32) -> Duration {
        let factor = 1u32.checked_shl(consecutive.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Whether a run this long resets the back-off.
    pub fn resets_after(&self, ran_for: Duration) -> bool {
        ran_for >= self.max.saturating_mul(2)
    }
}

/// Does `restart_policy` restart a container that exited with `exit_code`?
pub fn should_restart(restart_policy: &str, exit_code: i32) -> bool {
    match restart_policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let b = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(b.delay(1000), Duration::from_secs(300));
        assert!(b.resets_after(Duration::from_secs(600)));
        assert!(!b.resets_after(Duration::from_secs(599)));
    }

    #[test]
    fn restart_policy() {
        assert!(should_restart("Always", 0));
        assert!(should_restart("OnFailure", 2));
        assert!(!should_restart("OnFailure", 0));
        assert!(!should_restart("Never", 1));
    }
}
