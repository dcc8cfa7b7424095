//! The cluster's own certificate authority and the API server's serving certificate.
//!
//! Like k3s, a control plane creates its own CA instead of asking for one: kubectl and
//! other client-go programs send a kubeconfig's bearer token only over https, and tokens
//! must never cross the network in clear once nodes join from other machines. The
//! kubeconfig carries the CA certificate (`certificate-authority-data`), so clients
//! verify the server without any system trust store.
//!
//! Everything lives in `DATA_DIR/pki/`: `ca.crt`, `ca.key`, `server.crt`, `server.key`
//! (ECDSA P-256; every file mode 0600, written atomically).
//!
//! - The CA (10 years) is generated on the first start of a data dir and then kept for
//!   good: every kubeconfig and every joined node trusts it. A `ca.key` without its
//!   `ca.crt` is what a crash during that first generation leaves, and is replaced; a
//!   `ca.crt` without its `ca.key` is an error, as a new CA would silently break trust.
//! - The serving certificate (1 year) is regenerated on start when it is missing or
//!   unreadable, does not match `server.key`, is not signed by the CA, expires within
//!   [`RENEW_BEFORE`], or lacks a name the current listen address needs: `localhost`,
//!   `127.0.0.1`, `::1`, the listen IP unless unspecified, the machine's hostname and the
//!   in-cluster `kubernetes.default.svc` names.

use crate::controlplane::write_private_blocking;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{RootCertStore, ServerConfig};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long a new CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a new serving certificate is valid.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A serving certificate expiring sooner than this is replaced at start.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// New certificates are valid from this long ago, for clocks a little behind ours.
const BACKDATE: Duration = Duration::from_secs(3600);

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";
/// The key ServiceAccount tokens are signed with (ECDSA P-256, PKCS#8).
pub const SA_KEY: &str = "sa.key";

/// What can go wrong loading or generating the certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(
        "{key} is missing but {cert} exists: restore the CA key (a new CA would not be \
         trusted by existing kubeconfigs and nodes), or remove the pki directory to start a \
         new CA"
    )]
    MissingCaKey { cert: PathBuf, key: PathBuf },
    #[error("generating the {what}: {error}")]
    Generate {
        what: &'static str,
        error: rcgen::Error,
    },
    #[error(
        "a new serving certificate does not verify against {ca}: {error} (is {key} the key of {ca}?)"
    )]
    CaMismatch {
        ca: PathBuf,
        key: PathBuf,
        error: String,
    },
    #[error("building the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The crypto provider wharf uses everywhere: ring (aws-lc-rs is a heavy C build).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring rustls' process-wide default provider, for code (kube's client) that asks
/// rustls for the default. Idempotent: a provider already installed is left alone.
pub fn install_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: some provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// What [`Pki::load_or_generate`] did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// A new CA was made (first start of the data dir).
    pub ca: bool,
    /// Why a new serving certificate was made, if one was.
    pub server: Option<String>,
}

/// The certificates of one control plane, loaded and checked.
pub struct Pki {
    dir: PathBuf,
    ca_cert_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: PrivateKeyDer<'static>,
    pub generated: Generated,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads the CA and serving certificate from `dir` (`DATA_DIR/pki`), generating what is
    /// missing or no longer fit for `listen`. Blocking: file IO and key generation.
    pub fn load_or_generate(dir: &Path, listen: SocketAddr) -> Result<Pki, PkiError> {
        Self::load_or_generate_at(dir, listen, SystemTime::now())
    }

