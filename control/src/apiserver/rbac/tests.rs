use super::bootstrap::{self, desired, reconcile_binding, reconcile_role};
use super::*;
use serde_json::json;

fn user(name: &str, groups: &[&str]) -> Identity {
    Identity {
        user: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn rule(v: Value) -> PolicyRule {
    serde_json::from_value(v).expect("rule")
}

fn res<'a>(
    ns: &'a str,
    group: &'a str,
    resource: &'a str,
    sub: &'a str,
    name: &'a str,
) -> Request<'a> {
    Request::Resource {
        namespace: ns,
        group,
        resource,
        subresource: sub,
        name,
    }
}

#[test]
fn rules_match_verbs_groups_resources_names_and_urls() {
    let r = rule(
        json!({"apiGroups": ["", "apps"], "resources": ["pods", "deployments/scale"], "verbs": ["get", "list"]}),
    );
    assert!(rule_allows(&r, "get", &res("a", "", "pods", "", "p")));
    assert!(rule_allows(
        &r,
        "list",
        &res("a", "apps", "deployments", "scale", "d")
    ));
    assert!(
        !rule_allows(&r, "get", &res("a", "apps", "deployments", "", "d")),
        "scale only"
    );
    assert!(
        !rule_allows(&r, "get", &res("a", "", "pods", "log", "p")),
        "not pods/log"
    );
    assert!(!rule_allows(&r, "delete", &res("a", "", "pods", "", "p")));
    assert!(!rule_allows(&r, "get", &res("a", "batch", "pods", "", "p")));
    let any_sub = rule(json!({"apiGroups": ["*"], "resources": ["*/log"], "verbs": ["*"]}));
    assert!(rule_allows(
        &any_sub,
        "get",
        &res("a", "", "pods", "log", "p")
    ));
    assert!(!rule_allows(
        &any_sub,
        "get",
        &res("a", "", "pods", "", "p")
    ));
    let named = rule(
        json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cfg"], "verbs": ["get"]}),
    );
    assert!(rule_allows(
        &named,
        "get",
        &res("a", "", "configmaps", "", "cfg")
    ));
    assert!(!rule_allows(
        &named,
        "get",
        &res("a", "", "configmaps", "", "other")
    ));
    assert!(!rule_allows(
        &named,
        "list",
        &res("a", "", "configmaps", "", "")
    ));
    let urls = rule(json!({"nonResourceURLs": ["/healthz", "/apis/*"], "verbs": ["get"]}));
    assert!(rule_allows(
        &urls,
        "get",
        &Request::NonResource { path: "/healthz" }
    ));
    assert!(rule_allows(
        &urls,
        "get",
        &Request::NonResource {
            path: "/apis/apps/v1"
        }
    ));
    assert!(!rule_allows(
        &urls,
        "get",
        &Request::NonResource { path: "/api" }
    ));
    assert!(!rule_allows(
        &urls,
        "post",
        &Request::NonResource { path: "/healthz" }
    ));
    assert!(!rule_allows(&urls, "get", &res("", "", "healthz", "", "")));
}

#[test]
fn subjects_match_users_groups_and_service_accounts() {
    let s = |kind: &str, name: &str, ns: Option<&str>| Subject {
        kind: kind.into(),
        name: name.into(),
        namespace: ns.map(String::from),
        api_group: None,
    };
    let alice = user("alice", &["dev", "system:authenticated"]);
    assert!(subject_matches(&s("User", "alice", None), &alice, ""));
    assert!(!subject_matches(&s("User", "bob", None), &alice, ""));
    assert!(subject_matches(&s("Group", "dev", None), &alice, ""));
    assert!(!subject_matches(&s("Group", "alice", None), &alice, ""));
    let sa = user(
        "system:serviceaccount:a:robot",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:a",
            "system:authenticated",
        ],
    );
    assert!(subject_matches(
        &s("ServiceAccount", "robot", Some("a")),
        &sa,
        ""
    ));
    // A RoleBinding's namespace is the subject's when it names none.
    assert!(subject_matches(
        &s("ServiceAccount", "robot", None),
        &sa,
        "a"
    ));
    assert!(!subject_matches(
        &s("ServiceAccount", "robot", None),
        &sa,
        "b"
    ));
    assert!(subject_matches(
        &s("Group", "system:serviceaccounts:a", None),
        &sa,
        ""
    ));
}

