//! Holding requests for a Service scaled to zero, and asking for its wake-up.
//!
//! A Deployment that opts into scale to zero (`wharf.dev/scale-to-zero-after`) has no pod
//! while it sleeps, so its Service has no endpoint. The control plane's request-driven
//! autoscaler marks such a Service with [`super::model::WAKE_ANNOTATION`] (naming the
//! Deployment); for those Services only, a request that finds no endpoint is **held**
//! here instead of answered 503 at once:
//!
//! - at most [`ProxyConfig::max_held`](super::ProxyConfig) requests per Service port wait
//!   at once (a bounded queue); beyond, 503 at once, saying so;
//! - the first held request (and then at most one a second while requests keep waiting)
//!   asks for a wake-up through the [`Signal`]: on a node, an Event `WakeUpRequested` about
//!   the Deployment, which the autoscaler watches. Why an Event: a node may record Events
//!   (the Node authorizer lets it, as a kubelet's), while letting nodes write the `scale`
//!   of any Deployment would give every node credential the power to resize every
//!   workload; the Event is also the record users see (`kubectl describe deploy`);
//! - every held request is released the moment the port's endpoint set gains an endpoint
//!   ([`EndpointSet::wait_nonempty`]), and goes on through the rest of the stack as any
//!   request; one that waited [`ProxyConfig::hold_timeout`](super::ProxyConfig) gets a 503
//!   whose body says why.
//!
//! The layer sits under the metrics layer, so held requests count as in flight: the
//! autoscaler reads that as demand. Only HTTP ports hold (an L4 connection to a sleeping
//! Service is refused as before); the Ingress's stack of a backend Service port holds the
//! same way, with a [`PortWake`] of its own.

use super::discover::EndpointSet;
use super::model::ServiceKey;
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::{BoxError, Layer, Service, ServiceExt};

/// How often, at most, a port asks again for a wake-up while requests keep waiting.
pub const SIGNAL_INTERVAL: Duration = Duration::from_secs(1);

/// Asks the control plane to wake `workload` (a Deployment in the Service's namespace).
/// Must not block: a node's implementation records the Event in a task of its own.
pub trait Signal: Send + Sync {
    fn wake(&self, service: &ServiceKey, port: u16, workload: &str);
}

/// A signal that goes nowhere (tests, and nodes without a control plane client).
pub struct NoSignal;

impl Signal for NoSignal {
    fn wake(&self, _: &ServiceKey, _: u16, _: &str) {}
}

/// The node's signal: an Event `WakeUpRequested` about the Deployment, recorded in a task
/// of its own (the request does not wait for it).
pub struct EventSignal {
    recorder: wharf_control::events::Recorder,
}

impl EventSignal {
    pub fn new(recorder: wharf_control::events::Recorder) -> Self {
        EventSignal { recorder }
    }
}

impl Signal for EventSignal {
    fn wake(&self, service: &ServiceKey, port: u16, workload: &str) {
        let recorder = self.recorder.clone();
        let about = k8s_openapi::api::core::v1::ObjectReference {
            kind: Some("Deployment".into()),
            api_version: Some("apps/v1".into()),
            namespace: Some(service.namespace.clone()),
            name: Some(workload.to_string()),
            ..Default::default()
        };
        let message = format!(
            "a request for Service {} port {port} is waiting for an endpoint",
            service.name
        );
        tokio::spawn(async move {
            recorder
                .record(
                    &about,
                    wharf_control::events::EventType::Normal,
                    wharf_control::api::wellknown::WAKE_UP_REQUESTED_REASON,
                    &message,
                )
                .await;
        });
    }
}

/// Why a held request was answered without reaching an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error(
        "service {service} is scaled to zero and deployment {workload} had no ready endpoint within {}s of the request",
        timeout.as_secs_f64()
    )]
    TimedOut {
        service: String,
        workload: String,
        timeout: Duration,
    },
    #[error(
        "service {service} is scaled to zero and {max} requests are already waiting for it to wake up"
    )]
    QueueFull { service: String, max: usize },
}

/// The wake-up state of one Service port.
pub struct PortWake {
    service: ServiceKey,
    port: u16,
    endpoints: Arc<EndpointSet>,
    workload: RwLock<Option<String>>,
    held: AtomicUsize,
    last_signal: Mutex<Option<Instant>>,
    signal: Arc<dyn Signal>,
    timeout: Duration,
    max_held: usize,
}

impl std::fmt::Debug for PortWake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortWake")
            .field("service", &self.service)
            .field("port", &self.port)
            .field("held", &self.held())
            .finish_non_exhaustive()
    }
}

