//! The API server over the store seam (issue 10): what it answers when the backend is
//! down, and that allocation stays unique when several API servers share one store.

use super::*;
use crate::store::{Event, ListResult, Revision, StoreError, StoredObject, WatchStream, Write};
use futures::future::BoxFuture;

/// A backend that is down: every call fails with `Unavailable`, as a store without quorum.
struct Down;

fn down() -> StoreError {
    StoreError::unavailable(
        "no quorum",
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"),
    )
}

impl Store for Down {
    fn get<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<StoredObject>, StoreError>> {
        Box::pin(async { Err(down()) })
    }
    fn list<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<ListResult, StoreError>> {
        Box::pin(async { Err(down()) })
    }
    fn txn<'a>(&'a self, _: Vec<Write>) -> BoxFuture<'a, Result<Vec<Arc<Event>>, StoreError>> {
        Box::pin(async { Err(down()) })
    }
    fn watch<'a>(
        &'a self,
        _: &'a str,
        _: Revision,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        // The watch starts, then the backend goes away: the failure is a stream item.
        Box::pin(async {
            Ok(Box::pin(futures::stream::once(async { Err(down()) })) as WatchStream)
        })
    }
    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(async { Err(down()) })
    }
}

/// A router over `store` with the test token.
fn router_over(store: Arc<dyn Store>, config: ApiConfig) -> Router {
    let auth = Arc::new(Authenticator::new());
    auth.add_token(TOKEN, Identity::admin());
    router(AppState {
        store,
        auth,
        config: Arc::new(config),
        shutdown: CancellationToken::new(),
    })
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, http::HeaderMap, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), router.clone().oneshot(req))
        .await
        .expect("request timed out")
        .unwrap();
    let code = resp.status();
    let headers = resp.headers().clone();
    let bytes = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("body timed out")
        .unwrap()
        .to_bytes();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    (code, headers, value)
}

#[tokio::test]
async fn an_unavailable_backend_is_503_with_retry_after_never_500() {
    let router = router_over(Arc::new(Down), ApiConfig::default());
    for (method, uri, body) in [
        ("GET", "/api/v1/namespaces/default/configmaps/a", None),
        ("GET", "/api/v1/namespaces/default/configmaps", None),
        (
            "POST",
            "/api/v1/namespaces",
            Some(json!({"metadata": {"name": "x"}})),
        ),
        ("DELETE", "/api/v1/namespaces/default/configmaps/a", None),
    ] {
        let (code, headers, status) = call(&router, method, uri, body).await;
        assert_eq!(
            code,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {uri}: {status}"
        );
        assert_eq!(headers.get("retry-after").unwrap(), "1", "{method} {uri}");
        assert_eq!(status["reason"], "ServiceUnavailable", "{status}");
        assert_eq!(status["details"]["retryAfterSeconds"], 1, "{status}");
        let message = status["message"].as_str().unwrap();
        assert!(message.contains("unavailable"), "{message}");
        assert!(
            !message.contains("refused"),
            "the cause stays in the log: {message}"
        );
    }
}

#[tokio::test]
async fn a_watch_whose_backend_fails_ends_with_a_503_error_event() {
    let router = router_over(Arc::new(Down), ApiConfig::default());
    let (code, _, body) = call(
        &router,
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=5",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["type"], "ERROR", "{body}");
    assert_eq!(body["object"]["code"], 503, "{body}");
}
