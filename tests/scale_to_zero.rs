//! End-to-end (issue 15): request-driven autoscaling and scale to zero, with the real
//! `kubectl` against a `wharf up` cluster and requests through a Service's cluster IP.
//!
//! - a burst of slow requests (`samples/hello-http`'s `/sleep/MS`) scales a Deployment
//!   annotated `wharf.dev/target-concurrency` up;
//! - a Deployment annotated `wharf.dev/scale-to-zero-after` goes to 0/0 when idle; 100
//!   concurrent first requests through its Service are held by the node proxy while it
//!   wakes, and all get 200; it then goes back to zero; the sleep and the wake-up are
//!   Events on the Deployment; asleep again, a request through an Ingress to its Service
//!   is held and answered the same way.
#![allow(clippy::unwrap_used)]

mod common;

use common::kubectl::Kubectl;
use common::{Cluster, build_samples, free_port, hello_deployment, http_get, http_ok};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// A Service `name` selecting `app: NAME`, HTTP port 7080 to `target`.
fn service_yaml(name: &str, target: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector:
    app: {name}
  ports:
  - name: http
    port: 7080
    targetPort: {target}
"
    )
}

/// A hello-http Deployment with `annotations` (YAML lines `k: "v"`).
fn annotated_deployment(name: &str, replicas: u32, port: u16, annotations: &[&str]) -> String {
    let plain = hello_deployment(name, replicas, port);
    let lines: String = annotations.iter().map(|a| format!("    {a}\n")).collect();
    plain.replacen(
        &format!("metadata:\n  name: {name}\n"),
        &format!("metadata:\n  name: {name}\n  annotations:\n{lines}"),
        1,
    )
}

async fn cluster_ip(k: &Kubectl<'_>, name: &str) -> IpAddr {
    k.ok(&["get", "service", name, "-o", "jsonpath={.spec.clusterIP}"])
        .await
        .trim()
        .parse()
        .unwrap()
}

