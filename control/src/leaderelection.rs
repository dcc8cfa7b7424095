//! Leader election on a `coordination.k8s.io/v1` Lease, as kube-scheduler and
//! kube-controller-manager do with `--leader-elect`.
//!
//! Several `wharf control` processes may serve one cluster (on etcd); each serves the API,
//! but the scheduler and the controller manager must run in exactly one of them at a time
//! (two schedulers would bind one pod twice, two ReplicaSet controllers would create twice
//! the pods). Each of those loops runs under a Lease in `kube-system`: the member holding
//! it runs the loops, the others keep trying to take it.
//!
//! [`decide`] is the whole rule, pure and tested under a driven clock: given the Lease as
//! read, when this member first saw it in that form, the time now and our own identity,
//! create it, take it over, renew it, or wait. Expiry is judged on this member's own clock
//! from the moment it last saw the record change (never by comparing its clock with the
//! holder's `renewTime`), so clock skew between machines cannot hand the lease to two
//! members. [`run`] is the thin executor: it reads the Lease through the API server and
//! writes it with the resourceVersion it read (a compare-and-swap in the store), starts
//! the loops under a child cancellation token when it becomes the holder, and cancels them
//! at once when it cannot renew within the renew deadline (which is shorter than the lease
//! duration, so the loops have stopped before any other member may take the lease).

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The namespace of the leader election Leases.
pub const NAMESPACE: &str = "kube-system";
/// The Lease of the scheduler.
pub const SCHEDULER_LEASE: &str = "wharf-scheduler";
/// The Lease of the controller manager.
pub const CONTROLLER_MANAGER_LEASE: &str = "wharf-controller-manager";

/// How long the loops may take to stop once leadership is lost, before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The election's timings (`--leader-elect-*`), with kube-scheduler's defaults.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// Run the election; off, the loops run at once and unconditionally (one member only).
    pub enabled: bool,
    /// How long others wait after the last change of the Lease they saw before taking it.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it gives the loops up.
    pub renew_deadline: Duration,
    /// How often members try to take the lease, and the holder renews it.
    pub retry_period: Duration,
    /// This member's `holderIdentity`: the host name and a unique id.
    pub identity: String,
    /// The store is this process's alone (the embedded store's lock): no other member can
    /// exist, so a Lease held by another identity is left over from an earlier run of this
    /// one and is taken over at once instead of after it runs out.
    pub exclusive: bool,
    /// `leader_election_master_status{name}`: 1 while this member holds the Lease.
    pub metrics: crate::metrics::LeaderMetrics,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            enabled: true,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            identity: default_identity(),
            exclusive: false,
            metrics: Default::default(),
        }
    }
}

/// `HOSTNAME_UUID`, as kube-scheduler names its holders: which machine, and which process.
pub fn default_identity() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wharf".to_string());
    format!("{host}_{}", uuid::Uuid::new_v4())
}

/// Why the timings are refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElectionError {
    #[error(
        "--leader-elect-renew-deadline ({renew:?}) must be shorter than --leader-elect-lease-duration ({lease:?})"
    )]
    RenewNotShorterThanLease { renew: Duration, lease: Duration },
    #[error(
        "--leader-elect-retry-period ({retry:?}) must be shorter than --leader-elect-renew-deadline ({renew:?})"
    )]
    RetryNotShorterThanRenew { retry: Duration, renew: Duration },
    #[error("--leader-elect-lease-duration must be at least 1s")]
    LeaseTooShort,
}

impl ElectionConfig {
    /// The timings are consistent (as kube-scheduler checks them).
    pub fn validate(&self) -> Result<(), ElectionError> {
        if self.lease_duration < Duration::from_secs(1) {
            return Err(ElectionError::LeaseTooShort);
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(ElectionError::RenewNotShorterThanLease {
                renew: self.renew_deadline,
                lease: self.lease_duration,
            });
        }
        if self.retry_period >= self.renew_deadline {
            return Err(ElectionError::RetryNotShorterThanRenew {
                retry: self.retry_period,
                renew: self.renew_deadline,
            });
        }
        Ok(())
    }
}

/// What the Lease says, as far as the election cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseRecord {
    /// Empty when nobody holds it (released).
    pub holder: String,
    pub lease_duration_seconds: i32,
    pub acquire_time: Option<Timestamp>,
    pub renew_time: Option<Timestamp>,
    pub transitions: i32,
}

