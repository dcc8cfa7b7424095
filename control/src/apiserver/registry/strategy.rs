//! What one kind does differently: the [`Strategy`] trait.
//!
//! The generic store ([`super::store`]) owns everything every kind shares: identity and
//! timestamps, the compare-and-swap retry loop, preconditions, finalizers and propagation,
//! dry run. At each point where a kind may differ it asks the kind's strategy, as
//! kube-apiserver's generic registry asks a kind's `strategy.go`: what a new object gets
//! (status reset, generated fields), what an update may change (the spec/status split,
//! immutable fields), what is valid, what moves `metadata.generation`, how a delete is
//! held (grace periods, finalizers outside `metadata`), which subresources it has, which
//! fields a field selector may name, how its lists merge in a strategic merge patch, and
//! how `kubectl get` prints it (its `Table` columns).
//!
//! Every method has the behaviour of a kind with nothing special as its default, so a
//! strategy states only what differs; [`super::strategies::Plain`] states nothing but
//! whether the kind has a spec and a status.
//!
//! Admission that needs the store (allocating a Service's addresses, a Node's pod range,
//! checking Endpoints addresses against the nodes' ranges) is a strategy hook too, run by
//! the store just before it writes; what such a step holds until the write is done comes
//! back in [`Admitted::held`]. Allocated values need no lock: the store writes them with
//! the object in one txn and runs admission again if another server took them first
//! (see `apiserver::ipam`).

use super::super::AppState;
use super::super::error::ApiError;
use super::super::request::Target;
use super::store::DeleteOptions;
use super::subresources::{STATUS, Subresource};
use crate::api::validation::{self, FieldError};
use crate::api::{printers, strategic};
use futures::future::BoxFuture;
use serde_json::Value;

/// How a kind that is not kept in the store serves `get` (`name` set) and `list`.
pub type Computed = for<'a> fn(
    &'a AppState,
    &'a Target,
    &'a super::super::request::Query,
) -> BoxFuture<'a, Result<Value, ApiError>>;

/// Every verb of a resource's main endpoint.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// What an admission step hands back to the write that ran it.
#[derive(Default)]
pub struct Admitted {
    /// Held until the object is stored (an allocator's lock), then dropped.
    pub held: Vec<Box<dyn Send>>,
    /// Warnings for the client (`Warning` headers).
    pub warnings: Vec<String>,
}

impl Admitted {
    /// Nothing held, nothing to say.
    pub fn none() -> Self {
        Self::default()
    }

    /// Only warnings.
    pub fn warnings(warnings: Vec<String>) -> Self {
        Admitted {
            held: Vec::new(),
            warnings,
        }
    }

    /// Holds `guard` until the write is done.
    pub fn holding(guard: Option<impl Send + 'static>) -> Self {
        Admitted {
            held: guard
                .into_iter()
                .map(|g| Box::new(g) as Box<dyn Send>)
                .collect(),
            warnings: Vec::new(),
        }
    }
}

