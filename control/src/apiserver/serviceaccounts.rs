//! ServiceAccount tokens: what a pod (or a CI job) presents to act as its ServiceAccount.
//!
//! As kube-apiserver issues them: a TokenRequest (`authentication.k8s.io/v1`, `POST
//! .../serviceaccounts/NAME/token`, what `kubectl create token` sends) answers a JWT
//! signed with the cluster's ServiceAccount key (ES256; `DATA_DIR/pki/sa.key`, mode 0600,
//! made on the first start, see [`crate::pki`]). Its claims are Kubernetes': `iss`
//! (`--service-account-issuer`), `aud`, `exp`/`iat`/`nbf`, `sub`
//! `system:serviceaccount:NS:NAME`, and `kubernetes.io` naming the namespace, the
//! ServiceAccount (name and uid) and, for a bound token, the object it is bound to (a
//! pod, a Secret or a node, name and uid).
//!
//! Why the uids: a token outlives nothing it names. The authenticator checks the
//! signature, issuer, audience and times ([`TokenIssuer::verify`], pure, the clock passed
//! in), then looks the ServiceAccount up, and the bound object, and refuses the token
//! when one is gone or was replaced by another of the same name (another uid): deleting
//! the ServiceAccount, or the pod a token was bound to, revokes the token for the next
//! request, with no list of revoked tokens to keep.
//!
//! The issuer's public key is published as OpenID Connect discovery
//! (`/.well-known/openid-configuration`, JWKS at `/openid/v1/jwks`), readable by the
//! `system:service-account-issuer-discovery` role, so that other systems can verify a
//! pod's token without asking the cluster. `TokenReview` asks the cluster instead.
//!
//! Pods run as a ServiceAccount: `default` unless they name one, which must exist
//! ([`admit_pod`], as Kubernetes' ServiceAccount admission).

use super::AppState;
use super::auth::{AuthError, GROUP_AUTHENTICATED, Identity};
use super::authz::{self, Verb};
use super::error::{ApiError, Subject};
use super::objects::{decode, json_response};
use super::registry::subresources::{Serve, SubRequest, Subresource};
use super::request::{JSON, Target, read_json};
use crate::api::validation::FieldError;
use crate::store::object_key;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::future::BoxFuture;
use http::{Method, StatusCode};
use jiff::Timestamp;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

/// The issuer when `--service-account-issuer` is not given, as clusters name themselves.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Every ServiceAccount is in this group, and in `system:serviceaccounts:NS`.
pub const GROUP_SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
/// A ServiceAccount's user name is this followed by `NS:NAME`.
pub const USER_PREFIX: &str = "system:serviceaccount:";
/// How long a token lives when the request does not say (as Kubernetes).
pub const DEFAULT_EXPIRATION: Duration = Duration::from_secs(3600);
/// The shortest token Kubernetes issues.
pub const MIN_EXPIRATION: Duration = Duration::from_secs(600);
/// How far a token's `nbf` may be ahead of our clock (a clock a little behind the issuer).
const NBF_LEEWAY_SECONDS: i64 = 60;
/// Where the JWKS is served.
pub const JWKS_PATH: &str = "/openid/v1/jwks";
/// Where the OpenID discovery document is served.
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";

/// The identity of ServiceAccount `name` in `namespace`.
pub fn identity(namespace: &str, name: &str) -> Identity {
    Identity {
        user: format!("{USER_PREFIX}{namespace}:{name}"),
        groups: vec![
            GROUP_SERVICE_ACCOUNTS.into(),
            format!("{GROUP_SERVICE_ACCOUNTS}:{namespace}"),
            GROUP_AUTHENTICATED.into(),
        ],
    }
}

/// Why a ServiceAccount token is refused (401), or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not valid")]
    Invalid,
    #[error("service account token has expired")]
    Expired,
    #[error("service account token is not valid yet")]
    NotYetValid,
    #[error("service account token has been invalidated")]
    Invalidated,
    #[error("the service account signing key: {0}")]
    Key(String),
}

impl From<TokenError> for AuthError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Invalid | TokenError::Key(_) => AuthError::Invalid,
            other => AuthError::ServiceAccount(other.to_string()),
        }
    }
}

/// A name and uid in the `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaim {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Ref>,
}

