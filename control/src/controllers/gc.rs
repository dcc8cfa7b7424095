//! The garbage collector: deleting an owner deletes, or orphans, what it owns.
//!
//! Objects name their owners in `metadata.ownerReferences` (apiVersion, kind, name, uid).
//! How a deletion cascades is chosen per delete (`propagationPolicy`), and the API
//! server's delete path turns it into finalizers ([`crate::apiserver::registry::store::plan_delete`]):
//!
//! - **Background** (the default): the owner is removed at once; the collector then finds
//!   dependents whose owners are all gone and deletes them (in the background too, so the
//!   cascade goes down level by level: Deployment → ReplicaSets → Pods).
//! - **Foreground**: the owner is kept with the `foregroundDeletion` finalizer and a
//!   `deletionTimestamp`; the collector deletes its dependents (in the foreground, so a
//!   whole tree empties bottom-up) and removes the finalizer when no dependent with
//!   `blockOwnerDeletion: true` is left, which lets the API server remove the owner.
//! - **Orphan**: the owner is kept with the `orphan` finalizer; the collector removes the
//!   ownerReferences to it from its dependents, then the finalizer.
//!
//! **Generic over kinds.** The collector watches every kind of the kinds table
//! ([`crate::api::KINDS`]) as metadata alone (`PartialObjectMetadata`: the API server
//! sends no spec or status, so a pod change costs the collector little to parse), each
//! into a reflector cache, and looks at
//! the ownership graph as a whole: no code per kind, and a new kind in the table is
//! collected without a change here. The kinds CustomResourceDefinitions add are watched
//! too, from when their definition is established, so an operator's objects own what it
//! creates as a Deployment owns its ReplicaSets. It is level-triggered like the other controllers but
//! not keyed by one kind (kube-runtime's `Controller` is): any change to any object
//! schedules a pass (debounced by `gc_debounce`), and a pass computes every action from
//! the caches with the pure [`decide`] and carries them out. A pass whose action failed
//! is repeated after a back-off.
//!
//! **Caches lag; deletions must not.** An owner that is absent from the cache may just
//! not have arrived yet (a dependent created right after its owner). Like Kubernetes'
//! `attemptToDeleteItem`, the collector confirms every owner it believes gone with a live
//! GET (by name, comparing the uid) before it deletes a dependent or drops a reference,
//! and deletes with a uid precondition, so a new object that took the name is never hit.
//! Patches carry the object's uid and resourceVersion: a stale cache gives a 409 and a
//! later pass, not a lost write.

use super::ControllerConfig;
use super::common;
use crate::api::kinds::{KINDS, ResourceKind, find_kind, split_api_version};
use crate::api::wellknown::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
use crate::apiserver::registry::custom::{self, definition};
use futures::StreamExt;
use futures::stream::SelectAll;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::core::{DynamicResourceScope, Resource};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// After a pass with a failed action, the next pass comes this long after, doubling.
const RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// A pass runs this often even without changes (a missed event costs no more).
const RESYNC: Duration = Duration::from_secs(60);

/// Starts the collector; it stops when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    config: &ControllerConfig,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    tasks.spawn(run(client, config.gc_debounce, shutdown));
}

/// How long a controller that is asked to stop may take to finish the reconciles it has
/// started.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs a controller (built with `graceful_shutdown_on(shutdown)`) until `shutdown`, then
/// gives it [`STOP_GRACE`] to finish what it is doing. The bound matters: kube-runtime's
/// graceful stop waits for the controller's cache to be ready first, and a cache that
/// never synced (a shutdown right after start) would hold it forever.
pub(super) async fn run_until_shutdown(
    shutdown: CancellationToken,
    controller: impl std::future::Future<Output = ()>,
) {
    let mut controller = std::pin::pin!(controller);
    tokio::select! {
        _ = &mut controller => {}
        _ = shutdown.cancelled() => {
            let _ = tokio::time::timeout(STOP_GRACE, controller).await;
        }
    }
}

/// How a kind is reached through the dynamic API.
pub fn api_resource(kind: &ResourceKind) -> ApiResource {
    ApiResource {
        group: kind.group.to_string(),
        version: kind.version.to_string(),
        api_version: kind.api_version(),
        kind: kind.kind.to_string(),
        plural: kind.plural.to_string(),
    }
}

