//! Authentication: client certificates and bearer tokens.
//!
//! Every request but the health and version endpoints carries a client certificate
//! signed by the cluster CA (`wharf kubeconfig create`, see [`ClientCert`]) or
//! `Authorization: Bearer TOKEN`; either maps to an [`Identity`] that [`super::authz`]
//! then checks against what the request wants to do. These kinds of tokens exist:
//!
//! - **Static tokens** (the admin token of the generated kubeconfig), held in memory by
//!   the [`Authenticator`].
//! - **Static user tokens** from a CSV file (`wharf control --token-auth-file`, as
//!   kube-apiserver's flag): `token,user,uid,"group1,group2"` per line. Such users are in
//!   `system:authenticated` and may do what RBAC grants them ([`parse_token_file`]).
//! - **Join tokens**, `wharf-node.<id>.<secret>`, which machines use to join the cluster
//!   (as kubeadm's bootstrap tokens). Each is a Secret `kube-system/wharf-node-token-<id>`
//!   of type `wharf.dev/node-token` that holds the SHA-256 of the secret, never the secret
//!   itself: the token is printed once by `wharf token create`, and whoever can read
//!   Secrets still cannot join with what they read. A join token is good for one thing
//!   (identity `system:node-bootstrap:<id>`, group `system:bootstrappers`): asking for a
//!   node credential.
//! - **Node credentials**, `wharf-node-credential.<id>.<secret>`, what a node uses once it
//!   has joined (as a kubelet's client certificate): the node makes the token itself,
//!   keeps it in its data dir (0600) and creates the Secret
//!   `kube-system/wharf-node-credential-<id>` of type `wharf.dev/node-credential` with the
//!   hash and the node's name. The API server sets its expiration
//!   (`ApiConfig::node_credential_validity`, a year by default) and lets a join token
//!   create one only for a node that holds none yet; the node renews it with itself
//!   before it expires. Its identity is `system:node:<name>` in `system:nodes`, which the
//!   Node authorizer ([`super::authz`]) ties to that node's objects.
//!
//! - **ServiceAccount tokens**, JWTs signed by the cluster's ServiceAccount key
//!   (`kubectl create token`, and the tokens nodes mount into pods), checked by
//!   [`super::serviceaccounts`]: user `system:serviceaccount:NS:NAME`.
//!
//! Both kinds of node tokens name their Secret by the id inside the token, so a request looks its token
//! up with one `store.get`: no cache, nothing to keep in sync, and deleting the Secret
//! revokes the token for the very next request.
//!
//! A caller allowed to `impersonate` users (and groups) may act as another identity with
//! `Impersonate-User` / `Impersonate-Group` headers, as with kube-apiserver (`kubectl
//! --as alice`); see [`super::reviews::impersonation`].
//!
//! The control plane's own components do not hold a token: the in-process client inserts
//! the system identity as a request extension, which a TCP client cannot forge (extensions
//! never come from the wire).

use super::AppState;
use super::error::{ApiError, Subject};
use super::objects::decode;
use super::serviceaccounts::{self, TokenIssuer};
use crate::store::{Store, StoreError, object_key};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use jiff::Timestamp;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// The control plane itself.
    pub fn system() -> Self {
        Identity {
            user: "system:wharf-control-plane".into(),
            groups: vec![GROUP_MASTERS.into()],
        }
    }

    /// The cluster administrator of the generated kubeconfig.
    pub fn admin() -> Self {
        Identity {
            user: "admin".into(),
            groups: vec![GROUP_MASTERS.into()],
        }
    }

    /// A machine holding the join token `id`, not yet a node.
    pub fn node_bootstrap(id: &str) -> Self {
        Identity {
            user: format!("system:node-bootstrap:{id}"),
            groups: vec![GROUP_BOOTSTRAPPERS.into(), GROUP_AUTHENTICATED.into()],
        }
    }

    /// The node `name`, by its node credential.
    pub fn node(name: &str) -> Self {
        Identity {
            user: format!("system:node:{name}"),
            groups: vec![GROUP_NODES.into(), GROUP_AUTHENTICATED.into()],
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// Administrators and the control plane itself: allowed everything.
pub const GROUP_MASTERS: &str = "system:masters";
/// Node agents: what [`super::authz`] allows a node.
pub const GROUP_NODES: &str = "system:nodes";
/// Machines holding a join token.
pub const GROUP_BOOTSTRAPPERS: &str = "system:bootstrappers";
/// Every identity that presented a valid credential.
pub const GROUP_AUTHENTICATED: &str = "system:authenticated";

/// Why a request has no identity. Every variant but `Store` is a 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("a bearer token is required")]
    Missing,
    #[error("the token is not valid")]
    Invalid,
    #[error("the {} {id} expired at {}", .kind.noun(), .at.strftime("%Y-%m-%dT%H:%M:%SZ"))]
    Expired {
        kind: TokenKind,
        id: String,
        at: Timestamp,
    },
    /// A node-token Secret that does not say what a node token needs; logged, and
    /// answered as an invalid token (the client cannot fix it).
    #[error("secret {NODE_TOKEN_NAMESPACE}/{name} is not a valid node token: {why}")]
    MalformedSecret { name: String, why: String },
    /// A ServiceAccount token that is expired or names what no longer exists.
    #[error("{0}")]
    ServiceAccount(String),
    #[error("looking up the token: {0}")]
    Store(StoreError),
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Store(e) => ApiError::from_store(e, Subject::default()),
            AuthError::MalformedSecret { .. } => {
                ApiError::Unauthorized(format!("Unauthorized: {}", AuthError::Invalid))
            }
            other => ApiError::Unauthorized(format!("Unauthorized: {other}")),
        }
    }
}

