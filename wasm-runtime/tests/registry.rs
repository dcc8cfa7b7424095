//! Registry pulls against a registry that asks for a bearer token: `/v2/` answers 401 with
//! a `WWW-Authenticate: Bearer realm=...` challenge, its token service hands a token only
//! to the right basic credentials, and manifests and blobs are served only with that
//! token. (Debian's registry in tests/images.rs covers basic auth; this covers the token
//! flow, which needs a token service that package does not ship.)

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use sha2::{Digest as _, Sha256};
use wharf_runtime::{PullOptions, PullPolicy, Registries, RegistryCredential, Runtime};

const BASIC: &str = "Basic YWxpY2U6czNjcmV0"; // alice:s3cret
const TOKEN: &str = "token-for-alice";

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The registry: `app:1.0` is a wasm artifact of `wasm`. Returns its address, the
/// manifest's digest (hex) and the token requests' query strings.
async fn bearer_registry(
    wasm: Bytes,
) -> (
    std::net::SocketAddr,
    String,
    Arc<Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = Bytes::from_static(b"{}");
    let desc = |mt: &str, b: &Bytes| {
        format!(
            r#"{{"mediaType":"{mt}","digest":"sha256:{}","size":{}}}"#,
            sha(b),
            b.len()
        )
    };
    let manifest = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{}]}}"#,
        desc("application/vnd.wasm.config.v0+json", &config),
        desc("application/wasm", &wasm)
    ));
    let manifest_hex = sha(&manifest);
    let token_queries = Arc::new(Mutex::new(Vec::new()));
    let (queries, hex) = (token_queries.clone(), manifest_hex.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (wasm, config, manifest, queries, hex) = (
                wasm.clone(),
                config.clone(),
                manifest.clone(),
                queries.clone(),
                hex.clone(),
            );
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let path = req.uri().path().to_string();
                        let query = req.uri().query().unwrap_or("").to_string();
                        let reply = |status: u16, body: Bytes, content_type: &str| {
                            let mut r = hyper::Response::builder()
                                .status(status)
                                .header("content-type", content_type);
                            if status == 401 {
                                r = r.header(
                                    "www-authenticate",
                                    format!(
                                        r#"Bearer realm="http://{addr}/token",service="fake-registry""#
                                    ),
                                );
                            }
                            r.body(Full::new(body)).expect("response")
                        };
                        let bearer = auth == format!("Bearer {TOKEN}");
                        let response = if path == "/token" {
                            queries.lock().expect("lock").push(query);
                            if auth == BASIC {
                                let body = format!(r#"{{"token":"{TOKEN}"}}"#);
                                reply(200, Bytes::from(body), "application/json")
                            } else {
                                reply(403, Bytes::new(), "text/plain")
                            }
                        } else if !bearer {
                            let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
                            reply(401, Bytes::from_static(body.as_bytes()), "application/json")
                        } else if path == "/v2/app/manifests/1.0" {
                            let mut r = reply(
                                200,
                                manifest.clone(),
                                "application/vnd.oci.image.manifest.v1+json",
                            );
                            r.headers_mut().insert(
                                "docker-content-digest",
                                format!("sha256:{hex}").parse().expect("header"),
                            );
                            r
                        } else if path == format!("/v2/app/blobs/sha256:{}", sha(&wasm)) {
                            reply(200, wasm.clone(), "application/octet-stream")
                        } else if path == format!("/v2/app/blobs/sha256:{}", sha(&config)) {
                            reply(200, config.clone(), "application/octet-stream")
                        } else {
                            reply(404, Bytes::new(), "text/plain")
                        };
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, manifest_hex, token_queries, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_registry_is_pulled_from_with_the_pods_credentials() {
    build_samples().await;
    let wasm = Bytes::from(std::fs::read(batch_p1()).expect("sample"));
    let (addr, manifest, queries, server) = bearer_registry(wasm.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    let mut registries = Registries::default();
    registries
        .mirrors
        .insert(addr.to_string(), vec![format!("http://{addr}")]);
    config.registries = registries;
    let rt = Runtime::new(config).expect("runtime");
    let reference = format!("{addr}/app:1.0");

    // Without credentials: the token service refuses, the registry answers 401.
    let err = within(
        60,
        "anonymous pull",
        rt.pull_with(&reference, &PullOptions::default()),
    )
    .await
    .expect_err("anonymous pull of a private image");
    assert_eq!(err.reason(), "ErrImagePull");
    assert!(err.to_string().contains("401 Unauthorized"), "{err}");

    // With them: a token for `repository:app:pull`, then the image.
    let options = PullOptions {
        policy: PullPolicy::Always,
        credentials: vec![RegistryCredential {
            registry: addr.to_string(),
            username: "alice".into(),
            password: "s3cret".into(),
        }],
    };
    let pulled = within(300, "pull with a token", rt.pull_with(&reference, &options))
        .await
        .unwrap_or_else(|e| panic!("pull: {e}"));
    assert_eq!(pulled.image_id, format!("{addr}/app@sha256:{manifest}"));
    assert_eq!(pulled.size, wasm.len() as u64);
    assert!(pulled.fetched);
    let asked = queries.lock().expect("lock").clone();
    assert!(
        asked
            .iter()
            .any(|q| q.contains("scope=repository%3Aapp%3Apull")
                && q.contains("service=fake-registry")),
        "{asked:?}"
    );
    server.abort();
    rt.shutdown(std::time::Duration::from_secs(5)).await;
}

/// Image garbage collection: with thresholds that put any disk over the line, the image
/// no pod names is removed (held image, compiled artifact, manifest and layer blobs, tag
/// record) and the one a pod names is kept; pulling the removed one again downloads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_gc_removes_an_unused_image_and_keeps_a_used_one() {
    build_samples().await;
    let wasm = Bytes::from(std::fs::read(batch_p1()).expect("sample"));
    let (addr, manifest, _queries, server) = bearer_registry(wasm.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    let mut registries = Registries::default();
    registries
        .mirrors
        .insert(addr.to_string(), vec![format!("http://{addr}")]);
    config.registries = registries;
    let rt = Runtime::new(config).expect("runtime");
    let options = PullOptions {
        policy: PullPolicy::IfNotPresent,
        credentials: vec![RegistryCredential {
            registry: addr.to_string(),
            username: "alice".into(),
            password: "s3cret".into(),
        }],
    };
    let unused = format!("{addr}/app:1.0");
    let used = ticker();
    within(
        300,
        "pull the registry image",
        rt.pull_with(&unused, &options),
    )
    .await
    .unwrap_or_else(|e| panic!("pull: {e}"));
    within(300, "pull the file image", rt.pull(&used))
        .await
        .unwrap_or_else(|e| panic!("pull: {e}"));
    let blob = |hex: &str| dir.path().join("blobs/sha256").join(hex);
    assert!(blob(&manifest).is_file() && blob(&sha(&wasm)).is_file());
    let artifacts = || {
        std::fs::read_dir(dir.path().join("compiled"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .filter(|f| f.file_name().to_string_lossy().ends_with(".cwasm"))
            .count()
    };
    assert_eq!(artifacts(), 2);

    // Default thresholds (85/80) on a disk that is not that full, or a minimum age not
    // reached yet: nothing goes.
    let young = wharf_runtime::gc::ImageGcPolicy {
        high_threshold_percent: 1,
        low_threshold_percent: 0,
        ..Default::default()
    };
    let report = within(30, "gc", rt.collect_images(&young, |n| n == used))
        .await
        .expect("gc");
    assert!(report.removed.is_empty(), "{report:?}");

    let now = wharf_runtime::gc::ImageGcPolicy {
        minimum_age: std::time::Duration::ZERO,
        ..young
    };
    let report = within(30, "gc", rt.collect_images(&now, |n| n == used))
        .await
        .expect("gc");
    assert_eq!(report.removed.len(), 1, "{report:?}");
    assert!(report.removed[0].contains(&unused), "{report:?}");
    assert!(report.bytes_freed >= wasm.len() as u64, "{report:?}");
    let held: Vec<String> = rt
        .images()
        .iter()
        .map(|i| i.reference().to_owned())
        .collect();
    assert_eq!(held, std::slice::from_ref(&used));
    assert!(!blob(&manifest).exists(), "the manifest blob is deleted");
    assert!(!blob(&sha(&wasm)).exists(), "the layer blob is deleted");
    assert_eq!(artifacts(), 1, "the compiled artifact is deleted");
    assert!(
        std::fs::read_dir(dir.path().join("refs"))
            .expect("refs")
            .next()
            .is_none(),
        "the tag record is deleted"
    );
    // The used image is still stored and still pulls without a fetch.
    let again = within(
        60,
        "pull the kept image",
        rt.pull_with(&used, &PullOptions::default()),
    )
    .await
    .expect("kept");
    assert!(!again.fetched);
    // The removed one comes back from the registry.
    let back = within(
        300,
        "pull the removed image",
        rt.pull_with(&unused, &options),
    )
    .await
    .unwrap_or_else(|e| panic!("pull: {e}"));
    assert!(back.fetched, "pulled again from the registry");
    // Now the registry image is the used one: its manifest and layer stay, the file
    // image goes.
    let report = within(30, "gc", rt.collect_images(&now, |n| n == unused))
        .await
        .expect("gc");
    assert_eq!(report.removed.len(), 1, "{report:?}");
    assert!(report.removed[0].contains(&used), "{report:?}");
    assert!(blob(&manifest).is_file(), "the used image's manifest stays");
    assert!(blob(&sha(&wasm)).is_file(), "the used image's layer stays");
    let again = within(60, "pull the kept image", rt.pull_with(&unused, &options))
        .await
        .expect("kept");
    assert!(!again.fetched, "the kept image is pulled from the store");
    server.abort();
    rt.shutdown(std::time::Duration::from_secs(5)).await;
}