/// A ServiceAccount token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
}

/// The key and settings tokens are signed and checked with.
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    /// The public key's coordinates, base64url (the JWK's `x` and `y`).
    x: String,
    y: String,
    /// `iss` of every token (`--service-account-issuer`).
    pub issuer: String,
    /// What a token must be for to authenticate to this API (kube-apiserver's
    /// `--api-audiences`, by default the issuer); new tokens are for these unless the
    /// request says.
    pub audiences: Vec<String>,
    /// The longest life a token gets (`--service-account-max-token-expiration`).
    pub max_expiration: Option<Duration>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte uncompressed point.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenIssuer {
    /// An issuer signing with the ECDSA P-256 key `pkcs8` (DER).
    pub fn new(
        pkcs8: &[u8],
        issuer: impl Into<String>,
        max_expiration: Option<Duration>,
    ) -> Result<Self, TokenError> {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|e| TokenError::Key(format!("not an ECDSA P-256 PKCS#8 key: {e}")))?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(TokenError::Key("unexpected public key encoding".into()));
        }
        let (x, y) = (b64url(&point[1..33]), b64url(&point[33..65]));
        let decoding =
            DecodingKey::from_ec_components(&x, &y).map_err(|e| TokenError::Key(e.to_string()))?;
        // As kube-apiserver names its keys: the SHA-256 of the public key's DER.
        let spki = [P256_SPKI_PREFIX, point].concat();
        let kid = b64url(ring::digest::digest(&ring::digest::SHA256, &spki).as_ref());
        let issuer = issuer.into();
        Ok(TokenIssuer {
            encoding: EncodingKey::from_ec_der(pkcs8),
            decoding,
            kid,
            x,
            y,
            audiences: vec![issuer.clone()],
            issuer,
            max_expiration,
        })
    }

    /// An issuer with a new random key (tests).
    pub fn generate(issuer: impl Into<String>) -> Result<Self, TokenError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .map_err(|e| TokenError::Key(e.to_string()))?;
        Self::new(pkcs8.as_ref(), issuer, None)
    }

    /// The id of the signing key, in every token's header and in the JWKS.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// How long a token asked to live `requested` gets: at most the maximum.
    pub fn expiration(&self, requested: Duration) -> Duration {
        match self.max_expiration {
            Some(max) if requested > max => max,
            _ => requested,
        }
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| TokenError::Key(e.to_string()))
    }

    /// The claims of `token` if it is one of ours, for one of `audiences`, and valid at
    /// `now`. Pure: the stored objects it names are checked by [`authenticate`].
    pub fn verify(
        &self,
        token: &str,
        audiences: &[String],
        now: Timestamp,
    ) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::ES256 || header.kid.as_deref().is_some_and(|k| k != self.kid) {
            return Err(TokenError::Invalid);
        }
        let mut validation = Validation::new(Algorithm::ES256);
        // Times are checked below against the clock we are given.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(audiences);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| TokenError::Invalid)?
            .claims;
        let now = now.as_second();
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now + NBF_LEEWAY_SECONDS {
            return Err(TokenError::NotYetValid);
        }
        let k = &claims.kubernetes;
        if claims.sub != format!("{USER_PREFIX}{}:{}", k.namespace, k.serviceaccount.name) {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }

    /// The JWKS: the public key that verifies every token.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
            "x": self.x, "y": self.y,
        }]})
    }

    /// The OpenID Connect discovery document.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}{JWKS_PATH}", self.issuer.trim_end_matches('/')),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}

/// What a token is bound to, besides its ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// `Pod`, `Secret` or `Node`.
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// The claims of a new token for the ServiceAccount `sa` (`name`, `uid`) in `namespace`,
/// issued at `now` for `expiration`, bound to `bound`.
pub fn claims_for(
    issuer: &TokenIssuer,
    namespace: &str,
    sa: &Ref,
    audiences: Vec<String>,
    bound: Option<&Bound>,
    now: Timestamp,
    expiration: Duration,
) -> Claims {
    let at = now.as_second();
    let r = |b: &Bound| Ref {
        name: b.name.clone(),
        uid: b.uid.clone(),
    };
    let of = |kind: &str| bound.filter(|b| b.kind == kind).map(r);
    Claims {
        iss: issuer.issuer.clone(),
        sub: format!("{USER_PREFIX}{namespace}:{}", sa.name),
        aud: audiences,
        exp: at.saturating_add(i64::try_from(expiration.as_secs()).unwrap_or(i64::MAX)),
        iat: at,
        nbf: at,
        jti: uuid::Uuid::new_v4().to_string(),
        kubernetes: KubernetesClaim {
            namespace: namespace.into(),
            serviceaccount: sa.clone(),
            pod: of("Pod"),
            secret: of("Secret"),
            node: of("Node"),
        },
    }
}

