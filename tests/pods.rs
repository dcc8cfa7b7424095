//! End-to-end: pods on a node. Each test starts its own `wharf up` (control plane and one
//! node agent, restart back-off base 200 ms) on 127.0.0.1:0 in a temp dir, applies pod
//! manifests that run the sample guests (built once per test process by
//! `samples/build.sh`), and watches what the node makes of them through the API, the
//! `wharf` CLI and HTTP to the pods' addresses.
//!
//! Clusters of tests running at the same time hand out the same pod addresses (127.64.0.2,
//! ...), so HTTP pods listen on a port of their own ([`common::free_port`]), except the one
//! pod applied from `samples/hello-http/pod.yaml` as is.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    Cluster, POD_TIMEOUT, TIMEOUT, build_samples, container, free_port, hello_pod, http_get,
    http_ok, phase, pod_ip, restart_count, running, sample, samples_dir, waiting_reason, within,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A fresh single-node cluster in a new temp dir (the dir outlives the cluster).
async fn start() -> (TempDir, Cluster) {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 1).await;
    (dir, cluster)
}

/// `wharf logs ARGS...`, which must succeed: its stdout.
async fn logs(cluster: &Cluster, args: &[&str]) -> String {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let out = cluster.wharf(&all).await;
    assert!(
        out.status.success(),
        "wharf {all:?} failed: {}",
        out.stderr_text()
    );
    out.stdout_text()
}

/// Polls `wharf logs POD` until it contains `needle`; returns the log.
async fn wait_logs(cluster: &Cluster, pod: &str, needle: &str) -> String {
    let mut last = String::new();
    let found = tokio::time::timeout(TIMEOUT, async {
        loop {
            let out = cluster.wharf(&["logs", pod]).await;
            last = format!("{}{}", out.stdout_text(), out.stderr_text());
            if out.status.success() && last.contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "the log of {pod} never showed {needle:?}; last: {last}"
    );
    last
}

/// How the first container ended, from its current state.
fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    container(pod)?.state.as_ref()?.terminated.as_ref()
}

fn ended(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// A pod running batch-p1 to completion (`restartPolicy: Never`); `args` in YAML.
fn batch_pod(name: &str, args: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: node-1
  restartPolicy: Never
  containers:
    - name: primes
      image: {image}
      args: {args}
"#,
        image = sample("batch-p1", "batch_p1"),
    )
}

/// The `tick N` numbers of a ticker's log lines.
fn ticks(log: &str) -> Vec<u64> {
    log.lines()
        .map(|l| {
            l.strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a ticker line: {l:?}"))
        })
        .collect()
}

fn consecutive(n: &[u64]) -> bool {
    n.windows(2).all(|w| w[1] == w[0] + 1)
}

/// The p99 of a set of durations.
fn p99(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let i = (sorted.len() * 99).div_ceil(100).saturating_sub(1);
    sorted[i]
}

/// CPU time (user + system) the process has used so far, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces):
    // state is field 3, utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on every Linux architecture wharf builds for.
    Duration::from_millis(ticks * 10)
}

/// `n` sequential GETs, each on a new connection: their latencies.
async fn latencies(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let (status, body) = http_get(addr, "/").await.unwrap();
        assert_eq!(status, 200, "{body}");
        out.push(start.elapsed());
    }
    out
}

