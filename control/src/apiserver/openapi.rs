//! OpenAPI v3: `/openapi/v3` (the index) and one document per group-version
//! (`/openapi/v3/api/v1`, `/openapi/v3/apis/apps/v1`).
//!
//! Why it matters: kubectl validates fields on the server only when the group-version's
//! document says the kind's PATCH operation takes `fieldValidation`; otherwise it falls
//! back to client-side validation, which needs OpenAPI v2 and fails without it. `kubectl
//! explain` reads the schemas from the same documents.
//!
//! The documents are generated from the kinds table and the discovery subresources, so
//! the paths are exactly what the handlers serve, with the parameters wharf reads. The
//! schemas are the `k8s-openapi` types' JSON schemas (its `schemars` feature), which
//! carry the fields, types, formats and descriptions of the Kubernetes API, plus the
//! `x-kubernetes-group-version-kind` that clients use to find a kind's schema. They do
//! *not* carry the strategic-merge-patch metadata (`x-kubernetes-patch-merge-key` and
//! friends): kubectl computes a strategic merge patch from OpenAPI v3 when the PATCH
//! operation lists that media type, and from these schemas it would replace lists such
//! as `containers` instead of merging them by name. So the PATCH operations list only
//! the other patch types, and kubectl computes its strategic merge patches from its own
//! compiled-in types, which know the merge keys.
//!
//! Generating the documents takes a moment and their JSON is large, so they are built
//! once, off the async threads, on first use. Each is served with a content hash in the
//! index URL and as ETag, so clients (kubectl caches them on disk) fetch it once.
//!
//! The reviews (TokenReview, SubjectAccessReview, the SelfSubject reviews) are no kinds
//! of the table but discovery lists them, so their group-versions have documents too
//! ([`review_document`]): the review's schema and its one `create` operation, which is
//! what `kubectl explain tokenreviews` reads.
//!
//! The group-versions CustomResourceDefinitions add have documents too, built per
//! request from the definitions as stored (they are small and change at any time): a
//! custom kind's schema is its definition's `openAPIV3Schema` (named as Kubernetes names
//! it, `com.example.v1.Widget`) with `apiVersion`, `kind` and `metadata` added; its
//! paths are generated as every kind's.

use super::AppState;
use super::discovery::{self, Subresource};
use super::error::ApiError;
use crate::api::kinds::{KINDS, ResourceKind};
use axum::extract::{Path, Query as AxumQuery, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

/// One group-version's document, serialized once.
pub struct Document {
    pub body: Bytes,
    /// Hex SHA-256 of `body`.
    pub hash: String,
}

/// Every document, by its path below `/openapi/v3/` (`api/v1`, `apis/apps/v1`).
pub struct Documents {
    pub by_path: BTreeMap<String, Document>,
}

static DOCUMENTS: OnceLock<Documents> = OnceLock::new();

/// The documents, built on first use.
pub fn documents() -> &'static Documents {
    DOCUMENTS.get_or_init(build_all)
}

async fn documents_off_thread() -> Result<&'static Documents, ApiError> {
    if let Some(d) = DOCUMENTS.get() {
        return Ok(d);
    }
    tokio::task::spawn_blocking(documents)
        .await
        .map_err(|e| ApiError::Internal(format!("building the OpenAPI documents: {e}")))
}

/// `GET /openapi/v3`.
pub async fn index(State(state): State<AppState>) -> Result<Response, ApiError> {
    let docs = documents_off_thread().await?;
    let custom = custom_documents(&state).await?;
    let paths: Map<String, Value> = docs
        .by_path
        .iter()
        .chain(custom.by_path.iter())
        .map(|(path, doc)| {
            (
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", doc.hash)}),
            )
        })
        .collect();
    let mut resp = axum::Json(json!({ "paths": paths })).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

/// `GET /openapi/v3/{api/v1 | apis/GROUP/VERSION}`.
pub async fn group_version(
    State(state): State<AppState>,
    Path(path): Path<String>,
    AxumQuery(query): AxumQuery<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !accepts_json(&headers) {
        return Err(ApiError::NotAcceptable(
            "only application/json is available for OpenAPI v3 documents".into(),
        ));
    }
    let docs = documents_off_thread().await?;
    let path = path.trim_matches('/');
    let custom;
    let doc = match docs.by_path.get(path) {
        Some(doc) => Some(doc),
        None => {
            custom = custom_documents(&state).await?;
            custom.by_path.get(path)
        }
    };
    let doc = doc.ok_or_else(|| ApiError::NotFound {
        subject: Default::default(),
        message: format!(
            "the server could not find the requested resource: no OpenAPI document for {path:?}; see /openapi/v3 for the list"
        ),
    })?;
    let etag = format!("\"{}\"", doc.hash);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = (StatusCode::OK, doc.body.clone()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // A URL that names the current hash names these exact bytes forever.
    let immutable = query.get("hash") == Some(&doc.hash);
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable {
            "public, immutable, max-age=31536000"
        } else {
            "no-cache, private"
        }),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    Ok(resp)
}

/// Whether the Accept header allows JSON (no header does).
fn accepts_json(headers: &HeaderMap) -> bool {
    let mut any = false;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            any = true;
            let media = range.split(';').next().unwrap_or("").trim();
            if matches!(media, "application/json" | "application/*" | "*/*") {
                return true;
            }
        }
    }
    !any
}

