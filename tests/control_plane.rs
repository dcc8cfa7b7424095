//! End-to-end: the real `wharf` binary as a control plane on port 0 with a temp data dir,
//! driven by the real CLI and a kube client, killed with SIGKILL and restarted.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ControlProcess, wharf};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use std::collections::BTreeMap;
use std::time::Duration;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: e2e
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: e2e
data:
  mode: "fast"
  legacy: "no"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: e2e
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: hello.wasm
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: e2e
spec:
  selector: {app: web}
  ports:
    - port: 80
---
apiVersion: v1
kind: Secret
metadata:
  name: token
  namespace: e2e
stringData:
  value: s3cret
"#;

/// `(kind/name) -> resourceVersion` of everything the manifest created.
async fn versions(client: &kube::Client) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let ns: Api<Namespace> = Api::all(client.clone());
    out.insert(
        "namespace/e2e".into(),
        ns.get("e2e")
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap(),
    );
    let cm: Api<ConfigMap> = Api::namespaced(client.clone(), "e2e");
    for o in cm.list(&ListParams::default()).await.unwrap() {
        out.insert(
            format!("configmap/{}", o.metadata.name.unwrap()),
            o.metadata.resource_version.unwrap(),
        );
    }
    let d: Api<Deployment> = Api::namespaced(client.clone(), "e2e");
    for o in d.list(&ListParams::default()).await.unwrap() {
        out.insert(
            format!("deployment/{}", o.metadata.name.unwrap()),
            o.metadata.resource_version.unwrap(),
        );
    }
    let s: Api<Service> = Api::namespaced(client.clone(), "e2e");
    for o in s.list(&ListParams::default()).await.unwrap() {
        out.insert(
            format!("service/{}", o.metadata.name.unwrap()),
            o.metadata.resource_version.unwrap(),
        );
    }
    let sec: Api<Secret> = Api::namespaced(client.clone(), "e2e");
    for o in sec.list(&ListParams::default()).await.unwrap() {
        out.insert(
            format!("secret/{}", o.metadata.name.unwrap()),
            o.metadata.resource_version.unwrap(),
        );
    }
    out
}

#[tokio::test]
async fn apply_list_watch_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("app.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();

    let mut cp = ControlProcess::start(dir.path()).await;
    let client = cp.client().await;

    // A watch on configmaps in e2e, started before the apply, sees the create.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "e2e");
    let mut watch = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();

    let out = wharf(
        &cp.kubeconfig(),
        &["apply", "-f", manifest.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "apply failed: {}", out.stderr_text());
    assert_eq!(
        out.stdout_text().lines().collect::<Vec<_>>(),
        [
            "namespace/e2e created",
            "configmap/settings created",
            "deployment.apps/web created",
            "service/web created",
            "secret/token created",
        ]
    );

    let event = tokio::time::timeout(Duration::from_secs(10), watch.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match event {
        WatchEvent::Added(cm) => {
            assert_eq!(cm.metadata.name.as_deref(), Some("settings"));
            assert_eq!(
                cm.data.unwrap()["legacy"],
                "no",
                "YAML 1.1 booleans stay strings"
            );
        }
        other => panic!("expected ADDED, got {other:?}"),
    }

    // The CLI lists what was applied.
    let out = wharf(&cp.kubeconfig(), &["get", "deploy", "-n", "e2e"]).await;
    assert!(out.status.success(), "{}", out.stderr_text());
    let table = out.stdout_text();
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("web"), "{table}");

    // Applying again changes nothing.
    let out = wharf(
        &cp.kubeconfig(),
        &["apply", "-f", manifest.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr_text());
    assert!(
        out.stdout_text().lines().all(|l| l.ends_with(" unchanged")),
        "{}",
        out.stdout_text()
    );

    let before = versions(&client).await;
    assert_eq!(before.len(), 5, "{before:?}");

    // SIGKILL: no chance to flush anything that was not already durable.
    cp.kill().await;
    let cp = ControlProcess::start(dir.path()).await;
    let client = cp.client().await;
    let after = versions(&client).await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "every acknowledged object is back"
    );
    for (object, rv) in &before {
        let now = &after[object];
        if object.starts_with("deployment/") {
            // The deployment controller keeps writing the Deployment's status (before the
            // kill and again after the restart): its version may only move forward.
            assert!(
                now.parse::<u64>().unwrap() >= rv.parse::<u64>().unwrap(),
                "{object}: {rv} -> {now}"
            );
        } else {
            assert_eq!(rv, now, "{object} is back with the same resourceVersion");
        }
    }

    // A watch from before the crash still replays from the log on disk.
    let first_rv = before
        .values()
        .map(|v| v.parse::<u64>().unwrap())
        .min()
        .unwrap()
        - 1;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "e2e");
    let mut replay = cms
        .watch(&WatchParams::default(), &first_rv.to_string())
        .await
        .unwrap()
        .boxed();
    let event = tokio::time::timeout(Duration::from_secs(10), replay.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(event, WatchEvent::Added(cm) if cm.metadata.name.as_deref() == Some("settings"))
    );

    cp.terminate().await;
}

