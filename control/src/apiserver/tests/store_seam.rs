//! The API server over the store seam (issue 10): what it answers when the backend is
//! down, and that allocation stays unique when several API servers share one store.

use super::*;
use crate::apiserver::auth::{Authenticator, Identity};
use crate::apiserver::{AppState, router};
use crate::store::{
    CacheConfig, Event, FjallStore, ListResult, Revision, Store, StoreError, StoredObject,
    WatchCache, WatchStream, Write,
};
use futures::future::BoxFuture;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A backend that is down: every call fails with `Unavailable`, as a store without quorum.
struct Down;

fn down() -> StoreError {
    StoreError::unavailable(
        "no quorum",
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"),
    )
}

impl Store for Down {
    fn get<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<StoredObject>, StoreError>> {
        Box::pin(async { Err(down()) })
    }
    fn list<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<ListResult, StoreError>> {
        Box::pin(async { Err(down()) })
    }
    fn txn<'a>(&'a self, _: Vec<Write>) -> BoxFuture<'a, Result<Vec<Arc<Event>>, StoreError>> {
        Box::pin(async { Err(down()) })
    }
    fn watch<'a>(
        &'a self,
        _: &'a str,
        _: Revision,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        // The watch starts, then the backend goes away: the failure is a stream item.
        Box::pin(async {
            Ok(Box::pin(futures::stream::once(async { Err(down()) })) as WatchStream)
        })
    }
    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(async { Err(down()) })
    }
}

/// A router over `store` with the test token.
fn router_over(store: Arc<dyn Store>, config: ApiConfig) -> Router {
    let auth = Arc::new(Authenticator::new());
    auth.add_token(TOKEN, Identity::admin());
    router(AppState {
        store,
        auth,
        config: Arc::new(config),
        shutdown: CancellationToken::new(),
        rbac: Default::default(),
        kinds: Default::default(),
        metrics: Default::default(),
        registry: Default::default(),
        resource_samples: Default::default(),
    })
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, http::HeaderMap, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), router.clone().oneshot(req))
        .await
        .expect("request timed out")
        .unwrap();
    let code = resp.status();
    let headers = resp.headers().clone();
    let bytes = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("body timed out")
        .unwrap()
        .to_bytes();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    (code, headers, value)
}

#[tokio::test]
async fn an_unavailable_backend_is_503_with_retry_after_never_500() {
    let router = router_over(Arc::new(Down), ApiConfig::default());
    for (method, uri, body) in [
        ("GET", "/api/v1/namespaces/default/configmaps/a", None),
        ("GET", "/api/v1/namespaces/default/configmaps", None),
        (
            "POST",
            "/api/v1/namespaces",
            Some(json!({"metadata": {"name": "x"}})),
        ),
        ("DELETE", "/api/v1/namespaces/default/configmaps/a", None),
    ] {
        let (code, headers, status) = call(&router, method, uri, body).await;
        assert_eq!(
            code,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {uri}: {status}"
        );
        assert_eq!(headers.get("retry-after").unwrap(), "1", "{method} {uri}");
        assert_eq!(status["reason"], "ServiceUnavailable", "{status}");
        assert_eq!(status["details"]["retryAfterSeconds"], 1, "{status}");
        let message = status["message"].as_str().unwrap();
        assert!(message.contains("unavailable"), "{message}");
        assert!(
            !message.contains("refused"),
            "the cause stays in the log: {message}"
        );
    }
}

#[tokio::test]
async fn a_watch_whose_backend_fails_ends_with_a_503_error_event() {
    let router = router_over(Arc::new(Down), ApiConfig::default());
    let (code, _, body) = call(
        &router,
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=5",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["type"], "ERROR", "{body}");
    assert_eq!(body["object"]["code"], 503, "{body}");
}

/// Two API servers (two routers, two states) over one store, as two `wharf control`
/// members over one etcd.
struct TwoServers {
    a: Router,
    b: Router,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn two_servers() -> TwoServers {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(FjallStore::open(StoreConfig::new(dir.path().join("store"))).unwrap());
    // Each server has its own watch cache over the shared backend, as members do.
    let cached = || async {
        Arc::new(
            WatchCache::start(store.clone(), CacheConfig::default())
                .await
                .unwrap(),
        ) as Arc<dyn Store>
    };
    let a = router_over(cached().await, ApiConfig::default());
    let b = router_over(cached().await, ApiConfig::default());
    let (code, _, body) = call(
        &a,
        "POST",
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "default"}})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    TwoServers {
        a,
        b,
        store,
        _dir: dir,
    }
}