/// The known tokens, and the key ServiceAccount tokens are checked with.
#[derive(Debug, Default)]
pub struct Authenticator {
    tokens: RwLock<HashMap<String, Identity>>,
    issuer: RwLock<Option<Arc<TokenIssuer>>>,
}

impl Authenticator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Signs and checks ServiceAccount tokens with `issuer` from now on.
    pub fn set_token_issuer(&self, issuer: TokenIssuer) {
        if let Ok(mut i) = self.issuer.write() {
            *i = Some(Arc::new(issuer));
        }
    }

    /// The ServiceAccount token issuer, if this server has one.
    pub fn token_issuer(&self) -> Option<Arc<TokenIssuer>> {
        self.issuer.read().ok()?.clone()
    }

    pub fn add_token(&self, token: impl Into<String>, identity: Identity) {
        if let Ok(mut t) = self.tokens.write() {
            t.insert(token.into(), identity);
        }
    }

    /// The identity of `token`. Comparison is constant-time per candidate so that timing
    /// does not reveal how much of a token matched.
    pub fn authenticate(&self, token: &str) -> Option<Identity> {
        let tokens = self.tokens.read().ok()?;
        let mut found = None;
        for (known, identity) in tokens.iter() {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(identity.clone());
            }
        }
        found
    }
}

/// The tokens of a static token file: `token,user,uid` and an optional fourth column of
/// groups, quoted when there are several (`"g1,g2"`), as kube-apiserver's
/// `--token-auth-file`. Blank lines and lines starting with `#` are skipped. Every user
/// is also in `system:authenticated`. `Err` names the first bad line.
pub fn parse_token_file(text: &str) -> Result<Vec<(String, Identity)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols = split_csv(line);
        let col = |n: usize| cols.get(n).map(|c| c.trim()).unwrap_or_default();
        if cols.len() < 3 || col(0).is_empty() || col(1).is_empty() {
            return Err(format!(
                "line {}: want token,user,uid[,\"group1,group2\"]",
                i + 1
            ));
        }
        let mut groups: Vec<String> = col(3)
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect();
        if !groups.iter().any(|g| g == GROUP_AUTHENTICATED) {
            groups.push(GROUP_AUTHENTICATED.into());
        }
        out.push((
            col(0).to_string(),
            Identity {
                user: col(1).to_string(),
                groups,
            },
        ));
    }
    Ok(out)
}

