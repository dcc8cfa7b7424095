//! The roles and bindings every cluster has, reconciled on every start as
//! kube-apiserver's RBAC post-start hook does: a missing one is created; one annotated
//! `rbac.authorization.kubernetes.io/autoupdate: "true"` gets the rules, labels,
//! aggregation rule and subjects it lacks (what an administrator added stays); one
//! without the annotation is left as it is.
//!
//! `cluster-admin` is bound to `system:masters`; `admin`, `edit` and `view` are
//! aggregated from the `system:aggregate-to-*` roles (and from any role carrying their
//! `rbac.authorization.k8s.io/aggregate-to-*` label), `edit` into `admin` and `view` into
//! `edit`, as in Kubernetes; `system:discovery`, `system:basic-user` and
//! `system:public-info-viewer` are bound to `system:authenticated` (the last also to
//! `system:unauthenticated`); `system:service-account-issuer-discovery` (the issuer's
//! OpenID documents) to `system:serviceaccounts`; `system:auth-delegator` (TokenReview,
//! SubjectAccessReview) is there to be bound.
//!
//! [`desired`] is pure; [`reconcile`] applies it through the API with the given client.

use super::{GROUP, missing_rules};
use k8s_openapi::api::rbac::v1::{
    AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ObjectMeta, PostParams};
use std::collections::BTreeMap;

pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

fn s(items: &[&str]) -> Vec<String> {
    items.iter().map(|x| x.to_string()).collect()
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(s(groups)),
        resources: Some(s(resources)),
        verbs: s(verbs),
        ..Default::default()
    }
}

fn urls(paths: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        non_resource_urls: Some(s(paths)),
        verbs: s(verbs),
        ..Default::default()
    }
}

fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    let mut l: BTreeMap<String, String> = [(
        "kubernetes.io/bootstrapping".to_string(),
        "rbac-defaults".to_string(),
    )]
    .into();
    l.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(l),
        annotations: Some([(AUTOUPDATE.to_string(), "true".to_string())].into()),
        ..Default::default()
    }
}

fn role(name: &str, labels: &[(&str, &str)], rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, labels),
        rules: Some(rules),
        aggregation_rule: None,
    }
}

fn aggregated(name: &str, labels: &[(&str, &str)], from: &str) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, labels),
        rules: Some(vec![]),
        aggregation_rule: Some(AggregationRule {
            cluster_role_selectors: Some(vec![LabelSelector {
                match_labels: Some([(from.to_string(), "true".to_string())].into()),
                ..Default::default()
            }]),
        }),
    }
}

fn binding(name: &str, role: &str, groups: &[&str]) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, &[]),
        role_ref: RoleRef {
            api_group: Some(GROUP.into()),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(
            groups
                .iter()
                .map(|g| Subject {
                    api_group: Some(GROUP.into()),
                    kind: "Group".into(),
                    name: g.to_string(),
                    namespace: None,
                })
                .collect(),
        ),
    }
}

/// Every permission there is: what `cluster-admin` holds.
pub fn full_authority() -> Vec<PolicyRule> {
    vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// The bootstrap ClusterRoles and ClusterRoleBindings.
pub fn desired() -> (Vec<ClusterRole>, Vec<ClusterRoleBinding>) {
    let core_read = [
        "pods",
        "pods/log",
        "pods/status",
        "configmaps",
        "endpoints",
        "services",
        "services/status",
        "events",
        "namespaces",
        "namespaces/status",
        "limitranges",
        "resourcequotas",
        "persistentvolumeclaims",
        "replicationcontrollers",
        "serviceaccounts",
        "bindings",
    ];
    let apps = [
        "deployments",
        "deployments/scale",
        "deployments/status",
        "replicasets",
        "replicasets/scale",
        "replicasets/status",
        "daemonsets",
        "daemonsets/status",
        "statefulsets",
        "statefulsets/scale",
        "statefulsets/status",
    ];
    let core_write = [
        "pods",
        "pods/attach",
        "pods/exec",
        "pods/portforward",
        "pods/proxy",
        "configmaps",
        "endpoints",
        "services",
        "services/proxy",
        "secrets",
        "persistentvolumeclaims",
        "replicationcontrollers",
        "serviceaccounts",
    ];
    let roles = vec![
        role("cluster-admin", &[], full_authority()),
        aggregated("admin", &[], TO_ADMIN),
        aggregated("edit", &[(TO_ADMIN, "true")], TO_EDIT),
        aggregated("view", &[(TO_EDIT, "true")], TO_VIEW),
        role(
            "system:aggregate-to-view",
            &[(TO_VIEW, "true")],
            vec![
                rule(&[""], &core_read, READ),
                rule(&["apps"], &apps, READ),
                rule(
                    &["batch"],
                    &["jobs", "jobs/status", "cronjobs", "cronjobs/status"],
                    READ,
                ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(&["autoscaling"], &["horizontalpodautoscalers"], READ),
                rule(&["policy"], &["poddisruptionbudgets"], READ),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                    READ,
                ),
            ],
        ),
        role(
            "system:aggregate-to-edit",
            &[(TO_EDIT, "true")],
            vec![
                rule(&[""], &core_write, WRITE),
                rule(
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                    READ,
                ),
                rule(&[""], &["pods/eviction"], &["create"]),
                rule(&[""], &["serviceaccounts"], &["impersonate"]),
                rule(&["apps"], &apps, WRITE),
                rule(&["batch"], &["jobs", "cronjobs"], WRITE),
                rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
                rule(&["policy"], &["poddisruptionbudgets"], WRITE),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                    WRITE,
                ),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &[
                        "create",
                        "delete",
                        "deletecollection",
                        "get",
                        "list",
                        "patch",
                        "update",
                        "watch",
                    ],
                ),
            ],
        ),
        role(
            "system:aggregate-to-admin",
            &[(TO_ADMIN, "true")],
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                    &["create"],
                ),
                rule(
                    &[GROUP],
                    &["roles", "rolebindings"],
                    &[
                        "create",
                        "delete",
                        "deletecollection",
                        "get",
                        "list",
                        "patch",
                        "update",
                        "watch",
                    ],
                ),
            ],
        ),
        // Resource metrics (`kubectl top`), aggregated into view, edit and admin as
        // metrics-server's role is in Kubernetes.
        role(
            "system:aggregated-metrics-reader",
            &[(TO_VIEW, "true"), (TO_EDIT, "true"), (TO_ADMIN, "true")],
            vec![rule(&["metrics.k8s.io"], &["pods", "nodes"], READ)],
        ),
        role(
            "system:discovery",
            &[],
            vec![urls(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
        ),
        role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
        // Nodes pull images from the cluster registry (`/v2/...`, pull only).
        role(
            "system:wharf:registry-puller",
            &[],
            vec![urls(&["/v2", "/v2/", "/v2/*"], &["get"])],
        ),
        role(
            "system:service-account-issuer-discovery",
            &[],
            vec![urls(
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
                &["get"],
            )],
        ),
        role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
        // The node proxies serve Ingresses: they follow Ingresses and their classes, and
        // the TLS Secrets Ingresses name (as an Ingress controller's ServiceAccount does).
        role(
            "system:wharf:ingress-proxy",
            &[],
            vec![
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "ingressclasses"],
                    READ,
                ),
                rule(&[""], &["secrets"], &["list", "watch"]),
            ],
        ),
        // Scrapers of `/metrics` (Prometheus' identity is put in the group).
        role(
            "system:monitoring",
            &[],
            vec![urls(
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/metrics/targets",
                    "/readyz",
                    "/readyz/*",
                ],
                &["get"],
            )],
        ),
        role(
            "system:public-info-viewer",
            &[],
            vec![urls(
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
                &["get"],
            )],
        ),
    ];
    let bindings = vec![
        binding("cluster-admin", "cluster-admin", &["system:masters"]),
        binding(
            "system:discovery",
            "system:discovery",
            &["system:authenticated"],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &["system:authenticated"],
        ),
        binding(
            "system:wharf:registry-puller",
            "system:wharf:registry-puller",
            &["system:nodes"],
        ),
        binding(
            "system:monitoring",
            "system:monitoring",
            &["system:monitoring"],
        ),
        binding(
            "system:wharf:ingress-proxy",
            "system:wharf:ingress-proxy",
            &["system:nodes"],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            &["system:serviceaccounts"],
        ),
    ];
    (roles, bindings)
}

