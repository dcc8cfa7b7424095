//! End-to-end: the web dashboard (`https://ADDRESS/ui/`) in headless Chromium and
//! headless Firefox, driven by selenium from tests/python/dashboard_e2e.py against a `wharf up` cluster: log in with
//! the kubeconfig file, see the nodes and pods, follow a pod's log, apply a Deployment
//! from the YAML form and see it Ready, scale it, no console errors, a wrong token
//! refused, and an identity with fewer rights shown "Not allowed" where RBAC says so.
//! Screenshots of the main pages go to `target/ui-screenshots/BROWSER/`; the page's
//! transferred size and first paint are printed (`page: {...}`).
//!
//! `scripts/deps` installs Debian's `chromium`, `chromium-driver` and `firefox-esr`,
//! builds geckodriver (not packaged by Debian) into `target/tools`, and installs selenium
//! into the repository's venv (`.venv`). A browser that is not installed is skipped with
//! a line that says so; with a browser but without selenium the test fails with that
//! hint.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Cluster, build_samples, free_port, sample, samples_dir};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

const VIEWER: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: viewer}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-viewer}
rules:
  - apiGroups: [""]
    resources: [pods, pods/log, events]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: viewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-viewer}
subjects:
  - {kind: ServiceAccount, name: viewer, namespace: default}
"#;

/// The first of `names` found on PATH.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// A browser the script can drive: its name (the script's `BROWSER`) and the
/// environment naming its binary and WebDriver.
struct Browser {
    name: &'static str,
    env: [(&'static str, PathBuf); 2],
}

/// The browsers installed here, each with its WebDriver; says which are missing.
fn browsers() -> Vec<Browser> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    match (
        on_path(&["chromium", "chromium-browser"]),
        on_path(&["chromedriver"]),
    ) {
        (Some(chromium), Some(driver)) => found.push(Browser {
            name: "chromium",
            env: [("CHROMIUM", chromium), ("CHROMEDRIVER", driver)],
        }),
        _ => eprintln!(
            "Chromium skipped: chromium or chromedriver is not installed (scripts/deps \
             installs Debian's chromium and chromium-driver)"
        ),
    }
    // geckodriver is not packaged by Debian: scripts/deps builds it into target/tools.
    let gecko = on_path(&["geckodriver"])
        .or_else(|| Some(root.join("target/tools/bin/geckodriver")).filter(|p| p.is_file()));
    match (on_path(&["firefox-esr", "firefox"]), gecko) {
        (Some(firefox), Some(driver)) => found.push(Browser {
            name: "firefox",
            env: [("FIREFOX", firefox), ("GECKODRIVER", driver)],
        }),
        _ => eprintln!(
            "Firefox skipped: firefox or geckodriver is not installed (scripts/deps installs \
             Debian's firefox-esr and builds geckodriver into target/tools)"
        ),
    }
    found
}

/// Each installed browser in turn, each against a cluster of its own (the script
/// creates and deletes objects by fixed names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_headless_chromium_and_firefox() {
    let browsers = browsers();
    if browsers.is_empty() {
        eprintln!("skipped: no browser with its WebDriver is installed");
        return;
    }
    build_samples().await;
    for browser in &browsers {
        drive(browser).await;
    }
}

async fn drive(browser: &Browser) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up_with(dir.path(), 2, &["--usage-history-interval", "1s"]).await;
    cluster.push_samples().await;
    cluster
        .apply_file(&samples_dir().join("ticker/pod.yaml"))
        .await;
    // An identity that may read pods (and their logs and events) in `default` only: the
    // page must show what it may not see as not allowed, not break.
    cluster.apply("viewer.yaml", VIEWER).await;
    let token = kube::Api::<ServiceAccount>::default_namespaced(cluster.client.clone())
        .create_token_request("viewer", &Default::default(), &TokenRequest::default())
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();

    let kubeconfig = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    let server = kubeconfig.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.server.clone())
        .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("ui-screenshots")
        .join(browser.name);
    let python = root.join(".venv/bin/python3");
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        Command::new(&python)
            .arg(root.join("tests/python/dashboard_e2e.py"))
            .env("DASH_URL", format!("{}/ui/", server.trim_end_matches('/')))
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("NODES", cluster.nodes.to_string())
            .env("HELLO_IMAGE", sample("hello-http", "hello_http"))
            .env("PORT", free_port().to_string())
            .env("OUT_DIR", &out_dir)
            .env("BROWSER", browser.name)
            .envs(browser.env.iter().map(|(k, v)| (*k, v)))
            .env("VIEWER_TOKEN", &token)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("the dashboard browser script timed out in {}", browser.name))
    .unwrap_or_else(|e| {
        panic!(
            "running {}: {e}: run scripts/deps (.venv)",
            python.display()
        )
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'selenium'"),
        "selenium is not installed: run scripts/deps (it installs it into .venv)"
    );
    assert!(
        out.status.success() && stdout.contains("all steps passed"),
        "dashboard browser script failed in {}\nstdout:\n{stdout}\nstderr:\n{stderr}\ncluster log:\n{}",
        browser.name,
        cluster.log_tail(30)
    );
    // The steps passed, and the page's size and first paint (README's dashboard paragraph
    // quotes them).
    eprintln!("{}:\n{stdout}", browser.name);
    eprintln!("screenshots in {}", out_dir.display());
    cluster.terminate().await;
}
