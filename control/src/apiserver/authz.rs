//! Authorization: whether an authenticated [`Identity`] may do what a request asks.
//!
//! Why a fixed policy and not RBAC objects: wharf has two kinds of callers today, the
//! administrators (and the control plane itself) and node agents that joined with a node
//! token. A node token travels to machines outside the control plane's trust, so what it
//! may do must be small and obvious: a node reads what pods need and writes what a node
//! agent reports, and nothing else: no workloads, no namespaces, no listing Secrets (it
//! may `get` one a pod references, by name). [`authorize`] is a pure decision over the
//! request's attributes, as kube-apiserver's authorizers are, unit-tested without I/O;
//! the generic handler calls [`enforce`] before it reads a body or touches the store.
//!
//! A denied request is 403 with kube-apiserver's message, e.g. `pods "x" is forbidden:
//! User "system:node-bootstrap:abc123" cannot delete resource "pods" in API group "" in
//! the namespace "default"`.

use super::auth::{GROUP_MASTERS, GROUP_NODES, Identity};
use super::error::ApiError;
use super::request::Target;
use crate::api::kinds::ResourceKind;
use http::Method;
use std::fmt;

/// The verb of a resource request, as Kubernetes names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    /// The verb of a request with `method`, on one object (`named`) or a collection;
    /// `None` for a method no verb maps to (the handler answers 405).
    pub fn of(method: &Method, named: bool, watch: bool) -> Option<Verb> {
        Some(match (method, named) {
            (&Method::GET, false) if watch => Verb::Watch,
            (&Method::GET, false) => Verb::List,
            (&Method::GET, true) => Verb::Get,
            (&Method::POST, false) => Verb::Create,
            (&Method::PUT, true) => Verb::Update,
            (&Method::PATCH, true) => Verb::Patch,
            (&Method::DELETE, true) => Verb::Delete,
            (&Method::DELETE, false) => Verb::DeleteCollection,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }

    fn reads(self) -> bool {
        matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

/// The kinds a node writes: itself, its lease, events, and the pods it runs (status,
/// deletion once stopped; mirror pods later).
const NODE_WRITABLE: &[(&str, &str)] = &[
    ("", "Node"),
    ("coordination.k8s.io", "Lease"),
    ("", "Event"),
    ("", "Pod"),
];

/// Whether `identity` may `verb` the resource `kind` (`subresource`) named `name` in
/// `namespace`. Pure; see the module docs for the policy.
pub fn authorize(
    identity: &Identity,
    verb: Verb,
    kind: &ResourceKind,
    namespace: Option<&str>,
    name: Option<&str>,
    subresource: Option<&str>,
) -> Decision {
    // The namespace and name do not matter to today's policy; they are part of the
    // attributes so that a rule about them (a node's own Node object) is a local change.
    let _ = (namespace, name);
    if identity.in_group(GROUP_MASTERS) {
        return Decision::Allow;
    }
    if identity.in_group(GROUP_NODES) && node_may(verb, kind, subresource) {
        return Decision::Allow;
    }
    Decision::Deny
}

fn node_may(verb: Verb, kind: &ResourceKind, subresource: Option<&str>) -> bool {
    // Objects and their status; not the log proxy (a node reads its own pods' logs
    // locally) nor anything a later subresource adds.
    if !matches!(subresource, None | Some("status")) {
        return false;
    }
    let secret = kind.group.is_empty() && kind.kind == "Secret";
    if verb.reads() {
        return !(secret && matches!(verb, Verb::List | Verb::Watch));
    }
    verb != Verb::DeleteCollection
        && NODE_WRITABLE
            .iter()
            .any(|(group, k)| kind.group == *group && kind.kind == *k)
}

/// kube-apiserver's message for a denied request.
pub fn forbidden_message(
    identity: &Identity,
    verb: Verb,
    kind: &ResourceKind,
    namespace: Option<&str>,
    name: Option<&str>,
    subresource: Option<&str>,
) -> String {
    let subject = match name.filter(|n| !n.is_empty()) {
        Some(name) => format!("{} \"{name}\" is forbidden", kind.qualified_plural()),
        None => format!("{} is forbidden", kind.qualified_plural()),
    };
    let resource = match subresource {
        Some(sub) => format!("{}/{sub}", kind.plural),
        None => kind.plural.to_string(),
    };
    let scope = match namespace.filter(|n| !n.is_empty()) {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    format!(
        "{subject}: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
        identity.user, kind.group
    )
}

/// Applies [`authorize`] to a resource request: `Ok` when allowed, 403 when denied. A
/// request without an identity (which the authentication middleware rules out) is 401.
pub fn enforce(identity: Option<&Identity>, verb: Verb, target: &Target) -> Result<(), ApiError> {
    let Some(identity) = identity else {
        return Err(ApiError::Unauthorized(
            "Unauthorized: a bearer token is required".into(),
        ));
    };
    let (namespace, name, subresource) = (
        target.namespace.as_deref(),
        target.name.as_deref(),
        target.subresource.as_deref(),
    );
    match authorize(identity, verb, target.kind, namespace, name, subresource) {
        Decision::Allow => Ok(()),
        Decision::Deny => Err(ApiError::Forbidden(forbidden_message(
            identity,
            verb,
            target.kind,
            namespace,
            name,
            subresource,
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::resolve;

    fn kind(name: &str) -> &'static ResourceKind {
        resolve(name).expect("a served kind")
    }

    fn node() -> Identity {
        Identity::node_bootstrap("abc123")
    }

    const ALL_VERBS: [Verb; 8] = [
        Verb::Get,
        Verb::List,
        Verb::Watch,
        Verb::Create,
        Verb::Update,
        Verb::Patch,
        Verb::Delete,
        Verb::DeleteCollection,
    ];

    #[test]
    fn masters_may_do_everything() {
        for identity in [Identity::admin(), Identity::system()] {
            for k in crate::api::KINDS {
                for verb in ALL_VERBS {
                    for sub in [None, Some("status"), Some("log")] {
                        assert_eq!(
                            authorize(&identity, verb, k, Some("default"), Some("x"), sub),
                            Decision::Allow,
                            "{} {verb} {}",
                            identity.user,
                            k.plural
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn nodes_read_everything_but_secret_lists() {
        let n = node();
        for k in crate::api::KINDS {
            for verb in [Verb::Get, Verb::List, Verb::Watch] {
                let secret_list = k.kind == "Secret" && verb != Verb::Get;
                let want = if secret_list {
                    Decision::Deny
                } else {
                    Decision::Allow
                };
                assert_eq!(
                    authorize(&n, verb, k, Some("default"), None, None),
                    want,
                    "{verb} {}",
                    k.plural
                );
            }
        }
        let secret = kind("secret");
        let cm = kind("cm");
        assert_eq!(
            authorize(&n, Verb::Get, secret, Some("kube-system"), Some("s"), None),
            Decision::Allow
        );
        assert_eq!(
            authorize(&n, Verb::Get, cm, Some("default"), Some("c"), None),
            Decision::Allow
        );
        assert_eq!(
            authorize(&n, Verb::List, secret, None, None, None),
            Decision::Deny
        );
        // The log proxy is for users, not for nodes.
        assert_eq!(
            authorize(
                &n,
                Verb::Get,
                kind("pod"),
                Some("a"),
                Some("p"),
                Some("log")
            ),
            Decision::Deny
        );
    }

    #[test]
    fn nodes_write_only_nodes_leases_events_and_pods() {
        let n = node();
        let writes = [Verb::Create, Verb::Update, Verb::Patch, Verb::Delete];
        for k in crate::api::KINDS {
            let writable = matches!(k.kind, "Node" | "Lease" | "Event" | "Pod");
            for verb in writes {
                let want = if writable {
                    Decision::Allow
                } else {
                    Decision::Deny
                };
                assert_eq!(
                    authorize(&n, verb, k, Some("default"), Some("x"), None),
                    want,
                    "{verb} {}",
                    k.plural
                );
            }
            assert_eq!(
                authorize(&n, Verb::DeleteCollection, k, Some("default"), None, None),
                Decision::Deny,
                "deletecollection {}",
                k.plural
            );
        }
        for k in [kind("pod"), kind("node")] {
            for verb in [Verb::Update, Verb::Patch] {
                assert_eq!(
                    authorize(&n, verb, k, Some("default"), Some("x"), Some("status")),
                    Decision::Allow
                );
            }
        }
        assert_eq!(
            authorize(
                &n,
                Verb::Patch,
                kind("deploy"),
                Some("d"),
                Some("x"),
                Some("status")
            ),
            Decision::Deny
        );
    }

    #[test]
    fn other_identities_may_do_nothing() {
        let nobody = Identity {
            user: "someone".into(),
            groups: vec!["system:authenticated".into()],
        };
        for verb in ALL_VERBS {
            assert_eq!(
                authorize(&nobody, verb, kind("pod"), Some("default"), None, None),
                Decision::Deny
            );
        }
    }

    #[test]
    fn denials_read_like_kube_apiserver() {
        let n = node();
        assert_eq!(
            forbidden_message(
                &n,
                Verb::Delete,
                kind("pod"),
                Some("default"),
                Some("x"),
                None
            ),
            "pods \"x\" is forbidden: User \"system:node-bootstrap:abc123\" cannot delete \
             resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!(
            forbidden_message(
                &n,
                Verb::Create,
                kind("deploy"),
                Some("default"),
                None,
                None
            ),
            "deployments.apps is forbidden: User \"system:node-bootstrap:abc123\" cannot \
             create resource \"deployments\" in API group \"apps\" in the namespace \"default\""
        );
        assert_eq!(
            forbidden_message(&n, Verb::List, kind("secret"), None, None, None),
            "secrets is forbidden: User \"system:node-bootstrap:abc123\" cannot list \
             resource \"secrets\" in API group \"\" at the cluster scope"
        );
        assert_eq!(
            forbidden_message(
                &n,
                Verb::Get,
                kind("pod"),
                Some("a"),
                Some("p"),
                Some("log")
            ),
            "pods \"p\" is forbidden: User \"system:node-bootstrap:abc123\" cannot get \
             resource \"pods/log\" in API group \"\" in the namespace \"a\""
        );
    }

    #[test]
    fn verbs_follow_method_and_target() {
        assert_eq!(Verb::of(&Method::GET, false, true), Some(Verb::Watch));
        assert_eq!(Verb::of(&Method::GET, false, false), Some(Verb::List));
        assert_eq!(Verb::of(&Method::GET, true, true), Some(Verb::Get));
        assert_eq!(Verb::of(&Method::POST, false, false), Some(Verb::Create));
        assert_eq!(Verb::of(&Method::PUT, true, false), Some(Verb::Update));
        assert_eq!(Verb::of(&Method::PATCH, true, false), Some(Verb::Patch));
        assert_eq!(Verb::of(&Method::DELETE, true, false), Some(Verb::Delete));
        assert_eq!(
            Verb::of(&Method::DELETE, false, false),
            Some(Verb::DeleteCollection)
        );
        assert_eq!(Verb::of(&Method::POST, true, false), None);
        assert_eq!(Verb::of(&Method::OPTIONS, false, false), None);
    }
}
