//! CustomResourceDefinitions through the handlers: a definition is a kind, and the kinds
//! it adds are served by the same registry as the built-ins.

use super::Api;
use http::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const WIDGETS: &str = "/apis/example.com/v1/namespaces/default/widgets";

/// A namespaced definition with two versions (v1 stored), a nested schema with
/// defaults, `status` and `scale`, printer columns, a short name and a category.
pub(crate) fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"],
                      "categories": ["gadgets"]},
            "versions": [
                {"name": "v1", "served": true, "storage": true,
                 "schema": {"openAPIV3Schema": widget_schema()},
                 "subresources": {"status": {}, "scale": {
                     "specReplicasPath": ".spec.replicas",
                     "statusReplicasPath": ".status.replicas",
                     "labelSelectorPath": ".status.selector"}},
                 "additionalPrinterColumns": [
                     {"name": "Size", "type": "string", "jsonPath": ".spec.size"},
                     {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                     {"name": "Port", "type": "string", "jsonPath": ".spec.network.port", "priority": 1},
                 ]},
                {"name": "v2", "served": true, "storage": false,
                 "schema": {"openAPIV3Schema": widget_schema()}},
            ],
        },
    })
}

fn widget_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {
                    "size": {"type": "string", "enum": ["small", "large"]},
                    "replicas": {"type": "integer", "minimum": 0, "default": 1},
                    "network": {"type": "object", "default": {},
                        "properties": {
                            "port": {"x-kubernetes-int-or-string": true, "default": 80},
                            "host": {"type": "string", "pattern": "^[a-z.]+$", "maxLength": 20},
                        }},
                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                },
            },
            "status": {"type": "object", "properties": {
                "replicas": {"type": "integer"}, "selector": {"type": "string"}}},
        },
    })
}

