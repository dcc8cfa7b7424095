//! Regression tests of the API-side hardening (issue 18): each request here was admitted
//! or answered wrongly before.

use super::*;

#[tokio::test]
async fn the_bearer_scheme_is_accepted_in_any_case() {
    let api = api().await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let req = Request::get("/api/v1/namespaces/default/pods")
            .header("authorization", format!("{scheme} {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let (code, body) = api.request(req).await;
        assert_eq!(code, StatusCode::OK, "{scheme}: {body}");
    }
}
