//! `pods/binding`: how a scheduler places a pod on a node.
//!
//! `POST /api/v1/namespaces/NS/pods/NAME/binding` with a `v1 Binding`
//! (`metadata.name` = the pod, `target: {kind: Node, name: NODE}`) sets the pod's
//! `spec.nodeName` and its `PodScheduled=True` condition in one compare-and-swap write,
//! and answers 201 with a `Status` of `Success`, as kube-apiserver does.
//!
//! Why a subresource and not a patch of `spec.nodeName`: binding must happen at most
//! once. The write goes through only if the pod is still unbound (else 409 `pod X is
//! already assigned to node "Y"`), not being deleted, and (when the Binding names a uid)
//! still the same pod, so two schedulers, or a scheduler acting on a stale cache, can
//! never move a pod that a node may already be starting. It is also what a policy can
//! grant a scheduler without granting it pod updates: node tokens may not bind.

use super::AppState;
use super::auth::Identity;
use super::authz::{self, Verb};
use super::error::{ApiError, Subject};
use super::objects::{decode, encode, meta_str, now_rfc3339};
use super::registry::subresources::{Serve, SubRequest, Subresource};
use super::request::Target;
use crate::store::{StoreError, object_key};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::request::Parts;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

/// `pods/NAME/binding`.
pub static BINDING: Subresource = Subresource {
    name: "binding",
    body: Some(("", "v1", "Binding")),
    schema: Some(crate::api::typed::schema::<k8s_openapi::api::core::v1::Binding>),
    verbs: &["create"],
    serve: Serve::Handler(serve),
};

fn serve(req: SubRequest<'_>) -> BoxFuture<'_, Result<Response, ApiError>> {
    Box::pin(async move { handle(req.state, req.target, req.parts, req.body).await })
}

/// How often the write is retried when the pod changed under it.
const MAX_RETRIES: usize = 16;

fn subject(name: &str) -> Subject {
    Subject {
        group: String::new(),
        resource: "pods/binding".into(),
        name: name.to_string(),
    }
}

/// The handler of `pods/NAME/binding`.
pub async fn handle(
    state: &AppState,
    target: &Target,
    parts: &Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let name = match (&parts.method, target.name.as_deref()) {
        (&Method::POST, Some(name)) => name,
        (m, _) => {
            return Err(ApiError::MethodNotAllowed(format!(
                "{m} is not supported on pods/binding; use POST"
            )));
        }
    };
    authz::enforce(
        state,
        parts.extensions.get::<Identity>(),
        Verb::Create,
        target,
    )
    .await?;
    let namespace = target.namespace.as_deref().ok_or_else(|| {
        ApiError::BadRequest(
            "pods are namespaced: use /namespaces/NAMESPACE/pods/NAME/binding".into(),
        )
    })?;
    let binding = read_body(state, body).await?;
    let request = parse_binding(&binding, namespace, name)?;
    bind(state, namespace, name, &request).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        })),
    )
        .into_response())
}

async fn read_body(state: &AppState, body: Body) -> Result<Value, ApiError> {
    let limit = state.config.max_body_bytes;
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(ApiError::TooLarge { limit });
        }
        Err(e) => {
            return Err(ApiError::BadRequest(format!(
                "reading the request body: {e}"
            )));
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
}

/// What a Binding asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindRequest {
    pub node: String,
    /// The pod's uid, when the Binding names one: a precondition.
    pub uid: Option<String>,
    /// Annotations the Binding carries, copied onto the pod.
    pub annotations: serde_json::Map<String, Value>,
}

