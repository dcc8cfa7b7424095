//! Issue 15: `metrics.k8s.io` served from the nodes' stats, and HorizontalPodAutoscalers in
//! `autoscaling/v2` and `v1` from one storage.

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A node whose guests use `cores` of CPU steadily since it started, for the pod uids
/// in `uids` (one container `app`, 2 MiB).
async fn fake_stats_node(
    api: &super::Api,
    token: String,
    uids: Arc<Mutex<Vec<String>>>,
    cores: f64,
) -> u16 {
    let started = Instant::now();
    let start_time = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(100);
    type S = (
        String,
        Arc<Mutex<Vec<String>>>,
        f64,
        Instant,
        jiff::Timestamp,
    );
    async fn serve(
        State((token, uids, cores, started, start_time)): State<S>,
        req: axum::extract::Request,
    ) -> axum::response::Response {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok());
        if auth != Some(format!("Bearer {token}").as_str()) {
            return (StatusCode::UNAUTHORIZED, "who are you?").into_response();
        }
        assert_eq!(req.uri().path(), "/stats/summary");
        let now = jiff::Timestamp::now();
        // 100 s of history before the first request, then `cores` since.
        let cpu = ((100.0 + started.elapsed().as_secs_f64()) * cores * 1e9) as u64;
        let time = now.to_string();
        let pods: Vec<Value> = uids
            .lock()
            .unwrap()
            .iter()
            .map(|uid| {
                json!({"podRef": {"name": "web", "namespace": "default", "uid": uid},
                       "cpu": {"time": time, "usageCoreNanoSeconds": cpu},
                       "memory": {"time": time, "workingSetBytes": 2 << 20},
                       "containers": [{"name": "app", "startTime": start_time.to_string(),
                           "cpu": {"time": time, "usageCoreNanoSeconds": cpu},
                           "memory": {"time": time, "workingSetBytes": 2 << 20,
                                      "usageBytes": 2 << 20, "peakBytes": 3 << 20}}]})
            })
            .collect();
        axum::Json(json!({
            "node": {"nodeName": "n1", "cpu": {"time": time, "usageCoreNanoSeconds": cpu},
                     "memory": {"time": time, "workingSetBytes": 2 << 20}},
            "pods": pods,
        }))
        .into_response()
    }
    let app = Router::new()
        .fallback(serve)
        .with_state((token, uids, cores, started, start_time));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    api.serve_node(listener, app);
    port
}

fn nanocores(q: &Value) -> f64 {
    q.as_str()
        .and_then(|s| s.strip_suffix('n'))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("not nanocores: {q}"))
}

