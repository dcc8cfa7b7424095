//! End-to-end: images from an OCI registry. Each test starts Debian's `docker-registry`
//! (the distribution registry, 2.8) on 127.0.0.1 with htpasswd basic auth, pushes images
//! with `skopeo` (a client no one here wrote) from OCI layouts the test writes, and runs
//! pods from them on a `wharf up` cluster whose node reaches the registry over plain HTTP
//! because its `--registries` file lists it as an `http://` endpoint.
//!
//! Needs `docker-registry`, `skopeo` and `htpasswd` (apache2-utils): `scripts/deps`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    Cluster, POD_TIMEOUT, TIMEOUT, build_samples, container, free_port, running, sample,
    waiting_reason, within,
};
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

const USER: &str = "alice";
const PASSWORD: &str = "s3cret";

fn sha(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `docker-registry serve` process with htpasswd auth; killed when dropped.
struct Registry {
    child: Child,
    addr: String,
    dir: PathBuf,
    /// The test CA's certificate (PEM file) when the registry serves TLS.
    ca: Option<PathBuf>,
}

/// A CA and a serving certificate for 127.0.0.1 signed by it, written to `dir`: (CA
/// certificate, serving certificate, serving key) paths.
fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wharf test registry CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

impl Registry {
    /// Starts a registry over plain HTTP (`tls` false) or over TLS with a test CA; with
    /// htpasswd basic auth, or anonymous (`auth` false).
    async fn start(dir: &Path, tls: bool, auth: bool) -> Registry {
        let dir = dir.join("registry");
        std::fs::create_dir_all(&dir).unwrap();
        let made = std::process::Command::new("htpasswd")
            .args(["-Bbc"])
            .arg(dir.join("htpasswd"))
            .args([USER, PASSWORD])
            .stderr(Stdio::null())
            .status()
            .expect("htpasswd (apache2-utils) is needed: run scripts/deps");
        assert!(made.success());
        let addr = format!("127.0.0.1:{}", free_port());
        let (ca, tls_config) = if tls {
            let (ca, cert, key) = test_ca(&dir);
            let config = format!(
                ", tls: {{certificate: {}, key: {}}}",
                cert.display(),
                key.display()
            );
            (Some(ca), config)
        } else {
            (None, String::new())
        };
        let config = format!(
            "version: 0.1\n\
             log: {{level: info, accesslog: {{disabled: false}}}}\n\
             storage: {{filesystem: {{rootdirectory: {root}}}, delete: {{enabled: true}}}}\n\
             http: {{addr: {addr}{tls_config}}}\n{auth}",
            root = dir.join("storage").display(),
            auth = if auth {
                format!(
                    "auth: {{htpasswd: {{realm: wharf-test, path: {}}}}}\n",
                    dir.join("htpasswd").display()
                )
            } else {
                String::new()
            },
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("docker-registry is needed: run scripts/deps");
        let registry = Registry {
            child,
            addr,
            dir,
            ca,
        };
        let sock: std::net::SocketAddr = registry.addr.parse().unwrap();
        within("the registry to listen", async {
            while tokio::net::TcpStream::connect(sock).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        registry
    }

    /// Kills the registry and waits for it to be gone.
    async fn stop(mut self) {
        self.child.start_kill().unwrap();
        within("the registry to exit", self.child.wait())
            .await
            .unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// How many times the registry served `GET` of a blob of `repo` (its access log).
    fn blob_gets(&self, repo: &str, digest_hex: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/sha256:{digest_hex} ");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }

    /// Where the registry keeps a blob's bytes.
    fn blob_data(&self, hex: &str) -> PathBuf {
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// `image` (REPO:TAG) in this registry.
    fn image(&self, image: &str) -> String {
        format!("{}/{image}", self.addr)
    }

    /// A `--registries` file: this registry over plain HTTP, or over TLS trusting the test
    /// CA.
    fn registries_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("registries.yaml");
        let text = match &self.ca {
            None => format!(
                "mirrors:\n  \"{a}\":\n    endpoint: [\"http://{a}\"]\n",
                a = self.addr
            ),
            Some(ca) => format!(
                "configs:\n  \"{a}\":\n    tls: {{ca_file: {ca}}}\n",
                a = self.addr,
                ca = ca.display()
            ),
        };
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Pushes the OCI layout at `layout` (tag `tag`) to `dest` (REPO:TAG) with skopeo.
    async fn push(&self, layout: &Path, tag: &str, dest: &str) {
        let out = within(
            "skopeo copy",
            Command::new("skopeo")
                .args(["copy", "--all", "--dest-tls-verify=false", "--dest-creds"])
                .arg(format!("{USER}:{PASSWORD}"))
                .arg(format!("oci:{}:{tag}", layout.display()))
                .arg(format!("docker://{}", self.image(dest)))
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("skopeo is needed: run scripts/deps");
        assert!(
            out.status.success(),
            "skopeo copy to {dest} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Writes an OCI image layout holding `blobs` and the top manifest `top` (of media type
/// `top_type`) tagged `tag`. Returns the top manifest's digest (hex).
fn write_layout(dir: &Path, tag: &str, top_type: &str, blobs: &[&[u8]], top: &[u8]) -> String {
    let blob_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir).unwrap();
    for blob in blobs.iter().chain([&top]) {
        std::fs::write(blob_dir.join(sha(blob)), blob).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": top_type, "digest": format!("sha256:{}", sha(top)), "size": top.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    sha(top)
}

fn descriptor(media_type: &str, blob: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{}", sha(blob)), "size": blob.len()})
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A CNCF wasm artifact of `wasm` as an OCI layout in `dir`: (manifest digest, layer digest).
fn wasm_artifact(dir: &Path, wasm: &[u8]) -> (String, String) {
    let config = br#"{"architecture":"wasm","os":"wasip2","layerDigests":[]}"#;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.wasm.config.v0+json", config),
        "layers": [descriptor("application/wasm", wasm)]})
    .to_string();
    let digest = write_layout(
        dir,
        "1.0",
        OCI_MANIFEST,
        &[config, wasm],
        manifest.as_bytes(),
    );
    (digest, sha(wasm))
}

/// A `wasi/wasm` platform image (an index, a manifest, one tar+gzip layer holding
/// `app.wasm`) as an OCI layout in `dir`, made with the system's tar. Returns the index's
/// digest.
fn wasi_image(dir: &Path, wasm: &[u8]) -> String {
    let staging = dir.join("rootfs");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("app.wasm"), wasm).unwrap();
    let tgz = dir.join("layer.tar.gz");
    let ok = std::process::Command::new("tar")
        .arg("czf")
        .arg(&tgz)
        .arg("-C")
        .arg(&staging)
        .arg("app.wasm")
        .status()
        .unwrap();
    assert!(ok.success());
    let layer = std::fs::read(&tgz).unwrap();
    let config = serde_json::json!({"architecture": "wasm", "os": "wasi",
        "rootfs": {"type": "layers", "diff_ids": []}, "config": {"Entrypoint": ["/app.wasm"]}})
    .to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config.as_bytes()),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer)]})
    .to_string();
    let mut entry = descriptor(OCI_MANIFEST, manifest.as_bytes());
    entry["platform"] = serde_json::json!({"os": "wasi", "architecture": "wasm"});
    let index =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]})
            .to_string();
    write_layout(
        dir,
        "1.0",
        OCI_INDEX,
        &[config.as_bytes(), &layer, manifest.as_bytes()],
        index.as_bytes(),
    )
}

/// An image that is not wasm (a chart-like artifact).
fn other_artifact(dir: &Path) -> String {
    let config = b"{}";
    let content = b"not wasm at all";
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.cncf.helm.config.v1+json", config),
        "layers": [descriptor("application/vnd.cncf.helm.chart.content.v1.tar+gzip", content)]})
    .to_string();
    write_layout(
        dir,
        "1.0",
        OCI_MANIFEST,
        &[config, content],
        manifest.as_bytes(),
    )
}