async fn spec_replicas(k: &Kubectl<'_>, name: &str) -> u32 {
    k.ok(&["get", "deployment", name, "-o", "jsonpath={.spec.replicas}"])
        .await
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_requests_scales_a_concurrency_targeted_deployment_up() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 1).await;
    let k = Kubectl {
        kubeconfig: &cluster.kubeconfig,
    };
    let port = free_port();
    let manifest = dir.path().join("busy.yaml");
    std::fs::write(
        &manifest,
        format!(
            "{}---\n{}",
            annotated_deployment(
                "busy",
                1,
                port,
                &[
                    "wharf.dev/target-concurrency: \"4\"",
                    "wharf.dev/max-replicas: \"3\""
                ]
            ),
            service_yaml("busy", port)
        ),
    )
    .unwrap();
    k.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    k.ok(&["rollout", "status", "deployment/busy", "--timeout=90s"])
        .await;
    let addr = SocketAddr::new(cluster_ip(&k, "busy").await, 7080);
    http_ok(addr, "/", Duration::from_secs(30)).await;

    // 12 requests of 6 s each in flight: ceil(12 / 4) = 3 replicas, within a second or
    // two of the burst (the sync period is 500 ms).
    let started = Instant::now();
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..12 {
        burst.spawn(async move { http_get(addr, "/sleep/6000").await });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while spec_replicas(&k, "busy").await < 3 {
        assert!(
            Instant::now() < deadline,
            "not scaled up within 20 s of the burst:\n{}",
            k.ok(&["describe", "deployment", "busy"]).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    eprintln!("scaled to 3 replicas {took:?} after the burst started");
    assert!(
        took < Duration::from_secs(5),
        "scaled up only {took:?} after the burst"
    );
    let events = k
        .until(
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=busy,reason=SuccessfulRescale",
            ],
            |out| out.contains("New size: 3"),
        )
        .await;
    assert!(
        events.contains("requests in flight above target concurrency 4 per replica"),
        "{events}"
    );
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(done) = burst.join_next().await {
            let (status, body) = done.unwrap().unwrap();
            assert_eq!(status, 200, "{body}");
        }
    })
    .await
    .expect("the burst's requests did not finish");
    cluster.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_deployment_sleeps_at_zero_and_a_request_wakes_it() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let ingress_port = free_port();
    let cluster = Cluster::up_with(
        dir.path(),
        1,
        &[
            "--ingress-http-port",
            &ingress_port.to_string(),
            "--ingress-https-port",
            "0",
        ],
    )
    .await;
    let k = Kubectl {
        kubeconfig: &cluster.kubeconfig,
    };
    let port = free_port();
    let manifest = dir.path().join("sleepy.yaml");
    std::fs::write(
        &manifest,
        format!(
            "{}---\n{}",
            annotated_deployment("sleepy", 1, port, &["wharf.dev/scale-to-zero-after: 3s"]),
            service_yaml("sleepy", port)
        ),
    )
    .unwrap();
    k.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    let addr = SocketAddr::new(cluster_ip(&k, "sleepy").await, 7080);

    // Idle for 3 s: asleep at 0/0, its Service marked for wake-ups, no pod left.
    let asleep = |out: &str| {
        out.lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("0/0"))
    };
    let deploy = k.until(&["get", "deployment", "sleepy"], asleep).await;
    eprintln!("{deploy}");
    let marked = k
        .ok(&[
            "get",
            "service",
            "sleepy",
            "-o",
            "jsonpath={.metadata.annotations.wharf\\.dev/wake-on-request}",
        ])
        .await;
    assert_eq!(marked.trim(), "sleepy");
    k.until(&["get", "pods", "-l", "app=sleepy", "-o", "name"], |out| {
        out.trim().is_empty()
    })
    .await;
    let slept = k
        .until(
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=sleepy,reason=ScaledToZero",
            ],
            |out| out.contains("Scaled to zero: no request for 3s"),
        )
        .await;
    eprintln!("{slept}");

    // 100 concurrent first requests through the cluster IP: held while it wakes, all
    // answered by the woken pod.
    let started = Instant::now();
    let mut first = tokio::task::JoinSet::new();
    for _ in 0..100 {
        first.spawn(async move {
            let r = http_get(addr, "/").await;
            (r, started.elapsed())
        });
    }
    let mut latencies = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(done) = first.join_next().await {
            let (r, took) = done.unwrap();
            let (status, body) = r.unwrap();
            assert_eq!(status, 200, "{body}");
            assert!(body.starts_with("hello from pod"), "{body}");
            latencies.push(took);
        }
    })
    .await
    .expect("the first requests were not answered");
    latencies.sort();
    eprintln!(
        "100 requests to a sleeping deployment: first answer after {:?}, last after {:?}",
        latencies[0],
        latencies[latencies.len() - 1]
    );
    let woke = k
        .until(
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=sleepy,reason=WokenUp",
            ],
            |out| out.contains("Scaled up from zero to 1"),
        )
        .await;
    eprintln!("{woke}");
    let asked = k
        .ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=sleepy,reason=WakeUpRequested",
        ])
        .await;
    assert!(
        asked.contains("a request for Service sleepy port 7080 is waiting for an endpoint"),
        "{asked}"
    );

    // Idle again: back to zero.
    let deploy = k.until(&["get", "deployment", "sleepy"], asleep).await;
    eprintln!("{deploy}");

    // Asleep again, a request through an Ingress is held and answered too.
    let ingress = dir.path().join("ingress.yaml");
    std::fs::write(
        &ingress,
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: sleepy}\nspec:\n  rules:\n    - http:\n        paths:\n          - {path: /, pathType: Prefix, backend: {service: {name: sleepy, port: {number: 7080}}}}\n",
    )
    .unwrap();
    k.ok(&["apply", "-f", ingress.to_str().unwrap()]).await;
    let via_ingress: SocketAddr = format!("127.0.0.1:{ingress_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, body) = loop {
        // 404 until the node's Ingress table has the rule; the first other answer is the
        // held request's.
        match http_get(via_ingress, "/").await {
            Ok((404, _)) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from pod"), "{body}");
    cluster.terminate().await;
}

/// The milestones of a wake-up, in the order they happen, as this test's own watches see
/// them (each includes one watch delivery, as the component reacting to it sees it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Hop {
    /// The node proxy's `WakeUpRequested` Event about the Deployment is written.
    Event,
    /// The request autoscaler wrote the Deployment's `scale` to 1.
    Scale,
    /// The Deployment controller scaled the ReplicaSet to 1.
    ReplicaSet,
    /// The ReplicaSet controller created the pod.
    PodCreated,
    /// The scheduler bound it to the node.
    PodBound,
    /// The node started it and wrote it Ready.
    PodReady,
    /// The EndpointSlice controller published it as a ready endpoint.
    Endpoint,
}

impl Hop {
    /// The milestone as BENCHMARKS.md names it.
    fn describe(self) -> &'static str {
        match self {
            Hop::Event => "node proxy's `WakeUpRequested` Event written",
            Hop::Scale => "Deployment `scale` at 1 (request autoscaler)",
            Hop::ReplicaSet => "ReplicaSet at 1 (Deployment controller)",
            Hop::PodCreated => "pod created (ReplicaSet controller)",
            Hop::PodBound => "pod bound (scheduler)",
            Hop::PodReady => "pod Ready in the API (node agent's status write)",
            Hop::Endpoint => "ready endpoint in the EndpointSlice",
        }
    }
}

