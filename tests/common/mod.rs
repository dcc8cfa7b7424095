//! Helpers for end-to-end tests: the real `wharf` binary started on port 0 in a temp dir,
//! as a control plane alone ([`ControlProcess`]) or as a whole cluster with nodes running
//! the sample guests ([`Cluster`]), and small helpers to wait on pods and talk HTTP to them.
#![allow(dead_code, clippy::unwrap_used)]

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::runtime::WatchStreamExt as _;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

pub mod kubectl;

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The test-suite switch for the store: with `WHARF_TEST_STORE=etcd` every control plane
/// these helpers start keeps its state in etcd instead of the embedded store. The flags
/// are [`etcd_flags`]; unset (or `fjall`) adds none, and so does a test that chose its
/// store itself (`--store` among its `extra` flags).
pub async fn store_flags(data_dir: &Path, extra: &[&str]) -> Vec<String> {
    if extra.contains(&"--store") {
        return Vec::new();
    }
    match std::env::var("WHARF_TEST_STORE").as_deref() {
        Ok("etcd") => etcd_flags(data_dir).await,
        Ok("fjall") | Err(_) => Vec::new(),
        Ok(other) => panic!("WHARF_TEST_STORE={other}: expected etcd or fjall"),
    }
}

/// `--store etcd` flags for a control plane with `data_dir`: the one etcd of this test
/// process (Debian's `etcd`, started on loopback on first use, stopped when the process
/// ends) and a key prefix of its own, the same for the same `data_dir` so that a
/// restarted control plane finds its state again.
pub async fn etcd_flags(data_dir: &Path) -> Vec<String> {
    let url = tokio::task::spawn_blocking(|| {
        wharf_control::store::local_etcd::LocalEtcd::shared().map(|e| e.client_url.clone())
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("the etcd for WHARF_TEST_STORE=etcd did not start: {e}"));
    vec![
        "--store".into(),
        "etcd".into(),
        "--etcd-endpoints".into(),
        url,
        "--etcd-prefix".into(),
        etcd_prefix(data_dir),
    ]
}

/// The etcd key prefix [`etcd_flags`] gives the control plane with `data_dir`.
pub fn etcd_prefix(data_dir: &Path) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut hasher);
    format!("/wharf-{}-{:016x}", std::process::id(), hasher.finish())
}

/// A `wharf control` process; killed when dropped.
pub struct ControlProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Its leader election identity (the Leases' holderIdentity), from the start line.
    pub identity: Option<String>,
}

impl ControlProcess {
    /// Starts `wharf control` on 127.0.0.1:0 and waits for its "serving on" line.
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_on(data_dir, "127.0.0.1:0", &[]).await
    }

    /// [`ControlProcess::start`] with more `wharf control` flags.
    pub async fn start_with(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_on(data_dir, "127.0.0.1:0", extra).await
    }

    /// Starts `wharf control` on `listen` (a fixed port, so that nodes find it again after
    /// a restart) with more flags, and waits for its "serving on" line.
    pub async fn start_on(data_dir: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["control", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", listen])
            .args(store_flags(data_dir, extra).await)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let (addr, identity) = tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("serving on https://").nth(1) {
                    let addr = rest.split([',', ' ']).next().unwrap();
                    let identity = line
                        .split("leader election as ")
                        .nth(1)
                        .map(|i| i.trim().to_string());
                    return (addr.parse::<SocketAddr>().unwrap(), identity);
                }
            }
            panic!("wharf control exited before serving");
        })
        .await
        .expect("wharf control did not start in time");
        // Keep draining stderr so the child never blocks on a full pipe, and pass its
        // warnings on: the test harness shows them when the test fails.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[wharf control {addr}] {line}");
            }
        });
        ControlProcess {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            identity,
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig")
    }

    /// A kube client from the kubeconfig the control plane wrote.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .unwrap()
            .unwrap();
    }

    /// SIGTERM: the control plane drains and exits 0.
    pub async fn terminate(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(
            exit.success(),
            "wharf control exited with {exit} after SIGTERM"
        );
    }
}

