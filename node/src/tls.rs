//! The node's TLS certificate: what its server and tunnel serve, and what it presents to
//! other nodes' tunnels (see [`wharf_control::nodetls`] for the whole design).
//!
//! On start the node keeps the certificate in `DATA_DIR/pki/node.crt` (key `node.key`,
//! both 0600) if it still chains to the cluster CA, names the node's published addresses
//! and is before its renewal time; otherwise it makes a new key and has the API server
//! sign a request for it (`POST /api/v1/nodes/NAME/certificate`). [`renew`] replaces it at
//! two thirds of its lifetime, in place: the servers and the dialer read it on every
//! handshake, so nothing restarts.

use k8s_openapi::api::core::v1::Node;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use wharf_control::nodetls::{self, NODE_CERT, NODE_KEY, NodeTlsError, ReloadableCert};

/// How long to wait before asking again after a failed renewal.
const RETRY: Duration = Duration::from_secs(60);

/// Why the node has no certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "the kubeconfig names no cluster CA: the node server and tunnel need it to verify peers"
    )]
    NoCa,
    #[error("asking the API server to sign the node certificate: {0}")]
    Request(#[from] kube::Error),
    #[error(transparent)]
    Cert(#[from] NodeTlsError),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("internal task failed: {0}")]
    Task(String),
}

/// The names a node certificate carries: the node's published addresses (IPs, and the
/// names that are DNS names).
pub fn names_of(node: &Node) -> (Vec<IpAddr>, Vec<String>) {
    let mut ips = Vec::new();
    let mut dns = Vec::new();
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten();
    for a in addresses {
        match a.address.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => {
                let name = a.address.to_ascii_lowercase();
                if rustls::pki_types::DnsName::try_from(name.as_str()).is_ok()
                    && !dns.contains(&name)
                {
                    dns.push(name);
                }
            }
        }
    }
    (ips, dns)
}

/// The node's TLS: its certificate (replaced in place on renewal) and the configurations
/// built on it.
#[derive(Debug)]
pub struct NodeTls {
    pub cert: Arc<ReloadableCert>,
    /// The node server's: client certificates optional (`/metrics` is open), verified
    /// when presented.
    pub daemon: Arc<rustls::ServerConfig>,
    /// The tunnel's: a client certificate of the cluster CA required.
    pub tunnel: Arc<rustls::ServerConfig>,
    /// Dialing other nodes' tunnels.
    pub dialer: Arc<rustls::ClientConfig>,
    node: String,
    dir: PathBuf,
    ca_pem: String,
    ips: Vec<IpAddr>,
    dns: Vec<String>,
    renew_at: Mutex<SystemTime>,
}

impl NodeTls {
    /// Loads or obtains node `node`'s certificate for `ips` and `dns` under `ca_pem`,
    /// kept in `dir` (`DATA_DIR/pki`).
    pub async fn start(
        client: &kube::Client,
        dir: &Path,
        node: &str,
        ca_pem: Option<&str>,
        ips: Vec<IpAddr>,
        dns: Vec<String>,
    ) -> Result<NodeTls, TlsError> {
        let ca_pem = ca_pem
            .filter(|c| !c.trim().is_empty())
            .ok_or(TlsError::NoCa)?;
        let kept = {
            let (dir, ca, ips, dns) = (
                dir.to_path_buf(),
                ca_pem.to_string(),
                ips.clone(),
                dns.clone(),
            );
            blocking(move || Ok(load(&dir, &ca, &ips, &dns, SystemTime::now()))).await?
        };
        let (cert_pem, key_pem, renew) = match kept {
            Ok(kept) => kept,
            Err(reason) => {
                tracing::info!(node, %reason, "requesting a node certificate");
                obtain(client, dir, node, ca_pem, &ips, &dns).await?
            }
        };
        let cert = Arc::new(ReloadableCert::from_pem(&cert_pem, &key_pem)?);
        Ok(NodeTls {
            daemon: nodetls::server_config(ca_pem, cert.clone(), false, &[b"h2", b"http/1.1"])?,
            tunnel: nodetls::server_config(ca_pem, cert.clone(), true, &[b"http/1.1"])?,
            dialer: nodetls::client_config(ca_pem, cert.clone(), &[b"http/1.1"])?,
            cert,
            node: node.to_string(),
            dir: dir.to_path_buf(),
            ca_pem: ca_pem.to_string(),
            ips,
            dns,
            renew_at: Mutex::new(renew),
        })
    }

