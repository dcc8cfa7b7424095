//! End-to-end: node tokens and pod logs with the real binary. `wharf token create` makes a
//! join token that obtains a node credential and nothing else, `wharf token delete`
//! revokes it; a `wharf node` joined with a short-lived token renews its own credential and
//! outlives the token, across a restart; `wharf logs` streams a pod's log from a fake node
//! log server through the API server's `pods/log` proxy.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    ControlProcess, NodeProcess, POD_TIMEOUT, TIMEOUT, build_samples, free_port, hello_pod,
    wait_node_ready, wharf,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Awaits `fut` for at most [`TIMEOUT`].
async fn within<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, fut).await.expect("timed out")
}

/// A client of the control plane that authenticates with `token` instead of the admin's.
async fn client_with_token(cp: &ControlProcess, token: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(cp.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.auth_info.token = Some(token.to_string().into());
    kube::Client::try_from(config).unwrap()
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test]
async fn node_tokens_join_report_and_are_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(dir.path()).await;

    let out = wharf(
        &cp.kubeconfig(),
        &[
            "token",
            "create",
            "--ttl",
            "1h",
            "--description",
            "e2e node",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr_text());
    let token = out.stdout_text().trim().to_string();
    assert!(token.starts_with("wharf-node."), "{token}");
    let id = token.split('.').nth(1).unwrap().to_string();

    let out = wharf(&cp.kubeconfig(), &["token", "list"]).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    let list = out.stdout_text();
    assert!(list.starts_with("ID "), "{list}");
    let row = list.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(row.ends_with("e2e node"), "{row}");
    // Only the hash is stored: the token itself is nowhere in the Secret.
    let admin = cp.client().await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "kube-system");
    let stored = within(secrets.get(&format!("wharf-node-token-{id}")))
        .await
        .unwrap();
    assert!(
        !serde_json::to_string(&stored)
            .unwrap()
            .contains(&token[18..])
    );

    let node = client_with_token(&cp, &token).await;
    let leases: Api<Lease> = Api::namespaced(node.clone(), "kube-node-lease");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "e2e-node"},
        "spec": {"holderIdentity": "e2e-node", "leaseDurationSeconds": 40}
    }))
    .unwrap();
    // A join token is not a node: it may only ask for a node credential.
    let err = within(leases.create(&PostParams::default(), &lease))
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(403), "{err}");

    let deployments: Api<Deployment> = Api::namespaced(node.clone(), "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "app", "image": "a.wasm"}]}}}
    }))
    .unwrap();
    let err = within(deployments.create(&PostParams::default(), &deployment))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &err else {
        panic!("{err}")
    };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert!(
        status.message.contains(&format!(
            "User \"system:node-bootstrap:{id}\" cannot create resource \"deployments\""
        )),
        "{}",
        status.message
    );
    let node_secrets: Api<Secret> = Api::namespaced(node.clone(), "kube-system");
    let err = within(node_secrets.list(&ListParams::default()))
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(403), "{err}");

    let out = wharf(&cp.kubeconfig(), &["token", "delete", &id]).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    assert_eq!(
        out.stdout_text().trim(),
        format!("node token \"{id}\" deleted")
    );
    let err = within(leases.get("e2e-node")).await.unwrap_err();
    assert_eq!(status_code(&err), Some(401), "{err}");

    let out = wharf(&cp.kubeconfig(), &["token", "delete", &id]).await;
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("not found"),
        "{}",
        out.stderr_text()
    );
}

/// What a fake node log server was asked: the request line, and where to write the log
/// (each string is one chunk; dropping the sender ends the response).
type LogRequest = (String, mpsc::UnboundedSender<String>);