/// One CSV line's fields: commas inside double quotes do not split, `""` is a quote.
fn split_csv(line: &str) -> Vec<String> {
    let (mut fields, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random token: 32 bytes, hex.
pub fn generate_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The identity of a bearer token: a node token is looked up in the store, a static
/// token among the [`Authenticator`]'s, and a JWT is checked as a ServiceAccount token
/// ([`super::serviceaccounts::authenticate`]).
pub async fn authenticate(state: &AppState, token: &str) -> Result<Identity, AuthError> {
    if let Some(node) = NodeToken::parse(token) {
        return authenticate_node_token(state.store.as_ref(), &node, Timestamp::now()).await;
    }
    if let Some(identity) = state.auth.authenticate(token) {
        return Ok(identity);
    }
    match state.auth.token_issuer() {
        Some(issuer) if serviceaccounts::looks_like_jwt(token) => {
            let (identity, _) = serviceaccounts::authenticate(
                state,
                &issuer,
                token,
                &issuer.audiences,
                Timestamp::now(),
            )
            .await?;
            Ok(identity)
        }
        _ => Err(AuthError::Invalid),
    }
}

/// The token of an `Authorization` header value: the scheme `Bearer` in any case, as
/// kube-apiserver accepts it (`bearer`, `BEARER`), then the token, whitespace around both.
pub fn bearer_token(header: &str) -> Option<&str> {
    let mut parts = header.split_whitespace();
    let scheme = parts.next()?;
    let token = parts.next()?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// The identity of a client certificate the TLS handshake verified against the cluster
/// CA, put on each request of its connection by the server (never from the wire): the
/// subject's CommonName is the user, each Organization a group, as kube-apiserver's x509
/// authenticator maps them. `system:authenticated` is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert(pub Identity);

impl ClientCert {
    pub fn new(user: String, mut groups: Vec<String>) -> Self {
        if !groups.iter().any(|g| g == GROUP_AUTHENTICATED) {
            groups.push(GROUP_AUTHENTICATED.into());
        }
        ClientCert(Identity { user, groups })
    }
}

/// Middleware: resolves the caller's identity or answers 401. A verified client
/// certificate comes first, then the bearer token, as kube-apiserver tries them.
pub async fn require_identity(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if req.extensions().get::<Identity>().is_some() {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let from_cert = req.extensions().get::<ClientCert>().map(|c| c.0.clone());
    let authenticated = match (from_cert, header.and_then(bearer_token)) {
        (Some(identity), _) => Ok(identity),
        (None, Some(token)) => authenticate(&state, token).await,
        (None, None) => return ApiError::from(AuthError::Missing).into_response(),
    };
    match authenticated {
        Ok(identity) => {
            let acting = match super::reviews::impersonation(&state, &identity, req.headers()).await
            {
                Ok(impersonated) => impersonated.unwrap_or(identity),
                Err(e) => return e.into_response(),
            };
            req.extensions_mut().insert(acting.clone());
            // Also on the answer, for the audit log around this layer.
            let mut response = next.run(req).await;
            response.extensions_mut().insert(acting);
            response
        }
        Err(e) => {
            if let AuthError::MalformedSecret { .. } = &e {
                tracing::warn!(error = %e, "refused a node token");
            }
            ApiError::from(e).into_response()
        }
    }
}

// ---- Node tokens -----------------------------------------------------------------------

/// How every join token starts: `wharf-node.<id>.<secret>`.
pub const NODE_TOKEN_PREFIX: &str = "wharf-node.";
/// How every node credential starts: `wharf-node-credential.<id>.<secret>`.
pub const NODE_CREDENTIAL_PREFIX: &str = "wharf-node-credential.";
/// The `type` of a node-credential Secret.
pub const NODE_CREDENTIAL_SECRET_TYPE: &str = "wharf.dev/node-credential";
/// A node-credential Secret is named this followed by the token id.
pub const NODE_CREDENTIAL_SECRET_PREFIX: &str = "wharf-node-credential-";
/// Data key of a node-credential Secret: the node it is for.
pub const NODE_CREDENTIAL_KEY_NODE: &str = "node-name";
/// Where node-token Secrets live.
pub const NODE_TOKEN_NAMESPACE: &str = "kube-system";
/// The `type` of a node-token Secret.
pub const NODE_TOKEN_SECRET_TYPE: &str = "wharf.dev/node-token";
/// A node-token Secret is named this followed by the token id.
pub const NODE_TOKEN_SECRET_PREFIX: &str = "wharf-node-token-";
/// Data keys of a node-token Secret. The secret itself is never stored, only its SHA-256
/// (lowercase hex) under [`NODE_TOKEN_KEY_SECRET_SHA256`].
pub const NODE_TOKEN_KEY_ID: &str = "token-id";
pub const NODE_TOKEN_KEY_SECRET_SHA256: &str = "token-secret-sha256";
/// RFC 3339; absent for a token that never expires.
pub const NODE_TOKEN_KEY_EXPIRATION: &str = "expiration";
pub const NODE_TOKEN_KEY_DESCRIPTION: &str = "description";

const NODE_TOKEN_ID_LEN: usize = 6;
const NODE_TOKEN_SECRET_LEN: usize = 32;
/// Lowercase letters and digits: a token id is part of a Secret's name (a DNS subdomain).
const NODE_TOKEN_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// The two kinds of node tokens: one shape, their own prefix, Secret name and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A join token (`wharf token create`).
    Join,
    /// A node's own credential, obtained with a join token and renewed by the node.
    Credential,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Join => NODE_TOKEN_PREFIX,
            TokenKind::Credential => NODE_CREDENTIAL_PREFIX,
        }
    }

    fn secret_prefix(self) -> &'static str {
        match self {
            TokenKind::Join => NODE_TOKEN_SECRET_PREFIX,
            TokenKind::Credential => NODE_CREDENTIAL_SECRET_PREFIX,
        }
    }

    /// The `type` of its Secrets.
    pub fn secret_type(self) -> &'static str {
        match self {
            TokenKind::Join => NODE_TOKEN_SECRET_TYPE,
            TokenKind::Credential => NODE_CREDENTIAL_SECRET_TYPE,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            TokenKind::Join => "node token",
            TokenKind::Credential => "node credential",
        }
    }
}