    /// When the certificate in use is renewed.
    pub fn renew_at(&self) -> SystemTime {
        *self.renew_at.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TlsError> + Send + 'static,
) -> Result<T, TlsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TlsError::Task(e.to_string()))?
}

/// The certificate and key kept in `dir`, with their renewal time, or why they are not fit.
fn load(
    dir: &Path,
    ca_pem: &str,
    ips: &[IpAddr],
    dns: &[String],
    now: SystemTime,
) -> Result<(String, String, SystemTime), String> {
    let read =
        |name: &str| std::fs::read_to_string(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let (cert, key) = (read(NODE_CERT)?, read(NODE_KEY)?);
    let renew = nodetls::check_node_cert(ca_pem, &cert, ips, dns, now)?;
    ReloadableCert::from_pem(&cert, &key).map_err(|e| format!("{NODE_KEY}: {e}"))?;
    Ok((cert, key, renew))
}

/// A new key, signed by the API server, written to `dir`.
async fn obtain(
    client: &kube::Client,
    dir: &Path,
    node: &str,
    ca_pem: &str,
    ips: &[IpAddr],
    dns: &[String],
) -> Result<(String, String, SystemTime), TlsError> {
    let (key, csr) = {
        let (node, ips, dns) = (node.to_string(), ips.to_vec(), dns.to_vec());
        blocking(move || Ok(nodetls::node_csr(&node, &ips, &dns)?)).await?
    };
    let request = http::Request::post(format!("/api/v1/nodes/{node}/certificate"))
        .header(http::header::CONTENT_TYPE, "application/pkcs10")
        .body(csr.into_bytes())
        .map_err(|e| TlsError::Task(e.to_string()))?;
    let cert = client.request_text(request).await?;
    let key = key.serialize_pem();
    let (dir, ca, ips, dns) = (
        dir.to_path_buf(),
        ca_pem.to_string(),
        ips.to_vec(),
        dns.to_vec(),
    );
    blocking(move || {
        // What was signed must be fit before it replaces anything.
        let renew = nodetls::check_node_cert(&ca, &cert, &ips, &dns, SystemTime::now())
            .map_err(|e| TlsError::Cert(NodeTlsError::Invalid(e)))?;
        let io = |path: PathBuf| move |error| TlsError::Io { path, error };
        wharf_runtime::private::create_private_dir(&dir).map_err(io(dir.clone()))?;
        // The key first: a crash between the two leaves a pair that does not match,
        // replaced on the next start.
        for (name, text) in [(NODE_KEY, &key), (NODE_CERT, &cert)] {
            let path = dir.join(name);
            wharf_control::fsutil::write_private(&path, text.as_bytes()).map_err(io(path))?;
        }
        Ok((cert, key, renew))
    })
    .await
}

/// Renews the certificate at its renewal time until shutdown; a failure is retried a
/// minute later, while the current certificate is still valid.
pub async fn renew(client: kube::Client, tls: Arc<NodeTls>, shutdown: CancellationToken) {
    loop {
        let wait = tls
            .renew_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let obtained = obtain(
            &client,
            &tls.dir,
            &tls.node,
            &tls.ca_pem,
            &tls.ips,
            &tls.dns,
        )
        .await;
        let next = match obtained.and_then(|(cert, key, renew)| {
            tls.cert.replace(&cert, &key)?;
            Ok(renew)
        }) {
            Ok(renew) => {
                tracing::info!(node = %tls.node, "renewed the node certificate");
                renew
            }
            Err(e) => {
                tracing::warn!(node = %tls.node, error = %e, "renewing the node certificate failed; retrying");
                SystemTime::now() + RETRY
            }
        };
        *tls.renew_at.lock().unwrap_or_else(PoisonError::into_inner) = next;
    }
}

/// Certificates for tests: a cluster CA and node certificates it signed.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod testing {
    use super::*;

    pub struct Cluster {
        pub dir: tempfile::TempDir,
        pub ca_pem: String,
    }

    impl Cluster {
        pub fn new() -> Cluster {
            let dir = tempfile::tempdir().unwrap();
            wharf_control::pki::Pki::load_or_generate(
                &dir.path().join("pki"),
                "127.0.0.1:0".parse().unwrap(),
            )
            .unwrap();
            let ca_pem =
                std::fs::read_to_string(dir.path().join("pki").join(wharf_control::pki::CA_CERT))
                    .unwrap();
            Cluster { dir, ca_pem }
        }

        /// A certificate (PEM) of node `name` for address `ip`, and its key.
        pub fn node_pem(&self, name: &str, ip: &str) -> (String, String) {
            let addr: IpAddr = ip.parse().unwrap();
            let (key, csr) = nodetls::node_csr(name, &[addr], &[]).unwrap();
            let cert = nodetls::sign_node_csr(
                &self.dir.path().join("pki"),
                name,
                &csr,
                &[ip.to_string()],
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .unwrap();
            (cert, key.serialize_pem())
        }

        /// A certificate of node `name` for address `ip`.
        pub fn node_cert(&self, name: &str, ip: &str) -> Arc<ReloadableCert> {
            let (cert, key) = self.node_pem(name, ip);
            Arc::new(ReloadableCert::from_pem(&cert, &key).unwrap())
        }

        /// A tunnel's TLS, for node `name` at `ip`.
        pub fn tunnel_server(&self, name: &str, ip: &str) -> Arc<rustls::ServerConfig> {
            let cert = self.node_cert(name, ip);
            nodetls::server_config(&self.ca_pem, cert, true, &[b"http/1.1"]).unwrap()
        }

        /// A dialer's TLS, for node `name` (at 127.0.0.1).
        pub fn dialer(&self, name: &str) -> Arc<rustls::ClientConfig> {
            let cert = self.node_cert(name, "127.0.0.1");
            nodetls::client_config(&self.ca_pem, cert, &[b"http/1.1"]).unwrap()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_certificate_is_used_until_its_renewal_time_or_an_address_change() {
        let cluster = testing::Cluster::new();
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (key, csr) = nodetls::node_csr("n1", &[ip], &[]).unwrap();
        let now = SystemTime::now();
        let cert = nodetls::sign_node_csr(
            &cluster.dir.path().join("pki"),
            "n1",
            &csr,
            &["127.0.0.1".into()],
            Duration::from_secs(3000),
            now,
        )
        .unwrap();
        assert!(load(dir.path(), &cluster.ca_pem, &[ip], &[], now).is_err());
        std::fs::write(dir.path().join(NODE_KEY), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join(NODE_CERT), &cert).unwrap();
        let (_, _, renew) = load(dir.path(), &cluster.ca_pem, &[ip], &[], now).unwrap();
        // Two thirds of its 3300 s (valid from 300 s ago): 1900 s from now.
        let left = renew.duration_since(now).unwrap().as_secs();
        assert!((1890..=1910).contains(&left), "{left}");
        let err = load(dir.path(), &cluster.ca_pem, &[ip], &[], renew).unwrap_err();
        assert!(err.contains("renewal"), "{err}");
        let moved: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(load(dir.path(), &cluster.ca_pem, &[moved], &[], now).is_err());
    }

    /// Renewal without a restart: a server whose certificate is replaced serves the new
    /// one on the next handshake.
    #[tokio::test]
    async fn a_replaced_certificate_is_served_on_the_next_handshake() {
        let cluster = testing::Cluster::new();
        let (first, first_key) = cluster.node_pem("n1", "127.0.0.1");
        let cert = Arc::new(ReloadableCert::from_pem(&first, &first_key).unwrap());
        let server =
            nodetls::server_config(&cluster.ca_pem, cert.clone(), true, &[b"http/1.1"]).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(server);
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        let client = cluster.dialer("peer");
        let served = || {
            let client = client.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let tls = tokio_rustls::TlsConnector::from(client)
                    .connect(name, tcp)
                    .await
                    .unwrap();
                tls.get_ref().1.peer_certificates().unwrap()[0].clone()
            }
        };
        let pem_der = |pem: &str| {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
        };
        let within = |f| tokio::time::timeout(Duration::from_secs(10), f);
        assert_eq!(within(served()).await.unwrap(), pem_der(&first));
        let (second, second_key) = cluster.node_pem("n1", "127.0.0.1");
        cert.replace(&second, &second_key).unwrap();
        assert_eq!(within(served()).await.unwrap(), pem_der(&second));
        accepting.abort();
    }

    #[test]
    fn names_are_the_published_addresses() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.7"},
                {"type": "Hostname", "address": "Worker-1"},
                {"type": "Hostname", "address": "not a name"},
            ]}
        }))
        .unwrap();
        assert_eq!(
            names_of(&node),
            (
                vec!["10.0.0.7".parse().unwrap()],
                vec!["worker-1".to_string()]
            )
        );
    }
}