/// POSTs `count` objects made by `make(i)` to `uri`, alternating between the two servers,
/// `parallel` at a time per server; answers the created objects.
async fn create_concurrently(
    servers: &TwoServers,
    uri: &'static str,
    count: usize,
    parallel: usize,
    make: fn(usize) -> Value,
) -> Vec<Value> {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..2 * parallel {
        let router = if worker % 2 == 0 {
            servers.a.clone()
        } else {
            servers.b.clone()
        };
        tasks.spawn(async move {
            let mut made = Vec::new();
            for i in (worker..count).step_by(2 * parallel) {
                let (code, _, body) = call(&router, "POST", uri, Some(make(i))).await;
                assert_eq!(code, StatusCode::CREATED, "object {i}: {body}");
                made.push(body);
            }
            made
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tokio::time::timeout(Duration::from_secs(300), tasks.join_next())
        .await
        .expect("creates timed out")
    {
        all.extend(done.unwrap());
    }
    assert_eq!(all.len(), count);
    all
}

fn node_port_service(i: usize) -> Value {
    json!({"metadata": {"name": format!("s{i}")},
           "spec": {"type": "NodePort", "ports": [{"port": 80}]}})
}

#[tokio::test]
async fn two_api_servers_on_one_store_never_hand_out_the_same_address_or_port() {
    let servers = two_servers().await;
    let made = create_concurrently(
        &servers,
        "/api/v1/namespaces/default/services",
        500,
        8,
        node_port_service,
    )
    .await;
    let mut ips = std::collections::BTreeSet::new();
    let mut ports = std::collections::BTreeSet::new();
    for svc in &made {
        let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
        assert!(ips.insert(ip.clone()), "cluster IP {ip} handed out twice");
        let port = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!(ports.insert(port), "node port {port} handed out twice");
    }
    // The allocators hold exactly what the Services hold.
    let stored_ips =
        super::super::ipam::read(servers.store.as_ref(), super::super::ipam::SERVICE_IPS)
            .await
            .unwrap();
    assert_eq!(stored_ips.allocated, ips);
    let stored_ports = super::super::ipam::read(
        servers.store.as_ref(),
        super::super::ipam::SERVICE_NODE_PORTS,
    )
    .await
    .unwrap();
    let ports: std::collections::BTreeSet<String> = ports.iter().map(|p| p.to_string()).collect();
    assert_eq!(stored_ports.allocated, ports);

    // A delete through either server frees the values in the same txn: another Service
    // may take them at once.
    let freed = &made[0];
    let name = freed["metadata"]["name"].as_str().unwrap();
    let (code, _, body) = call(
        &servers.b,
        "DELETE",
        &format!("/api/v1/namespaces/default/services/{name}"),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, _, body) = call(
        &servers.a,
        "POST",
        "/api/v1/namespaces/default/services",
        Some(json!({"metadata": {"name": "again"},
               "spec": {"type": "NodePort", "clusterIP": freed["spec"]["clusterIP"],
                        "ports": [{"port": 80, "nodePort": freed["spec"]["ports"][0]["nodePort"]}]}})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    // While it holds them, nobody else gets them.
    let (code, _, body) = call(
        &servers.b,
        "POST",
        "/api/v1/namespaces/default/services",
        Some(json!({"metadata": {"name": "clash"},
               "spec": {"clusterIP": freed["spec"]["clusterIP"], "ports": [{"port": 80}]}})),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test]
async fn two_api_servers_on_one_store_give_nodes_distinct_pod_ranges() {
    let servers = two_servers().await;
    let made = create_concurrently(
        &servers,
        "/api/v1/nodes",
        40,
        4,
        |i| json!({"metadata": {"name": format!("n{i}")}}),
    )
    .await;
    let mut cidrs = std::collections::BTreeSet::new();
    for node in &made {
        let cidr = node["spec"]["podCIDR"].as_str().unwrap().to_string();
        assert!(
            cidrs.insert(cidr.clone()),
            "pod range {cidr} handed out twice"
        );
    }
    // Deleting a Node frees its range for the next one.
    let (code, _, body) = call(&servers.a, "DELETE", "/api/v1/nodes/n7", None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let n7 =
        made.iter().find(|n| n["metadata"]["name"] == "n7").unwrap()["spec"]["podCIDR"].clone();
    let (code, _, body) = call(
        &servers.b,
        "POST",
        "/api/v1/nodes",
        Some(json!({"metadata": {"name": "late"}})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["spec"]["podCIDR"], n7,
        "the lowest free range is the freed one"
    );
}

#[tokio::test]
async fn repair_makes_the_allocators_hold_what_the_objects_hold() {
    use super::super::ipam;
    let servers = two_servers().await;
    let store = servers.store.as_ref();
    // A Service stored before the allocators existed, and a leaked value in one.
    store
        .create(
            "core/services/default/old",
            bytes::Bytes::from(
                json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "old", "namespace": "default"},
                       "spec": {"clusterIP": "127.250.0.7", "clusterIPs": ["127.250.0.7"],
                                "ports": [{"port": 80}]}})
                .to_string(),
            ),
        )
        .await
        .unwrap();
    store
        .create(
            ipam::SERVICE_IPS,
            bytes::Bytes::from(json!({"allocated": ["127.250.0.8"]}).to_string()),
        )
        .await
        .unwrap();
    ipam::repair(store).await.unwrap();
    let ips = ipam::read(store, ipam::SERVICE_IPS).await.unwrap();
    assert_eq!(
        ips.allocated.into_iter().collect::<Vec<_>>(),
        ["127.250.0.7"]
    );
    let ask = |name: &str, ip: &str| json!({"metadata": {"name": name}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}});
    let (code, _, body) = call(
        &servers.a,
        "POST",
        "/api/v1/namespaces/default/services",
        Some(ask("a", "127.250.0.7")),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (code, _, body) = call(
        &servers.b,
        "POST",
        "/api/v1/namespaces/default/services",
        Some(ask("b", "127.250.0.8")),
    )
    .await;
    assert_eq!(
        code,
        StatusCode::CREATED,
        "the leaked address is free again: {body}"
    );
}

#[tokio::test]
async fn events_expire_after_the_event_ttl_counted_from_their_last_write() {
    use crate::store::Clock;
    use std::sync::atomic::{AtomicU64, Ordering};
    const MINUTE: u64 = 60_000;
    let now = Arc::new(AtomicU64::new(10_000_000 * MINUTE));
    let read = now.clone();
    let clock = Clock::new(move || {
        std::time::UNIX_EPOCH + Duration::from_millis(read.load(Ordering::SeqCst))
    });
    let config = ApiConfig {
        event_ttl: Duration::from_secs(3600),
        ..ApiConfig::default()
    };
    let api = api_with(config, move |c| c.clock = clock).await;
    let base = "/api/v1/namespaces/default/events";
    let event = |name: &str| {
        json!({"metadata": {"name": name}, "involvedObject": {"kind": "Pod", "name": "p"},
               "reason": "Tested", "message": "m", "count": 1})
    };
    for name in ["old", "touched"] {
        let (code, body) = api.send("POST", base, Some(event(name))).await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    let (code, body) = api
        .send(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(json!({"metadata": {"name": "kept"}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    now.fetch_add(30 * MINUTE, Ordering::SeqCst);
    let (code, body) = api
        .send_as(
            "PATCH",
            &format!("{base}/touched"),
            "application/merge-patch+json",
            Some(json!({"count": 2})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    now.fetch_add(31 * MINUTE, Ordering::SeqCst);
    assert_eq!(api.fjall.sweep_now().await.unwrap(), 1);
    let (code, _) = api.send("GET", &format!("{base}/old"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "an hour after its last write");
    let (code, _) = api.send("GET", &format!("{base}/touched"), None).await;
    assert_eq!(code, StatusCode::OK, "its update started the hour again");
    let (code, _) = api
        .send("GET", "/api/v1/namespaces/default/configmaps/kept", None)
        .await;
    assert_eq!(code, StatusCode::OK, "only Events expire");
    now.fetch_add(30 * MINUTE, Ordering::SeqCst);
    assert_eq!(api.fjall.sweep_now().await.unwrap(), 1);
    let (code, _) = api.send("GET", &format!("{base}/touched"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

/// A store that counts the lists it answers, by prefix.
struct CountingLists {
    inner: Arc<dyn Store>,
    lists: std::sync::Mutex<Vec<String>>,
}

impl Store for CountingLists {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<StoredObject>, StoreError>> {
        self.inner.get(key)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<ListResult, StoreError>> {
        self.lists.lock().unwrap().push(prefix.to_owned());
        self.inner.list(prefix)
    }
    fn txn<'a>(&'a self, writes: Vec<Write>) -> BoxFuture<'a, Result<Vec<Arc<Event>>, StoreError>> {
        self.inner.txn(writes)
    }
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        self.inner.watch(prefix, after)
    }
    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        self.inner.revision()
    }
}

#[tokio::test]
async fn registering_a_node_or_creating_a_service_lists_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fjall: Arc<dyn Store> =
        Arc::new(FjallStore::open(StoreConfig::new(dir.path().join("store"))).unwrap());
    let counting = Arc::new(CountingLists {
        inner: fjall,
        lists: Default::default(),
    });
    let router = router_over(counting.clone(), ApiConfig::default());
    let (code, _, body) = call(
        &router,
        "POST",
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "default"}})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    for i in 0..3 {
        let (code, _, body) = call(
            &router,
            "POST",
            "/api/v1/nodes",
            Some(json!({"metadata": {"name": format!("n{i}")}})),
        )
        .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
        let (code, _, body) = call(
            &router,
            "POST",
            "/api/v1/namespaces/default/services",
            Some(node_port_service(i)),
        )
        .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    // Allocation reads one allocator object per range; it never lists the Nodes or
    // Services (which made registering the n-th Node cost a list of n under a lock).
    let lists = counting.lists.lock().unwrap().clone();
    assert!(
        !lists
            .iter()
            .any(|p| p.starts_with("core/nodes") || p.starts_with("core/services")),
        "{lists:?}"
    );
}