// ---- Building ---------------------------------------------------------------------------

fn build_all() -> Documents {
    let kinds: Vec<&'static ResourceKind> = KINDS.iter().collect();
    let mut docs = build(&kinds);
    let mut gvs: Vec<(&'static str, &'static str)> = Vec::new();
    for r in discovery::review_resources() {
        if !gvs.contains(&(r.group, r.version)) {
            gvs.push((r.group, r.version));
        }
    }
    for (group, version) in gvs {
        let path = gv_path(group, version);
        if docs.by_path.contains_key(&path) {
            continue;
        }
        docs.by_path
            .insert(path, document(&review_document(group, version)));
    }
    docs
}

/// A document serialized, with its hash.
fn document(doc: &Value) -> Document {
    // Serializing a `Value` cannot fail.
    let body = Bytes::from(serde_json::to_vec(doc).unwrap_or_default());
    let digest = ring::digest::digest(&ring::digest::SHA256, &body);
    let hash = digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<String>();
    Document { body, hash }
}

/// Registers the schema of a review's type.
fn review_schema(kind: &str, generator: &mut schemars::SchemaGenerator) -> Option<String> {
    use k8s_openapi::api::{authentication::v1 as authn, authorization::v1 as authz};
    Some(match kind {
        "TokenReview" => register::<authn::TokenReview>(generator),
        "SelfSubjectReview" => register::<authn::SelfSubjectReview>(generator),
        "SelfSubjectAccessReview" => register::<authz::SelfSubjectAccessReview>(generator),
        "SelfSubjectRulesReview" => register::<authz::SelfSubjectRulesReview>(generator),
        "SubjectAccessReview" => register::<authz::SubjectAccessReview>(generator),
        _ => return None,
    })
}