/// The dynamic API for one object of `kind` (in `namespace` when it is namespaced).
pub fn dynamic_api(
    client: &kube::Client,
    kind: &ResourceKind,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let ar = api_resource(kind);
    match namespace {
        Some(ns) if kind.namespaced => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    }
}

// ---------------------------------------------------------------------------------------
// The graph and the decision

/// What the collector needs to know of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub kind: &'static ResourceKind,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub resource_version: Option<String>,
    pub owners: Vec<OwnerReference>,
    pub finalizers: Vec<String>,
    pub deleting: bool,
}

impl Item {
    pub fn of(kind: &'static ResourceKind, m: &ObjectMeta) -> Self {
        Item {
            kind,
            namespace: m.namespace.clone().filter(|n| !n.is_empty()),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            resource_version: m.resource_version.clone(),
            owners: m.owner_references.clone().unwrap_or_default(),
            finalizers: m.finalizers.clone().unwrap_or_default(),
            deleting: m.deletion_timestamp.is_some(),
        }
    }

    fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind.qualified_singular(), self.name),
            None => format!("{} {}", self.kind.qualified_singular(), self.name),
        }
    }
}

/// An owner the cache does not show: where to look it up live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerKey {
    pub kind: &'static ResourceKind,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

/// What the collector does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Delete a dependent whose owners are gone (`unless_present`, confirmed live first)
    /// or are being deleted in the foreground.
    Delete {
        item: Item,
        policy: PropagationPolicy,
        unless_present: Vec<OwnerKey>,
    },
    /// Remove the references to these owner uids (orphaned, or gone while another owner
    /// remains); `unless_present` are confirmed gone live first.
    DropOwners {
        item: Item,
        uids: Vec<String>,
        unless_present: Vec<OwnerKey>,
    },
    /// Remove a GC finalizer from an owner whose dependents are dealt with.
    RemoveFinalizer { item: Item, finalizer: String },
}

/// How a dependent stands with one of its owners.
enum Standing {
    /// Exists and is not deleted in the foreground (or its kind is unknown here).
    Solid,
    /// Being deleted in the foreground: its dependents go first.
    Waiting,
    /// Not in the cache: gone, unless a live look says otherwise.
    Dangling(OwnerKey),
}

fn standing(
    dependent: &Item,
    owner: &OwnerReference,
    by_uid: &HashMap<&str, &Item>,
    custom: &[&'static ResourceKind],
) -> Standing {
    let group = split_api_version(&owner.api_version).0;
    let found = find_kind(&owner.api_version, &owner.kind).or_else(|| {
        // Any version of a custom kind: its versions are one collection.
        custom
            .iter()
            .copied()
            .find(|k| k.group == group && k.kind == owner.kind)
    });
    let Some(kind) = found else {
        // An owner of a kind this cluster does not serve is nothing we can judge.
        return Standing::Solid;
    };
    if kind.namespaced && dependent.namespace.is_none() {
        // A cluster-scoped object cannot be owned by a namespaced one: leave it alone.
        return Standing::Solid;
    }
    let namespace = if kind.namespaced {
        dependent.namespace.clone()
    } else {
        None
    };
    match by_uid.get(owner.uid.as_str()) {
        Some(o)
            if std::ptr::eq(o.kind, kind) && o.name == owner.name && o.namespace == namespace =>
        {
            if o.deleting && o.finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
                Standing::Waiting
            } else {
                Standing::Solid
            }
        }
        _ => Standing::Dangling(OwnerKey {
            kind,
            namespace,
            name: owner.name.clone(),
            uid: owner.uid.clone(),
        }),
    }
}