const HOPS: [Hop; 7] = [
    Hop::Event,
    Hop::Scale,
    Hop::ReplicaSet,
    Hop::PodCreated,
    Hop::PodBound,
    Hop::PodReady,
    Hop::Endpoint,
];

/// Watches the objects of Deployment `name` (pods and Service selected by `app=NAME`) and
/// sends each milestone reached, with when this watch saw it.
fn watch_hops(
    client: &kube::Client,
    name: &'static str,
    tasks: &mut tokio::task::JoinSet<()>,
) -> tokio::sync::mpsc::UnboundedReceiver<(Hop, Instant)> {
    use futures::StreamExt;
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use k8s_openapi::api::core::v1::{Event, Pod};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::runtime::{WatchStreamExt, watcher};

    fn feed<K, F>(
        tasks: &mut tokio::task::JoinSet<()>,
        api: kube::Api<K>,
        config: watcher::Config,
        tx: tokio::sync::mpsc::UnboundedSender<(Hop, Instant)>,
        reached: F,
    ) where
        K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        F: Fn(&K) -> Vec<Hop> + Send + 'static,
    {
        tasks.spawn(async move {
            let mut objects =
                std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
            while let Some(o) = objects.next().await {
                let Ok(o) = o else { continue };
                let at = Instant::now();
                for hop in reached(&o) {
                    let _ = tx.send((hop, at));
                }
            }
        });
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let labels = format!("app={name}");
    feed(
        tasks,
        kube::Api::<Event>::default_namespaced(client.clone()),
        watcher::Config::default().fields("reason=WakeUpRequested"),
        tx.clone(),
        move |e: &Event| {
            if e.involved_object.name.as_deref() == Some(name) {
                vec![Hop::Event]
            } else {
                vec![]
            }
        },
    );
    feed(
        tasks,
        kube::Api::<Deployment>::default_namespaced(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
        tx.clone(),
        |d: &Deployment| {
            if d.spec.replicas == Some(1) {
                vec![Hop::Scale]
            } else {
                vec![]
            }
        },
    );
    feed(
        tasks,
        kube::Api::<ReplicaSet>::default_namespaced(client.clone()),
        watcher::Config::default().labels(&labels),
        tx.clone(),
        |rs: &ReplicaSet| {
            if rs.spec.replicas == Some(1) {
                vec![Hop::ReplicaSet]
            } else {
                vec![]
            }
        },
    );
    feed(
        tasks,
        kube::Api::<Pod>::default_namespaced(client.clone()),
        watcher::Config::default().labels(&labels),
        tx.clone(),
        |p: &Pod| {
            if p.metadata.deletion_timestamp.is_some() {
                return vec![];
            }
            let mut hops = vec![Hop::PodCreated];
            if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                hops.push(Hop::PodBound);
            }
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                hops.push(Hop::PodReady);
            }
            hops
        },
    );
    feed(
        tasks,
        kube::Api::<EndpointSlice>::default_namespaced(client.clone()),
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={name}")),
        tx,
        |s: &EndpointSlice| {
            let ready = s
                .endpoints
                .iter()
                .flatten()
                .any(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false));
            if ready { vec![Hop::Endpoint] } else { vec![] }
        },
    );
    rx
}

