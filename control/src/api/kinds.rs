//! The kinds wharf serves: one [`ResourceKind`] per kind, with what the generic handlers
//! need to route, default and validate it.

/// Everything the API server and the CLI need to know about one kind.
#[derive(Debug, PartialEq, Eq)]
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
    /// Has a `status` subresource: writes to the main resource keep the stored status,
    /// and status writes keep everything but the status.
    pub has_status: bool,
    /// `spec` changes bump `metadata.generation`.
    pub has_spec: bool,
    /// Shown in `kubectl get all`.
    pub in_all: bool,
}

impl ResourceKind {
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

#[allow(clippy::too_many_arguments)] // a table row: one argument per column
const fn kind(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    has_status: bool,
    has_spec: bool,
    in_all: bool,
) -> ResourceKind {
    ResourceKind {
        group,
        version: "v1",
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        has_status,
        has_spec,
        in_all,
    }
}

/// Every kind wharf serves, grouped by API group in the order discovery lists them.
pub static KINDS: &[ResourceKind] = &[
    kind(
        "",
        "Namespace",
        "namespaces",
        "namespace",
        false,
        &["ns"],
        true,
        true,
        false,
    ),
    kind("", "Pod", "pods", "pod", true, &["po"], true, true, true),
    kind(
        "",
        "Service",
        "services",
        "service",
        true,
        &["svc"],
        true,
        true,
        true,
    ),
    kind(
        "",
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
        false,
        false,
        false,
    ),
    kind(
        "",
        "Node",
        "nodes",
        "node",
        false,
        &["no"],
        true,
        true,
        false,
    ),
    kind(
        "",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        false,
        false,
        false,
    ),
    kind(
        "",
        "Secret",
        "secrets",
        "secret",
        true,
        &[],
        false,
        false,
        false,
    ),
    kind(
        "",
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        false,
        false,
        false,
    ),
    kind(
        "apps",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        true,
        true,
        true,
    ),
    kind(
        "apps",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        true,
        true,
        true,
    ),
    kind(
        "apps",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        true,
        &["ds"],
        true,
        true,
        true,
    ),
    kind("batch", "Job", "jobs", "job", true, &[], true, true, true),
    kind(
        "coordination.k8s.io",
        "Lease",
        "leases",
        "lease",
        true,
        &[],
        false,
        true,
        false,
    ),
    kind(
        "discovery.k8s.io",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        &[],
        false,
        false,
        false,
    ),
];

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
