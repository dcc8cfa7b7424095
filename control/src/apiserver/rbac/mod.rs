//! Role-based access control, as Kubernetes' RBAC authorizer: the second link of the
//! authorization chain ([`super::authz`]), after the Node authorizer.
//!
//! Everything here is a pure function over a [`Policy`], the Roles, ClusterRoles and
//! bindings as one in-memory snapshot: whether a request's [`Attributes`] are allowed
//! ([`Policy::allows`]), which rules a user holds in a namespace
//! ([`Policy::rules_for`]), and whether a write of a role or binding would grant what its
//! author does not hold ([`missing_rules`], Kubernetes' escalation check). The snapshot is
//! kept current by [`cache::PolicyCache`], which watches the store: a request never lists
//! roles. ClusterRoles with an `aggregationRule` are resolved when the snapshot is built,
//! so they hold the rules of the roles their selectors pick the moment those change.
//!
//! The matching rules are Kubernetes': `*` matches any verb, group, resource or URL;
//! `*/SUB` any resource's subresource SUB; an empty `resourceNames` any name; a URL
//! ending in `*` any path with that prefix. A subject matches by user name, by group, or
//! as the ServiceAccount user `system:serviceaccount:NS:NAME`.

pub mod bootstrap;
pub mod cache;

use super::auth::Identity;
use crate::api::validation::label_selector_matches;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub use crate::apiserver::registry::strategies::rbac::GROUP;

/// Where the RBAC kinds are stored: every key of the four kinds starts with it.
pub const STORE_PREFIX: &str = "rbac.authorization.k8s.io/";

/// What a request asks, as the authorizer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub user: &'a Identity,
    pub verb: &'a str,
    pub request: Request<'a>,
}

/// A resource request, or a request for a path outside the resource tree.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    Resource {
        /// Empty for a cluster-scoped request.
        namespace: &'a str,
        group: &'a str,
        resource: &'a str,
        /// Empty for the main resource.
        subresource: &'a str,
        /// Empty for a collection.
        name: &'a str,
    },
    NonResource {
        path: &'a str,
    },
}

impl Request<'_> {
    fn namespace(&self) -> &str {
        match self {
            Request::Resource { namespace, .. } => namespace,
            Request::NonResource { .. } => "",
        }
    }
}

/// The Roles, ClusterRoles (aggregation resolved) and bindings at one moment.
#[derive(Debug, Default)]
pub struct Policy {
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    role_bindings: HashMap<String, Vec<RoleBinding>>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
}

fn has(list: &[String], s: &str) -> bool {
    list.iter().any(|x| x == s)
}

fn list(v: &Option<Vec<String>>) -> &[String] {
    v.as_deref().unwrap_or(&[])
}

/// Whether `rule` allows `attrs`' verb and object (Kubernetes' `RuleAllows`).
pub fn rule_allows(rule: &PolicyRule, verb: &str, request: &Request<'_>) -> bool {
    let verbs = &rule.verbs;
    if !has(verbs, "*") && !has(verbs, verb) {
        return false;
    }
    match *request {
        Request::NonResource { path } => list(&rule.non_resource_urls).iter().any(|u| {
            u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
        }),
        Request::Resource {
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            let groups = list(&rule.api_groups);
            if !has(groups, "*") && !has(groups, group) {
                return false;
            }
            let combined = if subresource.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}/{subresource}")
            };
            let resource_ok = list(&rule.resources).iter().any(|r| {
                r == "*"
                    || *r == combined
                    || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
            });
            let names = list(&rule.resource_names);
            resource_ok && (names.is_empty() || has(names, name))
        }
    }
}

/// Whether `subject` (of a binding in `binding_ns`, empty for a ClusterRoleBinding) is
/// `user`.
pub fn subject_matches(subject: &Subject, user: &Identity, binding_ns: &str) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == user.user,
        "Group" => user.in_group(&subject.name),
        "ServiceAccount" => {
            let ns = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            user.user == format!("system:serviceaccount:{ns}:{}", subject.name)
        }
        _ => false,
    }
}

