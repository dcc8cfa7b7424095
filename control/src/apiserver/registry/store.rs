//! The store-facing registry: get, create, update (and patch), delete and
//! deletecollection of any kind, over the [`crate::store::Store`].
//!
//! Each write is read-modify-write against the store with compare-and-swap on the
//! revision: the registry reads the object, computes the new one (a pure step: apply the
//! patch, keep server-owned fields, default, validate), and writes it only if nobody wrote
//! in between. A client that named a resourceVersion gets 409 Conflict when it is stale;
//! one that did not is retried transparently on a fresh read, as kube-apiserver's
//! `GuaranteedUpdate` does.
//!
//! Nothing here knows a kind by name: where kinds differ, the kind's
//! [`Strategy`](super::Strategy) decides (see [`super::strategy`]).

use super::super::AppState;
use super::super::error::{ApiError, Subject};
use super::super::fieldcheck::FieldCheck;
use super::super::ipam;
use super::super::objects::{
    decode_at, encode, meta_str, now_rfc3339, sent_resource_version, set_resource_version,
};
use super::super::paging;
use super::super::request::{PATCH_TYPES, Query, Target};
use crate::api::kinds::ResourceKind;
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::validation::{self, FieldError};
use crate::api::wellknown::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
use crate::api::{jsonpatch, strategic};
use crate::store::{StoreError, StoredObject, Write, collection_prefix, object_key};
use serde_json::{Map, Value, json};

/// How often a write is retried on a conflict the client did not cause.
pub(crate) const MAX_RETRIES: usize = 16;

pub(crate) fn subject(target: &Target, name: &str) -> Subject {
    Subject {
        group: target.kind.group.to_string(),
        resource: target.kind.plural.to_string(),
        name: name.to_string(),
    }
}

fn key_of(kind: &ResourceKind, namespace: Option<&str>, name: &str) -> String {
    object_key(kind.group, kind.plural, namespace.unwrap_or(""), name)
}

/// The namespace a named request operates in: required for namespaced kinds.
fn object_namespace(target: &Target) -> Result<Option<&str>, ApiError> {
    match (target.kind.namespaced, target.namespace.as_deref()) {
        (true, None) => Err(ApiError::BadRequest(format!(
            "{} are namespaced: use /namespaces/NAMESPACE/{} in the path",
            target.kind.qualified_plural(),
            target.kind.plural
        ))),
        (true, ns) => Ok(ns),
        (false, _) => Ok(None),
    }
}

/// The API form of a stored object of `kind`, as the kind presents it.
pub(crate) fn read_at(
    kind: &ResourceKind,
    stored: &StoredObject,
    revision: u64,
) -> Result<Value, ApiError> {
    let mut obj = decode_at(stored, revision)?;
    kind.strategy.present(&mut obj);
    Ok(obj)
}

/// [`read_at`] the object's own revision.
pub(crate) fn read(kind: &ResourceKind, stored: &StoredObject) -> Result<Value, ApiError> {
    read_at(kind, stored, stored.mod_revision)
}

/// The API form of the object `target` names.
pub(crate) async fn get_object(
    state: &AppState,
    target: &Target,
    name: &str,
) -> Result<Value, ApiError> {
    let (stored, _) = fetch(state, target, name).await?;
    read(target.kind, &stored)
}

pub(crate) async fn fetch(
    state: &AppState,
    target: &Target,
    name: &str,
) -> Result<(StoredObject, String), ApiError> {
    let ns = object_namespace(target)?;
    let key = key_of(target.kind, ns, name);
    match state.store.get(&key).await {
        Ok(Some(obj)) => Ok((obj, key)),
        Ok(None) => Err(ApiError::not_found(subject(target, name))),
        Err(e) => Err(ApiError::from_store(e, subject(target, name))),
    }
}

/// Parsed `labelSelector` and `fieldSelector`.
pub struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn from_query(kind: &ResourceKind, query: &Query) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::BadRequest(format!("labelSelector: {e}")))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), kind)
            .map_err(|e| ApiError::BadRequest(format!("fieldSelector: {e}")))?;
        Ok(Filter { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches(obj)
    }
}

pub fn list_prefix(target: &Target) -> String {
    collection_prefix(
        target.kind.group,
        target.kind.plural,
        target.namespace.as_deref(),
    )
}

/// Longest a continued list may take to read the log back to its first page's revision.
const CONTINUE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One page of the collection `target` names, filtered, at the revision it was read at (a
/// continuation reads the collection as it was at its first page's revision, while the
/// log still reaches it).
pub(crate) async fn list(
    state: &AppState,
    target: &Target,
    filter: &Filter,
    opts: &paging::ListOptions,
) -> Result<(u64, paging::Page<Value>), ApiError> {
    let prefix = list_prefix(target);
    let listed = state
        .store
        .list(&prefix)
        .await
        .map_err(|e| ApiError::from_store(e, subject(target, "")))?;
    // A continuation lists the collection as it was at the first page's revision, while
    // the log still reaches it.
    let (revision, items) = match &opts.resume {
        Some(t) => {
            let at = tokio::time::timeout(
                CONTINUE_TIMEOUT,
                crate::store::list_at(state.store.as_ref(), &prefix, listed, t.revision),
            )
            .await
            .map_err(|_| {
                ApiError::ServiceUnavailable("reading the list's revision timed out".into())
            })?;
            match at {
                Ok(items) => (t.revision, items),
                Err(StoreError::Expired { .. }) => return Err(ApiError::ContinueExpired),
                Err(e) => return Err(ApiError::from_store(e, subject(target, ""))),
            }
        }
        None => (listed.revision, listed.items),
    };
    let page = paging::page(&items, &prefix, opts, |stored| {
        let obj = read(target.kind, stored)?;
        Ok::<_, ApiError>(filter.matches(&obj).then_some(obj))
    })?;
    Ok((revision, page))
}

pub fn list_object(kind: &ResourceKind, items: Vec<Value>, revision: u64) -> Value {
    json!({
        "kind": format!("{}List", kind.kind),
        "apiVersion": kind.api_version(),
        "metadata": {"resourceVersion": revision.to_string()},
        "items": items,
    })
}

fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the request body must be a JSON object".into()))?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))
}

