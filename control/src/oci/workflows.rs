//! The distribution spec's workflows against the cluster registry, through the router:
//! pull, push (monolithic, POST then PUT, chunked, cross-mount), content discovery (tags
//! with pagination, referrers) and content management (deleting tags, manifests, blobs),
//! with the requests and status codes the spec lists; and who may do what.

#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::storage::digest_of;
use crate::apiserver::auth::Identity;
use crate::apiserver::testing::{ADMIN_TOKEN, TestApi};

struct Registry {
    api: TestApi,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

impl Registry {
    async fn new() -> Registry {
        let api = TestApi::new().await;
        crate::apiserver::rbac::bootstrap::reconcile(api.client())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let router = super::router(api.state.clone(), dir.path().join("registry"));
        Registry {
            api,
            router,
            _dir: dir,
        }
    }

    async fn send(
        &self,
        token: Option<&str>,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::from(body.to_vec())).unwrap();
        let resp = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.router.clone().oneshot(req),
        )
        .await
        .unwrap()
        .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn admin(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        self.send(Some(ADMIN_TOKEN), method, uri, headers, body)
            .await
    }

    /// Pushes a blob monolithically; returns its digest.
    async fn blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = digest_of(bytes);
        let r = self
            .admin(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                &[],
                bytes,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        digest
    }

    /// A wasm artifact manifest of `wasm` (config and layer pushed), tagged `tag`.
    async fn artifact(&self, repo: &str, tag: &str, wasm: &[u8]) -> (String, Vec<u8>) {
        let config = self
            .blob(repo, br#"{"architecture":"wasm","os":"wasip2"}"#)
            .await;
        let layer = self.blob(repo, wasm).await;
        let manifest = serde_json::to_vec(&json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": config, "size": 38},
            "layers": [{"mediaType": "application/wasm", "digest": layer, "size": wasm.len()}]}))
        .unwrap();
        let r = self
            .admin(
                "PUT",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
                &manifest,
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        (r.header("docker-content-digest").to_owned(), manifest)
    }
}

#[tokio::test]
async fn pull_and_push_workflows() {
    let reg = Registry::new().await;
    let r = reg.admin("GET", "/v2/", &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);

    // Push: POST then PUT with the bytes.
    let r = reg
        .admin("POST", "/v2/team/app/blobs/uploads/", &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let location = r.header("location").to_owned();
    assert!(
        location.starts_with("/v2/team/app/blobs/uploads/"),
        "{location}"
    );
    let digest = digest_of(b"abcdef");
    let r = reg
        .admin(
            "PUT",
            &format!("{location}?digest={digest}"),
            &[],
            b"abcdef",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("location"), format!("/v2/team/app/blobs/{digest}"));

    // Chunked: PATCH in order, an out-of-order chunk is 416, then PUT.
    let r = reg
        .admin("POST", "/v2/team/app/blobs/uploads/", &[], b"")
        .await;
    let location = r.header("location").to_owned();
    let r = reg
        .admin("PATCH", &location, &[("content-range", "0-2")], b"123")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), "0-2");
    let r = reg
        .admin("PATCH", &location, &[("content-range", "5-6")], b"67")
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let r = reg
        .admin("PATCH", &location, &[("content-range", "3-5")], b"456")
        .await;
    assert_eq!(r.header("range"), "0-5");
    let r = reg.admin("GET", &location, &[], b"").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("range"), "0-5");
    let chunked = digest_of(b"1234567");
    let r = reg
        .admin("PUT", &format!("{location}?digest={chunked}"), &[], b"7")
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // A wrong digest is DIGEST_INVALID and stores nothing.
    let r = reg
        .admin("POST", "/v2/team/app/blobs/uploads/", &[], b"")
        .await;
    let location = r.header("location").to_owned();
    let r = reg
        .admin("PUT", &format!("{location}?digest={chunked}"), &[], b"nope")
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
    );
    assert_eq!(
        reg.admin("GET", &location, &[], b"").await.status,
        StatusCode::NOT_FOUND
    );

    // Pull: blobs by digest, HEAD with the length.
    let r = reg
        .admin("GET", &format!("/v2/team/app/blobs/{chunked}"), &[], b"")
        .await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (StatusCode::OK, b"1234567".as_slice())
    );
    let r = reg
        .admin("HEAD", &format!("/v2/team/app/blobs/{digest}"), &[], b"")
        .await;
    assert_eq!(
        (r.status, r.header("content-length")),
        (StatusCode::OK, "6")
    );
    let missing = digest_of(b"missing");
    let r = reg
        .admin("GET", &format!("/v2/team/app/blobs/{missing}"), &[], b"")
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
    );

    // Manifests by tag and by digest; one naming a missing blob is refused.
    let (m, bytes) = reg.artifact("team/app", "1.0", b"\0asm-1").await;
    for reference in ["1.0", m.as_str()] {
        let r = reg
            .admin(
                "GET",
                &format!("/v2/team/app/manifests/{reference}"),
                &[],
                b"",
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, bytes);
        assert_eq!(r.header("docker-content-digest"), m);
        assert_eq!(
            r.header("content-type"),
            "application/vnd.oci.image.manifest.v1+json"
        );
    }
    let r = reg
        .admin("HEAD", "/v2/team/app/manifests/1.0", &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = reg
        .admin("GET", "/v2/team/app/manifests/2.0", &[], b"")
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );
    let bad = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"digest": missing, "size": 1}, "layers": []}),
    )
    .unwrap();
    let r = reg
        .admin("PUT", "/v2/team/app/manifests/bad", &[], &bad)
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN")
    );
    let r = reg
        .admin(
            "PUT",
            &format!("/v2/team/app/manifests/{missing}"),
            &[],
            &bytes,
        )
        .await;
    assert_eq!(r.error_code(), "DIGEST_INVALID");
    let r = reg.admin("GET", "/v2/Team/manifests/1.0", &[], b"").await;
    assert_eq!(r.error_code(), "NAME_INVALID");

    // Cross-repository mount of a stored blob.
    let r = reg
        .admin(
            "POST",
            &format!("/v2/other/blobs/uploads/?mount={digest}&from=team/app"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("location"), format!("/v2/other/blobs/{digest}"));
    let r = reg
        .admin(
            "POST",
            &format!("/v2/other/blobs/uploads/?mount={missing}&from=team/app"),
            &[],
            b"",
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "an unknown blob starts an upload instead"
    );
}