impl Policy {
    /// The policy of stored objects, each by its store key (which names its kind).
    pub fn from_stored<'a>(objects: impl IntoIterator<Item = (&'a str, Value)>) -> Policy {
        let (mut roles, mut crs, mut rbs, mut crbs) = (vec![], vec![], vec![], vec![]);
        for (key, v) in objects {
            let Some(rest) = key.strip_prefix(STORE_PREFIX) else {
                continue;
            };
            let resource = rest.split('/').next().unwrap_or_default();
            match resource {
                "roles" => roles.extend(serde_json::from_value::<Role>(v).ok()),
                "clusterroles" => crs.extend(serde_json::from_value::<ClusterRole>(v).ok()),
                "rolebindings" => rbs.extend(serde_json::from_value::<RoleBinding>(v).ok()),
                "clusterrolebindings" => {
                    crbs.extend(serde_json::from_value::<ClusterRoleBinding>(v).ok())
                }
                _ => {}
            }
        }
        Policy::new(roles, crs, rbs, crbs)
    }

    pub fn new(
        roles: Vec<Role>,
        cluster_roles: Vec<ClusterRole>,
        role_bindings: Vec<RoleBinding>,
        cluster_role_bindings: Vec<ClusterRoleBinding>,
    ) -> Policy {
        let mut p = Policy {
            cluster_role_bindings,
            ..Policy::default()
        };
        for r in roles {
            let key = (
                r.metadata.namespace.clone().unwrap_or_default(),
                r.metadata.name.clone().unwrap_or_default(),
            );
            p.roles.insert(key, r.rules.unwrap_or_default());
        }
        for b in role_bindings {
            let ns = b.metadata.namespace.clone().unwrap_or_default();
            p.role_bindings.entry(ns).or_default().push(b);
        }
        p.cluster_roles = aggregate(&cluster_roles);
        p
    }

    /// The rules of the role `role_ref` names, for a binding in `namespace`.
    pub fn role_rules(&self, role_ref: &RoleRef, namespace: &str) -> Option<&[PolicyRule]> {
        match role_ref.kind.as_str() {
            "Role" => self
                .roles
                .get(&(namespace.to_string(), role_ref.name.clone())),
            "ClusterRole" => self.cluster_roles.get(&role_ref.name),
            _ => None,
        }
        .map(Vec::as_slice)
    }

    /// Calls `f` with every rule `user` holds in `namespace` (empty: cluster-wide rules
    /// only), until it answers `true`; answers whether it did.
    pub fn visit(
        &self,
        user: &Identity,
        namespace: &str,
        f: &mut dyn FnMut(&PolicyRule) -> bool,
    ) -> bool {
        for b in &self.cluster_role_bindings {
            let applies = b
                .subjects
                .iter()
                .flatten()
                .any(|s| subject_matches(s, user, ""));
            if applies
                && let Some(rules) = self.cluster_roles.get(&b.role_ref.name)
                && rules.iter().any(&mut *f)
            {
                return true;
            }
        }
        if namespace.is_empty() {
            return false;
        }
        for b in self.role_bindings.get(namespace).into_iter().flatten() {
            let applies = b
                .subjects
                .iter()
                .flatten()
                .any(|s| subject_matches(s, user, namespace));
            if applies
                && let Some(rules) = self.role_rules(&b.role_ref, namespace)
                && rules.iter().any(&mut *f)
            {
                return true;
            }
        }
        false
    }

    /// Whether some rule `attrs.user` holds allows the request.
    pub fn allows(&self, attrs: &Attributes<'_>) -> bool {
        self.visit(attrs.user, attrs.request.namespace(), &mut |rule| {
            rule_allows(rule, attrs.verb, &attrs.request)
        })
    }

    /// Every rule `user` holds in `namespace` (cluster-wide ones included).
    pub fn rules_for(&self, user: &Identity, namespace: &str) -> Vec<PolicyRule> {
        let mut out = Vec::new();
        self.visit(user, namespace, &mut |r| {
            out.push(r.clone());
            false
        });
        out
    }
}

/// The rules of every ClusterRole, those with an `aggregationRule` holding the union of
/// the rules of the ClusterRoles their selectors pick (resolved through aggregated ones,
/// as the aggregation controller fills them in turn).
fn aggregate(cluster_roles: &[ClusterRole]) -> HashMap<String, Vec<PolicyRule>> {
    let by_name: HashMap<&str, &ClusterRole> = cluster_roles
        .iter()
        .filter_map(|c| c.metadata.name.as_deref().map(|n| (n, c)))
        .collect();
    fn resolve(
        name: &str,
        by_name: &HashMap<&str, &ClusterRole>,
        all: &[ClusterRole],
        seen: &mut HashSet<String>,
    ) -> Vec<PolicyRule> {
        let Some(role) = by_name.get(name) else {
            return vec![];
        };
        let Some(rule) = &role.aggregation_rule else {
            return role.rules.clone().unwrap_or_default();
        };
        if !seen.insert(name.to_string()) {
            return vec![];
        }
        let mut out: Vec<PolicyRule> = Vec::new();
        for other in all {
            let other_name = other.metadata.name.as_deref().unwrap_or_default();
            if other_name == name {
                continue;
            }
            let labels: BTreeMap<String, String> =
                other.metadata.labels.clone().unwrap_or_default();
            let picked = rule.cluster_role_selectors.iter().flatten().any(|s| {
                serde_json::to_value(s).is_ok_and(|s| label_selector_matches(&s, &labels))
            });
            if picked {
                for r in resolve(other_name, by_name, all, seen) {
                    if !out.contains(&r) {
                        out.push(r);
                    }
                }
            }
        }
        seen.remove(name);
        out
    }
    by_name
        .keys()
        .map(|n| {
            let rules = resolve(n, &by_name, cluster_roles, &mut HashSet::new());
            (n.to_string(), rules)
        })
        .collect()
}