/// The bytes `obj` (of `kind`) is stored as: its kind's storage form
/// ([`Strategy::storage_form`]), which reads give back as the version asked for.
///
/// [`Strategy::storage_form`]: super::Strategy::storage_form
pub(crate) fn encode_stored(kind: &ResourceKind, obj: &Value) -> Result<bytes::Bytes, ApiError> {
    match kind.strategy.storage_form(obj) {
        Some(stored) => encode(&stored),
        None => encode(obj),
    }
}

/// Checks (or fills) `apiVersion` and `kind` against the URL's kind.
fn check_type(kind: &ResourceKind, obj: &mut Value) -> Result<(), ApiError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the request body must be a JSON object".into()))?;
    let api_version = kind.api_version();
    fill_or_match(map, "apiVersion", &api_version, |v| {
        format!(
            "the API version in the data ({v}) does not match the expected API version ({api_version})"
        )
    })?;
    fill_or_match(map, "kind", kind.kind, |k| {
        format!(
            "the kind in the data ({k}) does not match the kind of the URL ({}); served kinds are {}",
            kind.kind,
            crate::api::kinds::served_list()
        )
    })?;
    Ok(())
}

/// Sets `field` to `expected` when absent or empty; a different value is a 400 with the
/// message `mismatch` builds from it.
fn fill_or_match(
    map: &mut Map<String, Value>,
    field: &str,
    expected: &str,
    mismatch: impl FnOnce(&str) -> String,
) -> Result<(), ApiError> {
    match map.get(field).and_then(Value::as_str) {
        None | Some("") => {
            map.insert(field.into(), json!(expected));
            Ok(())
        }
        Some(v) if v == expected => Ok(()),
        Some(v) => Err(ApiError::BadRequest(mismatch(v))),
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn invalid(kind: &ResourceKind, obj: &Value, target: &Target, errs: Vec<FieldError>) -> ApiError {
    ApiError::invalid(
        subject(target, meta_str(obj, "name").unwrap_or("")),
        kind.kind,
        errs,
    )
}

/// Server-side preparation of a new object: identity, timestamps, status reset, what the
/// kind's strategy adds, defaults. Pure but for the clock and the random uid.
pub fn prepare_create(kind: &ResourceKind, obj: &mut Value) -> Result<(), ApiError> {
    let uid = uuid::Uuid::new_v4().to_string();
    {
        let meta = metadata_mut(obj)?;
        meta.remove("resourceVersion");
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if kind.has_spec() {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
    }
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the request body must be a JSON object".into()))?;
    if kind.has_status() {
        map.remove("status");
    }
    kind.strategy.prepare_for_create(obj, &uid);
    validation::apply_defaults(kind, obj);
    Ok(())
}

/// Creates `obj` in the collection `target` names (`dryRun` honoured): answers what is
/// (or would be) stored.
pub(crate) async fn create(
    state: &AppState,
    target: &Target,
    query: &Query,
    mut obj: Value,
    fields: &FieldCheck,
) -> Result<Value, ApiError> {
    let kind = target.kind;
    let dry = query.dry_run()?;
    check_type(kind, &mut obj)?;
    fields.apply(kind, &mut obj)?;
    let url_ns = target.namespace.clone();
    {
        let meta = metadata_mut(&mut obj)?;
        if kind.namespaced {
            let ns = url_ns.ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{} are namespaced: POST to /namespaces/NAMESPACE/{}",
                    kind.qualified_plural(),
                    kind.plural
                ))
            })?;
            fill_or_match(meta, "namespace", &ns, |n| {
                format!(
                    "the namespace of the provided object ({n}) does not match the namespace sent on the request ({ns})"
                )
            })?;
        } else {
            meta.remove("namespace");
        }
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty()
            && let Some(prefix) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
        {
            let generated = format!("{prefix}{}", random_suffix());
            meta.insert("name".into(), json!(generated));
        }
    }
    prepare_create(kind, &mut obj)?;
    let errs = validation::validate(kind, &obj);
    if !errs.is_empty() {
        return Err(invalid(kind, &obj, target, errs));
    }
    let name = meta_str(&obj, "name").unwrap_or_default().to_string();
    let ns = meta_str(&obj, "namespace").map(str::to_string);
    if let Some(ns) = &ns {
        // Namespace lifecycle, as Kubernetes admits it: only into an open namespace.
        super::strategies::namespace::ensure_open(state, ns).await?;
    }
    // What the kind admits against the cluster's state. Addresses it allocates are stored
    // with the object in one txn (`ipam`); if another server took one first, admission
    // runs again from the object as it was before it.
    let original = obj.clone();
    let admitted = kind.strategy.admit_create(state, target, &mut obj).await?;
    for w in admitted.warnings {
        fields.warn(w);
    }
    // Last, what the namespace's quotas let in (charged by compare-and-swap on them).
    super::super::quota::admit_create(state, target, &obj, dry).await?;
    fields.record(kind, None, &mut obj, None);
    if dry {
        encode(&obj)?;
        return Ok(obj);
    }
    let key = key_of(kind, ns.as_deref(), &name);
    let (stored, mut obj) = ipam::store_create(state, target, &key, obj, original).await?;
    drop(admitted.held);
    if kind.strategy.presents() {
        return read(kind, &stored);
    }
    // What was stored is `obj` encoded as it is (kinds that present nothing store their
    // API form): answer with it rather than decode the stored bytes again, which was the
    // largest JSON cost of a create in the write path's profile.
    set_resource_version(&mut obj, stored.mod_revision);
    Ok(obj)
}