    fn load_or_generate_at(
        dir: &Path,
        listen: SocketAddr,
        now: SystemTime,
    ) -> Result<Pki, PkiError> {
        create_dir(dir)?;
        let provider = crypto_provider();
        let (ca_cert_pem, ca_key_pem, new_ca) = load_or_generate_ca(dir, now)?;
        let ca_der = pem_cert(&dir.join(CA_CERT), &ca_cert_pem)?;
        let names = required_names(listen);

        let current = if new_ca {
            Err("a new CA".to_string())
        } else {
            read_server(dir)
                .and_then(|(cert, key)| check_server(&provider, &ca_der, &cert, &key, &names, now))
        };
        let (server_cert, server_key, reason) = match current {
            Ok((cert, key)) => (cert, key, None),
            Err(reason) => {
                let (cert, key) = generate_server(dir, &ca_cert_pem, &ca_key_pem, &names, now)?;
                (cert, key, Some(reason))
            }
        };
        if reason.is_some() {
            // Never serve, and never leave on disk unnoticed, a certificate the CA does not
            // vouch for: that is a ca.key that does not belong to ca.crt.
            check_server(&provider, &ca_der, &server_cert, &server_key, &names, now).map_err(
                |error| PkiError::CaMismatch {
                    ca: dir.join(CA_CERT),
                    key: dir.join(CA_KEY),
                    error,
                },
            )?;
        }
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca_cert_pem,
            server_cert,
            server_key,
            generated: Generated {
                ca: new_ca,
                server: reason,
            },
        })
    }

    /// `DATA_DIR/pki/ca.crt`.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    /// The CA certificate, PEM (what a kubeconfig's `certificate-authority-data` holds).
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// A rustls server configuration serving the certificate, with ALPN `h2` and
    /// `http/1.1`. A client may present a certificate: one the cluster CA signed (and
    /// valid now) is its identity ([`client_identity`]); any other fails the handshake;
    /// none is fine (a bearer token then says who it is), as kube-apiserver has it.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, PkiError> {
        let path = self.ca_cert_path();
        let mut roots = RootCertStore::empty();
        roots
            .add(pem_cert(&path, &self.ca_cert_pem)?)
            .map_err(|e| PkiError::Invalid {
                path: path.clone(),
                message: format!("unusable CA certificate: {e}"),
            })?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            crypto_provider(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Invalid {
            path,
            message: format!("building the client certificate verifier: {e}"),
        })?;
        let mut config = ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.server_cert.clone()], self.server_key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The ServiceAccount token signing key in `dir` (PKCS#8 DER), made (mode 0600) on the
/// first start. Kept for good: a new key would invalidate every token issued. Blocking.
pub fn load_or_generate_sa_key(dir: &Path) -> Result<Vec<u8>, PkiError> {
    create_dir(dir)?;
    let path = dir.join(SA_KEY);
    if let Some(pem) = read_optional(&path)? {
        let key = KeyPair::from_pem(&pem).map_err(|e| PkiError::Invalid {
            path: path.clone(),
            message: format!("not a private key: {e}"),
        })?;
        return Ok(key.serialize_der());
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(gen_err("service account key"))?;
    write(&path, &key.serialize_pem())?;
    tracing::info!(path = %path.display(), "generated the service account signing key");
    Ok(key.serialize_der())
}

/// A client certificate and its key (PEM), from [`issue_client_cert`].
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert").finish_non_exhaustive()
    }
}

