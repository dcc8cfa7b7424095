//! RBAC through the router: bindings grant per namespace and take effect at once,
//! denials read like kube-apiserver's, escalation is refused, the bootstrap policy exists.

use super::super::auth::Identity;
use super::super::rbac::bootstrap;
use super::super::testing::TestApi;
use http::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ALICE: &str = "alice-token";
const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";

async fn api_with_alice() -> TestApi {
    let api = TestApi::new().await;
    for ns in ["a", "b"] {
        let (code, body) = api
            .send(
                "POST",
                "/api/v1/namespaces",
                Some(json!({"metadata": {"name": ns}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    api.add_token(
        ALICE,
        Identity {
            user: "alice".into(),
            groups: vec!["system:authenticated".into()],
        },
    );
    api
}

async fn as_alice(
    api: &TestApi,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    api.send_with(ALICE, method, uri, "application/json", body)
        .await
}

fn role(name: &str, rules: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
           "metadata": {"name": name}, "rules": rules})
}

fn binding(name: &str, role_kind: &str, role: &str, user: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
           "metadata": {"name": name},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
           "subjects": [{"kind": "User", "name": user}]})
}

async fn created(api: &TestApi, uri: &str, body: Value) {
    let (code, out) = api.send("POST", uri, Some(body)).await;
    assert_eq!(code, StatusCode::CREATED, "{out}");
}

#[tokio::test]
async fn a_role_binding_grants_in_its_namespace_and_deleting_it_revokes() {
    let api = api_with_alice().await;
    let (code, status) = as_alice(&api, "GET", "/api/v1/namespaces/a/pods", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(
        status["message"],
        "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"a\""
    );
    created(
        &api,
        &format!("{RBAC}/namespaces/a/roles"),
        role(
            "pod-reader",
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]),
        ),
    )
    .await;
    created(
        &api,
        &format!("{RBAC}/namespaces/a/rolebindings"),
        binding("alice-reads", "Role", "pod-reader", "alice"),
    )
    .await;
    // The very next request.
    let (code, list) = as_alice(&api, "GET", "/api/v1/namespaces/a/pods", None).await;
    assert_eq!(code, StatusCode::OK, "{list}");
    let (code, status) = as_alice(&api, "GET", "/api/v1/namespaces/b/pods", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(
        status["message"],
        "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"b\""
    );
    let (code, status) = as_alice(
        &api,
        "POST",
        "/api/v1/namespaces/a/pods",
        Some(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x.wasm"}]}})),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    // A subresource is its own resource: no pods/eviction for a reader (a POST to a
    // subresource is a create and is authorized like one).
    let (code, status) = as_alice(
        &api,
        "POST",
        "/api/v1/namespaces/a/pods/p/eviction",
        Some(json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p"}})),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(
        status["message"],
        "pods \"p\" is forbidden: User \"alice\" cannot create resource \"pods/eviction\" in API group \"\" in the namespace \"a\""
    );

    let (code, out) = api
        .send(
            "DELETE",
            &format!("{RBAC}/namespaces/a/rolebindings/alice-reads"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _) = as_alice(&api, "GET", "/api/v1/namespaces/a/pods", None).await;
        if code == StatusCode::FORBIDDEN {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still allowed after the binding was deleted"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn escalation_is_refused_unless_bind_or_escalate_is_held() {
    let api = api_with_alice().await;
    bootstrap::reconcile(api.client())
        .await
        .expect("bootstrap policy");
    created(
        &api,
        &format!("{RBAC}/namespaces/a/roles"),
        role(
            "rbac-manager",
            json!([
                {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create", "get", "patch", "update"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
            ]),
        ),
    )
    .await;
    created(
        &api,
        &format!("{RBAC}/namespaces/a/rolebindings"),
        binding("alice-manages", "Role", "rbac-manager", "alice"),
    )
    .await;
    let roles = format!("{RBAC}/namespaces/a/roles");
    // What she holds she may grant.
    let (code, out) = as_alice(
        &api,
        "POST",
        &roles,
        Some(role(
            "getter",
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]),
        )),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{out}");
    // What she does not hold she may not.
    let (code, status) = as_alice(
        &api,
        "POST",
        &roles,
        Some(role("secrets", json!([{"apiGroups": [""], "resources": ["secrets", "pods"], "verbs": ["get", "delete"]}]))),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(
        status["message"],
        "roles.rbac.authorization.k8s.io \"secrets\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) \
         is attempting to grant RBAC permissions not currently held:\n\
         {APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\"]}\n\
         {APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"delete\" \"get\"]}"
    );
    // Nor by a patch of a role she may patch.
    let (code, status) = api
        .send_with(
            ALICE,
            "PATCH",
            &format!("{roles}/getter"),
            "application/merge-patch+json",
            Some(json!({"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]})),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    // Nor by a server-side apply, to an existing role or a new one.
    for name in ["getter", "applied"] {
        let (code, status) = api
            .send_with(
                ALICE,
                "PATCH",
                &format!("{roles}/{name}?fieldManager=alice&force=true"),
                "application/apply-patch+yaml",
                Some(role(
                    name,
                    json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]),
                )),
            )
            .await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{name}: {status}");
    }
    // A binding to cluster-admin is refused...
    let bindings = format!("{RBAC}/namespaces/a/rolebindings");
    let (code, status) = as_alice(
        &api,
        "POST",
        &bindings,
        Some(binding(
            "take-over",
            "ClusterRole",
            "cluster-admin",
            "alice",
        )),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "rolebindings.rbac.authorization.k8s.io \"take-over\" is forbidden: user \"alice\""
        ),
        "{message}"
    );
    // ...and a binding to `view` too, until she may `bind` it.
    let (code, _) = as_alice(
        &api,
        "POST",
        &bindings,
        Some(binding("bob-views", "ClusterRole", "view", "bob")),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    created(
        &api,
        &roles,
        role(
            "binder",
            json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                    "resourceNames": ["view"], "verbs": ["bind"]}]),
        ),
    )
    .await;
    created(
        &api,
        &bindings,
        binding("alice-binds", "Role", "binder", "alice"),
    )
    .await;
    let (code, out) = as_alice(
        &api,
        "POST",
        &bindings,
        Some(binding("bob-views", "ClusterRole", "view", "bob")),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{out}");
    // A roleRef never changes.
    let (code, status) = api
        .send_as(
            "PATCH",
            &format!("{bindings}/bob-views"),
            "application/merge-patch+json",
            Some(json!({"roleRef": {"name": "edit"}})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot change roleRef"),
        "{status}"
    );
}

#[tokio::test]
async fn the_bootstrap_policy_is_present_aggregated_and_reconciled() {
    let api = api_with_alice().await;
    bootstrap::reconcile(api.client())
        .await
        .expect("bootstrap policy");
    for name in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:basic-user",
        "system:discovery",
        "system:public-info-viewer",
    ] {
        let (code, out) = api
            .send("GET", &format!("{RBAC}/clusterroles/{name}"), None)
            .await;
        assert_eq!(code, StatusCode::OK, "{name}: {out}");
    }
    let (code, crb) = api
        .send(
            "GET",
            &format!("{RBAC}/clusterrolebindings/cluster-admin"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(crb["subjects"][0]["name"], "system:masters");
    // `view` bound in `a` lets alice read pods there through the aggregation, not secrets.
    created(
        &api,
        &format!("{RBAC}/namespaces/a/rolebindings"),
        binding("alice-views", "ClusterRole", "view", "alice"),
    )
    .await;
    let (code, _) = as_alice(&api, "GET", "/api/v1/namespaces/a/pods", None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = as_alice(&api, "GET", "/api/v1/namespaces/a/secrets", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    // An administrator's cut is restored on the next start; a second start changes nothing.
    let (code, out) = api
        .send_as(
            "PATCH",
            &format!("{RBAC}/clusterroles/system:basic-user"),
            "application/merge-patch+json",
            Some(json!({"rules": []})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{out}");
    bootstrap::reconcile(api.client()).await.expect("again");
    let (_, role) = api
        .send(
            "GET",
            &format!("{RBAC}/clusterroles/system:basic-user"),
            None,
        )
        .await;
    assert_eq!(role["rules"].as_array().map(Vec::len), Some(2), "{role}");
    let before = api.revision().await;
    bootstrap::reconcile(api.client())
        .await
        .expect("idempotent");
    assert_eq!(api.revision().await, before, "nothing to change");
}

async fn review(api: &TestApi, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    api.send_with(token, "POST", path, "application/json", Some(body))
        .await
}

#[tokio::test]
async fn reviews_answer_what_can_i_and_whoami() {
    let api = api_with_alice().await;
    bootstrap::reconcile(api.client())
        .await
        .expect("bootstrap policy");
    let ssar = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    let can_list = |ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
               "spec": {"resourceAttributes": {"namespace": ns, "verb": "list", "resource": "pods"}}})
    };
    let (code, out) = review(&api, ALICE, ssar, can_list("a")).await;
    assert_eq!(code, StatusCode::CREATED, "{out}");
    assert_eq!(out["status"]["allowed"], false);
    created(
        &api,
        &format!("{RBAC}/namespaces/a/rolebindings"),
        binding("alice-views", "ClusterRole", "view", "alice"),
    )
    .await;
    let (_, out) = review(&api, ALICE, ssar, can_list("a")).await;
    assert_eq!(out["status"]["allowed"], true, "{out}");
    let (_, out) = review(&api, ALICE, ssar, can_list("b")).await;
    assert_eq!(out["status"]["allowed"], false, "{out}");
    let (_, out) = review(
        &api,
        ALICE,
        ssar,
        json!({"spec": {"nonResourceAttributes": {"path": "/version", "verb": "get"}}}),
    )
    .await;
    assert_eq!(out["status"]["allowed"], true, "{out}");

    let (code, out) = review(
        &api,
        ALICE,
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        json!({"spec": {"namespace": "a"}}),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{out}");
    let rules = out["status"]["resourceRules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        rules.iter().any(|r| r["resources"]
            .as_array()
            .is_some_and(|l| l.contains(&json!("pods")))
            && r["verbs"] == json!(["get", "list", "watch"])),
        "{out}"
    );
    assert!(
        !rules.iter().any(|r| r["resources"]
            .as_array()
            .is_some_and(|l| l.contains(&json!("secrets")))),
        "{out}"
    );

    let (code, out) = review(
        &api,
        ALICE,
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{out}");
    assert_eq!(
        out["status"]["userInfo"],
        json!({"username": "alice", "groups": ["system:authenticated"]})
    );

    // Asking about someone else is for administrators.
    let sar = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    let about_alice = json!({"spec": {"user": "alice", "groups": ["system:authenticated"],
        "resourceAttributes": {"namespace": "a", "verb": "get", "resource": "pods"}}});
    let (code, out) = review(&api, ALICE, sar, about_alice.clone()).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{out}");
    let (code, out) = api.send("POST", sar, Some(about_alice)).await;
    assert_eq!(code, StatusCode::CREATED, "{out}");
    assert_eq!(out["status"]["allowed"], true, "{out}");
    // Nothing was stored.
    let (code, _) = api.send("GET", ssar, None).await;
    assert_ne!(code, StatusCode::OK);
}

#[tokio::test]
async fn impersonation_needs_the_impersonate_verb() {
    let api = api_with_alice().await;
    bootstrap::reconcile(api.client())
        .await
        .expect("bootstrap policy");
    let get = |token: &str, user: &str, uri: &str| {
        http::Request::builder()
            .method("GET")
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .header("impersonate-user", user)
            .body(axum::body::Body::empty())
            .expect("request")
    };
    // The admin acting as alice is alice.
    let (code, status) = api
        .request(get(
            super::super::testing::ADMIN_TOKEN,
            "alice",
            "/api/v1/namespaces/b/pods",
        ))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(
        status["message"],
        "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"b\""
    );
    // Alice may not act as anyone.
    let (code, status) = api
        .request(get(ALICE, "bob", "/api/v1/namespaces/a/pods"))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(
        status["message"],
        "users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    );
}

#[tokio::test]
async fn discovery_is_for_those_rbac_lets_discover() {
    let api = api_with_alice().await;
    // Before the bootstrap policy binds system:discovery, alice discovers nothing.
    let (code, status) = as_alice(&api, "GET", "/apis", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(
        status["message"],
        "forbidden: User \"alice\" cannot get path \"/apis\""
    );
    bootstrap::reconcile(api.client())
        .await
        .expect("bootstrap policy");
    for path in ["/api", "/apis", "/api/v1", "/apis/apps/v1", "/openapi/v3"] {
        let (code, out) = as_alice(&api, "GET", path, None).await;
        assert_eq!(code, StatusCode::OK, "{path}: {out}");
    }
}

/// The value of the first sample of `text` whose line starts with `series` (a name and
/// its labels up to where the test cares).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_are_for_admins_and_monitoring_and_count_requests() {
    let api = api_with_alice().await;
    bootstrap::reconcile(api.client())
        .await
        .expect("bootstrap policy");
    // Alice is authenticated but not a monitor.
    let (code, status) = as_alice(&api, "GET", "/metrics", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(
        status["message"],
        "forbidden: User \"alice\" cannot get path \"/metrics\""
    );
    api.add_token(
        "prometheus-token",
        Identity {
            user: "prometheus".into(),
            groups: vec!["system:authenticated".into(), "system:monitoring".into()],
        },
    );
    let scrape = |token: &'static str| {
        let api = &api;
        async move {
            let (code, text) = api.send_with(token, "GET", "/metrics", "", None).await;
            assert_eq!(code, StatusCode::OK, "{text}");
            text.as_str().expect("text").to_owned()
        }
    };
    let before = scrape("prometheus-token").await;
    let lists = r#"apiserver_request_total{verb="LIST",group="",version="v1",resource="namespaces",subresource="",scope="cluster",component="apiserver",code="200"}"#;
    let was = sample(&before, lists).unwrap_or(0.0);
    let mut namespaces = 0;
    for _ in 0..3 {
        let (code, out) = api.send("GET", "/api/v1/namespaces", None).await;
        assert_eq!(code, StatusCode::OK, "{out}");
        namespaces = out["items"].as_array().map_or(0, Vec::len);
    }
    // A made-up resource is counted without its name.
    let (code, _) = api.send("GET", "/api/v1/no-such-things", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let after = scrape(super::super::testing::ADMIN_TOKEN).await;
    assert_eq!(sample(&after, lists), Some(was + 3.0), "{after}");
    assert!(!after.contains("no-such-things"), "{after}");
    assert!(
        sample(
            &after,
            r#"apiserver_request_total{verb="LIST",group="",version="v1",resource="",subresource="",scope="cluster",component="apiserver",code="404"}"#
        ) >= Some(1.0),
        "{after}"
    );
    // The refused scrape was counted too, as a GET of a non-resource path.
    assert!(
        sample(
            &after,
            r#"apiserver_request_total{verb="GET",group="",version="",resource="",subresource="",scope="",component="apiserver",code="403"}"#
        ) >= Some(1.0),
        "{after}"
    );
    // The histogram's buckets filled: its +Inf bucket holds every LIST of namespaces.
    let inf = r#"apiserver_request_duration_seconds_bucket{le="+Inf",verb="LIST",group="",version="v1",resource="namespaces",subresource="",scope="cluster",component="apiserver"}"#;
    assert!(sample(&after, inf) >= Some(3.0), "{after}");
    // What the store holds and what it was asked.
    assert_eq!(
        sample(
            &after,
            r#"apiserver_storage_objects{resource="namespaces"}"#
        ),
        Some(namespaces as f64),
        "{after}"
    );
    assert!(
        sample(
            &after,
            r#"etcd_request_duration_seconds_count{operation="create",type="namespaces"}"#
        ) >= Some(2.0),
        "{after}"
    );
}
