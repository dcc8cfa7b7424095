//! Discovery: which groups, versions and resources the server offers, and `/version`.
//!
//! Generated from the kinds table, so a kind added there is discoverable with no other
//! change; the groups CustomResourceDefinitions add are read from the server's kinds
//! ([`super::registry::custom::Kinds`]) as stored at the request. Two shapes are served, as kube-apiserver serves them:
//!
//! - the legacy documents (`APIVersions`, `APIGroupList`, `APIGroup`, `APIResourceList`),
//!   one request per group-version, which every client understands;
//! - aggregated discovery (`APIGroupDiscoveryList`, `apidiscovery.k8s.io` v2 and
//!   v2beta1) on `/api` and `/apis`, all resources of all groups in one response, which
//!   kubectl and client-go ask for first. Only a client whose `Accept` header names it
//!   gets it, and the response's `Content-Type` says which version was chosen: client-go
//!   decides how to read the body from that header alone.
//!
//! Each resource lists the verbs and subresources the handlers really serve (see
//! [`super::resources`]): a client that trusts discovery never meets a 404 or 405 it could
//! not have predicted. The reviews ([`super::reviews`]: TokenReview, SubjectAccessReview,
//! the SelfSubject reviews) are no kinds of the registry (never stored, create only), so
//! they are added from their own table ([`review_resources`]), as kube-apiserver lists them.

use super::AppState;
use super::error::ApiError;
use crate::api::kinds::{KINDS, ResourceKind};
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http::{HeaderMap, HeaderValue, header};
use serde_json::{Value, json};

/// The Kubernetes version wharf's API corresponds to.
pub const KUBERNETES_VERSION: (&str, &str) = ("1", "33");

/// `/version`. `gitVersion` is a semantic version kubectl can compare with its own (it
/// warns beyond one minor version of skew); wharf's own version rides in the build
/// metadata (`+wharf.X.Y.Z`), which, unlike a pre-release suffix, does not make the
/// version sort below the Kubernetes release it implements.
pub async fn version() -> Json<Value> {
    let (major, minor) = KUBERNETES_VERSION;
    let previous_minor = minor.parse::<u32>().map(|m| m - 1).unwrap_or(0);
    Json(json!({
        "major": major,
        "minor": minor,
        "emulationMajor": major,
        "emulationMinor": minor,
        "minCompatibilityMajor": major,
        "minCompatibilityMinor": previous_minor.to_string(),
        "gitVersion": format!("v{major}.{minor}.0+wharf.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    }))
}

/// A subresource served under a kind, `pods/status`, `deployments/scale`, as discovery and
/// the OpenAPI documents describe it (from the kind's strategy and the one table of
/// subresources, [`super::registry::subresources`]).
#[derive(Debug, Clone)]
pub struct Subresource {
    pub name: &'static str,
    /// Group, version and kind of the object it takes and answers.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
    /// Registers the schema of that object when it is not the parent's own type.
    pub schema: Option<super::registry::subresources::Schema>,
}

/// The verbs of a kind's main endpoint.
pub fn verbs(k: &ResourceKind) -> &'static [&'static str] {
    k.strategy.verbs()
}

/// The subresources of a kind, alphabetical, as kube-apiserver lists them.
pub fn subresources(k: &'static ResourceKind) -> Vec<Subresource> {
    let mut out: Vec<Subresource> = k
        .strategy
        .subresources()
        .iter()
        .map(|s| {
            let (group, version, kind) = s.body.unwrap_or((k.group, k.version, k.kind));
            Subresource {
                name: s.name,
                group,
                version,
                kind,
                verbs: s.verbs,
                schema: s.schema.filter(|_| s.body.is_some()),
            }
        })
        .collect();
    out.sort_by_key(|s| s.name);
    out
}

/// The opaque hash of the version an object is stored in, as kube-apiserver computes it
/// (the first 8 bytes of SHA-256 over `group/version/kind`, base64): it changes only if
/// the storage version does, which tells a storage migrator whether to act.
pub fn storage_version_hash(k: &ResourceKind) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{}/{}/{}", k.group, k.version, k.kind).as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(&digest.as_ref()[..8])
}

/// Every kind `state` serves: the built-ins and what CustomResourceDefinitions add.
async fn served(state: &AppState) -> Vec<&'static ResourceKind> {
    state.kinds.all(state).await
}

pub async fn api_versions(headers: HeaderMap) -> Response {
    let kinds: Vec<&'static ResourceKind> = KINDS.iter().collect();
    match negotiate(&headers) {
        Some(format) => aggregated(&kinds, format, &[""]),
        None => Json(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        }))
        .into_response(),
    }
}