/// The rules each ClusterRole with an `aggregationRule` should hold, by name: what the
/// aggregation controller writes into them. Deterministic whatever the input order.
pub fn aggregated_rules(cluster_roles: &[ClusterRole]) -> Vec<(String, Vec<PolicyRule>)> {
    let mut sorted = cluster_roles.to_vec();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let resolved = aggregate(&sorted);
    let mut out: Vec<(String, Vec<PolicyRule>)> = sorted
        .iter()
        .filter(|c| c.aggregation_rule.is_some())
        .filter_map(|c| {
            let name = c.metadata.name.clone()?;
            let rules = resolved.get(&name).cloned().unwrap_or_default();
            Some((name, rules))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// One permission a rule grants: a verb on one group/resource (and name), or on a URL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Atom {
    Resource {
        group: String,
        resource: String,
        name: Option<String>,
        verb: String,
    },
    Url {
        url: String,
        verb: String,
    },
}

fn atoms(rule: &PolicyRule) -> Vec<Atom> {
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for url in list(&rule.non_resource_urls) {
            out.push(Atom::Url {
                url: url.clone(),
                verb: verb.clone(),
            });
        }
        for group in list(&rule.api_groups) {
            for resource in list(&rule.resources) {
                let names = list(&rule.resource_names);
                let names: Vec<Option<String>> = if names.is_empty() {
                    vec![None]
                } else {
                    names.iter().cloned().map(Some).collect()
                };
                for name in names {
                    out.push(Atom::Resource {
                        group: group.clone(),
                        resource: resource.clone(),
                        name,
                        verb: verb.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Whether `owner` grants `atom` (Kubernetes' `ruleCovers`: wildcards of the atom are
/// covered only by wildcards).
fn covers(owner: &PolicyRule, atom: &Atom) -> bool {
    let verb_ok = |v: &str| has(&owner.verbs, "*") || has(&owner.verbs, v);
    match atom {
        Atom::Url { url, verb } => {
            verb_ok(verb)
                && list(&owner.non_resource_urls).iter().any(|u| {
                    u == "*" || u == url || u.strip_suffix('*').is_some_and(|p| url.starts_with(p))
                })
        }
        Atom::Resource {
            group,
            resource,
            name,
            verb,
        } => {
            let groups = list(&owner.api_groups);
            let resources = list(&owner.resources);
            let resource_ok = has(resources, "*")
                || has(resources, resource)
                || resource
                    .split_once('/')
                    .is_some_and(|(_, sub)| has(resources, &format!("*/{sub}")));
            let names = list(&owner.resource_names);
            let name_ok = names.is_empty() || name.as_deref().is_some_and(|n| has(names, n));
            verb_ok(verb) && (has(groups, "*") || has(groups, group)) && resource_ok && name_ok
        }
    }
}

/// What of `wanted` `held` does not grant, compacted (verbs of one object together) and
/// printed as Kubernetes prints rules in an escalation refusal:
/// `{APIGroups:["apps"], Resources:["deployments"], Verbs:["create" "delete"]}`.
pub fn missing_rules(held: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<String> {
    // (group, resource or URL, name, is URL) -> verbs
    let mut missing: BTreeMap<(String, String, Option<String>, bool), BTreeSet<String>> =
        BTreeMap::new();
    for rule in wanted {
        for atom in atoms(rule) {
            if held.iter().any(|h| covers(h, &atom)) {
                continue;
            }
            let (key, verb) = match atom {
                Atom::Resource {
                    group,
                    resource,
                    name,
                    verb,
                } => ((group, resource, name, false), verb),
                Atom::Url { url, verb } => ((String::new(), url, None, true), verb),
            };
            missing.entry(key).or_default().insert(verb);
        }
    }
    let q = |items: &[&str]| {
        let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", quoted.join(" "))
    };
    let mut out: Vec<String> = missing
        .into_iter()
        .map(|((group, what, name, url), verbs)| {
            let verbs: Vec<&str> = verbs.iter().map(String::as_str).collect();
            if url {
                return format!("{{NonResourceURLs:{}, Verbs:{}}}", q(&[&what]), q(&verbs));
            }
            let names = name
                .map(|n| format!(", ResourceNames:{}", q(&[&n])))
                .unwrap_or_default();
            format!(
                "{{APIGroups:{}, Resources:{}{names}, Verbs:{}}}",
                q(&[&group]),
                q(&[&what]),
                q(&verbs)
            )
        })
        .collect();
    out.sort();
    out
}

/// Kubernetes' refusal of a write that grants what its author does not hold.
pub fn escalation_message(user: &Identity, missing: &[String]) -> String {
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    format!(
        "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
        user.user,
        groups.join(" "),
        missing.join("\n")
    )
}

#[cfg(test)]
mod tests;
