//! hello-http: a `wasi:http/incoming-handler` component.
//!
//! The runtime serves it on the pod's address and runs one fresh instance per request, so
//! nothing in the instance's memory survives from one request to the next. It answers with
//! its pod and node names (from the `POD_NAME` / `NODE_NAME` environment variables, which
//! the manifests fill from the downward API) and a request counter. The counter lives in
//! `/data/counter` when a volume is mounted at `/data` (shared by all instances of the pod);
//! without one it can only count the current request, and the answer says so.
//!
//! `GET /sleep/<ms>` answers after `<ms>` milliseconds (used to test draining on stop).
//! `GET /fetch/<host:port>/<path>` makes an outgoing `GET http://<host:port>/<path>` and
//! answers with what came back, or with why it failed (used to test the egress policy: the
//! runtime denies outgoing requests unless the pod's network access allows them).
//!
//! `GET /healthz` answers 200 `ok`, or 503 `unhealthy` while the file `/data/unhealthy`
//! exists; `POST /sick` creates that file and `POST /well` removes it, so a test (or you,
//! with curl) can make the pod's probes fail and pass again. The flag lives in the volume
//! because each request runs in a fresh instance.

use std::io::Write as _;
use std::time::Duration;

use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

/// Where the shared counter lives when the pod mounts a volume at `/data`.
const COUNTER: &str = "/data/counter";
/// While this file exists, `/healthz` fails.
const UNHEALTHY: &str = "/data/unhealthy";

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        if let Some((status, text)) = health(&request.method(), &path) {
            // Probes ask every few seconds: only changes are worth a log line.
            if path != "/healthz" {
                println!("{path} -> {status}");
            }
            respond_with(response_out, status, &text);
            return;
        }
        if let Some(ms) = path
            .strip_prefix("/sleep/")
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if let Some(target) = path.strip_prefix("/fetch/") {
            let text = match fetch(target) {
                Ok(body) => body,
                Err(e) => format!("fetch failed: {e}\n"),
            };
            println!("{path} -> 200");
            respond(response_out, &text);
            return;
        }
        let pod = std::env::var("POD_NAME").unwrap_or_else(|_| "unknown".to_string());
        let node = std::env::var("NODE_NAME").unwrap_or_else(|_| "unknown".to_string());
        let count = match bump_counter() {
            Some(n) => format!("request #{n} (counted in {COUNTER})"),
            None => "request #1 of this instance (no volume at /data: every request runs \
                     in a fresh instance, so this counter is per request)"
                .to_string(),
        };
        let text = format!("hello from pod {pod} on node {node}\n{count}\npath: {path}\n");
        println!("{path} -> 200");
        respond(response_out, &text);
    }
}

/// `/healthz`, `/sick` and `/well`: the status and body, or `None` for other paths.
fn health(method: &Method, path: &str) -> Option<(u16, String)> {
    let post = matches!(method, Method::Post);
    let answer = match path {
        "/healthz" if std::path::Path::new(UNHEALTHY).exists() => (503, "unhealthy\n".into()),
        "/healthz" => (200, "ok\n".into()),
        "/sick" | "/well" if !post => (405, format!("use POST {path}\n")),
        "/sick" => match std::fs::write(UNHEALTHY, b"sick\n") {
            Ok(()) => (200, "sick: /healthz now fails\n".into()),
            Err(e) => (500, format!("cannot write {UNHEALTHY}: {e}\n")),
        },
        "/well" => match std::fs::remove_file(UNHEALTHY) {
            Ok(()) => (200, "well: /healthz passes again\n".into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (200, "well already\n".into()),
            Err(e) => (500, format!("cannot remove {UNHEALTHY}: {e}\n")),
        },
        _ => return None,
    };
    Some(answer)
}

/// Answers 200 with a text body.
fn respond(response_out: ResponseOutparam, text: &str) {
    respond_with(response_out, 200, text);
}

/// Answers `status` with a text body.
fn respond_with(response_out: ResponseOutparam, status: u16, text: &str) {
    let headers = Fields::new();
    // Setting a header can only fail for a forbidden or malformed name; neither applies.
    let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
    let response = OutgoingResponse::new(headers);
    // Only codes outside 100..=999 are refused; ours are fixed and valid.
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else { return };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(mut out) = body.write() {
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
    let _ = OutgoingBody::finish(body, None);
}

/// `GET http://<authority>/<path>` through wasi:http's outgoing handler.
fn fetch(target: &str) -> Result<String, String> {
    let (authority, path) = target.split_once('/').unwrap_or((target, ""));
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&Scheme::Http))
        .map_err(|()| "bad scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|()| "bad authority")?;
    request
        .set_path_with_query(Some(&format!("/{path}")))
        .map_err(|()| "bad path")?;
    let future =
        wasip2::http::outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(e))) => return Err(format!("{e:?}")),
        Some(Err(())) | None => return Err("no response".to_string()),
    };
    let status = response.status();
    let body = response.consume().map_err(|()| "no body")?;
    let mut stream = body.stream().map_err(|()| "no body stream")?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut bytes).map_err(|e| e.to_string())?;
    Ok(format!(
        "upstream status {status}\n{}",
        String::from_utf8_lossy(&bytes)
    ))
}

/// Increments the counter file if `/data` exists; `None` when there is no volume.
fn bump_counter() -> Option<u64> {
    if !std::path::Path::new("/data").is_dir() {
        return None;
    }
    let n = std::fs::read_to_string(COUNTER)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    std::fs::write(COUNTER, n.to_string()).ok()?;
    Some(n)
}
