//! End-to-end: RBAC as kubectl users meet it. A user from a static token file
//! (`--token-auth-file`) bound to `view` in namespace `a` reads pods there, is refused
//! with kube-apiserver's message elsewhere, and `kubectl auth can-i [--list] [--as]` and
//! `kubectl auth whoami` say exactly that; a binding to `cluster-admin` is refused.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ControlProcess, TIMEOUT};
use std::path::{Path, PathBuf};
use tokio::process::Command;

struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn kubectl(kubeconfig: &Path, args: &[&str]) -> Ran {
    let out = tokio::time::timeout(
        TIMEOUT,
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(kubeconfig.with_extension("cache"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
    .expect("running kubectl (scripts/deps installs it)");
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const POLICY: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: Namespace
metadata: {name: b}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-views, namespace: a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects:
- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: binding-manager, namespace: a}
rules:
- {apiGroups: [rbac.authorization.k8s.io], resources: [rolebindings], verbs: [get, create, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-manages-bindings, namespace: a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: binding-manager}
subjects:
- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
";

const TAKE_OVER: &str = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: take-over, namespace: a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects:
- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
";

/// A control plane with user `alice` (static token) bound to `view` in namespace `a`;
/// answers it, the admin's kubeconfig and alice's.
async fn cluster_with_alice(dir: &Path) -> (ControlProcess, PathBuf, PathBuf) {
    let tokens = dir.join("tokens.csv");
    std::fs::write(&tokens, "alice-secret-token,alice,1001,\"dev\"\n").unwrap();
    let data = dir.join("data");
    let control =
        ControlProcess::start_with(&data, &["--token-auth-file", tokens.to_str().unwrap()]).await;
    let admin = control.kubeconfig();
    // Alice's kubeconfig: the admin's with her token.
    let admin_yaml = std::fs::read_to_string(&admin).unwrap();
    let admin_token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    assert!(admin_yaml.contains(admin_token.trim()));
    let alice = dir.join("alice.kubeconfig");
    std::fs::write(
        &alice,
        admin_yaml.replace(admin_token.trim(), "alice-secret-token"),
    )
    .unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let r = kubectl(&admin, &["apply", "-f", policy.to_str().unwrap()]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    (control, admin, alice)
}

const FORBIDDEN_IN_B: &str = "Error from server (Forbidden): pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"b\"";

#[tokio::test]
async fn kubectl_users_get_what_rbac_grants() {
    let dir = tempfile::tempdir().unwrap();
    let (control, admin, alice) = cluster_with_alice(dir.path()).await;
    let r = kubectl(&alice, &["get", "pods", "-n", "a"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let r = kubectl(&alice, &["get", "pods", "-n", "b"]).await;
    assert!(!r.ok);
    assert!(r.stderr.contains(FORBIDDEN_IN_B), "{}", r.stderr);
    let r = kubectl(&alice, &["get", "pods", "-n", "a", "-o", "name"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    // The admin acting as alice (--as: impersonation headers) is alice.
    let r = kubectl(&admin, &["get", "pods", "-n", "b", "--as", "alice"]).await;
    assert!(!r.ok);
    assert!(r.stderr.contains(FORBIDDEN_IN_B), "{}", r.stderr);
    // Alice may not act as anyone.
    let r = kubectl(&alice, &["get", "pods", "-n", "a", "--as", "bob"]).await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains(
            "users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\""
        ),
        "{}",
        r.stderr
    );
    // Nor bind what she does not hold.
    let take_over = dir.path().join("take-over.yaml");
    std::fs::write(&take_over, TAKE_OVER).unwrap();
    let r = kubectl(&alice, &["apply", "-f", take_over.to_str().unwrap()]).await;
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        r.stderr
            .contains("is attempting to grant RBAC permissions not currently held"),
        "{}",
        r.stderr
    );
    control.terminate().await;
}

/// kubectl sends these reviews as protobuf bodies: `kubectl auth can-i [--list] [--as]`
/// and `kubectl auth whoami` end to end.
#[tokio::test]
async fn kubectl_auth_can_i_and_whoami() {
    let dir = tempfile::tempdir().unwrap();
    let (control, admin, alice) = cluster_with_alice(dir.path()).await;
    let r = kubectl(&alice, &["auth", "whoami"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("alice"), "{}", r.stdout);
    assert!(r.stdout.contains("system:authenticated"), "{}", r.stdout);

    for (args, want) in [
        (&["auth", "can-i", "list", "pods", "-n", "a"][..], "yes"),
        (&["auth", "can-i", "list", "pods", "-n", "b"][..], "no"),
        (&["auth", "can-i", "create", "pods", "-n", "a"][..], "no"),
        (&["auth", "can-i", "get", "secrets", "-n", "a"][..], "no"),
    ] {
        let r = kubectl(&alice, args).await;
        assert_eq!(r.stdout.trim(), want, "{args:?}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.ok, want == "yes", "{args:?}: exit status");
    }
    let r = kubectl(
        &admin,
        &["auth", "can-i", "list", "pods", "-n", "b", "--as", "alice"],
    )
    .await;
    assert_eq!(r.stdout.trim(), "no", "{}{}", r.stdout, r.stderr);
    let r = kubectl(
        &admin,
        &["auth", "can-i", "list", "pods", "-n", "a", "--as", "alice"],
    )
    .await;
    assert_eq!(r.stdout.trim(), "yes", "{}{}", r.stdout, r.stderr);
    let r = kubectl(&alice, &["auth", "can-i", "--list", "-n", "a"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let pods_line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("pods "))
        .unwrap_or_else(|| panic!("no pods line:\n{}", r.stdout));
    assert!(pods_line.contains("[get list watch]"), "{pods_line}");
    assert!(
        !r.stdout.lines().any(|l| l.starts_with("secrets ")),
        "{}",
        r.stdout
    );

    control.terminate().await;
}