impl LeaseRecord {
    fn of(lease: &Lease) -> LeaseRecord {
        let spec = lease.spec.clone().unwrap_or_default();
        LeaseRecord {
            holder: spec.holder_identity.unwrap_or_default(),
            lease_duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
            acquire_time: spec.acquire_time.map(|t| t.0),
            renew_time: spec.renew_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }

    fn spec(&self) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(self.lease_duration_seconds),
            acquire_time: self.acquire_time.map(MicroTime),
            renew_time: self.renew_time.map(MicroTime),
            lease_transitions: Some(self.transitions),
            ..Default::default()
        }
    }
}

/// The Lease as this member last read it, and when (on its own clock) it first read it
/// in that form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub record: LeaseRecord,
    pub since: Instant,
}

/// Remembers `record` read at `now`: the time only moves when the record changed (a
/// holder that renews changes `renewTime` each time).
pub fn observe(previous: Option<Observed>, record: LeaseRecord, now: Instant) -> Observed {
    match previous {
        Some(p) if p.record == record => p,
        _ => Observed { record, since: now },
    }
}

/// What to do with the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, held by us.
    Create(LeaseRecord),
    /// Write this record over the one read (compare-and-swap): a renewal of ours, or the
    /// take-over of a lease that ran out or was released.
    Write(LeaseRecord),
    /// Someone else holds a lease that has not run out.
    Wait { holder: String },
}

/// The election's rule: given the Lease as observed (`None`: it does not exist), the time
/// now (monotonic, for expiry; wall, for what is written), our identity and lease duration.
pub fn decide(
    observed: Option<&Observed>,
    now: Instant,
    wall: Timestamp,
    identity: &str,
    lease_duration: Duration,
    exclusive: bool,
) -> Decision {
    let seconds = i32::try_from(lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(observed) = observed else {
        return Decision::Create(LeaseRecord {
            holder: identity.to_string(),
            lease_duration_seconds: seconds,
            acquire_time: Some(wall),
            renew_time: Some(wall),
            transitions: 0,
        });
    };
    let current = &observed.record;
    if current.holder == identity {
        return Decision::Write(LeaseRecord {
            lease_duration_seconds: seconds,
            renew_time: Some(wall),
            ..current.clone()
        });
    }
    let held_for = Duration::from_secs(u64::try_from(current.lease_duration_seconds).unwrap_or(0));
    let expired = now >= observed.since + held_for;
    if !current.holder.is_empty() && !expired && !exclusive {
        return Decision::Wait {
            holder: current.holder.clone(),
        };
    }
    Decision::Write(LeaseRecord {
        holder: identity.to_string(),
        lease_duration_seconds: seconds,
        acquire_time: Some(wall),
        renew_time: Some(wall),
        transitions: current.transitions.saturating_add(1),
    })
}

/// Whether resourceVersion `read` is older than `known` (wharf's resourceVersions are
/// store revisions: numbers that only grow).
fn is_older(read: Option<&str>, known: Option<&str>) -> bool {
    match (
        read.and_then(|r| r.parse::<u64>().ok()),
        known.and_then(|k| k.parse::<u64>().ok()),
    ) {
        (Some(read), Some(known)) => read < known,
        _ => false,
    }
}

/// How one attempt ended.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold the lease now.
    Held,
    /// Another member holds it (or wrote it first).
    NotHeld,
}

/// The executor of one election: the Lease `name` in `kube-system`, read and written with
/// `client`.
struct Elector {
    api: Api<Lease>,
    name: String,
    config: ElectionConfig,
    observed: Option<Observed>,
    resource_version: Option<String>,
}

impl Elector {
    fn new(client: kube::Client, name: &str, config: ElectionConfig) -> Self {
        Elector {
            api: Api::namespaced(client, NAMESPACE),
            name: name.to_string(),
            config,
            observed: None,
            resource_version: None,
        }
    }

