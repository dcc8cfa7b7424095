//! Recording core/v1 Events, as `kubectl describe` and `wharf get events` show them.
//!
//! Every component that decides something a user would want to see (a pod scheduled, a
//! replica created, a container restarted) records an Event about the object, through the
//! API like any client. Repeats of the same event (same object, reason and message) are
//! folded into one Event whose `count` and `lastTimestamp` move, as the kubelet's and
//! controllers' recorders do, so a crash loop does not flood the store.
//!
//! A node paces its events as the kubelet does (`--event-qps`, default 50 a second, in
//! bursts of `--event-burst`, default 100), with at most [`MAX_QUEUED`] waiting: beyond
//! that, events are dropped. A node starting ten thousand pods at once would otherwise
//! write three Events per pod (`Pulled`, `Created`, `Started`) before the pods' own status,
//! tripling the API writes the start costs.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What makes two events the same: (object uid, reason, message).
type Repeat = (String, String, String);
/// Where a recorded event is: (namespace, name, count).
type Recorded = (String, String, i32);

/// Records Events for one component (`default-scheduler`, `replicaset-controller`, ...).
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: String,
    host: Option<String>,
    seen: Arc<Mutex<HashMap<Repeat, Recorded>>>,
    /// The pace events are written at; `None`: as they come.
    limit: Option<Arc<Limiter>>,
}

/// How many events a component writes: `qps` a second, in bursts of up to `burst` (the
/// kubelet's `--event-qps` and `--event-burst`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventRate {
    pub qps: f64,
    pub burst: u32,
}

impl EventRate {
    /// The kubelet's defaults: 50 a second, bursts of 100.
    pub const KUBELET: EventRate = EventRate {
        qps: 50.0,
        burst: 100,
    };
}

/// Most events waiting for their turn at once (as many as client-go's event broadcaster
/// queues); more are dropped.
pub const MAX_QUEUED: usize = 1000;

/// A token bucket, kept as the time the next event is due (the generic cell rate
/// algorithm): pure, given the clock.
#[derive(Debug)]
struct Pace {
    interval: Duration,
    /// How far ahead of `now` the due time may run before events wait: `burst - 1`
    /// intervals, so `burst` events go at once.
    slack: Duration,
    due: Option<Instant>,
}

impl Pace {
    fn new(rate: EventRate) -> Self {
        let interval = Duration::from_secs_f64(1.0 / rate.qps);
        Pace {
            interval,
            slack: interval.saturating_mul(rate.burst.max(1) - 1),
            due: None,
        }
    }

    /// Takes the next slot for an event at `now`: how long it waits before it is written.
    fn reserve(&mut self, now: Instant) -> Duration {
        let due = self.due.map_or(now, |d| d.max(now));
        self.due = Some(due + self.interval);
        due.saturating_duration_since(now)
            .saturating_sub(self.slack)
    }
}

struct Limiter {
    pace: Mutex<Pace>,
    queue: Arc<tokio::sync::Semaphore>,
}

/// The reference to an object that an Event is about.
pub fn reference(kind: &str, api_version: &str, meta: &ObjectMeta) -> ObjectReference {
    ObjectReference {
        kind: Some(kind.to_string()),
        api_version: Some(api_version.to_string()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

impl Recorder {
    pub fn new(client: kube::Client, component: impl Into<String>) -> Self {
        Recorder {
            client,
            component: component.into(),
            host: None,
            seen: Arc::default(),
            limit: None,
        }
    }

    /// Writes events at `rate` (a zero or negative `qps`: as they come), with at most
    /// [`MAX_QUEUED`] waiting; more are dropped.
    pub fn with_rate(mut self, rate: EventRate) -> Self {
        self.limit = (rate.qps > 0.0 && rate.qps.is_finite()).then(|| {
            Arc::new(Limiter {
                pace: Mutex::new(Pace::new(rate)),
                queue: Arc::new(tokio::sync::Semaphore::new(MAX_QUEUED)),
            })
        });
        self
    }

    /// The node a kubelet-like component runs on (`source.host`).
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Records an event; failures are logged, never returned: an event is information,
    /// not part of the decision it reports.
    pub async fn record(
        &self,
        about: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        let _turn = match &self.limit {
            None => None,
            Some(limit) => {
                let Ok(turn) = limit.queue.clone().try_acquire_owned() else {
                    tracing::debug!(component = %self.component, reason, "dropping an event: {MAX_QUEUED} are waiting");
                    return;
                };
                let wait = limit
                    .pace
                    .lock()
                    .map(|mut p| p.reserve(Instant::now()))
                    .unwrap_or_default();
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Some(turn)
            }
        };
        if let Err(e) = self.try_record(about, kind, reason, message).await {
            tracing::debug!(component = %self.component, reason, error = %e, "recording an event failed");
        }
    }

    async fn try_record(
        &self,
        about: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        // Events about cluster-scoped objects (nodes) live in `default`.
        let ns = about
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let now = Timestamp::now();
        let key = (
            about
                .uid
                .clone()
                .unwrap_or_else(|| about.name.clone().unwrap_or_default()),
            reason.to_string(),
            message.to_string(),
        );
        let known = self.seen.lock().ok().and_then(|s| s.get(&key).cloned());
        if let Some((ev_ns, ev_name, count)) = known {
            let patch = serde_json::json!({"count": count + 1, "lastTimestamp": Time(now)});
            let events: Api<Event> = Api::namespaced(self.client.clone(), &ev_ns);
            if events
                .patch(&ev_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                if let Ok(mut s) = self.seen.lock() {
                    s.insert(key, (ev_ns, ev_name, count + 1));
                }
                return Ok(());
            }
        }
        let suffix = format!("{:x}", now.as_nanosecond());
        let name = format!(
            "{}.{}",
            about.name.clone().unwrap_or_else(|| "object".into()),
            &suffix[suffix.len().saturating_sub(16)..]
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: about.clone(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(kind.as_str().to_string()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone().unwrap_or_else(|| self.component.clone())),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            action: Some(reason.to_string()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        if let Ok(mut s) = self.seen.lock() {
            if s.len() > 10_000 {
                s.clear();
            }
            s.insert(key, (ns, name, 1));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_and_the_rest_at_the_rate() {
        let mut pace = Pace::new(EventRate {
            qps: 10.0,
            burst: 3,
        });
        let t0 = Instant::now();
        let ms = |d: Duration| d.as_millis();
        // Three at once, then one every 100 ms.
        let waits: Vec<u128> = (0..6).map(|_| ms(pace.reserve(t0))).collect();
        assert_eq!(waits, [0, 0, 0, 100, 200, 300]);
        // Time passing pays the debt back: at 1 s the bucket is full again.
        let t1 = t0 + Duration::from_secs(1);
        let waits: Vec<u128> = (0..4).map(|_| ms(pace.reserve(t1))).collect();
        assert_eq!(waits, [0, 0, 0, 100]);
    }

    #[test]
    fn a_rate_of_one_event_waits_for_each() {
        let mut pace = Pace::new(EventRate { qps: 2.0, burst: 1 });
        let t0 = Instant::now();
        assert_eq!(pace.reserve(t0), Duration::ZERO);
        assert_eq!(pace.reserve(t0), Duration::from_millis(500));
        assert_eq!(
            pace.reserve(t0 + Duration::from_millis(400)),
            Duration::from_millis(600)
        );
    }
}