pub struct Output {
    pub status: std::process::ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs a `wharf` client command against the cluster of `kubeconfig`.
pub async fn wharf(kubeconfig: &Path, args: &[&str]) -> Output {
    let out = tokio::time::timeout(
        TIMEOUT,
        Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output(),
    )
    .await
    .expect("wharf command timed out")
    .unwrap();
    Output {
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

// ---------------------------------------------------------------------------------------
// Whole clusters: `wharf up` with node agents running the sample guests as pods.

/// How long a pod may take to reach a state that needs a compile (Cranelift in a debug
/// build, with other tests compiling on the other core).
pub const POD_TIMEOUT: Duration = Duration::from_secs(90);

/// The samples directory (`samples/` at the workspace root).
pub fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples")
}

/// The built guest of a sample, e.g. `sample("hello-http", "hello_http")`: an absolute path
/// for the `image` of a manifest written anywhere.
pub fn sample(dir: &str, file: &str) -> String {
    samples_dir()
        .join(dir)
        .join(format!("{file}.wasm"))
        .display()
        .to_string()
}

/// The built sample guests and the cluster-registry references the sample manifests name
/// them by (`samples/images.txt`): `(absolute path of the .wasm, reference)`.
pub fn sample_images() -> Vec<(String, String)> {
    let list = std::fs::read_to_string(samples_dir().join("images.txt")).unwrap();
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(file, reference)| {
            let path = samples_dir().join(file).display().to_string();
            (path, reference.trim().to_string())
        })
        .collect()
}

/// The built guest a sample manifest's registry `reference` names, as a path (for tests
/// that run a manifest's pods without the cluster registry).
pub fn sample_for(reference: &str) -> String {
    sample_images()
        .into_iter()
        .find(|(_, r)| r == reference)
        .map(|(path, _)| path)
        .unwrap_or_else(|| panic!("{reference} is not in samples/images.txt"))
}

static SAMPLES: OnceLock<Result<(), String>> = OnceLock::new();

/// Builds every sample guest through `samples/build.sh`, once per test process (the tests
/// of a binary share the result; a failed build fails every test that needs the guests).
pub async fn build_samples() {
    let built = tokio::task::spawn_blocking(|| {
        SAMPLES
            .get_or_init(|| {
                let out = std::process::Command::new(samples_dir().join("build.sh"))
                    .output()
                    .map_err(|e| format!("running samples/build.sh: {e}"))?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "samples/build.sh failed ({}):\n{}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    ))
                }
            })
            .clone()
    });
    // The first build of the guests compiles their dependencies: minutes, not seconds.
    let built = tokio::time::timeout(Duration::from_secs(600), built)
        .await
        .expect("samples/build.sh timed out")
        .unwrap();
    if let Err(e) = built {
        panic!("{e}");
    }
}