/// Issues a client certificate for user `user` in `groups`, valid for `ttl` from `now`,
/// signed by the CA in `dir` (`DATA_DIR/pki`): the subject's CommonName is the user and
/// each Organization a group, as kube-apiserver's x509 authenticator reads them
/// ([`client_identity`]). Blocking: reads the CA's key.
pub fn issue_client_cert(
    dir: &Path,
    user: &str,
    groups: &[String],
    ttl: Duration,
    now: SystemTime,
) -> Result<ClientCert, PkiError> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let missing = |path: &Path| PkiError::Invalid {
        path: path.to_path_buf(),
        message: "missing: is this the data dir of a control plane that has started?".into(),
    };
    let ca_cert = read_optional(&cert_path)?.ok_or_else(|| missing(&cert_path))?;
    let ca_key = read_optional(&key_path)?.ok_or_else(|| missing(&key_path))?;
    // Checks the pair as signing needs it, naming the file at fault.
    issuer(dir, &ca_cert, &ca_key)?;
    let ca_der = pem_cert(&cert_path, &ca_cert)?;
    let ca_pkcs8 = KeyPair::from_pem(&ca_key)
        .map_err(|e| PkiError::Invalid {
            path: key_path.clone(),
            message: format!("not a private key: {e}"),
        })?
        .serialize_der();
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err("client key"))?;
    let subject = client::Subject {
        user,
        groups,
        not_before: offset(now - BACKDATE.min(Duration::from_secs(300))),
        not_after: offset(now + ttl),
    };
    let der = client::certificate(&ca_der, &ca_pkcs8, &key, &subject).map_err(|message| {
        PkiError::Invalid {
            path: key_path,
            message,
        }
    })?;
    Ok(ClientCert {
        cert_pem: client::pem("CERTIFICATE", &der),
        key_pem: key.serialize_pem(),
    })
}

/// The CA in `dir` (`DATA_DIR/pki`) as a signer, for certificates rcgen writes (node
/// certificates, see [`crate::nodetls`]). Blocking: reads the CA's key.
pub fn ca_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let missing = |path: &Path| PkiError::Invalid {
        path: path.to_path_buf(),
        message: "missing: is this the data dir of a control plane that has started?".into(),
    };
    let ca_cert = read_optional(&cert_path)?.ok_or_else(|| missing(&cert_path))?;
    let ca_key = read_optional(&key_path)?.ok_or_else(|| missing(&key_path))?;
    issuer(dir, &ca_cert, &ca_key)
}

/// The user (CommonName) and groups (each Organization) of a client certificate the TLS
/// handshake verified, as kube-apiserver's x509 authenticator maps them; `None` for a
/// certificate without a CommonName.
pub fn client_identity(cert: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let user = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(String::from)
        .collect();
    (!user.is_empty()).then_some((user, groups))
}

/// Writing a client certificate by hand (DER): rcgen keeps one value per attribute type
/// in a subject, and a user in several groups has several Organizations.
mod client {
    use rcgen::{KeyPair, PublicKeyData};
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    use yasna::models::{GeneralizedTime, ObjectIdentifier, UTCTime};
    use yasna::{DERWriter, Tag};

