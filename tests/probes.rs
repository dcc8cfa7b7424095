//! End-to-end: container probes on a real cluster (`wharf up`) running the hello-http
//! sample, whose `/healthz` fails while `POST /sick` has flagged it (until `POST /well`).
//!
//! - a failing readiness probe takes the pod out of its Service's Endpoints and
//!   EndpointSlice (and back in when it passes again), without restarting it;
//! - a failing liveness probe kills and restarts the container (exit code 137, reason
//!   Error, a `Killing` Event about the container);
//! - a startup probe that never passes keeps the container unstarted and unready (its
//!   readiness probe, which would pass, never runs) and restarts it past its threshold;
//!   a probe that cannot run on wasm (`exec`) is refused with its field path.
//!
//! Probes run every second. Every wait polls or watches the API under a deadline.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    Cluster, POD_TIMEOUT, build_samples, condition, container, free_port, http_ok, http_post,
    pod_ip, restart_count, running, sample, waiting_reason,
};
use k8s_openapi::api::core::v1::{Endpoints, Event, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// A hello-http pod labelled `app: NAME` serving on `port` (named `http`), with `probes`:
/// YAML lines of the container, indented by 6 spaces.
fn probed_pod(name: &str, port: u16, probes: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: hello
      image: {image}
      ports:
        - {{name: http, containerPort: {port}}}
      env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
      volumeMounts:
        - {{name: data, mountPath: /data}}
{probes}
  volumes:
    - {{name: data, emptyDir: {{}}}}
"#,
        image = sample("hello-http", "hello_http"),
    )
}