fn policy(objects: Vec<(&str, Value)>) -> Policy {
    Policy::from_stored(objects)
}

fn with_bootstrap(mut extra: Vec<(String, Value)>) -> Policy {
    let (roles, bindings) = desired();
    for r in roles {
        let name = r.metadata.name.clone().unwrap_or_default();
        extra.push((
            format!("{STORE_PREFIX}clusterroles//{name}"),
            serde_json::to_value(r).expect("json"),
        ));
    }
    for b in bindings {
        let name = b.metadata.name.clone().unwrap_or_default();
        extra.push((
            format!("{STORE_PREFIX}clusterrolebindings//{name}"),
            serde_json::to_value(b).expect("json"),
        ));
    }
    Policy::from_stored(extra.iter().map(|(k, v)| (k.as_str(), v.clone())))
}

fn binding(ns: &str, name: &str, role_kind: &str, role: &str, user: &str) -> (String, Value) {
    (
        format!("{STORE_PREFIX}rolebindings/{ns}/{name}"),
        json!({"metadata": {"name": name, "namespace": ns},
               "roleRef": {"apiGroup": GROUP, "kind": role_kind, "name": role},
               "subjects": [{"kind": "User", "apiGroup": GROUP, "name": user}]}),
    )
}

fn allows(p: &Policy, who: &Identity, verb: &str, request: Request<'_>) -> bool {
    p.allows(&Attributes {
        user: who,
        verb,
        request,
    })
}

#[test]
fn role_bindings_grant_in_their_namespace_only() {
    let reader = (
        format!("{STORE_PREFIX}roles/a/reader"),
        json!({"metadata": {"name": "reader", "namespace": "a"},
               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}),
    );
    let b = binding("a", "alice-reads", "Role", "reader", "alice");
    let p = policy(vec![(reader.0.as_str(), reader.1), (b.0.as_str(), b.1)]);
    let alice = user("alice", &["system:authenticated"]);
    assert!(allows(&p, &alice, "list", res("a", "", "pods", "", "")));
    assert!(!allows(&p, &alice, "list", res("b", "", "pods", "", "")));
    assert!(
        !allows(&p, &alice, "list", res("", "", "pods", "", "")),
        "not cluster-wide"
    );
    assert!(!allows(&p, &alice, "delete", res("a", "", "pods", "", "x")));
    assert!(!allows(
        &p,
        &user("bob", &[]),
        "list",
        res("a", "", "pods", "", "")
    ));
}

