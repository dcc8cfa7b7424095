//! The cluster registry: the OCI distribution API (`/v2/...`) served by the control plane
//! on the API server's address, so every cluster has a registry with nothing to set up.
//!
//! Why in the control plane: images are how wasm reaches nodes, and a laptop cluster
//! should not need a second server, a second certificate or a second set of credentials.
//! The registry speaks TLS with the API server's certificate (from the cluster CA) and
//! authenticates with the cluster's credentials: a bearer token, or basic auth whose
//! password is a token (what `docker login`, skopeo and ORAS send), the user name being
//! ignored. Every request is authorized as a non-resource URL (`get` for pulls, `post`,
//! `put`, `patch`, `delete` for writes), so RBAC decides who pushes: the admin may do
//! everything, nodes may pull (the `system:wharf:registry-puller` role), anonymous pulls
//! are refused.
//!
//! What it serves (the distribution spec's pull, push, content discovery and content
//! management workflows): manifests by tag or digest (GET/HEAD/PUT/DELETE), blobs
//! (GET/HEAD/DELETE), uploads (monolithic POST `?digest=`, POST then PUT, chunked PATCH
//! with `Content-Range` checks, cross-repository mounts), tag lists with `n`/`last`
//! pagination, the referrers API, and `/v2/_catalog`. Storage is files in the serving
//! member's data dir (see [`storage`]); with several control plane members, put
//! `DATA_DIR/registry` on storage they share, or push to the member nodes pull from.
//!
//! Nodes name it as `registry.wharf.local/REPO:TAG` ([`RESERVED_HOST`]): each node maps
//! that host to its control plane, so the same manifest runs on any cluster.

pub mod storage;
#[cfg(test)]
mod workflows;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures::StreamExt;
use std::sync::Arc;

use crate::apiserver::AppState;
use crate::apiserver::auth::{self, Identity};
use crate::apiserver::authz;
use crate::apiserver::rbac;
use storage::{Storage, sha256_hex, valid_repository, valid_tag};

/// The host name manifests use for the cluster registry; nodes map it to their control
/// plane.
pub const RESERVED_HOST: &str = "registry.wharf.local";
/// Largest manifest accepted (the distribution spec suggests at least 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Clone)]
struct OciState {
    api: AppState,
    storage: Arc<Storage>,
}

/// The `/v2` routes over the registry's files in `root`.
pub fn router(api: AppState, root: std::path::PathBuf) -> Router {
    let state = OciState {
        api,
        storage: Arc::new(Storage::new(root)),
    };
    Router::new()
        .route("/v2", any(handle))
        .route("/v2/", any(handle))
        .route("/v2/{*rest}", any(handle))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .with_state(state)
}

/// What a `/v2/...` path names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Base,
    Catalog,
    Tags(String),
    Manifest(String, String),
    Blob(String, String),
    NewUpload(String),
    Upload(String, String),
    Referrers(String, String),
}

/// Parses the path after `/v2/`. The repository may hold slashes, so each form is found
/// by its last marker.
fn parse(rest: &str) -> Option<Route> {
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        return Some(Route::Base);
    }
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(repo.to_owned()));
    }
    if let Some(repo) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::NewUpload(repo.to_owned()));
    }
    if let Some((repo, id)) = rest.rsplit_once("/blobs/uploads/") {
        return Some(Route::Upload(repo.to_owned(), id.to_owned()));
    }
    for (marker, make) in [
        (
            "/manifests/",
            Route::Manifest as fn(String, String) -> Route,
        ),
        ("/blobs/", Route::Blob),
        ("/referrers/", Route::Referrers),
    ] {
        if let Some((repo, reference)) = rest.rsplit_once(marker)
            && !reference.is_empty()
            && !reference.contains('/')
        {
            return Some(make(repo.to_owned(), reference.to_owned()));
        }
    }
    None
}

/// An error in the distribution spec's shape: `{"errors":[{"code","message","detail"}]}`.
#[derive(Debug)]
struct OciError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl OciError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        OciError {
            status,
            code,
            message: message.into(),
        }
    }

    fn io(e: std::io::Error) -> Self {
        tracing::warn!("cluster registry storage: {e}");
        OciError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            "storage error",
        )
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"errors": [
            {"code": self.code, "message": self.message, "detail": null}]});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"wharf\""),
            );
        }
        response
    }
}