/// Builds the object an update stores from the current object and the one the client
/// sent: server-owned metadata is kept, status or spec is protected depending on whether
/// this is the status subresource, defaults and validation apply, and `generation` moves
/// only when the spec changed.
pub fn prepare_update(
    kind: &ResourceKind,
    current: &Value,
    mut new: Value,
    status_only: bool,
) -> Result<Value, Vec<FieldError>> {
    let mut result = if status_only {
        let mut r = current.clone();
        if let Some(map) = r.as_object_mut() {
            match new.get("status") {
                Some(s) => map.insert("status".into(), s.clone()),
                None => map.remove("status"),
            };
        }
        r
    } else {
        if kind.has_status()
            && let Some(map) = new.as_object_mut()
        {
            match current.get("status") {
                Some(s) => map.insert("status".into(), s.clone()),
                None => map.remove("status"),
            };
        }
        new
    };
    kind.strategy.prepare_for_update(current, &mut result);
    if let (Some(meta), Some(cur_meta)) = (
        result.get_mut("metadata").and_then(Value::as_object_mut),
        current.get("metadata").and_then(Value::as_object),
    ) {
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "name",
            "namespace",
            "generation",
            "resourceVersion",
        ] {
            match cur_meta.get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        // An update that does not mention managedFields keeps them (as Kubernetes does); an
        // explicit list, even empty, replaces them.
        if !meta.contains_key("managedFields")
            && let Some(mf) = cur_meta.get("managedFields")
        {
            meta.insert("managedFields".into(), mf.clone());
        }
    }
    if let Some(map) = result.as_object_mut() {
        map.insert("apiVersion".into(), json!(kind.api_version()));
        map.insert("kind".into(), json!(kind.kind));
    }
    validation::apply_defaults(kind, &mut result);
    let mut errs = validation::validate(kind, &result);
    errs.extend(validation::validate_update(kind, current, &result));
    if !errs.is_empty() {
        return Err(errs);
    }
    if kind.strategy.generation_changed(current, &result) {
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        if let Some(meta) = result.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("generation".into(), json!(generation));
        }
    }
    Ok(result)
}