// ---- Authentication ---------------------------------------------------------------------

/// Whether `token` has a JWT's shape (three base64url parts), so that only such tokens
/// are verified as ServiceAccount tokens.
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.split('.').count() == 3
}

/// The uid of the stored object `plural` `ns/name` (`ns` empty for cluster scope), `None`
/// when there is none.
async fn stored_uid(
    state: &AppState,
    plural: &str,
    ns: &str,
    name: &str,
) -> Result<Option<String>, AuthError> {
    let Some(stored) = state
        .store
        .get(&object_key("", plural, ns, name))
        .await
        .map_err(AuthError::Store)?
    else {
        return Ok(None);
    };
    let obj = decode(&stored).map_err(|_| AuthError::Invalid)?;
    Ok(obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(String::from))
}

/// The identity and claims of ServiceAccount token `token` for one of `audiences` at
/// `now`: valid ([`TokenIssuer::verify`]), and its ServiceAccount and bound object still
/// the ones it names.
pub async fn authenticate(
    state: &AppState,
    issuer: &TokenIssuer,
    token: &str,
    audiences: &[String],
    now: Timestamp,
) -> Result<(Identity, Claims), AuthError> {
    let claims = issuer.verify(token, audiences, now)?;
    let k = &claims.kubernetes;
    let invalidated = |why: String| {
        tracing::debug!(%why, "refused a service account token");
        AuthError::from(TokenError::Invalidated)
    };
    let sa = &k.serviceaccount;
    match stored_uid(state, "serviceaccounts", &k.namespace, &sa.name).await? {
        Some(uid) if uid == sa.uid => {}
        Some(uid) => {
            return Err(invalidated(format!(
                "service account UID ({uid}) does not match claim ({})",
                sa.uid
            )));
        }
        None => {
            return Err(invalidated(format!(
                "service account {}/{} has been deleted",
                k.namespace, sa.name
            )));
        }
    }
    let bound = [
        ("pods", k.namespace.as_str(), &k.pod),
        ("secrets", k.namespace.as_str(), &k.secret),
        ("nodes", "", &k.node),
    ];
    for (plural, ns, r) in bound {
        let Some(r) = r else { continue };
        match stored_uid(state, plural, ns, &r.name).await? {
            Some(uid) if uid == r.uid => {}
            other => {
                return Err(invalidated(format!(
                    "bound {plural} {ns}/{} is gone (uid {other:?}, claim {})",
                    r.name, r.uid
                )));
            }
        }
    }
    Ok((identity(&k.namespace, &sa.name), claims))
}

// ---- TokenRequest -----------------------------------------------------------------------

/// `serviceaccounts/NAME/token`: a TokenRequest.
pub static TOKEN: Subresource = Subresource {
    name: "token",
    body: Some(("authentication.k8s.io", "v1", "TokenRequest")),
    schema: Some(crate::api::typed::schema::<k8s_openapi::api::authentication::v1::TokenRequest>),
    verbs: &["create"],
    serve: Serve::Handler(handle_token_request),
};

fn handle_token_request(req: SubRequest<'_>) -> BoxFuture<'_, Result<Response, ApiError>> {
    Box::pin(async move {
        let identity = req.parts.extensions.get::<Identity>().cloned();
        token_request(
            req.state,
            req.target,
            identity.as_ref(),
            req.parts,
            req.body,
        )
        .await
    })
}

fn invalid_request(name: &str, causes: Vec<FieldError>) -> ApiError {
    ApiError::invalid(
        Subject {
            group: "authentication.k8s.io".into(),
            resource: "TokenRequest".into(),
            name: name.into(),
        },
        "TokenRequest.authentication.k8s.io",
        causes,
    )
}

/// What a TokenRequest's `spec` asks: audiences, lifetime, the object to bind to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub audiences: Vec<String>,
    pub expiration: Duration,
    /// Kind, name and uid (when the request names one) of `boundObjectRef`.
    pub bound: Option<(String, String, Option<String>)>,
}