    const ECDSA_WITH_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
    const COMMON_NAME: &[u64] = &[2, 5, 4, 3];
    const ORGANIZATION: &[u64] = &[2, 5, 4, 10];
    const KEY_USAGE: &[u64] = &[2, 5, 29, 15];
    const BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
    const EXT_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
    const CLIENT_AUTH: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 2];

    pub struct Subject<'a> {
        pub user: &'a str,
        pub groups: &'a [String],
        pub not_before: time::OffsetDateTime,
        pub not_after: time::OffsetDateTime,
    }

    fn oid(w: DERWriter<'_>, id: &[u64]) {
        w.write_oid(&ObjectIdentifier::from_slice(id));
    }

    fn attribute(w: DERWriter<'_>, id: &[u64], value: &str) {
        w.write_set(|w| {
            w.next().write_sequence(|w| {
                oid(w.next(), id);
                w.next().write_utf8_string(value);
            })
        });
    }

    fn extension(w: DERWriter<'_>, id: &[u64], critical: bool, value: Vec<u8>) {
        w.write_sequence(|w| {
            oid(w.next(), id);
            if critical {
                w.next().write_bool(true);
            }
            w.next().write_bytes(&value);
        });
    }

    /// A validity time as RFC 5280 wants it: UTCTime until 2049, GeneralizedTime after,
    /// to the second.
    fn validity_time(w: DERWriter<'_>, t: time::OffsetDateTime) {
        let t = t.to_offset(time::UtcOffset::UTC);
        let t = t.replace_nanosecond(0).unwrap_or(t);
        if (1950..2050).contains(&t.year()) {
            w.write_utctime(&UTCTime::from_datetime(t));
        } else {
            w.write_generalized_time(&GeneralizedTime::from_datetime(t));
        }
    }

    fn algorithm(w: DERWriter<'_>) {
        w.write_sequence(|w| oid(w.next(), ECDSA_WITH_SHA256));
    }

    /// The certificate (DER) of `key` for `subject`, signed with the CA's P-256 key
    /// (`ca_pkcs8`) and naming the CA (`ca_der`) as its issuer.
    pub fn certificate(
        ca_der: &[u8],
        ca_pkcs8: &[u8],
        key: &KeyPair,
        subject: &Subject<'_>,
    ) -> Result<Vec<u8>, String> {
        let (_, ca) = x509_parser::parse_x509_certificate(ca_der)
            .map_err(|e| format!("the CA certificate: {e}"))?;
        let issuer = ca.tbs_certificate.subject.as_raw();
        let rng = SystemRandom::new();
        let mut serial = [0u8; 16];
        ring::rand::SecureRandom::fill(&rng, &mut serial).map_err(|e| e.to_string())?;
        serial[0] = (serial[0] & 0x7f) | 0x01;
        let tbs = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_tagged(Tag::context(0), |w| w.write_u8(2));
                w.next().write_bigint_bytes(&serial, true);
                algorithm(w.next());
                w.next().write_der(issuer);
                w.next().write_sequence(|w| {
                    validity_time(w.next(), subject.not_before);
                    validity_time(w.next(), subject.not_after);
                });
                w.next().write_sequence(|w| {
                    for group in subject.groups {
                        attribute(w.next(), ORGANIZATION, group);
                    }
                    attribute(w.next(), COMMON_NAME, subject.user);
                });
                w.next().write_der(&key.subject_public_key_info());
                w.next().write_tagged(Tag::context(3), |w| {
                    w.write_sequence(|w| {
                        // digitalSignature
                        let usage = yasna::construct_der(|w| w.write_bitvec_bytes(&[0x80], 1));
                        extension(w.next(), KEY_USAGE, true, usage);
                        let not_ca = yasna::construct_der(|w| w.write_sequence(|_| {}));
                        extension(w.next(), BASIC_CONSTRAINTS, true, not_ca);
                        let client = yasna::construct_der(|w| {
                            w.write_sequence(|w| oid(w.next(), CLIENT_AUTH))
                        });
                        extension(w.next(), EXT_KEY_USAGE, false, client);
                    })
                });
            })
        });
        let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, ca_pkcs8, &rng)
            .map_err(|e| format!("the CA key is not an ECDSA P-256 key: {e}"))?;
        let signature = signer.sign(&rng, &tbs).map_err(|e| e.to_string())?;
        let signature = signature.as_ref();
        Ok(yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_der(&tbs);
                algorithm(w.next());
                w.next().write_bitvec_bytes(signature, signature.len() * 8);
            })
        }))
    }

    /// PEM of `der` under `label`.
    pub fn pem(label: &str, der: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }
}

/// A name the serving certificate must be valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    Dns(String),
    Ip(IpAddr),
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Name::Dns(name) => f.write_str(name),
            Name::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The names a client may use to reach a server listening on `listen`.
