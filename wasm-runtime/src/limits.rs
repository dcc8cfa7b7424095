//! Memory and CPU limits, enforced inside wasmtime.
//!
//! **Memory.** Each store gets a [`StoreLimiter`] (a wasmtime `ResourceLimiter`) drawing on
//! the container's [`MemoryBudget`]: the sum of all linear memories of all live instances of
//! the container (one for a command; one per in-flight request for an HTTP container) may not
//! exceed `resources.memory_bytes`. A `memory.grow` past the budget returns -1 inside the
//! guest, as `malloc` returning NULL would natively. Rust guests then abort (a wasm trap); a
//! guest that traps after the limiter refused it is reported `OOMKilled` (exit code 137), as
//! the kernel's OOM killer would be. A guest that copes with the failed allocation keeps
//! running.
//!
//! **CPU.** Every store's epoch deadline is one tick (`RuntimeConfig::epoch_interval`). When
//! it is reached the guest yields to the tokio executor, so a `loop {}` holds a worker thread
//! for at most one interval at a time and every other task gets its turn. With a CPU limit
//! (millicores) the container also has a [`CpuThrottle`]: a token bucket refilled at
//! `millicores / 1000` CPU-seconds per second, holding at most one CFS-like period (100 ms)
//! of quota. At each yield the slice just run is charged (the wall time since the last
//! deadline, capped at one epoch interval so that time the guest spent blocked in host calls
//! is not charged); when the bucket is in debt the guest sleeps until it is repaid. A
//! spinner limited to 100m thus runs one 10 ms slice about every 100 ms. Accuracy is about
//! one epoch interval per slice, which is what Kubernetes' CFS quota gives too.
//!
//! **Usage.** The same two accounts are what the node reports as the container's resource
//! usage (`Runtime::usage`, served as `metrics.k8s.io` and in `/metrics`), so that what
//! `kubectl top` shows is exactly what the limits act on, measured once: CPU is the total
//! charged by the throttle (guest execution only, never the node process's total), and
//! memory is the budget's linear-memory bytes plus [`INSTANCE_OVERHEAD_BYTES`] per live
//! instance, with its peak since the container started. An instance's last slice (from its
//! last deadline to its end) is charged when its store is dropped, so that requests shorter
//! than one interval count too.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Host memory a live instance is taken to hold beyond its linear memories, in the usage the
/// node reports (never in the limit, which is on linear memory, as the guest sees it): the
/// store and instance data (VM context, tables, globals), the WASI context and resource
/// table, and the pages of its async stack it has touched. Measured on small Rust guests it
/// is a few tens of KiB to a few hundred; 256 KiB is the estimate, so that a pod whose guests
/// hold no linear memory (or an HTTP container serving many requests) does not read as free.
pub const INSTANCE_OVERHEAD_BYTES: u64 = 256 * 1024;

/// A container-wide memory budget shared by the limiters of its stores.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    limit: Option<u64>,
    used: AtomicU64,
    oom_events: AtomicU64,
    /// Live instances (stores) drawing on the budget.
    instances: AtomicU64,
    /// The highest [`MemoryBudget::usage`] seen.
    peak: AtomicU64,
}

impl MemoryBudget {
    pub(crate) fn new(limit: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
            oom_events: AtomicU64::new(0),
            instances: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        })
    }

    /// Live instances drawing on the budget.
    pub(crate) fn instances(&self) -> u64 {
        self.instances.load(Ordering::Relaxed)
    }

    /// The memory the node reports for the container: linear memories plus the overhead
    /// estimate per live instance (module docs).
    pub(crate) fn usage(&self) -> u64 {
        self.used()
            .saturating_add(self.instances().saturating_mul(INSTANCE_OVERHEAD_BYTES))
    }

    /// The highest [`MemoryBudget::usage`] since the container started.
    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(self.usage())
    }

    fn note_peak(&self) {
        self.peak.fetch_max(self.usage(), Ordering::Relaxed);
    }

    fn instance_started(&self) {
        self.instances.fetch_add(1, Ordering::Relaxed);
        self.note_peak();
    }

    fn instance_ended(&self) {
        self.instances.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Bytes of linear memory currently held by the container's instances.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// How many times an instance trapped after being refused memory.
    pub(crate) fn oom_events(&self) -> u64 {
        self.oom_events.load(Ordering::Relaxed)
    }

    pub(crate) fn record_oom(&self) {
        self.oom_events.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes `bytes` from the budget, or refuses.
    fn try_take(&self, bytes: u64) -> bool {
        match self.limit {
            None => {
                self.used.fetch_add(bytes, Ordering::Relaxed);
                self.note_peak();
                true
            }
            Some(limit) => {
                let taken = self
                    .used
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                        used.checked_add(bytes).filter(|&total| total <= limit)
                    })
                    .is_ok();
                if taken {
                    self.note_peak();
                }
                taken
            }
        }
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Table elements one store may hold (each is a pointer on the host).
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// The `ResourceLimiter` of one store.
#[derive(Debug)]
pub(crate) struct StoreLimiter {
    budget: Arc<MemoryBudget>,
    /// Bytes this store holds from the budget (returned on drop).
    held: u64,
    /// The last grant, returned if wasmtime then fails the growth itself.
    last_grant: u64,
    /// Set when the budget refused a growth: a trap after this is an OOM kill.
    limit_hit: bool,
}

impl StoreLimiter {
    pub(crate) fn new(budget: Arc<MemoryBudget>) -> Self {
        budget.instance_started();
        Self {
            budget,
            held: 0,
            last_grant: 0,
            limit_hit: false,
        }
    }

    pub(crate) fn limit_hit(&self) -> bool {
        self.limit_hit
    }
}

impl wasmtime::ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called with current = 0 when a memory is created, so the sum of the deltas is the
        // total size of every memory of the store.
        let delta = desired.saturating_sub(current) as u64;
        if self.budget.try_take(delta) {
            self.held += delta;
            self.last_grant = delta;
            Ok(true)
        } else {
            self.limit_hit = true;
            self.last_grant = 0;
            Ok(false)
        }
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // We granted it but wasmtime could not grow (past the memory's own maximum, or the
        // pool slot's): the memory did not change size, so return the grant.
        self.budget.give_back(self.last_grant);
        self.held -= self.last_grant;
        self.last_grant = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl Drop for StoreLimiter {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
        self.budget.instance_ended();
    }
}