/// One held request; dropping it ends the hold.
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PortWake {
    pub fn new(
        service: ServiceKey,
        port: u16,
        endpoints: Arc<EndpointSet>,
        signal: Arc<dyn Signal>,
        timeout: Duration,
        max_held: usize,
    ) -> Self {
        PortWake {
            service,
            port,
            endpoints,
            workload: RwLock::new(None),
            held: AtomicUsize::new(0),
            last_signal: Mutex::new(None),
            signal,
            timeout,
            max_held,
        }
    }

    /// The Deployment to wake, from the Service's annotation (`None`: never hold).
    pub fn set_workload(&self, workload: Option<String>) {
        *self
            .workload
            .write()
            .unwrap_or_else(PoisonError::into_inner) = workload;
    }

    /// Requests waiting now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether a signal is due now (pure in `now` and the last one), recording it if so.
    fn signal_due(&self, now: Instant) -> bool {
        let mut last = self
            .last_signal
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = last.is_none_or(|at| now.saturating_duration_since(at) >= SIGNAL_INTERVAL);
        if due {
            *last = Some(now);
        }
        due
    }

    /// Waits for an endpoint when the Service may be asleep and has none; returns at once
    /// otherwise.
    pub async fn hold(&self) -> Result<(), HoldError> {
        let workload = self
            .workload
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(workload) = workload else {
            return Ok(());
        };
        if !self.endpoints.is_empty() {
            return Ok(());
        }
        if self.held.fetch_add(1, Ordering::Relaxed) >= self.max_held {
            self.held.fetch_sub(1, Ordering::Relaxed);
            return Err(HoldError::QueueFull {
                service: self.service.to_string(),
                max: self.max_held,
            });
        }
        let _held = Held(&self.held);
        let waiting = self.endpoints.wait_nonempty();
        let mut waiting = std::pin::pin!(waiting);
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if self.signal_due(Instant::now()) {
                tracing::debug!(service = %self.service, port = self.port, %workload, "holding requests; asking for a wake-up");
                self.signal.wake(&self.service, self.port, &workload);
            }
            let next = (tokio::time::Instant::now() + SIGNAL_INTERVAL).min(deadline);
            tokio::select! {
                _ = waiting.as_mut() => return Ok(()),
                _ = tokio::time::sleep_until(next) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HoldError::TimedOut {
                    service: self.service.to_string(),
                    workload,
                    timeout: self.timeout,
                });
            }
        }
    }
}

/// Holds requests (see the module docs) before the service below.
#[derive(Clone)]
pub struct HoldLayer {
    wake: Arc<PortWake>,
}

impl HoldLayer {
    pub fn new(wake: Arc<PortWake>) -> Self {
        HoldLayer { wake }
    }
}

impl<S> Layer<S> for HoldLayer {
    type Service = Hold<S>;
    fn layer(&self, inner: S) -> Hold<S> {
        Hold {
            inner,
            wake: self.wake.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Hold<S> {
    inner: S,
    wake: Arc<PortWake>,
}

impl<S, Req> Service<Req> for Hold<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    /// Always ready: readiness below (load shedding, the concurrency limit) is asked for
    /// once the request is released, on a clone of the service.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let inner = self.inner.clone();
        let wake = self.wake.clone();
        Box::pin(async move {
            wake.hold().await?;
            inner.oneshot(req).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[derive(Default)]
    struct Count(Mutex<Vec<(String, u16, String)>>);

    impl Signal for Count {
        fn wake(&self, service: &ServiceKey, port: u16, workload: &str) {
            self.0
                .lock()
                .unwrap()
                .push((service.to_string(), port, workload.to_string()));
        }
    }

    fn port(
        signal: Arc<Count>,
        timeout: Duration,
        max: usize,
    ) -> (Arc<EndpointSet>, Arc<PortWake>) {
        let set = Arc::new(EndpointSet::new());
        let wake = Arc::new(PortWake::new(
            ServiceKey::new("default", "web"),
            80,
            set.clone(),
            signal,
            timeout,
            max,
        ));
        (set, wake)
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[tokio::test]
    async fn held_requests_are_released_when_an_endpoint_is_ready_and_signal_once() {
        let signal = Arc::new(Count::default());
        let (set, wake) = port(signal.clone(), Duration::from_secs(30), 10);
        wake.set_workload(Some("web".into()));
        let svc = HoldLayer::new(wake.clone()).layer(tower::service_fn(|n: u32| async move {
            Ok::<_, BoxError>(n * 2)
        }));
        let held: Vec<_> = (0..5)
            .map(|n| tokio::spawn(svc.clone().oneshot(n)))
            .collect();
        tokio::time::timeout(Duration::from_secs(5), async {
            while wake.held() != 5 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert!(held.iter().all(|h| !h.is_finished()));
        // Five requests waiting, one wake-up asked for.
        assert_eq!(
            *signal.0.lock().unwrap(),
            vec![("default/web".to_string(), 80, "web".to_string())]
        );
        set.reset([addr()]);
        for (n, h) in held.into_iter().enumerate() {
            let got = tokio::time::timeout(Duration::from_secs(5), h)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(got, n as u32 * 2);
        }
        assert_eq!(wake.held(), 0);
    }

    #[tokio::test]
    async fn a_request_not_served_in_time_or_beyond_the_queue_is_refused_with_why() {
        let signal = Arc::new(Count::default());
        let (_set, wake) = port(signal.clone(), Duration::from_millis(300), 1);
        wake.set_workload(Some("web".into()));
        let first = tokio::spawn({
            let wake = wake.clone();
            async move { wake.hold().await }
        });
        while wake.held() != 1 {
            tokio::task::yield_now().await;
        }
        let full = wake.hold().await.unwrap_err();
        assert!(
            matches!(full, HoldError::QueueFull { max: 1, .. }),
            "{full}"
        );
        let timed_out = tokio::time::timeout(Duration::from_secs(5), first)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(
            timed_out.to_string(),
            "service default/web is scaled to zero and deployment web had no ready endpoint within 0.3s of the request"
        );
        // The refused request asked for nothing more: one wake-up per second at most.
        assert_eq!(signal.0.lock().unwrap().len(), 1);
        assert_eq!(wake.held(), 0);
    }

    #[tokio::test]
    async fn services_not_marked_or_with_endpoints_are_not_held() {
        let signal = Arc::new(Count::default());
        let (set, wake) = port(signal.clone(), Duration::from_secs(30), 10);
        // Not marked: no endpoint is the usual 503, decided below.
        tokio::time::timeout(Duration::from_secs(1), wake.hold())
            .await
            .unwrap()
            .unwrap();
        wake.set_workload(Some("web".into()));
        set.reset([addr()]);
        tokio::time::timeout(Duration::from_secs(1), wake.hold())
            .await
            .unwrap()
            .unwrap();
        assert!(signal.0.lock().unwrap().is_empty());
    }
}