fn required_names(listen: SocketAddr) -> Vec<Name> {
    let mut names = vec![
        Name::Dns("localhost".into()),
        Name::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Name::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    let ip = listen.ip();
    if !ip.is_unspecified() {
        names.push(Name::Ip(ip));
    }
    if let Some(host) = hostname() {
        names.push(Name::Dns(host));
    }
    for name in [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        names.push(Name::Dns(name.into()));
    }
    let mut unique = Vec::with_capacity(names.len());
    for name in names {
        if !unique.contains(&name) {
            unique.push(name);
        }
    }
    unique
}

/// The machine's hostname, lowercased, if it is a valid DNS name (a certificate cannot
/// carry anything else).
fn hostname() -> Option<String> {
    let host = hostname::get().ok()?.into_string().ok()?;
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    match ServerName::try_from(host.as_str()) {
        Ok(ServerName::DnsName(_)) => Some(host),
        _ => {
            tracing::debug!(%host, "the hostname is not a DNS name; not in the certificate");
            None
        }
    }
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    let io = |error| PkiError::Io {
        path: dir.to_path_buf(),
        error,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

/// Reads a file, `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(PkiError::Io {
            path: path.to_path_buf(),
            error,
        }),
    }
}

fn write(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_private_blocking(path, contents.as_bytes()).map_err(|error| PkiError::Io {
        path: path.to_path_buf(),
        error,
    })
}

fn pem_cert(path: &Path, pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Invalid {
        path: path.to_path_buf(),
        message: format!("not a PEM certificate: {e}"),
    })
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

/// The CA's certificate and key (PEM), and whether they were just made.
fn load_or_generate_ca(dir: &Path, now: SystemTime) -> Result<(String, String, bool), PkiError> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    match (read_optional(&cert_path)?, read_optional(&key_path)?) {
        (Some(cert), Some(key)) => {
            // Fail now, naming the file, rather than later when signing.
            issuer(dir, &cert, &key)?;
            Ok((cert, key, false))
        }
        (Some(_), None) => Err(PkiError::MissingCaKey {
            cert: cert_path,
            key: key_path,
        }),
        // No ca.crt: nobody can trust this CA yet (the kubeconfig is written after it), so
        // a ca.key left alone by a crash is simply replaced.
        (None, _) => {
            let key =
                KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err("CA key"))?;
            let mut params = CertificateParams::default();
            let epoch = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            params.distinguished_name = DistinguishedName::new();
            // Unique per cluster, as k3s does, so that two clusters' CAs are told apart.
            params
                .distinguished_name
                .push(DnType::CommonName, format!("wharf-ca@{epoch}"));
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_before = offset(now - BACKDATE);
            params.not_after = offset(now + CA_VALIDITY);
            let cert = params.self_signed(&key).map_err(gen_err("CA"))?;
            let (cert, key) = (cert.pem(), key.serialize_pem());
            // The key first: a crash between the two leaves no ca.crt, and a new CA.
            write(&key_path, &key)?;
            write(&cert_path, &cert)?;
            tracing::info!(path = %cert_path.display(), "generated the cluster CA");
            Ok((cert, key, true))
        }
    }
}

/// The CA as a signer of certificates.
fn issuer(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Invalid {
        path: dir.join(CA_KEY),
        message: format!("not a private key: {e}"),
    })?;
    Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| PkiError::Invalid {
        path: dir.join(CA_CERT),
        message: format!("not a CA certificate: {e}"),
    })
}

fn gen_err(what: &'static str) -> impl Fn(rcgen::Error) -> PkiError {
    move |error| PkiError::Generate { what, error }
}

type ServerPair = (CertificateDer<'static>, PrivateKeyDer<'static>);