/// Polls `check` every 100 ms until it returns `Ok`, for at most `timeout`; panics with
/// what it last said.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut last = String::new();
    let done = tokio::time::timeout(timeout, async {
        loop {
            match check().await {
                Ok(v) => return v,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    done.unwrap_or_else(|_| panic!("{what}: not within {timeout:?}; last: {last}"))
}

/// POSTs `path` to the pod until it answers 200 (the container may be restarting).
async fn post_ok(addr: SocketAddr, path: &str) {
    eventually(&format!("POST {addr}{path}"), POD_TIMEOUT, || async move {
        match http_post(addr, path).await {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// The container's `ready` flag and the pod's Ready and ContainersReady conditions agree.
fn ready(pod: &Pod) -> bool {
    let flag = container(pod).is_some_and(|c| c.ready);
    let conditions = condition(pod, "Ready") == Some("True")
        && condition(pod, "ContainersReady") == Some("True");
    flag && conditions
}

fn not_ready(pod: &Pod) -> bool {
    container(pod).is_some_and(|c| !c.ready)
        && condition(pod, "Ready") == Some("False")
        && condition(pod, "ContainersReady") == Some("False")
}

/// The `ready` condition of the endpoint at `ip` in the slices of Service `svc`, and
/// whether the Endpoints list `ip` as ready (`addresses`) or not (`notReadyAddresses`).
async fn endpoint_state(
    client: &kube::Client,
    svc: &str,
    ip: &str,
) -> Result<(Option<bool>, Option<bool>), String> {
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .map_err(|e| e.to_string())?;
    let in_slice = list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .find(|e| e.addresses.iter().any(|a| a == ip))
        .map(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false));
    let endpoints: Api<Endpoints> = Api::default_namespaced(client.clone());
    let ep = endpoints.get_opt(svc).await.map_err(|e| e.to_string())?;
    let listed = |ready: bool| {
        ep.iter()
            .flat_map(|e| e.subsets.iter().flatten())
            .flat_map(|s| {
                if ready {
                    s.addresses.iter().flatten()
                } else {
                    s.not_ready_addresses.iter().flatten()
                }
            })
            .any(|a| a.ip == ip)
    };
    let in_endpoints = match (listed(true), listed(false)) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
        (true, true) => return Err(format!("{ip} is both ready and not ready: {ep:?}")),
    };
    Ok((in_slice, in_endpoints))
}

/// Waits until the Service's slice and Endpoints both say `ready` for `ip`.
async fn wait_endpoint(client: &kube::Client, svc: &str, ip: &str, ready: bool) {
    eventually(
        &format!("{ip} ready={ready} in the endpoints of {svc}"),
        POD_TIMEOUT,
        || async move {
            let state = endpoint_state(client, svc, ip).await?;
            if state == (Some(ready), Some(ready)) {
                Ok(())
            } else {
                Err(format!("(slice, endpoints) = {state:?}"))
            }
        },
    )
    .await;
}

async fn events_about(client: &kube::Client, name: &str) -> Result<Vec<Event>, String> {
    let events: Api<Event> = Api::default_namespaced(client.clone());
    events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .map(|l| l.items)
        .map_err(|e| e.to_string())
}

/// Waits for an Event about pod `name` with `reason` whose message starts with `message`.
async fn wait_event(client: &kube::Client, name: &str, reason: &str, message: &str) -> Event {
    eventually(
        &format!("a {reason} Event about {name} saying {message:?}"),
        POD_TIMEOUT,
        || async move {
            let events = events_about(client, name).await?;
            events
                .iter()
                .find(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.message.as_deref().is_some_and(|m| m.starts_with(message))
                })
                .cloned()
                .ok_or_else(|| {
                    let seen: Vec<_> = events
                        .iter()
                        .map(|e| (e.reason.clone(), e.message.clone()))
                        .collect();
                    format!("{seen:?}")
                })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_readiness_takes_the_pod_out_of_its_service_and_back() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 1).await;
    let client = cluster.client.clone();
    let port = free_port();
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let svc = serde_json::from_value(json!({
        "metadata": {"name": "ready-web"},
        "spec": {"selector": {"app": "ready-web"},
                 "ports": [{"name": "http", "port": free_port(), "targetPort": "http"}]},
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    let probes = "      readinessProbe:
        httpGet: {path: /healthz, port: http}
        periodSeconds: 1
        failureThreshold: 1";
    cluster
        .apply("ready-web.yaml", &probed_pod("ready-web", port, probes))
        .await;

    let pod = cluster
        .wait_pod("ready-web", "ready", POD_TIMEOUT, |p| {
            running(p) && ready(p)
        })
        .await;
    let ip = pod_ip(&pod).to_string();
    let addr = SocketAddr::new(pod_ip(&pod), port);
    wait_endpoint(&client, "ready-web", &ip, true).await;

    // /healthz fails: the pod stays running, stops being ready, leaves the Service.
    post_ok(addr, "/sick").await;
    let pod = cluster
        .wait_pod("ready-web", "unready", POD_TIMEOUT, not_ready)
        .await;
    assert!(
        running(&pod),
        "a readiness failure does not stop the container"
    );
    wait_endpoint(&client, "ready-web", &ip, false).await;
    wait_event(
        &client,
        "ready-web",
        "Unhealthy",
        "Readiness probe failed: HTTP probe failed with statuscode: 503",
    )
    .await;
    // The guest still answers directly; only the Service stopped sending to it.
    assert!(http_ok(addr, "/", POD_TIMEOUT).await.contains("ready-web"));

    // Healthy again: back in.
    post_ok(addr, "/well").await;
    let pod = cluster
        .wait_pod("ready-web", "ready again", POD_TIMEOUT, |p| {
            running(p) && ready(p)
        })
        .await;
    wait_endpoint(&client, "ready-web", &ip, true).await;
    assert_eq!(restart_count(&pod), 0, "readiness never restarts");
    cluster.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_liveness_restarts_the_container() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 1).await;
    let client = cluster.client.clone();
    let port = free_port();
    let probes = "      livenessProbe:
        httpGet: {path: /healthz, port: http}
        periodSeconds: 1
        failureThreshold: 2";
    cluster
        .apply("live.yaml", &probed_pod("live", port, probes))
        .await;
    let pod = cluster
        .wait_pod("live", "running and ready", POD_TIMEOUT, |p| {
            running(p) && ready(p)
        })
        .await;
    assert_eq!(restart_count(&pod), 0);
    let addr = SocketAddr::new(pod_ip(&pod), port);

    post_ok(addr, "/sick").await;
    let pod = cluster
        .wait_pod("live", "restarted", POD_TIMEOUT, |p| restart_count(p) >= 1)
        .await;
    let last = container(&pod)
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .expect("the killed instance's terminated state");
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (137, Some("Error")),
        "{last:?}"
    );
    let killing = wait_event(
        &client,
        "live",
        "Killing",
        "Container hello failed liveness probe, will be restarted",
    )
    .await;
    assert_eq!(killing.type_.as_deref(), Some("Normal"));
    assert_eq!(
        killing.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("wharf-node")
    );
    assert_eq!(
        killing.involved_object.field_path.as_deref(),
        Some("spec.containers{hello}")
    );
    assert_eq!(killing.involved_object.kind.as_deref(), Some("Pod"));
    let unhealthy = wait_event(
        &client,
        "live",
        "Unhealthy",
        "Liveness probe failed: HTTP probe failed with statuscode: 503",
    )
    .await;
    assert_eq!(unhealthy.type_.as_deref(), Some("Warning"));

    // The flag is in the pod's volume, so the restarted container fails too until it is
    // cleared; then it runs and stays ready.
    post_ok(addr, "/well").await;
    cluster
        .wait_pod("live", "running and ready after /well", POD_TIMEOUT, |p| {
            running(p) && ready(p)
        })
        .await;
    cluster.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_startup_probe_gates_readiness_and_restarts_past_its_threshold() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 1).await;
    let client = cluster.client.clone();
    let port = free_port();
    // Nothing listens on `closed`; the readiness probe would pass if it ran.
    let closed = free_port();
    let probes = format!(
        "      startupProbe:
        tcpSocket: {{port: {closed}}}
        periodSeconds: 1
        failureThreshold: 2
      readinessProbe:
        httpGet: {{path: /healthz, port: http}}
        periodSeconds: 1"
    );
    cluster
        .apply("slow.yaml", &probed_pod("slow", port, &probes))
        .await;
    // A probe that cannot run on wasm is refused, with where it is in the spec.
    let exec = "      livenessProbe:
        exec: {command: [cat, /data/ok]}";
    cluster
        .apply("exec.yaml", &probed_pod("exec", free_port(), exec))
        .await;

    // Running, serving, never started nor ready, until the startup probe's failures kill
    // it (every version of the pod seen on the way is checked).
    let pod = cluster
        .wait_pod("slow", "restarted by its startup probe", POD_TIMEOUT, |p| {
            let c = container(p);
            assert!(
                c.is_none_or(|c| !c.ready && c.started != Some(true)),
                "started or ready before the startup probe passed: {c:?}"
            );
            assert_ne!(condition(p, "Ready"), Some("True"));
            restart_count(p) >= 1
        })
        .await;
    let last = container(&pod)
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .expect("the killed instance's terminated state");
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (137, Some("Error"))
    );
    wait_event(
        &client,
        "slow",
        "Killing",
        "Container hello failed startup probe, will be restarted",
    )
    .await;
    wait_event(
        &client,
        "slow",
        "Unhealthy",
        &format!("Startup probe failed: dial tcp {}:{closed}", pod_ip(&pod)),
    )
    .await;
    // The guest itself answers: only its probe keeps it out of service.
    let addr = SocketAddr::new(pod_ip(&pod), port);
    assert!(
        http_ok(addr, "/healthz", POD_TIMEOUT)
            .await
            .starts_with("ok")
    );
    let pod = cluster.pods().get("slow").await.unwrap();
    assert!(!ready(&pod), "{:?}", pod.status);

    let refused = cluster
        .wait_pod("exec", "refused", POD_TIMEOUT, |p| {
            waiting_reason(p) == Some("CreateContainerConfigError")
        })
        .await;
    let message = container(&refused)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert!(
        message.starts_with("spec.containers[0].livenessProbe.exec: Unsupported value"),
        "{message}"
    );
    wait_event(
        &client,
        "exec",
        "Failed",
        "Error: spec.containers[0].livenessProbe.exec",
    )
    .await;
    cluster.terminate().await;
}