/// A `kubernetes.io/dockerconfigjson` Secret for `registry`.
async fn pull_secret(client: &kube::Client, name: &str, registry: &str, password: &str) {
    let config = serde_json::json!({"auths": {registry: {"username": USER, "password": password}}});
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64_encode(config.to_string().as_bytes())}}))
    .unwrap();
    let api: Api<Secret> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &secret).await.unwrap();
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A ticker pod from `image`, pulling with `secret` (if any), and `policy` (if any).
async fn ticker_pod(client: &kube::Client, name: &str, image: &str, secret: Option<&str>) {
    ticker_pod_with(client, name, image, secret, None).await;
}

async fn ticker_pod_with(
    client: &kube::Client,
    name: &str,
    image: &str,
    secret: Option<&str>,
    policy: Option<&str>,
) {
    let mut pod = serde_json::json!({
        "metadata": {"name": name},
        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": image,
            "resources": {"limits": {"memory": "16Mi"}}}]}});
    if let Some(secret) = secret {
        pod["spec"]["imagePullSecrets"] = serde_json::json!([{"name": secret}]);
    }
    if let Some(policy) = policy {
        pod["spec"]["containers"][0]["imagePullPolicy"] = serde_json::json!(policy);
    }
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let api: Api<Pod> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &pod).await.unwrap();
}

async fn events_about(client: &kube::Client, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::default_namespaced(client.clone());
    api.list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
}