#[tokio::test]
async fn pod_and_node_metrics_are_rates_of_the_nodes_counters() {
    let api = super::api().await;
    api.create_namespace("kube-system").await;
    let client = super::super::in_process_client(api.router.clone());
    let token = tokio::time::timeout(
        Duration::from_secs(10),
        super::super::proxy::ensure_node_proxy_secret(&client),
    )
    .await
    .unwrap()
    .unwrap();
    let uids = Arc::new(Mutex::new(Vec::new()));
    let port = fake_stats_node(&api, token, uids.clone(), 0.5).await;
    api.ready_node("n1", Some(port)).await;
    let mut p = super::pod("web", json!({"app": "web"}));
    p["spec"]["nodeName"] = json!("n1");
    let (code, created) = api
        .send("POST", "/api/v1/namespaces/default/pods", Some(p))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    uids.lock()
        .unwrap()
        .push(created["metadata"]["uid"].as_str().unwrap().to_string());

    // Discovery: the group, both resources, get and list only.
    let (code, d) = api.send("GET", "/apis/metrics.k8s.io/v1beta1", None).await;
    assert_eq!(code, StatusCode::OK, "{d}");
    let resources: Vec<(&str, &str, Vec<&str>)> = d["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["kind"].as_str().unwrap(),
                r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        resources,
        [
            ("nodes", "NodeMetrics", vec!["get", "list"]),
            ("pods", "PodMetrics", vec!["get", "list"])
        ]
    );

    // The first request has no earlier sample: it samples twice, a second apart.
    let (code, list) = api
        .send(
            "GET",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{list}");
    assert_eq!(list["kind"], "PodMetricsList");
    let item = &list["items"][0];
    assert_eq!(item["metadata"]["name"], "web");
    assert_eq!(item["metadata"]["labels"], json!({"app": "web"}));
    assert_eq!(item["containers"][0]["name"], "app");
    assert_eq!(item["containers"][0]["usage"]["memory"], "2048Ki");
    let cpu = nanocores(&item["containers"][0]["usage"]["cpu"]);
    assert!((cpu - 5e8).abs() < 5e7, "{cpu} nanocores, want 500m");
    let window = item["window"].as_str().unwrap();
    assert!(window.starts_with("1"), "{window}");
    assert!(item["timestamp"].as_str().unwrap().ends_with('Z'));

    // One object, and the node's total.
    let (code, one) = api
        .send(
            "GET",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{one}");
    assert_eq!(one["kind"], "PodMetrics");
    let (code, nodes) = api
        .send("GET", "/apis/metrics.k8s.io/v1beta1/nodes", None)
        .await;
    assert_eq!(code, StatusCode::OK, "{nodes}");
    assert_eq!(nodes["items"][0]["metadata"]["name"], "n1");
    let node_cpu = nanocores(&nodes["items"][0]["usage"]["cpu"]);
    assert!((node_cpu - 5e8).abs() < 5e7, "{node_cpu}");

    // Selectors filter by the pods' labels; unknown pods are 404; nothing is writable.
    let (code, none) = api
        .send(
            "GET",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dother",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(none["items"], json!([]));
    let (code, missing) = api
        .send(
            "GET",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nope",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{missing}");
    let (code, _) = api
        .send(
            "POST",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods",
            Some(json!({"metadata": {"name": "x"}})),
        )
        .await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn view_edit_and_admin_read_resource_metrics() {
    let (roles, _) = super::super::rbac::bootstrap::desired();
    let role = roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("system:aggregated-metrics-reader"))
        .expect("the metrics reader role");
    let role = serde_json::to_value(role).unwrap();
    for label in ["view", "edit", "admin"] {
        assert_eq!(
            role["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{label}")],
            "true"
        );
    }
    assert_eq!(
        role["rules"][0],
        json!({"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"],
               "verbs": ["get", "list", "watch"]})
    );
}

const HPA_V1: &str = "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers";
const HPA_V2: &str = "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers";

#[tokio::test]
async fn hpas_are_served_in_v1_and_v2_from_one_object() {
    let api = super::api().await;
    // What `kubectl autoscale deployment web --cpu-percent=50 --min=1 --max=5` sends.
    let (code, created) = api
        .send(
            "POST",
            HPA_V1,
            Some(json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "web"},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                         "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 50}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(created["apiVersion"], "autoscaling/v1");
    assert_eq!(created["spec"]["targetCPUUtilizationPercentage"], 50);
    let (code, v2) = api.send("GET", &format!("{HPA_V2}/web"), None).await;
    assert_eq!(code, StatusCode::OK, "{v2}");
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(
        v2["spec"]["metrics"],
        json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 50}}}])
    );
    // A v2 update of the behavior, then a v1 update of the target: both kept.
    let mut updated = v2.clone();
    updated["spec"]["behavior"] = json!({"scaleDown": {"stabilizationWindowSeconds": 10}});
    let (code, s) = api
        .send("PUT", &format!("{HPA_V2}/web"), Some(updated))
        .await;
    assert_eq!(code, StatusCode::OK, "{s}");
    assert_eq!(s["spec"]["behavior"]["scaleDown"]["selectPolicy"], "Max");
    let (_, mut v1) = api.send("GET", &format!("{HPA_V1}/web"), None).await;
    assert!(v1["spec"].get("behavior").is_none(), "{v1}");
    v1["spec"]["targetCPUUtilizationPercentage"] = json!(70);
    let (code, s) = api.send("PUT", &format!("{HPA_V1}/web"), Some(v1)).await;
    assert_eq!(code, StatusCode::OK, "{s}");
    assert_eq!(s["spec"]["targetCPUUtilizationPercentage"], 70);
    let (_, v2) = api.send("GET", &format!("{HPA_V2}/web"), None).await;
    assert_eq!(
        v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        70
    );
    assert_eq!(
        v2["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        10
    );
    // One object: each version lists it once.
    for url in [HPA_V1, HPA_V2] {
        let (_, list) = api.send("GET", url, None).await;
        assert_eq!(list["items"].as_array().unwrap().len(), 1, "{url}: {list}");
    }
    // Validation speaks Kubernetes.
    let (code, s) = api
        .send(
            "POST",
            HPA_V2,
            Some(json!({"metadata": {"name": "bad"},
                "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"},
                         "minReplicas": 3, "maxReplicas": 2}})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert!(
        s["message"].as_str().unwrap().contains(
            "spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`"
        ),
        "{s}"
    );
    // `kubectl get hpa` columns.
    let req = http::Request::get(HPA_V2)
        .header("authorization", format!("Bearer {}", super::TOKEN))
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(axum::body::Body::empty())
        .unwrap();
    let (code, table) = api.request(req).await;
    assert_eq!(code, StatusCode::OK, "{table}");
    let names: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Name",
            "Reference",
            "Targets",
            "Minpods",
            "Maxpods",
            "Replicas",
            "Age"
        ]
    );
    assert_eq!(table["rows"][0]["cells"][2], "cpu: <unknown>/70%");
    // Discovery prefers v2.
    let (_, group) = api.send("GET", "/apis/autoscaling", None).await;
    assert_eq!(group["preferredVersion"]["version"], "v2", "{group}");
}