/// Checks a Binding against the URL. Pure.
pub fn parse_binding(
    binding: &Value,
    namespace: &str,
    name: &str,
) -> Result<BindRequest, ApiError> {
    if !binding.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    if let Some(kind) = binding.get("kind").and_then(Value::as_str)
        && !kind.is_empty()
        && kind != "Binding"
    {
        return Err(ApiError::BadRequest(format!(
            "the kind in the data ({kind}) does not match the kind of the URL (Binding)"
        )));
    }
    if let Some(n) = meta_str(binding, "name").filter(|n| !n.is_empty())
        && n != name
    {
        return Err(ApiError::BadRequest(format!(
            "the name of the binding ({n}) does not match the name of the pod on the URL ({name})"
        )));
    }
    if let Some(ns) = meta_str(binding, "namespace").filter(|n| !n.is_empty())
        && ns != namespace
    {
        return Err(ApiError::BadRequest(format!(
            "the namespace of the binding ({ns}) does not match the namespace on the URL ({namespace})"
        )));
    }
    let invalid = |field: &str, message: &str| {
        ApiError::invalid(
            Subject {
                group: String::new(),
                resource: "bindings".into(),
                name: name.to_string(),
            },
            "Binding",
            vec![crate::api::validation::FieldError::new(
                field,
                crate::api::validation::Reason::Invalid,
                None,
                message.to_string(),
            )],
        )
    };
    let target = binding
        .get("target")
        .ok_or_else(|| invalid("target", "a binding needs a target node"))?;
    let kind = target.get("kind").and_then(Value::as_str).unwrap_or("");
    if !kind.is_empty() && kind != "Node" {
        return Err(invalid("target.kind", "must be empty or 'Node'"));
    }
    let node = target
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("target.name", "the node to bind to is required"))?;
    Ok(BindRequest {
        node: node.to_string(),
        uid: meta_str(binding, "uid")
            .filter(|u| !u.is_empty())
            .map(str::to_string),
        annotations: binding
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    })
}

