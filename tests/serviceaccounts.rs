//! End-to-end: ServiceAccounts as kubectl users meet them. Every namespace gets its
//! `default` ServiceAccount within a second; `kubectl create token` issues a token that
//! acts as the ServiceAccount with what RBAC grants it, and is refused once the
//! ServiceAccount is deleted, once the pod it is bound to is deleted, and once it expires.
//! A guest reads its own token, the cluster CA and its namespace from
//! `/var/run/secrets/kubernetes.io/serviceaccount`, and that token is its ServiceAccount;
//! a guest whose pod allows `kubernetes.default.svc` calls the API over HTTPS with it and
//! can do exactly what its ServiceAccount may.
#![allow(clippy::unwrap_used)]

mod common;

use common::kubectl::Kubectl;
use common::{Cluster, ControlProcess, POD_TIMEOUT, TIMEOUT, build_samples, phase, sample};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use std::time::{Duration, Instant};

const UNAUTHORIZED: &str = "You must be logged in to the server";

/// kubectl with `token` instead of the admin's.
async fn as_token(k: &Kubectl<'_>, token: &str, args: &[&str]) -> common::kubectl::Ran {
    let mut all = vec!["--token", token];
    all.extend_from_slice(args);
    k.run(&all).await
}

#[tokio::test]
async fn every_namespace_has_a_default_service_account_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(&dir.path().join("data")).await;
    let client = control.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "fresh"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let created = Instant::now();
    let sas: Api<ServiceAccount> = Api::namespaced(client, "fresh");
    loop {
        if sas.get_opt("default").await.unwrap().is_some() {
            break;
        }
        assert!(
            created.elapsed() < Duration::from_secs(1),
            "no default ServiceAccount a second after the namespace"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for ns in ["default", "kube-system"] {
        let sas: Api<ServiceAccount> = Api::namespaced(control.client().await, ns);
        let deadline = Instant::now() + TIMEOUT;
        while sas.get_opt("default").await.unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "no default ServiceAccount in {ns}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    control.terminate().await;
}

#[tokio::test]
async fn kubectl_create_token_acts_as_the_service_account_until_it_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(&dir.path().join("data")).await;
    let kubeconfig = control.kubeconfig();
    let k = Kubectl {
        kubeconfig: &kubeconfig,
    };
    k.ok(&["create", "namespace", "a"]).await;
    k.ok(&["create", "namespace", "b"]).await;
    k.ok(&["create", "serviceaccount", "robot", "-n", "a"])
        .await;
    let token = k
        .ok(&["create", "token", "robot", "-n", "a", "--duration", "10m"])
        .await
        .trim()
        .to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");

    let r = as_token(&k, &token, &["auth", "whoami"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("system:serviceaccount:a:robot"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("system:serviceaccounts:a"),
        "{}",
        r.stdout
    );

    let r = as_token(&k, &token, &["get", "pods", "-n", "a"]).await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains(
            "Error from server (Forbidden): pods is forbidden: User \"system:serviceaccount:a:robot\" cannot list resource \"pods\" in API group \"\" in the namespace \"a\""
        ),
        "{}",
        r.stderr
    );
    k.ok(&[
        "create",
        "rolebinding",
        "robot-views",
        "--clusterrole=view",
        "--serviceaccount=a:robot",
        "-n",
        "a",
    ])
    .await;
    let r = as_token(&k, &token, &["get", "pods", "-n", "a"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let r = as_token(&k, &token, &["get", "pods", "-n", "b"]).await;
    assert!(!r.ok);
    assert!(r.stderr.contains("(Forbidden)"), "{}", r.stderr);
    let r = as_token(&k, &token, &["auth", "can-i", "delete", "pods", "-n", "a"]).await;
    assert_eq!(r.stdout.trim(), "no", "{}{}", r.stdout, r.stderr);

    k.ok(&["delete", "serviceaccount", "robot", "-n", "a"])
        .await;
    let r = as_token(&k, &token, &["get", "pods", "-n", "a"]).await;
    assert!(!r.ok);
    assert!(r.stderr.contains(UNAUTHORIZED), "{}", r.stderr);
    // A new ServiceAccount of the same name is another account.
    k.ok(&["create", "serviceaccount", "robot", "-n", "a"])
        .await;
    let r = as_token(&k, &token, &["get", "pods", "-n", "a"]).await;
    assert!(r.stderr.contains(UNAUTHORIZED), "{}", r.stderr);
    control.terminate().await;
}

#[tokio::test]
async fn a_token_bound_to_a_pod_is_refused_once_the_pod_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(&dir.path().join("data")).await;
    let kubeconfig = control.kubeconfig();
    let k = Kubectl {
        kubeconfig: &kubeconfig,
    };
    k.ok(&["create", "serviceaccount", "robot"]).await;
    k.ok(&[
        "run",
        "p",
        "--image=app.wasm",
        "--overrides={\"spec\":{\"serviceAccountName\":\"robot\"}}",
    ])
    .await;
    let token = k
        .ok(&[
            "create",
            "token",
            "robot",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "p",
        ])
        .await
        .trim()
        .to_string();
    let r = as_token(&k, &token, &["auth", "whoami"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("system:serviceaccount:default:robot"),
        "{}",
        r.stdout
    );
    k.ok(&["delete", "pod", "p", "--wait=true"]).await;
    let r = as_token(&k, &token, &["auth", "whoami"]).await;
    assert!(!r.ok, "{}", r.stdout);
    assert!(r.stderr.contains(UNAUTHORIZED), "{}", r.stderr);
    // A pod that is not there cannot be bound to.
    let r = k
        .run(&[
            "create",
            "token",
            "robot",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "p",
        ])
        .await;
    assert!(!r.ok);
    assert!(r.stderr.contains("pods \"p\" not found"), "{}", r.stderr);
    // A pod naming a ServiceAccount that does not exist is refused.
    let r = k
        .run(&[
            "run",
            "q",
            "--image=app.wasm",
            "--overrides={\"spec\":{\"serviceAccountName\":\"ghost\"}}",
        ])
        .await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains(
            "pods \"q\" is forbidden: error looking up service account default/ghost: serviceaccount \"ghost\" not found"
        ),
        "{}",
        r.stderr
    );
    control.terminate().await;
}

#[tokio::test]
async fn a_token_is_refused_once_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start_with(
        &dir.path().join("data"),
        &["--service-account-max-token-expiration", "3s"],
    )
    .await;
    let kubeconfig = control.kubeconfig();
    let k = Kubectl {
        kubeconfig: &kubeconfig,
    };
    k.ok(&["create", "serviceaccount", "robot"]).await;
    let issued = Instant::now();
    let token = k
        .ok(&["create", "token", "robot", "--duration", "10m"])
        .await
        .trim()
        .to_string();
    let r = as_token(&k, &token, &["auth", "whoami"]).await;
    // Unless the machine is so slow that it already expired.
    if issued.elapsed() < Duration::from_secs(2) {
        assert!(r.ok, "{}{}", r.stdout, r.stderr);
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = as_token(&k, &token, &["auth", "whoami"]).await;
        if !r.ok {
            assert!(r.stderr.contains(UNAUTHORIZED), "{}", r.stderr);
            break;
        }
        assert!(Instant::now() < deadline, "the token never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        issued.elapsed() >= Duration::from_secs(2),
        "refused too early"
    );
    control.terminate().await;
}

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A batch-p1 pod printing the token files; `automount` sets the pod's choice if given.
fn token_pod(name: &str, automount: Option<bool>) -> String {
    let automount = automount
        .map(|a| format!("  automountServiceAccountToken: {a}\n"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: node-1
  restartPolicy: Never
{automount}  containers:
    - name: show
      image: {image}
      args: ["10"]
      env:
        - {{name: ECHO_FILES, value: "{SA_DIR}/token,{SA_DIR}/namespace,{SA_DIR}/ca.crt"}}
"#,
        image = sample("batch-p1", "batch_p1"),
    )
}

#[tokio::test]
async fn guests_read_a_token_of_their_service_account_bound_to_their_pod() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 1).await;
    let k = Kubectl {
        kubeconfig: &cluster.kubeconfig,
    };
    cluster
        .apply("token.yaml", &token_pod("reader", None))
        .await;
    cluster
        .apply("no-token.yaml", &token_pod("no-reader", Some(false)))
        .await;
    let ended = |p: &k8s_openapi::api::core::v1::Pod| matches!(phase(p), "Succeeded" | "Failed");
    let pod = cluster
        .wait_pod("reader", "ended", POD_TIMEOUT, ended)
        .await;
    assert_eq!(phase(&pod), "Succeeded", "{:?}", pod.status);
    let log = k.ok(&["logs", "reader"]).await;
    let token = log
        .lines()
        .find_map(|l| l.strip_prefix(&format!("file {SA_DIR}/token: ")))
        .unwrap_or_else(|| panic!("no token in the log:\n{log}"))
        .trim()
        .to_string();
    assert!(
        log.contains(&format!("file {SA_DIR}/namespace: default")),
        "{log}"
    );
    let ca = std::fs::read_to_string(cluster.data_dir.join("pki").join("ca.crt")).unwrap();
    assert!(
        log.contains(ca.trim()),
        "ca.crt is not the cluster CA:\n{log}"
    );

    // The token is the pod's ServiceAccount, with what RBAC grants it (nothing yet).
    let r = as_token(&k, &token, &["auth", "whoami"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("system:serviceaccount:default:default"),
        "{}",
        r.stdout
    );
    let r = as_token(&k, &token, &["get", "pods"]).await;
    assert!(
        r.stderr.contains(
            "User \"system:serviceaccount:default:default\" cannot list resource \"pods\""
        ),
        "{}",
        r.stderr
    );
    k.ok(&[
        "create",
        "rolebinding",
        "default-views",
        "--clusterrole=view",
        "--serviceaccount=default:default",
    ])
    .await;
    let r = as_token(&k, &token, &["get", "pods", "-o", "name"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("pod/reader"), "{}", r.stdout);

    // Without automount the guest sees nothing there.
    let pod = cluster
        .wait_pod("no-reader", "ended", POD_TIMEOUT, ended)
        .await;
    assert_eq!(phase(&pod), "Succeeded", "{:?}", pod.status);
    let log = k.ok(&["logs", "no-reader"]).await;
    assert!(
        log.contains(&format!("file {SA_DIR}/token: error:")),
        "{log}"
    );

    // Bound to the pod: gone with it.
    k.ok(&["delete", "pod", "reader", "--wait=true"]).await;
    let r = as_token(&k, &token, &["auth", "whoami"]).await;
    assert!(!r.ok, "{}", r.stdout);
    assert!(r.stderr.contains(UNAUTHORIZED), "{}", r.stderr);
    cluster.terminate().await;
}

/// A pod-lister pod of ServiceAccount `sa`; `allow` adds the pod's allow list entry for
/// the API server's in-cluster name.
fn lister_pod(name: &str, sa: &str, allow: bool) -> String {
    let annotations = if allow {
        "  annotations:\n    wharf.dev/allow-hosts: kubernetes.default.svc:443\n"
    } else {
        ""
    };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
{annotations}spec:
  nodeName: node-1
  serviceAccountName: {sa}
  restartPolicy: Never
  containers:
    - name: list
      image: {image}
"#,
        image = sample("pod-lister", "pod_lister"),
    )
}

/// The pod-lister sample, run as a guest: at `https://kubernetes.default.svc` (the
/// environment's KUBERNETES_SERVICE_HOST/PORT), verified with the cluster CA, with its
/// mounted token it lists its namespace's pods when its ServiceAccount is bound to `view`
/// there, and gets kube-apiserver's 403 when it is not; a pod that does not allow the
/// host cannot reach the API at all.
#[tokio::test]
async fn a_guest_calls_the_api_with_exactly_its_service_accounts_permissions() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), 1).await;
    let k = Kubectl {
        kubeconfig: &cluster.kubeconfig,
    };
    k.ok(&["create", "serviceaccount", "viewer"]).await;
    k.ok(&[
        "create",
        "rolebinding",
        "viewer-views",
        "--clusterrole=view",
        "--serviceaccount=default:viewer",
    ])
    .await;
    let mut pods = lister_pod("lister-viewer", "viewer", true);
    pods.push_str("---\n");
    pods.push_str(&lister_pod("lister-default", "default", true));
    pods.push_str("---\n");
    pods.push_str(&lister_pod("lister-unallowed", "viewer", false));
    cluster.apply("listers.yaml", &pods).await;
    let ended = |p: &k8s_openapi::api::core::v1::Pod| matches!(phase(p), "Succeeded" | "Failed");
    let url = "GET https://kubernetes.default.svc:443/api/v1/namespaces/default/pods";

    // Bound to `view`: the list, which includes the guest's own pod.
    let pod = cluster
        .wait_pod("lister-viewer", "ended", POD_TIMEOUT, ended)
        .await;
    let log = k.ok(&["logs", "lister-viewer"]).await;
    assert_eq!(phase(&pod), "Succeeded", "{log}");
    assert!(log.contains(&format!("{url}: 200")), "{log}");
    assert!(log.contains("pod lister-viewer "), "{log}");
    assert!(log.contains("pod lister-default "), "{log}");

    // Not bound: kube-apiserver's 403, as the ServiceAccount.
    let pod = cluster
        .wait_pod("lister-default", "ended", POD_TIMEOUT, ended)
        .await;
    let log = k.ok(&["logs", "lister-default"]).await;
    assert_eq!(phase(&pod), "Failed", "{log}");
    assert!(log.contains(&format!("{url}: 403")), "{log}");
    assert!(
        log.contains(
            "pods is forbidden: User \"system:serviceaccount:default:default\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        ),
        "{log}"
    );

    // The allow list decides first: without it the request never leaves the node.
    let pod = cluster
        .wait_pod("lister-unallowed", "ended", POD_TIMEOUT, ended)
        .await;
    let log = k.ok(&["logs", "lister-unallowed"]).await;
    assert_eq!(phase(&pod), "Failed", "{log}");
    assert!(
        log.contains(&format!("{url} failed: ErrorCode::HttpRequestDenied")),
        "{log}"
    );
    cluster.terminate().await;
}

/// A long-running guest's token is replaced before it expires: with tokens capped at 10
/// seconds, the file the node wrote changes within the token's life, and the new token
/// authenticates.
#[tokio::test]
async fn the_node_replaces_a_guests_token_before_it_expires() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up_with(
        dir.path(),
        1,
        &["--service-account-max-token-expiration", "10s"],
    )
    .await;
    let k = Kubectl {
        kubeconfig: &cluster.kubeconfig,
    };
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: long
spec:
  nodeName: node-1
  containers:
    - name: tick
      image: {image}
"#,
        image = sample("ticker", "ticker"),
    );
    cluster.apply("long.yaml", &yaml).await;
    let pod = cluster
        .wait_pod("long", "running", POD_TIMEOUT, common::running)
        .await;
    let uid = pod.metadata.uid.unwrap();
    let file = cluster
        .data_dir
        .join("nodes/node-1/tokens")
        .join(&uid)
        .join("token");
    let first = std::fs::read_to_string(&file).unwrap();
    let expires = expiry(&first);
    let deadline = Instant::now() + TIMEOUT;
    let second = loop {
        let now = std::fs::read_to_string(&file).unwrap();
        if now != first {
            break now;
        }
        assert!(Instant::now() < deadline, "the token was never replaced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Replaced at 80% of a 10 s life: before the first one expired.
    let replaced = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        replaced < expires,
        "replaced at {replaced}, expired at {expires}"
    );
    assert!(expiry(&second) > expires);
    let r = as_token(&k, &second, &["auth", "whoami"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    cluster.terminate().await;
}

/// The `exp` claim of a JWT (read, not verified).
fn expiry(token: &str) -> u64 {
    use base64::Engine as _;
    let payload = token.trim().split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    claims["exp"].as_u64().unwrap()
}
