//! End-to-end: node tokens and pod logs with the real binary. `wharf token create` makes a
//! token that a kube client can use as a node would (report a Lease, not create a
//! Deployment), `wharf token delete` revokes it; `wharf logs` streams a pod's log from a
//! fake node log server through the API server's `pods/log` proxy.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ControlProcess, TIMEOUT, wharf};
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
    within(leases.create(&PostParams::default(), &lease))
        .await
        .unwrap();

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

/// A node log server on 127.0.0.1:0 speaking just enough HTTP/1.1: it checks the bearer
/// token and streams chunks as the test sends them.
async fn fake_node(token: String) -> (u16, mpsc::UnboundedReceiver<LogRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (token, seen) = (token.clone(), seen_tx.clone());
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
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
    let (port, mut requests) = fake_node(proxy_token).await;

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
