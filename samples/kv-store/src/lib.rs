//! kv-store: a tiny key-value store, as a `wasi:http/incoming-handler` component that
//! keeps its data in the volume mounted at `/data` (a StatefulSet's claim).
//!
//! - `PUT /kv/KEY` with a body stores the body under `KEY` (a file `/data/kv/KEY`);
//! - `GET /kv/KEY` answers it, or 404;
//! - `GET /` answers the pod's name (`POD_NAME`, from the downward API) and the keys it
//!   holds, so a test can tell replicas apart and see what survived a restart;
//! - `GET /healthz` answers `ok` once `/data` is writable (the readiness probe).
//!
//! Each request runs in a fresh instance: all state is in the volume, which is what
//! makes the data outlive the pod.

use std::io::{Read as _, Write as _};

use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Kv);

struct Kv;

const DIR: &str = "/data/kv";

impl wasip2::exports::http::incoming_handler::Guest for Kv {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let method = request.method();
        let (status, text) = match (method, path.as_str()) {
            (Method::Get, "/healthz") => match std::fs::create_dir_all(DIR) {
                Ok(()) => (200, "ok\n".to_string()),
                Err(e) => (503, format!("{DIR}: {e}\n")),
            },
            (Method::Get, "/") => (200, summary()),
            (m, p) if p.starts_with("/kv/") => {
                let key = &p["/kv/".len()..];
                if key.is_empty() || key.contains('/') || key.starts_with('.') {
                    (400, format!("bad key {key:?}\n"))
                } else {
                    match m {
                        Method::Get => match std::fs::read_to_string(format!("{DIR}/{key}")) {
                            Ok(v) => (200, v),
                            Err(_) => (404, format!("no key {key:?}\n")),
                        },
                        Method::Put | Method::Post => put(key, request),
                        _ => (405, "use GET or PUT\n".to_string()),
                    }
                }
            }
            _ => (404, "try GET /, GET /kv/KEY, PUT /kv/KEY\n".to_string()),
        };
        println!("{path} -> {status}");
        respond(response_out, status, &text);
    }
}

fn put(key: &str, request: IncomingRequest) -> (u16, String) {
    let mut value = Vec::new();
    if let Ok(body) = request.consume()
        && let Ok(mut stream) = body.stream()
    {
        let _ = stream.read_to_end(&mut value);
    }
    let written = std::fs::create_dir_all(DIR)
        .and_then(|()| std::fs::write(format!("{DIR}/{key}"), &value));
    match written {
        Ok(()) => (200, format!("stored {key}\n")),
        Err(e) => (500, format!("cannot store {key}: {e}\n")),
    }
}

fn summary() -> String {
    let pod = std::env::var("POD_NAME").unwrap_or_else(|_| "unknown".to_string());
    let mut keys: Vec<String> = std::fs::read_dir(DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    format!("pod {pod}\nkeys: {}\n", keys.join(","))
}

fn respond(response_out: ResponseOutparam, status: u16, text: &str) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else { return };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(mut out) = body.write() {
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
    let _ = OutgoingBody::finish(body, None);
}
