//! Issue 16: the storage kinds and StatefulSets through the registry.

use super::*;

const CLAIMS: &str = "/api/v1/namespaces/default/persistentvolumeclaims";

fn claim(name: &str, extra: Value) -> Value {
    let mut c = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    if let (Some(spec), Some(e)) = (c["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(e.clone());
    }
    c
}

fn causes(s: &Value) -> Vec<String> {
    s["details"]["causes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    format!(
                        "{}: {}",
                        c["field"].as_str().unwrap_or(""),
                        c["message"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_claim_without_a_class_gets_the_default_and_keeps_its_spec() {
    let api = api().await;
    let class =
        serde_json::to_value(crate::controllers::persistentvolume::local_path_class()).unwrap();
    let (code, sc) = api
        .send(
            "POST",
            "/apis/storage.k8s.io/v1/storageclasses",
            Some(class),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{sc}");
    assert_eq!(sc["reclaimPolicy"], "Delete");

    let (code, c) = api
        .send("POST", CLAIMS, Some(claim("data", json!({}))))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{c}");
    assert_eq!(c["spec"]["storageClassName"], "local-path");
    assert_eq!(c["spec"]["volumeMode"], "Filesystem");
    assert_eq!(c["status"]["phase"], "Pending");
    assert_eq!(
        c["metadata"]["finalizers"],
        json!(["kubernetes.io/pvc-protection"])
    );
    // An explicit empty class stays empty (no dynamic provisioning), as in Kubernetes.
    let (_, none) = api
        .send(
            "POST",
            CLAIMS,
            Some(claim("static", json!({"storageClassName": ""}))),
        )
        .await;
    assert_eq!(none["spec"]["storageClassName"], "");

    // Growing the request is allowed; anything else in the spec is not.
    let mut grown = c.clone();
    grown["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
    let (code, grown) = api
        .send("PUT", &format!("{CLAIMS}/data"), Some(grown))
        .await;
    assert_eq!(code, StatusCode::OK, "{grown}");
    let mut shrunk = grown.clone();
    shrunk["spec"]["resources"]["requests"]["storage"] = json!("1Mi");
    let (code, s) = api
        .send("PUT", &format!("{CLAIMS}/data"), Some(shrunk))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(
        causes(&s),
        ["spec.resources.requests.storage: Forbidden: field can not be less than previous value"]
    );
    let mut modes = grown.clone();
    modes["spec"]["accessModes"] = json!(["ReadWriteMany"]);
    let (code, s) = api
        .send("PUT", &format!("{CLAIMS}/data"), Some(modes))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(
        causes(&s),
        [
            "spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"
        ]
    );

    // `kubectl get pvc` columns.
    let req = Request::get(CLAIMS)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Body::empty())
        .unwrap();
    let (code, table) = api.request(req).await;
    assert_eq!(code, StatusCode::OK);
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns[..5],
        ["Name", "Status", "Volume", "Capacity", "Access Modes"]
    );
}

#[tokio::test]
async fn volumes_are_local_with_node_affinity_or_host_paths() {
    let api = api().await;
    let uri = "/api/v1/persistentvolumes";
    let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv1"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "local": {"path": "/srv/pv1"}}});
    let (code, s) = api.send("POST", uri, Some(pv.clone())).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(
        causes(&s),
        ["spec.nodeAffinity: Required value: Local volume requires node affinity"]
    );
    let mut pinned = pv.clone();
    pinned["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}});
    let (code, created) = api.send("POST", uri, Some(pinned)).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"]["phase"], "Pending");
    assert_eq!(created["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    let mut moved = created.clone();
    moved["spec"]["local"]["path"] = json!("/srv/other");
    let (code, s) = api.send("PUT", &format!("{uri}/pv1"), Some(moved)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
}

#[tokio::test]
async fn statefulsets_default_validate_and_scale() {
    let api = api().await;
    let uri = "/apis/apps/v1/namespaces/default/statefulsets";
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web"},
        "spec": {"serviceName": "web", "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "app", "image": "kv.wasm"}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}});
    let (code, created) = api.send("POST", uri, Some(sts)).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(created["spec"]["replicas"], 1);
    assert_eq!(created["spec"]["podManagementPolicy"], "OrderedReady");
    assert_eq!(
        created["spec"]["updateStrategy"]["rollingUpdate"]["partition"],
        0
    );

    let (code, scale) = api.send("GET", &format!("{uri}/web/scale"), None).await;
    assert_eq!(code, StatusCode::OK, "{scale}");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["status"]["selector"], "app=web");
    let mut more = scale.clone();
    more["spec"]["replicas"] = json!(3);
    let (code, _) = api
        .send("PUT", &format!("{uri}/web/scale"), Some(more))
        .await;
    assert_eq!(code, StatusCode::OK);
    let (_, got) = api.send("GET", &format!("{uri}/web"), None).await;
    assert_eq!(got["spec"]["replicas"], 3);

    let mut renamed = got.clone();
    renamed["spec"]["serviceName"] = json!("other");
    let (code, s) = api.send("PUT", &format!("{uri}/web"), Some(renamed)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert!(
        causes(&s)[0].starts_with("spec: Forbidden: updates to statefulset spec"),
        "{s}"
    );
}

#[tokio::test]
async fn controller_revisions_keep_their_data() {
    let api = api().await;
    let uri = "/apis/apps/v1/namespaces/default/controllerrevisions";
    let data = json!({"spec": {"template": {"$patch": "replace",
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "kv.wasm"}]}}}});
    let rev = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": "web-1"}, "revision": 1, "data": data});
    let (code, created) = api.send("POST", uri, Some(rev)).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let (_, got) = api.send("GET", &format!("{uri}/web-1"), None).await;
    assert_eq!(got["data"], data);
    assert_eq!(got["revision"], 1);
}