/// Waits for an Event about `name` with `reason` whose message contains `needle`.
async fn wait_event(client: &kube::Client, name: &str, reason: &str, needle: &str) -> String {
    let mut last = Vec::new();
    let found = tokio::time::timeout(TIMEOUT, async {
        loop {
            last = events_about(client, name).await;
            if let Some(m) = last.iter().find_map(|e| {
                (e.reason.as_deref() == Some(reason))
                    .then(|| e.message.clone().unwrap_or_default())
                    .filter(|m| m.contains(needle))
            }) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    match found {
        Ok(m) => m,
        Err(_) => panic!(
            "no {reason} Event about {name} containing {needle:?}; events: {:?}",
            last.iter()
                .map(|e| format!("{:?}: {:?}", e.reason, e.message))
                .collect::<Vec<_>>()
        ),
    }
}

/// Waits until the pod's container waits in ErrImagePull or ImagePullBackOff with a message
/// containing every one of `needles`; returns the message.
async fn wait_pull_failure(cluster: &Cluster, name: &str, needles: &[&str]) -> String {
    let pod = cluster
        .wait_pod(name, "failing to pull", POD_TIMEOUT, |p| {
            let message = container(p)
                .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.message.clone())
                .unwrap_or_default();
            waiting_reason(p).is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
                && needles.iter().all(|n| message.contains(n))
        })
        .await;
    let message = container(&pod)
        .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.message.clone())
        .unwrap_or_default();
    eprintln!("{name}: {message}");
    message
}

fn image_id(pod: &Pod) -> String {
    container(pod)
        .map(|c| c.image_id.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_images_run_by_tag_and_by_digest_and_failed_pulls_name_their_cause() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path(), false, true).await;
    let wasm = std::fs::read(sample("ticker", "ticker")).unwrap();

    let artifact_dir = dir.path().join("artifact");
    let (manifest, layer) = wasm_artifact(&artifact_dir, &wasm);
    registry.push(&artifact_dir, "1.0", "wasm/ticker:1.0").await;
    let wasi_dir = dir.path().join("wasi");
    let index = wasi_image(&wasi_dir, &wasm);
    registry.push(&wasi_dir, "1.0", "wasi/ticker:1.0").await;
    let other_dir = dir.path().join("other");
    other_artifact(&other_dir);
    registry.push(&other_dir, "1.0", "charts/thing:1.0").await;
    // An artifact whose layer the registry will serve damaged.
    let damaged_dir = dir.path().join("damaged");
    let mut other_wasm = wasm.clone();
    other_wasm.extend_from_slice(b"\0"); // a different blob (trailing bytes in a custom section are not read)
    let (_, damaged_layer) = wasm_artifact(&damaged_dir, &other_wasm);
    registry.push(&damaged_dir, "1.0", "wasm/damaged:1.0").await;
    let data = registry.blob_data(&damaged_layer);
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    let registries = registry.registries_file(dir.path());
    let cluster_dir = dir.path().join("cluster");
    std::fs::create_dir_all(&cluster_dir).unwrap();
    let cluster = Cluster::up_with(
        &cluster_dir,
        1,
        &["--registries", registries.to_str().unwrap()],
    )
    .await;
    let client = cluster.client.clone();
    pull_secret(&client, "regcred", &registry.addr, PASSWORD).await;
    pull_secret(&client, "wrongcred", &registry.addr, "not-the-password").await;

    // By tag, applied with `wharf apply` (which leaves registry references alone).
    let by_tag = registry.image("wasm/ticker:1.0");
    let pod_yaml = |name: &str, image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: node-1\n  \
             imagePullSecrets: [{{name: regcred}}]\n  containers:\n    - name: app\n      \
             image: {image}\n"
        )
    };
    cluster
        .apply("by-tag.yaml", &pod_yaml("by-tag", &by_tag))
        .await;
    let pod = cluster
        .wait_pod("by-tag", "running", POD_TIMEOUT, running)
        .await;
    let repo = registry.image("wasm/ticker");
    assert_eq!(image_id(&pod), format!("{repo}@sha256:{manifest}"));
    assert_eq!(
        container(&pod).unwrap().image,
        by_tag,
        "status.image is the spec's image"
    );
    wait_event(
        &client,
        "by-tag",
        "Pulling",
        &format!("Pulling image \"{by_tag}\""),
    )
    .await;
    let pulled = wait_event(&client, "by-tag", "Pulled", "Successfully pulled image").await;
    eprintln!("by-tag: {pulled}");
    assert!(
        pulled.contains(&format!("Image size: {} bytes.", wasm.len()))
            && pulled.contains("including waiting"),
        "{pulled}"
    );

    // By digest, applied with kubectl: the same image, found in the node's store (already
    // present).
    let by_digest = format!("{repo}@sha256:{manifest}");
    let path = dir.path().join("by-digest.yaml");
    std::fs::write(&path, pod_yaml("by-digest", &by_digest)).unwrap();
    common::kubectl::Kubectl {
        kubeconfig: &cluster.kubeconfig,
    }
    .ok(&["apply", "-f", path.to_str().unwrap()])
    .await;
    let pod = cluster
        .wait_pod("by-digest", "running", POD_TIMEOUT, running)
        .await;
    assert_eq!(image_id(&pod), by_digest);
    wait_event(&client, "by-digest", "Pulled", "already present on machine").await;
    assert_eq!(
        registry.blob_gets("wasm/ticker", &layer),
        1,
        "the layer was downloaded once for both pods"
    );

    // The Node lists the image under the names the scheduler's image locality looks up:
    // the tag reference, the registry image ID and the manifest digest.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let wanted = [
        by_tag.clone(),
        by_digest.clone(),
        format!("sha256:{manifest}"),
    ];
    let mut listed = Vec::new();
    let found = tokio::time::timeout(TIMEOUT, async {
        loop {
            let node = nodes.get_status("node-1").await.unwrap();
            listed = node
                .status
                .and_then(|s| s.images)
                .unwrap_or_default()
                .into_iter()
                .map(|i| i.names.unwrap_or_default())
                .collect::<Vec<_>>();
            if listed
                .iter()
                .any(|names| wanted.iter().all(|w| names.contains(w)))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "status.images never named {wanted:?}: {listed:?}"
    );

    // The wasi/wasm platform image: an index, a tar+gzip layer.
    let wasi = registry.image("wasi/ticker:1.0");
    ticker_pod(&client, "wasi-image", &wasi, Some("regcred")).await;
    let pod = cluster
        .wait_pod("wasi-image", "running", POD_TIMEOUT, running)
        .await;
    assert_eq!(
        image_id(&pod),
        format!("{}@sha256:{index}", registry.image("wasi/ticker"))
    );

    // Failures, each naming its cause; the node stays Ready throughout.
    let wrong = "0".repeat(64);
    ticker_pod(
        &client,
        "wrong-digest",
        &format!("{repo}@sha256:{wrong}"),
        Some("regcred"),
    )
    .await;
    ticker_pod(
        &client,
        "missing-tag",
        &registry.image("wasm/ticker:2.0"),
        Some("regcred"),
    )
    .await;
    // With IfNotPresent a cached image runs without credentials, as in Kubernetes: these
    // two pull Always, so they ask the registry.
    ticker_pod_with(&client, "no-credentials", &by_tag, None, Some("Always")).await;
    ticker_pod_with(
        &client,
        "bad-credentials",
        &by_tag,
        Some("wrongcred"),
        Some("Always"),
    )
    .await;
    // Never, for an image not on the node.
    ticker_pod_with(
        &client,
        "never-pulled",
        &registry.image("wasm/ticker:3.0"),
        Some("regcred"),
        Some("Never"),
    )
    .await;
    ticker_pod(
        &client,
        "not-wasm",
        &registry.image("charts/thing:1.0"),
        Some("regcred"),
    )
    .await;
    ticker_pod(
        &client,
        "damaged-layer",
        &registry.image("wasm/damaged:1.0"),
        Some("regcred"),
    )
    .await;
    let m = wait_pull_failure(&cluster, "wrong-digest", &["manifest unknown"]).await;
    assert!(m.contains(&wrong), "{m}");
    wait_pull_failure(&cluster, "missing-tag", &["manifest unknown"]).await;
    let m = wait_pull_failure(&cluster, "no-credentials", &["401 Unauthorized"]).await;
    assert!(m.contains(&registry.addr), "{m}");
    wait_pull_failure(&cluster, "bad-credentials", &["401 Unauthorized"]).await;
    let m = wait_pull_failure(
        &cluster,
        "not-wasm",
        &[
            "application/vnd.cncf.helm.config.v1+json",
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            "accepted: a wasm artifact",
        ],
    )
    .await;
    assert!(m.contains("application/wasm"), "{m}");
    wait_pull_failure(
        &cluster,
        "damaged-layer",
        &[&format!("layer sha256:{damaged_layer}"), "do not match"],
    )
    .await;
    let pod = cluster
        .wait_pod("damaged-layer", "in ImagePullBackOff", POD_TIMEOUT, |p| {
            waiting_reason(p) == Some("ImagePullBackOff")
        })
        .await;
    let m = container(&pod)
        .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.message.clone())
        .unwrap_or_default();
    let damaged = registry.image("wasm/damaged:1.0");
    assert!(
        m.starts_with(&format!(
            "Back-off pulling image \"{damaged}\": ErrImagePull: "
        )) && m.contains("do not match"),
        "{m}"
    );
    let pod = cluster
        .wait_pod("never-pulled", "in ErrImageNeverPull", POD_TIMEOUT, |p| {
            waiting_reason(p) == Some("ErrImageNeverPull")
        })
        .await;
    let m = container(&pod)
        .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.message.clone())
        .unwrap_or_default();
    assert!(
        m.contains("is not present with pull policy of Never"),
        "{m}"
    );
    wait_event(&client, "not-wasm", "Failed", "Failed to pull image").await;
    wait_event(&client, "not-wasm", "Failed", "Error: ErrImagePull").await;
    // Nothing damaged was kept: the node's store has no blob under the damaged digest.
    let stored = cluster
        .data_dir
        .join("nodes/node-1/runtime/blobs/sha256")
        .join(&damaged_layer);
    assert!(!stored.exists(), "a damaged layer was stored");
    common::wait_node_ready(&client, "node-1", TIMEOUT).await;
    cluster.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_pods_of_one_new_image_download_it_once_over_tls_with_the_nodes_ca() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    // TLS with a CA only the node's --registries file names (no plain-HTTP endpoint), and
    // anonymous pulls (no credentials anywhere).
    let registry = Registry::start(dir.path(), true, false).await;
    let wasm = std::fs::read(sample("ticker", "ticker")).unwrap();
    let artifact_dir = dir.path().join("artifact");
    let (manifest, layer) = wasm_artifact(&artifact_dir, &wasm);
    registry
        .push(&artifact_dir, "1.0", "fleet/ticker:1.0")
        .await;
    let registries = registry.registries_file(dir.path());
    let cluster_dir = dir.path().join("cluster");
    std::fs::create_dir_all(&cluster_dir).unwrap();
    let cluster = Cluster::up_with(
        &cluster_dir,
        1,
        &["--registries", registries.to_str().unwrap()],
    )
    .await;
    let client = cluster.client.clone();
    let image = registry.image("fleet/ticker:1.0");
    let names: Vec<String> = (0..20).map(|i| format!("fleet-{i}")).collect();
    futures::future::join_all(names.iter().map(|n| ticker_pod(&client, n, &image, None))).await;
    for name in &names {
        let pod = cluster
            .wait_pod(name, "running", POD_TIMEOUT, running)
            .await;
        assert_eq!(
            image_id(&pod),
            format!("{}@sha256:{manifest}", registry.image("fleet/ticker"))
        );
    }
    assert_eq!(
        registry.blob_gets("fleet/ticker", &layer),
        1,
        "20 pods pulling one new image downloaded its layer more than once:\n{}",
        registry.log()
    );
    cluster.terminate().await;
}