/// A node log server on 127.0.0.1:0 speaking just enough HTTP/1.1 over TLS, as nodes
/// do: a node certificate for 127.0.0.1 from the cluster CA in `pki_dir`, the API
/// server's client certificate required. It checks the bearer token and streams chunks
/// as the test sends them.
async fn fake_node(
    token: String,
    pki_dir: &std::path::Path,
) -> (u16, mpsc::UnboundedReceiver<LogRequest>) {
    use wharf_control::nodetls;
    let ca = std::fs::read_to_string(pki_dir.join(wharf_control::pki::CA_CERT)).unwrap();
    let ip = "127.0.0.1".parse().unwrap();
    let (key, csr) = nodetls::node_csr("n1", &[ip], &[]).unwrap();
    let cert = nodetls::sign_node_csr(
        pki_dir,
        "n1",
        &csr,
        &["127.0.0.1".into()],
        std::time::Duration::from_secs(3600),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let cert = std::sync::Arc::new(
        nodetls::ReloadableCert::from_pem(&cert, &key.serialize_pem()).unwrap(),
    );
    let tls = tokio_rustls::TlsAcceptor::from(
        nodetls::server_config(&ca, cert, true, &[b"http/1.1"]).unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (token, seen, tls) = (token.clone(), seen_tx.clone(), tls.clone());
            tokio::spawn(async move {
                let Ok(stream) = tls.accept(tcp).await else {
                    return;
                };
                let (read, mut write) = tokio::io::split(stream);
                let mut lines = BufReader::new(read).lines();
                let request_line = lines.next_line().await.unwrap().unwrap_or_default();
                let mut authorized = false;
                while let Some(header) = lines.next_line().await.unwrap() {
                    if header.is_empty() {
                        break;
                    }
                    let lower = header.to_ascii_lowercase();
                    if lower.starts_with("authorization:") {
                        authorized = header[14..].trim() == format!("Bearer {token}");
                    }
                }
                if !authorized {
                    let _ = write
                        .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let (chunks_tx, mut chunks) = mpsc::unbounded_channel::<String>();
                seen.send((request_line, chunks_tx)).unwrap();
                write
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
                          transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
                    )
                    .await
                    .unwrap();
                while let Some(chunk) = chunks.recv().await {
                    let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                    if write.write_all(framed.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = write.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    (port, seen_rx)
}

#[tokio::test]
async fn logs_stream_from_the_node_through_the_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(dir.path()).await;
    let admin = cp.client().await;

    // The API server's credential towards nodes (made at bootstrap once it is wired;
    // made here otherwise, the same way).
    let proxy_token = within(wharf_control::apiserver::proxy::ensure_node_proxy_secret(
        &admin,
    ))
    .await
    .unwrap();
    let (port, mut requests) = fake_node(proxy_token, &dir.path().join("pki")).await;

    let nodes: Api<Node> = Api::all(admin.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
    within(nodes.create(&PostParams::default(), &node))
        .await
        .unwrap();
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}});
    within(nodes.patch_status("n1", &PatchParams::default(), &Patch::Merge(&status)))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "a.wasm"}]}
    }))
    .unwrap();
    within(pods.create(&PostParams::default(), &pod))
        .await
        .unwrap();

    // `wharf logs web --tail 5`: the whole answer, then exit 0.
    let kubeconfig = cp.kubeconfig();
    let logs =
        tokio::spawn(async move { wharf(&kubeconfig, &["logs", "web", "--tail", "5"]).await });
    let (request, lines) = within(requests.recv()).await.unwrap();
    assert!(
        request.starts_with("GET /containerLogs/default/web/app?follow=false"),
        "{request}"
    );
    assert!(request.contains("tailLines=5"), "{request}");
    lines.send("one\n".into()).unwrap();
    lines.send("two\n".into()).unwrap();
    drop(lines);
    let out = within(logs).await.unwrap();
    assert!(out.status.success(), "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "one\ntwo\n");

    // `wharf logs -f web`: each line is printed as the node writes it.
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["logs", "-f", "pod/web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(follow.stdout.take().unwrap()).lines();
    let (request, lines) = within(requests.recv()).await.unwrap();
    assert!(request.contains("follow=true"), "{request}");
    for line in ["first", "second"] {
        lines.send(format!("{line}\n")).unwrap();
        let printed = within(stdout.next_line()).await.unwrap();
        assert_eq!(printed.as_deref(), Some(line));
    }
    // The node ends the log: the command ends, successfully.
    drop(lines);
    assert_eq!(within(stdout.next_line()).await.unwrap(), None);
    let status = within(follow.wait()).await.unwrap();
    let mut stderr = String::new();
    within(follow.stderr.take().unwrap().read_to_string(&mut stderr))
        .await
        .unwrap();
    assert!(status.success(), "{stderr}");

    // A pod that is not on a node yet: kubectl's message.
    let pending: Pod = serde_json::from_value(json!({
        "metadata": {"name": "pending"},
        "spec": {"containers": [{"name": "app", "image": "a.wasm"}]}
    }))
    .unwrap();
    within(pods.create(&PostParams::default(), &pending))
        .await
        .unwrap();
    let out = wharf(&cp.kubeconfig(), &["logs", "pending"]).await;
    assert!(!out.status.success());
    assert_eq!(
        out.stderr_text().trim(),
        "Error from server (BadRequest): pod pending does not have a host assigned"
    );
}

/// The names of the node-credential Secrets that exist now for `node`.
async fn credentials_of(admin: &kube::Client, node: &str) -> Vec<String> {
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "kube-system");
    let params = ListParams::default().fields("type=wharf.dev/node-credential");
    let list = within(secrets.list(&params)).await.unwrap();
    list.items
        .into_iter()
        .filter(|s| {
            s.data
                .as_ref()
                .and_then(|d| d.get("node-name"))
                .is_some_and(|n| n.0 == node.as_bytes())
        })
        .filter_map(|s| s.metadata.name)
        .collect()
}

