//! Authorization: whether an authenticated [`Identity`] may do what a request asks.
//!
//! A chain, as kube-apiserver's: administrators (`system:masters`, the control plane
//! itself) may do everything; then the Node authorizer below; then RBAC
//! ([`super::rbac`]) over the Roles and bindings stored in the cluster. A request is
//! allowed if a link allows it, and denied with kube-apiserver's message when none does.
//!
//! The Node authorizer: a node (`system:node:NAME`, group `system:nodes`) gets what
//! Kubernetes' Node authorizer gives a kubelet; a machine holding only a join token
//! (`system:node-bootstrap:ID`, group `system:bootstrappers`) may only ask for its node
//! credential. A node credential travels to machines outside the
//! control plane's trust, so what it may do is small and tied to the node's own objects:
//!
//! - read Nodes, Pods, Services, Endpoints, EndpointSlices and Namespaces (its proxy, DNS
//!   and mirrors follow them); write only its own Node and its own Lease;
//! - write the status of the pods bound to it, and delete them; never create a pod, change
//!   a pod's spec (`spec.nodeName` included) or touch a pod of another node;
//! - `get` a Secret or ConfigMap only when a pod bound to it references it (volumes,
//!   `env`, `envFrom`, `imagePullSecrets`), plus the cluster's node-proxy credential;
//!   never list or watch them;
//! - record Events; create and delete only its own node credentials;
//! - request ServiceAccount tokens only bound to its own pods, for the ServiceAccount
//!   they run as (checked by the TokenRequest handler on the body).
//!
//! [`authorize`] is a pure decision over the request's attributes, unit-tested without
//! I/O. Where the answer depends on stored objects (is this pod bound to the node, does a
//! pod of the node reference this Secret) it says so ([`Decision::IfRelated`]) and
//! [`enforce`] looks the relation up in the store before any body is read. What a node
//! may write *into* an object it creates (its Node's name, its Lease's name, the node of a
//! credential) is checked on the body by [`admit_create`], as kube-apiserver's
//! NodeRestriction admission does.
//!
//! A denied request is 403 with kube-apiserver's message, e.g. `pods "x" is forbidden:
//! User "system:node:node-1" cannot delete resource "pods" in API group "" in the
//! namespace "default"`.

use super::AppState;
use super::auth::{
    GROUP_BOOTSTRAPPERS, GROUP_MASTERS, GROUP_NODES, Identity, NODE_CREDENTIAL_KEY_NODE,
    NODE_CREDENTIAL_SECRET_PREFIX, NODE_CREDENTIAL_SECRET_TYPE, NODE_TOKEN_NAMESPACE,
};
use super::error::ApiError;
use super::objects::decode;
use super::proxy::NODE_PROXY_SECRET_NAME;
use super::rbac::{self, bootstrap};
use super::request::Target;
use crate::api::kinds::ResourceKind;
use crate::store::{collection_prefix, object_key};
use base64::Engine as _;
use http::Method;
use serde_json::Value;
use std::fmt;

/// The verb of a resource request, as Kubernetes names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    /// The verb of a request with `method`, on one object (`named`) or a collection;
    /// `None` for a method no verb maps to (the handler answers 405).
    pub fn of(method: &Method, named: bool, watch: bool) -> Option<Verb> {
        Some(match (method, named) {
            (&Method::GET, false) if watch => Verb::Watch,
            (&Method::GET, false) => Verb::List,
            (&Method::GET, true) => Verb::Get,
            (&Method::POST, false) => Verb::Create,
            (&Method::PUT, true) => Verb::Update,
            (&Method::PATCH, true) => Verb::Patch,
            (&Method::DELETE, true) => Verb::Delete,
            (&Method::DELETE, false) => Verb::DeleteCollection,
            _ => return None,
        })
    }

    /// The verb of a request with `method` for `target`: as [`Verb::of`], and a POST to
    /// an object's subresource (an eviction, a binding) creates it.
    pub fn of_target(method: &Method, target: &Target, watch: bool) -> Option<Verb> {
        if method == Method::POST && target.name.is_some() && target.subresource.is_some() {
            return Some(Verb::Create);
        }
        Verb::of(method, target.name.is_some(), watch)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }

    fn reads(self) -> bool {
        matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What must hold between a node and a stored object for a request to be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// The pod (namespace, name) is bound to the node.
    PodOnNode,
    /// A pod bound to the node references this Secret or ConfigMap.
    ReferencedByPodOnNode,
    /// The Secret is a node credential of the node.
    OwnCredential,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// Allowed if the node named in the identity has this relation to the target.
    IfRelated(Relation),
}