type Result<T> = std::result::Result<T, OciError>;

/// The token a request carries: `Bearer T`, or `Basic` with T as the password.
fn credential(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = auth::bearer_token(value) {
        return Some(token.to_owned());
    }
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

/// Authenticates with the cluster's credentials and authorizes the path as a non-resource
/// URL; 401 with a `WWW-Authenticate` challenge (so registry clients send their
/// credentials), 403 `DENIED` when RBAC says no.
async fn authenticate(
    State(state): State<OciState>,
    mut req: Request,
    next: axum::middleware::Next,
) -> Response {
    // A client certificate from the cluster CA, else a token.
    let from_cert = req
        .extensions()
        .get::<auth::ClientCert>()
        .map(|c| c.0.clone());
    let identity = match (from_cert, credential(req.headers())) {
        (Some(identity), _) => identity,
        (None, Some(token)) => match auth::authenticate(&state.api, &token).await {
            Ok(identity) => identity,
            Err(_) => {
                return OciError::new(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "invalid credentials",
                )
                .into_response();
            }
        },
        (None, None) => {
            return OciError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required",
            )
            .into_response();
        }
    };
    let verb = match *req.method() {
        Method::GET | Method::HEAD => "get".to_owned(),
        ref m => m.as_str().to_ascii_lowercase(),
    };
    let path = req.uri().path().to_owned();
    let attrs = rbac::Attributes {
        user: &identity,
        verb: &verb,
        request: rbac::Request::NonResource { path: &path },
    };
    match authz::allowed(&state.api, &attrs).await {
        Ok(true) => {
            req.extensions_mut().insert::<Identity>(identity.clone());
            // Also on the answer, for the audit log.
            let mut response = next.run(req).await;
            response.extensions_mut().insert(identity);
            response
        }
        Ok(false) => {
            let mut response = OciError::new(
                StatusCode::FORBIDDEN,
                "DENIED",
                format!("User \"{}\" cannot {verb} path \"{path}\"", identity.user),
            )
            .into_response();
            response.extensions_mut().insert(identity);
            response
        }
        Err(e) => e.into_response(),
    }
}

async fn handle(State(state): State<OciState>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/v2").unwrap_or("");
    let Some(route) = parse(rest) else {
        return OciError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no such endpoint: {path}"),
        )
        .into_response();
    };
    match serve(state, route, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn check_repo(repo: &str) -> Result<()> {
    if valid_repository(repo) {
        Ok(())
    } else {
        Err(OciError::new(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            format!("invalid repository name {repo:?}"),
        ))
    }
}

fn check_digest(digest: &str) -> Result<()> {
    if sha256_hex(digest).is_some() {
        Ok(())
    } else {
        Err(OciError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("invalid digest {digest:?} (only sha256 is supported)"),
        ))
    }
}

/// Runs blocking storage work off the async workers.
async fn blocking<T: Send + 'static>(
    storage: &Arc<Storage>,
    f: impl FnOnce(&Storage) -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let storage = storage.clone();
    tokio::task::spawn_blocking(move || f(&storage))
        .await
        .map_err(|e| OciError::io(std::io::Error::other(e)))?
        .map_err(OciError::io)
}

fn query(req: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn response(status: StatusCode, headers: &[(&str, String)], body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    for (k, v) in headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            r.headers_mut().insert(name, value);
        }
    }
    r.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

fn method_not_allowed() -> OciError {
    OciError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
        "the operation is unsupported",
    )
}

