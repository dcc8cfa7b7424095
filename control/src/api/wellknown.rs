//! Well-known names: finalizers, namespaces, labels and annotations that more than one
//! part of wharf (API server, controllers, nodes, CLI) must spell the same way.

/// The garbage collector's finalizer that orphans an owner's dependents (removes their
/// ownerReferences to it) before the owner goes.
pub const ORPHAN_FINALIZER: &str = "orphan";
/// The garbage collector's finalizer that keeps an owner until its blocking dependents
/// are gone (foreground cascading deletion).
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// The namespace controller's finalizer, in a Namespace's `spec.finalizers`.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";

/// Namespaces that always exist and cannot be deleted.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The label every Node carries with its name; also the topology key of "one per node".
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// The node-readiness taints the node lifecycle controller sets and the scheduler honours
/// tolerations of.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// What `kubectl apply` (client-side) records of the last configuration it applied.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The revision of a ReplicaSet, and of the Deployment's current one.
pub const DEPLOYMENT_REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Why a change was made, copied to the ReplicaSet and shown by `rollout history`.
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";

/// The labels a Job's generated selector and its pods carry: the job's uid and name, in
/// the current spelling and the legacy one.
pub const JOB_CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const LEGACY_JOB_CONTROLLER_UID_LABEL: &str = "controller-uid";
pub const LEGACY_JOB_NAME_LABEL: &str = "job-name";

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The EndpointSlice annotation `{"NODE": "HOST-IP"}`: the address of each endpoint's node
/// (wharf's own).
pub const NODE_ADDRESSES_ANNOTATION: &str = "wharf.dev/node-addresses";
/// The Node annotation where a node publishes its tunnel, `IP:PORT` (wharf's own): nodes
/// and the API server reach pods of a node at another address through it.
pub const TUNNEL_ANNOTATION: &str = "wharf.dev/tunnel";

/// Request-driven autoscaling (the `requestscale` controller and the node proxy): the
/// Deployment annotation asking for `ceil(requests in flight / N)` replicas.
pub const TARGET_CONCURRENCY_ANNOTATION: &str = "wharf.dev/target-concurrency";
/// The Deployment annotation that lets it sleep at zero replicas after this long idle
/// (a Go duration: `60s`, `5m`).
pub const SCALE_TO_ZERO_AFTER_ANNOTATION: &str = "wharf.dev/scale-to-zero-after";
/// The Deployment annotation bounding request-driven scaling (default 100).
pub const MAX_REPLICAS_ANNOTATION: &str = "wharf.dev/max-replicas";
/// The Service annotation naming the Deployment to wake when a request finds no endpoint.
pub const WAKE_ON_REQUEST_ANNOTATION: &str = "wharf.dev/wake-on-request";
/// The reason of the Event a node proxy records about a sleeping Deployment when it holds
/// a request for it: the autoscaler's wake-up signal.
pub const WAKE_UP_REQUESTED_REASON: &str = "WakeUpRequested";