/// A kind's behaviour in the generic registry. See the module documentation.
pub trait Strategy: Send + Sync {
    /// The subresources the kind serves, from [`super::subresources::SUBRESOURCES`].
    fn subresources(&self) -> &'static [&'static Subresource] {
        &[]
    }

    /// For a kind whose objects are computed on request rather than stored (resource
    /// metrics, read from the nodes): what serves its `get` and `list`. Its verbs must be
    /// those two.
    fn computed(&self) -> Option<Computed> {
        None
    }

    /// Whether this row owns its objects in the store: what the garbage collector watches
    /// and namespace deletion deletes. Not a computed kind, and not a second version served
    /// from another row's storage (converted by [`Strategy::present`] and
    /// [`Strategy::default`]).
    fn owns_storage(&self) -> bool {
        self.computed().is_none()
    }

    /// The verbs of the main endpoint, as discovery lists them.
    fn verbs(&self) -> &'static [&'static str] {
        ALL_VERBS
    }

    /// Whether the status is written only through the `status` subresource: a create
    /// starts without one, a main-resource update keeps the stored one, a status update
    /// changes nothing else.
    fn has_status(&self) -> bool {
        self.subresources().iter().any(|s| s.name == STATUS.name)
    }

    /// Whether the kind has a spec whose changes count in `metadata.generation`.
    fn has_spec(&self) -> bool {
        false
    }

    /// Whether an update from `old` to `new` bumps `metadata.generation`.
    fn generation_changed(&self, old: &Value, new: &Value) -> bool {
        self.has_spec() && old.get("spec") != new.get("spec")
    }

    /// What a new object gets beyond the generic fields (uid, timestamps, generation,
    /// status reset), before defaults: a pod's first status, a job's selector.
    fn prepare_for_create(&self, _obj: &mut Value, _uid: &str) {}

    /// What an update keeps or rewrites beyond the generic server-owned metadata and the
    /// spec/status split, before defaults: fields only a subresource may change.
    fn prepare_for_update(&self, _current: &Value, _new: &mut Value) {}

    /// Fills the defaults Kubernetes fills (on create and on every update).
    fn default(&self, _obj: &mut Value) {}

    /// Removes the fields the kind declares beyond its Rust type's knowledge (a custom
    /// resource's schema) and answers their paths, for field validation; the type's own
    /// pruning follows ([`crate::api::fields::prune_unknown`]).
    fn prune_unknown(&self, _obj: &mut Value) -> Vec<String> {
        Vec::new()
    }

    /// Checks a whole (defaulted) object beyond its typed shape and metadata.
    fn validate(&self, _obj: &Value, _errs: &mut Vec<FieldError>) {}

    /// What an update may not change (immutable fields).
    fn validate_update(&self, _old: &Value, _new: &Value, _errs: &mut Vec<FieldError>) {}

    /// The rule for `metadata.name`: `None` if `name` is valid, else the message.
    fn name_invalid(&self, name: &str) -> Option<&'static str> {
        (!validation::is_dns1123_subdomain(name)).then_some(validation::DNS1123_SUBDOMAIN_MSG)
    }

    /// The fields a field selector may name besides `metadata.name` and
    /// `metadata.namespace`.
    fn selectable_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// How `kubectl get` (a `Table`) and `wharf get` print the kind.
    fn printer(&self) -> &'static printers::Printer {
        &printers::DEFAULT
    }

    /// The column headers of a `Table` (`-o wide` when `wide`), NAME first.
    fn columns(&self, wide: bool) -> Vec<&'static str> {
        let p = self.printer();
        match (wide, p.wide) {
            (true, Some(all)) => all.to_vec(),
            (true, None) => [p.narrow, p.extra].concat(),
            (false, _) => p.narrow.to_vec(),
        }
    }

    /// The cells of one object, in the order of [`Strategy::columns`] for the same `wide`.
    fn cells(&self, obj: &Value, wide: bool, now: jiff::Timestamp) -> Vec<String> {
        (self.printer().cells)(obj, wide, now)
    }

    /// How a strategic merge patch merges the kind's lists (its `patchMergeKey`s).
    fn merge_rules(&self) -> &'static strategic::Section {
        &strategic::PLAIN
    }

    /// Whether the kind takes strategic merge patches at all (a custom resource has no
    /// merge keys to follow and refuses them, as Kubernetes does).
    fn strategic_merge(&self) -> bool {
        true
    }

    /// What an object read from the store gets before a client sees it: a custom
    /// resource's `apiVersion` (the version asked for) and its schema's defaults.
    fn present(&self, _obj: &mut Value) {}

    /// The form an object is stored in, when it is not the form it was written in: a
    /// custom resource written at one version of its definition is stored at the
    /// storage version (`apiVersion` rewritten; conversion `None`), and
    /// [`Strategy::present`] rewrites it back to the version asked for. `None`: stored
    /// as it is.
    fn storage_form(&self, _obj: &Value) -> Option<Value> {
        None
    }

    /// Whether [`Strategy::present`] changes anything (else what is stored is served as
    /// it is, and a watch event's line is encoded once for every watcher).
    fn presents(&self) -> bool {
        false
    }

    /// The kind's schema for the OpenAPI documents when it has no Rust type (a custom
    /// resource's `openAPIV3Schema`).
    fn openapi_schema(&self) -> Option<&Value> {
        None
    }

    /// The categories discovery lists beside `all` (`kubectl get CATEGORY`).
    fn categories(&self) -> &'static [&'static str] {
        &[]
    }

    /// Where the `scale` subresource reads and writes the replicas and finds the
    /// selector; `None` for `spec.replicas`, `status.replicas` and `spec.selector`.
    fn scale_paths(&self) -> Option<&crate::apiserver::scale::ScalePaths> {
        None
    }

    /// Where the kind's pod spec is, as a JSON pointer and a field path (a pod's
    /// `spec`, a workload's `spec.template.spec`); `None` for kinds without one.
    fn pod_spec(&self) -> Option<(&'static str, &'static str)> {
        None
    }

    /// Refuses the delete of `name` before anything is read (a system namespace).
    fn check_delete(&self, _name: &str) -> Result<(), ApiError> {
        Ok(())
    }

    /// The grace period a delete of `obj` gives it (a pod running on a node); 0 removes
    /// it as soon as nothing else holds it.
    fn grace_period(&self, _obj: &Value, _opts: &DeleteOptions) -> i64 {
        0
    }

    /// Finalizers the kind keeps outside `metadata.finalizers` (a Namespace's
    /// `spec.finalizers`), as a delete of `obj` leaves them; `already_deleting` when
    /// `obj` is marked already. `None` for kinds without any.
    fn held_by(&self, _obj: &Value, _already_deleting: bool) -> Option<Vec<String>> {
        None
    }

    /// Marks `obj` as being deleted beyond `deletionTimestamp`: stores what
    /// [`Strategy::held_by`] decided and any phase that says so.
    fn mark_deleting(&self, _obj: &mut Value, _held: Option<Vec<String>>) {}

    /// Admission of a create that needs the cluster's state, run just before the write.
    /// By default: the hostPath warnings of a kind that carries a pod spec.
    fn admit_create<'a>(
        &'a self,
        state: &'a AppState,
        target: &'a Target,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(pod_spec_warnings(
            self.pod_spec(),
            state,
            target,
            obj,
            false,
        ))
    }

    /// Admission of an update (main resource or status), run before it is prepared.
    /// By default: the hostPath warnings of a kind that carries a pod spec.
    fn admit_update<'a>(
        &'a self,
        state: &'a AppState,
        target: &'a Target,
        _current: &'a Value,
        new: &'a mut Value,
        status_only: bool,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(pod_spec_warnings(
            self.pod_spec(),
            state,
            target,
            new,
            status_only,
        ))
    }
}

/// The hostPath warnings of an object with a pod spec (a pod or a workload's template),
/// none for a status write or a kind without one.
pub(crate) async fn pod_spec_warnings(
    pod_spec: Option<(&'static str, &'static str)>,
    state: &AppState,
    target: &Target,
    obj: &Value,
    status_only: bool,
) -> Result<Admitted, ApiError> {
    if status_only || pod_spec.is_none() {
        return Ok(Admitted::none());
    }
    Ok(Admitted::warnings(
        super::super::host_path::warnings(state, target.kind, obj).await,
    ))
}