/// The serving certificate and key on disk, or why they cannot be used.
fn read_server(dir: &Path) -> Result<ServerPair, String> {
    let read = |name: &str| match std::fs::read(dir.join(name)) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("no {name}")),
        Err(e) => Err(format!("{name} unreadable: {e}")),
    };
    let cert = CertificateDer::from_pem_slice(&read(SERVER_CERT)?)
        .map_err(|e| format!("{SERVER_CERT} unreadable: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&read(SERVER_KEY)?)
        .map_err(|e| format!("{SERVER_KEY} unreadable: {e}"))?;
    Ok((cert, key))
}

/// Checks a serving certificate: its key, the CA's signature, validity until
/// `now + RENEW_BEFORE`, and every required name. The error says what is wrong.
fn check_server(
    provider: &CryptoProvider,
    ca: &CertificateDer<'static>,
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
    names: &[Name],
    now: SystemTime,
) -> Result<ServerPair, String> {
    rustls::sign::CertifiedKey::from_der(vec![cert.clone()], key.clone_key(), provider)
        .map_err(|e| format!("{SERVER_CERT} does not match {SERVER_KEY}: {e}"))?;
    let parsed =
        ParsedCertificate::try_from(cert).map_err(|e| format!("{SERVER_CERT} unreadable: {e}"))?;
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| format!("{CA_CERT} unusable: {e}"))?;
    let algs = provider.signature_verification_algorithms.all;
    let at = |t: SystemTime| {
        UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
    };
    rustls::client::verify_server_cert_signed_by_trust_anchor(&parsed, &roots, &[], at(now), algs)
        .map_err(|e| format!("{SERVER_CERT} not valid under {CA_CERT}: {e}"))?;
    let renew = now + RENEW_BEFORE;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &[],
        at(renew),
        algs,
    )
    .map_err(|_| {
        format!(
            "{SERVER_CERT} expires within {} days",
            RENEW_BEFORE.as_secs() / 86400
        )
    })?;
    for name in names {
        let server_name = match name {
            Name::Dns(dns) => ServerName::try_from(dns.as_str())
                .map_err(|e| format!("{dns}: {e}"))?
                .to_owned(),
            Name::Ip(ip) => ServerName::IpAddress((*ip).into()),
        };
        rustls::client::verify_server_name(&parsed, &server_name)
            .map_err(|_| format!("{SERVER_CERT} lacks the name {name}"))?;
    }
    Ok((cert.clone(), key.clone_key()))
}

/// Makes and writes a serving certificate for `names`, signed by the CA.
fn generate_server(
    dir: &Path,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    names: &[Name],
    now: SystemTime,
) -> Result<ServerPair, PkiError> {
    generate_server_valid_until(
        dir,
        ca_cert_pem,
        ca_key_pem,
        names,
        now,
        now + SERVER_VALIDITY,
    )
}