async fn create_crd(api: &Api, crd: Value) -> Value {
    let (code, body) = api
        .send(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            Some(crd),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    body
}

fn condition<'a>(crd: &'a Value, ty: &str) -> &'a Value {
    crd["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn a_definition_is_validated_and_established() {
    let api = Api::new().await;
    let crd = create_crd(&api, widget_crd()).await;
    assert_eq!(condition(&crd, "Established")["status"], "True", "{crd}");
    assert_eq!(condition(&crd, "NamesAccepted")["status"], "True");
    assert_eq!(crd["spec"]["names"]["singular"], "widget");
    assert_eq!(crd["spec"]["names"]["listKind"], "WidgetList");
    assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
    assert_eq!(
        crd["metadata"]["finalizers"],
        json!(["customresourcecleanup.apiextensions.k8s.io"])
    );

    let mut bad = widget_crd();
    bad["metadata"]["name"] = json!("gadgets.example.com");
    bad["spec"]["versions"][1]["storage"] = json!(true);
    bad["spec"]["scope"] = json!("Everywhere");
    let (code, body) = api
        .send(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            Some(bad),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields: Vec<&str> = body["details"]["causes"]
        .as_array()
        .expect("causes")
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert_eq!(fields, ["metadata.name", "spec.scope", "spec.versions"]);

    // A later definition that claims a taken short name is not accepted, nor served.
    let mut rival = widget_crd();
    rival["metadata"]["name"] = json!("gizmos.example.com");
    rival["spec"]["names"] = json!({"plural": "gizmos", "kind": "Gizmo", "shortNames": ["wd"]});
    let rival = create_crd(&api, rival).await;
    assert_eq!(condition(&rival, "NamesAccepted")["status"], "False");
    assert_eq!(
        condition(&rival, "NamesAccepted")["message"],
        "\"wd\" is already in use"
    );
    assert_eq!(condition(&rival, "Established")["status"], "False");
    let (code, _) = api
        .send(
            "GET",
            "/apis/example.com/v1/namespaces/default/gizmos",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn custom_resources_are_pruned_defaulted_and_validated() {
    let api = Api::new().await;
    create_crd(&api, widget_crd()).await;
    let (code, w) = api
        .send(
            "POST",
            WIDGETS,
            Some(json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "w1"},
                "spec": {"size": "small", "bogus": 1, "extra": {"free": {"form": true}}},
                "status": {"replicas": 9}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{w}");
    assert_eq!(
        w["spec"],
        json!({"size": "small", "extra": {"free": {"form": true}}, "replicas": 1,
               "network": {"port": 80}}),
        "unknown fields pruned, defaults applied"
    );
    assert_eq!(w.get("status"), None, "a create does not write the status");
    assert_eq!(w["metadata"]["generation"], 1);

    // Strict field validation refuses what the schema does not declare.
    let (code, w) = api
        .send(
            "POST",
            &format!("{WIDGETS}?fieldValidation=Strict"),
            Some(json!({"metadata": {"name": "strict"},
                "spec": {"size": "small", "bogus": 1, "network": {"portt": 1}}})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{w}");
    let message = w["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("unknown field \"spec.bogus\", unknown field \"spec.network.portt\""),
        "{message}"
    );

    let (code, w) = api
        .send(
            "POST",
            WIDGETS,
            Some(json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "bad"},
                "spec": {"size": "medium", "replicas": "three",
                         "network": {"port": 1.5, "host": "Not_A_Host"}}})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{w}");
    assert_eq!(
        w["message"],
        "Widget \"bad\" is invalid: [spec.size: Unsupported value: \"medium\": supported values: \"small\", \"large\", spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\", spec.network.port: Invalid value: \"number\": spec.network.port in body must be of type integer,string: \"number\", spec.network.host: Invalid value: \"Not_A_Host\": spec.network.host in body should match '^[a-z.]+$']",
    );
    let causes: Vec<&str> = w["details"]["causes"]
        .as_array()
        .expect("causes")
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert_eq!(
        causes,
        [
            "spec.size",
            "spec.replicas",
            "spec.network.port",
            "spec.network.host"
        ]
    );
    let (code, w) = api
        .send(
            "POST",
            WIDGETS,
            Some(json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "nospec"}, "spec": {}})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{w}");
    assert_eq!(
        w["message"],
        "Widget \"nospec\" is invalid: spec.size: Required value"
    );
}

#[tokio::test]
async fn versions_share_one_collection_and_reads_follow_the_version_asked() {
    let api = Api::new().await;
    create_crd(&api, widget_crd()).await;
    let (code, _) = api
        .send(
            "POST",
            WIDGETS,
            Some(json!({"metadata": {"name": "w1"}, "spec": {"size": "small"}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, w) = api
        .send(
            "GET",
            "/apis/example.com/v2/namespaces/default/widgets/w1",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{w}");
    assert_eq!(w["apiVersion"], "example.com/v2");
    let (_, list) = api.send("GET", "/apis/example.com/v2/widgets", None).await;
    assert_eq!(list["kind"], "WidgetList");
    assert_eq!(list["items"][0]["apiVersion"], "example.com/v2");
    // An update through v2 is stored, and still reads as v1 through v1.
    let (code, w) = api
        .send_as(
            "PATCH",
            "/apis/example.com/v2/namespaces/default/widgets/w1",
            "application/merge-patch+json",
            Some(json!({"spec": {"size": "large"}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{w}");
    assert_eq!(w["metadata"]["generation"], 2);
    let (_, w) = api.send("GET", &format!("{WIDGETS}/w1"), None).await;
    assert_eq!(w["apiVersion"], "example.com/v1");
    assert_eq!(w["spec"]["size"], "large");

    // A watch through v2 sees the objects as v2.
    let (code, body) = api
        .send(
            "GET",
            "/apis/example.com/v2/widgets?watch=true&timeoutSeconds=1",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    // One line is one JSON document, which the harness parses.
    let line: Value = match body.as_str() {
        Some(s) => s
            .lines()
            .next()
            .and_then(|l| serde_json::from_str(l).ok())
            .expect("a watch line"),
        None => body,
    };
    assert_eq!(line["type"], "ADDED");
    assert_eq!(line["object"]["apiVersion"], "example.com/v2");
}

/// Objects are stored at the storage version whichever version wrote them, and read at
/// the version asked for, as Kubernetes does with conversion `None`.
#[tokio::test]
async fn objects_are_stored_at_the_storage_version() {
    let api = Api::new().await;
    create_crd(&api, widget_crd()).await;
    let stored_version = |api: &Api, name: &'static str| {
        let api = api.clone();
        async move {
            let key = crate::store::object_key("example.com", "widgets", "default", name);
            let stored = api.store.get(&key).await.unwrap().unwrap();
            let obj = crate::apiserver::objects::decode(&stored).unwrap();
            obj["apiVersion"].as_str().unwrap().to_string()
        }
    };
    // Written through v2 (not the storage version): answered as v2, stored as v1.
    let v2 = "/apis/example.com/v2/namespaces/default/widgets";
    let (code, w) = api
        .send(
            "POST",
            v2,
            Some(json!({"apiVersion": "example.com/v2", "kind": "Widget",
                "metadata": {"name": "w2"}, "spec": {"size": "small"}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{w}");
    assert_eq!(w["apiVersion"], "example.com/v2");
    assert_eq!(stored_version(&api, "w2").await, "example.com/v1");
    // An update and a status write through v2 keep it at v1.
    let (code, w) = api
        .send_as(
            "PATCH",
            &format!("{v2}/w2"),
            "application/merge-patch+json",
            Some(json!({"spec": {"size": "large"}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{w}");
    assert_eq!(w["apiVersion"], "example.com/v2");
    assert_eq!(stored_version(&api, "w2").await, "example.com/v1");
    let (_, w) = api.send("GET", &format!("{WIDGETS}/w2"), None).await;
    assert_eq!(w["apiVersion"], "example.com/v1");
    assert_eq!(w["spec"]["size"], "large");

    // The storage version moves to v2: new writes are stored at v2, old objects read
    // as asked all the same.
    let (code, crd) = api
        .send_as(
            "PATCH",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com",
            "application/json-patch+json",
            Some(json!([
                {"op": "replace", "path": "/spec/versions/0/storage", "value": false},
                {"op": "replace", "path": "/spec/versions/1/storage", "value": true},
            ])),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{crd}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, w) = api
            .send(
                "POST",
                WIDGETS,
                Some(json!({"metadata": {"name": "w3"}, "spec": {"size": "small"}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{w}");
        assert_eq!(w["apiVersion"], "example.com/v1");
        if stored_version(&api, "w3").await == "example.com/v2" {
            break;
        }
        // The kinds table follows the definitions by a watch: try again.
        assert!(Instant::now() < deadline, "w3 is still stored at v1");
        let (code, _) = api.send("DELETE", &format!("{WIDGETS}/w3"), None).await;
        assert_eq!(code, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, w) = api.send("GET", &format!("{v2}/w2"), None).await;
    assert_eq!(w["apiVersion"], "example.com/v2");
}

#[tokio::test]
async fn patches_status_and_scale() {
    let api = Api::new().await;
    create_crd(&api, widget_crd()).await;
    let w1 = format!("{WIDGETS}/w1");
    let (code, _) = api
        .send(
            "POST",
            WIDGETS,
            Some(json!({"metadata": {"name": "w1"}, "spec": {"size": "small"}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, w) = api
        .send_as(
            "PATCH",
            &w1,
            "application/json-patch+json",
            Some(json!([{"op": "replace", "path": "/spec/replicas", "value": 2}])),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{w}");
    assert_eq!(w["spec"]["replicas"], 2);
    let (code, w) = api
        .send_as(
            "PATCH",
            &w1,
            "application/strategic-merge-patch+json",
            Some(json!({"spec": {"replicas": 3}})),
        )
        .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{w}");
    let (code, w) = api
        .send_as(
            "PATCH",
            &format!("{w1}?fieldManager=test"),
            "application/apply-patch+yaml",
            Some(json!({"apiVersion": "example.com/v1", "kind": "Widget",
                        "metadata": {"name": "w1"}, "spec": {"size": "large"}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{w}");
    assert_eq!(w["spec"]["size"], "large");
    let (code, w) = api
        .send_as(
            "PATCH",
            &format!("{WIDGETS}/w2?fieldManager=test"),
            "application/apply-patch+yaml",
            Some(json!({"apiVersion": "example.com/v1", "kind": "Widget",
                        "metadata": {"name": "w2"}, "spec": {"size": "small"}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{w}");

    // The status is written through its subresource only.
    let (code, w) = api
        .send_as(
            "PATCH",
            &format!("{w1}/status"),
            "application/merge-patch+json",
            Some(
                json!({"status": {"replicas": 2, "selector": "app=w1"}, "spec": {"size": "small"}}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{w}");
    assert_eq!(w["status"]["replicas"], 2);
    assert_eq!(w["spec"]["size"], "large", "a status write keeps the spec");
    let (_, w) = api
        .send_as(
            "PATCH",
            &w1,
            "application/merge-patch+json",
            Some(json!({"status": {"replicas": 7}})),
        )
        .await;
    assert_eq!(w["status"]["replicas"], 2, "a main write keeps the status");

    let (code, scale) = api.send("GET", &format!("{w1}/scale"), None).await;
    assert_eq!(code, StatusCode::OK, "{scale}");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 2);
    assert_eq!(
        scale["status"],
        json!({"replicas": 2, "selector": "app=w1"})
    );
    let (code, scale) = api
        .send_as(
            "PATCH",
            &format!("{w1}/scale"),
            "application/merge-patch+json",
            Some(json!({"spec": {"replicas": 5}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{scale}");
    assert_eq!(scale["spec"]["replicas"], 5);
    let (_, w) = api.send("GET", &w1, None).await;
    assert_eq!(w["spec"]["replicas"], 5);
}

#[tokio::test]
async fn discovery_tables_and_openapi_describe_the_new_kind() {
    let api = Api::new().await;
    create_crd(&api, widget_crd()).await;
    let (_, groups) = api.send("GET", "/apis", None).await;
    let group = groups["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == "example.com"))
        .expect("the group is listed");
    assert_eq!(group["preferredVersion"]["version"], "v2");
    let (code, list) = api.send("GET", "/apis/example.com/v1", None).await;
    assert_eq!(code, StatusCode::OK, "{list}");
    let names: Vec<&str> = list["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["widgets", "widgets/scale", "widgets/status"]);
    assert_eq!(list["resources"][0]["shortNames"], json!(["wd"]));
    assert_eq!(list["resources"][0]["categories"], json!(["gadgets"]));
    assert_eq!(list["resources"][0]["namespaced"], true);

    let (code, _) = api
        .send(
            "POST",
            WIDGETS,
            Some(json!({"metadata": {"name": "w1"}, "spec": {"size": "small", "replicas": 3}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let req = http::Request::builder()
        .uri(WIDGETS)
        .header("authorization", format!("Bearer {}", super::TOKEN))
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(axum::body::Body::empty())
        .expect("request");
    let (code, table) = api.request(req).await;
    assert_eq!(code, StatusCode::OK, "{table}");
    let columns: Vec<(&str, i64)> = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or(""),
                c["priority"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("Name", 0),
            ("Size", 0),
            ("Replicas", 0),
            ("Port", 1),
            ("Age", 0)
        ]
    );
    let cells = &table["rows"][0]["cells"];
    assert_eq!(cells[0], "w1");
    assert_eq!(cells[1], "small");
    assert_eq!(cells[2], "3");
    assert_eq!(cells[3], "80");

    let (_, index) = api.send("GET", "/openapi/v3", None).await;
    assert!(
        index["paths"].get("apis/example.com/v1").is_some(),
        "{index}"
    );
    let (code, doc) = api
        .send("GET", "/openapi/v3/apis/example.com/v1", None)
        .await;
    assert_eq!(code, StatusCode::OK, "{doc}");
    let schema = &doc["components"]["schemas"]["com.example.v1.Widget"];
    assert_eq!(
        schema["properties"]["spec"]["properties"]["size"]["enum"],
        json!(["small", "large"])
    );
    assert_eq!(
        schema["x-kubernetes-group-version-kind"],
        json!([{"group": "example.com", "version": "v1", "kind": "Widget"}])
    );
    assert!(
        doc["paths"]
            .get("/apis/example.com/v1/namespaces/{namespace}/widgets/{name}/scale")
            .is_some()
    );
}

#[tokio::test]
async fn cluster_scoped_kinds_have_no_namespace() {
    let api = Api::new().await;
    let mut crd = widget_crd();
    crd["metadata"]["name"] = json!("backends.example.com");
    crd["spec"]["scope"] = json!("Cluster");
    crd["spec"]["names"] = json!({"plural": "backends", "kind": "Backend"});
    create_crd(&api, crd).await;
    let (code, b) = api
        .send(
            "POST",
            "/apis/example.com/v1/backends",
            Some(json!({"metadata": {"name": "b1"}, "spec": {"size": "large"}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{b}");
    assert_eq!(b["metadata"].get("namespace"), None);
    let (code, _) = api
        .send("GET", "/apis/example.com/v1/backends/b1", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api
        .send(
            "GET",
            "/apis/example.com/v1/namespaces/default/backends/b1",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn deleting_a_definition_deletes_its_objects() {
    let api = Api::new().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    crate::controllers::crd::start(api.client(), shutdown.clone(), &mut tasks);
    create_crd(&api, widget_crd()).await;
    for name in ["w1", "w2"] {
        let (code, _) = api
            .send(
                "POST",
                WIDGETS,
                Some(json!({"metadata": {"name": name}, "spec": {"size": "small"}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED);
    }
    let crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com";
    let (code, body) = api.send("DELETE", crd_path, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _) = api.send("GET", crd_path, None).await;
        if code == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the definition was never removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let prefix = crate::store::collection_prefix("example.com", "widgets", None);
    let left = api.store.list(&prefix).await.expect("list");
    assert!(left.items.is_empty(), "objects outlived their definition");
    let (code, _) = api.send("GET", WIDGETS, None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "the kind is no longer served");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}

#[tokio::test]
async fn the_controller_accepts_names_once_their_holder_is_gone() {
    let api = Api::new().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    crate::controllers::crd::start(api.client(), shutdown.clone(), &mut tasks);
    create_crd(&api, widget_crd()).await;
    let mut rival = widget_crd();
    rival["metadata"]["name"] = json!("gizmos.example.com");
    rival["spec"]["names"] = json!({"plural": "gizmos", "kind": "Gizmo", "shortNames": ["wd"]});
    let rival = create_crd(&api, rival).await;
    assert_eq!(condition(&rival, "NamesAccepted")["status"], "False");
    let (code, _) = api
        .send(
            "DELETE",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, rival) = api
            .send(
                "GET",
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gizmos.example.com",
                None,
            )
            .await;
        if condition(&rival, "Established")["status"] == "True" {
            break;
        }
        assert!(Instant::now() < deadline, "never accepted: {rival}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, body) = api
        .send(
            "GET",
            "/apis/example.com/v1/namespaces/default/gizmos",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}

#[tokio::test]
async fn rbac_grants_custom_resources_by_group_and_resource() {
    let api = Api::new().await;
    create_crd(&api, widget_crd()).await;
    const BOB: &str = "bob-token";
    api.add_token(
        BOB,
        super::super::auth::Identity {
            user: "bob".into(),
            groups: vec!["system:authenticated".into()],
        },
    );
    let (code, status) = api
        .send_with(BOB, "GET", WIDGETS, "application/json", None)
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(
        status["message"],
        "widgets.example.com is forbidden: User \"bob\" cannot list resource \"widgets\" in API group \"example.com\" in the namespace \"default\""
    );
    let rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/default";
    let (code, out) = api
        .send(
            "POST",
            &format!("{rbac}/roles"),
            Some(json!({"metadata": {"name": "widget-reader"},
                "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["list"]}]})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{out}");
    let (code, out) = api
        .send(
            "POST",
            &format!("{rbac}/rolebindings"),
            Some(json!({"metadata": {"name": "bob-reads"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "widget-reader"},
                "subjects": [{"kind": "User", "name": "bob"}]})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{out}");
    let (code, list) = api
        .send_with(BOB, "GET", WIDGETS, "application/json", None)
        .await;
    assert_eq!(code, StatusCode::OK, "{list}");
    let (code, _) = api
        .send_with(
            BOB,
            "POST",
            WIDGETS,
            "application/json",
            Some(json!({"metadata": {"name": "w"}, "spec": {"size": "small"}})),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn aggregated_discovery_lists_the_custom_group() {
    let api = Api::new().await;
    create_crd(&api, widget_crd()).await;
    let req = http::Request::builder()
        .uri("/apis")
        .header("authorization", format!("Bearer {}", super::TOKEN))
        .header(
            "accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )
        .body(axum::body::Body::empty())
        .expect("request");
    let (code, doc) = api.request(req).await;
    assert_eq!(code, StatusCode::OK, "{doc}");
    let group = doc["items"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find(|i| i["metadata"]["name"] == "example.com")
        })
        .expect("the custom group");
    let versions: Vec<&str> = group["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_str())
        .collect();
    assert_eq!(versions, ["v2", "v1"]);
    let widgets = &group["versions"][1]["resources"][0];
    assert_eq!(widgets["resource"], "widgets");
    assert_eq!(widgets["scope"], "Namespaced");
    assert_eq!(widgets["shortNames"], json!(["wd"]));
    assert_eq!(widgets["categories"], json!(["gadgets"]));
    let subs: Vec<&str> = widgets["subresources"]
        .as_array()
        .expect("subresources")
        .iter()
        .filter_map(|s| s["subresource"].as_str())
        .collect();
    assert_eq!(subs, ["scale", "status"]);
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_custom_resources() {
    let api = Api::new().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    crate::controllers::namespace::start(
        api.client(),
        &Default::default(),
        shutdown.clone(),
        &mut tasks,
    );
    create_crd(&api, widget_crd()).await;
    let (code, _) = api
        .send(
            "POST",
            "/api/v1/namespaces",
            Some(json!({"metadata": {"name": "temp"}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, _) = api
        .send(
            "POST",
            "/apis/example.com/v1/namespaces/temp/widgets",
            Some(json!({"metadata": {"name": "w"}, "spec": {"size": "small"}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, _) = api.send("DELETE", "/api/v1/namespaces/temp", None).await;
    assert_eq!(code, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _) = api.send("GET", "/api/v1/namespaces/temp", None).await;
        if code == StatusCode::NOT_FOUND {
            break;
        }
        assert!(Instant::now() < deadline, "the namespace was never emptied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let prefix = crate::store::collection_prefix("example.com", "widgets", Some("temp"));
    let left = api.store.list(&prefix).await.expect("list");
    assert!(left.items.is_empty(), "a widget outlived its namespace");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}

#[tokio::test]
async fn a_default_added_later_shows_on_read() {
    let api = Api::new().await;
    create_crd(&api, widget_crd()).await;
    let (code, _) = api
        .send(
            "POST",
            WIDGETS,
            Some(json!({"metadata": {"name": "w1"}, "spec": {"size": "small"}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com";
    let (code, out) = api
        .send_as(
            "PATCH",
            crd_path,
            "application/json-patch+json",
            Some(json!([{"op": "add",
                "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/color",
                "value": {"type": "string", "default": "red"}}])),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{out}");
    assert_eq!(out["metadata"]["generation"], 2);
    // The server follows the definition's change (a watch); the stored object is not
    // rewritten, yet reads with the new default.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, w) = api.send("GET", &format!("{WIDGETS}/w1"), None).await;
        if w["spec"]["color"] == "red" {
            break;
        }
        assert!(Instant::now() < deadline, "never defaulted: {w}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let key = crate::store::object_key("example.com", "widgets", "default", "w1");
    let stored = api.store.get(&key).await.expect("get").expect("stored");
    let stored: Value = serde_json::from_slice(&stored.value).expect("json");
    assert_eq!(stored["spec"].get("color"), None);
}