/// A resource served only as a create-only endpoint, never stored: a review.
#[derive(Debug, Clone, Copy)]
pub struct ReviewResource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
}

/// The only verb of a review.
const CREATE_ONLY: &[&str] = &["create"];

/// The reviews, as discovery lists them (cluster-scoped, `create` only).
pub fn review_resources() -> impl Iterator<Item = ReviewResource> {
    super::reviews::Review::ALL.into_iter().map(|r| {
        let (group, plural, kind) = r.group_resource_kind();
        ReviewResource {
            group,
            version: "v1",
            plural,
            kind,
        }
    })
}

/// The named API groups of `kinds` in their order, then those only reviews are in.
pub fn groups(kinds: &[&'static ResourceKind]) -> Vec<&'static str> {
    let mut groups: Vec<&str> = Vec::new();
    let named = kinds
        .iter()
        .map(|k| k.group)
        .chain(review_resources().map(|r| r.group));
    for group in named.filter(|g| !g.is_empty()) {
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    groups
}

/// The versions served in `group`, preferred first.
fn versions_of(kinds: &[&'static ResourceKind], group: &str) -> Vec<&'static str> {
    let mut versions: Vec<&str> = Vec::new();
    let served = kinds
        .iter()
        .filter(|k| k.group == group)
        .map(|k| k.version)
        .chain(
            review_resources()
                .filter(|r| r.group == group)
                .map(|r| r.version),
        );
    for version in served {
        if !versions.contains(&version) {
            versions.push(version);
        }
    }
    versions
}

/// The reviews of one group-version.
fn reviews_in(group: &str, version: &str) -> Vec<ReviewResource> {
    review_resources()
        .filter(|r| r.group == group && r.version == version)
        .collect()
}

/// The legacy (`APIResourceList`) entry of a review (no storage version: never stored).
fn review_entry(r: ReviewResource) -> Value {
    json!({
        "name": r.plural,
        "singularName": r.kind.to_ascii_lowercase(),
        "namespaced": false,
        "kind": r.kind,
        "verbs": CREATE_ONLY,
    })
}

/// The aggregated discovery entry of a review.
fn aggregated_review(r: ReviewResource) -> Value {
    json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": "Cluster",
        "singularResource": r.kind.to_ascii_lowercase(),
        "verbs": CREATE_ONLY,
    })
}

fn group_json(kinds: &[&'static ResourceKind], group: &str) -> Value {
    let versions: Vec<Value> = versions_of(kinds, group)
        .into_iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": versions, "preferredVersion": preferred})
}

pub async fn api_groups(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let kinds = served(&state).await;
    if let Some(format) = negotiate(&headers) {
        return aggregated(&kinds, format, &groups(&kinds));
    }
    Json(json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups(&kinds).into_iter().map(|g| group_json(&kinds, g)).collect::<Vec<_>>(),
    }))
    .into_response()
}

pub async fn api_group(
    State(state): State<AppState>,
    Path(group): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let kinds = served(&state).await;
    if !groups(&kinds).contains(&group.as_str()) {
        return Err(not_found(&group));
    }
    let mut g = group_json(&kinds, &group);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Ok(Json(g))
}

pub async fn core_resources(Path(version): Path<String>) -> Result<Json<Value>, ApiError> {
    let kinds: Vec<&'static ResourceKind> = KINDS.iter().collect();
    resource_list(&kinds, "", &version)
}

pub async fn group_resources(
    State(state): State<AppState>,
    Path((group, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    resource_list(&served(&state).await, &group, &version)
}

fn not_found(what: &str) -> ApiError {
    ApiError::NotFound {
        subject: Default::default(),
        message: format!("the server could not find the requested resource: {what} is not served"),
    }
}

/// The legacy (`APIResourceList`) entries of one kind: the resource itself, then its
/// subresources.
pub fn resource_entries(k: &'static ResourceKind) -> Vec<Value> {
    let mut main = json!({
        "name": k.plural,
        "singularName": k.singular,
        "namespaced": k.namespaced,
        "kind": k.kind,
        "verbs": verbs(k),
        "storageVersionHash": storage_version_hash(k),
    });
    if !k.short_names.is_empty() {
        main["shortNames"] = json!(k.short_names);
    }
    if !categories(k).is_empty() {
        main["categories"] = json!(categories(k));
    }
    let mut entries = vec![main];
    for sub in subresources(k) {
        let mut entry = json!({
            "name": format!("{}/{}", k.plural, sub.name),
            "singularName": "",
            "namespaced": k.namespaced,
            "kind": sub.kind,
            "verbs": sub.verbs,
        });
        // A subresource of another group-version names it, as `deployments/scale`
        // (autoscaling/v1 Scale) does.
        if (sub.group, sub.version) != (k.group, k.version) {
            entry["group"] = json!(sub.group);
            entry["version"] = json!(sub.version);
        }
        entries.push(entry);
    }
    entries
}

/// `all` for the kinds `kubectl get all` shows, then the strategy's own.
fn categories(k: &ResourceKind) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    if k.in_all {
        out.push("all");
    }
    for c in k.strategy.categories() {
        if !out.contains(c) {
            out.push(c);
        }
    }
    out
}

fn resource_list(
    kinds: &[&'static ResourceKind],
    group: &str,
    version: &str,
) -> Result<Json<Value>, ApiError> {
    let kinds: Vec<&'static ResourceKind> = kinds
        .iter()
        .copied()
        .filter(|k| k.group == group && k.version == version)
        .collect();
    let reviews = reviews_in(group, version);
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    if kinds.is_empty() && reviews.is_empty() {
        return Err(not_found(&gv));
    }
    let resources: Vec<Value> = kinds
        .into_iter()
        .flat_map(resource_entries)
        .chain(reviews.into_iter().map(review_entry))
        .collect();
    Ok(Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    })))
}

// ---- Aggregated discovery ---------------------------------------------------------------

/// The aggregated discovery versions wharf serves, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregated {
    V2,
    V2Beta1,
}