fn generate_server_valid_until(
    dir: &Path,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    names: &[Name],
    now: SystemTime,
    not_after: SystemTime,
) -> Result<ServerPair, PkiError> {
    let issuer = issuer(dir, ca_cert_pem, ca_key_pem)?;
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err("serving key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "wharf-apiserver");
    params.subject_alt_names = names
        .iter()
        .map(|name| match name {
            Name::Dns(dns) => dns
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(gen_err("serving certificate")),
            Name::Ip(ip) => Ok(SanType::IpAddress(*ip)),
        })
        .collect::<Result<_, _>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = offset(now - BACKDATE);
    params.not_after = offset(not_after);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(gen_err("serving certificate"))?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    // The key first: a crash between the two leaves a mismatched pair, replaced next start.
    write(&dir.join(SERVER_KEY), &key_pem)?;
    write(&dir.join(SERVER_CERT), &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| PkiError::Invalid {
        path: dir.join(SERVER_KEY),
        message: format!("not a private key: {e}"),
    })?;
    Ok((cert.der().clone(), key))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn listen(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn read(dir: &Path, name: &str) -> Vec<u8> {
        std::fs::read(dir.join(name)).unwrap()
    }

    /// Verifies `server.crt` in `dir` against `ca.crt` for `name`, as a TLS client would.
    fn verifies_for(dir: &Path, name: &str) -> bool {
        let provider = crypto_provider();
        let ca = CertificateDer::from_pem_slice(&read(dir, CA_CERT)).unwrap();
        let cert = CertificateDer::from_pem_slice(&read(dir, SERVER_CERT)).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            verifier.as_ref(),
            &cert,
            &[],
            &name,
            &[],
            UnixTime::now(),
        )
        .is_ok()
    }

    /// Verifies a client certificate (PEM) against the CA in `dir` at `at`, as the API
    /// server's TLS handshake does.
    fn client_verifies(dir: &Path, cert_pem: &str, at: SystemTime) -> bool {
        let ca = CertificateDer::from_pem_slice(&read(dir, CA_CERT)).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            crypto_provider(),
        )
        .build()
        .unwrap();
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let at = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        rustls::server::danger::ClientCertVerifier::verify_client_cert(
            verifier.as_ref(),
            &cert,
            &[],
            at,
        )
        .is_ok()
    }

    #[test]
    fn client_certificates_carry_the_user_and_every_group_and_verify_until_they_expire() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        Pki::load_or_generate(&dir, listen("127.0.0.1:6443")).unwrap();
        let now = SystemTime::now();
        let groups = vec!["dev".to_string(), "ops".to_string(), "qa team".to_string()];
        let cert =
            issue_client_cert(&dir, "alice", &groups, Duration::from_secs(3600), now).unwrap();
        assert!(cert.key_pem.contains("PRIVATE KEY"));
        let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
        assert_eq!(client_identity(&der), Some(("alice".into(), groups)));
        assert!(client_verifies(&dir, &cert.cert_pem, now));
        assert!(!client_verifies(
            &dir,
            &cert.cert_pem,
            now + Duration::from_secs(7200)
        ));
        // No groups at all is a user alone.
        let solo = issue_client_cert(&dir, "bob", &[], Duration::from_secs(60), now).unwrap();
        let der = CertificateDer::from_pem_slice(solo.cert_pem.as_bytes()).unwrap();
        assert_eq!(client_identity(&der), Some(("bob".into(), vec![])));
        // Another cluster's CA does not vouch for it.
        let other = tmp.path().join("other");
        Pki::load_or_generate(&other, listen("127.0.0.1:6443")).unwrap();
        assert!(!client_verifies(&other, &cert.cert_pem, now));
        // Nor for the serving certificate as a client's (no clientAuth usage).
        let server = String::from_utf8(read(&dir, SERVER_CERT)).unwrap();
        assert!(!client_verifies(&dir, &server, now));
    }

    #[test]
    fn generated_certificate_verifies_against_the_ca_with_the_expected_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let pki = Pki::load_or_generate(&dir, listen("10.11.12.13:6443")).unwrap();
        assert!(pki.generated.ca);
        assert_eq!(pki.generated.server.as_deref(), Some("a new CA"));
        for name in [
            "localhost",
            "127.0.0.1",
            "::1",
            "10.11.12.13",
            "kubernetes.default.svc",
        ] {
            assert!(verifies_for(&dir, name), "{name}");
        }
        if let Some(host) = hostname() {
            assert!(verifies_for(&dir, &host), "{host}");
        }
        assert!(!verifies_for(&dir, "example.com"));
        assert!(!verifies_for(&dir, "10.11.12.14"));
        assert!(pki.ca_cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(pki.ca_cert_path(), dir.join(CA_CERT));
        pki.server_config().unwrap();

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for name in [CA_KEY, SERVER_KEY, CA_CERT, SERVER_CERT] {
                let mode = std::fs::metadata(dir.join(name))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{name}");
            }
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_second_start_reuses_everything() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        Pki::load_or_generate(&dir, listen("127.0.0.1:0")).unwrap();
        let files: Vec<_> = [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY]
            .map(|n| read(&dir, n))
            .into();
        let again = Pki::load_or_generate(&dir, listen("127.0.0.1:6443")).unwrap();
        assert_eq!(
            again.generated,
            Generated {
                ca: false,
                server: None
            }
        );
        let after: Vec<_> = [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY]
            .map(|n| read(&dir, n))
            .into();
        assert_eq!(files, after);

        std::fs::remove_file(dir.join(SERVER_CERT)).unwrap();
        let pki = Pki::load_or_generate(&dir, listen("127.0.0.1:6443")).unwrap();
        assert_eq!(pki.generated.server.as_deref(), Some("no server.crt"));
        assert_eq!(read(&dir, CA_CERT), files[0]);
    }

    #[test]
    fn a_missing_name_renews_the_serving_certificate_under_the_same_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        Pki::load_or_generate(&dir, listen("0.0.0.0:6443")).unwrap();
        let (ca, server) = (read(&dir, CA_CERT), read(&dir, SERVER_CERT));
        assert!(!verifies_for(&dir, "192.168.77.5"));

        let pki = Pki::load_or_generate(&dir, listen("192.168.77.5:6443")).unwrap();
        assert!(!pki.generated.ca);
        let reason = pki.generated.server.unwrap();
        assert!(reason.contains("lacks the name 192.168.77.5"), "{reason}");
        assert_eq!(read(&dir, CA_CERT), ca);
        assert_ne!(read(&dir, SERVER_CERT), server);
        assert!(verifies_for(&dir, "192.168.77.5"));
        assert!(verifies_for(&dir, "127.0.0.1"));
    }

    #[test]
    fn an_expiring_or_mismatched_serving_certificate_is_renewed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let addr = listen("127.0.0.1:6443");
        Pki::load_or_generate(&dir, addr).unwrap();
        let (ca_cert, ca_key) = (
            std::fs::read_to_string(dir.join(CA_CERT)).unwrap(),
            std::fs::read_to_string(dir.join(CA_KEY)).unwrap(),
        );
        let now = SystemTime::now();
        let soon = now + Duration::from_secs(10 * 24 * 3600);
        let names = required_names(addr);
        generate_server_valid_until(&dir, &ca_cert, &ca_key, &names, now, soon).unwrap();
        let pki = Pki::load_or_generate(&dir, addr).unwrap();
        let reason = pki.generated.server.unwrap();
        assert!(reason.contains("expires within 30 days"), "{reason}");

        // A crash between writing server.key and server.crt: the pair does not match.
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        write(&dir.join(SERVER_KEY), &other.serialize_pem()).unwrap();
        let pki = Pki::load_or_generate(&dir, addr).unwrap();
        let reason = pki.generated.server.clone().unwrap();
        assert!(reason.contains("does not match"), "{reason}");
        pki.server_config().unwrap();
    }

    #[test]
    fn a_ca_certificate_without_its_key_is_an_error_and_a_lone_key_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let addr = listen("127.0.0.1:6443");
        Pki::load_or_generate(&dir, addr).unwrap();
        let ca_key = read(&dir, CA_KEY);
        std::fs::remove_file(dir.join(CA_KEY)).unwrap();
        let err = Pki::load_or_generate(&dir, addr).unwrap_err();
        assert!(matches!(err, PkiError::MissingCaKey { .. }), "{err}");

        std::fs::write(dir.join(CA_KEY), &ca_key).unwrap();
        std::fs::remove_file(dir.join(CA_CERT)).unwrap();
        let pki = Pki::load_or_generate(&dir, addr).unwrap();
        assert!(pki.generated.ca);
        assert_eq!(pki.generated.server.as_deref(), Some("a new CA"));
        assert_ne!(read(&dir, CA_KEY), ca_key);
        assert!(verifies_for(&dir, "localhost"));
    }

    #[test]
    fn names_for_unspecified_and_specific_addresses() {
        let any = required_names(listen("0.0.0.0:6443"));
        assert!(!any.contains(&Name::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED))));
        assert!(any.contains(&Name::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST))));
        let v6 = required_names(listen("[fd00::7]:6443"));
        assert!(v6.contains(&Name::Ip("fd00::7".parse().unwrap())));
        let local = required_names(listen("127.0.0.1:6443"));
        let count = local
            .iter()
            .filter(|n| **n == Name::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)))
            .count();
        assert_eq!(count, 1);
    }
}