/// The document of a group-version that holds only reviews: each review's schema and its
/// `create` operation (`POST`, never stored).
pub fn review_document(group: &str, version: &str) -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut reviews = Vec::new();
    for r in discovery::review_resources().filter(|r| r.group == group && r.version == version) {
        if let Some(name) = review_schema(r.kind, &mut generator) {
            reviews.push((r, name));
        }
    }
    let mut schemas = generator.take_definitions(true);
    for (r, name) in &reviews {
        if let Some(Value::Object(s)) = schemas.get_mut(name) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([gvk(r.group, r.version, r.kind)]),
            );
            if let Some(Value::Array(required)) = s.get_mut("required") {
                required.retain(|f| f != "metadata");
            }
        }
    }
    let tag = tag(group, version);
    let infix = op_infix(group, version);
    let mut paths = Map::new();
    for (r, name) in &reviews {
        let obj = schema_ref(name);
        let op = Op {
            method: "post",
            id: format!("create{infix}{}", r.kind),
            description: format!("create a {}", r.kind),
            action: "post",
            gvk: gvk(r.group, r.version, r.kind),
            params: write_params(),
            body: Some((obj.clone(), JSON)),
            responses: vec![("200", obj.clone()), ("201", obj.clone()), ("202", obj)],
            produces: JSON,
        };
        add_path(
            &mut paths,
            format!("/{}/{}", gv_path(group, version), r.plural),
            vec![pretty()],
            vec![op],
            &tag,
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {
            "title": "wharf",
            "version": format!("v{}.{}.0", discovery::KUBERNETES_VERSION.0, discovery::KUBERNETES_VERSION.1),
        },
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// The documents of every group-version of `kinds`.
fn build(kinds: &[&'static ResourceKind]) -> Documents {
    let mut gvs: Vec<(&'static str, &'static str)> = Vec::new();
    for k in kinds {
        if !gvs.contains(&(k.group, k.version)) {
            gvs.push((k.group, k.version));
        }
    }
    let by_path = gvs
        .into_iter()
        .map(|(group, version)| {
            let doc = group_version_document(kinds, group, version);
            (gv_path(group, version), document(&doc))
        })
        .collect();
    Documents { by_path }
}

/// The documents of the group-versions CustomResourceDefinitions add, as stored now:
/// built per request (definitions change at any time; their documents are small).
async fn custom_documents(state: &AppState) -> Result<Documents, ApiError> {
    let custom = state.kinds.fresh(state).await;
    tokio::task::spawn_blocking(move || build(&custom.rows))
        .await
        .map_err(|e| ApiError::Internal(format!("building the OpenAPI documents: {e}")))
}

/// `api/v1` or `apis/GROUP/VERSION`.
pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

use crate::api::typed::schema as register;

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

/// The document of one group-version.
pub fn group_version_document(all: &[&'static ResourceKind], group: &str, version: &str) -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let list_meta =
        register::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta>(&mut generator);
    let status = register::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>(&mut generator);
    let delete_options =
        register::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>(&mut generator);
    let object_meta =
        register::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(&mut generator);
    let mut sub_schemas: HashMap<(&str, &str, &str), String> = HashMap::new();
    let mut kinds: Vec<(&'static ResourceKind, String)> = Vec::new();
    let mut own: Vec<(String, Value)> = Vec::new();
    for k in all
        .iter()
        .copied()
        .filter(|k| k.group == group && k.version == version)
    {
        let schema = match k.strategy.openapi_schema() {
            Some(s) => {
                let name = custom_schema_name(k);
                own.push((name.clone(), custom_schema(s, &object_meta)));
                name
            }
            None => (k.typed.schema)(&mut generator),
        };
        for sub in discovery::subresources(k) {
            // A subresource whose body is another type names it in the table.
            let Some(register) = sub.schema else {
                continue;
            };
            sub_schemas.insert((sub.group, sub.version, sub.kind), register(&mut generator));
        }
        kinds.push((k, schema));
    }
    let mut schemas = generator.take_definitions(true);
    schemas.extend(own);

    // What clients look kinds up by. And: `k8s-openapi` marks `metadata` (and some
    // `spec`s) required because its structs hold them without an `Option`; the API does
    // not require them (a server fills metadata), so neither do these documents.
    let mut mark = |name: &str, g: &str, v: &str, kind: &str| {
        if let Some(Value::Object(s)) = schemas.get_mut(name) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([gvk(g, v, kind)]),
            );
            if let Some(Value::Array(required)) = s.get_mut("required") {
                required.retain(|f| f != "metadata" && f != "spec");
                if required.is_empty() {
                    s.remove("required");
                }
            }
        }
    };
    mark(&status, "", "v1", "Status");
    for ((g, v, kind), name) in &sub_schemas {
        mark(name, g, v, kind);
    }
    for (k, name) in &kinds {
        mark(name, k.group, k.version, k.kind);
    }
    for (k, name) in &kinds {
        schemas.insert(list_schema_name(name), list_schema(k, name, &list_meta));
    }

    let tag = tag(group, version);
    let mut paths = Map::new();
    for (k, name) in &kinds {
        kind_paths(
            &mut paths,
            k,
            name,
            &tag,
            &status,
            &delete_options,
            &sub_schemas,
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {
            "title": "wharf",
            "version": format!("v{}.{}.0", discovery::KUBERNETES_VERSION.0, discovery::KUBERNETES_VERSION.1),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "BearerToken": {
                    "type": "apiKey",
                    "description": "Bearer token authentication",
                    "name": "authorization",
                    "in": "header",
                },
            },
        },
        "security": [{"BearerToken": []}],
    })
}

/// `com.example.v1.Widget`: a custom kind's schema name, as Kubernetes names it (the
/// group reversed, the version, the kind).
fn custom_schema_name(k: &ResourceKind) -> String {
    let reversed: Vec<&str> = k.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), k.version, k.kind)
}

/// A custom kind's schema: its definition's, with what every object has.
fn custom_schema(schema: &Value, object_meta: &str) -> Value {
    let mut s = schema.clone();
    if let Some(map) = s.as_object_mut() {
        let props = map.entry("properties").or_insert_with(|| json!({}));
        if let Some(props) = props.as_object_mut() {
            props.insert(
                "apiVersion".into(),
                json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}),
            );
            props.insert(
                "kind".into(),
                json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}),
            );
            props.insert(
                "metadata".into(),
                json!({"allOf": [schema_ref(object_meta)], "description": "Standard object's metadata."}),
            );
        }
        map.entry("type").or_insert_with(|| json!("object"));
    }
    s
}