impl Aggregated {
    fn version(self) -> &'static str {
        match self {
            Aggregated::V2 => "v2",
            Aggregated::V2Beta1 => "v2beta1",
        }
    }

    /// The media type that asks for (and labels) this format.
    pub fn media_type(self) -> String {
        format!(
            "application/json;g=apidiscovery.k8s.io;v={};as=APIGroupDiscoveryList",
            self.version()
        )
    }
}

/// Picks the response format from an `Accept` header: the acceptable media range of
/// highest quality (earliest on a tie) that wharf can serve. `Some` is an aggregated
/// format; `None` is the legacy JSON documents, also the answer when nothing is
/// acceptable (lenient, as a client that sent no Accept header expects).
pub fn negotiate(headers: &HeaderMap) -> Option<Aggregated> {
    let mut candidates: Vec<(f32, Option<Aggregated>)> = Vec::new();
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            if let Some(c) = classify(range) {
                candidates.push(c);
            }
        }
    }
    // A stable sort keeps the client's order among equal qualities.
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
    candidates
        .into_iter()
        .find(|(q, _)| *q > 0.0)
        .and_then(|(_, format)| format)
}

/// One media range: its quality and what wharf would answer to it, or `None` when wharf
/// cannot serve it (protobuf, another group or kind).
fn classify(range: &str) -> Option<(f32, Option<Aggregated>)> {
    let mut parts = range.split(';').map(str::trim);
    let media = parts.next()?.to_ascii_lowercase();
    let (mut g, mut v, mut as_kind, mut q) = (None, None, None, 1.0f32);
    for param in parts {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        match key.trim().to_ascii_lowercase().as_str() {
            "g" => g = Some(value.to_string()),
            "v" => v = Some(value.to_string()),
            "as" => as_kind = Some(value.to_string()),
            "q" => q = value.parse().unwrap_or(0.0),
            _ => {}
        }
    }
    let json_like = matches!(media.as_str(), "application/json" | "application/*" | "*/*");
    if !json_like {
        return None;
    }
    match (g.as_deref(), v.as_deref(), as_kind.as_deref()) {
        (None, None, None) => Some((q, None)),
        (Some("apidiscovery.k8s.io"), Some("v2"), Some("APIGroupDiscoveryList")) => {
            Some((q, Some(Aggregated::V2)))
        }
        (Some("apidiscovery.k8s.io"), Some("v2beta1"), Some("APIGroupDiscoveryList")) => {
            Some((q, Some(Aggregated::V2Beta1)))
        }
        _ => None,
    }
}

