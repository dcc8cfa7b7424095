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