#[tokio::test]
async fn the_three_kinds_of_workload_run() {
    let (_dir, cluster) = start().await;
    // The sample manifests name their images in the cluster registry.
    cluster.push_samples().await;

    // A wasi:http component, applied from the sample manifest as a user would.
    cluster
        .apply_file(&samples_dir().join("hello-http/pod.yaml"))
        .await;
    // A wasi:cli command that runs until stopped.
    cluster
        .apply_file(&samples_dir().join("ticker/pod.yaml"))
        .await;
    // A preview1 module run to completion.
    cluster
        .apply("batch.yaml", &batch_pod("batch", r#"["100000"]"#))
        .await;

    let pod = cluster
        .wait_pod("hello-http", "Running", POD_TIMEOUT, |p| {
            phase(p) == "Running" && running(p)
        })
        .await;
    let body = http_ok(SocketAddr::new(pod_ip(&pod), 8080), "/", TIMEOUT).await;
    assert!(
        body.contains("hello from pod hello-http on node node-1"),
        "{body}"
    );

    // A second pod of the same image starts from the compiled module: it answers within
    // one second of the apply.
    let port = free_port();
    let start = Instant::now();
    cluster
        .apply("hello-2.yaml", &hello_pod("hello-2", "node-1", port, ""))
        .await;
    let pod = cluster
        .wait_pod("hello-2", "given an address", TIMEOUT, |p| {
            p.status.as_ref().is_some_and(|s| s.pod_ip.is_some())
        })
        .await;
    let body = http_ok(SocketAddr::new(pod_ip(&pod), port), "/", TIMEOUT).await;
    let took = start.elapsed();
    assert!(
        body.contains("hello from pod hello-2 on node node-1"),
        "{body}"
    );
    eprintln!("a pod of a cached module answered {took:?} after the apply");
    assert!(
        took < Duration::from_secs(1),
        "a pod of a cached module answered {took:?} after the apply"
    );

    cluster
        .wait_pod("ticker", "Running", POD_TIMEOUT, |p| {
            phase(p) == "Running" && running(p)
        })
        .await;
    let log = wait_logs(&cluster, "ticker", "tick 2\n").await;
    assert!(log.starts_with("tick 1\ntick 2\n"), "{log}");

    let pod = cluster.wait_pod("batch", "ended", POD_TIMEOUT, ended).await;
    assert_eq!(phase(&pod), "Succeeded");
    let end = terminated(&pod).unwrap();
    assert_eq!(
        (end.exit_code, end.reason.as_deref()),
        (0, Some("Completed"))
    );
    let log = logs(&cluster, &["batch"]).await;
    assert!(
        log.contains("args: primes 100000\n")
            && log.contains("primes up to 100000: 9592, largest 99991\n"),
        "{log}"
    );

    cluster.terminate().await;
}

#[tokio::test]
async fn env_args_and_volumes_reach_the_guest() {
    // Plain values, `$(VAR)` expansion, ConfigMap and Secret keys, `envFrom` with a prefix,
    // the downward API, args, and ConfigMap and Secret volumes, as batch-p1 echoes them.
    let (_dir, cluster) = start().await;
    let manifest = format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  greeting: hi from a configmap
  app.conf: mode=fast
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
stringData:
  token: s3cret
---
apiVersion: v1
kind: Pod
metadata:
  name: env-check
spec:
  nodeName: node-1
  restartPolicy: Never
  containers:
    - name: primes
      image: {}
      args: ["10", "two words", "--flag"]
      envFrom:
        - {{configMapRef: {{name: settings}}, prefix: CFG_}}
      env:
        - {{name: GREETING, value: plain value}}
        - name: FROM_CM
          valueFrom: {{configMapKeyRef: {{name: settings, key: greeting}}}}
        - name: FROM_SECRET
          valueFrom: {{secretKeyRef: {{name: creds, key: token}}}}
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - name: POD_IP
          valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
        - name: NODE_NAME
          valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}
        - {{name: URL, value: "http://$(POD_IP):8080/$(POD_NAME)"}}
        - {{name: ECHO_ENV, value: "FROM_CM,FROM_SECRET,POD_NAME,POD_IP,NODE_NAME,URL,CFG_greeting"}}
        - {{name: ECHO_FILES, value: "/etc/app/app.conf,/etc/app/greeting,/etc/creds/token"}}
      volumeMounts:
        - {{name: config, mountPath: /etc/app}}
        - {{name: creds, mountPath: /etc/creds}}
  volumes:
    - name: config
      configMap: {{name: settings}}
    - name: creds
      secret: {{secretName: creds}}
"#,
        sample("batch-p1", "batch_p1")
    );
    let out = cluster.apply("env.yaml", &manifest).await;
    assert_eq!(
        out.stdout_text(),
        "configmap/settings created\nsecret/creds created\npod/env-check created\n"
    );

    let pod = cluster
        .wait_pod("env-check", "ended", POD_TIMEOUT, ended)
        .await;
    assert_eq!(phase(&pod), "Succeeded", "{:?}", pod.status);
    let ip = pod_ip(&pod);
    let log = logs(&cluster, &["env-check"]).await;
    for line in [
        "args: primes 10 two words --flag".to_string(),
        "GREETING=plain value".into(),
        "FROM_CM=hi from a configmap".into(),
        "FROM_SECRET=s3cret".into(),
        "POD_NAME=env-check".into(),
        format!("POD_IP={ip}"),
        "NODE_NAME=node-1".into(),
        format!("URL=http://{ip}:8080/env-check"),
        "CFG_greeting=hi from a configmap".into(),
        "file /etc/app/app.conf: mode=fast".into(),
        "file /etc/app/greeting: hi from a configmap".into(),
        "file /etc/creds/token: s3cret".into(),
        "primes up to 10: 4, largest 7".into(),
    ] {
        assert!(
            log.lines().any(|l| l == line),
            "no line {line:?} in the log:\n{log}"
        );
    }
    // The node's data dir (the Secret volume, logs, the image blob) is the owner's only.
    let node_dir = cluster.data_dir.join("nodes").join("node-1");
    let token = node_dir
        .join("pods")
        .join(pod.metadata.uid.as_deref().unwrap())
        .join("volumes/creds/token");
    assert!(token.is_file(), "{}", token.display());
    let open = readable_by_others(&node_dir);
    assert!(open.is_empty(), "readable by others: {open:#?}");
    cluster.terminate().await;
}