/// Read-modify-write with compare-and-swap. `mutate` computes the client's intended
/// object from the current one (a PUT ignores it; a PATCH applies itself to it); `fields`
/// then checks and prunes the fields it does not declare.
pub(crate) async fn update_with(
    state: &AppState,
    target: &Target,
    name: &str,
    status_only: bool,
    dry_run: bool,
    fields: &FieldCheck,
    mutate: impl Fn(&Value) -> Result<Value, ApiError>,
) -> Result<Value, ApiError> {
    let kind = target.kind;
    for _ in 0..MAX_RETRIES {
        let (stored, key) = fetch(state, target, name).await?;
        let current = read(kind, &stored)?;
        let mut new = mutate(&current)?;
        check_type(kind, &mut new)?;
        fields.apply(kind, &mut new)?;
        if let Some(sent_name) = meta_str(&new, "name")
            && sent_name != name
        {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({sent_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(sent_ns) = meta_str(&new, "namespace").filter(|s| !s.is_empty())
            && kind.namespaced
            && Some(sent_ns) != target.namespace.as_deref()
        {
            return Err(ApiError::BadRequest(format!(
                "the namespace of the object ({sent_ns}) does not match the namespace on the URL"
            )));
        }
        if let Some(uid) = meta_str(&new, "uid").filter(|s| !s.is_empty())
            && Some(uid) != meta_str(&current, "uid")
        {
            return Err(ApiError::conflict(
                subject(target, name),
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&current, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = sent_resource_version(&new)?
            && rv != stored.mod_revision
        {
            return Err(ApiError::conflict(
                subject(target, name),
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        // What the kind admits against the cluster's state; what it allocated is held
        // until the write is done.
        let admitted = kind
            .strategy
            .admit_update(state, target, &current, &mut new, status_only)
            .await?;
        for w in admitted.warnings {
            fields.warn(w);
        }
        let mut result = prepare_update(kind, &current, new, status_only)
            .map_err(|errs| invalid(kind, &current, target, errs))?;
        fields.record(
            kind,
            Some(&current),
            &mut result,
            status_only.then_some("status"),
        );
        if semantically_equal(&result, &current) {
            return Ok(result);
        }
        if dry_run {
            // What would be stored must fit, as a real write would check.
            encode(&result)?;
            return Ok(result);
        }
        let outcome =
            store_write(state, kind, &key, stored.mod_revision, &current, &result).await?;
        match outcome {
            Ok(obj) => return Ok(obj),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, subject(target, name))),
        }
    }
    Err(ApiError::conflict(
        subject(target, name),
        "too many concurrent writers; please try again",
    ))
}

/// Writes the outcome of a read-modify-write at `revision` (compare-and-swap): an object
/// whose deletion is complete (no finalizers left) is removed, any other is updated.
/// Allocated values that changed from `current` are taken or freed in the same txn; a
/// value another server took meanwhile is a `Conflict`, so the caller starts again.
pub(crate) async fn store_write(
    state: &AppState,
    kind: &ResourceKind,
    key: &str,
    revision: u64,
    current: &Value,
    obj: &Value,
) -> Result<Result<Value, StoreError>, ApiError> {
    let done = finalized(kind, obj);
    let write = if done {
        Write::Delete {
            key: key.to_owned(),
            expected: Some(revision),
        }
    } else {
        Write::Update {
            key: key.to_owned(),
            value: encode_stored(kind, obj)?,
            expected: Some(revision),
            ttl: state.config.ttl_of(kind),
        }
    };
    let after = (!done).then_some(obj);
    let events = ipam::commit(state.store.as_ref(), kind, write, Some(current), after)
        .await
        .map_err(|e| match e {
            ipam::CommitError::Store(e) => e,
            ipam::CommitError::Taken { range, .. } => StoreError::Conflict {
                key: range.to_owned(),
                expected: 0,
                actual: 0,
            },
        });
    Ok(events.and_then(|events| {
        let event = events
            .first()
            .ok_or_else(|| StoreError::Io("a write stored nothing".into()))?;
        if done {
            Ok(read_at(kind, &event.object, event.revision).unwrap_or_else(|_| obj.clone()))
        } else {
            read(kind, &event.object).map_err(|_| StoreError::Io("decode".into()))
        }
    }))
}

/// Whether `a` and `b` are the same object but for `metadata.resourceVersion` (an update
/// that changes nothing else is not written). Compared in place: every update asks, and
/// copies of both objects showed in the write path's profile.
pub(crate) fn semantically_equal(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    a.len() == b.len()
        && a.iter()
            .all(|(key, av)| match (b.get(key), av.as_object()) {
                (Some(bv), Some(am)) if key == "metadata" => match bv.as_object() {
                    Some(bm) => equal_but_resource_version(am, bm),
                    None => false,
                },
                (Some(bv), _) => av == bv,
                (None, _) => false,
            })
}

/// Two metadata maps equal but for `resourceVersion`.
fn equal_but_resource_version(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    let others = |m: &Map<String, Value>| m.keys().filter(|k| *k != "resourceVersion").count();
    others(a) == others(b)
        && a.iter()
            .filter(|(k, _)| *k != "resourceVersion")
            .all(|(k, v)| b.get(k) == Some(v))
}

/// Applies a patch body to the current object (of `kind`) according to its media type.
pub fn apply_patch(
    kind: &ResourceKind,
    content_type: &str,
    current: &Value,
    patch: &Value,
) -> Result<Value, ApiError> {
    let mut doc = current.clone();
    match content_type {
        "application/strategic-merge-patch+json" if !kind.strategy.strategic_merge() => {
            Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                PATCH_TYPES
                    .iter()
                    .filter(|t| !t.starts_with("application/strategic"))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        "application/strategic-merge-patch+json" => {
            strategic::strategic_merge(kind, current, patch).map_err(|e| {
                ApiError::BadRequest(format!("the strategic merge patch is malformed: {e}"))
            })
        }
        "application/merge-patch+json" | "" => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            json_patch::merge(&mut doc, patch);
            Ok(doc)
        }
        "application/json-patch+json" => {
            jsonpatch::apply(&mut doc, patch).map_err(ApiError::from)?;
            Ok(doc)
        }
        other => Err(ApiError::UnsupportedMediaType(format!(
            "patch type {other} is not supported; use one of {}",
            PATCH_TYPES.join(", ")
        ))),
    }
}

/// `DeleteOptions`, from the body or the query.
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<u64>,
    pub dry_run: bool,
}

/// The deprecated `orphanDependents` flag as a propagation policy.
pub(crate) fn orphan_policy(orphan: bool) -> &'static str {
    if orphan { "Orphan" } else { "Background" }
}

pub(crate) fn check_policy(opts: &DeleteOptions) -> Result<(), ApiError> {
    if let Some(p) = &opts.propagation_policy
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(ApiError::BadRequest(format!(
            "propagationPolicy: unsupported value {p:?}: supported values: \"Orphan\", \"Background\", \"Foreground\""
        )));
    }
    Ok(())
}

/// A `DeleteOptions` JSON object (a DELETE body, or an Eviction's `deleteOptions`).
pub(crate) fn delete_options_from(body: &Value) -> Result<DeleteOptions, ApiError> {
    let opts = DeleteOptions {
        grace_period_seconds: body.get("gracePeriodSeconds").and_then(Value::as_i64),
        propagation_policy: body
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                body.get("orphanDependents")
                    .and_then(Value::as_bool)
                    .map(|o| orphan_policy(o).to_string())
            }),
        uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        resource_version: match body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            Some(s) => Some(s.parse().map_err(|_| {
                ApiError::BadRequest(format!(
                    "preconditions.resourceVersion {s:?} is not a number"
                ))
            })?),
            None => None,
        },
        dry_run: body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|v| v == "All")),
    };
    check_policy(&opts)?;
    Ok(opts)
}