/// Every action the ownership graph of `items` calls for, with `custom` the custom
/// kinds watched (owners of those kinds are judged too). Pure.
pub fn decide(custom: &[&'static ResourceKind], items: &[Item]) -> Vec<Action> {
    let by_uid: HashMap<&str, &Item> = items.iter().map(|i| (i.uid.as_str(), i)).collect();
    let mut dependents: HashMap<&str, Vec<(&Item, &OwnerReference)>> = HashMap::new();
    for item in items {
        for owner in &item.owners {
            dependents
                .entry(owner.uid.as_str())
                .or_default()
                .push((item, owner));
        }
    }
    let mut actions = Vec::new();

    // Dependents whose owners are gone or going.
    for item in items.iter().filter(|i| !i.owners.is_empty() && !i.deleting) {
        let mut solid = 0;
        let mut waiting = Vec::new();
        let mut dangling = Vec::new();
        for owner in &item.owners {
            match standing(item, owner, &by_uid, custom) {
                Standing::Solid => solid += 1,
                Standing::Waiting => waiting.push(owner.uid.clone()),
                Standing::Dangling(key) => dangling.push(key),
            }
        }
        if solid > 0 {
            if !waiting.is_empty() || !dangling.is_empty() {
                let mut uids = waiting;
                uids.extend(dangling.iter().map(|k| k.uid.clone()));
                actions.push(Action::DropOwners {
                    item: item.clone(),
                    uids,
                    unless_present: dangling,
                });
            }
            continue;
        }
        let policy = if !waiting.is_empty() {
            PropagationPolicy::Foreground
        } else if item.finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
            PropagationPolicy::Orphan
        } else {
            PropagationPolicy::Background
        };
        actions.push(Action::Delete {
            item: item.clone(),
            policy,
            unless_present: dangling,
        });
    }

    // Owners being deleted with a GC finalizer.
    for owner in items.iter().filter(|i| i.deleting) {
        let deps = dependents
            .get(owner.uid.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if owner.finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
            if deps.is_empty() {
                actions.push(Action::RemoveFinalizer {
                    item: owner.clone(),
                    finalizer: ORPHAN_FINALIZER.into(),
                });
            }
            for (dep, _) in deps {
                actions.push(Action::DropOwners {
                    item: (*dep).clone(),
                    uids: vec![owner.uid.clone()],
                    unless_present: vec![],
                });
            }
        } else if owner.finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
            let blocking = deps
                .iter()
                .any(|(_, r)| r.block_owner_deletion == Some(true));
            if !blocking {
                actions.push(Action::RemoveFinalizer {
                    item: owner.clone(),
                    finalizer: FOREGROUND_FINALIZER.into(),
                });
            }
        }
    }
    actions
}

// ---------------------------------------------------------------------------------------
// Doing

type Changes = SelectAll<Pin<Box<dyn futures::Stream<Item = (usize, bool)> + Send>>>;

type Stores = Vec<(&'static ResourceKind, Store<Ownership>)>;

/// An object as the collector watches and caches it: the metadata [`Item::of`] reads
/// (identity, owners, finalizers, deletion), from the API's metadata-only answers
/// (`PartialObjectMetadata`). Labels, annotations and managedFields are skipped by the
/// decoder rather than built and dropped: every write of every kind passes through here,
/// and a pod's managedFields alone are several times what the collector keeps of it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Ownership {
    #[serde(default, deserialize_with = "ownership_meta")]
    metadata: ObjectMeta,
}

fn ownership_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct Read {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
        owner_references: Option<Vec<OwnerReference>>,
        finalizers: Option<Vec<String>>,
        deletion_timestamp: Option<Time>,
    }
    let m = <Read as serde::Deserialize>::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        owner_references: m.owner_references,
        finalizers: m.finalizers,
        deletion_timestamp: m.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

impl Resource for Ownership {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    /// Lists, gets and watches of it ask for `PartialObjectMetadata`.
    fn metadata_api() -> bool {
        true
    }