/// The node's image store outlives the node: after `wharf up` is killed and the registry is
/// gone, the restarted node brings its pod back from the stored image (IfNotPresent), and
/// a new pod with `imagePullPolicy: Never` runs from it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pulled_image_outlives_a_node_restart_without_the_registry() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path(), false, true).await;
    let wasm = std::fs::read(sample("ticker", "ticker")).unwrap();
    let artifact_dir = dir.path().join("artifact");
    let (manifest, _) = wasm_artifact(&artifact_dir, &wasm);
    registry.push(&artifact_dir, "1.0", "wasm/ticker:1.0").await;
    let registries = registry.registries_file(dir.path());
    let cluster_dir = dir.path().join("cluster");
    std::fs::create_dir_all(&cluster_dir).unwrap();
    let flags = ["--registries", registries.to_str().unwrap()];
    let mut cluster = Cluster::up_with(&cluster_dir, 1, &flags).await;
    pull_secret(&cluster.client, "regcred", &registry.addr, PASSWORD).await;
    let image = registry.image("wasm/ticker:1.0");
    ticker_pod(&cluster.client, "kept", &image, Some("regcred")).await;
    let pod = cluster
        .wait_pod("kept", "running", POD_TIMEOUT, running)
        .await;
    let id = format!("{}@sha256:{manifest}", registry.image("wasm/ticker"));
    assert_eq!(image_id(&pod), id);

    cluster.kill().await;
    registry.stop().await;
    let cluster = Cluster::up_with(&cluster_dir, 1, &flags).await;
    let pod = cluster
        .wait_pod("kept", "running again", POD_TIMEOUT, |p| {
            running(p) && common::restart_count(p) >= 1
        })
        .await;
    assert_eq!(image_id(&pod), id);
    ticker_pod_with(&cluster.client, "never", &id, None, Some("Never")).await;
    let pod = cluster
        .wait_pod("never", "running", POD_TIMEOUT, running)
        .await;
    assert_eq!(image_id(&pod), id);
    cluster.terminate().await;
}

