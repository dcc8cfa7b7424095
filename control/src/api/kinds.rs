//! The kinds wharf serves: one [`ResourceKind`] row per kind, with what the generic
//! handlers need to route, default and validate it.
//!
//! A row is built from the kind's `k8s-openapi` type ([`builtin`]): group, version, kind,
//! URL name and scope come from the type, so they cannot disagree with what clients
//! generated from the same OpenAPI send; the row adds what the type does not say (the
//! singular and short names, `kubectl get all`) and the kind's
//! [`Strategy`], where everything the kind does
//! differently lives. Adding a kind is one strategy file and one row here.
//!
//! These are the built-in rows; CustomResourceDefinitions add rows at runtime, served
//! the same way ([`crate::apiserver::registry::custom`]).

use super::typed::{Scoped, TypeOps, Typed};
use crate::apiserver::registry::Strategy;
use crate::apiserver::registry::strategies::{self as s, Plain};
use k8s_openapi::api::{
    apps::v1 as apps, autoscaling::v1 as autoscaling1, autoscaling::v2 as autoscaling2,
    batch::v1 as batch, coordination::v1 as coord, core::v1 as core, discovery::v1 as disc,
    networking::v1 as net, policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as sched,
    storage::v1 as storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as apireg;

/// Everything the API server and the CLI need to know about one kind.
pub struct ResourceKind {
    /// API group, `""` for the legacy core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// Resource name in URLs: `pods`, `deployments`.
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Shown in `kubectl get all`.
    pub in_all: bool,
    /// What the kind does differently in the registry.
    pub strategy: &'static dyn Strategy,
    /// What needs the kind's Rust type.
    pub typed: TypeOps,
}

impl std::fmt::Debug for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.api_version(), self.kind)
    }
}

/// A kind is its group, version and kind.
impl PartialEq for ResourceKind {
    fn eq(&self, other: &Self) -> bool {
        (self.group, self.version, self.kind) == (other.group, other.version, other.kind)
    }
}

impl Eq for ResourceKind {}

impl ResourceKind {
    /// Has a `status` subresource: writes to the main resource keep the stored status,
    /// and status writes keep everything but the status.
    pub fn has_status(&self) -> bool {
        self.strategy.has_status()
    }