/// A TCP port that nothing on this machine listens on now, on any address. Every cluster
/// hands out the same first pod addresses (127.64.0.2, ...), so tests that run clusters at
/// the same time give their HTTP pods distinct `containerPort`s.
pub fn free_port() -> u16 {
    TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `wharf up` process (control plane and node agents) on 127.0.0.1:0, with its data in
/// `DIR/data` and its stderr in `DIR/wharf-up.log`; killed when dropped.
pub struct Cluster {
    pub child: Child,
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub kubeconfig: PathBuf,
    /// An admin client, made once so that measured waits do not include its setup.
    pub client: kube::Client,
    pub nodes: u32,
}

impl Cluster {
    /// Starts `wharf up --nodes N --backoff 200ms` in `dir` and waits for its
    /// `export KUBECONFIG=` line. Starting again on the same `dir` brings the cluster back.
    pub async fn up(dir: &Path, nodes: u32) -> Cluster {
        Self::up_with(dir, nodes, &[]).await
    }

    /// [`Cluster::up`] with more `wharf up` flags.
    pub async fn up_with(dir: &Path, nodes: u32, extra: &[&str]) -> Cluster {
        let data_dir = dir.join("data");
        let log_path = dir.join("wharf-up.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("up")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", "127.0.0.1:0", "--backoff", "200ms", "--nodes"])
            .arg(nodes.to_string())
            .args(store_flags(&data_dir, extra).await)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // A file never fills up: the cluster can log all it wants, and a failing test
            // shows its tail.
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(path) = line.strip_prefix("export KUBECONFIG=") {
                    return Some(PathBuf::from(path.trim()));
                }
            }
            None
        })
        .await;
        let kubeconfig = match ready {
            Ok(Some(path)) => path,
            Ok(None) => panic!(
                "wharf up exited before it was ready:\n{}",
                tail(&log_path, 40)
            ),
            Err(_) => panic!(
                "wharf up was not ready in {TIMEOUT:?}:\n{}",
                tail(&log_path, 40)
            ),
        };
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let client = client_from(&kubeconfig).await;
        Cluster {
            child,
            dir: dir.to_path_buf(),
            data_dir,
            kubeconfig,
            client,
            nodes,
        }
    }

    /// The last `n` lines of the cluster's log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.dir.join("wharf-up.log"), n)
    }

    /// Pods of the default namespace.
    pub fn pods(&self) -> kube::Api<Pod> {
        kube::Api::default_namespaced(self.client.clone())
    }

    /// Runs a `wharf` client command against this cluster.
    pub async fn wharf(&self, args: &[&str]) -> Output {
        wharf(&self.kubeconfig, args).await
    }

    /// Writes `yaml` to `DIR/NAME` and `wharf apply`s it; panics if the apply fails.
    pub async fn apply(&self, name: &str, yaml: &str) -> Output {
        let path = self.dir.join(name);
        std::fs::write(&path, yaml).unwrap();
        self.apply_file(&path).await
    }

    /// Pushes every sample guest to this cluster's registry under the reference the
    /// sample manifests name (as `samples/build.sh --push` does), so that a sample
    /// manifest applies as it is. Needs [`build_samples`] first.
    pub async fn push_samples(&self) {
        for (file, reference) in sample_images() {
            let out = self.wharf(&["push", &file, &reference]).await;
            assert!(
                out.status.success(),
                "wharf push {file} {reference} failed: {}",
                out.stderr_text()
            );
        }
    }

    /// `wharf apply -f PATH`; panics if the apply fails.
    pub async fn apply_file(&self, path: &Path) -> Output {
        let out = self.wharf(&["apply", "-f", path.to_str().unwrap()]).await;
        assert!(
            out.status.success(),
            "wharf apply -f {} failed: {}",
            path.display(),
            out.stderr_text()
        );
        out
    }

    /// Waits (watching the pod) until `cond` holds for pod `name` of the default namespace,
    /// and returns it. On timeout, panics with the pod as last seen and the cluster's log.
    pub async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Pod) -> bool,
    ) -> Pod {
        let api = self.pods();
        let mut last: Option<Pod> = None;
        let found = tokio::time::timeout(timeout, async {
            let stream = kube::runtime::watcher::watch_object(api, name).default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Ok(Some(pod)) = event {
                    if cond(&pod) {
                        return Some(pod);
                    }
                    last = Some(pod);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(pod)) => pod,
            _ => panic!(
                "pod {name}: not {what} within {timeout:?}; last seen status:\n{}\n--- wharf up log:\n{}",
                last.and_then(|p| p.status)
                    .map(|s| serde_json::to_string_pretty(&s).unwrap())
                    .unwrap_or_else(|| "(never seen)".into()),
                self.log_tail(30)
            ),
        }
    }

    /// Waits until pod `name` is gone from the API; returns how long that took.
    pub async fn wait_pod_gone(&self, name: &str, timeout: Duration) -> Duration {
        let api = self.pods();
        let start = Instant::now();
        let gone = tokio::time::timeout(timeout, async {
            let stream = kube::runtime::watcher::watch_object(api, name).default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Ok(None) = event {
                    return;
                }
            }
        })
        .await;
        assert!(
            gone.is_ok(),
            "pod {name} still exists after {timeout:?}\n--- wharf up log:\n{}",
            self.log_tail(30)
        );
        start.elapsed()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .expect("wharf up did not die")
            .unwrap();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM: the cluster stops its pods and exits 0.
    pub async fn terminate(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let status = within(
            "kill -TERM",
            Command::new("kill").args(["-TERM", &pid]).status(),
        )
        .await
        .unwrap();
        assert!(status.success());
        let exit = within("wharf up stopping after SIGTERM", self.child.wait())
            .await
            .unwrap();
        assert!(
            exit.success(),
            "wharf up exited with {exit} after SIGTERM\n--- wharf up log:\n{}",
            self.log_tail(30)
        );
    }
}