async fn serve(state: OciState, route: Route, req: Request) -> Result<Response> {
    let storage = state.storage.clone();
    let method = req.method().clone();
    match route {
        Route::Base => Ok(response(
            StatusCode::OK,
            &[("content-type", "application/json".into())],
            Body::from("{}"),
        )),
        Route::Catalog => {
            let repos = blocking(&storage, |s| Ok(s.repositories())).await?;
            let q = query(&req);
            let (page, link) = paginate(repos, &q, "/v2/_catalog");
            let body = serde_json::json!({ "repositories": page });
            Ok(json_response(body, link))
        }
        Route::Tags(repo) => {
            check_repo(&repo)?;
            let r = repo.clone();
            let tags = blocking(&storage, move |s| Ok(s.tags(&r)))
                .await?
                .ok_or_else(|| {
                    OciError::new(
                        StatusCode::NOT_FOUND,
                        "NAME_UNKNOWN",
                        format!("repository {repo:?} not known to registry"),
                    )
                })?;
            let q = query(&req);
            let (page, link) = paginate(tags, &q, &format!("/v2/{repo}/tags/list"));
            Ok(json_response(
                serde_json::json!({"name": repo, "tags": page}),
                link,
            ))
        }
        Route::Manifest(repo, reference) => {
            check_repo(&repo)?;
            match method {
                Method::GET | Method::HEAD => {
                    get_manifest(&storage, repo, reference, method == Method::HEAD).await
                }
                Method::PUT => put_manifest(&storage, repo, reference, req).await,
                Method::DELETE => delete_manifest(&storage, repo, reference).await,
                _ => Err(method_not_allowed()),
            }
        }
        Route::Blob(repo, digest) => {
            check_repo(&repo)?;
            check_digest(&digest)?;
            match method {
                Method::GET | Method::HEAD => {
                    get_blob(&storage, digest, method == Method::HEAD).await
                }
                Method::DELETE => {
                    let d = digest.clone();
                    if blocking(&storage, move |s| s.delete_blob(&d)).await? {
                        Ok(response(StatusCode::ACCEPTED, &[], Body::empty()))
                    } else {
                        Err(blob_unknown(&digest))
                    }
                }
                _ => Err(method_not_allowed()),
            }
        }
        Route::NewUpload(repo) => {
            check_repo(&repo)?;
            if method != Method::POST {
                return Err(method_not_allowed());
            }
            new_upload(&storage, repo, req).await
        }
        Route::Upload(repo, id) => {
            check_repo(&repo)?;
            let i = id.clone();
            let Some(size) = blocking(&storage, move |s| Ok(s.upload_size(&i))).await? else {
                return Err(OciError::new(
                    StatusCode::NOT_FOUND,
                    "BLOB_UPLOAD_UNKNOWN",
                    format!("upload {id:?} not found"),
                ));
            };
            match method {
                Method::GET => Ok(upload_status(StatusCode::NO_CONTENT, &repo, &id, size)),
                Method::PATCH => patch_upload(&storage, repo, id, size, req).await,
                Method::PUT => put_upload(&storage, repo, id, size, req).await,
                Method::DELETE => {
                    blocking(&storage, move |s| s.cancel_upload(&id)).await?;
                    Ok(response(StatusCode::NO_CONTENT, &[], Body::empty()))
                }
                _ => Err(method_not_allowed()),
            }
        }
        Route::Referrers(repo, digest) => {
            check_repo(&repo)?;
            check_digest(&digest)?;
            if method != Method::GET {
                return Err(method_not_allowed());
            }
            let q = query(&req);
            let filter = param(&q, "artifactType").map(str::to_owned);
            referrers(&storage, repo, digest, filter).await
        }
    }
}

fn json_response(body: serde_json::Value, link: Option<String>) -> Response {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(link) = link {
        headers.push(("link", link));
    }
    response(StatusCode::OK, &headers, Body::from(body.to_string()))
}

/// `n` and `last` pagination of a sorted list, with the `Link` header to the next page.
fn paginate(
    items: Vec<String>,
    q: &[(String, String)],
    path: &str,
) -> (Vec<String>, Option<String>) {
    let after: Vec<String> = match param(q, "last") {
        Some(last) => items.into_iter().filter(|t| t.as_str() > last).collect(),
        None => items,
    };
    match param(q, "n").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) if n < after.len() => {
            let page: Vec<String> = after.into_iter().take(n).collect();
            let last = page.last().cloned().unwrap_or_default();
            let link = format!("<{path}?n={n}&last={last}>; rel=\"next\"");
            (page, Some(link))
        }
        _ => (after, None),
    }
}

fn blob_unknown(digest: &str) -> OciError {
    OciError::new(
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
        format!("blob unknown to registry: {digest}"),
    )
}

fn manifest_unknown(repo: &str, reference: &str) -> OciError {
    OciError::new(
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        format!("manifest unknown: {repo}:{reference}"),
    )
}