#[tokio::test]
async fn a_port_in_use_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(dir.path()).await;
    let other = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["control", "--data-dir"])
            .arg(other.path())
            .args(["--listen", &cp.addr.to_string()])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(&cp.addr.to_string()) && !err.contains("panicked"),
        "{err}"
    );
    cp.terminate().await;
}

#[tokio::test]
async fn bad_documents_are_reported_and_the_rest_applied() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlProcess::start(dir.path()).await;
    let manifest = dir.path().join("mixed.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: good-one\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: good-two\n",
    )
    .unwrap();
    let out = wharf(
        &cp.kubeconfig(),
        &["apply", "-f", manifest.to_str().unwrap()],
    )
    .await;
    assert!(!out.status.success());
    let err = out.stderr_text();
    assert!(
        err.contains("mixed.yaml") && err.contains("document 2") && err.contains("line"),
        "{err}"
    );
    let client = cp.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    assert!(cms.get("good-one").await.is_ok());
    assert!(cms.get("good-two").await.is_ok());

    let out = wharf(&cp.kubeconfig(), &["get", "cm", "missing"]).await;
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("NotFound"),
        "{}",
        out.stderr_text()
    );
    cp.terminate().await;
}

/// A `wharf control` killed (SIGKILL) while it creates a fresh data dir's store starts
/// again on that dir: first initialisation is atomic (issue 19). Each round watches for
/// the store's directory to appear and kills the process then, a little later each round,
/// so the kills land inside the store's creation.
#[tokio::test]
async fn kill_during_the_first_start_leaves_a_data_dir_that_starts() {
    const ROUNDS: u32 = 20;
    let root = tempfile::tempdir().unwrap();
    for round in 0..ROUNDS {
        let dir = root.path().join(format!("round-{round}"));
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["control", "--data-dir"])
            .arg(&dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (store, init) = (dir.join("store"), dir.join("store.init"));
        while !store.exists() && !init.exists() && std::time::Instant::now() < deadline {
            std::hint::spin_loop();
        }
        std::thread::sleep(Duration::from_micros(u64::from(round) * 150));
        child.start_kill().unwrap();
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap()
            .unwrap();

        let cp = ControlProcess::start(&dir).await;
        let api: Api<Namespace> = Api::all(cp.client().await);
        let list = tokio::time::timeout(Duration::from_secs(10), api.list(&ListParams::default()))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: listing namespaces: {e}"));
        assert!(
            list.items
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some("default")),
            "round {round}"
        );
        assert!(!init.exists(), "round {round}: the temporary dir is gone");
        cp.terminate().await;
    }
}

/// SIGKILL while several writers create objects: every create the API acknowledged is
/// there after the restart, and nothing that is there is half-written.
#[tokio::test]
async fn sigkill_under_concurrent_writers_loses_no_acknowledged_write() {
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlProcess::start(dir.path()).await;
    let client = cp.client().await;
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        writers.spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0.. {
                let name = format!("w{w}-{i}");
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name},
                    "data": {"writer": w.to_string(), "i": i.to_string()},
                }))
                .unwrap();
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    api.create(&Default::default(), &cm),
                )
                .await
                {
                    Ok(Ok(_)) => acknowledged.push(name),
                    // The process is gone: this writer is done.
                    _ => break,
                }
            }
            acknowledged
        });
    }
    // Let them write for a while, then kill without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cp.kill().await;
    let mut acknowledged = Vec::new();
    while let Some(names) = tokio::time::timeout(Duration::from_secs(30), writers.join_next())
        .await
        .unwrap()
    {
        acknowledged.extend(names.unwrap());
    }
    assert!(
        acknowledged.len() > WRITERS,
        "the writers wrote: {}",
        acknowledged.len()
    );

    let cp = ControlProcess::start(dir.path()).await;
    let api: Api<ConfigMap> = Api::namespaced(cp.client().await, "default");
    let listed = tokio::time::timeout(Duration::from_secs(20), api.list(&ListParams::default()))
        .await
        .unwrap()
        .unwrap();
    let present: std::collections::HashMap<String, ConfigMap> = listed
        .items
        .into_iter()
        .map(|cm| (cm.metadata.name.clone().unwrap(), cm))
        .collect();
    for name in &acknowledged {
        assert!(
            present.contains_key(name),
            "{name} was acknowledged and lost"
        );
    }
    for (name, cm) in &present {
        let data = cm.data.as_ref().expect("data");
        let (w, i) = name[1..].split_once('-').unwrap();
        assert_eq!(
            (data["writer"].as_str(), data["i"].as_str()),
            (w, i),
            "{name}"
        );
    }
    cp.terminate().await;
}