/// Awaits `fut` for at most [`TIMEOUT`]; `what` names it in the failure.
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {TIMEOUT:?}: {what}"))
}

/// A kube client from a kubeconfig.
async fn client_from(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The status of a pod's first container.
pub fn container(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()
}

pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Whether the pod's first container is running.
pub fn running(pod: &Pod) -> bool {
    container(pod)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

/// The reason of the first container's waiting state, if it is waiting.
pub fn waiting_reason(pod: &Pod) -> Option<&str> {
    container(pod)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .as_deref()
}

pub fn restart_count(pod: &Pod) -> i32 {
    container(pod).map_or(0, |c| c.restart_count)
}

/// `status.podIP`, parsed.
pub fn pod_ip(pod: &Pod) -> IpAddr {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .expect("pod has no IP")
        .parse()
        .unwrap()
}

/// One HTTP/1.0 GET on a fresh connection (the answer ends with the connection, so no
/// chunked decoding is needed): status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request("GET", addr, path).await
}

/// One HTTP/1.0 request without a body on a fresh connection: status and body.
pub async fn http_request(
    method: &str,
    addr: SocketAddr,
    path: &str,
) -> std::io::Result<(u16, String)> {
    exchange(method, addr, path, None, "").await
}

/// `GET path` over TLS without a client certificate and without checking the server's
/// (what a node server's `/metrics` needs; tests of the TLS itself are in `tunnel.rs`).
pub async fn https_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    exchange("GET", addr, path, Some(unverified_tls()), "").await
}

/// A TLS client that accepts any server certificate, for tests that read what a TLS
/// server says rather than test its TLS.
pub fn unverified_tls() -> Arc<rustls::ClientConfig> {
    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = wharf_control::pki::crypto_provider();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_no_client_auth(),
    )
}

/// One HTTP/1.0 request without a body on a fresh connection, over TLS with `tls` (the
/// server named by its IP) if given, with `headers` (`Name: value\r\n` lines): status
/// and body.
pub async fn exchange(
    method: &str,
    addr: SocketAddr,
    path: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    headers: &str,
) -> std::io::Result<(u16, String)> {
    let request = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut stream: Box<dyn Stream> = match tls {
            Some(tls) => Box::new(
                tokio_rustls::TlsConnector::from(tls)
                    .connect(
                        rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
                        tcp,
                    )
                    .await?,
            ),
            None => Box::new(tcp),
        };
        stream
            .write_all(
                format!(
                    "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::other(format!(
                "{method} {addr}{path} timed out"
            )))
        })
}

/// A byte stream, plain or TLS.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// GETs until the answer is 200 (the listener may not be up yet); returns the body.
pub async fn http_ok(addr: SocketAddr, path: &str, timeout: Duration) -> String {
    let mut last = None;
    let done = tokio::time::timeout(timeout, async {
        loop {
            match http_get(addr, path).await {
                Ok((200, body)) => return body,
                other => last = Some(other),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    match done {
        Ok(body) => body,
        Err(_) => panic!("GET http://{addr}{path}: no 200 within {timeout:?}; last: {last:?}"),
    }
}

/// A hello-http pod (the sample's container, with an absolute image path) bound to `node`,
/// serving on `port`, with `annotations` given as YAML flow-map entries (`k: v, ...`).
pub fn hello_pod(name: &str, node: &str, port: u16, annotations: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  annotations: {{{annotations}}}
spec:
  nodeName: {node}
  containers:
    - name: hello
      image: {image}
      ports:
        - containerPort: {port}
      env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - name: NODE_NAME
          valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}
      volumeMounts:
        - {{name: data, mountPath: /data}}
  volumes:
    - {{name: data, emptyDir: {{}}}}
"#,
        image = sample("hello-http", "hello_http"),
    )
}

/// A hello-http Deployment `name` (label `app: NAME`) of `replicas` on `port`, ready when
/// it answers HTTP.
pub fn hello_deployment(name: &str, replicas: u32, port: u16) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
        - name: hello
          image: {image}
          ports:
            - containerPort: {port}
          readinessProbe:
            httpGet: {{path: /, port: {port}}}
            periodSeconds: 1
"#,
        image = sample("hello-http", "hello_http"),
    )
}

