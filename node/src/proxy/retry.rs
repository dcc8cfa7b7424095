//! Retry policies (tower `retry::Policy`): a failure that provably happened before the
//! backend did anything is tried again, at once, on another endpoint.
//!
//! - L4: a failed or timed-out **connect**. Nothing was sent, so any connection may retry.
//! - L7: an HTTP request that got **no response** (connect failure, connection closed
//!   before the response head), only when it is idempotent (GET, HEAD, OPTIONS, PUT,
//!   DELETE, TRACE) and has no body, so that it can be replayed from its head alone; a
//!   request with a streaming body cannot be replayed and is never retried.
//!
//! Both policies add the failed endpoint to the request's tried list (the balancer then
//! picks among the others) and stop after a fixed number of attempts. Errors that did not
//! come from an endpoint (no endpoints, load shed) are final.

use super::balance::{EndpointError, Tried};
use futures::future::{Ready, ready};
use http_body_util::Either;
use std::net::SocketAddr;
use tower::BoxError;
use tower::retry::Policy;

/// What the L4 connect stack is asked for: a connection to one endpoint of the service,
/// not one of those already tried.
#[derive(Debug, Clone, Default)]
pub struct ConnectRequest {
    pub tried: Vec<SocketAddr>,
}

impl super::balance::Attempted for ConnectRequest {
    fn tried(&self) -> &[SocketAddr] {
        &self.tried
    }
}

/// The endpoint that failed, if the error came from one.
fn failed_endpoint(error: &BoxError) -> Option<SocketAddr> {
    error.downcast_ref::<EndpointError>().map(|e| e.addr)
}

/// Retries failed connects on another endpoint.
#[derive(Debug, Clone)]
pub struct ConnectRetry {
    remaining: usize,
}

impl ConnectRetry {
    /// `attempts` in total (1 means no retry).
    pub fn new(attempts: usize) -> Self {
        ConnectRetry {
            remaining: attempts.saturating_sub(1),
        }
    }
}

impl<Res> Policy<ConnectRequest, Res, BoxError> for ConnectRetry {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        req: &mut ConnectRequest,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        let addr = failed_endpoint(result.as_ref().err()?)?;
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        tracing::debug!(endpoint = %addr, "connect failed; trying another endpoint");
        req.tried.push(addr);
        Some(ready(()))
    }

    fn clone_request(&mut self, req: &ConnectRequest) -> Option<ConnectRequest> {
        Some(req.clone())
    }
}

/// The body of a request on its way to a backend: empty (replayable) or streamed from the
/// client (not replayable).
pub type ProxyBody = Either<http_body_util::Empty<bytes::Bytes>, hyper::body::Incoming>;

/// Whether a method may be sent twice without changing the outcome (RFC 9110 9.2.2).
pub fn idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    )
}

/// Retries idempotent, bodiless HTTP requests that failed before a response.
#[derive(Debug, Clone)]
pub struct HttpRetry {
    remaining: usize,
}

impl HttpRetry {
    pub fn new(attempts: usize) -> Self {
        HttpRetry {
            remaining: attempts.saturating_sub(1),
        }
    }
}

impl<Res> Policy<http::Request<ProxyBody>, Res, BoxError> for HttpRetry {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        req: &mut http::Request<ProxyBody>,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        let addr = failed_endpoint(result.as_ref().err()?)?;
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        tracing::debug!(endpoint = %addr, method = %req.method(), "request failed before a response; retrying on another endpoint");
        req.extensions_mut()
            .get_or_insert_with(Tried::default)
            .0
            .push(addr);
        Some(ready(()))
    }

    fn clone_request(
        &mut self,
        req: &http::Request<ProxyBody>,
    ) -> Option<http::Request<ProxyBody>> {
        if !idempotent(req.method()) || !matches!(req.body(), Either::Left(_)) {
            return None;
        }
        let mut clone = http::Request::new(Either::Left(http_body_util::Empty::new()));
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        if let Some(tried) = req.extensions().get::<Tried>() {
            clone.extensions_mut().insert(tried.clone());
        }
        Some(clone)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::proxy::balance::NoEndpoints;

    fn endpoint_error(port: u16) -> BoxError {
        EndpointError {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            source: "refused".into(),
        }
        .into()
    }

    #[test]
    fn connect_retry_skips_failed_endpoints_within_budget() {
        let mut policy = ConnectRetry::new(3);
        let mut req = ConnectRequest::default();
        for port in [1, 2] {
            let mut result: Result<(), BoxError> = Err(endpoint_error(port));
            assert!(policy.retry(&mut req, &mut result).is_some());
        }
        assert_eq!(req.tried.len(), 2);
        let mut result: Result<(), BoxError> = Err(endpoint_error(3));
        assert!(
            policy.retry(&mut req, &mut result).is_none(),
            "budget spent"
        );
        let mut fresh = ConnectRetry::new(3);
        let mut result: Result<(), BoxError> = Err(NoEndpoints.into());
        assert!(
            fresh.retry(&mut req, &mut result).is_none(),
            "not an endpoint"
        );
        let mut result: Result<(), BoxError> = Ok(());
        assert!(fresh.retry(&mut req, &mut result).is_none());
    }

    fn clone_request(
        policy: &mut HttpRetry,
        req: &http::Request<ProxyBody>,
    ) -> Option<http::Request<ProxyBody>> {
        <HttpRetry as Policy<http::Request<ProxyBody>, (), BoxError>>::clone_request(policy, req)
    }

    #[test]
    fn http_retry_only_replays_idempotent_bodiless_requests() {
        let mut policy = HttpRetry::new(2);
        let get = http::Request::builder()
            .method("GET")
            .uri("/x")
            .header("x-a", "1")
            .body(Either::Left(http_body_util::Empty::new()))
            .unwrap();
        let clone = clone_request(&mut policy, &get).unwrap();
        assert_eq!(clone.uri(), "/x");
        assert_eq!(clone.headers()["x-a"], "1");
        let post = http::Request::builder()
            .method("POST")
            .body(Either::Left(http_body_util::Empty::new()))
            .unwrap();
        assert!(clone_request(&mut policy, &post).is_none());
        let mut req = clone;
        let mut result: Result<(), BoxError> = Err(endpoint_error(7));
        assert!(policy.retry(&mut req, &mut result).is_some());
        assert_eq!(req.extensions().get::<Tried>().unwrap().0[0].port(), 7);
        assert!(policy.retry(&mut req, &mut result).is_none());
    }
}
