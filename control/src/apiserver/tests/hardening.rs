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

fn pod_with_resources(resources: Value) -> Value {
    let mut p = pod("limited", json!({}));
    p["spec"]["containers"][0]["resources"] = resources;
    p
}

#[tokio::test]
async fn quantities_are_validated_as_kubernetes_does() {
    let api = api().await;
    let pods = "/api/v1/namespaces/default/pods";
    let re = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
    assert_eq!(
        invalid_causes(
            &api,
            pods,
            pod_with_resources(json!({"limits": {"memory": "1Zi"}}))
        )
        .await,
        [format!(
            "spec.containers[0].resources.limits[memory]: Invalid value: \"1Zi\": {re}"
        )]
    );
    assert_eq!(
        invalid_causes(
            &api,
            pods,
            pod_with_resources(json!({"limits": {"memory": "-1"}, "requests": {"cpu": "-1"}}))
        )
        .await,
        [
            "spec.containers[0].resources.limits[memory]: Invalid value: \"-1\": must be greater than or equal to 0",
            "spec.containers[0].resources.requests[cpu]: Invalid value: \"-1\": must be greater than or equal to 0",
        ]
    );
    assert_eq!(
        invalid_causes(
            &api,
            pods,
            pod_with_resources(json!({"limits": {"memory": "1"}, "requests": {"memory": "2"}}))
        )
        .await,
        [
            "spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to memory limit of 1"
        ]
    );
    assert_eq!(
        invalid_causes(
            &api,
            pods,
            pod_with_resources(json!({"limits": {"cpu": "1mi"}}))
        )
        .await,
        [
            "spec.containers[0].resources.limits[cpu]: Invalid value: \"1mi\": unable to parse quantity's suffix"
        ]
    );
    // In templates too.
    let mut deploy = deployment("d", 1);
    deploy["spec"]["template"]["spec"]["containers"][0]["resources"] =
        json!({"limits": {"cpu": "1.2.3"}});
    assert_eq!(
        invalid_causes(&api, "/apis/apps/v1/namespaces/default/deployments", deploy).await,
        [format!(
            "spec.template.spec.containers[0].resources.limits[cpu]: Invalid value: \"1.2.3\": {re}"
        )]
    );

    // Equal amounts in other units are fine, and the largest quantity too.
    let (code, s) = api
        .send(
            "POST",
            pods,
            Some(pod_with_resources(
                json!({"limits": {"cpu": "1", "memory": "1e1000"}, "requests": {"cpu": "1000m"}}),
            )),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{s}");
    assert_eq!(
        s["spec"]["containers"][0]["resources"]["requests"],
        json!({"cpu": "1000m"})
    );
}

async fn config_maps(api: &Api, n: usize) {
    for i in 0..n {
        let (code, s) = api
            .send(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                Some(json!({"metadata": {"name": format!("c{i:02}"), "labels": {"odd": (i % 2).to_string()}}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{s}");
    }
}

fn item_names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn lists_are_paginated_with_limit_and_continue() {
    let api = api().await;
    config_maps(&api, 5).await;
    let base = "/api/v1/namespaces/default/configmaps";
    let (code, first) = api.send("GET", &format!("{base}?limit=2"), None).await;
    assert_eq!(code, StatusCode::OK, "{first}");
    assert_eq!(item_names(&first), ["c00", "c01"]);
    assert_eq!(first["metadata"]["remainingItemCount"], 3);
    let rv = first["metadata"]["resourceVersion"].clone();

    // Changes between pages: the later pages show the collection at the first page's
    // resourceVersion (the deleted one still there, the changed one as it was, the new one
    // not yet).
    let (code, _) = api.send("DELETE", &format!("{base}/c04"), None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api
        .send_as(
            "PATCH",
            &format!("{base}/c03"),
            "application/merge-patch+json",
            Some(json!({"data": {"changed": "yes"}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api
        .send(
            "POST",
            base,
            Some(json!({"metadata": {"name": "c02a"}, "data": {}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let mut names = item_names(&first);
    let mut token = first["metadata"]["continue"].as_str().unwrap().to_string();
    loop {
        let (code, page) = api
            .send("GET", &format!("{base}?limit=2&continue={token}"), None)
            .await;
        assert_eq!(code, StatusCode::OK, "{page}");
        assert_eq!(page["metadata"]["resourceVersion"], rv);
        for item in page["items"].as_array().unwrap() {
            assert!(item["data"].get("changed").is_none(), "{item}");
        }
        names.extend(item_names(&page));
        match page["metadata"]["continue"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    assert_eq!(names, ["c00", "c01", "c02", "c03", "c04"]);

    // Selectors page over what matches; no count of what follows.
    let (_, odd) = api
        .send(
            "GET",
            &format!("{base}?limit=1&labelSelector=odd%3D1"),
            None,
        )
        .await;
    assert_eq!(item_names(&odd), ["c01"]);
    assert!(odd["metadata"]["continue"].is_string());
    assert!(odd["metadata"].get("remainingItemCount").is_none(), "{odd}");

    // Tables (kubectl get --chunk-size) carry the token too.
    let req = Request::get(format!("{base}?limit=5"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Body::empty())
        .unwrap();
    let (code, table) = api.request(req).await;
    assert_eq!(code, StatusCode::OK, "{table}");
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["rows"].as_array().unwrap().len(), 5);
    assert!(table["metadata"]["continue"].is_null(), "{table}");
    let (_, all) = api.send("GET", base, None).await;
    assert_eq!(item_names(&all).len(), 5);
    assert!(all["metadata"].get("continue").is_none());
}

#[tokio::test]
async fn invalid_list_parameters_are_400() {
    let api = api().await;
    let base = "/api/v1/namespaces/default/configmaps";
    for q in [
        "limit=abc",
        "continue=garbage",
        "resourceVersion=abc",
        "watch=maybe",
    ] {
        let (code, s) = api.send("GET", &format!("{base}?{q}"), None).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{q}: {s}");
        assert_eq!(s["reason"], "BadRequest", "{q}: {s}");
    }
}

#[tokio::test]
async fn a_continue_token_past_compaction_is_410() {
    let api = api_with(ApiConfig::default(), |c| {
        c.log_max_events = 2;
        c.compaction_interval = Duration::from_millis(0);
    })
    .await;
    config_maps(&api, 3).await;
    let base = "/api/v1/namespaces/default/configmaps";
    let (_, first) = api.send("GET", &format!("{base}?limit=1"), None).await;
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    let first_rv: u64 = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while api.fjall.oldest_watchable() <= first_rv {
        assert!(
            tokio::time::Instant::now() < deadline,
            "compaction did not run"
        );
        api.send(
            "POST",
            base,
            Some(json!({"metadata": {"generateName": "x-"}})),
        )
        .await;
    }
    let (code, s) = api
        .send("GET", &format!("{base}?limit=1&continue={token}"), None)
        .await;
    assert_eq!(code, StatusCode::GONE, "{s}");
    assert_eq!(s["reason"], "Expired");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .starts_with("The provided continue parameter is too old"),
        "{s}"
    );
}

#[tokio::test]
async fn endpoint_addresses_stay_inside_the_clusters_pod_ranges() {
    let api = api().await;
    let slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
    let slice = |name: &str, ip: &str| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "ports": [{"port": 8080}],
               "endpoints": [{"addresses": [ip]}]})
    };
    assert_eq!(
        invalid_causes(&api, slices, slice("host", "127.0.0.1")).await,
        [
            "endpoints[0].addresses[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128) outside the cluster's pod ranges (127.64.0.0/10)"
        ]
    );
    assert_eq!(
        invalid_causes(&api, slices, slice("meta", "169.254.169.254")).await,
        [
            "endpoints[0].addresses[0]: Invalid value: \"169.254.169.254\": may not be in the link-local range (169.254.0.0/16, fe80::/10)"
        ]
    );
    let (code, s) = api
        .send("POST", slices, Some(slice("pod", "127.64.0.7")))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{s}");
    // Updates too: a patch cannot point a slice at the host.
    let (code, s) = api
        .send_as(
            "PATCH",
            &format!("{slices}/pod"),
            "application/json-patch+json",
            Some(json!([{"op": "replace", "path": "/endpoints/0/addresses/0", "value": "127.0.0.1"}])),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");

    // A Node's own pod range counts.
    let (code, s) = api
        .send(
            "POST",
            "/api/v1/nodes",
            Some(
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "far"},
                        "spec": {"podCIDR": "127.200.0.0/16"}}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{s}");
    let (code, s) = api
        .send("POST", slices, Some(slice("far", "127.200.0.9")))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{s}");

    // Endpoints (core/v1) the same.
    let eps = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"},
                     "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": 80}]}]});
    let causes = invalid_causes(&api, "/api/v1/namespaces/default/endpoints", eps).await;
    assert_eq!(causes.len(), 1, "{causes:?}");
    assert!(causes[0].starts_with("subsets[0].addresses[0].ip: Invalid value: \"127.0.0.1\": may not be in the loopback range"), "{causes:?}");
}

#[tokio::test]
async fn host_path_pods_are_admitted_with_a_warning_when_no_node_allows_them() {
    let api = api().await;
    let mut p = pod("hp", json!({}));
    p["spec"]["volumes"] = json!([{"name": "h", "hostPath": {"path": "/data"}}]);
    let create = |body: Value| {
        Request::post("/api/v1/namespaces/default/pods")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let resp = api.router.clone().oneshot(create(p.clone())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let warnings: Vec<String> = resp
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("spec.volumes[0].hostPath: no node allows hostPath volumes"),
        "{warnings:?}"
    );

    // Once a node allows them, no warning.
    let (code, s) = api
        .send(
            "POST",
            "/api/v1/nodes",
            Some(json!({"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": "n1", "annotations": {"wharf.dev/allow-host-path": "true"}}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{s}");
    p["metadata"]["name"] = json!("hp2");
    let resp = api.router.clone().oneshot(create(p)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().get("warning").is_none());
}

/// Every kind with a pod spec gets the warning, through the strategy's default admission:
/// a Deployment's template here.
#[tokio::test]
async fn host_path_templates_are_admitted_with_a_warning_when_no_node_allows_them() {
    let api = api().await;
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "hp"},
        "spec": {"selector": {"matchLabels": {"app": "hp"}},
                 "template": {"metadata": {"labels": {"app": "hp"}},
                              "spec": {"containers": [{"name": "app", "image": "hello.wasm"}],
                                       "volumes": [{"name": "h", "hostPath": {"path": "/data"}}]}}}});
    let req = Request::post("/apis/apps/v1/namespaces/default/deployments")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(deployment.to_string()))
        .unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let warnings: Vec<String> = resp
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .contains("spec.template.spec.volumes[0].hostPath: no node allows hostPath volumes"),
        "{warnings:?}"
    );
}