/// `wharf control` raises its open-files soft limit to the hard limit at start: started
/// with a soft limit of 256, it runs with the hard limit.
#[tokio::test]
async fn the_open_files_limit_is_raised_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "ulimit -Sn 256 && exec '{}' control --data-dir '{}' --listen 127.0.0.1:0",
        env!("CARGO_BIN_EXE_wharf"),
        dir.path().display()
    );
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    // The kubeconfig is written after the limit was raised (first thing in main).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !dir.path().join("kubeconfig").exists() {
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    assert_ne!(soft, "256", "{line}");
    assert_eq!(soft, hard, "{line}");
    child.start_kill().unwrap();
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
}

/// Every file under `dir` (recursively) that contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                found.push(path);
            }
        }
    }
    found
}

/// Secrets encrypted at rest: a Secret written with encryption on (the default) appears
/// nowhere in the data dir's files, as its value or its base64, before and after `wharf
/// secrets-encrypt rotate`, and reads back intact; one written before encryption was
/// turned on is re-encrypted by the rotation; the keys file is owner-only.
#[tokio::test]
async fn secrets_are_encrypted_at_rest_and_rotation_re_encrypts_them() {
    let dir = tempfile::tempdir().unwrap();
    let secret = |name: &str, value: &str| -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name}, "stringData": {"value": value}}))
        .unwrap()
    };
    // Before encryption: a plaintext Secret.
    let mut cp = ControlProcess::start_with(dir.path(), &["--secrets-encryption=false"]).await;
    let secrets: Api<Secret> = Api::default_namespaced(cp.client().await);
    let old_value = "plaintext-before-encryption-4f1c2b";
    secrets
        .create(&Default::default(), &secret("old", old_value))
        .await
        .unwrap();
    cp.kill().await;

    let mut cp = ControlProcess::start(dir.path()).await;
    let client = cp.client().await;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let value = "hunter2-wharf-at-rest-7d3e9a";
    secrets
        .create(&Default::default(), &secret("db", value))
        .await
        .unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(value);
    let read = |s: Secret| String::from_utf8(s.data.unwrap()["value"].0.clone()).unwrap();
    assert_eq!(read(secrets.get("db").await.unwrap()), value);
    for needle in [value.as_bytes(), b64.as_bytes()] {
        let found = files_containing(&cp.data_dir, needle);
        assert!(
            found.is_empty(),
            "{} found in {found:?}",
            String::from_utf8_lossy(needle)
        );
    }
    let status = wharf(&cp.kubeconfig(), &["secrets-encrypt", "status"]).await;
    assert!(status.status.success(), "{}", status.stderr_text());
    let text = status.stdout_text();
    assert!(text.contains("Encryption Status: Enabled"), "{text}");
    assert!(text.contains("Current Key: key-1"), "{text}");
    assert!(
        // `old` and what the first start wrote (the node proxy's Secret) are plaintext.
        text.contains("plaintext: 2") && text.contains("key-1: 1"),
        "{text}"
    );

    let rotated = wharf(&cp.kubeconfig(), &["secrets-encrypt", "rotate"]).await;
    assert!(rotated.status.success(), "{}", rotated.stderr_text());
    let text = rotated.stdout_text();
    assert!(
        text.contains("Current Key: key-2") && text.contains("Keys: key-2\n"),
        "{text}"
    );
    assert!(
        text.contains("key-2: ") && !text.contains("plaintext"),
        "{text}"
    );
    assert_eq!(read(secrets.get("db").await.unwrap()), value);
    assert_eq!(read(secrets.get("old").await.unwrap()), old_value);
    for needle in [value.as_bytes(), b64.as_bytes()] {
        let found = files_containing(&cp.data_dir, needle);
        assert!(
            found.is_empty(),
            "after rotation, {} found in {found:?}",
            String::from_utf8_lossy(needle)
        );
    }
    // The cluster restarts on the rotated keys.
    cp.kill().await;
    let cp = ControlProcess::start(dir.path()).await;
    let secrets: Api<Secret> = Api::default_namespaced(cp.client().await);
    assert_eq!(read(secrets.get("db").await.unwrap()), value);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let keys = cp.data_dir.join("pki/encryption-keys.json");
        assert_eq!(
            std::fs::metadata(keys).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
