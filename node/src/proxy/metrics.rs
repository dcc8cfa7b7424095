//! Per Service port counters, the outermost layer of every proxy stack, and their
//! Prometheus text rendering for the node server's `/metrics`.
//!
//! - `wharf_proxy_requests_total`: connections (TCP ports) or requests (HTTP ports) taken;
//! - `wharf_proxy_failures_total`: those that could not be served (no endpoint, shed,
//!   connect failure or timeout after retries, upstream error before a response);
//! - `wharf_proxy_active`: connections being proxied / requests awaiting their response;
//! - `wharf_proxy_endpoints`: endpoints taking new traffic;
//! - `wharf_proxy_endpoints_refused`: endpoint addresses ignored for being in no node's pod
//!   range (see [`super::model::confine_to_pod_ranges`]).
//!
//! Plain atomics, no metrics framework: the node exposes a handful of series and the text
//! format is a few lines.

use super::model::ServiceKey;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The counters of one Service port.
#[derive(Debug, Default)]
pub struct PortStats {
    requests: AtomicU64,
    failures: AtomicU64,
    active: AtomicI64,
    endpoints: AtomicU64,
}

impl PortStats {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
    pub fn active(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }
    pub fn set_endpoints(&self, n: usize) {
        self.endpoints.store(n as u64, Ordering::Relaxed);
    }
}

/// Every port's counters, by service and port.
#[derive(Debug, Default)]
pub struct Metrics {
    ports: RwLock<BTreeMap<(ServiceKey, u16), Arc<PortStats>>>,
    dns_generation: AtomicU64,
    refused_endpoints: AtomicU64,
    /// DNS queries answered, by [`DNS_RCODES`].
    dns_queries: [AtomicU64; DNS_RCODES.len()],
}

/// The response codes `wharf_dns_queries_total` tells apart; anything else is `other`.
pub const DNS_RCODES: [&str; 5] = ["NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "other"];

impl Metrics {
    /// The counters of a port, created on first use.
    pub fn port(&self, key: &ServiceKey, port: u16) -> Arc<PortStats> {
        let mut ports = self.ports.write().unwrap_or_else(PoisonError::into_inner);
        ports.entry((key.clone(), port)).or_default().clone()
    }

    /// Forgets ports that are no longer served.
    pub fn retain(&self, keep: impl Fn(&ServiceKey, u16) -> bool) {
        let mut ports = self.ports.write().unwrap_or_else(PoisonError::into_inner);
        ports.retain(|(k, p), _| keep(k, *p));
    }

    pub fn set_dns_generation(&self, generation: u64) {
        self.dns_generation.store(generation, Ordering::Relaxed);
    }

    /// Counts one DNS query answered with `rcode` (a name of [`DNS_RCODES`]).
    pub fn dns_answered(&self, rcode: &str) {
        let slot = DNS_RCODES
            .iter()
            .position(|c| *c == rcode)
            .unwrap_or(DNS_RCODES.len() - 1);
        self.dns_queries[slot].fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_refused_endpoints(&self, n: usize) {
        self.refused_endpoints.store(n as u64, Ordering::Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let ports = self.ports.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        let series: [Series; 4] = [
            (
                "wharf_proxy_requests_total",
                "counter",
                "Connections (TCP ports) or requests (HTTP ports) the node proxy took.",
                |s| s.requests() as i64,
            ),
            (
                "wharf_proxy_failures_total",
                "counter",
                "Connections or requests the node proxy could not serve.",
                |s| s.failures() as i64,
            ),
            (
                "wharf_proxy_active",
                "gauge",
                "Connections being proxied or requests awaiting a response.",
                PortStats::active,
            ),
            (
                "wharf_proxy_endpoints",
                "gauge",
                "Endpoints taking new traffic.",
                |s| s.endpoints.load(Ordering::Relaxed) as i64,
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((key, port), stats) in ports.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{namespace=\"{}\",service=\"{}\",port=\"{port}\"}} {}",
                    escape(&key.namespace),
                    escape(&key.name),
                    value(stats)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP wharf_dns_zone_generation Generation of the cluster DNS zone served.\n\
             # TYPE wharf_dns_zone_generation gauge\nwharf_dns_zone_generation {}",
            self.dns_generation.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP wharf_proxy_endpoints_refused Endpoint addresses ignored for being in no \
             node's pod range.\n\
             # TYPE wharf_proxy_endpoints_refused gauge\nwharf_proxy_endpoints_refused {}",
            self.refused_endpoints.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP wharf_dns_queries_total DNS queries the cluster DNS answered, by response code.\n\
             # TYPE wharf_dns_queries_total counter"
        );
        for (rcode, n) in DNS_RCODES.iter().zip(&self.dns_queries) {
            let _ = writeln!(
                out,
                "wharf_dns_queries_total{{rcode=\"{rcode}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// Name, type, help text and value of one series.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PortStats) -> i64,
);

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Counts requests, failures and what is in flight for the service below it.
#[derive(Clone)]
pub struct MetricsLayer {
    stats: Arc<PortStats>,
}

impl MetricsLayer {
    pub fn new(stats: Arc<PortStats>) -> Self {
        MetricsLayer { stats }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            stats: self.stats.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    stats: Arc<PortStats>,
}

struct Active(Arc<PortStats>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S, Req> Service<Req> for Metered<S>
where
    S: Service<Req>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        let active = Active(self.stats.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            if result.is_err() {
                active.0.failures.fetch_add(1, Ordering::Relaxed);
            }
            drop(active);
            result
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn counts_requests_failures_and_active() {
        let metrics = Metrics::default();
        let stats = metrics.port(&ServiceKey::new("default", "web"), 80);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
        let svc = MetricsLayer::new(stats.clone()).layer(tower::service_fn(move |fail: bool| {
            let wait = rx.lock().unwrap().take();
            async move {
                if let Some(rx) = wait {
                    let _ = rx.await;
                }
                if fail { Err("no") } else { Ok(()) }
            }
        }));
        let pending = tokio::spawn(svc.clone().oneshot(false));
        // The first call waits: it is active until released.
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while stats.active() != 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert!(svc.clone().oneshot(true).await.is_err());
        tx.send(()).unwrap();
        pending.await.unwrap().unwrap();
        assert_eq!(
            (stats.requests(), stats.failures(), stats.active()),
            (2, 1, 0)
        );
        let text = metrics.render();
        assert!(text.contains(
            "wharf_proxy_requests_total{namespace=\"default\",service=\"web\",port=\"80\"} 2"
        ));
        assert!(text.contains(
            "wharf_proxy_failures_total{namespace=\"default\",service=\"web\",port=\"80\"} 1"
        ));
        metrics.retain(|_, _| false);
        assert!(!metrics.render().contains("service=\"web\""));
    }
}