fn list_schema_name(kind_schema: &str) -> String {
    format!("{kind_schema}List")
}

fn list_schema(k: &ResourceKind, kind_schema: &str, list_meta: &str) -> Value {
    json!({
        "description": format!("{}List is a list of {}.", k.kind, k.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this list."},
            "kind": {"type": "string", "description": "Kind of this list."},
            "metadata": {"allOf": [schema_ref(list_meta)], "description": "Standard list metadata."},
            "items": {"type": "array", "items": schema_ref(kind_schema),
                      "description": format!("The {}.", k.plural)},
        },
        "x-kubernetes-group-version-kind": [gvk(k.group, k.version, &format!("{}List", k.kind))],
    })
}

/// `core_v1`, `apps_v1`, `coordination_v1`: the operation tag.
fn tag(group: &str, version: &str) -> String {
    let g = if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    };
    format!("{g}_{version}")
}

/// `CoreV1`, `AppsV1`, `CoordinationV1`: the operation ID infix.
fn op_infix(group: &str, version: &str) -> String {
    let g = if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    };
    format!("{}{}", capitalize(g), capitalize(version))
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn param(name: &str, location: &str, description: &str, schema: Value) -> Value {
    let mut p = json!({"name": name, "in": location, "description": description, "schema": schema});
    if location == "path" {
        p["required"] = json!(true);
    }
    p
}

fn query_string(name: &str, description: &str) -> Value {
    param(name, "query", description, json!({"type": "string"}))
}

fn query_bool(name: &str, description: &str) -> Value {
    param(name, "query", description, json!({"type": "boolean"}))
}

fn query_int(name: &str, description: &str) -> Value {
    param(
        name,
        "query",
        description,
        json!({"type": "integer", "format": "int64"}),
    )
}

fn pretty() -> Value {
    query_string(
        "pretty",
        "If 'true', the output is pretty printed (wharf always answers compact JSON).",
    )
}

fn path_name(what: &str) -> Value {
    param(
        "name",
        "path",
        &format!("name of the {what}"),
        json!({"type": "string"}),
    )
}

fn path_namespace() -> Value {
    param(
        "namespace",
        "path",
        "object name and auth scope, such as for teams and projects",
        json!({"type": "string"}),
    )
}

fn list_params() -> Vec<Value> {
    vec![
        query_bool(
            "allowWatchBookmarks",
            "With watch: ask for BOOKMARK events that carry the latest resourceVersion.",
        ),
        query_string(
            "continue",
            "Continue token of a chunked list; wharf answers whole lists and never sets one.",
        ),
        query_string(
            "fieldSelector",
            "Restrict the list to objects whose fields match, such as metadata.name=x.",
        ),
        query_string(
            "labelSelector",
            "Restrict the list to objects whose labels match, such as app=web,tier!=db.",
        ),
        query_int(
            "limit",
            "Maximum number of items per chunk; wharf answers whole lists.",
        ),
        query_string(
            "resourceVersion",
            "With watch: the resourceVersion to watch from.",
        ),
        query_string(
            "resourceVersionMatch",
            "How resourceVersion applies to a list.",
        ),
        query_bool(
            "sendInitialEvents",
            "With watch: start with ADDED events for every existing object.",
        ),
        query_int(
            "timeoutSeconds",
            "With watch: end the watch after this many seconds.",
        ),
        query_bool(
            "watch",
            "Watch for changes and stream them as WatchEvents instead of listing.",
        ),
    ]
}

fn dry_run() -> Value {
    query_string(
        "dryRun",
        "When present (the only value is All), the request is checked and answered but nothing is stored.",
    )
}

fn field_manager() -> Value {
    query_string(
        "fieldManager",
        "Name of the actor or entity making the change.",
    )
}

fn field_validation() -> Value {
    query_string(
        "fieldValidation",
        "What to do with fields the schema does not declare and fields given twice: Ignore drops them, \
         Warn (the default) drops them and answers a Warning header per field, Strict refuses the request.",
    )
}

fn write_params() -> Vec<Value> {
    vec![dry_run(), field_manager(), field_validation()]
}

fn patch_params() -> Vec<Value> {
    let mut p = write_params();
    p.push(query_bool(
        "force",
        "Server-side apply: take ownership of conflicting fields.",
    ));
    p
}