/// What deleting an object does, decided from the object and the options.
#[derive(Debug, PartialEq)]
pub enum DeletePlan {
    /// Remove it now.
    Remove,
    /// Mark it (deletionTimestamp, grace) and keep it: finalizers must run, or the node
    /// must stop the pod first. An object already marked keeps its deletionTimestamp
    /// unless its grace period is shortened.
    Mark {
        grace_seconds: i64,
        /// `metadata.finalizers` from now on (the garbage collector's follow the
        /// propagation policy).
        finalizers: Vec<String>,
        /// The finalizers the kind keeps outside `metadata` from now on (a Namespace's
        /// `spec.finalizers`); `None` for kinds without any.
        spec_finalizers: Option<Vec<String>>,
    },
    /// Already marked with a grace no longer than the requested one and the same
    /// finalizers: nothing to do.
    Nothing,
}

pub(crate) fn strings_at(obj: &Value, pointer: &str) -> Vec<String> {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn ensure(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|f| f == item) {
        list.push(item.to_string());
    }
}

/// Decides a delete, as kube-apiserver's generic registry does:
///
/// - **Propagation.** `Orphan` adds the garbage collector's `orphan` finalizer (and drops
///   `foregroundDeletion`), `Foreground` adds `foregroundDeletion` (and drops `orphan`),
///   `Background` drops `orphan`; without a policy the finalizers already there decide,
///   and the default is background: the owner goes now and the collector removes the
///   dependents whose owner is gone.
/// - **The kind's strategy** may hold the object by finalizers outside `metadata`
///   ([`Strategy::held_by`](super::Strategy::held_by): a Namespace's `spec.finalizers`)
///   and give it a grace period ([`Strategy::grace_period`](super::Strategy::grace_period):
///   a pod its node must stop first, which the node confirms with grace 0); a shorter
///   grace shortens an earlier mark.
/// - Anything with finalizers left is marked with the grace (0 if none); the rest is
///   removed.
pub fn plan_delete(kind: &ResourceKind, obj: &Value, opts: &DeleteOptions) -> DeletePlan {
    let already = meta_str(obj, "deletionTimestamp").is_some();
    let current_grace = obj
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64);
    let current_finalizers = strings_at(obj, "/metadata/finalizers");
    let mut finalizers = current_finalizers.clone();
    match opts.propagation_policy.as_deref() {
        Some("Orphan") => {
            ensure(&mut finalizers, ORPHAN_FINALIZER);
            finalizers.retain(|f| f != FOREGROUND_FINALIZER);
        }
        Some("Foreground") => {
            ensure(&mut finalizers, FOREGROUND_FINALIZER);
            finalizers.retain(|f| f != ORPHAN_FINALIZER);
        }
        Some("Background") => finalizers.retain(|f| f != ORPHAN_FINALIZER),
        _ => {}
    }
    let spec_finalizers = kind.strategy.held_by(obj, already);
    let held = !finalizers.is_empty() || spec_finalizers.as_ref().is_some_and(|f| !f.is_empty());

    let mut grace = kind.strategy.grace_period(obj, opts);
    // A grace period is only ever shortened.
    if let Some(current) = current_grace.filter(|_| already) {
        grace = grace.min(current);
    }
    if grace == 0 && !held {
        return DeletePlan::Remove;
    }
    if already
        && current_grace == Some(grace)
        && finalizers == current_finalizers
        && spec_finalizers
            .as_ref()
            .is_none_or(|f| Some(f) == kind.strategy.held_by(obj, true).as_ref())
    {
        return DeletePlan::Nothing;
    }
    DeletePlan::Mark {
        grace_seconds: grace,
        finalizers,
        spec_finalizers,
    }
}

/// Whether an update leaves an object that is to be removed now: marked for deletion,
/// no finalizers left (for a Namespace, in `spec.finalizers` too), and no grace period
/// running (a pod still stopping on its node stays until the node confirms).
pub fn finalized(kind: &ResourceKind, obj: &Value) -> bool {
    meta_str(obj, "deletionTimestamp").is_some()
        && strings_at(obj, "/metadata/finalizers").is_empty()
        && kind
            .strategy
            .held_by(obj, true)
            .is_none_or(|f| f.is_empty())
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            <= 0
}

/// The object a [`DeletePlan::Mark`] stores.
fn marked(
    kind: &ResourceKind,
    current: &Value,
    grace_seconds: i64,
    finalizers: Vec<String>,
    spec_finalizers: Option<Vec<String>>,
    now: jiff::Timestamp,
) -> Value {
    let mut marked = current.clone();
    let keep_timestamp = meta_str(current, "deletionTimestamp").is_some()
        && current
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            == Some(grace_seconds);
    if let Some(meta) = marked.get_mut("metadata").and_then(Value::as_object_mut) {
        if !keep_timestamp {
            let at = now + jiff::SignedDuration::from_secs(grace_seconds);
            meta.insert(
                "deletionTimestamp".into(),
                json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
            );
        }
        meta.insert("deletionGracePeriodSeconds".into(), json!(grace_seconds));
        if finalizers.is_empty() {
            meta.remove("finalizers");
        } else {
            meta.insert("finalizers".into(), json!(finalizers));
        }
    }
    kind.strategy.mark_deleting(&mut marked, spec_finalizers);
    marked
}