/// The pod bound as `request` asks, or why it may not be. Pure but for the clock.
pub fn bound_pod(pod: &Value, name: &str, request: &BindRequest) -> Result<Value, ApiError> {
    if let Some(uid) = &request.uid
        && Some(uid.as_str()) != meta_str(pod, "uid")
    {
        return Err(ApiError::conflict(
            subject(name),
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta_str(pod, "uid").unwrap_or("")
            ),
        ));
    }
    if meta_str(pod, "deletionTimestamp").is_some() {
        return Err(ApiError::conflict(
            subject(name),
            &format!("pod {name} is being deleted, cannot be assigned to a host"),
        ));
    }
    if let Some(node) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Err(ApiError::conflict(
            subject(name),
            &format!("pod {name} is already assigned to node \"{node}\""),
        ));
    }
    let mut pod = pod.clone();
    let obj = pod
        .as_object_mut()
        .ok_or_else(|| ApiError::Internal(format!("stored pod {name} is not an object")))?;
    let spec = obj.entry("spec").or_insert_with(|| json!({}));
    if let Some(spec) = spec.as_object_mut() {
        spec.insert("nodeName".into(), json!(request.node));
    }
    if !request.annotations.is_empty() {
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            let ann = meta.entry("annotations").or_insert_with(|| json!({}));
            if !ann.is_object() {
                *ann = json!({});
            }
            if let Some(ann) = ann.as_object_mut() {
                for (k, v) in &request.annotations {
                    ann.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let status = obj.entry("status").or_insert_with(|| json!({}));
    if !status.is_object() {
        *status = json!({});
    }
    if let Some(status) = status.as_object_mut() {
        let conditions = status.entry("conditions").or_insert_with(|| json!([]));
        if !conditions.is_array() {
            *conditions = json!([]);
        }
        if let Some(conditions) = conditions.as_array_mut() {
            conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            conditions.push(json!({
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": null,
                "lastTransitionTime": now_rfc3339(),
            }));
        }
    }
    Ok(pod)
}

/// Read, bind, compare-and-swap; retried when the pod changed in between.
async fn bind(
    state: &AppState,
    namespace: &str,
    name: &str,
    request: &BindRequest,
) -> Result<(), ApiError> {
    let key = object_key("", "pods", namespace, name);
    let pod_subject = Subject {
        group: String::new(),
        resource: "pods".into(),
        name: name.to_string(),
    };
    for _ in 0..MAX_RETRIES {
        let stored = match state.store.get(&key).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(ApiError::not_found(pod_subject)),
            Err(e) => return Err(ApiError::from_store(e, pod_subject)),
        };
        let pod = decode(&stored)?;
        let bound = bound_pod(&pod, name, request)?;
        match state
            .store
            .update(&key, encode(&bound)?, Some(stored.mod_revision))
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound { .. }) => return Err(ApiError::not_found(pod_subject)),
            Err(e) => return Err(ApiError::from_store(e, subject(name))),
        }
    }
    Err(ApiError::conflict(
        subject(name),
        "too many concurrent writers; please try again",
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::apiserver::auth::{Authenticator, Identity};
    use crate::apiserver::{ApiConfig, router};
    use crate::store::{FjallStore, Store, StoreConfig};
    use axum::Router;
    use http::Request;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    const TOKEN: &str = "admin-token";
    const NODE_TOKEN: &str = "node-token";

    struct Api {
        router: Router,
        _dir: tempfile::TempDir,
    }

    async fn api() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(FjallStore::open(StoreConfig::new(dir.path().join("store"))).unwrap());
        let auth = Arc::new(Authenticator::new());
        auth.add_token(TOKEN, Identity::admin());
        auth.add_token(NODE_TOKEN, Identity::node_bootstrap("abc123"));
        let state = AppState {
            store,
            auth,
            config: Arc::new(ApiConfig::default()),
            shutdown: CancellationToken::new(),
        };
        let api = Api {
            router: router(state),
            _dir: dir,
        };
        let (code, _) = api
            .send(
                TOKEN,
                "POST",
                "/api/v1/namespaces",
                Some(json!({"metadata": {"name": "default"}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED);
        api
    }

    impl Api {
        async fn send(
            &self,
            token: &str,
            method: &str,
            uri: &str,
            body: Option<Value>,
        ) -> (StatusCode, Value) {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(
                    body.map(|b| Body::from(b.to_string()))
                        .unwrap_or_else(Body::empty),
                )
                .unwrap();
            let resp =
                tokio::time::timeout(Duration::from_secs(10), self.router.clone().oneshot(req))
                    .await
                    .expect("request timed out")
                    .unwrap();
            let code = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
            (code, value)
        }

        async fn pod(&self, name: &str) -> Value {
            let (code, pod) = self
                .send(
                    TOKEN,
                    "GET",
                    &format!("/api/v1/namespaces/default/pods/{name}"),
                    None,
                )
                .await;
            assert_eq!(code, StatusCode::OK, "{pod}");
            pod
        }
    }

    fn binding(pod: &str, node: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
               "target": {"apiVersion": "v1", "kind": "Node", "name": node}})
    }

    const BIND_P: &str = "/api/v1/namespaces/default/pods/p/binding";

    async fn with_pod(api: &Api) -> Value {
        let (code, created) = api
            .send(
                TOKEN,
                "POST",
                "/api/v1/namespaces/default/pods",
                Some(json!({"metadata": {"name": "p"},
                    "spec": {"containers": [{"name": "a", "image": "a.wasm"}]}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{created}");
        created
    }

    #[tokio::test]
    async fn binding_sets_the_node_once_and_answers_like_kube_apiserver() {
        let api = api().await;
        let created = with_pod(&api).await;
        let (code, status) = api
            .send(TOKEN, "POST", BIND_P, Some(binding("p", "node-1")))
            .await;
        assert_eq!(code, StatusCode::CREATED, "{status}");
        assert_eq!(
            status,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                  "status": "Success", "code": 201})
        );
        let pod = api.pod("p").await;
        assert_eq!(pod["spec"]["nodeName"], "node-1");
        let cond = pod["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "PodScheduled")
            .cloned()
            .unwrap();
        assert_eq!(cond["status"], "True");
        assert!(cond["lastTransitionTime"].as_str().unwrap().ends_with('Z'));
        assert_eq!(pod["metadata"]["uid"], created["metadata"]["uid"]);
        assert_eq!(
            pod["metadata"]["generation"],
            created["metadata"]["generation"]
        );

        let (code, status) = api
            .send(TOKEN, "POST", BIND_P, Some(binding("p", "node-2")))
            .await;
        assert_eq!(code, StatusCode::CONFLICT);
        assert_eq!(status["reason"], "Conflict");
        assert_eq!(
            status["message"],
            "Operation cannot be fulfilled on pods/binding \"p\": pod p is already assigned to node \"node-1\""
        );
        assert_eq!(api.pod("p").await["spec"]["nodeName"], "node-1");
    }

    #[tokio::test]
    async fn binding_checks_the_pod_the_body_and_the_caller() {
        let api = api().await;
        let (code, status) = api
            .send(TOKEN, "POST", BIND_P, Some(binding("p", "n")))
            .await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{status}");
        let created = with_pod(&api).await;

        let (code, _) = api
            .send(TOKEN, "POST", BIND_P, Some(binding("other", "n")))
            .await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let (code, status) = api
            .send(
                TOKEN,
                "POST",
                BIND_P,
                Some(json!({"metadata": {"name": "p"}, "target": {"kind": "Node"}})),
            )
            .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
        assert_eq!(status["details"]["causes"][0]["field"], "target.name");
        let (code, _) = api
            .send(
                TOKEN,
                "POST",
                BIND_P,
                Some(json!({"metadata": {"name": "p"}, "target": {"kind": "Pod", "name": "x"}})),
            )
            .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
        let (code, _) = api.send(TOKEN, "GET", BIND_P, None).await;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);

        // A stale uid (the pod was replaced) is a conflict.
        let mut stale = binding("p", "n");
        stale["metadata"]["uid"] = json!("not-the-uid");
        let (code, status) = api.send(TOKEN, "POST", BIND_P, Some(stale)).await;
        assert_eq!(code, StatusCode::CONFLICT, "{status}");
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains("UID in precondition")
        );

        // Node tokens may not bind.
        let (code, status) = api
            .send(NODE_TOKEN, "POST", BIND_P, Some(binding("p", "n")))
            .await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
        assert!(
            status["message"].as_str().unwrap().contains("pods/binding"),
            "{status}"
        );

        // The right uid, with annotations carried over.
        let mut good = binding("p", "n");
        good["metadata"]["uid"] = created["metadata"]["uid"].clone();
        good["metadata"]["annotations"] = json!({"scheduler.wharf.dev/note": "x"});
        let (code, status) = api.send(TOKEN, "POST", BIND_P, Some(good)).await;
        assert_eq!(code, StatusCode::CREATED, "{status}");
        let pod = api.pod("p").await;
        assert_eq!(pod["spec"]["nodeName"], "n");
        assert_eq!(
            pod["metadata"]["annotations"]["scheduler.wharf.dev/note"],
            "x"
        );
    }

    #[tokio::test]
    async fn pods_being_deleted_are_not_bound() {
        let pod = json!({"metadata": {"name": "p", "uid": "u", "deletionTimestamp": "2020-01-01T00:00:00Z"},
                         "spec": {}});
        let req = BindRequest {
            node: "n".into(),
            uid: None,
            annotations: Default::default(),
        };
        let err = bound_pod(&pod, "p", &req).unwrap_err();
        assert!(err.to_string().contains("being deleted"), "{err}");
    }

    #[tokio::test]
    async fn discovery_lists_the_binding_subresource() {
        let api = api().await;
        let (code, list) = api.send(TOKEN, "GET", "/api/v1", None).await;
        assert_eq!(code, StatusCode::OK);
        let entry = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods/binding")
            .cloned()
            .unwrap();
        assert_eq!(entry["verbs"], json!(["create"]));
        assert_eq!(entry["kind"], "Binding");
    }

    #[tokio::test]
    async fn the_kube_client_binds_through_create_subresource() {
        use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
        let api = api().await;
        with_pod(&api).await;
        let client = crate::apiserver::in_process_client(api.router.clone());
        let pods: kube::Api<Pod> = kube::Api::namespaced(client, "default");
        let b = Binding {
            metadata: kube::api::ObjectMeta {
                name: Some("p".into()),
                ..Default::default()
            },
            target: ObjectReference {
                kind: Some("Node".into()),
                name: Some("node-9".into()),
                ..Default::default()
            },
        };
        let status: Status = pods
            .create_subresource("binding", "p", &Default::default(), &b)
            .await
            .unwrap();
        assert_eq!(status.status.as_deref(), Some("Success"));
        let err = pods
            .create_subresource::<_, Status>("binding", "p", &Default::default(), &b)
            .await
            .unwrap_err();
        assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
    }
}