/// A node token: `<prefix><id>.<secret>`, the id 6 and the secret 32 characters of
/// `[a-z0-9]` (165 bits). `Debug` hides the secret; `Display` is the whole token.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeToken {
    kind: TokenKind,
    id: String,
    secret: String,
}

impl NodeToken {
    /// A new random join token.
    pub fn generate() -> Self {
        Self::generate_kind(TokenKind::Join)
    }

    /// A new random token of `kind`.
    pub fn generate_kind(kind: TokenKind) -> Self {
        NodeToken {
            kind,
            id: random_string(NODE_TOKEN_ID_LEN),
            secret: random_string(NODE_TOKEN_SECRET_LEN),
        }
    }

    /// The token in `token`, if it has a join token's or a node credential's shape.
    pub fn parse(token: &str) -> Option<Self> {
        let (kind, rest) = [TokenKind::Join, TokenKind::Credential]
            .into_iter()
            .find_map(|k| token.strip_prefix(k.prefix()).map(|rest| (k, rest)))?;
        let (id, secret) = rest.split_once('.')?;
        (is_node_token_id(id)
            && secret.len() == NODE_TOKEN_SECRET_LEN
            && secret.bytes().all(|b| NODE_TOKEN_ALPHABET.contains(&b)))
        .then(|| NodeToken {
            kind,
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// The public half: names the token in `wharf token list` and its Secret.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The name of this token's Secret in [`NODE_TOKEN_NAMESPACE`].
    pub fn secret_name(&self) -> String {
        format!("{}{}", self.kind.secret_prefix(), self.id)
    }

    /// The SHA-256 of the secret half, lowercase hex: what the Secret stores.
    pub fn secret_sha256(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }

    /// The Secret that makes this node credential valid for `node`: what a node sends to
    /// the API (which sets its expiration).
    pub fn to_credential_secret(&self, node: &str) -> Value {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut secret = self.to_secret(None, "");
        secret["data"][NODE_CREDENTIAL_KEY_NODE] = json!(b64(node));
        secret
    }

    /// The Secret that makes this token valid (until `expiration`, if any): what `wharf
    /// token create` sends to the API.
    pub fn to_secret(&self, expiration: Option<Timestamp>, description: &str) -> Value {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut data = serde_json::Map::new();
        data.insert(NODE_TOKEN_KEY_ID.into(), json!(b64(&self.id)));
        data.insert(
            NODE_TOKEN_KEY_SECRET_SHA256.into(),
            json!(b64(&self.secret_sha256())),
        );
        if let Some(at) = expiration {
            data.insert(
                NODE_TOKEN_KEY_EXPIRATION.into(),
                json!(b64(&at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())),
            );
        }
        if !description.is_empty() {
            data.insert(NODE_TOKEN_KEY_DESCRIPTION.into(), json!(b64(description)));
        }
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.secret_name(), "namespace": NODE_TOKEN_NAMESPACE},
            "type": self.kind.secret_type(),
            "data": data,
        })
    }
}