    /// Reads the Lease, decides, and writes it if the decision says so.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let lease = self.api.get_opt(&self.name).await?;
        let now = Instant::now();
        match &lease {
            // A read older than what we last wrote or read (a member's watch cache may lag
            // behind its own write): what we know is newer, keep it. The write below is a
            // compare-and-swap, so acting on what we know is never unsafe.
            Some(lease)
                if is_older(
                    lease.metadata.resource_version.as_deref(),
                    self.resource_version.as_deref(),
                ) => {}
            Some(lease) => {
                let record = LeaseRecord::of(lease);
                self.observed = Some(observe(self.observed.take(), record, now));
                self.resource_version = lease.metadata.resource_version.clone();
            }
            None => {
                self.observed = None;
                self.resource_version = None;
            }
        }
        let decision = decide(
            self.observed.as_ref(),
            now,
            Timestamp::now(),
            &self.config.identity,
            self.config.lease_duration,
            self.config.exclusive,
        );
        let (record, create) = match decision {
            Decision::Wait { .. } => return Ok(Attempt::NotHeld),
            Decision::Create(record) => (record, true),
            Decision::Write(record) => (record, false),
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(NAMESPACE.to_string()),
                resource_version: self.resource_version.clone(),
                ..Default::default()
            },
            spec: Some(record.spec()),
        };
        let written = if create {
            self.api.create(&PostParams::default(), &lease).await
        } else {
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
        };
        match written {
            Ok(lease) => {
                self.resource_version = lease.metadata.resource_version.clone();
                self.observed = Some(observe(None, LeaseRecord::of(&lease), Instant::now()));
                Ok(Attempt::Held)
            }
            // Another member wrote first: what it wrote is read on the next attempt.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::NotHeld),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (on shutdown) so that another member takes it at once.
    async fn release(&mut self) {
        let Some(observed) = &self.observed else {
            return;
        };
        if observed.record.holder != self.config.identity {
            return;
        }
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(NAMESPACE.to_string()),
                resource_version: self.resource_version.clone(),
                ..Default::default()
            },
            spec: Some(
                LeaseRecord {
                    holder: String::new(),
                    lease_duration_seconds: 1,
                    renew_time: Some(Timestamp::now()),
                    ..observed.record.clone()
                }
                .spec(),
            ),
        };
        let released = tokio::time::timeout(
            self.config.retry_period,
            self.api.replace(&self.name, &PostParams::default(), &lease),
        )
        .await;
        match released {
            Ok(Ok(_)) => tracing::info!(lease = %self.name, "released the lease"),
            Ok(Err(e)) => tracing::debug!(lease = %self.name, error = %e, "releasing the lease"),
            Err(_) => tracing::debug!(lease = %self.name, "releasing the lease timed out"),
        }
    }
}

/// Runs the loops that `start` spawns (under the token it is given) while this member
/// holds the Lease `name`; until `shutdown`. With the election off, runs them at once.
pub async fn run<F>(
    client: kube::Client,
    name: &'static str,
    config: ElectionConfig,
    shutdown: CancellationToken,
    start: F,
) where
    F: Fn(CancellationToken, &mut JoinSet<()>),
{
    if !config.enabled {
        config.metrics.set(name, true);
        let mut tasks = JoinSet::new();
        start(shutdown.clone(), &mut tasks);
        while tasks.join_next().await.is_some() {}
        return;
    }
    let retry = config.retry_period;
    let renew_deadline = config.renew_deadline;
    let status = config.metrics.clone();
    status.set(name, false);
    let mut elector = Elector::new(client, name, config);
    loop {
        // Trying to take the lease.
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let attempt = tokio::time::timeout(retry, elector.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(Attempt::Held)) => break,
                Ok(Ok(Attempt::NotHeld)) => {}
                Ok(Err(e)) => tracing::debug!(lease = name, error = %e, "acquiring the lease"),
                Err(_) => tracing::debug!(lease = name, "acquiring the lease timed out"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
        }
        tracing::info!(lease = name, identity = %elector.config.identity, "became the leader");
        status.set(name, true);
        let term = shutdown.child_token();
        let mut tasks = JoinSet::new();
        start(term.clone(), &mut tasks);

        // Holding it: renew every retry period; give up when the renew deadline passes.
        let mut renewed = Instant::now();
        let stopping = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break true,
                _ = tokio::time::sleep(retry) => {}
            }
            let deadline = renewed + renew_deadline;
            match tokio::time::timeout_at(deadline, elector.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Held)) => renewed = Instant::now(),
                Ok(Ok(Attempt::NotHeld)) => {
                    tracing::warn!(lease = name, "the lease was taken by another member");
                    break false;
                }
                Ok(Err(e)) if Instant::now() < deadline => {
                    tracing::debug!(lease = name, error = %e, "renewing the lease; retrying");
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = name, error = %e, "could not renew the lease in time");
                    break false;
                }
                Err(_) => {
                    tracing::warn!(lease = name, "could not renew the lease in time");
                    break false;
                }
            }
        };
        term.cancel();
        status.set(name, false);
        stop(&mut tasks).await;
        if stopping {
            elector.release().await;
            return;
        }
        tracing::warn!(lease = name, "lost the lease: stopped its loops");
        elector.observed = None;
    }
}