/// The wake-up benchmark (BENCHMARKS.md): `WHARF_BENCH_WAKEUPS` times (100 by default),
/// wait until the Deployment is asleep (0 replicas, no pod, no endpoint), then time one
/// GET through the Service's cluster IP from its first byte sent to its whole answer; then
/// the same GET to the awake pod. Prints p50/p99/max of both, and when each milestone of
/// the wake-up ([`Hop`]) was reached after the request was sent (p50/p99), and the hops of
/// the slowest runs.
///
/// `cargo test --release --test scale_to_zero -- --ignored --nocapture wake_up_latency`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: minutes long"]
async fn wake_up_latency() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, ListParams};

    let runs: usize = std::env::var("WHARF_BENCH_WAKEUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 1).await;
    let k = Kubectl {
        kubeconfig: &cluster.kubeconfig,
    };
    let port = free_port();
    let manifest = dir.path().join("bench.yaml");
    std::fs::write(
        &manifest,
        format!(
            "{}---\n{}",
            // No readiness probe: the pod is ready when its guest runs (a probe would add
            // up to its period to every wake-up).
            annotated_deployment("bench", 1, port, &["wharf.dev/scale-to-zero-after: 1s"])
                .split("          readinessProbe:")
                .next()
                .unwrap_or_default(),
            service_yaml("bench", port)
        ),
    )
    .unwrap();
    k.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    let addr = SocketAddr::new(cluster_ip(&k, "bench").await, 7080);
    let deployments: Api<Deployment> = Api::default_namespaced(cluster.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(cluster.client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(cluster.client.clone());
    let asleep = || async {
        let d = deployments.get("bench").await.ok()?;
        let zero = d.spec.replicas == Some(0);
        let no_pods = pods
            .list(&ListParams::default().labels("app=bench"))
            .await
            .ok()?
            .items
            .is_empty();
        let no_endpoints = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=bench"))
            .await
            .ok()?
            .items
            .iter()
            .all(|s| s.endpoints.as_ref().is_none_or(Vec::is_empty));
        Some(zero && no_pods && no_endpoints)
    };
    let mut watches = tokio::task::JoinSet::new();
    let mut hops = watch_hops(&cluster.client, "bench", &mut watches);
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    // Per run: when each milestone was reached after the request was sent.
    let mut reached: Vec<Vec<(Hop, Duration)>> = Vec::new();
    for run in 0..runs {
        tokio::time::timeout(Duration::from_secs(60), async {
            while asleep().await != Some(true) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("run {run}: not asleep within 60 s"));
        while hops.try_recv().is_ok() {}
        let started = Instant::now();
        let (status, body) = http_get(addr, "/").await.unwrap();
        cold.push(started.elapsed());
        assert_eq!(status, 200, "run {run}: {body}");
        let warm_started = Instant::now();
        let (status, body) = http_get(addr, "/").await.unwrap();
        warm.push(warm_started.elapsed());
        assert_eq!(status, 200, "run {run}: {body}");
        // Every milestone was reached before the answer; our watches may see the last
        // ones a little later than the components did.
        let mut seen: Vec<(Hop, Duration)> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.len() < HOPS.len() {
            let Ok(Some((hop, at))) = tokio::time::timeout_at(deadline, hops.recv()).await else {
                break;
            };
            if at >= started && !seen.iter().any(|(h, _)| *h == hop) {
                seen.push((hop, at - started));
            }
        }
        seen.sort();
        reached.push(seen);
    }
    watches.abort_all();
    let cold_by_run = cold.clone();
    let pct = |v: &mut Vec<Duration>, p: f64| -> Duration {
        v.sort();
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
    };
    // The tables go to stdout as Markdown, each line marked `MD ` (scripts/bench-wake
    // keeps those lines only); each row also goes to stderr as progress.
    let row = |what: &str, v: &mut Vec<Duration>| {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        let cells = if v.is_empty() {
            "0 | | | ".to_string()
        } else {
            let (p50, p99, max) = (pct(v, 0.5), pct(v, 0.99), pct(v, 1.0));
            format!("{} | {} | {} | {}", v.len(), ms(p50), ms(p99), ms(max))
        };
        eprintln!("BENCH wake-up {what}: runs | p50 | p99 | max: {cells}");
        println!("MD | {what} | {cells} |");
    };
    println!("MD | request | runs | p50 | p99 | max |");
    println!("MD |---|---:|---:|---:|---:|");
    row("first request to a Deployment asleep at zero", &mut cold);
    row("the same request to the awake pod", &mut warm);
    // Milestones: when each was reached after the request was sent, over the runs.
    println!("MD ");
    println!("MD | milestone (after the request was sent) | runs | p50 | p99 | max |");
    println!("MD |---|---:|---:|---:|---:|");
    for hop in HOPS {
        let mut at: Vec<Duration> = reached
            .iter()
            .filter_map(|r| r.iter().find(|(h, _)| *h == hop).map(|(_, d)| *d))
            .collect();
        row(hop.describe(), &mut at);
    }
    // The slowest wake-ups, hop by hop.
    let mut by_time: Vec<usize> = (0..reached.len()).collect();
    by_time.sort_by_key(|&i| std::cmp::Reverse(cold_by_run[i]));
    for &i in by_time.iter().take(5) {
        let hops: Vec<String> = reached[i]
            .iter()
            .map(|(h, d)| format!("{h:?} {:.1}", d.as_secs_f64() * 1e3))
            .collect();
        eprintln!(
            "BENCH wake-up slow run {i}: {:.1} ms: {}",
            cold_by_run[i].as_secs_f64() * 1e3,
            hops.join(", ")
        );
    }
    cluster.terminate().await;
}