fn delete_params() -> Vec<Value> {
    vec![
        dry_run(),
        query_int(
            "gracePeriodSeconds",
            "Seconds before the object is deleted; 0 deletes at once.",
        ),
        query_bool(
            "orphanDependents",
            "Deprecated: use propagationPolicy. Whether dependents are orphaned.",
        ),
        query_string(
            "propagationPolicy",
            "Whether and how dependents are collected: Orphan, Background or Foreground.",
        ),
    ]
}

fn log_params() -> Vec<Value> {
    vec![
        query_string(
            "container",
            "The container whose log to stream; defaults to the only container.",
        ),
        query_bool("follow", "Keep streaming as the log grows."),
        query_int("limitBytes", "Stop after this many bytes of log."),
        query_bool("previous", "The log of the previous run of the container."),
        query_int("sinceSeconds", "Only lines newer than this many seconds."),
        query_string("sinceTime", "Only lines after this RFC 3339 time."),
        query_int("tailLines", "Only the last this many lines."),
        query_bool("timestamps", "Prefix every line with its RFC 3339 time."),
    ]
}

/// JSON request and response bodies.
const JSON: &[&str] = &["application/json"];
/// The patch media types listed for PATCH operations; see the module doc for why
/// strategic merge patch is not among them.
const PATCH_MEDIA_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
];

/// One operation.
struct Op<'a> {
    method: &'static str,
    id: String,
    description: String,
    action: &'static str,
    gvk: Value,
    params: Vec<Value>,
    body: Option<(Value, &'a [&'a str])>,
    /// Status codes with their schema.
    responses: Vec<(&'static str, Value)>,
    /// The media type of the successful responses.
    produces: &'a [&'a str],
}

impl Op<'_> {
    fn json(self, tag: &str) -> Value {
        let mut responses = Map::new();
        for (code, schema) in self.responses {
            let content: Map<String, Value> = self
                .produces
                .iter()
                .map(|t| (t.to_string(), json!({"schema": schema})))
                .collect();
            let description = match code {
                "200" => "OK",
                "201" => "Created",
                "202" => "Accepted",
                _ => "",
            };
            responses.insert(
                code.into(),
                json!({"description": description, "content": content}),
            );
        }
        responses.insert("401".into(), json!({"description": "Unauthorized"}));
        let mut op = json!({
            "tags": [tag],
            "description": self.description,
            "operationId": self.id,
            "responses": responses,
            "x-kubernetes-action": self.action,
            "x-kubernetes-group-version-kind": self.gvk,
        });
        if !self.params.is_empty() {
            op["parameters"] = json!(self.params);
        }
        if let Some((schema, types)) = self.body {
            let content: Map<String, Value> = types
                .iter()
                .map(|t| (t.to_string(), json!({"schema": schema})))
                .collect();
            op["requestBody"] = json!({"content": content, "required": true});
        }
        op
    }
}

/// Adds one path item: its operations (keyed by method) and the parameters they share.
fn add_path(
    paths: &mut Map<String, Value>,
    path: String,
    params: Vec<Value>,
    ops: Vec<Op<'_>>,
    tag: &str,
) {
    let mut item = Map::new();
    for op in ops {
        let method = op.method;
        item.insert(method.into(), op.json(tag));
    }
    item.insert("parameters".into(), json!(params));
    paths.insert(path, Value::Object(item));
}