async fn get_blob(storage: &Arc<Storage>, digest: String, head: bool) -> Result<Response> {
    let d = digest.clone();
    let (path, size) = blocking(storage, move |s| Ok(s.blob(&d)))
        .await?
        .ok_or_else(|| blob_unknown(&digest))?;
    let headers = [
        ("content-type", "application/octet-stream".to_owned()),
        ("content-length", size.to_string()),
        ("docker-content-digest", digest),
    ];
    if head {
        return Ok(response(StatusCode::OK, &headers, Body::empty()));
    }
    let file = tokio::fs::File::open(&path).await.map_err(OciError::io)?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok(response(StatusCode::OK, &headers, body))
}

async fn get_manifest(
    storage: &Arc<Storage>,
    repo: String,
    reference: String,
    head: bool,
) -> Result<Response> {
    let (r, f) = (repo.clone(), reference.clone());
    let (digest, media_type) = blocking(storage, move |s| Ok(s.resolve(&r, &f)))
        .await?
        .ok_or_else(|| manifest_unknown(&repo, &reference))?;
    let d = digest.clone();
    let (path, size) = blocking(storage, move |s| Ok(s.blob(&d)))
        .await?
        .ok_or_else(|| manifest_unknown(&repo, &reference))?;
    let headers = [
        ("content-type", media_type),
        ("content-length", size.to_string()),
        ("docker-content-digest", digest),
    ];
    if head {
        return Ok(response(StatusCode::OK, &headers, Body::empty()));
    }
    let bytes = tokio::fs::read(&path).await.map_err(OciError::io)?;
    Ok(response(StatusCode::OK, &headers, Body::from(bytes)))
}

/// Reads a request body into memory, refusing more than `limit` bytes.
async fn read_body(req: Request, limit: usize, too_large: &'static str) -> Result<bytes::Bytes> {
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            OciError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                too_large,
                format!("the body is larger than {limit} bytes"),
            )
        })
}

async fn put_manifest(
    storage: &Arc<Storage>,
    repo: String,
    reference: String,
    req: Request,
) -> Result<Response> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = read_body(req, MAX_MANIFEST_BYTES, "MANIFEST_INVALID").await?;
    let invalid = |m: String| OciError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", m);
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("the manifest is not JSON: {e}")))?;
    let media_type = json
        .get("mediaType")
        .and_then(|m| m.as_str())
        .map(str::to_owned)
        .or(content_type)
        .ok_or_else(|| {
            invalid("the manifest has no mediaType and the request no Content-Type".into())
        })?;
    let digest = storage::digest_of(&bytes);
    let tag = if sha256_hex(&reference).is_some() {
        if reference != digest {
            return Err(OciError::new(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!("the manifest's digest is {digest}, not {reference}"),
            ));
        }
        None
    } else if valid_tag(&reference) {
        Some(reference.clone())
    } else {
        return Err(OciError::new(
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
            format!("invalid tag {reference:?}"),
        ));
    };
    // Every blob it names must be stored (manifests an index names, in this repository).
    let mut missing = Vec::new();
    let descriptors = |key: &str| {
        json.get(key)
            .and_then(|l| l.as_array())
            .cloned()
            .unwrap_or_default()
    };
    let blobs: Vec<String> = json
        .get("config")
        .into_iter()
        .cloned()
        .chain(descriptors("layers"))
        .chain(descriptors("manifests"))
        .filter_map(|d| d.get("digest").and_then(|d| d.as_str()).map(str::to_owned))
        .collect();
    for d in &blobs {
        let (d2, r) = (d.clone(), repo.clone());
        let present = blocking(storage, move |s| {
            Ok(s.blob(&d2).is_some() || s.resolve(&r, &d2).is_some())
        })
        .await?;
        if !present {
            missing.push(d.clone());
        }
    }
    if !missing.is_empty() {
        return Err(OciError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_BLOB_UNKNOWN",
            format!("blob unknown to registry: {}", missing.join(", ")),
        ));
    }
    let subject = json
        .get("subject")
        .and_then(|s| s.get("digest"))
        .and_then(|d| d.as_str())
        .map(str::to_owned);
    let (r, d, mt) = (repo.clone(), digest.clone(), media_type);
    blocking(storage, move |s| {
        s.put_blob(&bytes)?;
        s.put_manifest(&r, &d, &mt, tag.as_deref())
    })
    .await?;
    let mut headers = vec![
        ("location", format!("/v2/{repo}/manifests/{digest}")),
        ("docker-content-digest", digest),
    ];
    if let Some(subject) = subject {
        headers.push(("oci-subject", subject));
    }
    Ok(response(StatusCode::CREATED, &headers, Body::empty()))
}