/// Transport: a registry reached through a mirror endpoint (`mirrors` in `--registries`),
/// with the pod's credential for the mirror's host; a plain-HTTP registry that is not
/// listed is spoken to over TLS only, and fails; a registry that accepts connections and
/// never answers fails the pull when `--image-pull-timeout` runs out. The node stays Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirrors_plain_http_only_when_listed_and_a_hanging_registry_times_out() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path(), false, true).await;
    let wasm = std::fs::read(sample("ticker", "ticker")).unwrap();
    let artifact_dir = dir.path().join("artifact");
    let (manifest, _) = wasm_artifact(&artifact_dir, &wasm);
    registry.push(&artifact_dir, "1.0", "wasm/ticker:1.0").await;
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            open.push(s);
        }
    });
    let registries = dir.path().join("registries.yaml");
    std::fs::write(
        &registries,
        format!(
            "mirrors:\n  mirror.invalid:\n    endpoint: [\"http://{}\"]\n",
            registry.addr
        ),
    )
    .unwrap();
    let cluster_dir = dir.path().join("cluster");
    std::fs::create_dir_all(&cluster_dir).unwrap();
    let cluster = Cluster::up_with(
        &cluster_dir,
        1,
        &[
            "--registries",
            registries.to_str().unwrap(),
            "--image-pull-timeout",
            "2s",
        ],
    )
    .await;
    let client = cluster.client.clone();
    pull_secret(&client, "regcred", &registry.addr, PASSWORD).await;

    // Through the mirror: the image keeps the name the pod gave it.
    ticker_pod(
        &client,
        "mirrored",
        "mirror.invalid/wasm/ticker:1.0",
        Some("regcred"),
    )
    .await;
    let pod = cluster
        .wait_pod("mirrored", "running", POD_TIMEOUT, running)
        .await;
    assert_eq!(
        image_id(&pod),
        format!("mirror.invalid/wasm/ticker@sha256:{manifest}")
    );

    // The same registry by its own name: not listed as plain HTTP, so TLS, which fails.
    ticker_pod_with(
        &client,
        "not-listed",
        &registry.image("wasm/ticker:1.0"),
        Some("regcred"),
        Some("Always"),
    )
    .await;
    wait_pull_failure(
        &cluster,
        "not-listed",
        &[&format!("https://{}/", registry.addr)],
    )
    .await;

    let image = format!("{hang_addr}/wasm/hang:1.0");
    ticker_pod(&client, "hangs", &image, None).await;
    let m = wait_pull_failure(&cluster, "hangs", &["timed out after 2s"]).await;
    assert!(m.contains(&image), "{m}");
    common::wait_node_ready(&client, "node-1", TIMEOUT).await;
    held.abort();
    cluster.terminate().await;
}

