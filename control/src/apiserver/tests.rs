//! Handler tests: the whole router through `oneshot`, on a real store in a temp dir.
#![allow(clippy::unwrap_used)]

use super::ApiConfig;
use crate::store::StoreConfig;
use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

use super::testing::{ADMIN_TOKEN as TOKEN, TestApi as Api};

async fn api_with(config: ApiConfig, store_config: impl FnOnce(&mut StoreConfig)) -> Api {
    Api::with(config, store_config).await
}

async fn api() -> Api {
    Api::new().await
}

fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": labels},
           "spec": {"containers": [{"name": "app", "image": "hello.wasm"}]}})
}

fn deployment(name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "app", "image": "hello.wasm"}]}}}})
}

#[tokio::test]
async fn health_and_version_need_no_token() {
    let api = api().await;
    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        let (code, _) = api
            .request(Request::get(path).body(Body::empty()).unwrap())
            .await;
        assert_eq!(code, StatusCode::OK, "{path}");
    }
    let (_, v) = api
        .request(Request::get("/version").body(Body::empty()).unwrap())
        .await;
    assert_eq!(v["major"], "1");
}

#[tokio::test]
async fn missing_or_wrong_token_is_401_and_changes_nothing() {
    let api = api().await;
    let before = api.revision().await;
    for auth in [None, Some("Bearer nope"), Some("Basic dGVzdA==")] {
        let mut req = Request::post("/api/v1/namespaces/default/pods")
            .header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (code, status) = api
            .request(
                req.body(Body::from(pod("p", json!({})).to_string()))
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "Unauthorized");
        assert_eq!(status["code"], 401);
    }
    assert_eq!(api.revision().await, before);
    let (code, list) = api
        .send("GET", "/api/v1/namespaces/default/pods", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn create_fills_server_fields_and_refuses_duplicates() {
    let api = api().await;
    let (code, created) = api
        .send(
            "POST",
            "/api/v1/namespaces/default/pods",
            Some(pod("web", json!({"app": "web"}))),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let meta = &created["metadata"];
    assert_eq!(meta["namespace"], "default");
    assert!(meta["uid"].as_str().unwrap().len() >= 32);
    assert!(meta["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    assert!(
        meta["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(meta["generation"], 1);
    assert_eq!(created["spec"]["restartPolicy"], "Always");
    assert_eq!(created["status"]["phase"], "Pending");

    let (code, got) = api
        .send("GET", "/api/v1/namespaces/default/pods/web", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(got, created);

    let (code, status) = api
        .send(
            "POST",
            "/api/v1/namespaces/default/pods",
            Some(pod("web", json!({}))),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(status["reason"], "AlreadyExists");
    assert_eq!(status["message"], "pods \"web\" already exists");
    assert_eq!(status["details"]["name"], "web");

    let mut generated = pod("", json!({}));
    generated["metadata"]["generateName"] = json!("web-");
    let (code, g) = api
        .send("POST", "/api/v1/namespaces/default/pods", Some(generated))
        .await;
    assert_eq!(code, StatusCode::CREATED);
    assert!(g["metadata"]["name"].as_str().unwrap().starts_with("web-"));
}

#[tokio::test]
async fn errors_are_kubernetes_statuses() {
    let api = api().await;
    let (code, s) = api
        .send(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/nope",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(s["reason"], "NotFound");
    assert_eq!(s["message"], "deployments.apps \"nope\" not found");

    let mut bad = pod("bad", json!({}));
    bad["spec"]["containers"] = json!([{"name": "app"}]);
    let (code, s) = api
        .send("POST", "/api/v1/namespaces/default/pods", Some(bad))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(s["reason"], "Invalid");
    assert_eq!(
        s["details"]["causes"][0]["field"],
        "spec.containers[0].image"
    );
    assert_eq!(s["details"]["causes"][0]["reason"], "FieldValueRequired");

    let (code, s) = api
        .send(
            "POST",
            "/api/v1/namespaces/default/pods",
            Some(pod("Bad_Name", json!({}))),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");

    let (code, s) = api
        .send("GET", "/apis/apps/v2/namespaces/default/deployments", None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("apps/v1/Deployment"),
        "{s}"
    );

    let (code, s) = api
        .send(
            "POST",
            "/api/v1/namespaces/nowhere/pods",
            Some(pod("p", json!({}))),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(s["message"], "namespaces \"nowhere\" not found");

    let (code, s) = api
        .send_as(
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{s}");

    let (code, s) = api
        .send(
            "GET",
            "/api/v1/namespaces/default/pods?labelSelector=a+in+b",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(s["reason"], "BadRequest");
}

#[tokio::test]
async fn large_bodies_are_refused() {
    let api = api_with(
        ApiConfig {
            max_body_bytes: 1024,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let mut big = pod("big", json!({}));
    big["metadata"]["annotations"] = json!({"x": "y".repeat(4096)});
    let (code, s) = api
        .send("POST", "/api/v1/namespaces/default/pods", Some(big))
        .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(s["reason"], "RequestEntityTooLarge");
}

#[tokio::test]
async fn chained_json_patch_copies_are_refused_before_they_grow() {
    let api = api().await;
    let uri = "/api/v1/namespaces/default/configmaps";
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "seed"}, "data": {"x": "y".repeat(1024)}});
    let (code, created) = api.send("POST", uri, Some(cm)).await;
    assert_eq!(code, StatusCode::CREATED);
    // Forty copies of /data into itself: ~2 KB of request, 2^40 KB if applied.
    let bomb: Vec<Value> = (0..40)
        .map(|i| json!({"op": "copy", "from": "/data", "path": format!("/data/c{i}")}))
        .collect();
    for query in ["", "?dryRun=All"] {
        let (code, s) = api
            .send_as(
                "PATCH",
                &format!("{uri}/seed{query}"),
                "application/json-patch+json",
                Some(Value::Array(bomb.clone())),
            )
            .await;
        assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{s}");
        assert_eq!(s["reason"], "RequestEntityTooLarge");
        assert!(
            s["message"]
                .as_str()
                .unwrap_or("")
                .contains("copy operations"),
            "{s}"
        );
    }
    let too_many = vec![json!({"op": "test", "path": "/kind", "value": "ConfigMap"}); 10_001];
    let (code, s) = api
        .send_as(
            "PATCH",
            &format!("{uri}/seed"),
            "application/json-patch+json",
            Some(Value::Array(too_many)),
        )
        .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{s}");
    let (_, stored) = api.send("GET", &format!("{uri}/seed"), None).await;
    assert_eq!(
        stored["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    assert_eq!(stored["data"].as_object().map(|d| d.len()), Some(1));
}

#[tokio::test]
async fn objects_too_large_to_store_are_refused_however_they_grow() {
    let api = api().await;
    let uri = "/api/v1/namespaces/default/configmaps";
    let cm = |name: &str, size: usize| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name}, "data": {"x": "y".repeat(size)}})
    };
    // Under the 3 MiB body limit, over the 1.5 MiB object limit.
    for query in ["", "?dryRun=All"] {
        let (code, s) = api
            .send("POST", &format!("{uri}{query}"), Some(cm("big", 2_000_000)))
            .await;
        assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{s}");
        assert!(
            s["message"]
                .as_str()
                .unwrap_or("")
                .contains("too large to store"),
            "{s}"
        );
    }
    let (code, _) = api.send("POST", uri, Some(cm("grows", 1_000_000))).await;
    assert_eq!(code, StatusCode::CREATED);
    // Two merge patches of 1 MB each: the second would make it 2 MB.
    let (code, s) = api
        .send_as(
            "PATCH",
            &format!("{uri}/grows"),
            "application/merge-patch+json",
            Some(json!({"data": {"z": "z".repeat(1_000_000)}})),
        )
        .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{s}");
    // What a node writes in status is bounded the same way.
    let (code, _) = api
        .send(
            "POST",
            "/api/v1/namespaces/default/pods",
            Some(pod("p", json!({}))),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, s) = api
        .send_as(
            "PATCH",
            "/api/v1/namespaces/default/pods/p/status",
            "application/merge-patch+json",
            Some(json!({"status": {"message": "m".repeat(2_000_000)}})),
        )
        .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{s}");
}

#[tokio::test]
async fn annotations_and_containers_are_bounded() {
    let api = api().await;
    let mut p = pod("annotated", json!({}));
    p["metadata"]["annotations"] = json!({"a": "x".repeat(200_000), "b": "x".repeat(100_000)});
    let (code, s) = api
        .send("POST", "/api/v1/namespaces/default/pods", Some(p))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(s["details"]["causes"][0]["field"], "metadata.annotations");
    assert_eq!(s["details"]["causes"][0]["reason"], "FieldValueTooLong");
    let mut p = pod("crowded", json!({}));
    let containers: Vec<Value> = (0..101)
        .map(|i| json!({"name": format!("c{i}"), "image": "a.wasm"}))
        .collect();
    p["spec"]["containers"] = Value::Array(containers);
    let (code, s) = api
        .send("POST", "/api/v1/namespaces/default/pods", Some(p))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(s["details"]["causes"][0]["field"], "spec.containers");
    assert_eq!(s["details"]["causes"][0]["reason"], "FieldValueTooMany");
}

#[tokio::test]
async fn requests_without_content_type_are_json() {
    let api = api().await;
    let (code, _) = api
        .send_as(
            "POST",
            "/api/v1/namespaces/default/pods",
            "",
            Some(pod("p", json!({}))),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
}

#[tokio::test]
async fn updates_compare_and_swap_and_bump_generation_on_spec_only() {
    let api = api().await;
    let uri = "/apis/apps/v1/namespaces/default/deployments";
    let (_, created) = api.send("POST", uri, Some(deployment("web", 1))).await;
    let rv = created["metadata"]["resourceVersion"].clone();

    let mut labeled = created.clone();
    labeled["metadata"]["labels"] = json!({"tier": "front"});
    labeled["status"] = json!({"replicas": 42});
    let (code, updated) = api
        .send("PUT", &format!("{uri}/web"), Some(labeled.clone()))
        .await;
    assert_eq!(code, StatusCode::OK, "{updated}");
    assert_eq!(
        updated["metadata"]["generation"], 1,
        "metadata change does not bump generation"
    );
    assert!(
        updated.get("status").is_none(),
        "status is ignored on the main resource"
    );
    assert_ne!(updated["metadata"]["resourceVersion"], rv);

    // Stale resourceVersion: 409 Conflict, nothing written.
    let (code, s) = api.send("PUT", &format!("{uri}/web"), Some(labeled)).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(s["reason"], "Conflict");

    let mut scaled = updated.clone();
    scaled["spec"]["replicas"] = json!(3);
    let (code, scaled) = api.send("PUT", &format!("{uri}/web"), Some(scaled)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(scaled["metadata"]["generation"], 2);

    let (code, st) = api
        .send("PUT", &format!("{uri}/web/status"), Some(json!({"metadata": {"name": "web"}, "spec": {"replicas": 9}, "status": {"replicas": 3}})))
        .await;
    assert_eq!(code, StatusCode::OK, "{st}");
    assert_eq!(st["status"]["replicas"], 3);
    assert_eq!(
        st["spec"]["replicas"], 3,
        "spec is ignored on the status subresource"
    );
    assert_eq!(st["metadata"]["generation"], 2);

    // A no-op update writes nothing.
    let before = api.revision().await;
    let (code, same) = api
        .send("PUT", &format!("{uri}/web"), Some(st.clone()))
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        same["metadata"]["resourceVersion"],
        st["metadata"]["resourceVersion"]
    );
    assert_eq!(api.revision().await, before);
}

#[tokio::test]
async fn merge_and_json_patches() {
    let api = api().await;
    let uri = "/apis/apps/v1/namespaces/default/deployments";
    api.send("POST", uri, Some(deployment("web", 1))).await;
    let (code, p) = api
        .send_as(
            "PATCH",
            &format!("{uri}/web"),
            "application/merge-patch+json",
            Some(json!({"spec": {"replicas": 4}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{p}");
    assert_eq!(p["spec"]["replicas"], 4);
    assert_eq!(p["metadata"]["generation"], 2);
    let (code, p) = api
        .send_as(
            "PATCH",
            &format!("{uri}/web"),
            "application/json-patch+json",
            Some(json!([{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}])),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{p}");
    assert_eq!(p["metadata"]["labels"]["a"], "b");
    let (code, p) = api
        .send_as(
            "PATCH",
            &format!("{uri}/web/status"),
            "application/merge-patch+json",
            Some(json!({"status": {"readyReplicas": 2}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(p["status"]["readyReplicas"], 2);
    let (code, s) = api
        .send_as(
            "PATCH",
            &format!("{uri}/web"),
            "application/merge-patch+json",
            Some(json!({"spec": {"replicas": "x"}})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(s["details"]["causes"][0]["field"], "spec.replicas");
    let (code, _) = api
        .send_as(
            "PATCH",
            &format!("{uri}/web"),
            "text/plain",
            Some(json!({})),
        )
        .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn lists_filter_by_labels_and_fields_across_namespaces() {
    let api = api().await;
    api.send(
        "POST",
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "other"}})),
    )
    .await;
    api.send(
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(pod("a", json!({"app": "web", "env": "prod"}))),
    )
    .await;
    api.send(
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(pod("b", json!({"app": "web", "env": "dev"}))),
    )
    .await;
    let mut c = pod("c", json!({"app": "db"}));
    c["spec"]["nodeName"] = json!("node-1");
    api.send("POST", "/api/v1/namespaces/other/pods", Some(c))
        .await;

    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, all) = api.send("GET", "/api/v1/pods", None).await;
    assert_eq!(all["kind"], "PodList");
    assert_eq!(names(&all), ["a", "b", "c"]);
    assert!(all["metadata"]["resourceVersion"].as_str().is_some());
    let (_, l) = api
        .send(
            "GET",
            "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb,env+notin+(dev)",
            None,
        )
        .await;
    assert_eq!(names(&l), ["a"]);
    let (_, l) = api
        .send("GET", "/api/v1/pods?labelSelector=env", None)
        .await;
    assert_eq!(names(&l), ["a", "b"]);
    let (_, l) = api
        .send("GET", "/api/v1/pods?labelSelector=!env", None)
        .await;
    assert_eq!(names(&l), ["c"]);
    let (_, l) = api
        .send(
            "GET",
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1",
            None,
        )
        .await;
    assert_eq!(names(&l), ["c"]);
    let (_, l) = api
        .send(
            "GET",
            "/api/v1/pods?fieldSelector=metadata.namespace!%3Dother,status.phase%3DPending",
            None,
        )
        .await;
    assert_eq!(names(&l), ["a", "b"]);
}

#[tokio::test]
async fn deletes_honour_preconditions_and_grace() {
    let api = api().await;
    api.send(
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(pod("free", json!({}))),
    )
    .await;
    let (code, s) = api
        .send(
            "DELETE",
            "/api/v1/namespaces/default/pods/free",
            Some(json!({"preconditions": {"uid": "nope"}})),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{s}");
    let (code, _) = api
        .send("DELETE", "/api/v1/namespaces/default/pods/free", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api
        .send("GET", "/api/v1/namespaces/default/pods/free", None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // A pod on a node is marked and kept until the node confirms with grace 0.
    let mut bound = pod("bound", json!({}));
    bound["spec"]["nodeName"] = json!("node-1");
    api.send("POST", "/api/v1/namespaces/default/pods", Some(bound))
        .await;
    let (code, marked) = api
        .send("DELETE", "/api/v1/namespaces/default/pods/bound", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
    let (code, _) = api
        .send(
            "DELETE",
            "/api/v1/namespaces/default/pods/bound?gracePeriodSeconds=0",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api
        .send("GET", "/api/v1/namespaces/default/pods/bound", None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // Finalizers hold an object until they are removed.
    let cm = json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}, "data": {"k": "v"}});
    api.send("POST", "/api/v1/namespaces/default/configmaps", Some(cm))
        .await;
    let (_, marked) = api
        .send("DELETE", "/api/v1/namespaces/default/configmaps/held", None)
        .await;
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    let (code, _) = api
        .send_as(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/held",
            "application/merge-patch+json",
            Some(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api
        .send("GET", "/api/v1/namespaces/default/configmaps/held", None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

async fn watch_lines(api: &Api, uri: &str, want: usize) -> Vec<Value> {
    let req = Request::get(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut lines = Vec::new();
    while lines.len() < want {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("watch event timed out");
        let Some(frame) = frame else { break };
        if let Ok(data) = frame.unwrap().into_data() {
            buf.extend_from_slice(&data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                lines.push(serde_json::from_slice(&line).unwrap());
            }
        }
    }
    lines
}

#[tokio::test]
async fn watch_replays_then_follows_with_selector_transitions() {
    let api = api().await;
    let (_, a) = api
        .send(
            "POST",
            "/api/v1/namespaces/default/pods",
            Some(pod("a", json!({"app": "web"}))),
        )
        .await;
    let start = a["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    api.send(
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(pod("b", json!({"app": "db"}))),
    )
    .await;
    // b starts matching, then a stops matching, then b is deleted.
    api.send_as(
        "PATCH",
        "/api/v1/namespaces/default/pods/b",
        "application/merge-patch+json",
        Some(json!({"metadata": {"labels": {"app": "web"}}})),
    )
    .await;
    api.send_as(
        "PATCH",
        "/api/v1/namespaces/default/pods/a",
        "application/merge-patch+json",
        Some(json!({"metadata": {"labels": {"app": "x"}}})),
    )
    .await;
    api.send("DELETE", "/api/v1/namespaces/default/pods/b", None)
        .await;
    let events = watch_lines(&api, &format!("/api/v1/namespaces/default/pods?watch=true&labelSelector=app%3Dweb&resourceVersion={start}"), 3).await;
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("ADDED".into(), "b".into()),
            ("DELETED".into(), "a".into()),
            ("DELETED".into(), "b".into())
        ]
    );
    let revs: Vec<u64> = events
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");

    // Without a resourceVersion: ADDED for what exists, then live events. The create
    // below may land before or after the watch lists; either way `c` is seen once, after `a`.
    let watcher = api.clone();
    let live = tokio::spawn(async move {
        let api = watcher;
        watch_lines(&api, "/api/v1/namespaces/default/pods?watch=1", 2).await
    });
    api.send(
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(pod("c", json!({}))),
    )
    .await;
    let lines = tokio::time::timeout(Duration::from_secs(10), live)
        .await
        .unwrap()
        .unwrap();
    let summary: Vec<(&str, &str)> = lines
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["object"]["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary, [("ADDED", "a"), ("ADDED", "c")]);
}

#[tokio::test]
async fn watch_from_a_compacted_revision_is_an_error_event_with_410() {
    let api = api_with(ApiConfig::default(), |c| {
        c.log_max_events = 2;
        c.compaction_interval = Duration::from_millis(0);
    })
    .await;
    for i in 0..10 {
        api.send(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(json!({"metadata": {"name": format!("c{i}")}})),
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while api.fjall.oldest_watchable() <= 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "compaction did not run"
        );
        api.send(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(json!({"metadata": {"generateName": "x-"}})),
        )
        .await;
    }
    let events = watch_lines(
        &api,
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1",
        1,
    )
    .await;
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
}

#[tokio::test]
async fn discovery_lists_every_kind() {
    let api = api().await;
    let (code, v) = api.send("GET", "/api/v1", None).await;
    assert_eq!(code, StatusCode::OK);
    let names: Vec<&str> = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"pods") && names.contains(&"pods/status") && names.contains(&"configmaps")
    );
    let (_, g) = api.send("GET", "/apis", None).await;
    let groups: Vec<&str> = g["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        groups,
        [
            "apps",
            "batch",
            "autoscaling",
            "coordination.k8s.io",
            "discovery.k8s.io",
            "networking.k8s.io",
            "policy",
            "scheduling.k8s.io",
            "rbac.authorization.k8s.io",
            "apiextensions.k8s.io",
            "apiregistration.k8s.io",
            "metrics.k8s.io",
            "storage.k8s.io",
            "authentication.k8s.io",
            "authorization.k8s.io"
        ]
    );
    let (code, _) = api.send("GET", "/apis/apps/v1", None).await;
    assert_eq!(code, StatusCode::OK);
}

/// The reviews are listed as kube-apiserver lists them: cluster-scoped, `create` only, in
/// the legacy documents and in aggregated discovery, with an OpenAPI schema each (what
/// `kubectl api-resources` and `kubectl explain` read).
#[tokio::test]
async fn discovery_lists_the_reviews_create_only() {
    let api = api().await;
    let expected = [
        (
            "authentication.k8s.io",
            vec![
                ("selfsubjectreviews", "SelfSubjectReview"),
                ("tokenreviews", "TokenReview"),
            ],
        ),
        (
            "authorization.k8s.io",
            vec![
                ("selfsubjectaccessreviews", "SelfSubjectAccessReview"),
                ("selfsubjectrulesreviews", "SelfSubjectRulesReview"),
                ("subjectaccessreviews", "SubjectAccessReview"),
            ],
        ),
    ];
    for (group, reviews) in &expected {
        let (code, g) = api.send("GET", &format!("/apis/{group}"), None).await;
        assert_eq!(code, StatusCode::OK, "{g}");
        assert_eq!(g["preferredVersion"]["groupVersion"], format!("{group}/v1"));
        let (code, v) = api.send("GET", &format!("/apis/{group}/v1"), None).await;
        assert_eq!(code, StatusCode::OK, "{v}");
        let mut listed: Vec<(String, String)> = Vec::new();
        for r in v["resources"].as_array().unwrap() {
            assert_eq!(r["verbs"], json!(["create"]), "{r}");
            assert_eq!(r["namespaced"], false, "{r}");
            listed.push((
                r["name"].as_str().unwrap().to_string(),
                r["kind"].as_str().unwrap().to_string(),
            ));
        }
        listed.sort();
        let want: Vec<(String, String)> = reviews
            .iter()
            .map(|(p, k)| (p.to_string(), k.to_string()))
            .collect();
        assert_eq!(listed, want, "{group}");
        // Their OpenAPI documents carry each review's schema and create operation.
        let (code, doc) = api
            .send("GET", &format!("/openapi/v3/apis/{group}/v1"), None)
            .await;
        assert_eq!(code, StatusCode::OK);
        for (plural, kind) in reviews {
            let post = &doc["paths"][format!("/apis/{group}/v1/{plural}")]["post"];
            assert_eq!(post["x-kubernetes-action"], "post", "{plural}");
            assert_eq!(post["x-kubernetes-group-version-kind"]["kind"], *kind);
            let gvk_of_schema = doc["components"]["schemas"]
                .as_object()
                .unwrap()
                .values()
                .filter_map(|s| s["x-kubernetes-group-version-kind"][0]["kind"].as_str())
                .any(|k| k == *kind);
            assert!(gvk_of_schema, "no schema for {kind}");
        }
    }
    // Aggregated discovery lists them too.
    let (code, _, agg) = api
        .exchange("GET", "/apis", &[("accept", AGGREGATED_V2)], None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let item = agg["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == "authorization.k8s.io")
        .expect("authorization.k8s.io in aggregated discovery");
    let resources = item["versions"][0]["resources"].as_array().unwrap();
    let sar = resources
        .iter()
        .find(|r| r["resource"] == "subjectaccessreviews")
        .expect("subjectaccessreviews");
    assert_eq!(sar["verbs"], json!(["create"]));
    assert_eq!(sar["scope"], "Cluster");
    assert_eq!(sar["responseKind"]["kind"], "SubjectAccessReview");
}

#[tokio::test]
async fn the_in_process_client_speaks_the_same_api() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api as KubeApi, PostParams};
    let api = api().await;
    let client = super::in_process_client(api.router.clone());
    let cms: KubeApi<ConfigMap> = KubeApi::namespaced(client, "default");
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("via-kube".into()),
            ..Default::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    };
    let created = tokio::time::timeout(
        Duration::from_secs(10),
        cms.create(&PostParams::default(), &cm),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(created.metadata.uid.is_some());
    let (code, got) = api
        .send(
            "GET",
            "/api/v1/namespaces/default/configmaps/via-kube",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(got["data"]["k"], "v");
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        cms.create(&PostParams::default(), &cm),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
}

/// What kube-runtime's metadata informers and client-go's metadata client ask for: lists,
/// gets and watches of `PartialObjectMetadata`, metadata and nothing else.
#[tokio::test]
async fn metadata_clients_get_partial_object_metadata() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api as KubeApi, ListParams, PartialObjectMeta};
    use kube::runtime::watcher;
    let api = api().await;
    let pod = |name: &str| {
        json!({"metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "a.wasm"}]}})
    };
    let (code, s) = api
        .send("POST", "/api/v1/namespaces/default/pods", Some(pod("p1")))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{s}");

    // The wire: no spec, no status.
    let req = Request::builder()
        .uri("/api/v1/namespaces/default/pods")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header(
            "accept",
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
        )
        .body(Body::empty())
        .unwrap();
    let (code, list) = api.request(req).await;
    assert_eq!(code, StatusCode::OK, "{list}");
    assert_eq!(list["kind"], "PartialObjectMetadataList");
    assert_eq!(list["items"][0]["kind"], "PartialObjectMetadata");
    assert_eq!(list["items"][0]["metadata"]["labels"]["app"], "web");
    assert!(list["items"][0].get("spec").is_none(), "{list}");

    // kube's metadata API reads it, and so does a metadata watcher.
    let client = super::in_process_client(api.router.clone());
    let meta: KubeApi<PartialObjectMeta<Pod>> = KubeApi::namespaced(client, "default");
    let listed = tokio::time::timeout(Duration::from_secs(10), meta.list(&ListParams::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.name.as_deref(), Some("p1"));
    let got = tokio::time::timeout(Duration::from_secs(10), meta.get("p1"))
        .await
        .unwrap()
        .unwrap();
    assert!(got.metadata.uid.is_some());
    let mut events = std::pin::pin!(watcher(meta, watcher::Config::default()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut next = async || {
        tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("the watch answers within 10 s")
            .expect("the watch goes on")
            .expect("no watch error")
    };
    while !matches!(next().await, watcher::Event::InitDone) {}
    let (code, s) = api
        .send("POST", "/api/v1/namespaces/default/pods", Some(pod("p2")))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{s}");
    match next().await {
        watcher::Event::Apply(p) => assert_eq!(p.metadata.name.as_deref(), Some("p2")),
        other => panic!("expected p2 added, got {other:?}"),
    }
}

// ---- Node tokens, authorization, pods/log ----------------------------------------------

impl Api {
    async fn create_namespace(&self, name: &str) {
        let (code, s) = self
            .send(
                "POST",
                "/api/v1/namespaces",
                Some(json!({"metadata": {"name": name}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{s}");
    }

    /// A node token made valid (until `expiration`) by its Secret, as `wharf token create`
    /// does.
    async fn node_token(&self, expiration: Option<jiff::Timestamp>) -> NodeToken {
        let token = NodeToken::generate();
        let (code, s) = self
            .send(
                "POST",
                "/api/v1/namespaces/kube-system/secrets",
                Some(token.to_secret(expiration, "test")),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{s}");
        token
    }
}

use super::auth::NodeToken;

#[tokio::test]
async fn node_tokens_authenticate_until_expired_or_revoked() {
    let api = api().await;
    api.create_namespace("kube-system").await;
    let token = api.node_token(None).await;
    // Authenticated (a join token may only ask for a node credential: 403, not 401).
    let (code, list) = api
        .send_with(
            &token.to_string(),
            "GET",
            "/api/v1/namespaces/default/pods",
            "",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{list}");

    // The same id with another secret is not the token.
    let forged = format!("wharf-node.{}.{}", token.id(), "0".repeat(32));
    let (code, s) = api
        .send_with(&forged, "GET", "/api/v1/namespaces/default/pods", "", None)
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(s["message"], "Unauthorized: the token is not valid");

    let past = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
    let expired = api.node_token(Some(past)).await;
    let (code, s) = api
        .send_with(
            &expired.to_string(),
            "GET",
            "/api/v1/namespaces/default/pods",
            "",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(s["reason"], "Unauthorized");
    let message = s["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("the node token {} expired at", expired.id())),
        "{message}"
    );

    // Deleting the Secret revokes the token for the next request.
    let (code, _) = api
        .send(
            "DELETE",
            &format!(
                "/api/v1/namespaces/kube-system/secrets/{}",
                token.secret_name()
            ),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api
        .send_with(
            &token.to_string(),
            "GET",
            "/api/v1/namespaces/default/pods",
            "",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

impl Api {
    /// A node credential for `node`, obtained with a fresh join token as `wharf node`
    /// does: the token, and the created Secret.
    async fn node_credential(&self, node: &str) -> (String, Value) {
        let join = self.node_token(None).await.to_string();
        let cred = NodeToken::generate_kind(TokenKind::Credential);
        let (code, s) = self
            .send_with(
                &join,
                "POST",
                "/api/v1/namespaces/kube-system/secrets",
                "application/json",
                Some(cred.to_credential_secret(node)),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{s}");
        (cred.to_string(), s)
    }
}

use super::auth::TokenKind;

#[tokio::test]
async fn a_join_token_only_obtains_a_node_credential() {
    let api = api().await;
    api.create_namespace("kube-system").await;
    let join = api.node_token(None).await.to_string();
    for (method, uri) in [
        ("GET", "/api/v1/namespaces/default/pods"),
        ("GET", "/api/v1/nodes"),
        (
            "GET",
            "/api/v1/namespaces/kube-system/secrets/wharf-node-proxy",
        ),
    ] {
        let (code, s) = api.send_with(&join, method, uri, "", None).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{uri}: {s}");
    }
    let opaque = json!({"metadata": {"name": "x"}, "type": "Opaque"});
    let (code, s) = api
        .send_with(
            &join,
            "POST",
            "/api/v1/namespaces/kube-system/secrets",
            "application/json",
            Some(opaque),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");

    let (token, secret) = api.node_credential("node-1").await;
    // The server decides the expiration (a year by default).
    let info = super::auth::NodeTokenInfo::from_secret(&secret).unwrap();
    let left = info
        .expiration
        .unwrap()
        .duration_since(jiff::Timestamp::now());
    assert!(
        left > jiff::SignedDuration::from_hours(24 * 360),
        "{left:?}"
    );
    let (code, s) = api
        .send_with(&token, "GET", "/api/v1/nodes", "", None)
        .await;
    assert_eq!(code, StatusCode::OK, "{s}");

    // Another join token cannot take node-1 over.
    let other = api.node_token(None).await.to_string();
    let (code, s) = api
        .send_with(
            &other,
            "POST",
            "/api/v1/namespaces/kube-system/secrets",
            "application/json",
            Some(NodeToken::generate_kind(TokenKind::Credential).to_credential_secret("node-1")),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("already holds a credential"),
        "{s}"
    );
}

#[tokio::test]
async fn nodes_touch_only_their_own_objects() {
    let api = api().await;
    api.create_namespace("kube-system").await;
    api.create_namespace("kube-node-lease").await;
    let (token, _) = api.node_credential("node-1").await;
    let user = "system:node:node-1";
    let as_node = |method: &'static str, uri: String, ct: &'static str, body: Option<Value>| {
        let (api, token) = (&api, token.clone());
        async move { api.send_with(&token, method, &uri, ct, body).await }
    };

    let before = api.revision().await;
    let (code, s) = as_node(
        "POST",
        "/apis/apps/v1/namespaces/default/deployments".into(),
        "application/json",
        Some(deployment("web", 1)),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");
    assert_eq!(
        s["message"],
        format!(
            "deployments.apps is forbidden: User \"{user}\" cannot create resource \
             \"deployments\" in API group \"apps\" in the namespace \"default\""
        )
    );
    assert_eq!(
        api.revision().await,
        before,
        "a denied request writes nothing"
    );

    // Nodes and pods, one bound here and one elsewhere, each with its own Secret.
    for node in ["node-1", "node-2"] {
        let (code, s) = api
            .send(
                "POST",
                "/api/v1/nodes",
                Some(json!({"metadata": {"name": node}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{s}");
        let secret = json!({"metadata": {"name": format!("{node}-secret")},
                            "stringData": {"k": "v"}});
        let (code, _) = api
            .send("POST", "/api/v1/namespaces/default/secrets", Some(secret))
            .await;
        assert_eq!(code, StatusCode::CREATED);
        let mut p = pod(&format!("on-{node}"), json!({}));
        p["spec"]["nodeName"] = json!(node);
        p["spec"]["containers"][0]["env"] = json!([{"name": "S", "valueFrom":
            {"secretKeyRef": {"name": format!("{node}-secret"), "key": "k"}}}]);
        let (code, s) = api
            .send("POST", "/api/v1/namespaces/default/pods", Some(p))
            .await;
        assert_eq!(code, StatusCode::CREATED, "{s}");
    }
    let (code, _) = api
        .send(
            "POST",
            "/api/v1/namespaces/default/pods",
            Some(pod("unbound", json!({}))),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);

    // Secrets: one by name, only when a pod of this node references it; never a list.
    let get = |uri: &str| as_node("GET", uri.to_string(), "", None);
    let (code, s) = get("/api/v1/namespaces/default/secrets/node-1-secret").await;
    assert_eq!(code, StatusCode::OK, "{s}");
    let (code, s) = get("/api/v1/namespaces/default/secrets/node-2-secret").await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");
    for uri in [
        "/api/v1/secrets",
        "/api/v1/namespaces/kube-system/secrets",
        "/api/v1/namespaces/kube-system/secrets?watch=true",
    ] {
        let (code, s) = get(uri).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{uri}: {s}");
    }
    let (code, s) = get("/api/v1/namespaces/kube-system/secrets/wharf-node-proxy").await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "readable, not made in this test: {s}"
    );
    let (code, _) = get("/api/v1/namespaces/default/pods").await;
    assert_eq!(code, StatusCode::OK);

    // Pods: the status of its own, never another node's, never a spec.
    let status = Some(json!({"status": {"phase": "Running", "podIP": "127.64.0.2"}}));
    let merge = "application/merge-patch+json";
    let pods = "/api/v1/namespaces/default/pods";
    let (code, s) = as_node(
        "PATCH",
        format!("{pods}/on-node-1/status"),
        merge,
        status.clone(),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{s}");
    let (code, s) = as_node("PATCH", format!("{pods}/on-node-2/status"), merge, status).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");
    let (code, s) = as_node(
        "PATCH",
        format!("{pods}/unbound"),
        merge,
        Some(json!({"spec": {"nodeName": "node-1"}})),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");
    let (code, s) = as_node(
        "POST",
        format!("{pods}/unbound/binding"),
        "application/json",
        Some(json!({"target": {"kind": "Node", "name": "node-1"}})),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");
    let (code, s) = as_node(
        "POST",
        pods.into(),
        "application/json",
        Some(pod("mine", json!({}))),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");
    let (code, s) = as_node("DELETE", format!("{pods}/on-node-2"), "", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");
    let (code, s) = as_node("DELETE", pods.into(), "", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "deletecollection: {s}");

    // Nodes: its own, not another's; podCIDR is immutable for everyone.
    let (code, s) = as_node(
        "PATCH",
        "/api/v1/nodes/node-2".into(),
        merge,
        Some(json!({"spec": {"unschedulable": true}})),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");
    let (code, s) = as_node(
        "POST",
        "/api/v1/nodes".into(),
        "application/json",
        Some(json!({"metadata": {"name": "node-3"}})),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");
    let (code, s) = as_node(
        "PATCH",
        "/api/v1/nodes/node-1".into(),
        merge,
        Some(json!({"metadata": {"annotations": {"wharf.dev/tunnel": "10.0.0.1:10251"}}})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{s}");
    let cidr = Some(json!({"spec": {"podCIDR": "127.99.0.0/16"}}));
    for t in [token.as_str(), TOKEN] {
        let (code, s) = api
            .send_with(t, "PATCH", "/api/v1/nodes/node-1", merge, cidr.clone())
            .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
        assert_eq!(s["details"]["causes"][0]["field"], "spec.podCIDR");
    }

    // Leases: its own in kube-node-lease.
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let lease = |name: &str| {
        Some(
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name}, "spec": {"holderIdentity": name}}),
        )
    };
    let (code, s) = as_node("POST", leases.into(), "application/json", lease("node-1")).await;
    assert_eq!(code, StatusCode::CREATED, "{s}");
    let (code, s) = as_node("POST", leases.into(), "application/json", lease("node-2")).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");
    let (code, _) = api.send("POST", leases, lease("node-2")).await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, s) = as_node("DELETE", format!("{leases}/node-2"), "", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");

    // Its own pod, deleted once stopped.
    let (code, s) = as_node("DELETE", format!("{pods}/on-node-1"), "", None).await;
    assert_eq!(code, StatusCode::OK, "{s}");
    let (code, s) = as_node("DELETE", "/api/v1/namespaces/default".into(), "", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");
}

/// One request a fake node's log server received, and the sending half of the log
/// stream it answers with: send lines to stream them, drop it to end the stream.
struct NodeLogRequest {
    path: String,
    query: std::collections::HashMap<String, String>,
    lines: tokio::sync::mpsc::UnboundedSender<bytes::Bytes>,
}

/// A node's log server on 127.0.0.1:0 that accepts only `token`.
async fn fake_node(
    api: &Api,
    token: String,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<NodeLogRequest>,
) {
    use axum::extract::State;
    use axum::response::IntoResponse;
    type Seen = tokio::sync::mpsc::UnboundedSender<NodeLogRequest>;
    async fn serve(
        State((token, seen)): State<(String, Seen)>,
        req: axum::extract::Request,
    ) -> axum::response::Response {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok());
        if auth != Some(format!("Bearer {token}").as_str()) {
            return (StatusCode::UNAUTHORIZED, "who are you?").into_response();
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
        let query = super::resources::Query::parse(req.uri().query()).0;
        let _ = seen.send(NodeLogRequest {
            path: req.uri().path().to_string(),
            query,
            lines: tx,
        });
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(Ok::<_, std::convert::Infallible>);
        axum::response::Response::new(Body::from_stream(stream))
    }
    use futures::StreamExt;
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new().fallback(serve).with_state((token, seen_tx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    api.serve_node(listener, app);
    (addr, seen_rx)
}

impl Api {
    async fn pod_on(&self, name: &str, node: Option<&str>, containers: &[&str]) {
        let mut p = pod(name, json!({}));
        p["spec"]["containers"] = containers
            .iter()
            .map(|c| json!({"name": c, "image": "hello.wasm"}))
            .collect();
        if let Some(node) = node {
            p["spec"]["nodeName"] = json!(node);
        }
        let (code, s) = self
            .send("POST", "/api/v1/namespaces/default/pods", Some(p))
            .await;
        assert_eq!(code, StatusCode::CREATED, "{s}");
    }

    /// Sends a GET and answers the response with its body unread.
    async fn open(&self, uri: &str) -> axum::response::Response {
        let req = Request::get(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.router.clone().oneshot(req))
            .await
            .expect("request timed out")
            .unwrap()
    }
}

/// Reads frames of `body` into `buf` until it ends with `want`.
async fn read_until(body: &mut Body, buf: &mut Vec<u8>, want: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !buf.ends_with(want.as_bytes()) {
            let frame = body.frame().await.expect("the stream ended").unwrap();
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no {want:?} in time; got {:?}",
            String::from_utf8_lossy(buf)
        )
    });
}

async fn recv<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("nothing received in time")
        .expect("channel closed")
}

#[tokio::test]
async fn pod_logs_stream_from_the_node_as_they_come() {
    let api = api().await;
    api.create_namespace("kube-system").await;
    api.pod_on("web", Some("n1"), &["app"]).await;

    let client = super::in_process_client(api.router.clone());
    let token = tokio::time::timeout(
        Duration::from_secs(10),
        super::proxy::ensure_node_proxy_secret(&client),
    )
    .await
    .unwrap()
    .unwrap();
    let again = tokio::time::timeout(
        Duration::from_secs(10),
        super::proxy::ensure_node_proxy_secret(&client),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(token, again, "the credential is created once");

    let (addr, mut requests) = fake_node(&api, token).await;
    api.ready_node("n1", Some(addr.port())).await;

    let resp = api
        .open("/api/v1/namespaces/default/pods/web/log?follow=true&tailLines=10&timestamps=true")
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    let seen = recv(&mut requests).await;
    assert_eq!(seen.path, "/containerLogs/default/web/app");
    assert_eq!(seen.query["follow"], "true");
    assert_eq!(seen.query["tailLines"], "10");
    assert_eq!(seen.query["timestamps"], "true");
    assert_eq!(seen.query["previous"], "false");

    // Each line reaches the client before the node has written the next one.
    let mut body = resp.into_body();
    let mut got = Vec::new();
    seen.lines.send("line 1\n".into()).unwrap();
    read_until(&mut body, &mut got, "line 1\n").await;
    seen.lines.send("line 2\n".into()).unwrap();
    read_until(&mut body, &mut got, "line 2\n").await;
    // The node ends the stream: so does the response.
    drop(seen.lines);
    let end = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the stream did not end");
    assert!(end.is_none(), "{end:?}");
    assert_eq!(got, b"line 1\nline 2\n");

    // limitBytes ends the response even while the node goes on.
    let resp = api
        .open("/api/v1/namespaces/default/pods/web/log?container=app&limitBytes=4")
        .await;
    let seen = recv(&mut requests).await;
    assert_eq!(seen.query["limitBytes"], "4");
    seen.lines.send("line 1\n".into()).unwrap();
    let bytes = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the stream did not end")
        .unwrap()
        .to_bytes();
    assert_eq!(&bytes[..], b"line");
}

#[tokio::test]
async fn pod_logs_explain_what_is_missing() {
    let api = api().await;
    api.create_namespace("kube-system").await;
    // A node whose log server is gone: a port that was just free.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    api.ready_node("gone", Some(port)).await;
    api.pod_on("orphan", Some("gone"), &["app"]).await;

    // No credential for nodes yet: the proxy cannot work.
    let (code, s) = api
        .send("GET", "/api/v1/namespaces/default/pods/orphan/log", None)
        .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("kube-system/wharf-node-proxy"),
        "{s}"
    );
    let client = super::in_process_client(api.router.clone());
    tokio::time::timeout(
        Duration::from_secs(10),
        super::proxy::ensure_node_proxy_secret(&client),
    )
    .await
    .unwrap()
    .unwrap();

    let (code, s) = api
        .send("GET", "/api/v1/namespaces/default/pods/nope/log", None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(s["message"], "pods \"nope\" not found");

    api.pod_on("two", Some("n1"), &["a", "b"]).await;
    let (code, s) = api
        .send("GET", "/api/v1/namespaces/default/pods/two/log", None)
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        s["message"],
        "a container name must be specified for pod two, choose one of: [a b]"
    );

    api.pod_on("lonely", None, &["app"]).await;
    let (code, s) = api
        .send("GET", "/api/v1/namespaces/default/pods/lonely/log", None)
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(s["message"], "pod lonely does not have a host assigned");

    let (code, s) = api
        .send("GET", "/api/v1/namespaces/default/pods/orphan/log", None)
        .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{s}");
    assert_eq!(s["reason"], "ServiceUnavailable");
    let message = s["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("node gone is unreachable at 127.0.0.1:{port}")),
        "{message}"
    );

    let (code, _) = api
        .send("POST", "/api/v1/namespaces/default/pods/orphan/log", None)
        .await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn discovery_lists_the_log_subresource() {
    let api = api().await;
    let (_, v) = api.send("GET", "/api/v1", None).await;
    let log = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pods/log")
        .cloned();
    assert_eq!(
        log,
        Some(
            json!({"name": "pods/log", "singularName": "", "namespaced": true,
                    "kind": "Pod", "verbs": ["get"]})
        )
    );
}

#[tokio::test]
async fn registering_nodes_get_distinct_pod_ranges() {
    let api = api().await;
    let mut cidrs = Vec::new();
    for name in ["node-a", "node-b"] {
        let (code, node) = api
            .send(
                "POST",
                "/api/v1/nodes",
                Some(json!({"metadata": {"name": name}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{node}");
        cidrs.push(node["spec"]["podCIDR"].as_str().unwrap().to_string());
    }
    assert_eq!(cidrs, ["127.64.0.0/16", "127.65.0.0/16"]);
    let (_, own) = api
        .send(
            "POST",
            "/api/v1/nodes",
            Some(json!({"metadata": {"name": "node-c"}, "spec": {"podCIDR": "127.99.0.0/16"}})),
        )
        .await;
    assert_eq!(own["spec"]["podCIDR"], "127.99.0.0/16");
}

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const STRATEGIC: &str = "application/strategic-merge-patch+json";

impl Api {
    /// A server-side apply with a raw (YAML or JSON) body.
    async fn apply(&self, uri: &str, body: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method("PATCH")
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/apply-patch+yaml")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.request(req).await
    }
}

fn container_images(deploy: &Value) -> Vec<(String, String)> {
    deploy["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["image"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn strategic_patch_changes_one_containers_image() {
    let api = api().await;
    let mut d = deployment("web", 2);
    d["spec"]["template"]["spec"]["containers"] = json!([
        {"name": "app", "image": "app.wasm", "env": [{"name": "A", "value": "1"}]},
        {"name": "side", "image": "side.wasm"}]);
    let (code, _) = api.send("POST", DEPLOYMENTS, Some(d)).await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, p) = api
        .send_as(
            "PATCH",
            &format!("{DEPLOYMENTS}/web"),
            STRATEGIC,
            Some(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "side", "image": "side-2.wasm"}]}}}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{p}");
    assert_eq!(
        container_images(&p),
        [
            ("app".to_string(), "app.wasm".to_string()),
            ("side".to_string(), "side-2.wasm".to_string())
        ]
    );
    assert_eq!(
        p["spec"]["template"]["spec"]["containers"][0]["env"],
        json!([{"name": "A", "value": "1"}])
    );
    assert_eq!(p["metadata"]["generation"], 2);
    assert_eq!(p["spec"]["replicas"], 2);
}

#[tokio::test]
async fn kubectl_style_strategic_patch_with_set_element_order() {
    let api = api().await;
    let mut d = deployment("web", 1);
    d["spec"]["template"]["spec"]["containers"] = json!([
        {"name": "app", "image": "app.wasm",
         "env": [{"name": "KEEP", "value": "1"}, {"name": "OLD", "value": "x"}]},
        {"name": "side", "image": "side.wasm"}]);
    api.send("POST", DEPLOYMENTS, Some(d)).await;
    let uri = format!("{DEPLOYMENTS}/web");
    // What `kubectl apply` (client-side) sends after the manifest changed app's image,
    // dropped env OLD and added NEW.
    let patch = json!({
        "metadata": {"annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": "{\"kind\":\"Deployment\"}\n"}},
        "spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
            "containers": [{
                "$setElementOrder/env": [{"name": "NEW"}, {"name": "KEEP"}],
                "env": [{"name": "NEW", "value": "2"}, {"$patch": "delete", "name": "OLD"}],
                "image": "app-2.wasm", "name": "app"}]}}}});
    let (code, p) = api.send_as("PATCH", &uri, STRATEGIC, Some(patch)).await;
    assert_eq!(code, StatusCode::OK, "{p}");
    assert_eq!(
        container_images(&p),
        [
            ("app".to_string(), "app-2.wasm".to_string()),
            ("side".to_string(), "side.wasm".to_string())
        ]
    );
    assert_eq!(
        p["spec"]["template"]["spec"]["containers"][0]["env"],
        json!([{"name": "NEW", "value": "2"}, {"name": "KEEP", "value": "1"}])
    );
    assert!(
        p["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    // A malformed patch is a 400 naming the place, and changes nothing.
    let before = api.revision().await;
    let (code, s) = api
        .send_as(
            "PATCH",
            &uri,
            STRATEGIC,
            Some(json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("spec.template.spec.containers[0]: the element has no merge key \"name\""),
        "{s}"
    );
    assert_eq!(api.revision().await, before);
}

const WEB_YAML: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
    tier: front
    canary: yes
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: app
        image: app.wasm
        env:
        - name: A
          value: '1'
";

fn revision_of(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn server_side_apply_creates_keeps_updates_and_prunes() {
    let api = api().await;
    let uri = format!("{DEPLOYMENTS}/web");
    let (code, s) = api.apply(&uri, WEB_YAML).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "no fieldManager: {s}");
    assert!(s["message"].as_str().unwrap().contains("fieldManager"));
    let (code, s) = api
        .send_as(
            "PATCH",
            &format!("{uri}?force=true"),
            "application/merge-patch+json",
            Some(json!({"spec": {"replicas": 1}})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{s}");
    let (code, s) = api
        .send_as(
            "PATCH",
            &uri,
            "application/merge-patch+json",
            Some(json!({"spec": {"replicas": 1}})),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "only apply creates: {s}");

    let managed = format!("{uri}?fieldManager=alice");
    let (code, created) = api.apply(&managed, WEB_YAML).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(created["metadata"]["labels"]["canary"], "yes");
    assert_eq!(created["spec"]["replicas"], 2);
    let entry = &created["metadata"]["managedFields"][0];
    assert_eq!(entry["manager"], "alice");
    assert_eq!(entry["operation"], "Apply");
    assert_eq!(
        entry["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"]
            ["f:env"]["k:{\"name\":\"A\"}"],
        json!({".": {}, "f:name": {}, "f:value": {}})
    );
    let (_, got) = api.send("GET", &uri, None).await;
    assert_eq!(got, created);

    // The same configuration again: nothing is written.
    let before = api.revision().await;
    let (code, again) = api.apply(&managed, WEB_YAML).await;
    assert_eq!(code, StatusCode::OK, "{again}");
    assert_eq!(revision_of(&again), revision_of(&created));
    assert_eq!(api.revision().await, before);

    // A changed field is applied.
    let changed = WEB_YAML.replace("replicas: 2", "replicas: 3");
    let (code, updated) = api.apply(&managed, &changed).await;
    assert_eq!(code, StatusCode::OK, "{updated}");
    assert_eq!(updated["spec"]["replicas"], 3);
    assert_ne!(revision_of(&updated), revision_of(&created));
    assert_eq!(updated["metadata"]["generation"], 2);

    // Fields dropped from the configuration are removed; a label another writer set
    // (by a merge patch, not an apply) stays.
    let (code, _) = api
        .send_as(
            "PATCH",
            &uri,
            "application/merge-patch+json",
            Some(json!({"metadata": {"labels": {"team": "blue"}}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let dropped = changed.replace("    tier: front\n", "").replace(
        "        env:\n        - name: A\n          value: '1'\n",
        "",
    );
    let (code, pruned) = api.apply(&managed, &dropped).await;
    assert_eq!(code, StatusCode::OK, "{pruned}");
    assert_eq!(
        pruned["metadata"]["labels"],
        json!({"app": "web", "canary": "yes", "team": "blue"})
    );
    assert!(
        pruned["spec"]["template"]["spec"]["containers"][0]
            .get("env")
            .is_none(),
        "{pruned}"
    );
    assert_eq!(pruned["spec"]["replicas"], 3);

    // JSON bodies (what kubectl and the client libraries send) work the same.
    let as_json = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 4}});
    let (code, j) = api
        .apply(&format!("{uri}?fieldManager=bob"), &as_json.to_string())
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{j}");
    // A body of the wrong kind is refused.
    let (code, _) = api
        .apply(
            &managed,
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n",
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn server_side_apply_conflicts_between_managers_and_force() {
    let api = api().await;
    let uri = format!("{DEPLOYMENTS}/web");
    let (code, _) = api
        .apply(&format!("{uri}?fieldManager=alice"), WEB_YAML)
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let bob =
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 5\n";
    let before = api.revision().await;
    let (code, s) = api.apply(&format!("{uri}?fieldManager=bob"), bob).await;
    assert_eq!(code, StatusCode::CONFLICT, "{s}");
    assert_eq!(s["reason"], "Conflict");
    let message = s["message"].as_str().unwrap();
    assert!(
        message.contains("conflict with \"alice\" using apps/v1: .spec.replicas"),
        "{message}"
    );
    assert_eq!(api.revision().await, before);

    // The same value is no conflict: both managers own it.
    let (code, shared) = api
        .apply(
            &format!("{uri}?fieldManager=bob"),
            &bob.replace("replicas: 5", "replicas: 2"),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{shared}");
    assert_eq!(shared["metadata"]["managedFields"][1]["manager"], "bob");

    let (code, forced) = api
        .apply(&format!("{uri}?fieldManager=bob&force=true"), bob)
        .await;
    assert_eq!(code, StatusCode::OK, "{forced}");
    assert_eq!(forced["spec"]["replicas"], 5);
    let alice = &forced["metadata"]["managedFields"][0];
    assert_eq!(alice["manager"], "alice");
    assert!(alice["fieldsV1"]["f:spec"].get("f:replicas").is_none());
    // Now alice is the one in conflict.
    let (code, s) = api
        .apply(&format!("{uri}?fieldManager=alice"), WEB_YAML)
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{s}");
    assert!(s["message"].as_str().unwrap().contains("\"bob\""));
}

#[tokio::test]
async fn server_side_apply_dry_run_stores_nothing() {
    let api = api().await;
    let uri = format!("{DEPLOYMENTS}/web");
    let before = api.revision().await;
    let (code, created) = api
        .apply(&format!("{uri}?fieldManager=alice&dryRun=All"), WEB_YAML)
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(created["metadata"]["managedFields"][0]["manager"], "alice");
    assert_eq!(api.revision().await, before);
    let (code, _) = api.send("GET", &uri, None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    let (code, _) = api
        .apply(&format!("{uri}?fieldManager=alice"), WEB_YAML)
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let before = api.revision().await;
    let (code, dry) = api
        .apply(
            &format!("{uri}?fieldManager=alice&dryRun=All"),
            &WEB_YAML.replace("replicas: 2", "replicas: 7"),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{dry}");
    assert_eq!(dry["spec"]["replicas"], 7);
    assert_eq!(api.revision().await, before);
    let (_, got) = api.send("GET", &uri, None).await;
    assert_eq!(got["spec"]["replicas"], 2);

    // Applying to the status subresource changes the status only.
    let (code, status) = api
        .apply(
            &format!("{uri}/status?fieldManager=alice"),
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 9\nstatus:\n  replicas: 1\n",
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{status}");
    assert_eq!(status["status"]["replicas"], 1);
    assert_eq!(status["spec"]["replicas"], 2);
    // Applying to the status of an object that does not exist does not create it.
    let (code, _) = api
        .apply(
            &format!("{DEPLOYMENTS}/nothing/status?fieldManager=alice"),
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: nothing\nstatus:\n  replicas: 1\n",
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

// ---- Discovery, OpenAPI and field validation ---------------------------------------------

impl Api {
    /// A request with the test token, extra headers and a raw body; answers the headers
    /// too.
    async fn exchange(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> (StatusCode, http::HeaderMap, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), self.router.clone().oneshot(req))
            .await
            .expect("request timed out")
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
        (parts.status, parts.headers, value)
    }
}

const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
const AGGREGATED_V2BETA1: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn aggregated_discovery_is_served_to_who_asks_for_it() {
    let api = api().await;
    // client-go's Accept header: v2, then v2beta1, then the legacy documents.
    let client_go = format!("{AGGREGATED_V2},{AGGREGATED_V2BETA1},application/json");
    let (code, headers, v) = api
        .exchange("GET", "/apis", &[("accept", &client_go)], None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(header(&headers, "content-type"), AGGREGATED_V2);
    assert_eq!(header(&headers, "vary"), "Accept");
    assert_eq!(v["kind"], "APIGroupDiscoveryList");
    assert_eq!(v["apiVersion"], "apidiscovery.k8s.io/v2");
    let apps = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metadata"]["name"] == "apps")
        .unwrap();
    let deployments = apps["versions"][0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "deployments")
        .unwrap();
    assert_eq!(deployments["scope"], "Namespaced");
    assert_eq!(deployments["categories"], json!(["all"]));
    assert_eq!(deployments["shortNames"], json!(["deploy"]));
    let scale = deployments["subresources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subresource"] == "scale")
        .unwrap();
    assert_eq!(scale["responseKind"]["group"], "autoscaling");
    assert_eq!(scale["verbs"], json!(["get", "patch", "update"]));

    // v2beta1 when that is all the client takes; the core group at /api.
    let (_, headers, v) = api
        .exchange(
            "GET",
            "/api",
            &[("accept", &format!("{AGGREGATED_V2BETA1}, application/json"))],
            None,
        )
        .await;
    assert_eq!(header(&headers, "content-type"), AGGREGATED_V2BETA1);
    assert_eq!(v["apiVersion"], "apidiscovery.k8s.io/v2beta1");
    let core = &v["items"][0]["versions"][0];
    assert_eq!(core["version"], "v1");
    assert!(
        core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resource"] == "pods" && r["singularResource"] == "pod")
    );

    // Everyone else gets the legacy documents.
    for accept in [None, Some("application/json"), Some("*/*")] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let (_, h, v) = api.exchange("GET", "/api", &headers, None).await;
        assert_eq!(v["kind"], "APIVersions", "{accept:?}");
        assert!(header(&h, "content-type").starts_with("application/json"));
        assert!(!header(&h, "content-type").contains("apidiscovery"));
        let (_, _, v) = api.exchange("GET", "/apis", &headers, None).await;
        assert_eq!(v["kind"], "APIGroupList", "{accept:?}");
    }
}

#[tokio::test]
async fn legacy_discovery_lists_verbs_and_subresources() {
    let api = api().await;
    let (_, v) = api.send("GET", "/apis/apps/v1", None).await;
    let by_name = |name: &str| -> Value {
        v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        by_name("deployments/scale"),
        json!({"name": "deployments/scale", "singularName": "", "namespaced": true,
               "group": "autoscaling", "version": "v1", "kind": "Scale",
               "verbs": ["get", "patch", "update"]})
    );
    assert_eq!(by_name("replicasets/scale")["kind"], "Scale");
    assert!(by_name("daemonsets/scale").is_null());
    let deploy = by_name("deployments");
    assert_eq!(deploy["singularName"], "deployment");
    assert_eq!(
        deploy["verbs"],
        json!([
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch"
        ])
    );
    assert!(
        deploy["storageVersionHash"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );

    let (_, core) = api.send("GET", "/api/v1", None).await;
    let core_by_name = |name: &str| -> Value {
        core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(core_by_name("pods/eviction")["group"], "policy");
    assert_eq!(core_by_name("pods/binding")["verbs"], json!(["create"]));
    assert_eq!(
        core_by_name("namespaces/finalize")["verbs"],
        json!(["update"])
    );
    assert_eq!(core_by_name("events")["verbs"].as_array().unwrap().len(), 8);
    assert!(core_by_name("configmaps")["categories"].is_null());

    // Generated clients use the paths of the Kubernetes OpenAPI spec, with a slash.
    for (path, kind) in [
        ("/api/", "APIVersions"),
        ("/apis/", "APIGroupList"),
        ("/api/v1/", "APIResourceList"),
        ("/apis/apps/", "APIGroup"),
        ("/apis/apps/v1/", "APIResourceList"),
    ] {
        let (code, v) = api.send("GET", path, None).await;
        assert_eq!(
            (code, v["kind"].as_str()),
            (StatusCode::OK, Some(kind)),
            "{path}"
        );
    }
}

#[tokio::test]
async fn version_is_a_kubernetes_release_kubectl_can_compare() {
    let api = api().await;
    let (_, v) = api
        .request(Request::get("/version").body(Body::empty()).unwrap())
        .await;
    let git = v["gitVersion"].as_str().unwrap();
    let (code, slash) = api
        .request(Request::get("/version/").body(Body::empty()).unwrap())
        .await;
    assert_eq!((code, &slash), (StatusCode::OK, &v));
    assert!(git.starts_with("v1.33.0+wharf."), "{git}");
    assert_eq!(
        (v["major"].as_str(), v["minor"].as_str()),
        (Some("1"), Some("33"))
    );
}

#[tokio::test]
async fn openapi_v3_tells_kubectl_that_patch_validates_fields() {
    let api = api().await;
    let (code, _, index) = api.exchange("GET", "/openapi/v3", &[], None).await;
    assert_eq!(code, StatusCode::OK);
    let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="), "{url}");
    assert!(index["paths"]["api/v1"]["serverRelativeURL"].is_string());

    let (code, headers, doc) = api
        .exchange("GET", &url, &[("accept", "application/json")], None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert!(header(&headers, "cache-control").contains("immutable"));
    // kubectl's check: the PATCH operation of the kind lists the fieldValidation
    // parameter.
    let patch = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|item| item.get("patch"))
        .find(|op| {
            op["x-kubernetes-group-version-kind"]
                == json!({"group": "apps", "version": "v1", "kind": "Deployment"})
        })
        .expect("a PATCH operation for Deployment");
    assert_eq!(patch["x-kubernetes-action"], "patch");
    assert!(
        patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
    );
    assert!(
        doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]["properties"]["spec"]
            .is_object()
    );

    // Revalidation by ETag, and unknown documents.
    let etag = header(&headers, "etag").to_string();
    let (code, _, _) = api
        .exchange("GET", &url, &[("if-none-match", &etag)], None)
        .await;
    assert_eq!(code, StatusCode::NOT_MODIFIED);
    let (code, _, _) = api
        .exchange("GET", "/openapi/v3/apis/widgets/v1", &[], None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = api.send_with("wrong", "GET", "/openapi/v3", "", None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

fn deployment_with_typos() -> Value {
    let mut d = deployment("typo", 1);
    d["spec"]["foo"] = json!("bar");
    d["spec"]["template"]["spec"]["containers"][0]["imagee"] = json!("x.wasm");
    d
}

#[tokio::test]
async fn strict_field_validation_refuses_unknown_fields_and_stores_nothing() {
    let api = api().await;
    let uri = "/apis/apps/v1/namespaces/default/deployments";
    let (code, _, status) = api
        .exchange(
            "POST",
            &format!("{uri}?fieldValidation=Strict"),
            &[("content-type", "application/json")],
            Some(deployment_with_typos().to_string()),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(status["reason"], "Invalid");
    let causes: Vec<&str> = status["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert!(causes.contains(&"spec.foo"), "{causes:?}");
    assert!(
        causes.contains(&"spec.template.spec.containers[0].imagee"),
        "{causes:?}"
    );
    let message = status["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error:"
        ),
        "{message}"
    );
    assert!(message.contains("unknown field \"spec.foo\""), "{message}");
    assert!(
        message.contains("unknown field \"spec.template.spec.containers[0].imagee\""),
        "{message}"
    );
    let (code, _) = api.send("GET", &format!("{uri}/typo"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // Duplicate keys are problems too; they can only be seen in the raw body.
    let raw = r#"{"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "twice"}, "data": {"a": "1", "a": "2"}}"#;
    let (code, _, status) = api
        .exchange(
            "POST",
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            &[],
            Some(raw.into()),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("duplicate field \"data.a\"")
    );

    // Updates and patches are checked the same way, and leave the object as it was.
    let (code, created) = api.send("POST", uri, Some(deployment("typo", 1))).await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, _, status) = api
        .exchange(
            "PATCH",
            &format!("{uri}/typo?fieldValidation=Strict"),
            &[("content-type", "application/merge-patch+json")],
            Some(json!({"spec": {"replicas": 3, "replicaz": 4}}).to_string()),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"spec.replicaz\"")
    );
    let mut replaced = created.clone();
    replaced["metadata"]["colour"] = json!("blue");
    let (code, _, _) = api
        .exchange(
            "PUT",
            &format!("{uri}/typo?fieldValidation=Strict"),
            &[],
            Some(replaced.to_string()),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, now) = api.send("GET", &format!("{uri}/typo"), None).await;
    assert_eq!(now["spec"]["replicas"], 1);
    assert_eq!(
        now["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );

    let (code, _, status) = api
        .exchange(
            "POST",
            &format!("{uri}?fieldValidation=strict"),
            &[],
            Some(deployment("other", 1).to_string()),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("fieldValidation")
    );
}

#[tokio::test]
async fn warn_stores_without_unknown_fields_and_says_so() {
    let api = api().await;
    let uri = "/apis/apps/v1/namespaces/default/deployments";
    // No fieldValidation: Warn, as in Kubernetes.
    let (code, headers, created) = api
        .exchange("POST", uri, &[], Some(deployment_with_typos().to_string()))
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let mut warnings: Vec<&str> = headers
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    warnings.sort();
    assert_eq!(
        warnings,
        [
            r#"299 - "unknown field \"spec.foo\"""#,
            r#"299 - "unknown field \"spec.template.spec.containers[0].imagee\"""#,
        ]
    );
    assert!(created["spec"].get("foo").is_none());
    let (_, stored) = api.send("GET", &format!("{uri}/typo"), None).await;
    assert!(stored["spec"].get("foo").is_none());
    assert!(
        stored["spec"]["template"]["spec"]["containers"][0]
            .get("imagee")
            .is_none()
    );
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"][0]["image"],
        "hello.wasm"
    );

    // A patch that adds an unknown field next to a known one: the known one is applied.
    let (code, headers, patched) = api
        .exchange(
            "PATCH",
            &format!("{uri}/typo?fieldValidation=Warn"),
            &[("content-type", "application/merge-patch+json")],
            Some(json!({"spec": {"replicas": 3, "replicaz": 4}}).to_string()),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        header(&headers, "warning"),
        r#"299 - "unknown field \"spec.replicaz\"""#
    );
    assert_eq!(patched["spec"]["replicas"], 3);
    let (_, stored) = api.send("GET", &format!("{uri}/typo"), None).await;
    assert!(stored["spec"].get("replicaz").is_none());
    assert_eq!(stored["spec"]["replicas"], 3);

    // The raw store holds no trace of them either.
    let raw = api
        .store
        .get(&crate::store::object_key(
            "apps",
            "deployments",
            "default",
            "typo",
        ))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8(raw.value.to_vec()).unwrap();
    assert!(!raw.contains("replicaz") && !raw.contains("imagee") && !raw.contains("foo"));
}

#[tokio::test]
async fn ignore_drops_unknown_fields_silently() {
    let api = api().await;
    let uri = "/apis/apps/v1/namespaces/default/deployments";
    let (code, headers, _) = api
        .exchange(
            "POST",
            &format!("{uri}?fieldValidation=Ignore"),
            &[],
            Some(deployment_with_typos().to_string()),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    assert!(headers.get("warning").is_none());
    let (_, stored) = api.send("GET", &format!("{uri}/typo"), None).await;
    assert!(stored["spec"].get("foo").is_none());

    // A clean object under Warn gets no warning.
    let (code, headers, _) = api
        .exchange("POST", uri, &[], Some(deployment("clean", 1).to_string()))
        .await;
    assert_eq!(code, StatusCode::CREATED);
    assert!(headers.get("warning").is_none());
}

// ---- The scale subresource and Table output ----------------------------------------------

#[tokio::test]
async fn scale_reads_and_writes_replicas_with_every_patch_type() {
    let api = api().await;
    let uri = "/apis/apps/v1/namespaces/default/deployments";
    let (code, created) = api.send("POST", uri, Some(deployment("web", 2))).await;
    assert_eq!(code, StatusCode::CREATED);
    let scale = format!("{uri}/web/scale");

    let (code, s) = api.send("GET", &scale, None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(s["kind"], "Scale");
    assert_eq!(s["apiVersion"], "autoscaling/v1");
    assert_eq!(s["spec"]["replicas"], 2);
    assert_eq!(s["status"]["selector"], "app=web");

    // PUT without a Content-Type, as some clients send it.
    let (code, _, s) = api
        .exchange(
            "PUT",
            &scale,
            &[],
            Some(json!({"spec": {"replicas": 3}}).to_string()),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{s}");
    assert_eq!(s["spec"]["replicas"], 3);

    for (ct, body, want) in [
        (
            "application/merge-patch+json",
            json!({"spec": {"replicas": 4}}),
            4,
        ),
        (
            "application/strategic-merge-patch+json",
            json!({"spec": {"replicas": 5}}),
            5,
        ),
        (
            "application/json-patch+json",
            json!([{"op": "replace", "path": "/spec/replicas", "value": 6}]),
            6,
        ),
    ] {
        let (code, s) = api.send_as("PATCH", &scale, ct, Some(body)).await;
        assert_eq!(code, StatusCode::OK, "{ct}: {s}");
        assert_eq!(s["spec"]["replicas"], want, "{ct}");
    }
    let (_, d) = api.send("GET", &format!("{uri}/web"), None).await;
    assert_eq!(d["spec"]["replicas"], 6);
    assert_eq!(d["metadata"]["uid"], created["metadata"]["uid"]);

    // A stale resourceVersion is a precondition failure; a negative count is invalid.
    let (code, _) = api
        .send(
            "PUT",
            &scale,
            Some(json!({"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 1}})),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
    let (code, s) = api
        .send("PUT", &scale, Some(json!({"spec": {"replicas": -1}})))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(s["details"]["causes"][0]["field"], "spec.replicas");
    // Pods have no scale subresource.
    let (code, _) = api
        .send("GET", "/api/v1/namespaces/default/pods/x/scale", None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tables_answer_get_list_and_watch_when_asked() {
    let api = api().await;
    let uri = "/apis/apps/v1/namespaces/default/deployments";
    let (code, _) = api.send("POST", uri, Some(deployment("web", 2))).await;
    assert_eq!(code, StatusCode::CREATED);
    let accept = (
        "accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    );

    let (code, _, t) = api.exchange("GET", uri, &[accept], None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    let names: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Name",
            "Ready",
            "Up-to-date",
            "Available",
            "Age",
            "Containers",
            "Images",
            "Selector"
        ]
    );
    assert_eq!(t["rows"][0]["cells"][0], "web");
    assert_eq!(t["rows"][0]["cells"][1], "0/2");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");

    let (_, _, one) = api
        .exchange("GET", &format!("{uri}/web"), &[accept], None)
        .await;
    assert_eq!(one["kind"], "Table");
    assert_eq!(one["rows"].as_array().unwrap().len(), 1);

    // Without the Accept, the same URL answers the list itself.
    let (_, list) = api.send("GET", uri, None).await;
    assert_eq!(list["kind"], "DeploymentList");

    // A watch's events carry one-row Tables.
    let (code, _, text) = api
        .exchange(
            "GET",
            &format!("{uri}?watch=true&timeoutSeconds=1"),
            &[accept],
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    // One event parses as one JSON value; more arrive as lines of text.
    let first: Value = match text.as_str() {
        Some(lines) => serde_json::from_str(lines.lines().next().unwrap()).unwrap(),
        None => text,
    };
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["kind"], "Table");
    assert_eq!(first["object"]["rows"][0]["cells"][0], "web");
}

#[tokio::test]
async fn send_initial_events_ends_its_replay_with_a_marked_bookmark() {
    let api = api().await;
    let uri = "/api/v1/namespaces/default/configmaps";
    for name in ["a", "b"] {
        let (code, _) = api
            .send(
                "POST",
                uri,
                Some(json!({"metadata": {"name": name}, "data": {"k": name}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED);
    }
    let (_, list) = api.send("GET", uri, None).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _, text) = api
        .exchange(
            "GET",
            &format!(
                "{uri}?watch=true&sendInitialEvents=true&allowWatchBookmarks=true\
                 &resourceVersionMatch=NotOlderThan&resourceVersion={rv}&timeoutSeconds=1"
            ),
            &[],
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let events: Vec<Value> = text
        .as_str()
        .expect("several events")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "ADDED", "BOOKMARK"], "{events:?}");
    let names: Vec<&str> = events[..2]
        .iter()
        .map(|e| e["object"]["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let bookmark = &events[2]["object"];
    assert_eq!(
        bookmark["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(bookmark["metadata"]["resourceVersion"], rv.as_str());
}

/// Issue 11: kubectl's generator commands send protobuf; it is read as the JSON it
/// encodes, and answered in protobuf only to a client that accepts no JSON.
#[tokio::test]
async fn protobuf_bodies_are_read_and_protobuf_answers_given_on_request() {
    use k8s_pb::api::core::v1 as pb;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    use prost::Message as _;
    let api = api().await;
    let cm = pb::ConfigMap {
        metadata: Some(pb_meta::ObjectMeta {
            name: Some("from-proto".into()),
            namespace: Some(String::new()),
            ..Default::default()
        }),
        data: [("k".to_string(), "v".to_string())].into(),
        ..Default::default()
    };
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
        }),
        raw: Some(cm.encode_to_vec()),
        ..Default::default()
    };
    let body = [b"k8s\0".to_vec(), unknown.encode_to_vec()].concat();
    let post = |uri: &str, accept: &str| {
        Request::builder()
            .method("POST")
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/vnd.kubernetes.protobuf")
            .header("accept", accept)
            .body(Body::from(body.clone()))
            .expect("request")
    };
    // Dry run first: answered, nothing stored.
    let (code, created) = api
        .request(post(
            "/api/v1/namespaces/default/configmaps?dryRun=All",
            "application/vnd.kubernetes.protobuf, */*",
        ))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["data"]["k"], "v",
        "JSON when JSON is acceptable too"
    );
    let (code, _) = api
        .send(
            "GET",
            "/api/v1/namespaces/default/configmaps/from-proto",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // For real, asking for protobuf only: the answer is protobuf.
    let resp = api
        .router
        .clone()
        .oneshot(post(
            "/api/v1/namespaces/default/configmaps",
            "application/vnd.kubernetes.protobuf",
        ))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.kubernetes.protobuf"
    );
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let answer = crate::api::protobuf::decode(&bytes).expect("a protobuf answer");
    assert_eq!(answer["metadata"]["namespace"], "default");
    assert!(answer["metadata"]["uid"].is_string(), "{answer}");
    let (code, stored) = api
        .send(
            "GET",
            "/api/v1/namespaces/default/configmaps/from-proto",
            None,
        )
        .await;
    assert_eq!(
        (code, &stored["data"]),
        (StatusCode::OK, &json!({"k": "v"}))
    );

    // A broken body is a 400 that says why; protobuf is no patch type.
    let mut broken = post("/api/v1/namespaces/default/configmaps", "*/*");
    *broken.body_mut() = Body::from(&b"k8s\0\x0a\xff"[..]);
    let (code, status) = api.request(broken).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or("")
            .contains("protobuf"),
        "{status}"
    );
    let mut patch = post("/api/v1/namespaces/default/configmaps/from-proto", "*/*");
    *patch.method_mut() = http::Method::PATCH;
    let (code, _) = api.request(patch).await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

/// Issue 18 (hardening): validation, pagination and authentication regressions.
mod hardening;

/// Issue 10: the API server over the store seam.
mod store_seam;

/// Issue 17: Ingresses.
mod ingress;
/// Issue 16: StorageClasses, PersistentVolumes, claims and StatefulSets.
mod storage;

/// Issue 11 section 5: CustomResourceDefinitions.
mod crd;

/// Issue 15: resource metrics and HorizontalPodAutoscalers.
mod metrics;

/// Issue 11: `kubectl exec` gets a Status that says a wasm pod has no shell, over both
/// upgrades kubectl tries, and discovery lists `pods/exec`.
#[tokio::test]
async fn exec_is_answered_with_what_to_use_instead() {
    let api = api().await;
    let (code, _) = api
        .send(
            "POST",
            "/api/v1/namespaces/default/pods",
            Some(pod("w", json!({}))),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let exec = "/api/v1/namespaces/default/pods/w/exec?command=sh&stdin=true&stdout=true&tty=true";
    let websocket = Request::builder()
        .method("GET")
        .uri(exec)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", "v5.channel.k8s.io")
        .body(Body::empty())
        .expect("request");
    let spdy = Request::builder()
        .method("POST")
        .uri(exec)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .header("x-stream-protocol-version", "v4.channel.k8s.io")
        .body(Body::empty())
        .expect("request");
    for req in [websocket, spdy] {
        let (code, status) = api.request(req).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
        assert_eq!(
            (&status["kind"], &status["reason"]),
            (&json!("Status"), &json!("BadRequest"))
        );
        let message = status["message"].as_str().unwrap_or_default();
        for needle in [
            "no shell",
            "kubectl logs w",
            "kubectl attach",
            "kubectl port-forward",
        ] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
    }
    let (code, _) = api
        .send(
            "POST",
            "/api/v1/namespaces/default/pods/nope/exec?command=sh",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (_, discovery) = api.send("GET", "/api/v1", None).await;
    let exec = discovery["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == "pods/exec")
        .cloned()
        .unwrap_or_default();
    assert_eq!(exec["verbs"], json!(["create", "get"]), "{discovery}");
}

/// Issue 11: `pods/portforward` is served only as an upgrade, to a pod that exists and has
/// an address.
#[tokio::test]
async fn portforward_needs_an_upgrade_and_a_running_pod() {
    let api = api().await;
    let (code, _) = api
        .send(
            "POST",
            "/api/v1/namespaces/default/pods",
            Some(pod("w", json!({}))),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, status) = api
        .send("GET", "/api/v1/namespaces/default/pods/w/portforward", None)
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or("")
            .contains("no address"),
        "{status}"
    );
    let (code, _) = api
        .send(
            "GET",
            "/api/v1/namespaces/default/pods/nope/portforward",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = api
        .send_as(
            "PATCH",
            "/api/v1/namespaces/default/pods/w/status",
            "application/merge-patch+json",
            Some(json!({"status": {"podIP": "127.0.0.1"}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, status) = api
        .send("GET", "/api/v1/namespaces/default/pods/w/portforward", None)
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or("")
            .contains("WebSocket"),
        "{status}"
    );
}

/// Issue 13: RBAC through the API.
mod rbac;

/// Every write records who made it in `metadata.managedFields`: the create's manager owns
/// what it set, a later patch's manager what it changed; an apply keeps its own entry.
#[tokio::test]
async fn writes_record_their_managers() {
    let api = super::testing::TestApi::new().await;
    let (code, created) = api
        .send(
            "POST",
            "/apis/apps/v1/namespaces/default/deployments?fieldManager=alice",
            Some(json!({"metadata": {"name": "web"}, "spec": {"replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "web.wasm"}]}}}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let entry = &created["metadata"]["managedFields"][0];
    assert_eq!(entry["manager"], "alice");
    assert_eq!(entry["operation"], "Update");
    assert_eq!(entry["apiVersion"], "apps/v1");
    assert_eq!(entry["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
    let (code, patched) = api
        .send_as(
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web?fieldManager=bob",
            "application/merge-patch+json",
            Some(json!({"spec": {"replicas": 3}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{patched}");
    let managers: Vec<(&str, &Value)> = patched["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["manager"].as_str().unwrap(), &e["fieldsV1"]))
        .collect();
    assert_eq!(managers.len(), 2, "{patched}");
    assert!(
        managers[0].1["f:spec"].get("f:replicas").is_none(),
        "{patched}"
    );
    assert_eq!(managers[1], ("bob", &json!({"f:spec": {"f:replicas": {}}})));
}

/// `POST nodes/NAME/certificate`: a node gets its own certificate for its published
/// addresses, signed by the cluster CA; another node, a user and names the node does not
/// publish are refused.
#[tokio::test]
async fn a_node_gets_its_certificate_signed_for_its_own_addresses_only() {
    let api = api().await;
    api.ready_node("n1", Some(10250)).await;
    api.add_token("node-n1", super::auth::Identity::node("n1"));
    api.add_token("node-n2", super::auth::Identity::node("n2"));
    api.add_token(
        "alice",
        super::auth::Identity {
            user: "alice".into(),
            groups: vec!["system:authenticated".into()],
        },
    );
    let ask = |token: &'static str, csr: String| {
        let req = Request::post("/api/v1/nodes/n1/certificate")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/pkcs10")
            .body(Body::from(csr))
            .unwrap();
        api.request(req)
    };
    let ip = "127.0.0.1".parse().unwrap();
    let (key, csr) = crate::nodetls::node_csr("n1", &[ip], &["localhost".into()]).unwrap();
    let (code, body) = ask("node-n1", csr.clone()).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let cert = body.as_str().expect("PEM text").to_string();
    let dir = api.state.config.pki_dir.clone().unwrap();
    let ca = std::fs::read_to_string(dir.join(crate::pki::CA_CERT)).unwrap();
    crate::nodetls::check_node_cert(
        &ca,
        &cert,
        &[ip],
        &["localhost".into()],
        std::time::SystemTime::now(),
    )
    .unwrap();
    crate::nodetls::ReloadableCert::from_pem(&cert, &key.serialize_pem()).unwrap();

    // Another node, and a user, may not have n1's certificate.
    let (code, body) = ask("node-n2", csr.clone()).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let (code, body) = ask("alice", csr).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    // An address n1 does not publish.
    let other: std::net::IpAddr = "10.9.9.9".parse().unwrap();
    let (_, csr) = crate::nodetls::node_csr("n1", &[other], &[]).unwrap();
    let (code, body) = ask("node-n1", csr).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("10.9.9.9"), "{body}");
    // Not a signing request.
    let (code, _) = ask("node-n1", "hello".into()).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

/// A write through `scale` is recorded too: the client (by its User-Agent, as kubectl
/// scale sends it) owns `spec.replicas` through the `scale` subresource, and the
/// creator no longer does.
#[tokio::test]
async fn scale_writes_record_their_manager() {
    let api = super::testing::TestApi::new().await;
    let (code, created) = api
        .send(
            "POST",
            "/apis/apps/v1/namespaces/default/deployments?fieldManager=alice",
            Some(json!({"metadata": {"name": "web"}, "spec": {"replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "web.wasm"}]}}}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let req = Request::builder()
        .method("PATCH")
        .uri("/apis/apps/v1/namespaces/default/deployments/web/scale")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/merge-patch+json")
        .header("user-agent", "kubectl/v1.32.0 (linux/amd64) kubernetes/abc")
        .body(Body::from(json!({"spec": {"replicas": 4}}).to_string()))
        .unwrap();
    let (code, scale) = api.request(req).await;
    assert_eq!(code, StatusCode::OK, "{scale}");
    let (_, web) = api
        .send(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/web",
            None,
        )
        .await;
    assert_eq!(web["spec"]["replicas"], 4);
    let entries = web["metadata"]["managedFields"].as_array().unwrap();
    let scaled = entries
        .iter()
        .find(|e| e["subresource"] == "scale")
        .unwrap_or_else(|| panic!("no scale entry: {web}"));
    assert_eq!(scaled["manager"], "kubectl");
    assert_eq!(scaled["operation"], "Update");
    assert_eq!(scaled["apiVersion"], "apps/v1");
    assert_eq!(scaled["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
    let alice = entries.iter().find(|e| e["manager"] == "alice").unwrap();
    assert!(
        alice["fieldsV1"]["f:spec"].get("f:replicas").is_none(),
        "{web}"
    );
}

/// Whether the object named `name` among `items` has managedFields.
fn has_managed_fields<K: kube::Resource>(items: &[K], name: &str) -> bool {
    let item = items
        .iter()
        .find(|i| i.meta().name.as_deref() == Some(name));
    item.expect(name).meta().managed_fields.is_some()
}

#[tokio::test]
async fn component_lists_and_watches_leave_out_managed_fields() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api as KubeApi, ListParams, PostParams, WatchEvent, WatchParams};
    let api = api().await;
    let user: KubeApi<ConfigMap> = KubeApi::namespaced(api.client(), "default");
    let component: KubeApi<ConfigMap> =
        KubeApi::namespaced(super::component_client(api.router.clone()), "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "lean", "labels": {"app": "x"}}, "data": {"k": "v"}}))
    .unwrap();
    let created = user.create(&PostParams::default(), &cm).await.unwrap();
    assert!(created.metadata.managed_fields.is_some());

    // A list and a watch of a component: no managedFields, the rest of the object as is.
    let listed = component.list(&ListParams::default()).await.unwrap();
    let item = listed
        .items
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("lean"));
    let item = item.expect("listed");
    assert!(item.metadata.managed_fields.is_none(), "{item:?}");
    assert_eq!(item.metadata.labels, created.metadata.labels);
    assert_eq!(item.data, created.data);
    // From "0" the events are the list's; from "1" the store's log.
    let next = |api: KubeApi<ConfigMap>, start: &'static str| async move {
        let stream = api.watch(&WatchParams::default(), start).await.unwrap();
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("an event in time")
                .expect("a stream")
                .unwrap();
            if let WatchEvent::Added(c) = event
                && c.metadata.name.as_deref() == Some("lean")
            {
                return c;
            }
        }
    };
    for start in ["0", "1"] {
        let seen = next(component.clone(), start).await;
        assert!(seen.metadata.managed_fields.is_none(), "{start}: {seen:?}");
        assert_eq!(seen.data, created.data);
        assert_eq!(
            seen.metadata.resource_version,
            created.metadata.resource_version
        );
        assert!(
            next(user.clone(), start)
                .await
                .metadata
                .managed_fields
                .is_some()
        );
    }
    // Metadata lists and watches (the garbage collector's) too.
    let meta = component
        .list_metadata(&ListParams::default())
        .await
        .unwrap();
    assert!(
        meta.items
            .iter()
            .all(|m| m.metadata.managed_fields.is_none())
    );
    assert!(
        meta.items
            .iter()
            .any(|m| m.metadata.labels == created.metadata.labels)
    );
    let stream = component
        .watch_metadata(&WatchParams::default(), "1")
        .await
        .unwrap();
    let mut stream = std::pin::pin!(stream);
    let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event in time")
        .expect("a stream")
        .unwrap();
    let WatchEvent::Added(m) = event else {
        panic!("{event:?}")
    };
    assert!(m.metadata.managed_fields.is_none(), "{m:?}");
    let meta = user.list_metadata(&ListParams::default()).await.unwrap();
    assert!(has_managed_fields(&meta.items, "lean"));
    // Any other client gets them in lists (and watches, above); a component's read too.
    let listed = user.list(&ListParams::default()).await.unwrap();
    assert!(has_managed_fields(&listed.items, "lean"));
    assert!(
        component
            .get("lean")
            .await
            .unwrap()
            .metadata
            .managed_fields
            .is_some()
    );

    // A component's update of what it listed keeps the stored managedFields.
    let mut changed = item.clone();
    changed.data = Some([("k".to_string(), "w".to_string())].into());
    component
        .replace("lean", &PostParams::default(), &changed)
        .await
        .unwrap();
    let after = user.get("lean").await.unwrap();
    assert_eq!(after.data, changed.data);
    let managers: Vec<_> = after
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|e| e.manager.clone())
        .collect();
    assert!(!managers.is_empty(), "{after:?}");
}