/// One HTTP/1.0 POST without a body on a fresh connection: status and body.
pub async fn http_post(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request("POST", addr, path).await
}

/// The status (`True`, `False`) of the pod condition `kind`, if the pod has it.
pub fn condition<'a>(pod: &'a Pod, kind: &str) -> Option<&'a str> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.as_str())
}

// ---------------------------------------------------------------------------------------
// Separate node processes: `wharf node` joining a control plane, as on another machine.

/// A `wharf node` process; killed when dropped. Its stderr goes to `DIR/NAME.log`.
pub struct NodeProcess {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
    /// The node server (logs, `/metrics`), from the start-up line.
    pub daemon_addr: SocketAddr,
    /// The node tunnel, from the start-up line, if the node runs one.
    pub tunnel_addr: Option<SocketAddr>,
}

impl NodeProcess {
    /// Starts `wharf --kubeconfig KUBECONFIG node --name NAME --address ADDRESS` with its
    /// data in `DIR/NAME`, the node server and tunnel on port 0, no DNS, a short back-off
    /// and `samples/` as its image dir, plus `extra` arguments; waits for its "running"
    /// line.
    pub async fn start(
        dir: &Path,
        kubeconfig: &Path,
        name: &str,
        address: IpAddr,
        extra: &[&str],
    ) -> NodeProcess {
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["node", "--name", name, "--address"])
            .arg(address.to_string())
            .arg("--data-dir")
            .arg(dir.join(name))
            .args(["--port", "0", "--tunnel-port", "0", "--dns-listen", "off"])
            .args(["--backoff", "200ms"])
            // A joining node reads local images only from its image dirs: the samples.
            .arg("--image-dir")
            .arg(samples_dir())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut file = tokio::fs::File::create(&log).await.unwrap();
        let ready = tokio::time::timeout(TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                file.write_all(line.as_bytes()).await.unwrap();
                file.write_all(b"\n").await.unwrap();
                if line.starts_with(&format!("wharf node: {name} running")) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        let line = match ready {
            Ok(Some(line)) => line,
            Ok(None) => panic!("wharf node {name} exited:\n{}", tail(&log, 40)),
            Err(_) => panic!(
                "wharf node {name} not running in {TIMEOUT:?}:\n{}",
                tail(&log, 40)
            ),
        };
        // The rest of stderr goes to the log file, so the child never blocks on the pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if file.write_all(line.as_bytes()).await.is_err()
                    || file.write_all(b"\n").await.is_err()
                {
                    break;
                }
            }
        });
        let addr_after = |marker: &str| -> Option<SocketAddr> {
            let rest = line.split(marker).nth(1)?;
            rest.split([',', ' ']).next()?.parse().ok()
        };
        NodeProcess {
            child,
            name: name.to_string(),
            daemon_addr: addr_after("node server on ").expect("node server address"),
            tunnel_addr: addr_after("tunnel on "),
            log,
        }
    }

    /// The last `n` lines of the node's log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// The node server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, body) = https_get(self.daemon_addr, "/metrics").await.unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// A counter's value in Prometheus text, 0 when absent.
pub fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until Node `name` reports the condition Ready=True.
pub async fn wait_node_ready(
    client: &kube::Client,
    name: &str,
    timeout: Duration,
) -> k8s_openapi::api::core::v1::Node {
    use k8s_openapi::api::core::v1::Node;
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    let ready = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let found = tokio::time::timeout(timeout, async {
        let stream = kube::runtime::watcher::watch_object(api, name).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Ok(Some(node)) = event
                && ready(&node)
            {
                return Some(node);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(node)) => node,
        _ => panic!("node {name} not Ready within {timeout:?}"),
    }
}