/// The period over which quota may be saved up, as CFS's `cpu.cfs_period_us` (100 ms).
const CPU_PERIOD: Duration = Duration::from_millis(100);

/// A container-wide CPU token bucket (see the module docs).
#[derive(Debug)]
pub(crate) struct CpuThrottle {
    /// CPU-seconds granted per second (0.5 for 500m); `None` = unlimited.
    rate: Option<f64>,
    bucket: Mutex<Bucket>,
    /// Total CPU time charged, in nanoseconds (an approximation, see the module docs).
    used_nanos: AtomicU64,
    /// Total time the container was made to sleep, in nanoseconds (cgroups' throttled_time).
    throttled_nanos: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    /// Seconds of CPU credit (negative: debt).
    balance: f64,
    refilled_at: Instant,
}

impl CpuThrottle {
    pub(crate) fn new(millicores: Option<u32>) -> Arc<Self> {
        let rate = millicores.map(|m| f64::from(m.max(1)) / 1000.0);
        let full = rate.map_or(0.0, |r| r * CPU_PERIOD.as_secs_f64());
        Arc::new(Self {
            rate,
            bucket: Mutex::new(Bucket {
                balance: full,
                refilled_at: Instant::now(),
            }),
            used_nanos: AtomicU64::new(0),
            throttled_nanos: AtomicU64::new(0),
        })
    }

    /// CPU time charged so far.
    pub(crate) fn used(&self) -> Duration {
        Duration::from_nanos(self.used_nanos.load(Ordering::Relaxed))
    }

    /// Time spent sleeping off CPU debt so far.
    pub(crate) fn throttled(&self) -> Duration {
        Duration::from_nanos(self.throttled_nanos.load(Ordering::Relaxed))
    }

    /// Charges `used` CPU time; returns how long the guest must sleep before running again.
    pub(crate) fn charge(&self, used: Duration) -> Option<Duration> {
        self.used_nanos.fetch_add(
            u64::try_from(used.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let rate = self.rate?;
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let refill = now
            .saturating_duration_since(bucket.refilled_at)
            .as_secs_f64()
            * rate;
        let cap = rate * CPU_PERIOD.as_secs_f64();
        bucket.balance = (bucket.balance + refill).min(cap) - used.as_secs_f64();
        bucket.refilled_at = now;
        if bucket.balance >= 0.0 {
            return None;
        }
        // Sleep until the debt is repaid. The refill during the sleep is counted at the next
        // charge (refilled_at stays `now`).
        let sleep = Duration::from_secs_f64(-bucket.balance / rate);
        self.throttled_nanos.fetch_add(
            u64::try_from(sleep.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Some(sleep)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn budget_is_shared_and_returned() {
        let budget = MemoryBudget::new(Some(100));
        let mut a = StoreLimiter::new(budget.clone());
        let mut b = StoreLimiter::new(budget.clone());
        assert!(a.memory_growing(0, 60, None).unwrap());
        assert!(!b.memory_growing(0, 60, None).unwrap());
        assert!(b.limit_hit());
        assert!(!a.limit_hit());
        assert!(b.memory_growing(0, 40, None).unwrap());
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.memory_growing(40, 90, None).unwrap());
        b.memory_grow_failed(wasmtime::format_err!("past maximum"))
            .unwrap();
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn usage_counts_instances_and_keeps_the_peak() {
        let budget = MemoryBudget::new(None);
        assert_eq!((budget.usage(), budget.peak()), (0, 0));
        let mut a = StoreLimiter::new(budget.clone());
        assert_eq!(budget.usage(), INSTANCE_OVERHEAD_BYTES);
        assert!(a.memory_growing(0, 1 << 20, None).unwrap());
        let mut b = StoreLimiter::new(budget.clone());
        assert!(b.memory_growing(0, 3 << 20, None).unwrap());
        assert_eq!(budget.instances(), 2);
        let high = (4 << 20) + 2 * INSTANCE_OVERHEAD_BYTES;
        assert_eq!(budget.usage(), high);
        drop(b);
        assert_eq!(budget.usage(), (1 << 20) + INSTANCE_OVERHEAD_BYTES);
        assert_eq!(budget.peak(), high);
        drop(a);
        assert_eq!((budget.usage(), budget.instances()), (0, 0));
        assert_eq!(budget.peak(), high);
    }

    #[test]
    fn unlimited_cpu_never_sleeps() {
        let cpu = CpuThrottle::new(None);
        assert_eq!(cpu.charge(Duration::from_secs(10)), None);
    }

    #[test]
    fn limited_cpu_sleeps_in_proportion() {
        // 100m: 10 ms of quota per 100 ms period.
        let cpu = CpuThrottle::new(Some(100));
        assert_eq!(cpu.charge(Duration::from_millis(5)), None);
        let sleep = cpu.charge(Duration::from_millis(15)).expect("in debt");
        // 10 ms of debt at 0.1 CPU-s/s takes ~100 ms to repay.
        assert!(
            sleep > Duration::from_millis(80) && sleep <= Duration::from_millis(101),
            "{sleep:?}"
        );
    }
}
