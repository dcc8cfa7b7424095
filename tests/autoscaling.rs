//! End-to-end (issue 15): resource metrics measured by the nodes, `kubectl top`, and the
//! HorizontalPodAutoscaler, with the real `kubectl` against a `wharf up` cluster.
//!
//! The CPU-bound guest is `samples/spinner` (`loop {}`), held to its CPU limit by the
//! runtime's throttle; the idle one is `samples/ticker` (one line a second, asleep in a
//! host timer between).
#![allow(clippy::unwrap_used)]

mod common;

use common::kubectl::Kubectl;
use common::{Cluster, build_samples, sample};
use std::time::{Duration, Instant};

/// The millicores of a `kubectl top` cell (`200m`, `1`).
fn millicores(cell: &str) -> u64 {
    match cell.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => cell.parse::<u64>().unwrap() * 1000,
    }
}

/// The cells of the row of `name` in a table printed by kubectl.
fn row<'a>(table: &'a str, name: &str) -> Option<Vec<&'a str>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
}

fn pods_yaml(spinner: &str, ticker: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: spin
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: spinner
    image: {spinner}
    resources:
      requests:
        cpu: 200m
      limits:
        cpu: 200m
---
apiVersion: v1
kind: Pod
metadata:
  name: idle
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: ticker
    image: {ticker}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_top_shows_what_the_guests_use() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 1).await;
    let k = Kubectl {
        kubeconfig: &cluster.kubeconfig,
    };
    let manifest = dir.path().join("pods.yaml");
    std::fs::write(
        &manifest,
        pods_yaml(&sample("spinner", "spinner"), &sample("ticker", "ticker")),
    )
    .unwrap();
    k.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/spin",
        "pod/idle",
        "--timeout=90s",
    ])
    .await;

    // The spinner near its 200m limit, the ticker near zero, both with memory.
    let top = k
        .until(&["top", "pods"], |out| {
            let (Some(spin), Some(idle)) = (row(out, "spin"), row(out, "idle")) else {
                return false;
            };
            let (s, i) = (millicores(spin[1]), millicores(idle[1]));
            (150..=230).contains(&s) && i <= 30
        })
        .await;
    eprintln!("kubectl top pods:\n{top}");
    assert!(top.starts_with("NAME"), "{top}");
    let spin = row(&top, "spin").unwrap();
    assert!(spin[2].ends_with("Mi"), "{top}");

    let containers = k.ok(&["top", "pods", "--containers"]).await;
    eprintln!("kubectl top pods --containers:\n{containers}");
    let spinner = containers
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.first() == Some(&"spin") && c.get(1) == Some(&"spinner"))
        .unwrap_or_else(|| panic!("no spin/spinner row:\n{containers}"));
    assert!(millicores(spinner[2]) >= 100, "{containers}");

    let nodes = k.ok(&["top", "nodes"]).await;
    eprintln!("kubectl top nodes:\n{nodes}");
    let node = nodes
        .lines()
        .nth(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_else(|| panic!("no node row:\n{nodes}"));
    assert!(millicores(node[1]) >= 100, "{nodes}");
    assert!(node[2].ends_with('%'), "{nodes}");

    cluster.terminate().await;
}

fn deployment_yaml(spinner: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: spin
spec:
  replicas: 1
  selector:
    matchLabels:
      app: spin
  template:
    metadata:
      labels:
        app: spin
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: spinner
        image: {spinner}
        resources:
          requests:
            cpu: 100m
          limits:
            cpu: 100m
"
    )
}

/// The deployment's `spec.replicas`.
async fn replicas(k: &Kubectl<'_>) -> u32 {
    k.ok(&[
        "get",
        "deployment",
        "spin",
        "-o",
        "jsonpath={.spec.replicas}",
    ])
    .await
    .trim()
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpa_scales_spinners_up_and_down_after_its_window() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up_with(
        dir.path(),
        1,
        &["--horizontal-pod-autoscaler-sync-period", "2s"],
    )
    .await;
    let k = Kubectl {
        kubeconfig: &cluster.kubeconfig,
    };
    let manifest = dir.path().join("spin.yaml");
    std::fs::write(&manifest, deployment_yaml(&sample("spinner", "spinner"))).unwrap();
    k.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    k.ok(&["rollout", "status", "deployment/spin", "--timeout=90s"])
        .await;

    let out = k
        .ok(&[
            "autoscale",
            "deployment",
            "spin",
            "--cpu-percent=50",
            "--min=1",
            "--max=3",
        ])
        .await;
    assert!(
        out.contains("horizontalpodautoscaler.autoscaling/spin autoscaled"),
        "{out}"
    );
    // Scale down: one pod per 5 s, after a 10 s stabilization window.
    k.ok(&[
        "patch",
        "hpa",
        "spin",
        "--type=merge",
        "-p",
        r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":10,"policies":[{"type":"Pods","value":1,"periodSeconds":5}]}}}}"#,
    ])
    .await;

    // Each spinner uses its whole 100m request, twice the target: up to the max.
    let hpa = k
        .until(&["get", "hpa", "spin"], |out| {
            row(out, "spin").is_some_and(|r| r.len() >= 8 && r[6] == "3")
        })
        .await;
    eprintln!("kubectl get hpa:\n{hpa}");
    let cells = row(&hpa, "spin").unwrap();
    assert_eq!(cells[1], "Deployment/spin", "{hpa}");
    assert_eq!(cells[2], "cpu:", "{hpa}");
    let (current, target) = cells[3].split_once('/').unwrap();
    assert_eq!(target, "50%", "{hpa}");
    let current: u32 = current.trim_end_matches('%').parse().unwrap();
    assert!(
        current > 55,
        "utilization {current}% of the request:\n{hpa}"
    );
    assert_eq!((cells[4], cells[5]), ("1", "3"), "{hpa}");
    assert_eq!(replicas(&k).await, 3);
    // 1 -> 3 in one step or two (2.0 x 1 pod rounds either way), with Kubernetes' message.
    k.until(
        &["get", "events", "--field-selector", "reason=SuccessfulRescale"],
        |out| {
            out.contains(
                "New size: 3; reason: cpu resource utilization (percentage of request) above target",
            )
        },
    )
    .await;

    // Now the same load is well under a 400% target: the HPA wants 1, but holds for its
    // 10 s window, then steps down one pod per 5 s.
    let lowered = Instant::now();
    k.ok(&[
        "patch",
        "hpa",
        "spin",
        "--type=merge",
        "-p",
        r#"{"spec":{"metrics":[{"type":"Resource","resource":{"name":"cpu","target":{"type":"Utilization","averageUtilization":400}}}]}}"#,
    ])
    .await;
    let mut first_down = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n = replicas(&k).await;
        if n < 3 && first_down.is_none() {
            first_down = Some(lowered.elapsed());
        }
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {n} replicas after 90 s:\n{}",
            k.ok(&["describe", "hpa", "spin"]).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let first_down = first_down.unwrap();
    eprintln!("first scale down {first_down:?} after the target changed");
    assert!(
        first_down >= Duration::from_secs(7),
        "scaled down after {first_down:?}, inside the 10 s window"
    );
    let events = k
        .ok(&[
            "get",
            "events",
            "--field-selector",
            "reason=SuccessfulRescale",
        ])
        .await;
    assert!(
        events.contains("New size: 1; reason: All metrics below target"),
        "{events}"
    );
    let describe = k.ok(&["describe", "hpa", "spin"]).await;
    eprintln!("{describe}");
    assert!(describe.contains("ScalingActive"), "{describe}");
    cluster.terminate().await;
}