/// Reads and checks a TokenRequest's `spec`, as Kubernetes validates it.
pub fn token_spec(name: &str, body: &Value) -> Result<TokenSpec, ApiError> {
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    let mut errs = Vec::new();
    let audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let seconds = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_EXPIRATION.as_secs() as i64);
    if seconds < MIN_EXPIRATION.as_secs() as i64 {
        errs.push(FieldError::new(
            "spec.expirationSeconds",
            crate::api::validation::Reason::Invalid,
            Some(seconds.to_string()),
            "may not specify a duration less than 10 minutes",
        ));
    } else if seconds > 1 << 32 {
        errs.push(FieldError::new(
            "spec.expirationSeconds",
            crate::api::validation::Reason::Invalid,
            Some(seconds.to_string()),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let mut bound = None;
    if let Some(r) = spec.get("boundObjectRef").filter(|r| r.is_object()) {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
        let (kind, api_version) = (s("kind"), s("apiVersion"));
        if !matches!(kind, "Pod" | "Secret" | "Node") {
            errs.push(FieldError::new(
                "spec.boundObjectRef.kind",
                crate::api::validation::Reason::NotSupported,
                Some(format!("{kind:?}")),
                "supported values: \"Pod\", \"Secret\", \"Node\"",
            ));
        } else if !api_version.is_empty() && api_version != "v1" {
            errs.push(FieldError::invalid(
                "spec.boundObjectRef.apiVersion",
                api_version,
                "only v1 is supported",
            ));
        }
        if s("name").is_empty() {
            errs.push(FieldError::required("spec.boundObjectRef.name", ""));
        }
        bound = Some((
            kind.to_string(),
            s("name").to_string(),
            Some(s("uid").to_string()).filter(|u| !u.is_empty()),
        ));
    }
    if !errs.is_empty() {
        return Err(invalid_request(name, errs));
    }
    Ok(TokenSpec {
        audiences,
        expiration: Duration::from_secs(seconds.max(0) as u64),
        bound,
    })
}

/// Handles `POST .../serviceaccounts/NAME/token`.
async fn token_request(
    state: &AppState,
    target: &Target,
    identity: Option<&Identity>,
    parts: &http::request::Parts,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let (Some(ns), Some(name)) = (target.namespace.as_deref(), target.name.as_deref()) else {
        return Err(ApiError::MethodNotAllowed(
            "a TokenRequest names its ServiceAccount: POST .../serviceaccounts/NAME/token".into(),
        ));
    };
    if parts.method != Method::POST {
        return Err(ApiError::MethodNotAllowed(format!(
            "{} is not supported on serviceaccounts/token; use POST",
            parts.method
        )));
    }
    authz::enforce(state, identity, Verb::Create, target).await?;
    let Some(issuer) = state.auth.token_issuer() else {
        return Err(ApiError::ServiceUnavailable(
            "this server issues no service account tokens".into(),
        ));
    };
    let mut obj = read_json(body, &parts.headers, state, JSON).await?;
    if !obj.is_object() {
        return Err(ApiError::BadRequest(
            "the body of a token request must be a TokenRequest object".into(),
        ));
    }
    let spec = token_spec(name, &obj)?;
    let store_err = |e| ApiError::from_store(e, Subject::default());
    let sa = match state
        .store
        .get(&object_key("", "serviceaccounts", ns, name))
        .await
        .map_err(store_err)?
    {
        Some(stored) => decode(&stored)?,
        None => {
            return Err(ApiError::not_found(Subject {
                group: String::new(),
                resource: "serviceaccounts".into(),
                name: name.into(),
            }));
        }
    };
    let sa_ref = Ref {
        name: name.into(),
        uid: sa
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
    };
    let bound = match &spec.bound {
        None => None,
        Some((kind, bound_name, want_uid)) => {
            let (plural, bound_ns) = match kind.as_str() {
                "Pod" => ("pods", ns),
                "Secret" => ("secrets", ns),
                _ => ("nodes", ""),
            };
            let stored = state
                .store
                .get(&object_key("", plural, bound_ns, bound_name))
                .await
                .map_err(store_err)?;
            let obj = match stored {
                Some(s) => decode(&s)?,
                None => {
                    return Err(ApiError::not_found(Subject {
                        group: String::new(),
                        resource: plural.into(),
                        name: bound_name.clone(),
                    }));
                }
            };
            let uid = obj
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if want_uid.as_ref().is_some_and(|u| *u != uid) {
                return Err(ApiError::conflict(
                    Subject {
                        group: String::new(),
                        resource: plural.into(),
                        name: bound_name.clone(),
                    },
                    &format!(
                        "the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated",
                        want_uid.as_deref().unwrap_or_default()
                    ),
                ));
            }
            if let Some(user) = identity {
                node_may_request(user, kind, &obj, name)?;
            }
            Some(Bound {
                kind: kind.clone(),
                name: bound_name.clone(),
                uid,
            })
        }
    };
    if identity.is_some_and(|u| authz::node_name(u).is_some())
        && bound.as_ref().is_none_or(|b| b.kind != "Pod")
    {
        return Err(ApiError::Forbidden(format!(
            "serviceaccounts \"{name}\" is forbidden: a node may only request tokens bound to its own pods"
        )));
    }
    let audiences = if spec.audiences.is_empty() {
        issuer.audiences.clone()
    } else {
        spec.audiences.clone()
    };
    let expiration = issuer.expiration(spec.expiration);
    let now = Timestamp::now();
    let claims = claims_for(
        &issuer,
        ns,
        &sa_ref,
        audiences.clone(),
        bound.as_ref(),
        now,
        expiration,
    );
    let token = issuer
        .sign(&claims)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let expires = Timestamp::from_second(claims.exp)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    obj["apiVersion"] = json!("authentication.k8s.io/v1");
    obj["kind"] = json!("TokenRequest");
    obj["metadata"] = json!({"name": name, "namespace": ns,
        "creationTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()});
    obj["spec"]["audiences"] = json!(audiences);
    obj["spec"]["expirationSeconds"] = json!(expiration.as_secs());
    if let Some(b) = &bound {
        obj["spec"]["boundObjectRef"]["uid"] = json!(b.uid);
        obj["spec"]["boundObjectRef"]["apiVersion"] = json!("v1");
    }
    obj["status"] = json!({"token": token, "expirationTimestamp": expires});
    Ok(json_response(StatusCode::CREATED, &obj))
}

/// A node asks for tokens only for the ServiceAccount of a pod bound to it, bound to that
/// pod (as Kubernetes' Node authorizer and NodeRestriction have it). Others pass.
fn node_may_request(
    user: &Identity,
    kind: &str,
    bound: &Value,
    service_account: &str,
) -> Result<(), ApiError> {
    let Some(node) = authz::node_name(user) else {
        return Ok(());
    };
    let on_node = bound.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node);
    let runs_as = bound
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        == Some(service_account);
    if kind == "Pod" && on_node && runs_as {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "serviceaccounts \"{service_account}\" is forbidden: User \"{}\" may only request tokens for the service account of a pod bound to node \"{node}\", bound to that pod",
            user.user
        )))
    }
}

