//! Regression tests of the API-side hardening (issue 18): each request here was admitted
//! or answered wrongly before.

use super::*;

#[tokio::test]
async fn the_bearer_scheme_is_accepted_in_any_case() {
    let api = api().await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let req = Request::get("/api/v1/namespaces/default/pods")
            .header("authorization", format!("{scheme} {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let (code, body) = api.request(req).await;
        assert_eq!(code, StatusCode::OK, "{scheme}: {body}");
    }
}

/// POSTs `body` to `uri` and returns the 422's causes as `field: message` lines.
async fn invalid_causes(api: &Api, uri: &str, body: Value) -> Vec<String> {
    let (code, s) = api.send("POST", uri, Some(body)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(s["reason"], "Invalid", "{s}");
    s["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}: {}",
                c["field"].as_str().unwrap(),
                c["message"].as_str().unwrap()
            )
        })
        .collect()
}

fn pod_mounting(sub_path: &str) -> Value {
    let mut p = pod("escape", json!({}));
    p["spec"]["volumes"] = json!([{"name": "v", "emptyDir": {}}]);
    p["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "v", "mountPath": "/host", "subPath": sub_path}]);
    p
}

#[tokio::test]
async fn sub_paths_must_stay_inside_their_volume() {
    let api = api().await;
    let pods = "/api/v1/namespaces/default/pods";
    assert_eq!(
        invalid_causes(&api, pods, pod_mounting("/")).await,
        [
            "spec.containers[0].volumeMounts[0].subPath: Invalid value: \"/\": must be a relative path"
        ]
    );
    assert_eq!(
        invalid_causes(&api, pods, pod_mounting("a/../../etc")).await,
        [
            "spec.containers[0].volumeMounts[0].subPath: Invalid value: \"a/../../etc\": must not contain '..'"
        ]
    );
    let mut init = pod_mounting("data");
    init["spec"]["initContainers"] = json!([{"name": "init", "image": "init.wasm",
        "volumeMounts": [{"name": "v", "mountPath": "/v", "subPathExpr": "/$(POD)"}]}]);
    assert_eq!(
        invalid_causes(&api, pods, init).await,
        [
            "spec.initContainers[0].volumeMounts[0].subPathExpr: Invalid value: \"/$(POD)\": must be a relative path"
        ]
    );

    // The same check in every pod template.
    let mut deploy = deployment("d", 1);
    deploy["spec"]["template"]["spec"] = pod_mounting("..")["spec"].clone();
    assert_eq!(
        invalid_causes(&api, "/apis/apps/v1/namespaces/default/deployments", deploy).await,
        [
            "spec.template.spec.containers[0].volumeMounts[0].subPath: Invalid value: \"..\": must not contain '..'"
        ]
    );
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "volumes": [{"name": "v", "emptyDir": {}}],
            "containers": [{"name": "app", "image": "a.wasm",
                "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "/etc"}]}]}}}});
    assert_eq!(
        invalid_causes(&api, "/apis/batch/v1/namespaces/default/jobs", job).await,
        [
            "spec.template.spec.containers[0].volumeMounts[0].subPath: Invalid value: \"/etc\": must be a relative path"
        ]
    );

    // A relative subPath that stays inside is fine, `..` inside a name too.
    let (code, s) = api
        .send("POST", pods, Some(pod_mounting("logs/a..b")))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{s}");
}

#[tokio::test]
async fn volume_item_paths_must_stay_inside_their_volume() {
    let api = api().await;
    let mut p = pod("items", json!({}));
    p["spec"]["volumes"] = json!([
        {"name": "c", "configMap": {"name": "cm", "items": [{"key": "a", "path": "../../token"}]}},
        {"name": "s", "secret": {"secretName": "sec", "items": [{"key": "a", "path": "/etc/passwd"}]}},
        {"name": "p", "projected": {"sources": [{"configMap": {"name": "cm", "items": [{"key": "a", "path": "..data"}]}}]}},
    ]);
    assert_eq!(
        invalid_causes(&api, "/api/v1/namespaces/default/pods", p).await,
        [
            "spec.volumes[0].configMap.items[0].path: Invalid value: \"../../token\": must not contain '..'",
            "spec.volumes[0].configMap.items[0].path: Invalid value: \"../../token\": must not start with '..'",
            "spec.volumes[1].secret.items[0].path: Invalid value: \"/etc/passwd\": must be a relative path",
            "spec.volumes[2].projected.sources[0].configMap.items[0].path: Invalid value: \"..data\": must not start with '..'",
        ]
    );
}

#[tokio::test]
async fn secret_and_config_map_names_are_dns_subdomains() {
    let api = api().await;
    for (uri, kind) in [
        ("/api/v1/namespaces/default/secrets", "Secret"),
        ("/api/v1/namespaces/default/configmaps", "ConfigMap"),
    ] {
        for name in ["Upper", "a_b", "-a", "a..b"] {
            let body = json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name}});
            let causes = invalid_causes(&api, uri, body).await;
            assert_eq!(causes.len(), 1, "{causes:?}");
            assert!(
                causes[0].starts_with("metadata.name: Invalid value"),
                "{causes:?}"
            );
        }
    }
}