/// Every directory and file under `root` that has group or other permission bits.
fn readable_by_others(root: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if (meta.is_dir() || meta.is_file()) && mode & 0o077 != 0 {
            out.push((path.clone(), mode));
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
}

#[tokio::test]
async fn a_crashing_container_backs_off_longer_each_time() {
    let (_dir, cluster) = start().await;
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: crasher
spec:
  nodeName: node-1
  restartPolicy: Always
  containers:
    - name: crasher
      image: {}
      env:
        - {{name: CRASH_AFTER_MS, value: "100"}}
"#,
        sample("crasher", "crasher")
    );
    cluster.apply("crasher.yaml", &manifest).await;
    // Every status the node writes arrives as a watch event, in order.
    let watch = kube::runtime::watcher::watch_object(cluster.pods(), "crasher");
    let mut watch = std::pin::pin!(watch);

    // When each restart count was first seen (the count moves when the container ends).
    let mut seen: Vec<(i32, Instant)> = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    let mut last: Option<Pod> = None;
    let result = tokio::time::timeout(POD_TIMEOUT, async {
        while let Some(event) = watch.next().await {
            let Ok(Some(pod)) = event else { continue };
            let count = restart_count(&pod);
            if count > seen.last().map_or(0, |(c, _)| *c) {
                seen.push((count, Instant::now()));
            }
            if let Some(reason) = waiting_reason(&pod)
                && reasons.last().map(String::as_str) != Some(reason)
            {
                reasons.push(reason.to_string());
            }
            last = Some(pod);
            if count >= 5 {
                return;
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "restart counts seen: {seen:?}; last status: {:?}\n{}",
        last.and_then(|p| p.status),
        cluster.log_tail(30)
    );
    let pod = last.unwrap();
    let counts: Vec<i32> = seen.iter().map(|(c, _)| *c).collect();
    assert_eq!(counts, [1, 2, 3, 4, 5], "every restart is reported");
    assert!(
        reasons.iter().any(|r| r == "CrashLoopBackOff"),
        "waiting reasons seen: {reasons:?}"
    );
    let status = container(&pod).unwrap();
    let previous = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .unwrap();
    assert_eq!(
        (previous.exit_code, previous.reason.as_deref()),
        (1, Some("Error"))
    );
    // The back-off doubles from 200 ms: between the ends of runs k and k+1 lie the delay
    // 200 ms * 2^(k-1) and a 100 ms run (plus overheads), so about 0.3, 0.5, 0.9, 1.7 s.
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
    eprintln!("time between the ends of consecutive runs: {gaps:?}");
    assert!(
        gaps[3] >= Duration::from_millis(1200),
        "the 4th back-off should be 1.6 s: {gaps:?}"
    );
    assert!(
        gaps[2] > gaps[0] && gaps[3] > gaps[1] && gaps[3] > gaps[0] * 2,
        "the back-off does not grow: {gaps:?}"
    );
    // It now waits 3.2 s before its 6th run. Meanwhile the pod is still Running
    // (restartPolicy Always), and says why it is not ready.
    assert_eq!(phase(&pod), "Running");
    let out = cluster.wharf(&["get", "pod", "crasher"]).await;
    assert!(
        out.stdout_text().contains("CrashLoopBackOff"),
        "{}{}",
        out.stdout_text(),
        out.stderr_text()
    );
    // Between runs, the current log and `--previous` are both the run that just ended (as
    // with Kubernetes' `lastState.terminated`), not the one before it.
    let current = logs(&cluster, &["crasher", "--timestamps"]).await;
    let previous = logs(&cluster, &["crasher", "--timestamps", "--previous"]).await;
    let still_waiting = within("get", cluster.pods().get("crasher")).await.unwrap();
    if restart_count(&still_waiting) == 5 && waiting_reason(&still_waiting).is_some() {
        assert_eq!(previous, current, "--previous between runs");
    }
    assert!(previous.contains("crasher: goodbye"), "{previous}");
    cluster.terminate().await;
}

#[tokio::test]
async fn a_spinning_pod_neither_starves_others_nor_outlives_its_grace_period() {
    let (_dir, mut cluster) = start().await;
    let port = free_port();
    cluster
        .apply("hello.yaml", &hello_pod("hello", "node-1", port, ""))
        .await;
    let pod = cluster
        .wait_pod("hello", "Running", POD_TIMEOUT, running)
        .await;
    let addr = SocketAddr::new(pod_ip(&pod), port);
    http_ok(addr, "/", TIMEOUT).await;
    let baseline = latencies(addr, 50).await;

    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: spinner
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 2
  containers:
    - name: spinner
      image: {}
      resources:
        limits: {{cpu: 100m}}
"#,
        sample("spinner", "spinner")
    );
    cluster.apply("spinner.yaml", &manifest).await;
    cluster
        .wait_pod("spinner", "Running", POD_TIMEOUT, running)
        .await;

    // The CPU limit holds: over two seconds the whole process (node, control plane and the
    // spinner) uses far less than the core an unthrottled `loop {}` would take.
    let pid = cluster.child.id().unwrap();
    let (cpu0, wall0) = (cpu_time(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let share = (cpu_time(pid) - cpu0).as_secs_f64() / wall0.elapsed().as_secs_f64();
    assert!(
        share < 0.5,
        "with a 100m spinner the node used {share:.2} of a core"
    );

    // A starved server is slow on every round; a busy machine (other tests, other builds)
    // makes one round slow now and then: the best of three rounds must be within bounds.
    let base = p99(&baseline);
    let bound = Duration::from_millis(200).max(base * 3);
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let loaded = p99(&latencies(addr, 50).await);
        rounds.push(loaded);
        if loaded < bound {
            break;
        }
    }
    eprintln!("hello-http p99: {base:?} alone, {rounds:?} next to the spinner");
    let best = *rounds.iter().min().unwrap();
    assert!(
        best < bound,
        "the spinner delays hello-http: p99 {rounds:?} (alone {base:?})"
    );
    assert!(cluster.is_running());

    // Deleting it stops the guest (which never yields on its own) within the grace period.
    let start = Instant::now();
    within(
        "deleting the spinner",
        cluster.pods().delete("spinner", &DeleteParams::default()),
    )
    .await
    .unwrap();
    cluster.wait_pod_gone("spinner", TIMEOUT).await;
    let took = start.elapsed();
    eprintln!("deleting the spinner took {took:?}");
    assert!(
        took < Duration::from_secs(2 + 3),
        "deleting the spinner (grace 2 s) took {took:?}"
    );
    http_ok(addr, "/", TIMEOUT).await;
    cluster.terminate().await;
}

#[tokio::test]
async fn a_memory_hog_is_oom_killed_and_the_node_stays_ready() {
    let (_dir, mut cluster) = start().await;
    cluster.push_samples().await;
    cluster
        .apply_file(&samples_dir().join("hog/pod.yaml"))
        .await;
    let pod = cluster.wait_pod("hog", "ended", POD_TIMEOUT, ended).await;
    assert_eq!(phase(&pod), "Failed");
    let end = terminated(&pod).unwrap();
    assert_eq!(
        (end.exit_code, end.reason.as_deref()),
        (137, Some("OOMKilled")),
        "{end:?}"
    );
    assert_eq!(restart_count(&pod), 0, "restartPolicy Never");

    assert!(cluster.is_running(), "the node process died with its guest");
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let node = within("get node", nodes.get("node-1")).await.unwrap();
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status);
    assert_eq!(ready.as_deref(), Some("True"));
    let out = cluster.wharf(&["get", "pods"]).await;
    assert!(
        out.stdout_text().contains("OOMKilled"),
        "{}",
        out.stdout_text()
    );
    cluster.terminate().await;
}

/// Waits for an Event about pod `pod` with `reason` whose message starts with `message`.
async fn wait_event(cluster: &Cluster, pod: &str, reason: &str, message: &str) -> String {
    let events: Api<Event> = Api::default_namespaced(cluster.client.clone());
    let params = ListParams::default().fields(&format!("involvedObject.name={pod}"));
    let found = tokio::time::timeout(TIMEOUT, async {
        loop {
            let listed = events.list(&params).await.unwrap();
            if let Some(m) = listed.items.iter().find_map(|e| {
                let m = e.message.as_deref()?;
                (e.reason.as_deref() == Some(reason) && m.starts_with(message)).then_some(m)
            }) {
                return m.to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {reason} Event about {pod} saying {message:?}"))
}

/// An image URL that never answers: while the node waits on it, the container shows
/// `ContainerCreating` and a `Pulling` Event names the image, at once rather than when the
/// pull times out; an image that pulls gets a `Pulled` Event saying how long it took.
#[tokio::test]
async fn a_pull_in_progress_shows_container_creating_and_a_pulling_event() {
    let (_dir, cluster) = start().await;
    // Accepts connections and never answers them.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/app.wasm", hang.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            open.push(s);
        }
    });
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hanging-pull\nspec:\n  nodeName: node-1\n  \
         containers:\n    - name: app\n      image: {url}\n"
    );
    cluster.apply("hang.yaml", &manifest).await;
    let pod = cluster
        .wait_pod("hanging-pull", "ContainerCreating", TIMEOUT, |p| {
            waiting_reason(p) == Some("ContainerCreating")
        })
        .await;
    assert_eq!(phase(&pod), "Pending");
    wait_event(
        &cluster,
        "hanging-pull",
        "Pulling",
        &format!("Pulling image \"{url}\""),
    )
    .await;

    cluster
        .apply("pulls.yaml", &hello_pod("pulls", "node-1", free_port(), ""))
        .await;
    cluster
        .wait_pod("pulls", "Running", POD_TIMEOUT, running)
        .await;
    let image = sample("hello-http", "hello_http");
    wait_event(
        &cluster,
        "pulls",
        "Pulling",
        &format!("Pulling image \"{image}\""),
    )
    .await;
    let pulled = wait_event(
        &cluster,
        "pulls",
        "Pulled",
        &format!("Successfully pulled image \"{image}\" in "),
    )
    .await;
    // Kubernetes' wording: `in 12ms (12ms including waiting). Image size: N bytes.`
    assert!(
        pulled.contains("including waiting). Image size: ") && pulled.ends_with(" bytes."),
        "{pulled}"
    );
    held.abort();
    cluster.terminate().await;
}

#[tokio::test]
async fn a_wrong_digest_pin_is_an_image_pull_error() {
    let (_dir, cluster) = start().await;
    let image = sample("hello-http", "hello_http");
    let wrong = "0".repeat(64);
    let pinned = |name: &str, digest: &str| {
        hello_pod(name, "node-1", free_port(), "").replace(
            &format!("image: {image}\n"),
            &format!("image: {image}@sha256:{digest}\n"),
        )
    };
    cluster
        .apply("wrong.yaml", &pinned("wrong-pin", &wrong))
        .await;
    let pod = cluster
        .wait_pod("wrong-pin", "failing to pull", TIMEOUT, |p| {
            waiting_reason(p).is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
        })
        .await;
    assert_eq!(phase(&pod), "Pending");
    let message = container(&pod)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("digest mismatch") && message.contains(&wrong),
        "{message}"
    );
    // The pull is retried, with back-off.
    cluster
        .wait_pod("wrong-pin", "in ImagePullBackOff", TIMEOUT, |p| {
            waiting_reason(p) == Some("ImagePullBackOff")
        })
        .await;

    // The right pin (the digest the error names) runs.
    let right = message
        .split("sha256:")
        .last()
        .unwrap()
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect::<String>();
    assert_eq!(right.len(), 64, "{message}");
    assert_ne!(right, wrong);
    cluster
        .apply("right.yaml", &pinned("right-pin", &right))
        .await;
    let pod = cluster
        .wait_pod("right-pin", "Running", POD_TIMEOUT, running)
        .await;
    assert_eq!(container(&pod).unwrap().image_id, format!("sha256:{right}"));
    cluster.terminate().await;
}

#[tokio::test]
async fn container_logs_through_the_api() {
    let (_dir, cluster) = start().await;
    let ticker = |name: &str, env: &str, policy: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: node-1
  restartPolicy: {policy}
  containers:
    - name: ticker
      image: {}
      env: {env}
"#,
            sample("ticker", "ticker")
        )
    };
    cluster
        .apply(
            "ticker.yaml",
            &ticker("ticker", r#"[{name: INTERVAL_MS, value: "200"}]"#, "Always"),
        )
        .await;
    cluster
        .apply(
            "crasher.yaml",
            &format!(
                r#"apiVersion: v1
kind: Pod
metadata:
  name: crasher
spec:
  nodeName: node-1
  containers:
    - name: crasher
      image: {}
      env:
        - {{name: CRASH_AFTER_MS, value: "3000"}}
"#,
                sample("crasher", "crasher")
            ),
        )
        .await;

    // The whole log, and its last lines.
    cluster
        .wait_pod("ticker", "Running", POD_TIMEOUT, running)
        .await;
    wait_logs(&cluster, "ticker", "tick 4\n").await;
    let all = ticks(&logs(&cluster, &["ticker"]).await);
    assert!(
        all.len() >= 4 && all[0] == 1 && consecutive(&all),
        "{all:?}"
    );
    let last_two = ticks(&logs(&cluster, &["ticker", "--tail", "2"]).await);
    assert!(
        last_two.len() == 2 && consecutive(&last_two) && last_two[0] >= all[all.len() - 2],
        "{last_two:?} after {all:?}"
    );
    let stamped = logs(&cluster, &["pod/ticker", "--tail", "1", "--timestamps"]).await;
    let (stamp, line) = stamped.trim_end().split_once(' ').unwrap();
    assert!(
        stamp.parse::<jiff::Timestamp>().is_ok() && line.starts_with("tick "),
        "{stamped}"
    );

    // -f streams the lines the ticker prints from now on.
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["logs", "ticker", "-f", "--tail", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut followed = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        while followed.len() < 5 {
            let line = lines.next_line().await.unwrap().expect("-f ended early");
            followed.extend(ticks(&line));
        }
    })
    .await
    .expect("wharf logs -f did not stream 5 lines");
    follow.start_kill().unwrap();
    tokio::time::timeout(TIMEOUT, follow.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        consecutive(&followed) && followed[0] >= *all.last().unwrap(),
        "followed {followed:?} after {all:?}"
    );

    // -f ends by itself when the container's log ends.
    cluster
        .apply(
            "countdown.yaml",
            &ticker(
                "countdown",
                r#"[{name: INTERVAL_MS, value: "200"}, {name: TICKS, value: "3"}]"#,
                "Never",
            ),
        )
        .await;
    cluster
        .wait_pod("countdown", "started", POD_TIMEOUT, |p| {
            running(p) || ended(p)
        })
        .await;
    let out = cluster.wharf(&["logs", "-f", "countdown"]).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "tick 1\ntick 2\ntick 3\n");

    // --previous: the instance that ran before the current one.
    let pod = cluster
        .wait_pod("crasher", "Running", POD_TIMEOUT, running)
        .await;
    if restart_count(&pod) == 0 {
        let out = cluster.wharf(&["logs", "crasher", "--previous"]).await;
        let now = within("get", cluster.pods().get("crasher")).await.unwrap();
        assert!(
            !out.status.success() || restart_count(&now) > 0,
            "no previous instance yet, but: {}",
            out.stdout_text()
        );
    }
    cluster
        .wait_pod("crasher", "restarted", TIMEOUT, |p| {
            restart_count(p) == 1 && running(p)
        })
        .await;
    let previous = logs(&cluster, &["crasher", "--previous"]).await;
    assert!(
        previous.contains("crasher: exiting with status 1 in 3000 ms")
            && previous.ends_with("crasher: goodbye\n"),
        "{previous}"
    );
    let current = logs(&cluster, &["crasher"]).await;
    assert!(
        current.contains("crasher: exiting with status 1 in 3000 ms")
            && !current.contains("goodbye"),
        "the current instance has not ended yet: {current}"
    );
    cluster.terminate().await;
}