pub(crate) async fn delete(
    state: &AppState,
    target: &Target,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Value, ApiError> {
    let kind = target.kind;
    kind.strategy.check_delete(name)?;
    for _ in 0..MAX_RETRIES {
        let (stored, key) = fetch(state, target, name).await?;
        let current = read(kind, &stored)?;
        if let Some(uid) = &opts.uid
            && Some(uid.as_str()) != meta_str(&current, "uid")
        {
            return Err(ApiError::conflict(
                subject(target, name),
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&current, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = opts.resource_version
            && rv != stored.mod_revision
        {
            return Err(ApiError::conflict(
                subject(target, name),
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    stored.mod_revision
                ),
            ));
        }
        let plan = plan_delete(kind, &current, opts);
        if opts.dry_run {
            return Ok(current);
        }
        let outcome = match plan {
            DeletePlan::Nothing => return Ok(current),
            DeletePlan::Mark {
                grace_seconds,
                finalizers,
                spec_finalizers,
            } => {
                let marked = marked(
                    kind,
                    &current,
                    grace_seconds,
                    finalizers,
                    spec_finalizers,
                    jiff::Timestamp::now(),
                );
                state
                    .store
                    .update_with_ttl(
                        &key,
                        encode_stored(kind, &marked)?,
                        Some(stored.mod_revision),
                        state.config.ttl_of(kind),
                    )
                    .await
                    .and_then(|s| read(kind, &s).map_err(|_| StoreError::Io("decode".into())))
            }
            DeletePlan::Remove => ipam::delete(
                state.store.as_ref(),
                kind,
                &key,
                stored.mod_revision,
                &current,
            )
            .await
            .map(|ev| read_at(kind, &ev.object, ev.revision).unwrap_or(current.clone())),
        };
        match outcome {
            Ok(obj) => return Ok(obj),
            Err(StoreError::Conflict { .. }) if opts.resource_version.is_none() => continue,
            Err(e) => return Err(ApiError::from_store(e, subject(target, name))),
        }
    }
    Err(ApiError::conflict(
        subject(target, name),
        "too many concurrent writers; please try again",
    ))
}

pub(crate) async fn delete_all(
    state: &AppState,
    target: &Target,
    query: &Query,
    opts: &DeleteOptions,
) -> Result<Vec<Value>, ApiError> {
    let filter = Filter::from_query(target.kind, query)?;
    let listed = state
        .store
        .list(&list_prefix(target))
        .await
        .map_err(|e| ApiError::from_store(e, subject(target, "")))?;
    let mut deleted = Vec::new();
    for stored in &listed.items {
        let obj = read(target.kind, stored)?;
        if !filter.matches(&obj) {
            continue;
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let one = Target {
            kind: target.kind,
            namespace: meta_str(&obj, "namespace").map(str::to_string),
            name: Some(name.clone()),
            subresource: None,
        };
        match delete(state, &one, &name, opts).await {
            Ok(v) => deleted.push(v),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::resolve;
    use crate::api::wellknown::NAMESPACE_FINALIZER;

    #[test]
    fn semantically_equal_ignores_only_the_resource_version() {
        let a = json!({"metadata": {"name": "a", "resourceVersion": "1", "labels": {"x": "1"}},
                       "data": {"k": "v"}});
        let mut b = a.clone();
        b["metadata"]["resourceVersion"] = json!("2");
        assert!(semantically_equal(&a, &b));
        b["metadata"]
            .as_object_mut()
            .expect("map")
            .shift_remove("resourceVersion");
        assert!(semantically_equal(&a, &b) && semantically_equal(&b, &a));
        // Field order does not matter, as for any JSON object.
        let reordered = json!({"data": {"k": "v"},
                               "metadata": {"labels": {"x": "1"}, "name": "a"}});
        assert!(semantically_equal(&a, &reordered));
        for differs in [
            json!({"metadata": {"name": "a", "resourceVersion": "1", "labels": {"x": "2"}},
                   "data": {"k": "v"}}),
            json!({"metadata": {"name": "a", "resourceVersion": "1"}, "data": {"k": "v"}}),
            json!({"metadata": {"name": "a", "resourceVersion": "1", "labels": {"x": "1"}}}),
            json!({"metadata": {"name": "a", "resourceVersion": "1", "labels": {"x": "1"}},
                   "data": {"k": "v"}, "status": {}}),
            json!({"metadata": "a", "data": {"k": "v"}}),
            json!({"data": {"k": "v"}}),
        ] {
            assert!(!semantically_equal(&a, &differs), "{differs}");
            assert!(!semantically_equal(&differs, &a), "{differs}");
        }
        assert!(semantically_equal(
            &json!({"metadata": {"resourceVersion": "3"}}),
            &json!({"metadata": {}})
        ));
        assert!(!semantically_equal(&json!({"metadata": {}}), &json!({})));
        assert!(semantically_equal(&json!([1]), &json!([1])));
    }

    #[test]
    fn update_keeps_server_fields_and_bumps_generation_on_spec_change() {
        let kind = resolve("deploy").expect("deploy");
        let mut current = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "a", "image": "a.wasm"}]}}},
            "status": {"replicas": 3}});
        prepare_create(kind, &mut current).expect("create");
        let mut new = current.clone();
        new["status"] = json!({"replicas": 99});
        new["metadata"]["uid"] = json!(null);
        let same = prepare_update(kind, &current, new.clone(), false).expect("valid");
        assert_eq!(same.pointer("/metadata/generation"), Some(&json!(1)));
        assert_eq!(same.get("status"), current.get("status"));
        assert_eq!(
            same.pointer("/metadata/uid"),
            current.pointer("/metadata/uid")
        );

        new["spec"]["replicas"] = json!(5);
        let changed = prepare_update(kind, &current, new.clone(), false).expect("valid");
        assert_eq!(changed.pointer("/metadata/generation"), Some(&json!(2)));

        let status = prepare_update(kind, &current, new, true).expect("valid");
        assert_eq!(status.pointer("/status/replicas"), Some(&json!(99)));
        assert_eq!(status.pointer("/spec/replicas"), Some(&json!(1)));
        assert_eq!(status.pointer("/metadata/generation"), Some(&json!(1)));
    }

    fn mark(grace_seconds: i64, finalizers: &[&str]) -> DeletePlan {
        DeletePlan::Mark {
            grace_seconds,
            finalizers: finalizers.iter().map(|f| f.to_string()).collect(),
            spec_finalizers: None,
        }
    }

    fn policy(p: &str) -> DeleteOptions {
        DeleteOptions {
            propagation_policy: Some(p.into()),
            ..Default::default()
        }
    }

    #[test]
    fn pods_on_nodes_are_deleted_gracefully() {
        let kind = resolve("pod").expect("pod");
        let opts = DeleteOptions::default();
        let unscheduled = json!({"metadata": {"name": "p"}, "spec": {}});
        assert_eq!(plan_delete(kind, &unscheduled, &opts), DeletePlan::Remove);
        let running = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 5}});
        assert_eq!(plan_delete(kind, &running, &opts), mark(5, &[]));
        let now = DeleteOptions {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        assert_eq!(plan_delete(kind, &running, &now), DeletePlan::Remove);
        let ended = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Succeeded"}});
        assert_eq!(plan_delete(kind, &ended, &opts), DeletePlan::Remove);

        // Marked already: the same or a longer grace changes nothing, a shorter one
        // shortens the mark, and 0 (the node's confirmation) removes the pod.
        let terminating = json!({"metadata": {"name": "p", "deletionTimestamp": "2030-01-01T00:00:00Z",
            "deletionGracePeriodSeconds": 5}, "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 5}});
        assert_eq!(plan_delete(kind, &terminating, &opts), DeletePlan::Nothing);
        let longer = DeleteOptions {
            grace_period_seconds: Some(60),
            ..Default::default()
        };
        assert_eq!(
            plan_delete(kind, &terminating, &longer),
            DeletePlan::Nothing
        );
        let shorter = DeleteOptions {
            grace_period_seconds: Some(2),
            ..Default::default()
        };
        assert_eq!(plan_delete(kind, &terminating, &shorter), mark(2, &[]));
        assert_eq!(plan_delete(kind, &terminating, &now), DeletePlan::Remove);

        let cm = resolve("cm").expect("cm");
        let with_finalizer = json!({"metadata": {"name": "c", "finalizers": ["x"]}});
        assert_eq!(plan_delete(cm, &with_finalizer, &opts), mark(0, &["x"]));
    }

    #[test]
    fn propagation_policies_set_the_collectors_finalizers() {
        let rs = resolve("rs").expect("rs");
        let plain = json!({"metadata": {"name": "web"}});
        assert_eq!(
            plan_delete(rs, &plain, &DeleteOptions::default()),
            DeletePlan::Remove
        );
        assert_eq!(
            plan_delete(rs, &plain, &policy("Background")),
            DeletePlan::Remove
        );
        assert_eq!(
            plan_delete(rs, &plain, &policy("Foreground")),
            mark(0, &[FOREGROUND_FINALIZER])
        );
        assert_eq!(
            plan_delete(rs, &plain, &policy("Orphan")),
            mark(0, &[ORPHAN_FINALIZER])
        );
        // Other finalizers stay; the two policies' finalizers exclude each other.
        let held = json!({"metadata": {"name": "web", "finalizers": ["x", "orphan"]}});
        assert_eq!(
            plan_delete(rs, &held, &policy("Foreground")),
            mark(0, &["x", FOREGROUND_FINALIZER])
        );
        // Without a policy, the finalizers already there decide.
        assert_eq!(
            plan_delete(rs, &held, &DeleteOptions::default()),
            mark(0, &["x", ORPHAN_FINALIZER])
        );
        // A background delete of an object held only by `orphan` removes it.
        let orphaning = json!({"metadata": {"name": "web", "finalizers": ["orphan"]}});
        assert_eq!(
            plan_delete(rs, &orphaning, &policy("Background")),
            DeletePlan::Remove
        );
        // A second delete with another policy changes the finalizers of the mark.
        let marked = json!({"metadata": {"name": "web", "finalizers": ["foregroundDeletion"],
            "deletionTimestamp": "2030-01-01T00:00:00Z", "deletionGracePeriodSeconds": 0}});
        assert_eq!(
            plan_delete(rs, &marked, &DeleteOptions::default()),
            DeletePlan::Nothing
        );
        assert_eq!(
            plan_delete(rs, &marked, &policy("Orphan")),
            mark(0, &[ORPHAN_FINALIZER])
        );
        // A pod on a node deleted in the foreground: graceful and held.
        let pod = resolve("pod").expect("pod");
        let running = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}});
        assert_eq!(
            plan_delete(pod, &running, &policy("Foreground")),
            mark(30, &[FOREGROUND_FINALIZER])
        );
    }

    #[test]
    fn namespaces_are_marked_terminating_with_the_controllers_finalizer() {
        let ns = resolve("ns").expect("ns");
        let mut created =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}});
        prepare_create(ns, &mut created).expect("create");
        assert_eq!(
            created.pointer("/spec/finalizers"),
            Some(&json!([NAMESPACE_FINALIZER]))
        );
        let plan = plan_delete(ns, &created, &DeleteOptions::default());
        assert_eq!(
            plan,
            DeletePlan::Mark {
                grace_seconds: 0,
                finalizers: vec![],
                spec_finalizers: Some(vec![NAMESPACE_FINALIZER.into()]),
            }
        );
        // A namespace created without the finalizer still gets it.
        let bare = json!({"metadata": {"name": "old"}, "spec": {}});
        assert_eq!(plan, plan_delete(ns, &bare, &DeleteOptions::default()));
        let DeletePlan::Mark {
            grace_seconds,
            finalizers,
            spec_finalizers,
        } = plan
        else {
            unreachable!()
        };
        let now = jiff::Timestamp::now();
        let m = marked(
            ns,
            &created,
            grace_seconds,
            finalizers,
            spec_finalizers,
            now,
        );
        assert_eq!(m.pointer("/status/phase"), Some(&json!("Terminating")));
        assert!(m.pointer("/metadata/deletionTimestamp").is_some());
        assert!(!finalized(ns, &m), "held by spec.finalizers");
        assert_eq!(
            plan_delete(ns, &m, &DeleteOptions::default()),
            DeletePlan::Nothing
        );
        let mut done = m.clone();
        done["spec"]["finalizers"] = json!([]);
        assert!(finalized(ns, &done));
        done["metadata"]["finalizers"] = json!(["x"]);
        assert!(!finalized(ns, &done));
    }

    #[test]
    fn updates_keep_a_namespaces_finalizers() {
        let ns = resolve("ns").expect("ns");
        let mut current =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}});
        prepare_create(ns, &mut current).expect("create");
        let mut sent = current.clone();
        sent["spec"] = json!({});
        sent["metadata"]["labels"] = json!({"a": "b"});
        let updated = prepare_update(ns, &current, sent, false).expect("valid");
        assert_eq!(
            updated.pointer("/spec/finalizers"),
            Some(&json!([NAMESPACE_FINALIZER]))
        );
        assert_eq!(updated.pointer("/metadata/labels/a"), Some(&json!("b")));
    }

    #[tokio::test]
    async fn a_deleted_namespace_stays_until_finalized() {
        use k8s_openapi::api::core::v1::Namespace;
        use kube::api::{Api, DeleteParams, PostParams};
        let api = crate::apiserver::testing::TestApi::new().await;
        let client = api.client();
        let api: Api<Namespace> = Api::all(client);
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "team"}})).expect("ns");
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create");
        api.delete("team", &DeleteParams::default())
            .await
            .expect("delete");
        let marked = api.get("team").await.expect("still there");
        assert!(marked.metadata.deletion_timestamp.is_some());
        // A plain update cannot drop the finalizer.
        let mut replaced = marked.clone();
        replaced.spec = None;
        api.replace("team", &Default::default(), &replaced)
            .await
            .expect("replace");
        assert!(api.get_opt("team").await.expect("get").is_some());
        // `finalize` can; with no finalizer left the namespace is gone.
        let body = json!({"metadata": {"name": "team"}, "spec": {"finalizers": []}});
        api.replace_subresource("finalize", "team", &Default::default(), &body)
            .await
            .expect("finalize");
        assert!(api.get_opt("team").await.expect("get").is_none());
    }

    #[test]
    fn a_pod_in_its_grace_period_is_not_finalized_by_an_update() {
        let pod = resolve("pod").expect("pod");
        let stopping = json!({"metadata": {"name": "p", "deletionTimestamp": "2030-01-01T00:00:00Z",
            "deletionGracePeriodSeconds": 30}});
        assert!(!finalized(pod, &stopping));
        let held = json!({"metadata": {"name": "p", "deletionTimestamp": "2030-01-01T00:00:00Z",
            "deletionGracePeriodSeconds": 0}});
        assert!(finalized(pod, &held));
        let live = json!({"metadata": {"name": "p"}});
        assert!(!finalized(pod, &live));
    }

    #[test]
    fn patches_apply_by_media_type() {
        let current = json!({"metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}});
        let kind = resolve("cm").expect("cm");
        let merged = apply_patch(
            kind,
            "application/merge-patch+json",
            &current,
            &json!({"metadata": {"labels": {"x": null, "z": "3"}}}),
        )
        .expect("merge");
        assert_eq!(
            merged.pointer("/metadata/labels"),
            Some(&json!({"y": "2", "z": "3"}))
        );
        let patched = apply_patch(
            kind,
            "application/json-patch+json",
            &current,
            &json!([{"op": "replace", "path": "/metadata/labels/y", "value": "9"}]),
        )
        .expect("json patch");
        assert_eq!(patched.pointer("/metadata/labels/y"), Some(&json!("9")));
        assert!(
            apply_patch(
                kind,
                "application/json-patch+json",
                &current,
                &json!([{"op": "remove", "path": "/nope"}])
            )
            .is_err()
        );
        let strategic = apply_patch(
            kind,
            "application/strategic-merge-patch+json",
            &current,
            &json!({"metadata": {"finalizers": ["a"], "labels": {"x": null}}}),
        )
        .expect("strategic");
        assert_eq!(
            strategic.pointer("/metadata/finalizers"),
            Some(&json!(["a"]))
        );
        assert_eq!(
            strategic.pointer("/metadata/labels"),
            Some(&json!({"y": "2"}))
        );
        let err = apply_patch(
            kind,
            "application/strategic-merge-patch+json",
            &current,
            &json!({"metadata": {"ownerReferences": [{"name": "x"}]}}),
        )
        .expect_err("no uid");
        assert!(
            err.to_string().contains("metadata.ownerReferences[0]"),
            "{err}"
        );
    }
}