    fn kind(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn group(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Starts watching `kind` into a new cache, its changes tagged with its index.
fn watch_kind(
    client: &kube::Client,
    kind: &'static ResourceKind,
    stores: &mut Stores,
    changes: &mut Changes,
) {
    let i = stores.len();
    let ar = api_resource(kind);
    let writer = reflector::store::Writer::new(ar.clone());
    stores.push((kind, writer.as_reader()));
    // Metadata-only lists and watches (see `Ownership`), decoded into only what the
    // collector reads: its cache keeps nothing else, so a cluster's metadata is not held
    // twice in memory.
    let api: Api<Ownership> = Api::all_with(client.clone(), &ar);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .map(move |event| match event {
            Ok(watcher::Event::InitDone) => (i, true),
            Ok(_) => (i, false),
            Err(e) => {
                tracing::debug!(kind = kind.kind, error = %e, "garbage collector: watch failed");
                (i, false)
            }
        });
    changes.push(Box::pin(stream));
}

/// The custom kinds of `crds` not watched yet: one served version of every established
/// definition (its versions are one collection).
fn new_custom_kinds(
    crds: &[Arc<CustomResourceDefinition>],
    stores: &Stores,
) -> Vec<&'static ResourceKind> {
    crds.iter()
        .filter_map(|c| serde_json::to_value(&**c).ok())
        .filter(definition::is_established)
        .filter_map(|c| custom::rows_of(&c).first().copied())
        .filter(|k| {
            !stores
                .iter()
                .any(|(w, _)| (w.group, w.plural) == (k.group, k.plural))
        })
        .collect()
}

async fn run(client: kube::Client, debounce: Duration, shutdown: CancellationToken) {
    let mut stores: Stores = Vec::new();
    let mut changes: Changes = SelectAll::new();
    let owned: Vec<&'static ResourceKind> =
        KINDS.iter().filter(|k| k.strategy.owns_storage()).collect();
    for kind in owned.iter().copied() {
        watch_kind(&client, kind, &mut stores, &mut changes);
    }
    // Custom kinds are watched from when their definition is established.
    let (crd_reader, crd_writer) = reflector::store();
    let crd_events = reflector::reflector(
        crd_writer,
        watcher(
            Api::<CustomResourceDefinition>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    futures::pin_mut!(crd_events);
    let mut synced = vec![false; stores.len()];
    let mut failures: u32 = 0;
    let mut next_pass: Option<tokio::time::Instant> = None;
    loop {
        let wake = next_pass.unwrap_or_else(|| tokio::time::Instant::now() + RESYNC);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            crd = crd_events.next() => {
                if let Some(Err(e)) = &crd {
                    tracing::debug!(error = %e, "garbage collector: watching definitions");
                }
                for kind in new_custom_kinds(&crd_reader.state(), &stores) {
                    watch_kind(&client, kind, &mut stores, &mut changes);
                    synced.push(false);
                }
            }
            change = changes.next() => {
                let Some((i, init_done)) = change else { return };
                if init_done && let Some(s) = synced.get_mut(i) {
                    *s = true;
                }
                // Gather the changes of the next moment into one pass.
                let soon = tokio::time::Instant::now() + debounce;
                if next_pass.is_none_or(|p| p > soon) {
                    next_pass = Some(soon);
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                next_pass = None;
                // The built-in kinds' caches must be complete; a custom kind's may lag
                // (an owner missing from it is confirmed gone live before anything).
                if !synced[..owned.len()].iter().all(|s| *s) {
                    continue;
                }
                let custom: Vec<&'static ResourceKind> =
                    stores[owned.len()..].iter().map(|(k, _)| *k).collect();
                let items: Vec<Item> = stores
                    .iter()
                    .flat_map(|(kind, store)| {
                        store
                            .state()
                            .into_iter()
                            .map(move |o| Item::of(kind, &o.metadata))
                    })
                    .collect();
                let actions = decide(&custom, &items);
                let mut ok = true;
                for action in actions {
                    if shutdown.is_cancelled() {
                        return;
                    }
                    if let Err(e) = execute(&client, &action).await {
                        ok = false;
                        if e.code() != Some(409) {
                            tracing::warn!(error = %e, "garbage collector");
                        }
                    }
                }
                if ok {
                    failures = 0;
                } else {
                    failures = failures.saturating_add(1);
                    let delay = RETRY
                        .saturating_mul(1u32 << failures.min(10))
                        .min(MAX_RETRY);
                    next_pass = Some(tokio::time::Instant::now() + delay);
                }
            }
        }
    }
}

/// Is this owner really gone? A live GET by name, and the uid compared.
async fn gone(client: &kube::Client, owner: &OwnerKey) -> Result<bool, common::Error> {
    let api = dynamic_api(client, owner.kind, owner.namespace.as_deref());
    let found = api
        .get_opt(&owner.name)
        .await
        .map_err(common::Error::api("looking up owner", &owner.name))?;
    Ok(found.is_none_or(|o| o.metadata.uid.as_deref() != Some(owner.uid.as_str())))
}

async fn all_gone(client: &kube::Client, owners: &[OwnerKey]) -> Result<bool, common::Error> {
    for owner in owners {
        if !gone(client, owner).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A merge patch of `metadata` fields, guarded by the object's uid and resourceVersion.
fn guarded(item: &Item, fields: Value) -> Value {
    let mut meta = json!({"uid": item.uid, "resourceVersion": item.resource_version});
    if let (Some(m), Some(f)) = (meta.as_object_mut(), fields.as_object()) {
        m.extend(f.clone());
    }
    json!({ "metadata": meta })
}

async fn execute(client: &kube::Client, action: &Action) -> Result<(), common::Error> {
    match action {
        Action::Delete {
            item,
            policy,
            unless_present,
        } => {
            if !all_gone(client, unless_present).await? {
                return Ok(());
            }
            tracing::info!(object = %item.label(), ?policy, "garbage collector: deleting a dependent whose owner is gone");
            let params = DeleteParams {
                propagation_policy: Some(policy.clone()),
                preconditions: Some(Preconditions {
                    uid: Some(item.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            let api = dynamic_api(client, item.kind, item.namespace.as_deref());
            match api.delete(&item.name, &params).await {
                Ok(_) => Ok(()),
                Err(e) if matches!(common::code_of(&e), Some(404 | 409)) => Ok(()),
                Err(e) => Err(common::Error::api("deleting dependent", item.label())(e)),
            }
        }
        Action::DropOwners {
            item,
            uids,
            unless_present,
        } => {
            let mut drop: BTreeSet<&str> = uids.iter().map(String::as_str).collect();
            for owner in unless_present {
                if !gone(client, owner).await? {
                    drop.remove(owner.uid.as_str());
                }
            }
            if drop.is_empty() {
                return Ok(());
            }
            let kept: Vec<&OwnerReference> = item
                .owners
                .iter()
                .filter(|o| !drop.contains(o.uid.as_str()))
                .collect();
            let refs = if kept.is_empty() {
                Value::Null
            } else {
                json!(kept)
            };
            patch(
                client,
                item,
                guarded(item, json!({"ownerReferences": refs})),
            )
            .await
        }
        Action::RemoveFinalizer { item, finalizer } => {
            let kept: Vec<&String> = item.finalizers.iter().filter(|f| *f != finalizer).collect();
            let list = if kept.is_empty() {
                Value::Null
            } else {
                json!(kept)
            };
            tracing::info!(object = %item.label(), %finalizer, "garbage collector: dependents dealt with; removing the finalizer");
            patch(client, item, guarded(item, json!({"finalizers": list}))).await
        }
    }
}

async fn patch(client: &kube::Client, item: &Item, body: Value) -> Result<(), common::Error> {
    let api = dynamic_api(client, item.kind, item.namespace.as_deref());
    match api
        .patch(&item.name, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if common::code_of(&e) == Some(404) => Ok(()),
        Err(e) => Err(common::Error::api("patching", item.label())(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::kinds::resolve;

    /// The collector's watch asks for metadata alone and keeps what `Item::of` reads,
    /// nothing else of what the API sends.
    #[test]
    fn ownership_keeps_what_the_collector_reads() {
        assert!(Ownership::metadata_api());
        let sent = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"name": "web-1", "namespace": "default", "uid": "u1",
                "resourceVersion": "42", "generation": 3,
                "creationTimestamp": "2026-12-07T10:00:00Z",
                "deletionTimestamp": "2026-12-07T11:00:00Z",
                "labels": {"app": "web"}, "annotations": {"a": "b"},
                "finalizers": ["foregroundDeletion"],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web", "uid": "u0", "controller": true}],
                "managedFields": [{"manager": "m", "operation": "Update",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]}});
        let o: Ownership = serde_json::from_value(sent).expect("decodes");
        let m = &o.metadata;
        assert_eq!(m.name.as_deref(), Some("web-1"));
        assert_eq!(m.namespace.as_deref(), Some("default"));
        assert_eq!(m.uid.as_deref(), Some("u1"));
        assert_eq!(m.resource_version.as_deref(), Some("42"));
        assert!(m.deletion_timestamp.is_some());
        assert_eq!(m.finalizers, Some(vec!["foregroundDeletion".to_string()]));
        let owners = m.owner_references.as_ref().expect("owners");
        assert_eq!(
            (owners[0].uid.as_str(), owners[0].controller),
            ("u0", Some(true))
        );
        assert!(m.labels.is_none() && m.annotations.is_none() && m.managed_fields.is_none());
        assert!(m.generation.is_none() && m.creation_timestamp.is_none());
        let item = Item::of(resolve("pods").expect("pods"), &o.metadata);
        assert!(item.deleting);
        assert_eq!(item.owners.len(), 1);
        // An object without metadata (never sent, but not a failure) is empty.
        let bare: Ownership = serde_json::from_value(json!({})).expect("decodes");
        assert!(bare.metadata.name.is_none());
    }

    fn owner_ref(kind: &str, name: &str, uid: &str, block: bool) -> OwnerReference {
        let api_version = resolve(kind).unwrap().api_version();
        OwnerReference {
            api_version,
            kind: resolve(kind).unwrap().kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(block),
        }
    }

    fn item(kind: &str, name: &str, uid: &str, owners: Vec<OwnerReference>) -> Item {
        let kind = resolve(kind).unwrap();
        Item {
            kind,
            namespace: kind.namespaced.then(|| "default".to_string()),
            name: name.into(),
            uid: uid.into(),
            resource_version: Some("1".into()),
            owners,
            finalizers: vec![],
            deleting: false,
        }
    }

    fn deleting(mut i: Item, finalizer: &str) -> Item {
        i.deleting = true;
        i.finalizers = vec![finalizer.into()];
        i
    }

    fn summary(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Delete {
                    item,
                    policy,
                    unless_present,
                } => format!(
                    "delete {} {policy:?} unless {:?}",
                    item.name,
                    unless_present
                        .iter()
                        .map(|k| k.name.as_str())
                        .collect::<Vec<_>>()
                ),
                Action::DropOwners { item, uids, .. } => format!("drop {} {uids:?}", item.name),
                Action::RemoveFinalizer { item, finalizer } => {
                    format!("unfinalize {} {finalizer}", item.name)
                }
            })
            .collect()
    }

    #[test]
    fn owned_objects_with_their_owner_stay() {
        let items = [
            item("deploy", "web", "d1", vec![]),
            item(
                "rs",
                "web-1",
                "r1",
                vec![owner_ref("deploy", "web", "d1", true)],
            ),
            item(
                "pod",
                "web-1-a",
                "p1",
                vec![owner_ref("rs", "web-1", "r1", true)],
            ),
        ];
        assert!(decide(&[], &items).is_empty());
    }

    #[test]
    fn background_deletes_dependents_of_a_vanished_owner_after_a_live_check() {
        // The Deployment is gone: its ReplicaSet goes (the pods follow once it is gone).
        let items = [
            item(
                "rs",
                "web-1",
                "r1",
                vec![owner_ref("deploy", "web", "d1", true)],
            ),
            item(
                "pod",
                "web-1-a",
                "p1",
                vec![owner_ref("rs", "web-1", "r1", true)],
            ),
        ];
        let actions = decide(&[], &items);
        assert_eq!(
            summary(&actions),
            ["delete web-1 Background unless [\"web\"]"]
        );
        let Action::Delete { unless_present, .. } = &actions[0] else {
            unreachable!()
        };
        assert_eq!(unless_present[0].kind.kind, "Deployment");
        assert_eq!(unless_present[0].namespace.as_deref(), Some("default"));
        // An owner by the same name but another uid is not the owner.
        let items = [
            item("deploy", "web", "d2", vec![]),
            item(
                "rs",
                "web-1",
                "r1",
                vec![owner_ref("deploy", "web", "d1", true)],
            ),
        ];
        assert_eq!(
            summary(&decide(&[], &items)),
            ["delete web-1 Background unless [\"web\"]"]
        );
        // With another owner still there, only the dangling reference goes.
        let items = [
            item("cm", "keep", "c1", vec![]),
            item(
                "pod",
                "p",
                "p1",
                vec![
                    owner_ref("rs", "gone", "r1", true),
                    owner_ref("cm", "keep", "c1", false),
                ],
            ),
        ];
        assert_eq!(summary(&decide(&[], &items)), ["drop p [\"r1\"]"]);
        // Cluster-scoped owners of namespaced objects are looked up without a namespace.
        let items = [item(
            "lease",
            "n1",
            "l1",
            vec![owner_ref("node", "n1", "nd1", false)],
        )];
        let actions = decide(&[], &items);
        let Action::Delete { unless_present, .. } = &actions[0] else {
            unreachable!()
        };
        assert_eq!(unless_present[0].namespace, None);
    }

    #[test]
    fn foreground_deletes_dependents_then_releases_the_owner() {
        let rs = deleting(item("rs", "web-1", "r1", vec![]), FOREGROUND_FINALIZER);
        let items = [
            rs.clone(),
            item("pod", "a", "p1", vec![owner_ref("rs", "web-1", "r1", true)]),
            item(
                "pod",
                "b",
                "p2",
                vec![owner_ref("rs", "web-1", "r1", false)],
            ),
        ];
        assert_eq!(
            summary(&decide(&[], &items)),
            [
                "delete a Foreground unless []",
                "delete b Foreground unless []"
            ]
        );
        // a is terminating (blocking), b is gone: the owner still waits for a.
        let mut a = items[1].clone();
        a.deleting = true;
        assert!(decide(&[], &[rs.clone(), a]).is_empty());
        // Only non-blocking dependents left: the finalizer goes.
        let mut b = items[2].clone();
        b.deleting = true;
        assert_eq!(
            summary(&decide(&[], &[rs.clone(), b])),
            ["unfinalize web-1 foregroundDeletion"]
        );
        assert_eq!(
            summary(&decide(&[], &[rs])),
            ["unfinalize web-1 foregroundDeletion"]
        );
    }

    #[test]
    fn orphan_drops_references_then_the_finalizer() {
        let rs = deleting(item("rs", "web-1", "r1", vec![]), ORPHAN_FINALIZER);
        let pod = item("pod", "a", "p1", vec![owner_ref("rs", "web-1", "r1", true)]);
        assert_eq!(
            summary(&decide(&[], &[rs.clone(), pod])),
            ["drop a [\"r1\"]"]
        );
        assert_eq!(summary(&decide(&[], &[rs])), ["unfinalize web-1 orphan"]);
    }

    #[test]
    fn unknown_owner_kinds_and_going_objects_are_left_alone() {
        let mut stranger = owner_ref("pod", "x", "u1", true);
        stranger.api_version = "example.com/v1".into();
        stranger.kind = "Widget".into();
        let items = [item("pod", "a", "p1", vec![stranger])];
        assert!(decide(&[], &items).is_empty());
        let mut going = item("pod", "a", "p1", vec![owner_ref("rs", "gone", "r1", true)]);
        going.deleting = true;
        assert!(decide(&[], &[going]).is_empty());
    }

    #[test]
    fn owners_of_custom_kinds_are_judged_too() {
        let crd = json!({"spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "greetings", "singular": "greeting", "kind": "Greeting"},
            "versions": [{"name": "v1", "served": true, "storage": true},
                         {"name": "v2", "served": true, "storage": false}]}});
        let greeting = custom::rows_of(&crd)[0];
        let owner = OwnerReference {
            api_version: "example.com/v2".into(),
            kind: "Greeting".into(),
            name: "hello".into(),
            uid: "g1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let cm = item("cm", "greeting-hello", "c1", vec![owner]);
        // A kind the collector does not watch is nothing it can judge.
        assert!(decide(&[], std::slice::from_ref(&cm)).is_empty());
        // Watched, with the owner gone from its cache: the dependent goes.
        assert_eq!(
            summary(&decide(&[greeting], std::slice::from_ref(&cm))),
            ["delete greeting-hello Background unless [\"hello\"]"]
        );
        let mut live = item("cm", "hello", "g1", vec![]);
        live.kind = greeting;
        assert!(decide(&[greeting], &[cm, live]).is_empty());
    }
}
