//! The balancer: a tower `Service` that sends each request (an L4 connect or an L7 HTTP
//! request) to one endpoint of its [`EndpointSet`].
//!
//! - **Least loaded (default)**: power of two choices. Two distinct endpoints are drawn at
//!   random and the one with fewer connections or requests in flight gets the work. It
//!   keeps a slow or busy endpoint from piling up work without the herd effect of always
//!   picking the global minimum from stale counts (Mitzenmacher; linkerd's and tower's p2c).
//! - **Round robin** (`wharf.dev/lb-policy: round-robin`): every endpoint in turn.
//!
//! tower's own `p2c::Balance` was not used because its endpoints are services that must be
//! driven to readiness through a `Discover` stream and it has no round robin; here
//! endpoints are plain addresses (the per-endpoint service is made per call by a
//! [`NewService`], linkerd-style, and is always ready: a connector or a pooled client), so
//! a pick is one lock-free snapshot read.
//!
//! A request carries the endpoints it already tried ([`Attempted`]): the retry layer above
//! adds the endpoint that failed, and the balancer picks among the others (falling back to
//! all of them when every one was tried). Errors from an endpoint come back as
//! [`EndpointError`], naming it, so the retry policy knows what to skip.
//!
//! The response carries a [`LoadGuard`]: the endpoint's load counts until the caller drops
//! it (the end of a proxied connection, or of an HTTP response body), not just until the
//! response head.

use super::discover::{Endpoint, EndpointSet, LoadGuard};
use super::model::LbPolicy;
use futures::future::BoxFuture;
use rand::Rng;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tower::{BoxError, Service, ServiceExt};

/// Makes the service for one target (linkerd's `NewService`): here, an endpoint's stack
/// from its address.
pub trait NewService<T> {
    type Service;
    fn new_service(&self, target: T) -> Self::Service;
}

impl<F, T, S> NewService<T> for F
where
    F: Fn(T) -> S,
{
    type Service = S;
    fn new_service(&self, target: T) -> S {
        self(target)
    }
}

/// Requests that remember which endpoints they were already sent to.
pub trait Attempted {
    fn tried(&self) -> &[SocketAddr];
}

/// The endpoints a request was sent to, as an HTTP request extension.
#[derive(Debug, Clone, Default)]
pub struct Tried(pub Vec<SocketAddr>);

impl<B> Attempted for http::Request<B> {
    fn tried(&self) -> &[SocketAddr] {
        self.extensions().get::<Tried>().map_or(&[], |t| &t.0)
    }
}

/// The policy of a Service port, changeable while it serves (annotation edits).
#[derive(Debug, Default)]
pub struct PolicyCell(AtomicU8);

impl PolicyCell {
    pub fn new(policy: LbPolicy) -> Self {
        let cell = PolicyCell::default();
        cell.set(policy);
        cell
    }

    pub fn get(&self) -> LbPolicy {
        match self.0.load(Ordering::Relaxed) {
            1 => LbPolicy::RoundRobin,
            _ => LbPolicy::LeastLoaded,
        }
    }

    pub fn set(&self, policy: LbPolicy) {
        let v = match policy {
            LbPolicy::LeastLoaded => 0,
            LbPolicy::RoundRobin => 1,
        };
        self.0.store(v, Ordering::Relaxed);
    }
}

/// No endpoint to send to.
#[derive(Debug, thiserror::Error)]
#[error("no endpoints available")]
pub struct NoEndpoints;

/// An endpoint failed the request.
#[derive(Debug, thiserror::Error)]
#[error("endpoint {addr}: {source}")]
pub struct EndpointError {
    pub addr: SocketAddr,
    #[source]
    pub source: BoxError,
}

/// What the balancer answers: the endpoint's response, which endpoint, and its load guard.
#[derive(Debug)]
pub struct Balanced<R> {
    pub response: R,
    pub endpoint: SocketAddr,
    pub load: LoadGuard,
}

/// Picks an endpoint (pure apart from the round-robin counter and the random draw).
pub fn pick<'a, R: Rng + ?Sized>(
    policy: LbPolicy,
    endpoints: &'a [Endpoint],
    tried: &[SocketAddr],
    next: &AtomicUsize,
    rng: &mut R,
) -> Option<&'a Endpoint> {
    let fresh: Vec<&Endpoint> = endpoints
        .iter()
        .filter(|e| !tried.contains(&e.addr))
        .collect();
    let candidates: Vec<&Endpoint> = if fresh.is_empty() {
        endpoints.iter().collect()
    } else {
        fresh
    };
    let n = candidates.len();
    match (n, policy) {
        (0, _) => None,
        (1, _) => Some(candidates[0]),
        (_, LbPolicy::RoundRobin) => Some(candidates[next.fetch_add(1, Ordering::Relaxed) % n]),
        (_, LbPolicy::LeastLoaded) => {
            let i = rng.random_range(0..n);
            let mut j = rng.random_range(0..n - 1);
            if j >= i {
                j += 1;
            }
            let (a, b) = (candidates[i], candidates[j]);
            Some(if b.load() < a.load() { b } else { a })
        }
    }
}

/// The balancing service over one endpoint set. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Balance<N> {
    endpoints: Arc<EndpointSet>,
    policy: Arc<PolicyCell>,
    next: Arc<AtomicUsize>,
    new_endpoint: N,
}