/// Waits for cancelled loops to end, aborting what is still running after a grace period.
async fn stop(tasks: &mut JoinSet<()>) {
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn wall(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn held_by(holder: &str, transitions: i32, renewed: i64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.to_string(),
            lease_duration_seconds: 15,
            acquire_time: Some(wall(0)),
            renew_time: Some(wall(renewed)),
            transitions,
        }
    }

    #[test]
    fn no_lease_is_created_held_by_us() {
        let now = Instant::now();
        let d = decide(None, now, wall(5), "a", LEASE, false);
        assert_eq!(
            d,
            Decision::Create(LeaseRecord {
                holder: "a".into(),
                lease_duration_seconds: 15,
                acquire_time: Some(wall(5)),
                renew_time: Some(wall(5)),
                transitions: 0,
            })
        );
    }

    #[test]
    fn the_holder_renews_keeping_acquire_time_and_transitions() {
        let t0 = Instant::now();
        let seen = observe(None, held_by("a", 3, 0), t0);
        // Even long after the last change we saw: it is ours.
        let d = decide(Some(&seen), t0 + LEASE * 4, wall(60), "a", LEASE, false);
        let Decision::Write(r) = d else {
            panic!("{d:?}")
        };
        assert_eq!(r.holder, "a");
        assert_eq!(r.transitions, 3);
        assert_eq!(r.acquire_time, Some(wall(0)));
        assert_eq!(r.renew_time, Some(wall(60)));
    }

    #[test]
    fn another_holder_is_waited_for_until_its_lease_runs_out_on_our_clock() {
        let t0 = Instant::now();
        let mut seen = observe(None, held_by("b", 1, 0), t0);
        let at = |seen: &Observed, s: u64| {
            decide(
                Some(seen),
                t0 + Duration::from_secs(s),
                wall(s as i64),
                "a",
                LEASE,
                false,
            )
        };
        assert_eq!(at(&seen, 14), Decision::Wait { holder: "b".into() });
        // The holder renewed at 10 s (we saw the record change): the clock starts again.
        seen = observe(
            Some(seen),
            held_by("b", 1, 10),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(seen.since, t0 + Duration::from_secs(10));
        assert_eq!(at(&seen, 24), Decision::Wait { holder: "b".into() });
        // Reading the same record again does not move it.
        seen = observe(
            Some(seen),
            held_by("b", 1, 10),
            t0 + Duration::from_secs(20),
        );
        assert_eq!(seen.since, t0 + Duration::from_secs(10));
        // No renewal for a whole lease duration: taken over, one more transition.
        let d = at(&seen, 25);
        assert_eq!(
            d,
            Decision::Write(LeaseRecord {
                holder: "a".into(),
                lease_duration_seconds: 15,
                acquire_time: Some(wall(25)),
                renew_time: Some(wall(25)),
                transitions: 2,
            })
        );
    }

    #[test]
    fn the_holders_clock_does_not_matter_only_when_we_saw_the_change() {
        // The record says it was renewed long ago (a holder whose clock lags): we still
        // wait a full lease duration from when we first saw it.
        let t0 = Instant::now();
        let seen = observe(None, held_by("b", 0, -3600), t0);
        let d = decide(
            Some(&seen),
            t0 + Duration::from_secs(1),
            wall(0),
            "a",
            LEASE,
            false,
        );
        assert_eq!(d, Decision::Wait { holder: "b".into() });
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let t0 = Instant::now();
        let mut released = held_by("", 4, 0);
        released.lease_duration_seconds = 1;
        let seen = observe(None, released, t0);
        let d = decide(Some(&seen), t0, wall(1), "a", LEASE, false);
        let Decision::Write(r) = d else {
            panic!("{d:?}")
        };
        assert_eq!((r.holder.as_str(), r.transitions), ("a", 5));
    }

    #[test]
    fn an_exclusive_store_takes_over_a_lease_left_by_an_earlier_run() {
        let t0 = Instant::now();
        let seen = observe(None, held_by("old-run", 0, 0), t0);
        let d = decide(Some(&seen), t0, wall(1), "a", LEASE, true);
        assert!(matches!(d, Decision::Write(r) if r.holder == "a" && r.transitions == 1));
    }

    #[test]
    fn a_read_older_than_what_we_know_is_not_taken_for_news() {
        assert!(is_older(Some("9"), Some("10")));
        assert!(!is_older(Some("10"), Some("10")));
        assert!(!is_older(Some("11"), Some("10")));
        assert!(!is_older(Some("9"), None));
        assert!(!is_older(None, Some("10")));
    }

    #[test]
    fn timings_are_checked_as_kube_scheduler_checks_them() {
        let ok = ElectionConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        assert!(ok.identity.contains('_'), "{}", ok.identity);
        assert_ne!(ok.identity, ElectionConfig::default().identity);
        let renew_too_long = ElectionConfig {
            renew_deadline: Duration::from_secs(15),
            ..ElectionConfig::default()
        };
        assert_eq!(
            renew_too_long.validate().unwrap_err().to_string(),
            "--leader-elect-renew-deadline (15s) must be shorter than --leader-elect-lease-duration (15s)"
        );
        let retry_too_long = ElectionConfig {
            retry_period: Duration::from_secs(10),
            ..ElectionConfig::default()
        };
        assert!(retry_too_long.validate().is_err());
    }

    /// Two electors on one API server: one leads, the other takes over at once when the
    /// first shuts down (released), and a leader whose lease is taken stops its loops.
    #[tokio::test]
    async fn one_member_leads_a_release_hands_over_and_a_taken_lease_stops_the_loops() {
        use tokio::sync::mpsc;
        let tmp = tempfile::tempdir().unwrap();
        let mut config = crate::ControlConfig::new(tmp.path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.run_components = false;
        let plane_shutdown = CancellationToken::new();
        let plane = crate::start(config, plane_shutdown.clone()).await.unwrap();
        let client = plane.client();

        let (events, mut seen) = mpsc::unbounded_channel::<(&'static str, bool)>();
        let member = |identity: &'static str| {
            let config = ElectionConfig {
                lease_duration: Duration::from_secs(3),
                renew_deadline: Duration::from_secs(2),
                retry_period: Duration::from_millis(100),
                identity: identity.to_string(),
                ..ElectionConfig::default()
            };
            let shutdown = CancellationToken::new();
            let events = events.clone();
            let task = tokio::spawn(run(
                client.clone(),
                "test-lease",
                config,
                shutdown.clone(),
                move |token, tasks| {
                    let events = events.clone();
                    let _ = events.send((identity, true));
                    tasks.spawn(async move {
                        token.cancelled().await;
                        let _ = events.send((identity, false));
                    });
                },
            ));
            (shutdown, task)
        };
        let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
        let holder = |l: Lease| l.spec.unwrap().holder_identity.unwrap();

        let (stop_a, a) = member("a");
        assert_eq!(next(&mut seen).await, ("a", true));
        let (stop_b, b) = member("b");
        // A renews (renewTime moves) and stays the holder while B tries.
        let first = api.get("test-lease").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let now = api.get("test-lease").await.unwrap();
                if now.spec.as_ref().unwrap().renew_time != first.spec.as_ref().unwrap().renew_time
                {
                    return now;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .map(|l| assert_eq!(holder(l), "a"))
        .unwrap();

        // A shuts down: its loops stop, it releases, and B takes over well before A's
        // lease would have run out.
        let handed = Instant::now();
        stop_a.cancel();
        assert_eq!(next(&mut seen).await, ("a", false));
        assert_eq!(next(&mut seen).await, ("b", true));
        assert!(
            handed.elapsed() < Duration::from_secs(3),
            "{:?}",
            handed.elapsed()
        );
        tokio::time::timeout(Duration::from_secs(5), a)
            .await
            .unwrap()
            .unwrap();
        let lease = api.get("test-lease").await.unwrap();
        assert_eq!(lease.spec.as_ref().unwrap().lease_transitions, Some(1));
        assert_eq!(holder(lease.clone()), "b");

        // Someone else writes the lease: B stops its loops on its next renewal.
        let mut taken = lease;
        taken.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
        taken.spec.as_mut().unwrap().renew_time = Some(MicroTime(Timestamp::now()));
        let lost = Instant::now();
        api.replace("test-lease", &PostParams::default(), &taken)
            .await
            .unwrap();
        assert_eq!(next(&mut seen).await, ("b", false));
        assert!(
            lost.elapsed() < Duration::from_secs(1),
            "{:?}",
            lost.elapsed()
        );
        // And takes it back once the intruder's lease runs out unrenewed.
        assert_eq!(next(&mut seen).await, ("b", true));
        assert!(
            lost.elapsed() >= Duration::from_secs(3),
            "{:?}",
            lost.elapsed()
        );
        stop_b.cancel();
        assert_eq!(next(&mut seen).await, ("b", false));
        tokio::time::timeout(Duration::from_secs(5), b)
            .await
            .unwrap()
            .unwrap();
        plane_shutdown.cancel();
    }

    async fn next(
        seen: &mut tokio::sync::mpsc::UnboundedReceiver<(&'static str, bool)>,
    ) -> (&'static str, bool) {
        tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .unwrap()
            .unwrap()
    }
}
