//! End-to-end: the real, unmodified `kubectl` (default settings, client-side validation
//! on) against a `wharf up` cluster. Every command is one a user types; what is checked is
//! what kubectl prints, so a change in what the server answers (discovery, OpenAPI,
//! Tables, strategic merge patches, the scale subresource, watch, logs, deletion) shows up
//! here the way a user would see it.
//!
//! `scripts/deps` installs kubectl when the machine has none (Debian's
//! `kubernetes-client`); the test fails with that hint if it is missing.
#![allow(clippy::unwrap_used)]

mod common;

use common::kubectl::Kubectl;
use common::{Cluster, build_samples, free_port, sample, within};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};

fn deployment(image: &str, port: u16, greeting: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
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
      - name: hello
        image: {image}
        ports:
        - containerPort: {port}
          name: http
        env:
        - name: GREETING
          value: {greeting}
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        resources:
          limits:
            memory: 64Mi
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
"
    )
}

/// Lines of a table's body (without the header) whose first cell starts with `prefix`.
fn rows<'a>(table: &'a str, prefix: &str) -> Vec<&'a str> {
    table
        .lines()
        .skip(1)
        .filter(|l| l.starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drives_a_wharf_cluster() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 1).await;
    let k = Kubectl {
        kubeconfig: &cluster.kubeconfig,
    };
    let version = k.ok(&["version", "--client=true"]).await;
    eprintln!("kubectl: {}", version.lines().next().unwrap_or_default());

    // Discovery: every served kind with its short names, namespacing and kind.
    let resources = k.ok(&["api-resources"]).await;
    for needle in [
        "pods",
        "po ",
        "deployments",
        "deploy",
        "apps/v1",
        "Deployment",
        "replicasets",
        "services",
        "svc",
        "endpointslices",
        "leases",
        "jobs",
    ] {
        assert!(
            resources.contains(needle),
            "api-resources lacks {needle:?}:\n{resources}"
        );
    }

    // apply: created, then unchanged, then configured after a template change, with
    // kubectl's default validation (which asks the server's OpenAPI).
    let image = sample("hello-http", "hello_http");
    let port = free_port();
    let manifest = dir.path().join("web.yaml");
    std::fs::write(&manifest, deployment(&image, port, "one")).unwrap();
    let path = manifest.to_str().unwrap();
    let out = k.ok(&["apply", "-f", path]).await;
    assert!(out.contains("deployment.apps/web created"), "{out}");
    assert!(out.contains("service/web created"), "{out}");
    let out = k.ok(&["apply", "-f", path]).await;
    assert!(out.contains("deployment.apps/web unchanged"), "{out}");
    assert!(out.contains("service/web unchanged"), "{out}");
    let out = k
        .ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");

    std::fs::write(&manifest, deployment(&image, port, "two")).unwrap();
    let out = k.ok(&["apply", "-f", path]).await;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("service/web unchanged"), "{out}");
    let out = k
        .ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let env = k
        .ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[0].value}",
        ])
        .await;
    assert_eq!(env, "two");

    // Chunked lists (kubectl pages with limit and continue): one item per page lists the
    // same as one page.
    let whole = k.ok(&["get", "namespaces", "-o", "name"]).await;
    let chunked = k
        .ok(&["get", "namespaces", "-o", "name", "--chunk-size=1"])
        .await;
    assert!(whole.lines().count() >= 2, "{whole}");
    assert_eq!(chunked, whole);
    let table = k.ok(&["get", "namespaces", "--chunk-size=1"]).await;
    assert_eq!(table.lines().count(), whole.lines().count() + 1, "{table}");

    // An unknown field is refused by the server's strict field validation, naming it.
    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        deployment(&image, port, "one").replace("replicas: 2", "replicas: 2\n  replicaz: 3"),
    )
    .unwrap();
    let r = k.run(&["apply", "-f", typo.to_str().unwrap()]).await;
    assert!(!r.ok, "a manifest with an unknown field was accepted");
    assert!(r.stderr.contains("replicaz"), "{}", r.stderr);

    // get: server-side Table columns, wide, yaml, jsonpath, label and field selectors.
    let pods = k
        .until(&["get", "pods", "-l", "app=web"], |t| {
            rows(t, "web-").len() == 2 && rows(t, "web-").iter().all(|r| r.contains("Running"))
        })
        .await;
    let header: Vec<&str> = pods.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{pods}"
    );
    assert!(
        rows(&pods, "web-").iter().all(|r| r.contains("1/1")),
        "{pods}"
    );
    let wide = k.ok(&["get", "pods", "-o", "wide", "-l", "app=web"]).await;
    assert!(wide.lines().next().unwrap().contains("IP"), "{wide}");
    assert!(wide.contains("127.64."), "{wide}");
    assert!(wide.contains("node-1"), "{wide}");
    let yaml = k.ok(&["get", "pods", "-l", "app=web", "-o", "yaml"]).await;
    assert!(
        yaml.contains("kind: Pod") && yaml.contains("podIP: 127.64."),
        "{yaml}"
    );
    let names = k
        .ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .await;
    let names: Vec<&str> = names.split_whitespace().collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let running = k
        .ok(&[
            "get",
            "pods",
            "--field-selector",
            "status.phase=Running",
            "-o",
            "name",
        ])
        .await;
    for n in &names {
        assert!(running.contains(n), "{running}");
    }
    let none = k.ok(&["get", "pods", "-l", "app=nothing"]).await;
    assert!(none.trim().is_empty(), "{none}");
    let svc = k.ok(&["get", "svc,ep", "web"]).await;
    assert!(
        svc.contains("ClusterIP") && svc.contains("127.250."),
        "{svc}"
    );
    assert!(svc.contains(&format!(":{port}")), "{svc}");

    // describe.
    let described = k.ok(&["describe", "deployment", "web"]).await;
    assert!(described.contains("Replicas:"), "{described}");
    assert!(described.contains("GREETING:"), "{described}");
    let described = k.ok(&["describe", "pod", names[0]]).await;
    assert!(
        described.contains("Status:") && described.contains("Running"),
        "{described}"
    );
    assert!(described.contains("Scheduled"), "{described}");

    // get -w: a watch that sees a new pod arrive when the deployment scales up.
    let mut watch = k
        .command(&["get", "pods", "-l", "app=web", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = within("the watch's header", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(first.starts_with("NAME"), "{first}");
    // scale, without and with --current-replicas (a precondition the server checks).
    let out = k.ok(&["scale", "deployment/web", "--replicas=3"]).await;
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    let new_pod = within("a new pod in the watch", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let name = line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            if name.starts_with("web-") && !names.contains(&name.as_str()) {
                return name;
            }
        }
        panic!("the watch ended");
    })
    .await;
    watch.kill().await.unwrap();
    assert!(new_pod.starts_with("web-"));
    let r = k
        .run(&[
            "scale",
            "deployment/web",
            "--current-replicas=5",
            "--replicas=1",
        ])
        .await;
    assert!(!r.ok, "scale with a wrong --current-replicas succeeded");
    let out = k
        .ok(&[
            "scale",
            "deployment/web",
            "--current-replicas=3",
            "--replicas=2",
        ])
        .await;
    assert!(out.contains("scaled"), "{out}");
    k.until(
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        |s| s == "2",
    )
    .await;

    // rollout undo: back to the first template.
    let out = k.ok(&["rollout", "undo", "deployment/web"]).await;
    assert!(out.contains("rolled back"), "{out}");
    k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .await;
    k.until(
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[0].value}",
        ],
        |s| s == "one",
    )
    .await;

    // logs and logs -f of a container that prints five lines and exits: the follow stream
    // ends when the container does.
    let ticker = dir.path().join("ticker.yaml");
    std::fs::write(
        &ticker,
        format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: ticker
spec:
  restartPolicy: Never
  containers:
  - name: ticker
    image: {}
    env:
    - name: TICKS
      value: \"5\"
    - name: INTERVAL_MS
      value: \"300\"
",
            sample("ticker", "ticker")
        ),
    )
    .unwrap();
    k.ok(&["apply", "-f", ticker.to_str().unwrap()]).await;
    k.until(
        &["get", "pod", "ticker", "-o", "jsonpath={.status.phase}"],
        |s| s == "Running" || s == "Succeeded",
    )
    .await;
    let followed = k.ok(&["logs", "-f", "ticker"]).await;
    assert!(
        followed.contains("tick 1") && followed.contains("tick 5"),
        "{followed}"
    );
    let logs = k.ok(&["logs", "ticker", "--tail=1"]).await;
    assert_eq!(logs.trim(), "tick 5");

    // delete -f waits for the objects to be gone; then a missing object is a NotFound.
    let out = k.ok(&["delete", "-f", ticker.to_str().unwrap()]).await;
    assert!(out.contains("pod \"ticker\" deleted"), "{out}");
    let out = k.ok(&["delete", "-f", path]).await;
    assert!(out.contains("deployment.apps \"web\" deleted"), "{out}");
    let r = k.run(&["get", "pod", "ticker"]).await;
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("Error from server (NotFound): pods \"ticker\" not found"),
        "{}",
        r.stderr
    );
    let r = k.run(&["get", "deployment", "web"]).await;
    assert!(
        r.stderr.contains("Error from server (NotFound)"),
        "{}",
        r.stderr
    );
    k.until(&["get", "pods", "-l", "app=web", "-o", "name"], |s| {
        s.trim().is_empty()
    })
    .await;
    cluster.terminate().await;
}