#[test]
fn bootstrap_roles_aggregate_and_bind_as_kubernetes() {
    let p = with_bootstrap(vec![
        binding("a", "v", "ClusterRole", "view", "viewer"),
        binding("a", "e", "ClusterRole", "edit", "editor"),
        binding("a", "ad", "ClusterRole", "admin", "owner"),
        (
            format!("{STORE_PREFIX}clusterroles//widgets-view"),
            json!({"metadata": {"name": "widgets-view",
                    "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
                   "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}]}),
        ),
    ]);
    let viewer = user("viewer", &["system:authenticated"]);
    let editor = user("editor", &["system:authenticated"]);
    let owner = user("owner", &["system:authenticated"]);
    for who in [&viewer, &editor, &owner] {
        assert!(
            allows(&p, who, "watch", res("a", "", "pods", "", "")),
            "{}",
            who.user
        );
        assert!(
            allows(&p, who, "get", res("a", "", "pods", "log", "p")),
            "{}",
            who.user
        );
        assert!(
            allows(&p, who, "get", res("a", "example.com", "widgets", "", "w")),
            "{}",
            who.user
        );
        assert!(
            !allows(&p, who, "get", res("b", "", "pods", "", "p")),
            "{}",
            who.user
        );
    }
    assert!(!allows(
        &p,
        &viewer,
        "get",
        res("a", "", "secrets", "", "s")
    ));
    assert!(!allows(&p, &viewer, "create", res("a", "", "pods", "", "")));
    assert!(allows(&p, &editor, "create", res("a", "", "pods", "", "")));
    assert!(allows(
        &p,
        &editor,
        "update",
        res("a", "apps", "deployments", "scale", "d")
    ));
    assert!(!allows(
        &p,
        &editor,
        "create",
        res("a", GROUP, "roles", "", "")
    ));
    assert!(allows(
        &p,
        &owner,
        "create",
        res("a", GROUP, "rolebindings", "", "")
    ));
    // Masters hold everything through cluster-admin; everyone authenticated discovers.
    let admin = user("root", &["system:masters"]);
    assert!(allows(&p, &admin, "delete", res("", "", "nodes", "", "n")));
    assert!(allows(
        &p,
        &admin,
        "get",
        Request::NonResource { path: "/metrics" }
    ));
    assert!(allows(
        &p,
        &viewer,
        "get",
        Request::NonResource {
            path: "/apis/apps/v1"
        }
    ));
    assert!(!allows(
        &p,
        &viewer,
        "get",
        Request::NonResource { path: "/metrics" }
    ));
    assert!(allows(
        &p,
        &viewer,
        "create",
        res(
            "",
            "authorization.k8s.io",
            "selfsubjectaccessreviews",
            "",
            ""
        )
    ));
    assert!(allows(
        &p,
        &user("anon", &["system:unauthenticated"]),
        "get",
        Request::NonResource { path: "/version" }
    ));
}

#[test]
fn escalation_names_what_is_not_held() {
    let held = vec![rule(
        json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}),
    )];
    let wanted = vec![
        rule(json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]})),
        rule(
            json!({"apiGroups": [""], "resources": ["pods", "secrets"], "verbs": ["delete", "get"]}),
        ),
        rule(json!({"nonResourceURLs": ["/metrics"], "verbs": ["get"]})),
    ];
    assert!(missing_rules(&held, &wanted[..1]).is_empty());
    let missing = missing_rules(&held, &wanted);
    assert_eq!(
        missing,
        [
            "{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\"]}",
            "{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"delete\" \"get\"]}",
            "{NonResourceURLs:[\"/metrics\"], Verbs:[\"get\"]}",
        ]
    );
    // A wildcard is held only by a wildcard; names by no names or the same name.
    let star = vec![rule(
        json!({"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}),
    )];
    assert!(!missing_rules(&held, &star).is_empty());
    assert!(
        missing_rules(&star, &held[..]).len() == 1,
        "list is not held"
    );
    let named = vec![rule(
        json!({"apiGroups": [""], "resources": ["pods"], "resourceNames": ["p"], "verbs": ["get"]}),
    )];
    assert!(missing_rules(&held, &named).is_empty());
    assert!(!missing_rules(&named, &held).is_empty());
    assert!(missing_rules(&bootstrap::full_authority(), &wanted).is_empty());
    assert_eq!(
        escalation_message(
            &user("alice", &["dev", "system:authenticated"]),
            &missing[..1]
        ),
        "user \"alice\" (groups=[\"dev\" \"system:authenticated\"]) is attempting to grant RBAC \
         permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\"]}"
    );
}

#[test]
fn reconciling_adds_what_is_missing_only_where_allowed() {
    let (roles, bindings) = desired();
    let want = roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("system:basic-user"))
        .expect("basic-user");
    assert_eq!(reconcile_role(want, want), None);
    let mut trimmed = want.clone();
    trimmed.rules = Some(vec![rule(
        json!({"apiGroups": ["x"], "resources": ["y"], "verbs": ["get"]}),
    )]);
    let fixed = reconcile_role(&trimmed, want).expect("rules added");
    assert!(
        missing_rules(
            fixed.rules.as_deref().unwrap_or_default(),
            want.rules.as_deref().unwrap_or_default()
        )
        .is_empty()
    );
    assert_eq!(
        fixed.rules.as_ref().map(Vec::len),
        Some(3),
        "what was there stays"
    );
    trimmed.metadata.annotations = None;
    assert_eq!(
        reconcile_role(&trimmed, want),
        None,
        "not annotated: left alone"
    );

    let b = bindings
        .iter()
        .find(|b| b.metadata.name.as_deref() == Some("system:public-info-viewer"))
        .expect("binding");
    let mut fewer = b.clone();
    if let Some(s) = fewer.subjects.as_mut() {
        s.truncate(1);
    }
    let fixed = reconcile_binding(&fewer, b).expect("subject added");
    assert_eq!(fixed.subjects.as_ref().map(Vec::len), Some(2));
    assert_eq!(reconcile_binding(b, b), None);
}