/// Kinds a node reads whole (its proxy, DNS, mirrors and agent follow them).
const NODE_READABLE: &[(&str, &str)] = &[
    ("", "Node"),
    ("", "Pod"),
    ("", "Service"),
    ("", "Endpoints"),
    ("discovery.k8s.io", "EndpointSlice"),
    ("", "Namespace"),
    // Its pods' claims and their volumes, to mount them, and every volume, to remove
    // the directories of reclaimed ones. (Kubernetes lets a node get only the claims and
    // volumes of its own pods; wharf's nodes also watch volumes, which hold no secrets.)
    ("", "PersistentVolumeClaim"),
    ("", "PersistentVolume"),
];

/// The node name of a node identity (`system:node:NAME` in group `system:nodes`).
pub fn node_name(identity: &Identity) -> Option<&str> {
    identity
        .user
        .strip_prefix("system:node:")
        .filter(|n| !n.is_empty() && identity.in_group(GROUP_NODES))
}

/// Whether `identity` may `verb` the resource `kind` (`subresource`) named `name` in
/// `namespace`. Pure; see the module docs for the policy.
pub fn authorize(
    identity: &Identity,
    verb: Verb,
    kind: &ResourceKind,
    namespace: Option<&str>,
    name: Option<&str>,
    subresource: Option<&str>,
) -> Decision {
    if identity.in_group(GROUP_MASTERS) {
        return Decision::Allow;
    }
    if let Some(node) = node_name(identity) {
        return node_may(node, verb, kind, namespace, name, subresource);
    }
    if identity.in_group(GROUP_BOOTSTRAPPERS) && bootstrap_may(verb, kind, namespace, subresource) {
        return Decision::Allow;
    }
    Decision::Deny
}

fn is(kind: &ResourceKind, group: &str, k: &str) -> bool {
    kind.group == group && kind.kind == k
}

/// A join token asks for a node credential (a Secret whose shape [`admit_create`] checks)
/// and nothing else.
fn bootstrap_may(
    verb: Verb,
    kind: &ResourceKind,
    namespace: Option<&str>,
    subresource: Option<&str>,
) -> bool {
    verb == Verb::Create
        && is(kind, "", "Secret")
        && namespace == Some(NODE_TOKEN_NAMESPACE)
        && subresource.is_none()
}

fn node_may(
    node: &str,
    verb: Verb,
    kind: &ResourceKind,
    namespace: Option<&str>,
    name: Option<&str>,
    subresource: Option<&str>,
) -> Decision {
    use Decision::{Allow, Deny, IfRelated};
    // Tokens for its pods' ServiceAccounts: the TokenRequest handler lets a node bind a
    // token only to a pod of its own that runs as that ServiceAccount
    // (`serviceaccounts::node_may_request`), so the relation is checked there, on the body.
    if is(kind, "", "ServiceAccount") && subresource == Some("token") {
        return if verb == Verb::Create { Allow } else { Deny };
    }
    // Its own TLS certificate (see `nodecert`): for its own Node only.
    if is(kind, "", "Node") && subresource == Some(super::nodecert::CERTIFICATE_SUBRESOURCE) {
        return if verb == Verb::Create && name == Some(node) {
            Allow
        } else {
            Deny
        };
    }
    // Objects and their status; not the log proxy (a node reads its own pods' logs
    // locally), not bindings, evictions or scale.
    if !matches!(subresource, None | Some("status")) {
        return Deny;
    }
    let own = name == Some(node);
    if is(kind, "", "Node") {
        return match verb {
            v if v.reads() => Allow,
            // A create names its object in the body: admission checks it.
            Verb::Create => Allow,
            Verb::Update | Verb::Patch | Verb::Delete if own => Allow,
            _ => Deny,
        };
    }
    if is(kind, "coordination.k8s.io", "Lease") {
        let lease_ns = namespace == Some("kube-node-lease");
        return match verb {
            Verb::Create if lease_ns => Allow,
            Verb::Get | Verb::Update | Verb::Patch | Verb::Delete if lease_ns && own => Allow,
            _ => Deny,
        };
    }
    if is(kind, "", "Pod") {
        return match verb {
            v if v.reads() && subresource.is_none() => Allow,
            Verb::Update | Verb::Patch if subresource == Some("status") => {
                IfRelated(Relation::PodOnNode)
            }
            Verb::Delete if subresource.is_none() => IfRelated(Relation::PodOnNode),
            _ => Deny,
        };
    }
    if is(kind, "", "Event") || is(kind, "events.k8s.io", "Event") {
        return match verb {
            Verb::Get | Verb::Create | Verb::Update | Verb::Patch => Allow,
            _ => Deny,
        };
    }
    let secret = is(kind, "", "Secret");
    if secret || is(kind, "", "ConfigMap") {
        return match verb {
            Verb::Get
                if secret
                    && namespace == Some(NODE_TOKEN_NAMESPACE)
                    && name == Some(NODE_PROXY_SECRET_NAME) =>
            {
                Allow
            }
            // Its own credentials: renewing (admission checks the new one names this
            // node), reading when it expires, deleting the one it replaced.
            Verb::Create if secret && namespace == Some(NODE_TOKEN_NAMESPACE) => Allow,
            Verb::Get | Verb::Delete
                if secret
                    && namespace == Some(NODE_TOKEN_NAMESPACE)
                    && name.is_some_and(|n| n.starts_with(NODE_CREDENTIAL_SECRET_PREFIX)) =>
            {
                IfRelated(Relation::OwnCredential)
            }
            Verb::Get => IfRelated(Relation::ReferencedByPodOnNode),
            _ => Deny,
        };
    }
    if verb.reads() && subresource.is_none() && NODE_READABLE.iter().any(|(g, k)| is(kind, g, k)) {
        return Allow;
    }
    Deny
}