    /// `spec` changes bump `metadata.generation`.
    pub fn has_spec(&self) -> bool {
        self.strategy.has_spec()
    }

    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods`, `deployments.apps`: how kubectl names the resource in messages.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `pod`, `deployment.apps`: how kubectl prints `KIND/NAME` after apply.
    pub fn qualified_singular(&self) -> String {
        if self.group.is_empty() {
            self.singular.to_string()
        } else {
            format!("{}.{}", self.singular, self.group)
        }
    }

    /// The URL of the collection, `/api/v1/namespaces/NS/pods` or `/apis/apps/v1/...`;
    /// `namespace = None` for cluster-scoped kinds or an all-namespaces list.
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace {
            Some(ns) if self.namespaced => format!("{base}/namespaces/{ns}/{}", self.plural),
            _ => format!("{base}/{}", self.plural),
        }
    }

    /// The URL of one object.
    pub fn object_path(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}/{name}", self.collection_path(namespace))
    }
}

/// A row for the `k8s-openapi` type `T`: its group, version, kind, URL name and scope.
pub const fn builtin<T: Typed>(
    singular: &'static str,
    short_names: &'static [&'static str],
    in_all: bool,
    strategy: &'static dyn Strategy,
) -> ResourceKind
where
    T::Scope: Scoped,
{
    ResourceKind {
        group: T::GROUP,
        version: T::VERSION,
        kind: T::KIND,
        plural: T::URL_PATH_SEGMENT,
        singular,
        namespaced: <T::Scope as Scoped>::NAMESPACED,
        short_names,
        in_all,
        strategy,
        typed: TypeOps::of::<T>(),
    }
}

/// Leases: a spec, nothing special.
static LEASE: Plain = Plain {
    spec: true,
    status: false,
    printer: &super::printers::LEASE,
};

/// ControllerRevisions: immutable snapshots a StatefulSet's rollouts are made of.
static CONTROLLER_REVISION: Plain = Plain {
    spec: false,
    status: false,
    printer: &super::printers::stateful::CONTROLLER_REVISION,
};

/// Every kind wharf serves, grouped by API group in the order discovery lists them.
pub static KINDS: &[ResourceKind] = &[
    builtin::<core::Namespace>("namespace", &["ns"], false, &s::namespace::STRATEGY),
    builtin::<core::Pod>("pod", &["po"], true, &s::pod::STRATEGY),
    builtin::<core::Service>("service", &["svc"], true, &s::service::STRATEGY),
    builtin::<core::Endpoints>("endpoints", &["ep"], false, &s::endpoints::STRATEGY),
    builtin::<core::Node>("node", &["no"], false, &s::node::STRATEGY),
    builtin::<core::ConfigMap>("configmap", &["cm"], false, &s::configmap::STRATEGY),
    builtin::<core::Secret>("secret", &[], false, &s::secret::STRATEGY),
    builtin::<core::Event>("event", &["ev"], false, &s::event::STRATEGY),
    builtin::<core::ServiceAccount>(
        "serviceaccount",
        &["sa"],
        false,
        &s::serviceaccount::STRATEGY,
    ),
    builtin::<core::ResourceQuota>(
        "resourcequota",
        &["quota"],
        false,
        &s::resourcequota::STRATEGY,
    ),
    builtin::<core::LimitRange>("limitrange", &["limits"], false, &s::limitrange::STRATEGY),
    builtin::<core::ReplicationController>(
        "replicationcontroller",
        &["rc"],
        true,
        &s::replicationcontroller::STRATEGY,
    ),
    builtin::<core::PersistentVolume>(
        "persistentvolume",
        &["pv"],
        false,
        &s::persistentvolume::STRATEGY,
    ),
    builtin::<core::PersistentVolumeClaim>(
        "persistentvolumeclaim",
        &["pvc"],
        false,
        &s::persistentvolumeclaim::STRATEGY,
    ),
    builtin::<apps::Deployment>("deployment", &["deploy"], true, &s::deployment::STRATEGY),
    builtin::<apps::ReplicaSet>("replicaset", &["rs"], true, &s::replicaset::STRATEGY),
    builtin::<apps::DaemonSet>("daemonset", &["ds"], true, &s::daemonset::STRATEGY),
    builtin::<apps::StatefulSet>("statefulset", &["sts"], true, &s::statefulset::STRATEGY),
    builtin::<apps::ControllerRevision>("controllerrevision", &[], false, &CONTROLLER_REVISION),
    builtin::<batch::Job>("job", &[], true, &s::job::STRATEGY),
    builtin::<autoscaling2::HorizontalPodAutoscaler>(
        "horizontalpodautoscaler",
        &["hpa"],
        true,
        &s::horizontalpodautoscaler::STRATEGY,
    ),
    // Served from the v2 objects, converting (see the strategy).
    builtin::<autoscaling1::HorizontalPodAutoscaler>(
        "horizontalpodautoscaler",
        &["hpa"],
        false,
        &s::horizontalpodautoscaler::V1_STRATEGY,
    ),
    builtin::<batch::CronJob>("cronjob", &["cj"], true, &s::cronjob::STRATEGY),
    builtin::<coord::Lease>("lease", &[], false, &LEASE),
    builtin::<disc::EndpointSlice>("endpointslice", &[], false, &s::endpointslice::STRATEGY),
    builtin::<net::Ingress>("ingress", &["ing"], false, &s::ingress::STRATEGY),
    builtin::<net::IngressClass>("ingressclass", &[], false, &s::ingressclass::STRATEGY),
    builtin::<policy::PodDisruptionBudget>(
        "poddisruptionbudget",
        &["pdb"],
        false,
        &s::poddisruptionbudget::STRATEGY,
    ),
    builtin::<sched::PriorityClass>("priorityclass", &["pc"], false, &s::priorityclass::STRATEGY),
    builtin::<rbac::Role>("role", &[], false, &s::rbac::ROLE),
    builtin::<rbac::ClusterRole>("clusterrole", &[], false, &s::rbac::CLUSTER_ROLE),
    builtin::<rbac::RoleBinding>("rolebinding", &[], false, &s::rbac::ROLE_BINDING),
    builtin::<rbac::ClusterRoleBinding>(
        "clusterrolebinding",
        &[],
        false,
        &s::rbac::CLUSTER_ROLE_BINDING,
    ),
    builtin::<apiext::CustomResourceDefinition>(
        "customresourcedefinition",
        &["crd", "crds"],
        false,
        &s::customresourcedefinition::STRATEGY,
    ),
    builtin::<apireg::APIService>("apiservice", &[], false, &s::apiservice::STRATEGY),
    computed(
        "NodeMetrics",
        "nodes",
        "nodemetrics",
        false,
        &s::metrics::NODE_METRICS,
    ),
    computed(
        "PodMetrics",
        "pods",
        "podmetrics",
        true,
        &s::metrics::POD_METRICS,
    ),
    builtin::<storage::StorageClass>("storageclass", &["sc"], false, &s::storageclass::STRATEGY),
];

/// A row of `metrics.k8s.io/v1beta1`: a kind computed on request, with no Rust type.
const fn computed(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    strategy: &'static dyn Strategy,
) -> ResourceKind {
    ResourceKind {
        group: crate::apiserver::resource_metrics::GROUP,
        version: crate::apiserver::resource_metrics::VERSION,
        kind,
        plural,
        singular,
        namespaced,
        short_names: &[],
        in_all: false,
        strategy,
        typed: TypeOps::untyped(),
    }
}

/// The kind served at `group`/`version` under URL name `plural`.
pub fn find_by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceKind> {
    KINDS
        .iter()
        .find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// The kind named by an object's `apiVersion` and `kind`.
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static ResourceKind> {
    let (group, version) = split_api_version(api_version);
    KINDS
        .iter()
        .find(|k| k.group == group && k.version == version && k.kind == kind)
}

/// Splits `apps/v1` into (`apps`, `v1`) and `v1` into (``, `v1`).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// Resolves what a user types on the command line (`po`, `pods`, `pod`, `Pod`,
/// `deployments.apps`, `deploy`) to a kind.
pub fn resolve(name: &str) -> Option<&'static ResourceKind> {
    let lower = name.to_ascii_lowercase();
    let (base, group) = match lower.split_once('.') {
        Some((b, g)) => (b.to_string(), Some(g.to_string())),
        None => (lower.clone(), None),
    };
    KINDS.iter().find(|k| {
        let group_ok = group.as_deref().is_none_or(|g| g == k.group);
        group_ok
            && (k.plural == base
                || k.singular == base
                || k.kind.eq_ignore_ascii_case(&base)
                || k.short_names.contains(&base.as_str()))
    })
}

/// What is served, for the message that refuses an unknown kind or version.
pub fn served_list() -> String {
    KINDS
        .iter()
        .map(|k| format!("{}/{}", k.api_version(), k.kind))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_short_and_long_names() {
        assert_eq!(resolve("po").map(|k| k.kind), Some("Pod"));
        assert_eq!(resolve("deploy").map(|k| k.kind), Some("Deployment"));
        assert_eq!(
            resolve("deployments.apps").map(|k| k.kind),
            Some("Deployment")
        );
        assert_eq!(resolve("Deployment").map(|k| k.kind), Some("Deployment"));
        assert_eq!(resolve("ep").map(|k| k.kind), Some("Endpoints"));
        assert_eq!(resolve("deployments.batch"), None);
        assert_eq!(resolve("widgets"), None);
    }

    #[test]
    fn rows_built_from_the_types_keep_what_the_hand_written_table_said() {
        let rows: Vec<_> = KINDS
            .iter()
            .map(|k| {
                (
                    k.group,
                    k.kind,
                    k.plural,
                    k.namespaced,
                    k.has_status(),
                    k.has_spec(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("", "Namespace", "namespaces", false, true, true),
                ("", "Pod", "pods", true, true, true),
                ("", "Service", "services", true, true, true),
                ("", "Endpoints", "endpoints", true, false, false),
                ("", "Node", "nodes", false, true, true),
                ("", "ConfigMap", "configmaps", true, false, false),
                ("", "Secret", "secrets", true, false, false),
                ("", "Event", "events", true, false, false),
                ("", "ServiceAccount", "serviceaccounts", true, false, false),
                ("", "ResourceQuota", "resourcequotas", true, true, true),
                ("", "LimitRange", "limitranges", true, false, true),
                (
                    "",
                    "ReplicationController",
                    "replicationcontrollers",
                    true,
                    true,
                    true
                ),
                (
                    "",
                    "PersistentVolume",
                    "persistentvolumes",
                    false,
                    true,
                    true
                ),
                (
                    "",
                    "PersistentVolumeClaim",
                    "persistentvolumeclaims",
                    true,
                    true,
                    true
                ),
                ("apps", "Deployment", "deployments", true, true, true),
                ("apps", "ReplicaSet", "replicasets", true, true, true),
                ("apps", "DaemonSet", "daemonsets", true, true, true),
                ("apps", "StatefulSet", "statefulsets", true, true, true),
                (
                    "apps",
                    "ControllerRevision",
                    "controllerrevisions",
                    true,
                    false,
                    false
                ),
                ("batch", "Job", "jobs", true, true, true),
                (
                    "autoscaling",
                    "HorizontalPodAutoscaler",
                    "horizontalpodautoscalers",
                    true,
                    true,
                    true
                ),
                (
                    "autoscaling",
                    "HorizontalPodAutoscaler",
                    "horizontalpodautoscalers",
                    true,
                    true,
                    true
                ),
                ("batch", "CronJob", "cronjobs", true, true, true),
                ("coordination.k8s.io", "Lease", "leases", true, false, true),
                (
                    "discovery.k8s.io",
                    "EndpointSlice",
                    "endpointslices",
                    true,
                    false,
                    false
                ),
                (
                    "networking.k8s.io",
                    "Ingress",
                    "ingresses",
                    true,
                    true,
                    true
                ),
                (
                    "networking.k8s.io",
                    "IngressClass",
                    "ingressclasses",
                    false,
                    false,
                    true
                ),
                (
                    "policy",
                    "PodDisruptionBudget",
                    "poddisruptionbudgets",
                    true,
                    true,
                    true
                ),
                (
                    "scheduling.k8s.io",
                    "PriorityClass",
                    "priorityclasses",
                    false,
                    false,
                    false
                ),
                (
                    "rbac.authorization.k8s.io",
                    "Role",
                    "roles",
                    true,
                    false,
                    false
                ),
                (
                    "rbac.authorization.k8s.io",
                    "ClusterRole",
                    "clusterroles",
                    false,
                    false,
                    false
                ),
                (
                    "rbac.authorization.k8s.io",
                    "RoleBinding",
                    "rolebindings",
                    true,
                    false,
                    false
                ),
                (
                    "rbac.authorization.k8s.io",
                    "ClusterRoleBinding",
                    "clusterrolebindings",
                    false,
                    false,
                    false
                ),
                (
                    "apiextensions.k8s.io",
                    "CustomResourceDefinition",
                    "customresourcedefinitions",
                    false,
                    true,
                    true
                ),
                (
                    "apiregistration.k8s.io",
                    "APIService",
                    "apiservices",
                    false,
                    true,
                    true
                ),
                (
                    "metrics.k8s.io",
                    "NodeMetrics",
                    "nodes",
                    false,
                    false,
                    false
                ),
                ("metrics.k8s.io", "PodMetrics", "pods", true, false, false),
                (
                    "storage.k8s.io",
                    "StorageClass",
                    "storageclasses",
                    false,
                    false,
                    false
                ),
            ]
        );
        let versions: Vec<String> = KINDS
            .iter()
            .filter(|k| k.version != "v1")
            .map(|k| k.api_version())
            .collect();
        assert_eq!(
            versions,
            [
                "autoscaling/v2",
                "metrics.k8s.io/v1beta1",
                "metrics.k8s.io/v1beta1"
            ]
        );
    }

    #[test]
    fn paths_follow_kubernetes() {
        let pod = resolve("pod").expect("pod");
        assert_eq!(
            pod.collection_path(Some("ns1")),
            "/api/v1/namespaces/ns1/pods"
        );
        assert_eq!(pod.collection_path(None), "/api/v1/pods");
        let node = resolve("node").expect("node");
        assert_eq!(node.object_path(Some("x"), "n1"), "/api/v1/nodes/n1");
        let deploy = resolve("deploy").expect("deploy");
        assert_eq!(
            deploy.object_path(Some("default"), "web"),
            "/apis/apps/v1/namespaces/default/deployments/web"
        );
        assert_eq!(
            find_kind("apps/v1", "Deployment").map(|k| k.plural),
            Some("deployments")
        );
        assert!(find_kind("apps/v2", "Deployment").is_none());
    }
}