impl fmt::Display for NodeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}.{}", self.kind.prefix(), self.id, self.secret)
    }
}

impl fmt::Debug for NodeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeToken")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Whether `id` has the shape of a node token id.
pub fn is_node_token_id(id: &str) -> bool {
    id.len() == NODE_TOKEN_ID_LEN && id.bytes().all(|b| NODE_TOKEN_ALPHABET.contains(&b))
}

/// The Secret name of token `id`.
pub fn node_token_secret_name(id: &str) -> String {
    format!("{NODE_TOKEN_SECRET_PREFIX}{id}")
}

/// What a node-token Secret says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTokenInfo {
    pub kind: TokenKind,
    pub id: String,
    pub secret_sha256: String,
    pub expiration: Option<Timestamp>,
    pub description: String,
    /// The node a credential is for (`None` for a join token).
    pub node: Option<String>,
}

impl NodeTokenInfo {
    /// Reads a join-token or node-credential Secret in its API form (`data` base64).
    pub fn from_secret(secret: &Value) -> Result<Self, AuthError> {
        let name = secret
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let malformed = |why: String| AuthError::MalformedSecret {
            name: name.to_string(),
            why,
        };
        let ty = secret.get("type").and_then(Value::as_str).unwrap_or("");
        let Some(kind) = [TokenKind::Join, TokenKind::Credential]
            .into_iter()
            .find(|k| k.secret_type() == ty)
        else {
            return Err(malformed(format!(
                "its type is {ty:?}, not {NODE_TOKEN_SECRET_TYPE:?} or {NODE_CREDENTIAL_SECRET_TYPE:?}"
            )));
        };
        let field = |key: &str| -> Result<Option<String>, AuthError> {
            let Some(encoded) = secret.pointer(&format!("/data/{key}")) else {
                return Ok(None);
            };
            let decoded = encoded
                .as_str()
                .and_then(|e| base64::engine::general_purpose::STANDARD.decode(e).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| malformed(format!("data.{key} is not base64 of UTF-8 text")))?;
            Ok(Some(decoded))
        };
        let required =
            |key: &str| field(key)?.ok_or_else(|| malformed(format!("data.{key} is missing")));
        let id = required(NODE_TOKEN_KEY_ID)?;
        if name != format!("{}{id}", kind.secret_prefix()) {
            return Err(malformed(format!(
                "data.{NODE_TOKEN_KEY_ID} {id:?} does not match the name"
            )));
        }
        let expiration = match field(NODE_TOKEN_KEY_EXPIRATION)? {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s.parse::<Timestamp>().map_err(|e| {
                malformed(format!(
                    "data.{NODE_TOKEN_KEY_EXPIRATION} {s:?} is not an RFC 3339 time: {e}"
                ))
            })?),
        };
        let node = match kind {
            TokenKind::Join => None,
            TokenKind::Credential => Some(required(NODE_CREDENTIAL_KEY_NODE)?),
        };
        Ok(NodeTokenInfo {
            kind,
            id,
            secret_sha256: required(NODE_TOKEN_KEY_SECRET_SHA256)?,
            expiration,
            description: field(NODE_TOKEN_KEY_DESCRIPTION)?.unwrap_or_default(),
            node,
        })
    }
}

/// Decides whether `token` matches its Secret's `info` at `now`. The secret is checked
/// (in constant time) before the expiry, so that only the token's holder learns that it
/// expired.
pub fn check_node_token(
    token: &NodeToken,
    info: &NodeTokenInfo,
    now: Timestamp,
) -> Result<Identity, AuthError> {
    let hash_ok = constant_time_eq(
        info.secret_sha256.as_bytes(),
        token.secret_sha256().as_bytes(),
    );
    if !hash_ok || info.id != token.id || info.kind != token.kind {
        return Err(AuthError::Invalid);
    }
    if let Some(at) = info.expiration
        && now >= at
    {
        return Err(AuthError::Expired {
            kind: token.kind,
            id: token.id.clone(),
            at,
        });
    }
    match (token.kind, &info.node) {
        (TokenKind::Join, _) => Ok(Identity::node_bootstrap(&token.id)),
        (TokenKind::Credential, Some(node)) => Ok(Identity::node(node)),
        (TokenKind::Credential, None) => Err(AuthError::Invalid),
    }
}

