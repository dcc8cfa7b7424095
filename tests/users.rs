//! End-to-end: users with client certificates. `wharf kubeconfig create` writes a
//! kubeconfig whose certificate the cluster CA signed (CommonName the user, each
//! Organization a group); kubectl with it gets exactly what RBAC grants the user and its
//! groups, changes to the bindings count on the next request, and a certificate of
//! another cluster's CA, or an expired one, is refused at the handshake.
#![allow(clippy::unwrap_used)]

mod common;

use common::kubectl::Kubectl;
use common::{ControlProcess, TIMEOUT};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `wharf kubeconfig create --user USER ... -o DIR/USER.kubeconfig` for the control plane
/// in `data`.
async fn create_user(control: &ControlProcess, user: &str, extra: &[&str]) -> PathBuf {
    let out_path = control
        .data_dir
        .with_file_name(format!("{user}.kubeconfig"));
    let mut args = vec![
        "kubeconfig",
        "create",
        "--user",
        user,
        "--data-dir",
        control.data_dir.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = common::wharf(&control.kubeconfig(), &args).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains(&format!("user \"{user}\"")),
        "{}",
        out.stderr_text()
    );
    out_path
}

fn forbidden(verb: &str, ns: &str) -> String {
    format!(
        "Error from server (Forbidden): pods is forbidden: User \"carol\" cannot {verb} resource \"pods\" in API group \"\" in the namespace \"{ns}\""
    )
}

/// The resources of `kubectl auth can-i --list` with their verbs.
fn listed(out: &str) -> Vec<(String, String)> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let resource = l.split_whitespace().next()?;
            let verbs = l[l.rfind('[')?..].trim().to_string();
            Some((resource.to_string(), verbs))
        })
        .collect()
}

#[tokio::test]
async fn a_certificate_user_gets_what_rbac_grants_it_and_its_groups() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(&dir.path().join("data")).await;
    let kubeconfig = control.kubeconfig();
    let admin = Kubectl {
        kubeconfig: &kubeconfig,
    };
    let carol_config = create_user(
        &control,
        "carol",
        &["--group", "dev", "--group", "qa", "--ttl", "1h"],
    )
    .await;
    let yaml = std::fs::read_to_string(&carol_config).unwrap();
    assert!(yaml.contains("client-certificate-data"), "{yaml}");
    assert!(!yaml.contains("token"), "{yaml}");
    let carol = Kubectl {
        kubeconfig: &carol_config,
    };
    admin.ok(&["create", "namespace", "a"]).await;
    admin.ok(&["create", "namespace", "b"]).await;

    let whoami = carol.ok(&["auth", "whoami"]).await;
    for want in ["carol", "dev", "qa", "system:authenticated"] {
        assert!(whoami.contains(want), "{whoami}");
    }
    let r = carol.run(&["get", "pods", "-n", "a"]).await;
    assert!(r.stderr.contains(&forbidden("list", "a")), "{}", r.stderr);

    admin
        .ok(&[
            "create",
            "rolebinding",
            "carol-views",
            "--clusterrole=view",
            "--user=carol",
            "-n",
            "a",
        ])
        .await;
    carol.ok(&["get", "pods", "-n", "a"]).await;
    let r = carol
        .run(&["run", "x", "--image=app.wasm", "-n", "a"])
        .await;
    assert!(!r.ok);
    assert!(r.stderr.contains(&forbidden("create", "a")), "{}", r.stderr);
    let r = carol.run(&["get", "pods", "-n", "b"]).await;
    assert!(r.stderr.contains(&forbidden("list", "b")), "{}", r.stderr);
    let r = carol.run(&["delete", "pods", "--all", "-n", "b"]).await;
    assert!(!r.ok);

    // `can-i --list` shows exactly the view role's pods in a, and nothing of pods in b.
    let list = carol.ok(&["auth", "can-i", "--list", "-n", "a"]).await;
    let rules = listed(&list);
    let pods: Vec<_> = rules.iter().filter(|(r, _)| r == "pods").collect();
    assert_eq!(
        pods,
        [&("pods".to_string(), "[get list watch]".to_string())],
        "{list}"
    );
    assert!(!rules.iter().any(|(r, _)| r == "secrets"), "{list}");
    let list = carol.ok(&["auth", "can-i", "--list", "-n", "b"]).await;
    assert!(!listed(&list).iter().any(|(r, _)| r == "pods"), "{list}");

    // `edit` counts on the next request; deleting the bindings revokes both.
    admin
        .ok(&[
            "create",
            "rolebinding",
            "carol-edits",
            "--clusterrole=edit",
            "--user=carol",
            "-n",
            "a",
        ])
        .await;
    carol.ok(&["run", "x", "--image=app.wasm", "-n", "a"]).await;
    admin
        .ok(&[
            "delete",
            "rolebinding",
            "carol-edits",
            "carol-views",
            "-n",
            "a",
        ])
        .await;
    let r = carol.run(&["get", "pods", "-n", "a"]).await;
    assert!(r.stderr.contains(&forbidden("list", "a")), "{}", r.stderr);
    let r = carol.run(&["delete", "pod", "x", "-n", "a"]).await;
    assert!(!r.ok);

    // Through a group from the certificate.
    admin
        .ok(&[
            "create",
            "rolebinding",
            "dev-views",
            "--clusterrole=view",
            "--group=dev",
            "-n",
            "b",
        ])
        .await;
    carol.ok(&["get", "pods", "-n", "b"]).await;
    // The admin's token still works beside certificates.
    admin.ok(&["get", "pods", "-n", "a"]).await;
    control.terminate().await;
}