fn autoupdate(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(AUTOUPDATE))
        .is_some_and(|v| v == "true")
}

/// What an existing ClusterRole becomes: `None` if it needs nothing (or may not be
/// touched), else it with the missing rules, labels and aggregation rule added.
pub fn reconcile_role(existing: &ClusterRole, want: &ClusterRole) -> Option<ClusterRole> {
    if !autoupdate(&existing.metadata) {
        return None;
    }
    let mut out = existing.clone();
    let mut changed = false;
    let labels = out.metadata.labels.get_or_insert_with(Default::default);
    for (k, v) in want.metadata.labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            labels.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    if want.aggregation_rule.is_some() {
        if out.aggregation_rule != want.aggregation_rule {
            out.aggregation_rule = want.aggregation_rule.clone();
            changed = true;
        }
    } else {
        let held = out.rules.clone().unwrap_or_default();
        for r in want.rules.iter().flatten() {
            if !missing_rules(&held, std::slice::from_ref(r)).is_empty() {
                out.rules.get_or_insert_with(Vec::new).push(r.clone());
                changed = true;
            }
        }
    }
    changed.then_some(out)
}

/// What an existing ClusterRoleBinding becomes (missing subjects added), as
/// [`reconcile_role`].
pub fn reconcile_binding(
    existing: &ClusterRoleBinding,
    want: &ClusterRoleBinding,
) -> Option<ClusterRoleBinding> {
    if !autoupdate(&existing.metadata) {
        return None;
    }
    let mut out = existing.clone();
    let subjects = out.subjects.get_or_insert_with(Vec::new);
    let before = subjects.len();
    for s in want.subjects.iter().flatten() {
        if !subjects
            .iter()
            .any(|x| x.kind == s.kind && x.name == s.name)
        {
            subjects.push(s.clone());
        }
    }
    (subjects.len() != before).then_some(out)
}

/// Creates or completes the bootstrap policy through `client` (which must be allowed
/// to: the control plane's own identity).
pub async fn reconcile(client: kube::Client) -> Result<(), kube::Error> {
    let (roles, bindings) = desired();
    let pp = PostParams::default();
    let role_api: Api<ClusterRole> = Api::all(client.clone());
    for want in roles {
        let name = want.metadata.name.clone().unwrap_or_default();
        match role_api.get_opt(&name).await? {
            None => {
                role_api.create(&pp, &want).await?;
            }
            Some(existing) => {
                if let Some(next) = reconcile_role(&existing, &want) {
                    role_api.replace(&name, &pp, &next).await?;
                }
            }
        }
    }
    let binding_api: Api<ClusterRoleBinding> = Api::all(client);
    for want in bindings {
        let name = want.metadata.name.clone().unwrap_or_default();
        match binding_api.get_opt(&name).await? {
            None => {
                binding_api.create(&pp, &want).await?;
            }
            Some(existing) => {
                if let Some(next) = reconcile_binding(&existing, &want) {
                    binding_api.replace(&name, &pp, &next).await?;
                }
            }
        }
    }
    Ok(())
}