#[tokio::test]
async fn a_changed_image_restarts_the_container_with_it() {
    let (_dir, cluster) = start().await;
    let image = sample("hello-http", "hello_http");
    cluster
        .apply("img.yaml", &hello_pod("img", "node-1", free_port(), ""))
        .await;
    let pod = cluster
        .wait_pod("img", "Running", POD_TIMEOUT, running)
        .await;
    assert_eq!(container(&pod).unwrap().image, image);
    assert_eq!(restart_count(&pod), 0);

    // Kubernetes allows changing a running pod's image; the node restarts the container
    // with the new one (the same module under another reference).
    let new_image = format!("file://{image}");
    let patch =
        serde_json::json!({"spec": {"containers": [{"name": "hello", "image": new_image}]}});
    cluster
        .pods()
        .patch(
            "img",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(&patch),
        )
        .await
        .unwrap();
    let pod = cluster
        .wait_pod("img", "running the new image", POD_TIMEOUT, |p| {
            running(p) && container(p).is_some_and(|c| c.image == new_image)
        })
        .await;
    assert_eq!(restart_count(&pod), 1);
    let last = container(&pod)
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    assert!(last.is_some(), "{:?}", container(&pod));
    cluster.terminate().await;
}

/// Issue 19 through a real node: a pod's `wharf.dev/request-timeout` answers a request
/// that hangs with 504 and frees its instance, `wharf.dev/max-concurrency` refuses the
/// request beyond it with 503, and the Node shows its instance pool in its capacity.
#[tokio::test]
async fn request_timeout_and_concurrency_annotations_bound_a_pods_requests() {
    let (_dir, cluster) = start().await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let node = nodes.get("node-1").await.unwrap();
    let capacity = node.status.unwrap().capacity.unwrap_or_default();
    let instances: u32 = capacity["wharf.dev/instances"].0.parse().unwrap();
    assert!((64..=1000).contains(&instances), "{instances}");

    let port = free_port();
    let annotations = r#"wharf.dev/request-timeout: "1s", wharf.dev/max-concurrency: "1""#;
    cluster
        .apply(
            "bounded.yaml",
            &hello_pod("bounded", "node-1", port, annotations),
        )
        .await;
    let pod = cluster
        .wait_pod("bounded", "Running", POD_TIMEOUT, running)
        .await;
    let addr = SocketAddr::new(pod_ip(&pod), port);
    http_ok(addr, "/", TIMEOUT).await;

    // While a request hangs, the pod's one slot is taken: the next one is refused at once.
    // (A probe may take the slot just as the hung request arrives; then that one is
    // refused instead, and is sent again.)
    let (started, hung) = within("a request hangs while another is refused", async {
        loop {
            let started = Instant::now();
            let hung = tokio::spawn(http_get(addr, "/sleep/600000"));
            while !hung.is_finished() {
                let (status, _) = http_get(addr, "/").await.unwrap();
                if status == 503 {
                    return (started, hung);
                }
            }
            let (status, body) = hung.await.unwrap().unwrap();
            assert_eq!(status, 503, "{body}");
        }
    })
    .await;
    let (status, body) = within("the hung request", hung).await.unwrap().unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Its instance is gone: the slot serves again.
    let body = http_ok(addr, "/", TIMEOUT).await;
    assert!(body.contains("hello from pod bounded"), "{body}");
    cluster.terminate().await;
}
