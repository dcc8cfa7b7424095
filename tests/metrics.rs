//! `/metrics` of a whole cluster: the API server's (over TLS, with the admin token, as a
//! Prometheus scrape does) and a node's, after a short workload. The named series exist
//! with values that moved, histograms filled their buckets, and the text passes
//! `promtool check metrics` (Debian's `prometheus` package; the check is skipped, saying
//! so, where promtool is not installed).

#![allow(clippy::unwrap_used)]

mod common;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::ListParams;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The value of the first sample whose line starts with `series` (a name, and labels as
/// far as the test cares).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The sum of every sample of the series starting with `series`.
fn total(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape_api(client: &kube::Client) -> String {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    common::within("GET /metrics", client.request_text(req))
        .await
        .unwrap()
}

/// The node server of the first node, as its Node object publishes it.
async fn node_server(client: &kube::Client) -> SocketAddr {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .remove(0);
    let status = node.status.unwrap();
    let ip = status
        .addresses
        .unwrap_or_default()
        .into_iter()
        .find(|a| a.type_ == "InternalIP")
        .unwrap()
        .address;
    let port = status
        .daemon_endpoints
        .unwrap()
        .kubelet_endpoint
        .unwrap()
        .port;
    SocketAddr::new(ip.parse().unwrap(), u16::try_from(port).unwrap())
}

/// `promtool check metrics` on `text`; `None` (and a line saying why) without promtool.
fn promtool(what: &str, text: &str) -> Option<()> {
    use std::io::Write as _;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "SKIPPED promtool check of {what}: promtool is not installed (Debian's prometheus package; scripts/deps installs it)"
            );
            return None;
        }
        Err(e) => panic!("running promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics of {what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

#[tokio::test]
async fn the_api_server_and_a_node_serve_kubernetes_named_metrics_that_promtool_accepts() {
    common::build_samples().await;
    let tmp = tempfile::tempdir().unwrap();
    let cluster = common::Cluster::up(tmp.path(), 1).await;
    let client = cluster.client.clone();

    let before = scrape_api(&client).await;
    let creates = r#"apiserver_request_total{verb="POST",group="apps",version="v1",resource="deployments",subresource="",scope="namespace",component="apiserver",code="201"}"#;
    assert_eq!(sample(&before, creates), None, "{before}");

    // A short workload: a Deployment of two pods, scheduled and started, each asked over
    // HTTP.
    let port = common::free_port();
    cluster
        .apply("hello.yaml", &common::hello_deployment("hello", 2, port))
        .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + common::POD_TIMEOUT;
    let ready = loop {
        let list = pods
            .list(&ListParams::default().labels("app=hello"))
            .await
            .unwrap();
        let ready: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| common::condition(p, "Ready") == Some("True"))
            .collect();
        if ready.len() == 2 {
            break ready;
        }
        assert!(
            Instant::now() < deadline,
            "2 ready hello pods not within {:?}\n{}",
            common::POD_TIMEOUT,
            cluster.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for pod in &ready {
        let addr = SocketAddr::new(common::pod_ip(pod), port);
        common::http_ok(addr, "/", common::POD_TIMEOUT).await;
    }

    // The API server's.
    let after = scrape_api(&client).await;
    assert_eq!(sample(&after, creates), Some(1.0), "{after}");
    assert!(
        total(&after, "apiserver_request_total{") > total(&before, "apiserver_request_total{"),
        "request counts did not grow"
    );
    let lists = r#"apiserver_request_duration_seconds_bucket{le="+Inf",verb="LIST""#;
    assert!(total(&after, lists) >= 1.0, "{after}");
    // Buckets filled: some finite bucket holds requests, not only +Inf.
    let finite: f64 = after
        .lines()
        .filter(|l| l.starts_with("apiserver_request_duration_seconds_bucket{le=\"0.1\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(finite >= 1.0, "no request under 100 ms:\n{after}");
    assert!(
        sample(&after, r#"apiserver_storage_objects{resource="pods"}"#) >= Some(2.0),
        "{after}"
    );
    assert!(
        sample(
            &after,
            r#"apiserver_storage_objects{resource="deployments.apps"}"#
        ) == Some(1.0),
        "{after}"
    );
    assert!(
        total(&after, "apiserver_watch_events_total{") >= 1.0,
        "{after}"
    );
    assert!(
        total(
            &after,
            r#"etcd_request_duration_seconds_count{operation="create",type="pods"}"#
        ) >= 2.0,
        "{after}"
    );
    assert!(
        sample(
            &after,
            r#"scheduler_schedule_attempts_total{result="scheduled",profile="default-scheduler"}"#
        ) >= Some(2.0),
        "{after}"
    );
    assert!(
        total(
            &after,
            "scheduler_scheduling_attempt_duration_seconds_count{"
        ) >= 2.0,
        "{after}"
    );
    assert!(
        after.contains("scheduler_pending_pods{queue=\"active\"}"),
        "{after}"
    );
    assert!(
        sample(&after, r#"workqueue_adds_total{name="deployment"}"#) >= Some(1.0),
        "{after}"
    );
    assert!(
        sample(&after, r#"workqueue_adds_total{name="replicaset"}"#) >= Some(1.0),
        "{after}"
    );
    assert!(
        after.contains("workqueue_depth{name=\"replicaset\"}"),
        "{after}"
    );
    for lease in ["wharf-scheduler", "wharf-controller-manager"] {
        assert_eq!(
            sample(
                &after,
                &format!("leader_election_master_status{{name=\"{lease}\"}}")
            ),
            Some(1.0),
            "{after}"
        );
    }
    promtool("the API server's /metrics", &after);

    // A node's.
    // The kubelet counts from the pods as the API last told it: poll until it has seen
    // both running.
    let server = node_server(&client).await;
    let deadline = Instant::now() + common::TIMEOUT;
    let node = loop {
        let (status, node) = common::https_get(server, "/metrics").await.unwrap();
        assert_eq!(status, 200, "{node}");
        if sample(&node, "kubelet_running_pods ") == Some(2.0) || Instant::now() > deadline {
            break node;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(sample(&node, "kubelet_running_pods "), Some(2.0), "{node}");
    assert_eq!(
        sample(
            &node,
            r#"kubelet_running_containers{container_state="running"}"#
        ),
        Some(2.0),
        "{node}"
    );
    assert_eq!(
        sample(&node, "kubelet_pod_start_duration_seconds_count "),
        Some(2.0),
        "{node}"
    );
    assert!(
        sample(
            &node,
            r#"kubelet_pod_start_duration_seconds_bucket{le="+Inf"}"#
        ) == Some(2.0),
        "{node}"
    );
    // One instance per wasi:http request: the readiness probes' and the test's.
    assert!(
        sample(&node, "wharf_runtime_instantiations_total ") >= Some(2.0),
        "{node}"
    );
    let compiled = sample(&node, "wharf_runtime_compile_cache_misses_total ").unwrap_or(0.0)
        + sample(&node, "wharf_runtime_compile_cache_hits_total ").unwrap_or(0.0);
    assert!(compiled >= 1.0, "{node}");
    assert!(
        node.contains("wharf_dns_queries_total{rcode=\"NOERROR\"}"),
        "{node}"
    );
    promtool("a node's /metrics", &node);

    cluster.terminate().await;
}

/// `samples/monitoring/prometheus.yml`, rendered for `cluster`, scraping every second.
fn prometheus_config(cluster: &common::Cluster) -> String {
    let kubeconfig = std::fs::read_to_string(&cluster.kubeconfig).unwrap();
    let api = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .unwrap()
        .trim()
        .to_owned();
    let sample =
        std::fs::read_to_string(common::samples_dir().join("monitoring/prometheus.yml")).unwrap();
    sample
        .replace("WHARF_DATA", cluster.data_dir.to_str().unwrap())
        .replace("WHARF_API", &api)
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("refresh_interval: 30s", "refresh_interval: 1s")
}

#[tokio::test]
async fn the_sample_prometheus_configuration_scrapes_the_api_server_and_the_nodes() {
    if std::process::Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        println!(
            "SKIPPED: prometheus is not installed (Debian's prometheus package; scripts/deps installs it)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cluster = common::Cluster::up(tmp.path(), 2).await;
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(&config, prometheus_config(&cluster)).unwrap();
    let port = common::free_port();
    let web = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Up when the API server's job and both nodes' are healthy.
    let addr: SocketAddr = web.parse().unwrap();
    let deadline = Instant::now() + common::TIMEOUT;
    let mut last = String::new();
    loop {
        if let Ok((200, body)) = common::http_get(addr, "/api/v1/targets?state=active").await {
            let targets: serde_json::Value = serde_json::from_str(&body).unwrap();
            let up = |job: &str| {
                targets["data"]["activeTargets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|t| t["labels"]["job"] == job && t["health"] == "up")
                    .count()
            };
            if up("apiserver") == 1 && up("kubelet") == 2 {
                break;
            }
            last = body;
        }
        assert!(
            Instant::now() < deadline,
            "the sample configuration's targets were not all up within {:?}; last:\n{last}\n--- prometheus log:\n{}",
            common::TIMEOUT,
            std::fs::read_to_string(tmp.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    prometheus.kill().await.unwrap();
    cluster.terminate().await;
}
