//! End-to-end: machines joining a cluster, and nodes at different addresses reaching each
//! other's pods.
//!
//! - `wharf token create --kubeconfig-out FILE` writes a kubeconfig (cluster CA, server,
//!   the new node token, mode 0600) that `wharf node --kubeconfig FILE` joins with.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ControlProcess, NodeProcess, TIMEOUT, wait_node_ready, wharf};
use std::path::Path;

/// `wharf token create --kubeconfig-out PATH [extra...]`: the token printed.
async fn join_kubeconfig(cp: &ControlProcess, path: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "token",
        "create",
        "--kubeconfig-out",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = wharf(&cp.kubeconfig(), &args).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    out.stdout_text().trim().to_string()
}

#[tokio::test]
async fn a_node_joins_with_the_kubeconfig_token_create_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(&dir.path().join("control")).await;
    let path = dir.path().join("node.kubeconfig");
    // The API server's certificate covers `localhost`: a server other than the admin
    // kubeconfig's 127.0.0.1 shows that --server is what the node uses.
    let server = format!("https://localhost:{}", cp.addr.port());
    let token = join_kubeconfig(&cp, &path, &["--server", &server]).await;
    assert!(token.starts_with("wharf-node."), "{token}");

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&token), "{text}");
    assert!(text.contains(&format!("server: {server}")), "{text}");
    assert!(text.contains("certificate-authority-data: "), "{text}");
    let admin_token = std::fs::read_to_string(cp.data_dir.join("admin.token")).unwrap();
    assert!(!text.contains(admin_token.trim()), "the admin token leaked");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }

    // A node with nothing but that file joins and becomes Ready.
    let node = NodeProcess::start(dir.path(), &path, "joiner", [127, 0, 0, 1].into(), &[]).await;
    let admin = cp.client().await;
    wait_node_ready(&admin, "joiner", TIMEOUT).await;
    let out = wharf(&cp.kubeconfig(), &["get", "nodes"]).await;
    assert!(
        out.stdout_text().contains("joiner"),
        "{}",
        node.log_tail(20)
    );

    // A server that is not a URL is refused before any token is made.
    let out = wharf(
        &cp.kubeconfig(),
        &[
            "token",
            "create",
            "--kubeconfig-out",
            dir.path().join("bad").to_str().unwrap(),
            "--server",
            "localhost:6443",
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("not an http(s) URL"),
        "{}",
        out.stderr_text()
    );
    assert!(!dir.path().join("bad").exists());
}