/// Adds the paths of one kind: its collection, its objects, its subresources and (for a
/// namespaced kind) its list across namespaces.
fn kind_paths(
    paths: &mut Map<String, Value>,
    k: &'static ResourceKind,
    schema: &str,
    tag: &str,
    status: &str,
    delete_options: &str,
    sub_schemas: &HashMap<(&str, &str, &str), String>,
) {
    let base = format!("/{}", gv_path(k.group, k.version));
    let infix = op_infix(k.group, k.version);
    let scope = if k.namespaced { "Namespaced" } else { "" };
    let kind = k.kind;
    let this_gvk = gvk(k.group, k.version, kind);
    let obj = schema_ref(schema);
    let list = schema_ref(&list_schema_name(schema));
    let (collection, scope_params) = if k.namespaced {
        (
            format!("{base}/namespaces/{{namespace}}/{}", k.plural),
            vec![path_namespace()],
        )
    } else {
        (format!("{base}/{}", k.plural), vec![])
    };
    let verbs = discovery::verbs(k);
    let has = |v: &str| verbs.contains(&v);
    let object_path = format!("{collection}/{{name}}");

    // The collection.
    let mut ops = Vec::new();
    if has("list") {
        ops.push(Op {
            method: "get",
            id: format!("list{infix}{scope}{kind}"),
            description: format!("list or watch objects of kind {kind}"),
            action: "list",
            gvk: this_gvk.clone(),
            params: list_params(),
            body: None,
            responses: vec![("200", list.clone())],
            produces: JSON,
        });
    }
    if has("create") {
        ops.push(Op {
            method: "post",
            id: format!("create{infix}{scope}{kind}"),
            description: format!("create a {kind}"),
            action: "post",
            gvk: this_gvk.clone(),
            params: write_params(),
            body: Some((obj.clone(), JSON)),
            responses: vec![
                ("200", obj.clone()),
                ("201", obj.clone()),
                ("202", obj.clone()),
            ],
            produces: JSON,
        });
    }
    if has("deletecollection") {
        let mut params = delete_params();
        params.extend(list_params().into_iter().filter(|p| p["name"] != "watch"));
        ops.push(Op {
            method: "delete",
            id: format!("delete{infix}Collection{scope}{kind}"),
            description: format!("delete a collection of {kind}"),
            action: "deletecollection",
            gvk: this_gvk.clone(),
            params,
            body: Some((schema_ref(delete_options), JSON)),
            responses: vec![("200", list.clone())],
            produces: JSON,
        });
    }
    let mut params = scope_params.clone();
    params.push(pretty());
    add_path(paths, collection.clone(), params, ops, tag);

    // One object.
    let mut ops = vec![Op {
        method: "get",
        id: format!("read{infix}{scope}{kind}"),
        description: format!("read the specified {kind}"),
        action: "get",
        gvk: this_gvk.clone(),
        params: vec![],
        body: None,
        responses: vec![("200", obj.clone())],
        produces: JSON,
    }];
    ops.push(Op {
        method: "put",
        id: format!("replace{infix}{scope}{kind}"),
        description: format!("replace the specified {kind}"),
        action: "put",
        gvk: this_gvk.clone(),
        params: write_params(),
        body: Some((obj.clone(), JSON)),
        responses: vec![("200", obj.clone()), ("201", obj.clone())],
        produces: JSON,
    });
    ops.push(Op {
        method: "patch",
        id: format!("patch{infix}{scope}{kind}"),
        description: format!("partially update the specified {kind}"),
        action: "patch",
        gvk: this_gvk.clone(),
        params: patch_params(),
        body: Some((json!({"type": "object"}), PATCH_MEDIA_TYPES)),
        responses: vec![("200", obj.clone()), ("201", obj.clone())],
        produces: JSON,
    });
    ops.push(Op {
        method: "delete",
        id: format!("delete{infix}{scope}{kind}"),
        description: format!("delete a {kind}"),
        action: "delete",
        gvk: this_gvk.clone(),
        params: delete_params(),
        body: Some((schema_ref(delete_options), JSON)),
        responses: vec![("200", obj.clone()), ("202", obj.clone())],
        produces: JSON,
    });
    let mut params = vec![path_name(kind)];
    params.extend(scope_params.clone());
    params.push(pretty());
    add_path(paths, object_path.clone(), params.clone(), ops, tag);

    // Subresources.
    for sub in discovery::subresources(k) {
        let ops = subresource_ops(k, &sub, &infix, scope, &obj, status, sub_schemas);
        add_path(
            paths,
            format!("{object_path}/{}", sub.name),
            params.clone(),
            ops,
            tag,
        );
    }

    // The list across namespaces.
    if k.namespaced && has("list") {
        let op = Op {
            method: "get",
            id: format!("list{infix}{kind}ForAllNamespaces"),
            description: format!("list or watch objects of kind {kind} in every namespace"),
            action: "list",
            gvk: this_gvk,
            params: list_params(),
            body: None,
            responses: vec![("200", list)],
            produces: JSON,
        };
        add_path(
            paths,
            format!("{base}/{}", k.plural),
            vec![pretty()],
            vec![op],
            tag,
        );
    }
}