// ---- TokenReview ------------------------------------------------------------------------

/// A TokenReview's `status` for its `spec` (`token`, `audiences`): who the token is, as
/// every request with it would be authenticated.
pub async fn review_status(state: &AppState, spec: &Value) -> Value {
    let token = spec
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let asked: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let failed = |e: String| json!({"authenticated": false, "error": e});
    if looks_like_jwt(token)
        && let Some(issuer) = state.auth.token_issuer()
    {
        let audiences = if asked.is_empty() {
            issuer.audiences.clone()
        } else {
            asked.clone()
        };
        return match authenticate(state, &issuer, token, &audiences, Timestamp::now()).await {
            Ok((who, claims)) => {
                let k = &claims.kubernetes;
                let mut extra = serde_json::Map::new();
                if let Some(pod) = &k.pod {
                    extra.insert(
                        "authentication.kubernetes.io/pod-name".into(),
                        json!([pod.name]),
                    );
                    extra.insert(
                        "authentication.kubernetes.io/pod-uid".into(),
                        json!([pod.uid]),
                    );
                }
                let granted: Vec<&String> = claims
                    .aud
                    .iter()
                    .filter(|a| audiences.contains(a))
                    .collect();
                json!({
                    "authenticated": true,
                    "user": {"username": who.user, "uid": k.serviceaccount.uid,
                             "groups": who.groups, "extra": extra},
                    "audiences": granted,
                })
            }
            Err(e) => failed(e.to_string()),
        };
    }
    // Other tokens are for this API only: for other audiences they say nothing.
    if !asked.is_empty()
        && state
            .auth
            .token_issuer()
            .is_none_or(|i| !asked.iter().any(|a| i.audiences.contains(a)))
    {
        return failed("token audiences don't match".into());
    }
    match super::auth::authenticate(state, token).await {
        Ok(who) => json!({"authenticated": true,
            "user": {"username": who.user, "groups": who.groups}}),
        Err(e) => failed(e.to_string()),
    }
}