/// A clock the test moves.
struct TestClock(Mutex<jiff::Timestamp>);

impl crate::controllers::hpa::Clock for TestClock {
    fn now(&self) -> jiff::Timestamp {
        *self.0.lock().unwrap()
    }
}

/// A node whose one pod (`uid` in `pod`) uses `rate` cores, changeable as it runs.
async fn fake_node_with_load(
    api: &super::Api,
    token: String,
    pod: Arc<Mutex<Option<String>>>,
    rate: Arc<Mutex<f64>>,
) -> u16 {
    // (last update, CPU seconds so far)
    let counter = Arc::new(Mutex::new((Instant::now(), 0.0f64)));
    let start_time = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(100);
    let app = Router::new().fallback(move |req: axum::extract::Request| {
        let (token, pod, rate, counter) =
            (token.clone(), pod.clone(), rate.clone(), counter.clone());
        async move {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|h| h.to_str().ok());
            if auth != Some(format!("Bearer {token}").as_str()) {
                return (StatusCode::UNAUTHORIZED, "who are you?").into_response();
            }
            let cpu = {
                let mut c = counter.lock().unwrap();
                let now = Instant::now();
                c.1 += now.duration_since(c.0).as_secs_f64() * *rate.lock().unwrap();
                c.0 = now;
                (c.1 * 1e9) as u64
            };
            let time = jiff::Timestamp::now().to_string();
            let pods: Vec<Value> = pod
                .lock()
                .unwrap()
                .iter()
                .map(|uid| {
                    json!({"podRef": {"name": "web-1", "namespace": "default", "uid": uid},
                           "containers": [{"name": "app", "startTime": start_time.to_string(),
                               "cpu": {"time": time, "usageCoreNanoSeconds": cpu},
                               "memory": {"time": time, "workingSetBytes": 1 << 20}}]})
                })
                .collect();
            axum::Json(
                json!({"node": {"cpu": {"time": time, "usageCoreNanoSeconds": cpu}},
                              "pods": pods}),
            )
            .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    api.serve_node(listener, app);
    port
}

/// Polls `path` until `pred` holds on it (bounded).
async fn until(api: &super::Api, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, v) = api.send("GET", path, None).await;
        if code == StatusCode::OK && pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: last {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The controller scales up on the pods' metrics, then holds a scale down for the default
/// 300 s stabilization window of its clock, not of the wall's: moving the clock past it
/// scales down at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hpa_controller_scales_by_its_clock() {
    let api = super::api().await;
    api.create_namespace("kube-system").await;
    let client = super::super::in_process_client(api.router.clone());
    let token = tokio::time::timeout(
        Duration::from_secs(10),
        super::super::proxy::ensure_node_proxy_secret(&client),
    )
    .await
    .unwrap()
    .unwrap();
    let uid = Arc::new(Mutex::new(None));
    let rate = Arc::new(Mutex::new(0.08));
    let port = fake_node_with_load(&api, token, uid.clone(), rate.clone()).await;
    api.ready_node("n1", Some(port)).await;
    let mut deployment = super::deployment("web", 1);
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "100m"}});
    let (code, s) = api
        .send(
            "POST",
            "/apis/apps/v1/namespaces/default/deployments",
            Some(deployment),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{s}");
    // The pod the Deployment would have made (no deployment controller runs here).
    let mut p = super::pod("web-1", json!({"app": "web"}));
    p["spec"]["nodeName"] = json!("n1");
    p["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "100m"}});
    let (code, created) = api
        .send("POST", "/api/v1/namespaces/default/pods", Some(p))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    *uid.lock().unwrap() = Some(created["metadata"]["uid"].as_str().unwrap().to_string());
    let (code, s) = api
        .send(
            "POST",
            HPA_V2,
            Some(json!({"metadata": {"name": "web"},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                         "minReplicas": 1, "maxReplicas": 5,
                         "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                             "target": {"type": "Utilization", "averageUtilization": 50}}}]}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{s}");

    let clock = Arc::new(TestClock(Mutex::new(jiff::Timestamp::now())));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    crate::controllers::hpa::start_with_clock(
        client,
        Duration::from_millis(300),
        clock.clone(),
        shutdown.clone(),
        &mut tasks,
    );
    const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/default/deployments/web";
    // 80 % of the request against 50 %: two replicas.
    until(&api, DEPLOYMENT, "scale up", |d| d["spec"]["replicas"] == 2).await;
    let hpa = until(&api, &format!("{HPA_V2}/web"), "status", |h| {
        h["status"]["lastScaleTime"].is_string()
    })
    .await;
    let util = hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
        .as_i64()
        .unwrap();
    assert!((70..=90).contains(&util), "{hpa}");
    let (_, events) = api
        .send(
            "GET",
            "/api/v1/namespaces/default/events?fieldSelector=reason%3DSuccessfulRescale",
            None,
        )
        .await;
    assert_eq!(
        events["items"][0]["message"],
        "New size: 2; reason: cpu resource utilization (percentage of request) above target",
        "{events}"
    );

    // Idle: the HPA wants 1 but holds at 2 within its window.
    *rate.lock().unwrap() = 0.0;
    let held = until(&api, &format!("{HPA_V2}/web"), "held", |h| {
        h["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["reason"] == "ScaleDownStabilized"))
    })
    .await;
    assert_eq!(held["status"]["desiredReplicas"], 2, "{held}");
    let (_, d) = api.send("GET", DEPLOYMENT, None).await;
    assert_eq!(d["spec"]["replicas"], 2);
    // Five minutes later by the controller's clock: down to one.
    *clock.0.lock().unwrap() += jiff::SignedDuration::from_secs(301);
    until(&api, DEPLOYMENT, "scale down", |d| {
        d["spec"]["replicas"] == 1
    })
    .await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}
