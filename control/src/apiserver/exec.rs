//! The `pods/exec` subresource: a wasm pod has no shell to run a command in.
//!
//! A container here is one WebAssembly guest, not a process tree in a filesystem: there
//! is no `sh`, no `ps` and no other executable beside it. So `kubectl exec` is answered,
//! for an existing pod, with a Kubernetes Status (400 BadRequest) that says so and names
//! what does work on a wasm pod (`kubectl logs`, `kubectl attach`, `kubectl
//! port-forward`). Both ways kubectl tries are answered the same: the WebSocket upgrade
//! (`GET`, `v5.channel.k8s.io`) and then the SPDY one (`POST`, `Upgrade: SPDY/3.1`); a
//! failed upgrade with a Status body is what kubectl prints as `Error from server`.
//! It is in the subresource table, so discovery and OpenAPI list `pods/exec` and
//! RBAC-aware clients see it (`create` on `pods/exec`, as Kubernetes authorizes it).

use super::auth::Identity;
use super::authz::{self, Verb};
use super::error::ApiError;
use super::registry::store;
use super::registry::subresources::{Serve, SubRequest, Subresource};
use axum::response::Response;
use futures::future::BoxFuture;
use http::Method;

/// `pods/NAME/exec`.
pub static EXEC: Subresource = Subresource {
    name: "exec",
    body: None,
    schema: None,
    verbs: &["create", "get"],
    serve: Serve::Handler(handle),
};

/// What a request to exec into `pod` is told.
pub fn no_shell_message(pod: &str) -> String {
    format!(
        "pod {pod:?} runs WebAssembly guests: a wasm pod has no shell or other program to exec \
         into. Use `kubectl logs {pod}` to read its output, `kubectl attach {pod}` to attach \
         to its standard streams, or `kubectl port-forward pod/{pod} LOCAL:REMOTE` to reach \
         its ports"
    )
}

fn handle(req: SubRequest<'_>) -> BoxFuture<'_, Result<Response, ApiError>> {
    Box::pin(async move {
        let Some(name) = req.target.name.as_deref() else {
            return Err(ApiError::MethodNotAllowed(
                "exec names its pod: .../pods/NAME/exec".into(),
            ));
        };
        if req.parts.method != Method::GET && req.parts.method != Method::POST {
            return Err(ApiError::MethodNotAllowed(format!(
                "{} is not supported on pods/exec; use GET (WebSocket) or POST (SPDY)",
                req.parts.method
            )));
        }
        // Exec is `create` on `pods/exec` whichever upgrade carries it.
        let identity = req.parts.extensions.get::<Identity>();
        authz::enforce(req.state, identity, Verb::Create, req.target).await?;
        // A pod that does not exist is a 404, as for any other subresource.
        store::get_object(req.state, req.target, name).await?;
        Err(ApiError::BadRequest(no_shell_message(name)))
    })
}