/// Completes a node-credential Secret a client creates (`obj`, API form), as the API
/// server decides it: its expiration is `now + validity` whatever the client sent, its
/// name follows its id, and a join token (not yet a node) may create one only for a node
/// that holds no unexpired credential: a join token cannot take over a node that joined.
/// `existing` are the node-credential Secrets stored now. Pure; `Err` is the reason to
/// refuse (403).
pub fn complete_credential(
    identity: &Identity,
    obj: &mut Value,
    existing: &[Value],
    now: Timestamp,
    validity: std::time::Duration,
) -> Result<(), String> {
    let info = NodeTokenInfo::from_secret(obj).map_err(|e| e.to_string())?;
    let Some(node) = info.node.as_deref() else {
        return Err("a node credential names its node".into());
    };
    if !crate::api::validation::is_dns1123_subdomain(node) {
        return Err(format!("{node:?} is not a valid node name"));
    }
    if identity.in_group(GROUP_BOOTSTRAPPERS) {
        let held = existing.iter().any(|s| {
            NodeTokenInfo::from_secret(s).is_ok_and(|i| {
                i.node.as_deref() == Some(node) && i.expiration.is_none_or(|at| at > now)
            })
        });
        if held {
            return Err(format!(
                "node {node:?} already holds a credential; a join token cannot replace it \
                 (delete its {NODE_CREDENTIAL_SECRET_TYPE} Secrets in {NODE_TOKEN_NAMESPACE} to \
                 let the node join again)"
            ));
        }
    }
    let validity = jiff::SignedDuration::try_from(validity).map_err(|e| e.to_string())?;
    let expiration = now
        .checked_add(validity)
        .map_err(|e| e.to_string())?
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    obj["data"][NODE_TOKEN_KEY_EXPIRATION] =
        json!(base64::engine::general_purpose::STANDARD.encode(expiration));
    // `stringData` would be merged over `data` after this: the server's word is final.
    if let Some(map) = obj.as_object_mut() {
        map.remove("stringData");
    }
    Ok(())
}

/// Looks `token`'s Secret up (one `get`, always current) and checks it.
pub async fn authenticate_node_token(
    store: &dyn Store,
    token: &NodeToken,
    now: Timestamp,
) -> Result<Identity, AuthError> {
    let key = object_key("", "secrets", NODE_TOKEN_NAMESPACE, &token.secret_name());
    let stored = store
        .get(&key)
        .await
        .map_err(AuthError::Store)?
        .ok_or(AuthError::Invalid)?;
    let secret = decode(&stored).map_err(|e| AuthError::MalformedSecret {
        name: token.secret_name(),
        why: e.to_string(),
    })?;
    check_node_token(token, &NodeTokenInfo::from_secret(&secret)?, now)
}

/// Admission of a create by `identity` (before defaults and validation): what a node may
/// put in the objects it creates ([`super::authz::admit_create`]), and node credentials
/// completed as the server decides ([`complete_credential`]). 403 when refused.
pub async fn admit_create(
    state: &AppState,
    identity: &Identity,
    kind: &crate::api::ResourceKind,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let forbidden = |why: String| {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        ApiError::Forbidden(format!(
            "{} \"{name}\" is forbidden: {why}",
            kind.qualified_plural()
        ))
    };
    super::authz::admit_create(identity, kind, obj).map_err(forbidden)?;
    let credential = kind.group.is_empty()
        && kind.kind == "Secret"
        && obj.get("type").and_then(Value::as_str) == Some(NODE_CREDENTIAL_SECRET_TYPE);
    if !credential {
        return Ok(());
    }
    let prefix = crate::store::collection_prefix("", "secrets", Some(NODE_TOKEN_NAMESPACE));
    let stored = state
        .store
        .list(&prefix)
        .await
        .map_err(|e| ApiError::from_store(e, Subject::default()))?;
    let existing: Vec<Value> = stored
        .items
        .iter()
        .filter_map(|s| decode(s).ok())
        .filter(|s| s.get("type").and_then(Value::as_str) == Some(NODE_CREDENTIAL_SECRET_TYPE))
        .collect();
    let validity = state.config.node_credential_validity;
    let mut completed = obj.clone();
    complete_credential(
        identity,
        &mut completed,
        &existing,
        Timestamp::now(),
        validity,
    )
    .map_err(forbidden)?;
    *obj = completed;
    Ok(())
}

