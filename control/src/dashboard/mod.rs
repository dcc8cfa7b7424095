//! The web dashboard, served by the control plane at `/ui/`.
//!
//! Why it looks like this:
//!
//! - **Static files only, embedded in the binary.** The page is a handful of plain
//!   JavaScript modules and one stylesheet (`assets/`), compiled in with `include_str!`,
//!   so a cluster needs no internet, no CDN and no build step to show it, and the page
//!   always matches the API server it came from.
//! - **No authority of its own.** The assets need no token; every piece of data the page
//!   shows comes from the ordinary Kubernetes API, called by the browser with the user's
//!   own bearer token. So the dashboard sees exactly what RBAC lets that identity see,
//!   and there is no second authorization path to keep correct.
//! - **A strict Content-Security-Policy.** Only scripts, styles and fetches from this
//!   origin; no inline script or style, no frames, no plugins. A pod name or an Event
//!   message that looks like HTML can never run as code (the page also only ever sets
//!   text, never markup, from API data).
//! - **Cache by validation.** Assets are answered with a strong `ETag` (a hash of their
//!   bytes) and `Cache-Control: no-cache`: the browser keeps them and revalidates with
//!   `If-None-Match` (a 304 without a body), so an upgraded control plane is never shown
//!   with an old script.
//! - **Gzip, compressed once.** Text compresses about fourfold; each asset is gzipped
//!   the first time it is asked for and kept, and sent to clients that accept gzip (with
//!   its own ETag, and `Vary: Accept-Encoding`).

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// The policy every dashboard response carries.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; \
     manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Where the dashboard is served.
pub const PATH: &str = "/ui/";

/// One embedded file: its name under `/ui/`, media type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the dashboard. `index.html` is served for `/ui/` itself.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("assets/index.html"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/style.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("assets/favicon.svg"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_str!("assets/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_str!("assets/api.js"),
    },
    Asset {
        name: "yaml.js",
        content_type: JS,
        body: include_str!("assets/yaml.js"),
    },
    Asset {
        name: "views.js",
        content_type: JS,
        body: include_str!("assets/views.js"),
    },
];

/// One asset as it is sent: identity or gzip, with its strong ETag.
struct Representation {
    body: bytes::Bytes,
    etag: HeaderValue,
}

/// An asset as is, and gzipped unless compressing failed.
struct Encoded {
    identity: Representation,
    gzip: Option<Representation>,
}

/// Each asset of [`ASSETS`] (same order) as is and gzipped, computed once.
static ENCODED: LazyLock<Vec<Encoded>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.body.as_bytes());
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            let etag = |suffix: &str| {
                HeaderValue::from_str(&format!("\"{hex}{suffix}\""))
                    .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
            };
            Encoded {
                identity: Representation {
                    body: bytes::Bytes::from_static(asset.body.as_bytes()),
                    etag: etag(""),
                },
                gzip: gzip(asset.body.as_bytes()).map(|body| Representation {
                    body: body.into(),
                    etag: etag("-gzip"),
                }),
            }
        })
        .collect()
});

/// `data` gzipped (writing into a `Vec` does not fail; if it did, the asset is sent as
/// is).
fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).and_then(|()| encoder.finish()).ok()
}

/// Whether the request's `Accept-Encoding` takes gzip (and does not refuse it with `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// The dashboard's routes; they need no authentication (see the module docs). Merged into
/// the API server's router by the control plane.
pub fn router() -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent(PATH) }))
        .route(PATH, get(index))
        .route("/ui/{file}", get(file))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

/// The answer for asset `name`: the file, a 304 when the client's copy is current, or a
/// plain 404.
fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some((index, asset)) = ASSETS.iter().enumerate().find(|(_, a)| a.name == name) else {
        return with_security_headers(
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "not found\n",
            )
                .into_response(),
        );
    };
    let Some(encoded) = ENCODED.get(index) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let (representation, gzipped) = match &encoded.gzip {
        Some(gzip) if accepts_gzip(headers) => (gzip, true),
        _ => (&encoded.identity, false),
    };
    let etag = &representation.etag;
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().as_bytes() == etag.as_bytes() || t.trim() == "*")
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = (
            [(header::CONTENT_TYPE, asset.content_type)],
            representation.body.clone(),
        )
            .into_response();
        if gzipped {
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        r
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag.clone());
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_security_headers(response)
}

fn with_security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(tag) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, tag);
        }
        router()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn text(response: Response) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn ui_serves_the_page_with_a_strict_policy_and_no_token() {
        let response = get("/ui/", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        let html = text(response).await;
        assert!(html.contains("<script type=\"module\" src=\"app.js\">"));
        // No inline script or style: the policy would refuse them.
        assert!(!html.contains("<script>") && !html.contains("style="));
    }

    #[tokio::test]
    async fn every_asset_the_page_names_is_served_with_its_type() {
        // What index.html and the modules reference must exist, with the right type.
        let html = text(get("/ui/", None).await).await;
        for (name, kind) in [
            ("app.js", JS),
            ("style.css", "text/css; charset=utf-8"),
            ("favicon.svg", "image/svg+xml"),
        ] {
            assert!(html.contains(name), "index.html does not name {name}");
            let response = get(&format!("/ui/{name}"), None).await;
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], kind, "{name}");
        }
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            for line in asset.body.lines().filter(|l| l.starts_with("import ")) {
                let module = line
                    .split(['"', '\''])
                    .nth(1)
                    .and_then(|m| m.strip_prefix("./"))
                    .unwrap_or_else(|| panic!("{}: import not relative: {line}", asset.name));
                let response = get(&format!("/ui/{module}"), None).await;
                assert_eq!(response.status(), StatusCode::OK, "{module}");
                assert_eq!(response.headers()[header::CONTENT_TYPE], JS, "{module}");
            }
        }
        assert_eq!(
            get("/ui/nothing.js", None).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(get("/ui", None).await.headers()[header::LOCATION], "/ui/");
    }

    #[tokio::test]
    async fn gzip_is_sent_to_clients_that_accept_it_with_its_own_etag() {
        let response = router()
            .oneshot(
                Request::get("/ui/views.js")
                    .header(header::ACCEPT_ENCODING, "gzip, deflate, br")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(response.headers()[header::VARY], "Accept-Encoding");
        let gz_etag = response.headers()[header::ETAG].clone();
        let compressed = response.into_body().collect().await.unwrap().to_bytes();
        let mut plain = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(&compressed[..]),
            &mut plain,
        )
        .unwrap();
        let views = ASSETS.iter().find(|a| a.name == "views.js").unwrap();
        assert_eq!(plain, views.body);
        assert!(compressed.len() * 2 < plain.len(), "{}", compressed.len());

        let identity = get("/ui/views.js", None).await;
        assert!(identity.headers().get(header::CONTENT_ENCODING).is_none());
        assert_ne!(identity.headers()[header::ETAG], gz_etag);
        assert!(!accepts_gzip(&HeaderMap::from_iter([(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0, identity")
        )])));
    }

    #[tokio::test]
    async fn a_current_copy_is_revalidated_with_304() {
        let first = get("/ui/app.js", None).await;
        let etag = first.headers()[header::ETAG].to_str().unwrap().to_string();
        let again = get("/ui/app.js", Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(text(again).await.is_empty());
        let stale = get("/ui/app.js", Some("\"other\"")).await;
        assert_eq!(stale.status(), StatusCode::OK);
    }
}