/// kube-apiserver's message for a denied request.
pub fn forbidden_message(
    identity: &Identity,
    verb: Verb,
    kind: &ResourceKind,
    namespace: Option<&str>,
    name: Option<&str>,
    subresource: Option<&str>,
) -> String {
    let subject = match name.filter(|n| !n.is_empty()) {
        Some(name) => format!("{} \"{name}\" is forbidden", kind.qualified_plural()),
        None => format!("{} is forbidden", kind.qualified_plural()),
    };
    let resource = match subresource {
        Some(sub) => format!("{}/{sub}", kind.plural),
        None => kind.plural.to_string(),
    };
    let scope = match namespace.filter(|n| !n.is_empty()) {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    format!(
        "{subject}: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
        identity.user, kind.group
    )
}

/// Applies the chain to a resource request: [`authorize`], then RBAC. `Ok` when
/// allowed, 403 when denied. A request without an identity (which the authentication
/// middleware rules out) is 401. Relations a decision depends on are looked up in the
/// store (memory reads).
pub async fn enforce(
    state: &AppState,
    identity: Option<&Identity>,
    verb: Verb,
    target: &Target,
) -> Result<(), ApiError> {
    let Some(identity) = identity else {
        return Err(ApiError::Unauthorized(
            "Unauthorized: a bearer token is required".into(),
        ));
    };
    let (namespace, name, subresource) = (
        target.namespace.as_deref(),
        target.name.as_deref(),
        target.subresource.as_deref(),
    );
    let allowed = match authorize(identity, verb, target.kind, namespace, name, subresource) {
        Decision::Allow => true,
        Decision::Deny => false,
        Decision::IfRelated(relation) => match (node_name(identity), namespace, name) {
            (Some(node), Some(ns), Some(name)) => {
                related(state, relation, node, target.kind, ns, name).await?
            }
            _ => false,
        },
    };
    if allowed {
        return Ok(());
    }
    let attrs = rbac::Attributes {
        user: identity,
        verb: verb.as_str(),
        request: rbac::Request::Resource {
            namespace: namespace.unwrap_or_default(),
            group: target.kind.group,
            resource: target.kind.plural,
            subresource: subresource.unwrap_or_default(),
            name: name.unwrap_or_default(),
        },
    };
    if rbac_allows(state, &attrs).await? {
        return Ok(());
    }
    Err(ApiError::Forbidden(forbidden_message(
        identity,
        verb,
        target.kind,
        namespace,
        name,
        subresource,
    )))
}

/// Whether the chain allows `attrs` (for the reviews and impersonation, which ask about
/// any resource, served or not): masters, the Node authorizer for a served kind (a
/// relation to stored objects is not looked up: such requests are answered as not
/// allowed), then RBAC.
pub async fn allowed(state: &AppState, attrs: &rbac::Attributes<'_>) -> Result<bool, ApiError> {
    if attrs.user.in_group(GROUP_MASTERS) {
        return Ok(true);
    }
    if let rbac::Request::Resource {
        namespace,
        group,
        resource,
        subresource,
        name,
    } = attrs.request
    {
        let kind = crate::api::KINDS
            .iter()
            .find(|k| k.group == group && k.plural == resource);
        let verb = ALL_VERBS_BY_NAME.iter().find(|(n, _)| *n == attrs.verb);
        if let (Some(kind), Some((_, verb))) = (kind, verb) {
            let d = authorize(
                attrs.user,
                *verb,
                kind,
                Some(namespace).filter(|s| !s.is_empty()),
                Some(name).filter(|s| !s.is_empty()),
                Some(subresource).filter(|s| !s.is_empty()),
            );
            if d == Decision::Allow {
                return Ok(true);
            }
        }
    }
    rbac_allows(state, attrs).await
}

const ALL_VERBS_BY_NAME: &[(&str, Verb)] = &[
    ("get", Verb::Get),
    ("list", Verb::List),
    ("watch", Verb::Watch),
    ("create", Verb::Create),
    ("update", Verb::Update),
    ("patch", Verb::Patch),
    ("delete", Verb::Delete),
    ("deletecollection", Verb::DeleteCollection),
];

/// Whether `path` names resources (`/api/v1/pods`, `/apis/apps/v1/deployments`), which
/// dispatch authorizes, rather than discovery, OpenAPI or another non-resource path.
pub fn is_resource_path(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.first() {
        Some(&"api") => segments.len() >= 3,
        Some(&"apis") => segments.len() >= 4,
        _ => false,
    }
}

/// Middleware (after authentication): a non-resource path (discovery, OpenAPI) is
/// authorized by its path and lowercased method as the verb, as kube-apiserver does;
/// `system:discovery` grants them to everyone authenticated. 403 reads `forbidden: User
/// "alice" cannot get path "/apis"`.
pub async fn authorize_non_resource(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path().to_string();
    if is_resource_path(&path) {
        return next.run(req).await;
    }
    let Some(identity) = req.extensions().get::<Identity>().cloned() else {
        return next.run(req).await; // authentication answered already
    };
    let verb = req.method().as_str().to_ascii_lowercase();
    let attrs = rbac::Attributes {
        user: &identity,
        verb: &verb,
        request: rbac::Request::NonResource { path: &path },
    };
    match allowed(&state, &attrs).await {
        Ok(true) => next.run(req).await,
        Ok(false) => ApiError::Forbidden(format!(
            "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
            identity.user
        ))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Whether RBAC allows `attrs`: by the cached policy, and if that denies, by the policy
/// as stored now (so that a binding just created counts at once).
pub async fn rbac_allows(state: &AppState, attrs: &rbac::Attributes<'_>) -> Result<bool, ApiError> {
    let store_err = |e| ApiError::from_store(e, Default::default());
    let policy = state
        .rbac
        .get(&state.store, &state.shutdown)
        .await
        .map_err(store_err)?;
    if policy.allows(attrs) {
        return Ok(true);
    }
    let fresh = state.rbac.refresh(&state.store).await.map_err(store_err)?;
    Ok(fresh.allows(attrs))
}

/// Escalation prevention for writes of RBAC objects, as Kubernetes has it: a Role or
/// ClusterRole may hold only rules its author holds (in its namespace), unless the author
/// may `escalate` it; a binding may bind only a role whose rules its author holds, unless
/// the author may `bind` that role. Masters are not checked. Built before the write
/// (with the policy as stored now), checked on the object about to be stored.
pub struct WriteGuard(Option<(Identity, std::sync::Arc<rbac::Policy>)>);

/// The [`WriteGuard`] of a write by `identity` to `target`.
pub async fn write_guard(
    state: &AppState,
    identity: Option<&Identity>,
    target: &Target,
) -> Result<WriteGuard, ApiError> {
    let Some(identity) = identity else {
        return Ok(WriteGuard(None));
    };
    if target.kind.group != rbac::GROUP || identity.in_group(GROUP_MASTERS) {
        return Ok(WriteGuard(None));
    }
    let policy = state
        .rbac
        .refresh(&state.store)
        .await
        .map_err(|e| ApiError::from_store(e, Default::default()))?;
    Ok(WriteGuard(Some((identity.clone(), policy))))
}

impl WriteGuard {
    /// `Ok` if storing `obj` at `target` grants nothing its author does not hold.
    pub fn check(&self, target: &Target, obj: &Value) -> Result<(), ApiError> {
        let Some((user, policy)) = &self.0 else {
            return Ok(());
        };
        let kind = target.kind;
        let name = target
            .name
            .as_deref()
            .or_else(|| obj.pointer("/metadata/name").and_then(Value::as_str))
            .unwrap_or_default();
        let ns = target.namespace.as_deref().unwrap_or_default();
        let forbidden = |why: String| {
            ApiError::Forbidden(format!(
                "{} \"{name}\" is forbidden: {why}",
                kind.qualified_plural()
            ))
        };
        let may = |verb: &str, resource: &str, rname: &str| {
            policy.allows(&rbac::Attributes {
                user,
                verb,
                request: rbac::Request::Resource {
                    namespace: ns,
                    group: rbac::GROUP,
                    resource,
                    subresource: "",
                    name: rname,
                },
            })
        };
        let held = policy.rules_for(user, ns);
        let wanted: Vec<k8s_openapi::api::rbac::v1::PolicyRule> = match kind.kind {
            "Role" | "ClusterRole" => {
                if may("escalate", kind.plural, name) {
                    return Ok(());
                }
                if kind.kind == "ClusterRole"
                    && obj.get("aggregationRule").is_some_and(|a| !a.is_null())
                {
                    let all = bootstrap::full_authority();
                    if !rbac::missing_rules(&held, &all).is_empty() {
                        return Err(forbidden(
                            "must have cluster-admin privileges to use the aggregationRule".into(),
                        ));
                    }
                }
                obj.get("rules")
                    .cloned()
                    .and_then(|r| serde_json::from_value(r).ok())
                    .unwrap_or_default()
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let Some(role_ref) = obj.get("roleRef").cloned().and_then(|r| {
                    serde_json::from_value::<k8s_openapi::api::rbac::v1::RoleRef>(r).ok()
                }) else {
                    return Ok(()); // validation refuses it
                };
                let resource = if role_ref.kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                if may("bind", resource, &role_ref.name) {
                    return Ok(());
                }
                match policy.role_rules(&role_ref, ns) {
                    Some(rules) => rules.to_vec(),
                    None => {
                        return Err(forbidden(format!(
                            "{resource}.{} \"{}\" not found",
                            rbac::GROUP,
                            role_ref.name
                        )));
                    }
                }
            }
            _ => return Ok(()),
        };
        let missing = rbac::missing_rules(&held, &wanted);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(forbidden(rbac::escalation_message(user, &missing)))
        }
    }
}

/// Whether `node` has `relation` to the object `ns/name` of `kind`, as stored now.
async fn related(
    state: &AppState,
    relation: Relation,
    node: &str,
    kind: &ResourceKind,
    ns: &str,
    name: &str,
) -> Result<bool, ApiError> {
    let store_err = |e| ApiError::from_store(e, Default::default());
    match relation {
        Relation::PodOnNode => {
            let key = object_key("", "pods", ns, name);
            match state.store.get(&key).await.map_err(store_err)? {
                Some(stored) => Ok(pod_node(&decode(&stored)?) == Some(node)),
                // Nothing to reveal or change: the handler answers 404.
                None => Ok(true),
            }
        }
        Relation::ReferencedByPodOnNode => {
            let pods = state
                .store
                .list(&collection_prefix("", "pods", Some(ns)))
                .await
                .map_err(store_err)?;
            let mentions = |bytes: &[u8], what: &str| {
                bytes
                    .windows(what.len().max(1))
                    .any(|w| w == what.as_bytes())
            };
            for stored in &pods.items {
                // Only pods whose JSON names both are parsed.
                if !mentions(&stored.value, node) || !mentions(&stored.value, name) {
                    continue;
                }
                let pod = decode(stored)?;
                if pod_node(&pod) == Some(node) && pod_references(&pod, kind.kind, name) {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Relation::OwnCredential => {
            let key = object_key("", "secrets", ns, name);
            Ok(match state.store.get(&key).await.map_err(store_err)? {
                Some(stored) => credential_node(&decode(&stored)?).as_deref() == Some(node),
                None => false,
            })
        }
    }
}

fn pod_node(pod: &Value) -> Option<&str> {
    pod.pointer("/spec/nodeName").and_then(Value::as_str)
}

/// Whether `pod` references the Secret or ConfigMap (`kind`) `name`: in a volume (also a
/// projected one), a container's `env[].valueFrom` or `envFrom`, or `imagePullSecrets`.
pub fn pod_references(pod: &Value, kind: &str, name: &str) -> bool {
    let Some(spec) = pod.get("spec") else {
        return false;
    };
    let is_name = |v: Option<&Value>| v.and_then(Value::as_str) == Some(name);
    let (volume_field, name_field, env_ref, env_from) = match kind {
        "Secret" => ("secret", "secretName", "secretKeyRef", "secretRef"),
        "ConfigMap" => ("configMap", "name", "configMapKeyRef", "configMapRef"),
        _ => return false,
    };
    for volume in items(spec.get("volumes")) {
        if is_name(volume.get(volume_field).and_then(|v| v.get(name_field))) {
            return true;
        }
        let sources = items(volume.pointer("/projected/sources"));
        if sources
            .iter()
            .any(|s| is_name(s.get(volume_field).and_then(|v| v.get("name"))))
        {
            return true;
        }
    }
    if kind == "Secret"
        && items(spec.get("imagePullSecrets"))
            .iter()
            .any(|s| is_name(s.get("name")))
    {
        return true;
    }
    let env_pointer = format!("/valueFrom/{env_ref}/name");
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|l| items(spec.get(*l)));
    for c in containers {
        let by_env = items(c.get("env"))
            .iter()
            .any(|e| is_name(e.pointer(&env_pointer)));
        let by_env_from = items(c.get("envFrom"))
            .iter()
            .any(|e| is_name(e.get(env_from).and_then(|r| r.get("name"))));
        if by_env || by_env_from {
            return true;
        }
    }
    false
}

/// The array at `v`, borrowed (empty when absent or not an array).
fn items(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// The node a node-credential Secret (API form, `data` base64) is for.
pub fn credential_node(secret: &Value) -> Option<String> {
    if secret.get("type").and_then(Value::as_str) != Some(NODE_CREDENTIAL_SECRET_TYPE) {
        return None;
    }
    let b64 = secret
        .pointer(&format!("/data/{NODE_CREDENTIAL_KEY_NODE}"))
        .and_then(Value::as_str)?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// What a node or join token may put into an object it creates (kube-apiserver's
/// NodeRestriction): a node registers only its own Node and Lease, and a credential
/// Secret names the node it is for (a node's own name; for a join token, a node that
/// holds no credential yet, checked by [`super::auth`]). Masters are not restricted.
pub fn admit_create(identity: &Identity, kind: &ResourceKind, obj: &Value) -> Result<(), String> {
    if identity.in_group(GROUP_MASTERS) {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let node = node_name(identity);
    if is(kind, "", "Secret") {
        let Some(for_node) = credential_node(obj) else {
            return Err(format!(
                "a node may only create Secrets of type {NODE_CREDENTIAL_SECRET_TYPE}"
            ));
        };
        return match node {
            Some(node) if node != for_node => Err(format!(
                "node {node:?} may not create a credential for node {for_node:?}"
            )),
            _ => Ok(()),
        };
    }
    if let Some(node) = node
        && (is(kind, "", "Node") || is(kind, "coordination.k8s.io", "Lease"))
        && name != node
    {
        return Err(format!(
            "node {node:?} may not create a {} named {name:?}",
            kind.kind
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::resolve;

    fn kind(name: &str) -> &'static ResourceKind {
        resolve(name).expect("a served kind")
    }

    fn node() -> Identity {
        Identity::node("node-1")
    }

    const ALL_VERBS: [Verb; 8] = [
        Verb::Get,
        Verb::List,
        Verb::Watch,
        Verb::Create,
        Verb::Update,
        Verb::Patch,
        Verb::Delete,
        Verb::DeleteCollection,
    ];

    #[test]
    fn masters_may_do_everything() {
        for identity in [Identity::admin(), Identity::system()] {
            for k in crate::api::KINDS {
                for verb in ALL_VERBS {
                    for sub in [None, Some("status"), Some("log")] {
                        assert_eq!(
                            authorize(&identity, verb, k, Some("default"), Some("x"), sub),
                            Decision::Allow,
                            "{} {verb} {}",
                            identity.user,
                            k.plural
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn nodes_read_what_their_agent_proxy_and_dns_follow() {
        let n = node();
        for k in crate::api::KINDS {
            let readable = NODE_READABLE.iter().any(|(g, kk)| is(k, g, kk));
            for verb in [Verb::Get, Verb::List, Verb::Watch] {
                let got = authorize(&n, verb, k, Some("default"), Some("x"), None);
                if readable {
                    assert_eq!(got, Decision::Allow, "{verb} {}", k.plural);
                } else if !matches!(k.kind, "Secret" | "ConfigMap" | "Event" | "Lease") {
                    assert_eq!(got, Decision::Deny, "{verb} {}", k.plural);
                }
            }
        }
        let (secret, cm) = (kind("secret"), kind("cm"));
        // One by name, and only when a pod of the node references it.
        for k in [secret, cm] {
            assert_eq!(
                authorize(&n, Verb::Get, k, Some("default"), Some("s"), None),
                Decision::IfRelated(Relation::ReferencedByPodOnNode)
            );
            for verb in [Verb::List, Verb::Watch, Verb::Update, Verb::Patch] {
                assert_eq!(
                    authorize(&n, verb, k, Some("default"), Some("s"), None),
                    Decision::Deny,
                    "{verb} {}",
                    k.plural
                );
            }
        }
        assert_eq!(
            authorize(
                &n,
                Verb::Get,
                secret,
                Some("kube-system"),
                Some(NODE_PROXY_SECRET_NAME),
                None
            ),
            Decision::Allow
        );
        assert_eq!(
            authorize(
                &n,
                Verb::Delete,
                secret,
                Some("kube-system"),
                Some("wharf-node-credential-abc123"),
                None
            ),
            Decision::IfRelated(Relation::OwnCredential)
        );
        // The log proxy is for users, not for nodes.
        assert_eq!(
            authorize(
                &n,
                Verb::Get,
                kind("pod"),
                Some("a"),
                Some("p"),
                Some("log")
            ),
            Decision::Deny
        );
    }

    #[test]
    fn a_node_asks_for_a_certificate_for_itself_only() {
        let n = node();
        let (nodes, sub) = (
            kind("node"),
            Some(super::super::nodecert::CERTIFICATE_SUBRESOURCE),
        );
        assert_eq!(
            authorize(&n, Verb::Create, nodes, None, Some("node-1"), sub),
            Decision::Allow
        );
        assert_eq!(
            authorize(&n, Verb::Create, nodes, None, Some("node-2"), sub),
            Decision::Deny
        );
        assert_eq!(
            authorize(&n, Verb::Get, nodes, None, Some("node-1"), sub),
            Decision::Deny
        );
        let bootstrap = Identity {
            user: "system:node-bootstrap:abc".into(),
            groups: vec![GROUP_BOOTSTRAPPERS.into()],
        };
        assert_eq!(
            authorize(&bootstrap, Verb::Create, nodes, None, Some("node-1"), sub),
            Decision::Deny
        );
    }

    #[test]
    fn nodes_write_only_their_own_node_lease_and_pods() {
        let n = node();
        for verb in [Verb::Update, Verb::Patch, Verb::Delete] {
            assert_eq!(
                authorize(&n, verb, kind("node"), None, Some("node-1"), None),
                Decision::Allow
            );
            assert_eq!(
                authorize(&n, verb, kind("node"), None, Some("node-2"), None),
                Decision::Deny,
                "{verb} another node"
            );
        }
        assert_eq!(
            authorize(
                &n,
                Verb::Patch,
                kind("node"),
                None,
                Some("node-2"),
                Some("status")
            ),
            Decision::Deny
        );
        let lease = kind("lease");
        assert_eq!(
            authorize(
                &n,
                Verb::Update,
                lease,
                Some("kube-node-lease"),
                Some("node-1"),
                None
            ),
            Decision::Allow
        );
        for (ns, name) in [("kube-node-lease", "node-2"), ("default", "node-1")] {
            assert_eq!(
                authorize(&n, Verb::Update, lease, Some(ns), Some(name), None),
                Decision::Deny
            );
        }
        let pod = kind("pod");
        for verb in [Verb::Update, Verb::Patch] {
            assert_eq!(
                authorize(&n, verb, pod, Some("d"), Some("p"), Some("status")),
                Decision::IfRelated(Relation::PodOnNode)
            );
            assert_eq!(
                authorize(&n, verb, pod, Some("d"), Some("p"), None),
                Decision::Deny,
                "{verb} of a pod's spec (nodeName among it)"
            );
        }
        assert_eq!(
            authorize(&n, Verb::Delete, pod, Some("d"), Some("p"), None),
            Decision::IfRelated(Relation::PodOnNode)
        );
        assert_eq!(
            authorize(&n, Verb::Create, pod, Some("d"), None, None),
            Decision::Deny
        );
        for k in crate::api::KINDS {
            assert_eq!(
                authorize(&n, Verb::DeleteCollection, k, Some("default"), None, None),
                Decision::Deny,
                "deletecollection {}",
                k.plural
            );
            let writable = matches!(
                k.kind,
                "Node" | "Lease" | "Event" | "Pod" | "Secret" | "ConfigMap"
            );
            if !writable {
                for verb in [Verb::Create, Verb::Update, Verb::Patch, Verb::Delete] {
                    assert_eq!(
                        authorize(&n, verb, k, Some("default"), Some("x"), None),
                        Decision::Deny,
                        "{verb} {}",
                        k.plural
                    );
                }
            }
        }
        assert_eq!(
            authorize(
                &n,
                Verb::Create,
                kind("pod"),
                Some("d"),
                Some("p"),
                Some("binding")
            ),
            Decision::Deny
        );
    }

    #[test]
    fn join_tokens_may_only_ask_for_a_credential() {
        let b = Identity::node_bootstrap("abc123");
        for k in crate::api::KINDS {
            for verb in ALL_VERBS {
                let want = if k.kind == "Secret" && verb == Verb::Create {
                    Decision::Allow
                } else {
                    Decision::Deny
                };
                assert_eq!(
                    authorize(&b, verb, k, Some("kube-system"), None, None),
                    want,
                    "{verb} {}",
                    k.plural
                );
            }
        }
        assert_eq!(
            authorize(
                &b,
                Verb::Create,
                kind("secret"),
                Some("default"),
                None,
                None
            ),
            Decision::Deny
        );
    }

    #[test]
    fn what_nodes_create_must_be_theirs() {
        let n = node();
        let named = |name: &str| serde_json::json!({"metadata": {"name": name}});
        assert!(admit_create(&n, kind("node"), &named("node-1")).is_ok());
        assert!(admit_create(&n, kind("node"), &named("node-2")).is_err());
        assert!(admit_create(&n, kind("lease"), &named("node-2")).is_err());
        assert!(admit_create(&n, kind("event"), &named("x")).is_ok());
        let mine =
            super::super::auth::NodeToken::generate_kind(super::super::auth::TokenKind::Credential);
        assert!(admit_create(&n, kind("secret"), &mine.to_credential_secret("node-1")).is_ok());
        let err = admit_create(&n, kind("secret"), &mine.to_credential_secret("node-2"))
            .expect_err("another node's credential");
        assert!(
            err.contains("may not create a credential for node"),
            "{err}"
        );
        let opaque = serde_json::json!({"metadata": {"name": "x"}, "type": "Opaque"});
        assert!(admit_create(&n, kind("secret"), &opaque).is_err());
        let b = Identity::node_bootstrap("abc123");
        assert!(admit_create(&b, kind("secret"), &mine.to_credential_secret("node-9")).is_ok());
        assert!(admit_create(&b, kind("secret"), &opaque).is_err());
        assert!(admit_create(&Identity::admin(), kind("secret"), &opaque).is_ok());
    }

    #[test]
    fn pods_reference_secrets_and_config_maps_where_kubernetes_looks() {
        let pod = serde_json::json!({"spec": {
            "volumes": [{"name": "a", "secret": {"secretName": "vol"}},
                        {"name": "b", "configMap": {"name": "cm-vol"}},
                        {"name": "c", "projected": {"sources": [{"secret": {"name": "proj"}}]}}],
            "imagePullSecrets": [{"name": "pull"}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "from"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}},
                {"name": "Y", "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "k"}}}]}]}});
        for s in ["vol", "proj", "pull", "from", "env"] {
            assert!(pod_references(&pod, "Secret", s), "{s}");
        }
        for c in ["cm-vol", "cm-env"] {
            assert!(pod_references(&pod, "ConfigMap", c), "{c}");
            assert!(!pod_references(&pod, "Secret", c), "{c}");
        }
        assert!(!pod_references(&pod, "Secret", "other"));
    }

    #[test]
    fn other_identities_may_do_nothing() {
        let nobody = Identity {
            user: "someone".into(),
            groups: vec!["system:authenticated".into()],
        };
        for verb in ALL_VERBS {
            assert_eq!(
                authorize(&nobody, verb, kind("pod"), Some("default"), None, None),
                Decision::Deny
            );
        }
    }

    #[test]
    fn denials_read_like_kube_apiserver() {
        let n = node();
        assert_eq!(
            forbidden_message(
                &n,
                Verb::Delete,
                kind("pod"),
                Some("default"),
                Some("x"),
                None
            ),
            "pods \"x\" is forbidden: User \"system:node:node-1\" cannot delete \
             resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!(
            forbidden_message(
                &n,
                Verb::Create,
                kind("deploy"),
                Some("default"),
                None,
                None
            ),
            "deployments.apps is forbidden: User \"system:node:node-1\" cannot \
             create resource \"deployments\" in API group \"apps\" in the namespace \"default\""
        );
        assert_eq!(
            forbidden_message(&n, Verb::List, kind("secret"), None, None, None),
            "secrets is forbidden: User \"system:node:node-1\" cannot list \
             resource \"secrets\" in API group \"\" at the cluster scope"
        );
        assert_eq!(
            forbidden_message(
                &n,
                Verb::Get,
                kind("pod"),
                Some("a"),
                Some("p"),
                Some("log")
            ),
            "pods \"p\" is forbidden: User \"system:node:node-1\" cannot get \
             resource \"pods/log\" in API group \"\" in the namespace \"a\""
        );
    }

    #[test]
    fn verbs_follow_method_and_target() {
        assert_eq!(Verb::of(&Method::GET, false, true), Some(Verb::Watch));
        assert_eq!(Verb::of(&Method::GET, false, false), Some(Verb::List));
        assert_eq!(Verb::of(&Method::GET, true, true), Some(Verb::Get));
        assert_eq!(Verb::of(&Method::POST, false, false), Some(Verb::Create));
        assert_eq!(Verb::of(&Method::PUT, true, false), Some(Verb::Update));
        assert_eq!(Verb::of(&Method::PATCH, true, false), Some(Verb::Patch));
        assert_eq!(Verb::of(&Method::DELETE, true, false), Some(Verb::Delete));
        assert_eq!(
            Verb::of(&Method::DELETE, false, false),
            Some(Verb::DeleteCollection)
        );
        assert_eq!(Verb::of(&Method::POST, true, false), None);
        assert_eq!(Verb::of(&Method::OPTIONS, false, false), None);
    }
}