/// Image garbage collection (acceptance (d)): with thresholds every disk is over
/// (`--image-gc-high-threshold 1 --image-gc-low-threshold 0`) and no minimum age, the
/// image of a deleted pod is removed from the node (its layer blob deleted, gone from the
/// Node's `status.images` and from `wharf images`) while the image of a running pod stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_gc_removes_an_unused_image_and_keeps_a_used_one() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path(), false, true).await;
    let ticker = std::fs::read(sample("ticker", "ticker")).unwrap();
    let batch = std::fs::read(sample("batch-p1", "batch_p1")).unwrap();
    let (_, ticker_layer) = wasm_artifact(&dir.path().join("a"), &ticker);
    let (_, batch_layer) = wasm_artifact(&dir.path().join("b"), &batch);
    registry
        .push(&dir.path().join("a"), "1.0", "wasm/ticker:1.0")
        .await;
    registry
        .push(&dir.path().join("b"), "1.0", "wasm/batch:1.0")
        .await;
    let registries = registry.registries_file(dir.path());
    let cluster_dir = dir.path().join("cluster");
    std::fs::create_dir_all(&cluster_dir).unwrap();
    let flags = [
        "--registries",
        registries.to_str().unwrap(),
        "--image-gc-high-threshold",
        "1",
        "--image-gc-low-threshold",
        "0",
        "--image-minimum-gc-age",
        "0s",
        "--image-gc-period",
        "1s",
    ];
    let cluster = Cluster::up_with(&cluster_dir, 1, &flags).await;
    let client = cluster.client.clone();
    pull_secret(&client, "regcred", &registry.addr, PASSWORD).await;
    let kept = registry.image("wasm/ticker:1.0");
    let dropped = registry.image("wasm/batch:1.0");
    ticker_pod(&client, "kept", &kept, Some("regcred")).await;
    ticker_pod(&client, "dropped", &dropped, Some("regcred")).await;
    cluster
        .wait_pod("kept", "running", POD_TIMEOUT, running)
        .await;
    cluster
        .wait_pod("dropped", "pulled", POD_TIMEOUT, |p| {
            !image_id(p).is_empty()
        })
        .await;
    let blobs = cluster.data_dir.join("nodes/node-1/runtime/blobs/sha256");
    assert!(
        blobs.join(&batch_layer).is_file(),
        "the pulled layer is stored"
    );
    // While its pod exists the image is in use: collections every second keep it, and the
    // node reports both.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let image_names = || async {
        let node = nodes.get("node-1").await.unwrap();
        node.status
            .and_then(|s| s.images)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|i| i.names.unwrap_or_default())
            .collect::<Vec<String>>()
    };
    within("both images in status.images", async {
        loop {
            let names = image_names().await;
            if names.contains(&kept) && names.contains(&dropped) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let before = cluster.wharf(&["images", "--node", "node-1"]).await;
    let before = String::from_utf8_lossy(&before.stdout).into_owned();
    assert!(
        before.contains(&kept) && before.contains(&dropped),
        "{before}"
    );
    assert!(blobs.join(&batch_layer).is_file(), "kept while in use");

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.delete("dropped", &Default::default()).await.unwrap();
    let names = within("the unused image to leave status.images", async {
        loop {
            let names = image_names().await;
            if !names.iter().any(|n| n.contains("wasm/batch")) && !blobs.join(&batch_layer).exists()
            {
                return names;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(names.iter().any(|n| n == &kept), "{names:?}");
    assert!(
        blobs.join(&ticker_layer).is_file(),
        "the used image's layer stays"
    );
    let after = cluster.wharf(&["images", "--node", "node-1"]).await;
    let after = String::from_utf8_lossy(&after.stdout).into_owned();
    eprintln!("before:\n{before}after:\n{after}");
    assert!(after.starts_with("NODE "), "{after}");
    assert!(
        after.contains(&kept) && !after.contains("wasm/batch"),
        "{after}"
    );
    // The kept pod never noticed.
    let pod = cluster
        .wait_pod("kept", "running", POD_TIMEOUT, running)
        .await;
    assert_eq!(common::restart_count(&pod), 0);
    cluster.terminate().await;
}

/// The cluster registry (acceptance (a) for it): `wharf push` and skopeo (a client no one
/// here wrote) push to the control plane's `/v2`, with the cluster CA and the admin token
/// as the basic-auth password; skopeo reads the manifest back, and is refused without
/// credentials; pods applied with kubectl run from `registry.wharf.local/...` by tag and
/// by digest, unmodified manifests the node maps to its control plane.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_registry_takes_pushes_from_wharf_and_skopeo_and_nodes_run_them() {
    build_samples().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("cluster");
    std::fs::create_dir_all(&cluster_dir).unwrap();
    let cluster = Cluster::up_with(&cluster_dir, 1, &[]).await;
    let kubeconfig = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    let server = kubeconfig.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.server.clone())
        .unwrap();
    let host = server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    let token = kubeconfig.auth_infos[0]
        .auth_info
        .as_ref()
        .and_then(|a| a.token.as_ref())
        .map(|t| secrecy::ExposeSecret::expose_secret(t).to_owned())
        .unwrap();
    // skopeo trusts the CA files of a cert dir.
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(cluster.data_dir.join("pki/ca.crt"), certs.join("ca.crt")).unwrap();
    let skopeo = |args: Vec<String>| async move {
        within(
            "skopeo",
            Command::new("skopeo")
                .args(&args)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("skopeo is needed: run scripts/deps")
    };

    // wharf push: the digest reference on stdout.
    let ticker = sample("ticker", "ticker");
    let out = cluster
        .wharf(&["push", &ticker, "registry.wharf.local/wasm/ticker:1.0"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let by_digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let manifest_hex = by_digest
        .strip_prefix("registry.wharf.local/wasm/ticker@sha256:")
        .unwrap_or_else(|| panic!("{by_digest}"))
        .to_owned();

    // skopeo pushes a wasm artifact of another guest, with basic auth.
    let batch = std::fs::read(sample("batch-p1", "batch_p1")).unwrap();
    let layout = dir.path().join("batch");
    let (batch_manifest, _) = wasm_artifact(&layout, &batch);
    let creds = format!("admin:{token}");
    let out = skopeo(vec![
        "copy".into(),
        "--dest-cert-dir".into(),
        certs.display().to_string(),
        "--dest-creds".into(),
        creds.clone(),
        format!("oci:{}:1.0", layout.display()),
        format!("docker://{host}/skopeo/batch:1.0"),
    ])
    .await;
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // skopeo reads back what wharf pushed; without credentials it is refused.
    let out = skopeo(vec![
        "inspect".into(),
        "--raw".into(),
        "--cert-dir".into(),
        certs.display().to_string(),
        "--creds".into(),
        creds.clone(),
        format!("docker://{host}/wasm/ticker:1.0"),
    ])
    .await;
    assert!(
        out.status.success(),
        "skopeo inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sha(&out.stdout),
        manifest_hex,
        "the manifest skopeo read is the one pushed"
    );
    let out = skopeo(vec![
        "inspect".into(),
        "--raw".into(),
        "--cert-dir".into(),
        certs.display().to_string(),
        "--no-creds".into(),
        format!("docker://{host}/wasm/ticker:1.0"),
    ])
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("401") || stderr.contains("unauthorized"),
        "{stderr}"
    );

    // kubectl applies manifests naming the cluster registry: by tag, by digest, and the
    // image skopeo pushed.
    let kubectl = common::kubectl::Kubectl {
        kubeconfig: &cluster.kubeconfig,
    };
    let manifest = dir.path().join("pods.yaml");
    let pod = |name: &str, image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - \
             name: app\n    image: {image}\n    resources: {{limits: {{memory: 16Mi}}}}\n"
        )
    };
    std::fs::write(
        &manifest,
        [
            pod("by-tag", "registry.wharf.local/wasm/ticker:1.0"),
            pod("by-digest", &by_digest),
            pod("from-skopeo", "registry.wharf.local/skopeo/batch:1.0"),
        ]
        .join("---\n"),
    )
    .unwrap();
    kubectl
        .ok(&["apply", "-f", manifest.to_str().unwrap()])
        .await;
    for name in ["by-tag", "by-digest"] {
        let pod = cluster
            .wait_pod(name, "running", POD_TIMEOUT, running)
            .await;
        assert_eq!(
            image_id(&pod),
            format!("registry.wharf.local/wasm/ticker@sha256:{manifest_hex}")
        );
    }
    let pod = cluster
        .wait_pod("from-skopeo", "pulled", POD_TIMEOUT, |p| {
            !image_id(p).is_empty()
        })
        .await;
    assert_eq!(
        image_id(&pod),
        format!("registry.wharf.local/skopeo/batch@sha256:{batch_manifest}")
    );
    // The registry's files live in the control plane's data dir.
    assert!(
        cluster
            .data_dir
            .join("registry/repositories/wasm/ticker/tags/1.0")
            .is_file()
    );

    // Garbage collection: an image deleted with skopeo leaves its blobs until `wharf
    // registry gc` deletes what nothing references; the images in use stay.
    let hello = sample("hello-http", "hello_http");
    let out = cluster
        .wharf(&["push", &hello, "registry.wharf.local/tmp/hello:1.0"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hello_layer = sha(&std::fs::read(&hello).unwrap());
    let blob = |hex: &str| cluster.data_dir.join("registry/blobs/sha256").join(hex);
    assert!(blob(&hello_layer).is_file());
    let out = skopeo(vec![
        "delete".into(),
        "--cert-dir".into(),
        certs.display().to_string(),
        "--creds".into(),
        creds.clone(),
        format!("docker://{host}/tmp/hello:1.0"),
    ])
    .await;
    assert!(
        out.status.success(),
        "skopeo delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        blob(&hello_layer).is_file(),
        "deleting a manifest leaves its blobs to gc"
    );
    let out = cluster
        .wharf(&[
            "registry",
            "gc",
            "--data-dir",
            cluster.data_dir.to_str().unwrap(),
        ])
        .await;
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("deleted 3 blobs"), "{report}");
    assert!(
        !blob(&hello_layer).exists(),
        "the unreferenced layer is deleted"
    );
    assert!(blob(&manifest_hex).is_file(), "the ticker's manifest stays");
    let out = skopeo(vec![
        "inspect".into(),
        "--raw".into(),
        "--cert-dir".into(),
        certs.display().to_string(),
        "--creds".into(),
        creds.clone(),
        format!("docker://{host}/wasm/ticker:1.0"),
    ])
    .await;
    assert!(out.status.success(), "the tagged image is intact after gc");
    cluster.terminate().await;
}

/// Every `image` a sample manifest names (containers and init containers of every
/// document, recursively).
fn images_in(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("image", serde_json::Value::String(image)) => out.push(image.clone()),
                    _ => images_in(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| images_in(v, out)),
        _ => {}
    }
}

/// The sample manifests apply unmodified with kubectl: each names its image in the cluster
/// registry, under a reference `samples/build.sh --push` (and so `scripts/up` and
/// [`Cluster::push_samples`]) pushes. A file name would only work through `wharf apply`'s
/// rewriting and on the machine that built it.
#[test]
fn every_sample_manifest_names_an_image_the_samples_push() {
    let pushed: Vec<String> = common::sample_images()
        .into_iter()
        .map(|(file, reference)| {
            assert!(
                Path::new(&file).extension().is_some_and(|e| e == "wasm"),
                "{file}"
            );
            reference
        })
        .collect();
    let mut manifests = Vec::new();
    let samples = common::samples_dir();
    for entry in std::fs::read_dir(&samples).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() || dir.ends_with("target") {
            continue;
        }
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "yaml") {
                manifests.push(file);
            }
        }
    }
    assert!(manifests.len() >= 10, "{manifests:?}");
    let mut checked = 0;
    for manifest in &manifests {
        let text = std::fs::read_to_string(manifest).unwrap();
        let docs = serde_saphyr::from_multiple::<serde_json::Value>(&text).unwrap();
        let mut images = Vec::new();
        docs.iter().for_each(|d| images_in(d, &mut images));
        for image in images {
            assert!(
                image.starts_with("registry.wharf.local/") && pushed.contains(&image),
                "{}: image {image} is not a cluster-registry reference that samples/images.txt \
                 pushes",
                manifest.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= manifests.len(),
        "{checked} images in {manifests:?}"
    );
}