impl<N> Balance<N> {
    pub fn new(endpoints: Arc<EndpointSet>, policy: Arc<PolicyCell>, new_endpoint: N) -> Self {
        Balance {
            endpoints,
            policy,
            next: Arc::new(AtomicUsize::new(0)),
            new_endpoint,
        }
    }
}

impl<N, S, Req> Service<Req> for Balance<N>
where
    Req: Attempted + Send + 'static,
    N: NewService<SocketAddr, Service = S>,
    S: Service<Req> + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = Balanced<S::Response>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    /// Always ready: endpoints are addresses, and their services are always ready.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let endpoints = self.endpoints.snapshot();
        let chosen = pick(
            self.policy.get(),
            &endpoints,
            req.tried(),
            &self.next,
            &mut rand::rng(),
        );
        let Some(endpoint) = chosen else {
            return Box::pin(async { Err(NoEndpoints.into()) });
        };
        let addr = endpoint.addr;
        let load = endpoint.track();
        let svc = self.new_endpoint.new_service(addr);
        Box::pin(async move {
            match svc.oneshot(req).await {
                Ok(response) => Ok(Balanced {
                    response,
                    endpoint: addr,
                    load,
                }),
                Err(e) => Err(EndpointError {
                    addr,
                    source: e.into(),
                }
                .into()),
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn set(n: u16) -> Arc<EndpointSet> {
        let set = Arc::new(EndpointSet::new());
        set.reset((1..=n).map(|p| SocketAddr::from(([127, 0, 0, 1], p))));
        set
    }

    #[test]
    fn p2c_picks_the_less_loaded() {
        let set = set(3);
        let eps = set.snapshot();
        // Endpoint 1 is busy: with three endpoints, whichever pair is drawn, the other one
        // in the pair is less loaded, so endpoint 1 is never chosen.
        let _busy: Vec<_> = (0..5).map(|_| eps[0].track()).collect();
        let next = AtomicUsize::new(0);
        let mut rng = rand::rng();
        let mut counts: HashMap<SocketAddr, usize> = HashMap::new();
        for _ in 0..1000 {
            let e = pick(LbPolicy::LeastLoaded, &eps, &[], &next, &mut rng).unwrap();
            *counts.entry(e.addr).or_default() += 1;
        }
        assert_eq!(counts.get(&eps[0].addr), None);
        // The two idle ones share the work.
        assert!(counts[&eps[1].addr] > 300, "{counts:?}");
        assert!(counts[&eps[2].addr] > 300, "{counts:?}");
        // With two endpoints, the idle one always wins.
        let two = &eps[..2];
        for _ in 0..100 {
            let e = pick(LbPolicy::LeastLoaded, two, &[], &next, &mut rng).unwrap();
            assert_eq!(e.addr, eps[1].addr);
        }
    }

    #[test]
    fn round_robin_cycles() {
        let set = set(3);
        let eps = set.snapshot();
        let next = AtomicUsize::new(0);
        let mut rng = rand::rng();
        let order: Vec<u16> = (0..7)
            .map(|_| {
                pick(LbPolicy::RoundRobin, &eps, &[], &next, &mut rng)
                    .unwrap()
                    .addr
                    .port()
            })
            .collect();
        assert_eq!(order, vec![1, 2, 3, 1, 2, 3, 1]);
    }

    #[test]
    fn tried_endpoints_are_skipped_until_all_were_tried() {
        let set = set(2);
        let eps = set.snapshot();
        let next = AtomicUsize::new(0);
        let mut rng = rand::rng();
        for policy in [LbPolicy::LeastLoaded, LbPolicy::RoundRobin] {
            for _ in 0..50 {
                let e = pick(policy, &eps, &[eps[0].addr], &next, &mut rng).unwrap();
                assert_eq!(e.addr, eps[1].addr);
            }
            // Everything tried: any endpoint again rather than nothing.
            assert!(pick(policy, &eps, &[eps[0].addr, eps[1].addr], &next, &mut rng).is_some());
        }
        assert!(pick(LbPolicy::LeastLoaded, &[], &[], &next, &mut rng).is_none());
    }

    /// The service: load counts until the response (and its guard) is dropped; errors name
    /// the endpoint; no endpoints is an error of its own.
    #[tokio::test]
    async fn balance_service_tracks_load_and_names_failures() {
        let set = set(2);
        let policy = Arc::new(PolicyCell::new(LbPolicy::RoundRobin));
        let svc = Balance::new(set.clone(), policy, |addr: SocketAddr| {
            tower::service_fn(move |_req: http::Request<()>| async move {
                if addr.port() == 2 {
                    Err::<u16, BoxError>("refused".into())
                } else {
                    Ok(addr.port())
                }
            })
        });
        let ok = svc.clone().oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(ok.response, 1);
        assert_eq!(set.snapshot()[0].load(), 1);
        drop(ok);
        assert_eq!(set.snapshot()[0].load(), 0);
        let err = svc
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap_err();
        let err = err.downcast_ref::<EndpointError>().unwrap();
        assert_eq!(err.addr.port(), 2);
        assert_eq!(set.snapshot()[1].load(), 0);
        set.reset([]);
        let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
        assert!(err.is::<NoEndpoints>());
    }
}