/// The `APIGroupDiscoveryList` of `groups` (`[""]` for the core group at `/api`).
pub fn aggregated_document(
    kinds: &[&'static ResourceKind],
    format: Aggregated,
    groups: &[&str],
) -> Value {
    let items: Vec<Value> = groups
        .iter()
        .map(|group| {
            let versions: Vec<Value> = versions_of(kinds, group)
                .into_iter()
                .map(|version| {
                    let resources: Vec<Value> = kinds
                        .iter()
                        .copied()
                        .filter(|k| k.group == *group && k.version == version)
                        .map(aggregated_resource)
                        .chain(
                            reviews_in(group, version)
                                .into_iter()
                                .map(aggregated_review),
                        )
                        .collect();
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let mut metadata = json!({"creationTimestamp": null});
            if !group.is_empty() {
                metadata["name"] = json!(group);
            }
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{}", format.version()),
        "metadata": {},
        "items": items,
    })
}

fn aggregated_resource(k: &'static ResourceKind) -> Value {
    let mut r = json!({
        "resource": k.plural,
        "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
        "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": k.singular,
        "verbs": verbs(k),
    });
    if !k.short_names.is_empty() {
        r["shortNames"] = json!(k.short_names);
    }
    if !categories(k).is_empty() {
        r["categories"] = json!(categories(k));
    }
    let subs: Vec<Value> = subresources(k)
        .into_iter()
        .map(|s| {
            json!({
                "subresource": s.name,
                "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                "verbs": s.verbs,
            })
        })
        .collect();
    if !subs.is_empty() {
        r["subresources"] = json!(subs);
    }
    r
}

fn aggregated(kinds: &[&'static ResourceKind], format: Aggregated, groups: &[&str]) -> Response {
    let mut resp = Json(aggregated_document(kinds, format, groups)).into_response();
    let headers = resp.headers_mut();
    if let Ok(ct) = HeaderValue::from_str(&format.media_type()) {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    headers.insert(header::VARY, HeaderValue::from_static("Accept"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::resolve;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).expect("header"));
        h
    }

    #[test]
    fn accept_picks_the_first_served_format() {
        let v2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
        let v2b = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";
        // client-go's header: v2, then v2beta1, then plain JSON.
        assert_eq!(
            negotiate(&accept(&format!("{v2},{v2b},application/json"))),
            Some(Aggregated::V2)
        );
        assert_eq!(
            negotiate(&accept(&format!("{v2b},application/json"))),
            Some(Aggregated::V2Beta1)
        );
        assert_eq!(negotiate(&accept("application/json")), None);
        assert_eq!(negotiate(&HeaderMap::new()), None);
        // Quality outranks order; q=0 refuses.
        assert_eq!(
            negotiate(&accept(&format!("application/json;q=0.5, {v2b}"))),
            Some(Aggregated::V2Beta1)
        );
        assert_eq!(
            negotiate(&accept(&format!("{v2};q=0, application/json"))),
            None
        );
        // Formats wharf does not serve are passed over.
        assert_eq!(
            negotiate(&accept(&format!(
                "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList, {v2b}"
            ))),
            Some(Aggregated::V2Beta1)
        );
        assert_eq!(
            negotiate(&accept(
                "application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList, */*"
            )),
            None
        );
    }

    #[test]
    fn storage_version_hashes_match_kubernetes() {
        // The values kube-apiserver publishes for these resources.
        assert_eq!(
            storage_version_hash(resolve("pods").expect("pods")),
            "xPOwRZ+Yhw8="
        );
        assert_eq!(
            storage_version_hash(resolve("deployments").expect("deploy")),
            "8aSe+NMegvE="
        );
    }

    #[test]
    fn subresources_follow_what_is_served() {
        let names = |plural: &str| -> Vec<&'static str> {
            subresources(resolve(plural).expect("kind"))
                .iter()
                .map(|s| s.name)
                .collect()
        };
        assert_eq!(
            names("pods"),
            [
                "attach",
                "binding",
                "eviction",
                "exec",
                "log",
                "portforward",
                "status"
            ]
            .to_vec()
        );
        assert_eq!(names("deployments"), ["scale", "status"].to_vec());
        assert_eq!(names("replicasets"), ["scale", "status"].to_vec());
        assert_eq!(names("daemonsets"), ["status"].to_vec());
        assert_eq!(names("namespaces"), ["finalize", "status"].to_vec());
        assert!(names("configmaps").is_empty());
        let scale = subresources(resolve("deploy").expect("deploy"))
            .into_iter()
            .find(|s| s.name == "scale")
            .expect("scale");
        assert_eq!(
            (scale.group, scale.version, scale.kind),
            ("autoscaling", "v1", "Scale")
        );
        assert!(!verbs(resolve("ns").expect("ns")).contains(&"deletecollection"));
        assert!(verbs(resolve("ev").expect("ev")).contains(&"deletecollection"));
    }

    #[test]
    fn aggregated_documents_carry_everything_legacy_does() {
        let all: Vec<&'static ResourceKind> = KINDS.iter().collect();
        let doc = aggregated_document(&all, Aggregated::V2, &[""]);
        assert_eq!(doc["apiVersion"], "apidiscovery.k8s.io/v2");
        let core = &doc["items"][0];
        assert!(core["metadata"].get("name").is_none());
        let v1 = &core["versions"][0];
        assert_eq!(v1["version"], "v1");
        assert_eq!(v1["freshness"], "Current");
        let pods = v1["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["resource"] == "pods")
            .expect("pods");
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(pods["singularResource"], "pod");
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        assert_eq!(
            pods["responseKind"],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        let eviction = pods["subresources"]
            .as_array()
            .expect("subresources")
            .iter()
            .find(|s| s["subresource"] == "eviction")
            .expect("eviction");
        assert_eq!(
            eviction["responseKind"],
            json!({"group": "policy", "version": "v1", "kind": "Eviction"})
        );
        let apis = aggregated_document(&all, Aggregated::V2Beta1, &groups(&all));
        assert_eq!(apis["apiVersion"], "apidiscovery.k8s.io/v2beta1");
        assert_eq!(apis["items"][0]["metadata"]["name"], "apps");
        let nodes = v1["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["resource"] == "nodes")
            .expect("nodes");
        assert_eq!(nodes["scope"], "Cluster");
    }
}