#[tokio::test]
async fn discovery_and_management_workflows() {
    let reg = Registry::new().await;
    let (m1, _) = reg.artifact("app", "1.0", b"\0asm-1").await;
    let (m2, _) = reg.artifact("app", "2.0", b"\0asm-2").await;
    reg.artifact("app", "3.0", b"\0asm-3").await;

    let r = reg.admin("GET", "/v2/app/tags/list", &[], b"").await;
    assert_eq!(
        r.json(),
        json!({"name": "app", "tags": ["1.0", "2.0", "3.0"]})
    );
    let r = reg.admin("GET", "/v2/app/tags/list?n=2", &[], b"").await;
    assert_eq!(r.json()["tags"], json!(["1.0", "2.0"]));
    assert!(
        r.header("link").contains("last=2.0"),
        "{}",
        r.header("link")
    );
    let r = reg
        .admin("GET", "/v2/app/tags/list?n=2&last=2.0", &[], b"")
        .await;
    assert_eq!(r.json()["tags"], json!(["3.0"]));
    let r = reg.admin("GET", "/v2/nothing/tags/list", &[], b"").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
    );
    let r = reg.admin("GET", "/v2/_catalog", &[], b"").await;
    assert_eq!(r.json()["repositories"], json!(["app"]));

    // Referrers: an artifact whose subject is 1.0's manifest.
    let config = reg.blob("app", b"{}").await;
    let signature = serde_json::to_vec(&json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
        "layers": [], "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m1, "size": 1}}))
    .unwrap();
    let sig = digest_of(&signature);
    let r = reg
        .admin("PUT", &format!("/v2/app/manifests/{sig}"), &[], &signature)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("oci-subject"), m1);
    let r = reg
        .admin("GET", &format!("/v2/app/referrers/{m1}"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let found = r.json()["manifests"].clone();
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found[0]["digest"], json!(sig));
    assert_eq!(
        found[0]["artifactType"],
        json!("application/vnd.example.signature")
    );
    let r = reg
        .admin(
            "GET",
            &format!("/v2/app/referrers/{m1}?artifactType=application/other"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.json()["manifests"], json!([]));
    assert_eq!(r.header("oci-filters-applied"), "artifactType");
    let r = reg
        .admin("GET", &format!("/v2/app/referrers/{m2}"), &[], b"")
        .await;
    assert_eq!(r.json()["manifests"], json!([]));

    // Management: delete a tag, a manifest by digest (its tags go with it), a blob.
    let r = reg.admin("DELETE", "/v2/app/manifests/3.0", &[], b"").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = reg.admin("GET", "/v2/app/manifests/3.0", &[], b"").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = reg
        .admin("DELETE", &format!("/v2/app/manifests/{m2}"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = reg.admin("GET", "/v2/app/tags/list", &[], b"").await;
    assert_eq!(r.json()["tags"], json!(["1.0"]));
    let r = reg
        .admin("DELETE", &format!("/v2/app/manifests/{m2}"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = reg
        .admin("DELETE", &format!("/v2/app/blobs/{config}"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = reg
        .admin("HEAD", &format!("/v2/app/blobs/{config}"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn anonymous_requests_are_challenged_nodes_pull_and_only_the_allowed_push() {
    let reg = Registry::new().await;
    reg.artifact("app", "1.0", b"\0asm").await;
    // No credentials: 401 with a challenge, so registry clients send theirs.
    let r = reg.send(None, "GET", "/v2/", &[], b"").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), "Basic realm=\"wharf\"");
    assert_eq!(r.error_code(), "UNAUTHORIZED");
    let r = reg.send(Some("wrong"), "GET", "/v2/", &[], b"").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Basic auth with a token as the password, as registry clients log in.
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("admin:{ADMIN_TOKEN}"));
    let r = reg
        .send(
            None,
            "GET",
            "/v2/app/manifests/1.0",
            &[("authorization", &format!("Basic {basic}"))],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // A node pulls, and may not push.
    reg.api.add_token("node-token", Identity::node("node-1"));
    let r = reg
        .send(Some("node-token"), "GET", "/v2/app/manifests/1.0", &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = reg
        .send(
            Some("node-token"),
            "POST",
            "/v2/app/blobs/uploads/",
            &[],
            b"",
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::FORBIDDEN, "DENIED")
    );
    // A user with no role may do neither.
    reg.api.add_token(
        "user-token",
        Identity {
            user: "jane".into(),
            groups: vec!["system:authenticated".into()],
        },
    );
    let r = reg
        .send(Some("user-token"), "GET", "/v2/app/manifests/1.0", &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("User \"jane\" cannot get path \"/v2/app/manifests/1.0\""),
        "{}",
        r.json()
    );
}
