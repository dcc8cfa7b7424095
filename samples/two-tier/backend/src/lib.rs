//! backend: the lower tier of the two-tier sample, a `wasi:http/incoming-handler`
//! component that answers every request with who it is (pod and node names, from the
//! downward API) and the path it was asked for. Behind the `backend` Service, the answer
//! shows which replica the proxy picked.

use std::io::Write as _;

use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

wasip2::http::proxy::export!(Backend);

struct Backend;

impl wasip2::exports::http::incoming_handler::Guest for Backend {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let pod = std::env::var("POD_NAME").unwrap_or_else(|_| "unknown".to_string());
        let node = std::env::var("NODE_NAME").unwrap_or_else(|_| "unknown".to_string());
        let text = format!("backend pod {pod} on node {node}, path {path}\n");
        println!("{path} -> 200");
        let headers = Fields::new();
        // Only a forbidden or malformed header name can fail; this one is neither.
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