async fn delete_manifest(
    storage: &Arc<Storage>,
    repo: String,
    reference: String,
) -> Result<Response> {
    let (r, f) = (repo.clone(), reference.clone());
    let deleted = if sha256_hex(&reference).is_some() {
        blocking(storage, move |s| s.delete_manifest(&r, &f)).await?
    } else {
        blocking(storage, move |s| s.delete_tag(&r, &f)).await?
    };
    if deleted {
        Ok(response(StatusCode::ACCEPTED, &[], Body::empty()))
    } else {
        Err(manifest_unknown(&repo, &reference))
    }
}

fn upload_status(status: StatusCode, repo: &str, id: &str, size: u64) -> Response {
    let range = format!("0-{}", size.saturating_sub(1));
    response(
        status,
        &[
            ("location", format!("/v2/{repo}/blobs/uploads/{id}")),
            ("range", range),
            ("docker-upload-uuid", id.to_owned()),
            ("content-length", "0".into()),
        ],
        Body::empty(),
    )
}

fn blob_created(repo: &str, digest: &str) -> Response {
    response(
        StatusCode::CREATED,
        &[
            ("location", format!("/v2/{repo}/blobs/{digest}")),
            ("docker-content-digest", digest.to_owned()),
            ("content-length", "0".into()),
        ],
        Body::empty(),
    )
}

async fn new_upload(storage: &Arc<Storage>, repo: String, req: Request) -> Result<Response> {
    let q = query(&req);
    // A cross-repository mount: blobs are stored once for every repository, so a blob
    // the registry holds is mounted at once.
    if let Some(mount) = param(&q, "mount") {
        check_digest(mount)?;
        let d = mount.to_owned();
        if blocking(storage, move |s| Ok(s.blob(&d).is_some())).await? {
            return Ok(blob_created(&repo, mount));
        }
    }
    let id = blocking(storage, |s| s.start_upload()).await?;
    // A monolithic upload: the whole blob in this request.
    if let Some(digest) = param(&q, "digest").map(str::to_owned) {
        check_digest(&digest)?;
        return finish(storage, &repo, id, digest, req.into_body()).await;
    }
    Ok(upload_status(StatusCode::ACCEPTED, &repo, &id, 0))
}

/// Streams a request body onto the end of an upload; returns the upload's new size.
async fn append(storage: &Arc<Storage>, id: &str, body: Body) -> Result<u64> {
    use tokio::io::AsyncWriteExt as _;
    let mut file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(storage.upload_path(id))
        .await
        .map_err(OciError::io)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            OciError::new(
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                format!("reading the body: {e}"),
            )
        })?;
        file.write_all(&chunk).await.map_err(OciError::io)?;
    }
    file.flush().await.map_err(OciError::io)?;
    Ok(file.metadata().await.map_err(OciError::io)?.len())
}

async fn patch_upload(
    storage: &Arc<Storage>,
    repo: String,
    id: String,
    size: u64,
    req: Request,
) -> Result<Response> {
    // A chunk must start where the upload ends (`Content-Range: START-END`).
    if let Some(range) = req
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        let start = range
            .split('-')
            .next()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if start != Some(size) {
            return Ok(response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                &[
                    ("location", format!("/v2/{repo}/blobs/uploads/{id}")),
                    ("range", format!("0-{}", size.saturating_sub(1))),
                ],
                Body::empty(),
            ));
        }
    }
    let size = append(storage, &id, req.into_body()).await?;
    Ok(upload_status(StatusCode::ACCEPTED, &repo, &id, size))
}

async fn put_upload(
    storage: &Arc<Storage>,
    repo: String,
    id: String,
    _size: u64,
    req: Request,
) -> Result<Response> {
    let q = query(&req);
    let Some(digest) = param(&q, "digest").map(str::to_owned) else {
        return Err(OciError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "the upload's last request names no digest",
        ));
    };
    check_digest(&digest)?;
    finish(storage, &repo, id, digest, req.into_body()).await
}