/// Whether kubectl's error is the TLS handshake refusing its certificate: with TLS 1.3
/// the client finishes its side of the handshake before the server checks the
/// certificate, so it may learn the refusal as the server's alert, as the connection
/// closing under it, or as its HTTP/2 connection never coming up. Callers check that
/// the server still answers a good credential, so a server that is down does not pass.
fn refused_at_handshake(stderr: &str) -> bool {
    [
        "certificate",
        "tls",
        "broken pipe",
        "connection reset",
        "EOF",
        "client conn could not be established",
    ]
    .iter()
    .any(|s| stderr.contains(s))
        && !stderr.contains("Forbidden")
}

/// A kubeconfig for the server of `server_config` with the user of `user_config`.
fn mixed(server_config: &Path, user_config: &Path, out: &Path) {
    let server: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(server_config).unwrap()).unwrap();
    let mut user: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(user_config).unwrap()).unwrap();
    user["clusters"] = server["clusters"].clone();
    user["contexts"][0]["context"]["cluster"] = server["clusters"][0]["name"].clone();
    std::fs::write(out, serde_json::to_string(&user).unwrap()).unwrap();
}

#[tokio::test]
async fn certificates_of_another_ca_and_expired_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(&dir.path().join("data")).await;
    let other = ControlProcess::start(&dir.path().join("other")).await;
    let stranger = create_user(&other, "mallory", &["--group", "system:masters"]).await;
    other.terminate().await;
    let forged = dir.path().join("forged.kubeconfig");
    mixed(&control.kubeconfig(), &stranger, &forged);
    let r = Kubectl {
        kubeconfig: &forged,
    }
    .run(&["get", "pods"])
    .await;
    assert!(!r.ok, "{}", r.stdout);
    assert!(refused_at_handshake(&r.stderr), "{}", r.stderr);

    let short = create_user(&control, "dave", &["--ttl", "2s"]).await;
    let dave = Kubectl { kubeconfig: &short };
    let created = Instant::now();
    let r = dave.run(&["auth", "whoami"]).await;
    if created.elapsed() < Duration::from_secs(1) {
        assert!(r.ok, "{}", r.stderr);
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = dave.run(&["auth", "whoami"]).await;
        if !r.ok {
            assert!(refused_at_handshake(&r.stderr), "{}", r.stderr);
            break;
        }
        assert!(Instant::now() < deadline, "the certificate never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The refusals were the certificates', not a server gone away.
    let admin_config = control.kubeconfig();
    Kubectl {
        kubeconfig: &admin_config,
    }
    .ok(&["get", "pods"])
    .await;
    control.terminate().await;
}
