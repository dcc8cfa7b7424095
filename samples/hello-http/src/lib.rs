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

use std::io::Write as _;
use std::time::Duration;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

/// Where the shared counter lives when the pod mounts a volume at `/data`.
const COUNTER: &str = "/data/counter";

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        if let Some(ms) = path
            .strip_prefix("/sleep/")
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            std::thread::sleep(Duration::from_millis(ms));
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

        let headers = Fields::new();
        // Setting a header can only fail for a forbidden or malformed name; neither applies.
        let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(mut out) = body.write() {
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
        let _ = OutgoingBody::finish(body, None);
    }
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
