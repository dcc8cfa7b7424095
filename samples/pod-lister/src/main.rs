//! pod-lister: a `wasi:cli` command (a wasm32-wasip2 component) that lists the pods of its
//! own namespace through the API server, as an in-cluster client does: with the
//! ServiceAccount token and namespace the node mounts at
//! `/var/run/secrets/kubernetes.io/serviceaccount/`, at `https://$KUBERNETES_SERVICE_HOST:
//! $KUBERNETES_SERVICE_PORT` (`kubernetes.default.svc:443`). The node verifies the server
//! with the cluster CA; the pod must allow the host (`wharf.dev/allow-hosts:
//! kubernetes.default.svc:443`).
//!
//! It prints the status the API answered, then one `pod NAME` line per pod, and exits 0;
//! on any other status it prints the API's message and exits 1. So what it can see is
//! exactly what its ServiceAccount may do: bound to `view` it lists, without a binding it
//! gets 403. `INTERVAL_SECONDS` repeats the listing forever at that interval instead.

use std::process::ExitCode;
use std::time::Duration;

use wasip2::http::types::{Fields, OutgoingRequest, Scheme};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn main() -> ExitCode {
    let interval: Option<u64> = std::env::var("INTERVAL_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    loop {
        let ok = list_once();
        match interval {
            Some(s) => std::thread::sleep(Duration::from_secs(s)),
            None if ok => return ExitCode::SUCCESS,
            None => return ExitCode::FAILURE,
        }
    }
}

/// One listing: prints what the API said; true when it answered 200.
fn list_once() -> bool {
    let read = |name: &str| {
        std::fs::read_to_string(format!("{SA_DIR}/{name}")).map(|s| s.trim().to_string())
    };
    // Read on every request: the node refreshes the token before it expires.
    let (token, namespace) = match (read("token"), read("namespace")) {
        (Ok(t), Ok(n)) => (t, n),
        (Err(e), _) | (_, Err(e)) => {
            println!("no ServiceAccount token mounted in {SA_DIR}: {e}");
            return false;
        }
    };
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .unwrap_or_else(|_| "kubernetes.default.svc".to_string());
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".to_string());
    let authority = format!("{host}:{port}");
    let path = format!("/api/v1/namespaces/{namespace}/pods");
    match get(&authority, &path, &token) {
        Ok((status, body)) => {
            println!("GET https://{authority}{path}: {status}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if status != 200 {
                println!("message: {}", json["message"].as_str().unwrap_or(&body));
                return false;
            }
            for pod in json["items"].as_array().into_iter().flatten() {
                let name = pod["metadata"]["name"].as_str().unwrap_or("?");
                let phase = pod["status"]["phase"].as_str().unwrap_or("Unknown");
                println!("pod {name} {phase}");
            }
            true
        }
        Err(e) => {
            println!("GET https://{authority}{path} failed: {e}");
            false
        }
    }
}

/// `GET https://<authority><path>` with a bearer token, through wasi:http's outgoing
/// handler: status and body.
fn get(authority: &str, path: &str, token: &str) -> Result<(u16, String), String> {
    let headers = Fields::new();
    headers
        .set("authorization", &[format!("Bearer {token}").into_bytes()])
        .map_err(|e| format!("{e:?}"))?;
    headers
        .set("accept", &[b"application/json".to_vec()])
        .map_err(|e| format!("{e:?}"))?;
    let request = OutgoingRequest::new(headers);
    request
        .set_scheme(Some(&Scheme::Https))
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