// ---- Issuer discovery -------------------------------------------------------------------

/// `GET /.well-known/openid-configuration`.
pub async fn openid_configuration(State(state): State<AppState>) -> Response {
    match state.auth.token_issuer() {
        Some(issuer) => json_response(StatusCode::OK, &issuer.openid_configuration()),
        None => not_served().into_response(),
    }
}

/// `GET /openid/v1/jwks`.
pub async fn jwks(State(state): State<AppState>) -> Response {
    match state.auth.token_issuer() {
        Some(issuer) => {
            let mut resp = json_response(StatusCode::OK, &issuer.jwks());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/jwk-set+json"),
            );
            resp
        }
        None => not_served().into_response(),
    }
}

fn not_served() -> ApiError {
    ApiError::NotFound {
        subject: Subject::default(),
        message: "the server could not find the requested resource".into(),
    }
}

// ---- Pod admission ----------------------------------------------------------------------

/// A pod's ServiceAccount, as Kubernetes' ServiceAccount admission settles it on create:
/// `spec.serviceAccountName` (defaulted to `default`) must name an existing ServiceAccount
/// (403 otherwise, in Kubernetes' words; `default` alone may be missing for the moment
/// the controller takes to create it in a new namespace),
/// `automountServiceAccountToken` unset takes the ServiceAccount's, else `true`, and a pod
/// without `imagePullSecrets` gets its ServiceAccount's (which the node pulls with).
pub async fn admit_pod(state: &AppState, target: &Target, pod: &mut Value) -> Result<(), ApiError> {
    let ns = target.namespace.as_deref().unwrap_or("default");
    let name = pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or(crate::controllers::serviceaccount::DEFAULT)
        .to_string();
    let sa = state
        .store
        .get(&object_key("", "serviceaccounts", ns, &name))
        .await
        .map_err(|e| ApiError::from_store(e, Subject::default()))?;
    let sa = match sa {
        Some(stored) => Some(decode(&stored)?),
        None if name == crate::controllers::serviceaccount::DEFAULT => None,
        None => {
            let pod_name = pod
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(ApiError::Forbidden(format!(
                "pods \"{pod_name}\" is forbidden: error looking up service account {ns}/{name}: serviceaccount \"{name}\" not found"
            )));
        }
    };
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    // A pod that names no pull secrets pulls with its ServiceAccount's.
    let none = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if let Some(secrets) = sa
        .as_ref()
        .and_then(|s| s.get("imagePullSecrets"))
        .and_then(Value::as_array)
        .filter(|s| none && !s.is_empty())
    {
        spec.insert("imagePullSecrets".into(), Value::Array(secrets.clone()));
    }
    if !spec
        .get("automountServiceAccountToken")
        .is_some_and(Value::is_boolean)
    {
        let from_sa = sa
            .as_ref()
            .and_then(|s| s.get("automountServiceAccountToken"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        spec.insert("automountServiceAccountToken".into(), json!(from_sa));
    }
    Ok(())
}

/// Whether the node should mount a token into `pod`'s containers (after admission).
pub fn automount(pod: &Value) -> bool {
    pod.pointer("/spec/automountServiceAccountToken")
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

#[cfg(test)]
mod tests;