fn random_string(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| NODE_TOKEN_ALPHABET[rng.random_range(0..NODE_TOKEN_ALPHABET.len())] as char)
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_any_case() {
        for h in ["Bearer abc", "bearer abc", "BEARER abc", "  Bearer   abc  "] {
            assert_eq!(bearer_token(h), Some("abc"), "{h:?}");
        }
        for h in ["", "Bearer", "Bearer ", "Basic abc", "Bearerabc", "abc"] {
            assert_eq!(bearer_token(h), None, "{h:?}");
        }
    }

    #[test]
    fn token_files_read_like_kube_apiserver() {
        let got =
            parse_token_file("# users\nt1,alice,u1\n\nt2,bob,u2,\"dev,ops\"\nt3,carol,u3,qa\n")
                .expect("valid");
        let users: Vec<(&str, &str, Vec<&str>)> = got
            .iter()
            .map(|(t, i)| {
                (
                    t.as_str(),
                    i.user.as_str(),
                    i.groups.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            users,
            [
                ("t1", "alice", vec!["system:authenticated"]),
                ("t2", "bob", vec!["dev", "ops", "system:authenticated"]),
                ("t3", "carol", vec!["qa", "system:authenticated"]),
            ]
        );
        let err = parse_token_file("t1,alice,u1\nt2,bob\n").expect_err("two columns");
        assert!(err.starts_with("line 2:"), "{err}");
    }

    #[test]
    fn tokens_authenticate_exactly() {
        let auth = Authenticator::new();
        let t = generate_token();
        assert_eq!(t.len(), 64);
        auth.add_token(t.clone(), Identity::admin());
        assert_eq!(auth.authenticate(&t), Some(Identity::admin()));
        assert_eq!(auth.authenticate(&t[..63]), None);
        assert_eq!(auth.authenticate(""), None);
        assert_ne!(generate_token(), t);
    }

    fn info_of(token: &NodeToken, expiration: Option<Timestamp>) -> NodeTokenInfo {
        NodeTokenInfo::from_secret(&token.to_secret(expiration, "a laptop")).expect("valid")
    }

    #[test]
    fn node_tokens_round_trip_and_hide_their_secret() {
        let token = NodeToken::generate();
        let text = token.to_string();
        assert!(text.starts_with("wharf-node."), "{text}");
        assert_eq!(text.len(), "wharf-node.".len() + 6 + 1 + 32);
        assert_eq!(NodeToken::parse(&text), Some(token.clone()));
        assert!(!format!("{token:?}").contains(&token.secret));
        for bad in [
            "",
            "wharf-node.",
            "wharf-node.abc123",
            "wharf-node.ABC123.0123456789abcdefghijklmnopqrstuv",
            "wharf-node.abc12.0123456789abcdefghijklmnopqrstuv",
            "wharf-node.abc123.0123456789abcdefghijklmnopqrstu",
            "wharf-node.abc123.0123456789abcdefghijklmnopqrstuv.x",
            "other.abc123.0123456789abcdefghijklmnopqrstuv",
        ] {
            assert_eq!(NodeToken::parse(bad), None, "{bad}");
        }

        let secret = token.to_secret(None, "a laptop");
        assert_eq!(secret["type"], NODE_TOKEN_SECRET_TYPE);
        assert_eq!(
            secret["metadata"]["name"],
            format!("wharf-node-token-{}", token.id())
        );
        // Only the hash is stored.
        assert!(!secret.to_string().contains(&token.secret));
        let info = info_of(&token, None);
        assert_eq!(info.id, token.id());
        assert_eq!(info.description, "a laptop");
        assert_eq!(info.secret_sha256, token.secret_sha256());
        assert_eq!(info.secret_sha256.len(), 64);
    }

    #[test]
    fn node_tokens_are_checked_against_hash_and_expiry() {
        let now: Timestamp = "2030-01-01T00:00:00Z".parse().expect("time");
        let token = NodeToken::generate();
        let identity = check_node_token(&token, &info_of(&token, None), now).expect("valid");
        assert_eq!(
            identity.user,
            format!("system:node-bootstrap:{}", token.id())
        );
        assert_eq!(
            identity.groups,
            ["system:bootstrappers", "system:authenticated"]
        );

        let later = now + jiff::SignedDuration::from_hours(1);
        assert!(check_node_token(&token, &info_of(&token, Some(later)), now).is_ok());
        let err = check_node_token(&token, &info_of(&token, Some(now)), now).expect_err("expired");
        assert!(matches!(err, AuthError::Expired { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "the node token {} expired at 2030-01-01T00:00:00Z",
                token.id()
            )
        );

        // Another secret with the same id: invalid, and expiry is not revealed.
        let forged = NodeToken {
            kind: TokenKind::Join,
            id: token.id.clone(),
            secret: NodeToken::generate().secret,
        };
        let err = check_node_token(&forged, &info_of(&token, Some(now)), now).expect_err("forged");
        assert!(matches!(err, AuthError::Invalid), "{err}");
    }

    #[test]
    fn node_credentials_name_their_node_and_get_the_servers_expiration() {
        let now: Timestamp = "2030-01-01T00:00:00Z".parse().expect("time");
        let validity = std::time::Duration::from_secs(3600);
        let cred = NodeToken::generate_kind(TokenKind::Credential);
        let text = cred.to_string();
        assert!(text.starts_with("wharf-node-credential."), "{text}");
        assert_eq!(NodeToken::parse(&text), Some(cred.clone()));
        let mut secret = cred.to_credential_secret("node-1");
        assert_eq!(secret["type"], NODE_CREDENTIAL_SECRET_TYPE);
        // The client's own expiration is overwritten.
        secret["data"]["expiration"] = json!("MjEwMC0wMS0wMVQwMDowMDowMFo=");
        secret["stringData"] = json!({"expiration": "2100-01-01T00:00:00Z"});
        let boot = Identity::node_bootstrap("abc123");
        complete_credential(&boot, &mut secret, &[], now, validity).expect("first credential");
        assert!(secret.get("stringData").is_none());
        let info = NodeTokenInfo::from_secret(&secret).expect("valid");
        assert_eq!(info.node.as_deref(), Some("node-1"));
        assert_eq!(
            info.expiration,
            Some(now + jiff::SignedDuration::from_hours(1))
        );
        let identity = check_node_token(&cred, &info, now).expect("valid");
        assert_eq!(identity, Identity::node("node-1"));
        assert_eq!(identity.user, "system:node:node-1");
        // A join token's secret is not a credential's, and the other way round.
        let join_shaped = NodeToken {
            kind: TokenKind::Join,
            id: cred.id.clone(),
            secret: cred.secret.clone(),
        };
        assert!(matches!(
            check_node_token(&join_shaped, &info, now),
            Err(AuthError::Invalid)
        ));

        // A join token cannot take over a node that holds a live credential...
        let mut again =
            NodeToken::generate_kind(TokenKind::Credential).to_credential_secret("node-1");
        let err = complete_credential(&boot, &mut again, &[secret.clone()], now, validity)
            .expect_err("node-1 holds one");
        assert!(err.contains("already holds a credential"), "{err}");
        // ...but the node renews its own, and an expired one does not count.
        complete_credential(
            &Identity::node("node-1"),
            &mut again,
            &[secret.clone()],
            now,
            validity,
        )
        .expect("renewal");
        let later = now + jiff::SignedDuration::from_hours(2);
        let mut rejoin =
            NodeToken::generate_kind(TokenKind::Credential).to_credential_secret("node-1");
        complete_credential(&boot, &mut rejoin, &[secret], later, validity).expect("rejoin");
        let mut bad =
            NodeToken::generate_kind(TokenKind::Credential).to_credential_secret("Node_1");
        assert!(complete_credential(&boot, &mut bad, &[], now, validity).is_err());
    }

    #[test]
    fn malformed_node_token_secrets_are_refused() {
        let token = NodeToken::generate();
        let mut secret = token.to_secret(None, "");
        secret["type"] = json!("Opaque");
        assert!(matches!(
            NodeTokenInfo::from_secret(&secret),
            Err(AuthError::MalformedSecret { .. })
        ));
        let mut secret = token.to_secret(None, "");
        secret["data"]["expiration"] = json!("bm90IGEgdGltZQ=="); // "not a time"
        assert!(NodeTokenInfo::from_secret(&secret).is_err());
        let mut secret = token.to_secret(None, "");
        secret["metadata"]["name"] = json!("wharf-node-token-zzzzzz");
        assert!(NodeTokenInfo::from_secret(&secret).is_err());
    }
}
