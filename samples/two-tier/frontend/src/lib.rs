//! frontend: the upper tier of the two-tier sample, a `wasi:http/incoming-handler`
//! component that calls the `backend` Service by name and answers with what it got, plus
//! its own pod name.
//!
//! - `GET /` calls `http://$BACKEND/` (`BACKEND` defaults to `backend`: the Service in the
//!   pod's own namespace, on the default port 80).
//! - `GET /via/<host[:port]>/<path>` calls `http://<host[:port]>/<path>` instead, to try the
//!   other forms of a Service name (`backend.NS`, `backend.NS.svc.cluster.local`, the
//!   cluster IP) or a host that is not a Service (denied unless the pod's
//!   `wharf.dev/allow-hosts` lists it).
//!
//! The node resolves Service names for its pods (no DNS client in the guest) and sends the
//! request through its proxy, which balances it over the backend's ready pods.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

wasip2::http::proxy::export!(Frontend);

struct Frontend;

impl wasip2::exports::http::incoming_handler::Guest for Frontend {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let pod = std::env::var("POD_NAME").unwrap_or_else(|_| "unknown".to_string());
        let (authority, upstream_path) = match path.strip_prefix("/via/") {
            Some(rest) => match rest.split_once('/') {
                Some((authority, p)) => (authority.to_string(), format!("/{p}")),
                None => (rest.to_string(), "/".to_string()),
            },
            None => (
                std::env::var("BACKEND").unwrap_or_else(|_| "backend".to_string()),
                "/".to_string(),
            ),
        };
        let (status, text) = match get(&authority, &upstream_path) {
            Ok((code, body)) => (
                200,
                format!("frontend pod {pod}\nhttp://{authority}{upstream_path} answered {code}: {body}"),
            ),
            Err(e) => (
                502,
                format!("frontend pod {pod}\nhttp://{authority}{upstream_path} failed: {e}\n"),
            ),
        };
        println!("{path} -> {status}");
        respond(response_out, status, &text);
    }
}

fn respond(response_out: ResponseOutparam, status: u16, text: &str) {
    let headers = Fields::new();
    // Only a forbidden or malformed header name can fail; this one is neither.
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

/// `GET http://<authority><path>` through wasi:http's outgoing handler: status and body.
fn get(authority: &str, path: &str) -> Result<(u16, String), String> {
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&Scheme::Http))
        .map_err(|()| "bad scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|()| "bad authority")?;
    request
        .set_path_with_query(Some(path))
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
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