/// Applies a hello pod bound to `node` and waits for it to run: proof that the node's
/// credential works now (the node writes the pod's status).
async fn node_runs_a_pod(cp: &ControlProcess, dir: &std::path::Path, name: &str, node: &str) {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, hello_pod(name, node, free_port(), "")).unwrap();
    let out = wharf(&cp.kubeconfig(), &["apply", "-f", file.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    let pods: Api<Pod> = Api::default_namespaced(cp.client().await);
    let deadline = tokio::time::Instant::now() + POD_TIMEOUT;
    loop {
        let pod = within(pods.get(name)).await.unwrap();
        let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
        if phase == "Running" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod {name} on {node} is {phase:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_node_outlives_its_join_token_on_its_own_renewed_credential() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start_with(
        &dir.path().join("control"),
        &["--node-credential-validity", "6s"],
    )
    .await;
    let kubeconfig = dir.path().join("node.kubeconfig");
    let out = wharf(
        &cp.kubeconfig(),
        &[
            "token",
            "create",
            "--ttl",
            "3s",
            "--kubeconfig-out",
            kubeconfig.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr_text());
    let node = NodeProcess::start(
        dir.path(),
        &kubeconfig,
        "renewer",
        [127, 0, 0, 1].into(),
        &[],
    )
    .await;
    let admin = cp.client().await;
    wait_node_ready(&admin, "renewer", TIMEOUT).await;
    let credential = dir.path().join("renewer").join("node-credential");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&credential).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }

    // Renewed every ~4 s: three distinct credentials seen means the join token (3 s) and
    // the first credential (6 s) have both expired by now.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while seen.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "credentials seen: {seen:?}\n{}",
            node.log_tail(30)
        );
        seen.extend(credentials_of(&admin, "renewer").await);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let live = credentials_of(&admin, "renewer").await;
    assert!(
        live.len() <= 2,
        "replaced credentials are deleted: {live:?}"
    );
    node_runs_a_pod(&cp, dir.path(), "after-renewal", "renewer").await;

    // A restart uses the credential on disk: the join token is long gone.
    drop(node);
    let node = NodeProcess::start(
        dir.path(),
        &kubeconfig,
        "renewer",
        [127, 0, 0, 1].into(),
        &[],
    )
    .await;
    node_runs_a_pod(&cp, dir.path(), "after-restart", "renewer").await;
    assert!(
        !std::fs::read_to_string(&node.log)
            .unwrap()
            .contains("joining again"),
        "{}",
        node.log_tail(30)
    );
}