/// Appends the last bytes, checks the digest and stores the blob.
async fn finish(
    storage: &Arc<Storage>,
    repo: &str,
    id: String,
    digest: String,
    body: Body,
) -> Result<Response> {
    append(storage, &id, body).await?;
    let d = digest.clone();
    match blocking(storage, move |s| s.finish_upload(&id, &d)).await? {
        Ok(_) => Ok(blob_created(repo, &digest)),
        Err(actual) => Err(OciError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("the content's digest is {actual}, not {digest}"),
        )),
    }
}

async fn referrers(
    storage: &Arc<Storage>,
    repo: String,
    digest: String,
    filter: Option<String>,
) -> Result<Response> {
    let f = filter.clone();
    let manifests = blocking(storage, move |s| {
        let mut out = Vec::new();
        for m in s.manifests(&repo) {
            if s.subject(&m.digest).as_deref() != Some(digest.as_str()) {
                continue;
            }
            let Some(json) = s.manifest_json(&m.digest) else {
                continue;
            };
            let artifact_type = json
                .get("artifactType")
                .and_then(|a| a.as_str())
                .or_else(|| json.get("config")?.get("mediaType")?.as_str())
                .map(str::to_owned);
            if f.as_ref()
                .is_some_and(|f| artifact_type.as_deref() != Some(f.as_str()))
            {
                continue;
            }
            let mut d =
                serde_json::json!({"mediaType": m.media_type, "digest": m.digest, "size": m.size});
            if let Some(t) = artifact_type {
                d["artifactType"] = t.into();
            }
            if let Some(a) = json.get("annotations") {
                d["annotations"] = a.clone();
            }
            out.push(d);
        }
        Ok(out)
    })
    .await?;
    let body =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    let mut headers = vec![("content-type", OCI_INDEX.to_owned())];
    if filter.is_some() {
        headers.push(("oci-filters-applied", "artifactType".to_owned()));
    }
    Ok(response(
        StatusCode::OK,
        &headers,
        Body::from(body.to_string()),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_route() {
        let s = |x: &str| x.to_owned();
        assert_eq!(parse(""), Some(Route::Base));
        assert_eq!(parse("/"), Some(Route::Base));
        assert_eq!(parse("/_catalog"), Some(Route::Catalog));
        assert_eq!(
            parse("/team/app/tags/list"),
            Some(Route::Tags(s("team/app")))
        );
        assert_eq!(
            parse("/team/app/manifests/1.0"),
            Some(Route::Manifest(s("team/app"), s("1.0")))
        );
        assert_eq!(
            parse("/a/manifests/x/blobs/sha256:1"),
            Some(Route::Blob(s("a/manifests/x"), s("sha256:1")))
        );
        assert_eq!(parse("/a/blobs/uploads/"), Some(Route::NewUpload(s("a"))));
        assert_eq!(
            parse("/a/blobs/uploads/abc"),
            Some(Route::Upload(s("a"), s("abc")))
        );
        assert_eq!(
            parse("/a/referrers/sha256:1"),
            Some(Route::Referrers(s("a"), s("sha256:1")))
        );
        assert_eq!(parse("/a/other"), None);
    }

    #[test]
    fn credentials_are_a_bearer_token_or_a_basic_password() {
        use base64::Engine as _;
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(credential(&h).as_deref(), Some("abc"));
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:tok:en");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {basic}")).unwrap(),
        );
        assert_eq!(credential(&h).as_deref(), Some("tok:en"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!"));
        assert_eq!(credential(&h), None);
    }

    #[test]
    fn pages_of_tags_link_to_the_next() {
        let items: Vec<String> = ["a", "b", "c"].map(str::to_owned).to_vec();
        let q = |n: &str, last: Option<&str>| {
            let mut v = vec![("n".to_owned(), n.to_owned())];
            if let Some(l) = last {
                v.push(("last".into(), l.into()));
            }
            v
        };
        let (page, link) = paginate(items.clone(), &q("2", None), "/v2/r/tags/list");
        assert_eq!(page, ["a", "b"]);
        assert_eq!(link.unwrap(), "</v2/r/tags/list?n=2&last=b>; rel=\"next\"");
        let (page, link) = paginate(items, &q("2", Some("b")), "/v2/r/tags/list");
        assert_eq!(page, ["c"]);
        assert!(link.is_none());
    }
}