fn subresource_ops<'a>(
    k: &ResourceKind,
    sub: &Subresource,
    infix: &str,
    scope: &str,
    obj: &Value,
    status: &str,
    sub_schemas: &HashMap<(&str, &str, &str), String>,
) -> Vec<Op<'a>> {
    let kind = k.kind;
    let sub_name = capitalize(sub.name);
    let sub_gvk = gvk(sub.group, sub.version, sub.kind);
    let schema = sub_schemas
        .get(&(sub.group, sub.version, sub.kind))
        .map(|s| schema_ref(s))
        .unwrap_or_else(|| obj.clone());
    let mut ops = Vec::new();
    for verb in sub.verbs {
        let op = match *verb {
            "get" if sub.name == super::proxy::LOG_SUBRESOURCE => Op {
                method: "get",
                id: format!("read{infix}{scope}{kind}Log"),
                description: format!("read the log of the specified {kind}"),
                action: "get",
                gvk: sub_gvk.clone(),
                params: log_params(),
                body: None,
                responses: vec![("200", json!({"type": "string"}))],
                produces: &["text/plain"],
            },
            // A streaming subresource is a "connect" operation, as Kubernetes documents it.
            "get" | "create"
                if [super::exec::EXEC.name, super::portforward::PORTFORWARD.name]
                    .contains(&sub.name) =>
            {
                let (method, action) = if *verb == "get" {
                    ("get", "Get")
                } else {
                    ("post", "Post")
                };
                Op {
                    method,
                    id: format!("connect{infix}{action}{scope}{kind}{sub_name}"),
                    description: format!("connect {method} requests to {} of {kind}", sub.name),
                    action: "connect",
                    gvk: sub_gvk.clone(),
                    params: vec![],
                    body: None,
                    responses: vec![("200", json!({"type": "string"}))],
                    produces: &["*/*"],
                }
            }
            "get" => Op {
                method: "get",
                id: format!("read{infix}{scope}{kind}{sub_name}"),
                description: format!("read {} of the specified {kind}", sub.name),
                action: "get",
                gvk: sub_gvk.clone(),
                params: vec![],
                body: None,
                responses: vec![("200", schema.clone())],
                produces: JSON,
            },
            "update" => Op {
                method: "put",
                id: format!("replace{infix}{scope}{kind}{sub_name}"),
                description: format!("replace {} of the specified {kind}", sub.name),
                action: "put",
                gvk: sub_gvk.clone(),
                params: write_params(),
                body: Some((schema.clone(), JSON)),
                responses: vec![("200", schema.clone()), ("201", schema.clone())],
                produces: JSON,
            },
            "patch" => Op {
                method: "patch",
                id: format!("patch{infix}{scope}{kind}{sub_name}"),
                description: format!("partially update {} of the specified {kind}", sub.name),
                action: "patch",
                gvk: sub_gvk.clone(),
                params: patch_params(),
                body: Some((json!({"type": "object"}), PATCH_MEDIA_TYPES)),
                responses: vec![("200", schema.clone()), ("201", schema.clone())],
                produces: JSON,
            },
            "create" => Op {
                method: "post",
                id: format!("create{infix}{scope}{kind}{sub_name}"),
                description: format!("create {} of a {kind}", sub.name),
                action: "post",
                gvk: sub_gvk.clone(),
                params: vec![dry_run(), field_manager(), field_validation()],
                body: Some((schema.clone(), JSON)),
                // Binding and eviction answer a Status.
                responses: vec![
                    ("200", schema_ref(status)),
                    ("201", schema_ref(status)),
                    ("202", schema_ref(status)),
                ],
                produces: JSON,
            },
            _ => continue,
        };
        ops.push(op);
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(path: &str) -> Value {
        let d = documents().by_path.get(path).expect("document");
        serde_json::from_slice(&d.body).expect("json")
    }

    /// The PATCH operations of a kind, as kubectl's field-validation check finds them.
    fn patch_ops<'a>(
        doc: &'a Value,
        group: &str,
        version: &str,
        kind: &str,
    ) -> Vec<(&'a String, &'a Value)> {
        doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .filter_map(|(path, item)| item.get("patch").map(|op| (path, op)))
            .filter(|(_, op)| {
                op["x-kubernetes-group-version-kind"]
                    == json!({"group": group, "version": version, "kind": kind})
            })
            .collect()
    }

    #[test]
    fn every_group_version_has_a_document() {
        let paths: Vec<&String> = documents().by_path.keys().collect();
        assert_eq!(
            paths,
            [
                "api/v1",
                "apis/apiextensions.k8s.io/v1",
                "apis/apiregistration.k8s.io/v1",
                "apis/apps/v1",
                "apis/authentication.k8s.io/v1",
                "apis/authorization.k8s.io/v1",
                "apis/autoscaling/v1",
                "apis/autoscaling/v2",
                "apis/batch/v1",
                "apis/coordination.k8s.io/v1",
                "apis/discovery.k8s.io/v1",
                "apis/metrics.k8s.io/v1beta1",
                "apis/networking.k8s.io/v1",
                "apis/policy/v1",
                "apis/rbac.authorization.k8s.io/v1",
                "apis/scheduling.k8s.io/v1",
                "apis/storage.k8s.io/v1"
            ]
        );
    }

    #[test]
    fn every_patch_operation_of_a_kind_takes_field_validation() {
        for k in KINDS.iter().filter(|k| k.strategy.computed().is_none()) {
            let d = doc(&gv_path(k.group, k.version));
            let ops = patch_ops(&d, k.group, k.version, k.kind);
            // The object, plus status when the kind has one.
            assert_eq!(ops.len(), 1 + usize::from(k.has_status()), "{}", k.kind);
            for (path, op) in ops {
                let names: Vec<&str> = op["parameters"]
                    .as_array()
                    .expect("parameters")
                    .iter()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                assert!(names.contains(&"fieldValidation"), "{path}");
                assert_eq!(op["x-kubernetes-action"], "patch");
                let types = op["requestBody"]["content"].as_object().expect("content");
                assert!(types.contains_key("application/merge-patch+json"));
                assert!(!types.contains_key("application/strategic-merge-patch+json"));
            }
        }
    }

    #[test]
    fn paths_follow_kubernetes() {
        let core = doc("api/v1");
        let paths = core["paths"].as_object().expect("paths");
        for p in [
            "/api/v1/namespaces/{namespace}/pods",
            "/api/v1/namespaces/{namespace}/pods/{name}",
            "/api/v1/namespaces/{namespace}/pods/{name}/status",
            "/api/v1/namespaces/{namespace}/pods/{name}/log",
            "/api/v1/namespaces/{namespace}/pods/{name}/binding",
            "/api/v1/namespaces/{namespace}/pods/{name}/eviction",
            "/api/v1/pods",
            "/api/v1/nodes",
            "/api/v1/nodes/{name}",
            "/api/v1/namespaces",
            "/api/v1/namespaces/{name}/finalize",
        ] {
            assert!(paths.contains_key(p), "{p}");
        }
        assert!(!paths.contains_key("/api/v1/namespaces/{namespace}/nodes"));
        let pods = &paths["/api/v1/namespaces/{namespace}/pods"];
        assert_eq!(pods["get"]["operationId"], "listCoreV1NamespacedPod");
        assert_eq!(pods["post"]["operationId"], "createCoreV1NamespacedPod");
        assert_eq!(
            pods["delete"]["operationId"],
            "deleteCoreV1CollectionNamespacedPod"
        );
        // Namespaces are not deleted as a collection.
        assert!(paths["/api/v1/namespaces"].get("delete").is_none());
        let apps = doc("apis/apps/v1");
        let scale = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"];
        assert_eq!(
            scale["patch"]["x-kubernetes-group-version-kind"],
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
        assert_eq!(
            scale["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/io.k8s.api.autoscaling.v1.Scale"
        );
        let coord = doc("apis/coordination.k8s.io/v1");
        assert!(
            coord["paths"]["/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"]["get"]["operationId"]
                == "listCoordinationV1NamespacedLease"
        );
    }

    #[test]
    fn schemas_are_complete_and_every_reference_resolves() {
        for path in documents().by_path.keys() {
            let d = doc(path);
            let schemas = d["components"]["schemas"].as_object().expect("schemas");
            let mut refs = Vec::new();
            collect_refs(&d, &mut refs);
            for r in refs {
                let name = r
                    .strip_prefix("#/components/schemas/")
                    .unwrap_or_else(|| panic!("{path}: foreign reference {r}"));
                assert!(schemas.contains_key(name), "{path}: dangling {r}");
            }
        }
        let apps = doc("apis/apps/v1");
        let deploy = &apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deploy["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
        );
        assert_eq!(
            deploy["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert!(deploy.get("required").is_none(), "{:?}", deploy["required"]);
        let container = &apps["components"]["schemas"]["io.k8s.api.core.v1.Container"];
        assert_eq!(container["required"], json!(["name"]));
        assert_eq!(container["properties"]["image"]["type"], "string");
        let list = &apps["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentList"];
        assert_eq!(
            list["x-kubernetes-group-version-kind"][0]["kind"],
            "DeploymentList"
        );
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (key, value) in m {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => collect_refs(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| collect_refs(i, out)),
            _ => {}
        }
    }

    #[test]
    fn json_is_acceptable_unless_excluded() {
        let mut h = HeaderMap::new();
        assert!(accepts_json(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(accepts_json(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/com.github.proto-openapi.spec.v3@v1.0+protobuf"),
        );
        assert!(!accepts_json(&h));
    }
}
