//! Node traffic under TLS: the certificates of nodes, and the rustls configurations of the
//! node server, the node tunnel and whoever calls them.
//!
//! Why: the node server (logs, stats) and the node tunnel (pod bytes between machines)
//! carry a bearer credential that reaches every pod; in clear, anyone who can watch the
//! wire could use it. So both speak only TLS, and both sides prove who they are with
//! certificates of the cluster CA ([`crate::pki`]), as kubelets do:
//!
//! - A node holds a certificate for `system:node:NAME` in `system:nodes` whose names are
//!   its addresses: it serves the node server and the tunnel with it and presents it as
//!   a client to other nodes' tunnels. It makes its key itself (never sent anywhere), asks
//!   the API server to sign a request for it (`POST /api/v1/nodes/NAME/certificate`, see
//!   [`crate::apiserver::nodecert`]), keeps both in its data dir (0600) and renews at two
//!   thirds of the lifetime ([`renew_at`]), without a restart ([`ReloadableCert`]).
//! - The API server presents a client certificate for [`APISERVER_NODE_CLIENT`], issued
//!   from the CA when the control plane starts, and verifies the node's certificate
//!   against the CA and the address it dialed.
//! - Peers verify each other the same way; the bearer credential stays a second factor
//!   (a user certificate from `wharf kubeconfig create` chains to the same CA).
//!
//! What a signer accepts is [`check_node_csr`] (pure); [`sign_node_csr`] applies it.

use crate::pki::{self, PkiError};
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

/// The group every node certificate names, as kubelets' do.
pub const NODE_GROUP: &str = "system:nodes";
/// The user prefix of a node's identity.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The user the API server's client certificate towards nodes names.
pub const APISERVER_NODE_CLIENT: &str = "system:kube-apiserver-node-client";
/// How long a node certificate is valid.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the API server's client certificate towards nodes is valid (a new one is
/// issued on every start of the control plane).
pub const APISERVER_CLIENT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// The certificate files in a node's `DATA_DIR/pki`.
pub const NODE_CERT: &str = "node.crt";
pub const NODE_KEY: &str = "node.key";

/// Why node TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum NodeTlsError {
    #[error("certificate signing request refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("building the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The identity a node's certificate names.
pub fn node_user(node: &str) -> String {
    format!("{NODE_USER_PREFIX}{node}")
}

/// When a certificate valid from `not_before` to `not_after` is renewed: at two thirds of
/// its lifetime, as kubelets rotate theirs (between 70 and 90 percent).
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_before + life * 2 / 3
}

/// A node's key and a signing request for it (PEM): CN `system:node:NAME`, O
/// `system:nodes`, the node's addresses and names as SANs.
pub fn node_csr(
    node: &str,
    ips: &[IpAddr],
    dns: &[String],
) -> Result<(KeyPair, String), NodeTlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = node_subject(node);
    params.subject_alt_names = san_list(ips, dns)?;
    let csr = params.serialize_request(&key)?;
    Ok((key, csr.pem()?))
}

fn node_subject(node: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, NODE_GROUP);
    dn.push(DnType::CommonName, node_user(node));
    dn
}

fn san_list(ips: &[IpAddr], dns: &[String]) -> Result<Vec<SanType>, NodeTlsError> {
    let mut sans: Vec<SanType> = ips.iter().copied().map(SanType::IpAddress).collect();
    for name in dns {
        sans.push(SanType::DnsName(name.clone().try_into()?));
    }
    Ok(sans)
}

/// What a signing request asks for, as [`check_node_csr`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrSubject {
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
    /// Anything else in the subject or the SANs (e-mail, URI, other attributes).
    pub other: Vec<String>,
    pub is_ca: bool,
}

/// Whether a node may have its signing request signed (pure), as Kubernetes approves a
/// kubelet's serving certificate request: the requester is that node, the subject is
/// exactly `CN=system:node:NAME, O=system:nodes`, it asks for no CA and no other kind of
/// name, and every address or DNS name is one the Node publishes in `status.addresses`.
pub fn check_node_csr(
    requester: &str,
    csr: &CsrSubject,
    node_addresses: &[String],
) -> Result<(), String> {
    let expected = node_user(requester);
    if csr.common_name.as_deref() != Some(expected.as_str()) {
        return Err(format!(
            "the subject's common name must be {expected:?}, not {:?}",
            csr.common_name.as_deref().unwrap_or_default()
        ));
    }
    if csr.organizations != [NODE_GROUP] {
        return Err(format!(
            "the subject's organization must be exactly [{NODE_GROUP:?}], not {:?}",
            csr.organizations
        ));
    }
    if csr.is_ca {
        return Err("a node certificate cannot be a CA".into());
    }
    if let Some(other) = csr.other.first() {
        return Err(format!("{other} is not allowed in a node certificate"));
    }
    if csr.ips.is_empty() && csr.dns.is_empty() {
        return Err("at least one IP address or DNS name is required".into());
    }
    let published = |name: &str| node_addresses.iter().any(|a| a.eq_ignore_ascii_case(name));
    for ip in &csr.ips {
        let ok = node_addresses
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .any(|a| a == *ip);
        if !ok {
            return Err(format!(
                "IP address {ip} is not one of node {requester}'s status.addresses"
            ));
        }
    }
    for name in &csr.dns {
        if !published(name) {
            return Err(format!(
                "DNS name {name} is not one of node {requester}'s status.addresses"
            ));
        }
    }
    Ok(())
}

fn dn_text(value: &DnValue) -> Option<String> {
    match value {
        DnValue::Utf8String(s) => Some(s.clone()),
        DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Reads a signing request (PEM; its signature is verified) into what the check needs.
pub fn parse_csr(pem: &str) -> Result<(CertificateSigningRequestParams, CsrSubject), String> {
    let csr = CertificateSigningRequestParams::from_pem(pem)
        .map_err(|e| format!("not a valid PEM certificate signing request: {e}"))?;
    let mut subject = CsrSubject {
        common_name: None,
        organizations: vec![],
        ips: vec![],
        dns: vec![],
        other: vec![],
        is_ca: !matches!(csr.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa),
    };
    for (ty, value) in csr.params.distinguished_name.iter() {
        let text = dn_text(value);
        match (ty, text) {
            (DnType::CommonName, Some(t)) if subject.common_name.is_none() => {
                subject.common_name = Some(t)
            }
            (DnType::OrganizationName, Some(t)) => subject.organizations.push(t),
            (ty, _) => subject.other.push(format!("the subject attribute {ty:?}")),
        }
    }
    for san in &csr.params.subject_alt_names {
        match san {
            SanType::IpAddress(ip) => subject.ips.push(*ip),
            SanType::DnsName(name) => subject.dns.push(name.as_str().to_string()),
            other => subject.other.push(format!("the name {other:?}")),
        }
    }
    Ok((csr, subject))
}

/// Signs a node's request (PEM) with the CA in `pki_dir` if [`check_node_csr`] allows
/// it; the certificate (PEM) is valid for `validity` from `now`, for serving and as a
/// client. Blocking: reads the CA's key.
pub fn sign_node_csr(
    pki_dir: &Path,
    requester: &str,
    csr_pem: &str,
    node_addresses: &[String],
    validity: Duration,
    now: SystemTime,
) -> Result<String, NodeTlsError> {
    let (mut csr, subject) = parse_csr(csr_pem).map_err(NodeTlsError::Refused)?;
    check_node_csr(requester, &subject, node_addresses).map_err(NodeTlsError::Refused)?;
    let issuer = pki::ca_issuer(pki_dir)?;
    // Only what was checked goes into the certificate; usages are the signer's choice.
    let params = &mut csr.params;
    params.distinguished_name = node_subject(requester);
    params.subject_alt_names = san_list(&subject.ips, &subject.dns)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = (now - Duration::from_secs(300).min(validity)).into();
    params.not_after = (now + validity).into();
    Ok(csr.signed_by(&issuer)?.pem())
}

/// The validity period of a certificate (PEM or DER).
pub fn validity(cert: &CertificateDer<'_>) -> Option<(SystemTime, SystemTime)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    };
    Some((
        at(parsed.validity().not_before)?,
        at(parsed.validity().not_after)?,
    ))
}

/// A certificate and key that can be replaced while servers and clients use it: rustls
/// asks on every handshake.
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// From PEM text.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, NodeTlsError> {
        Ok(ReloadableCert {
            current: RwLock::new(certified(cert_pem, key_pem)?),
        })
    }

    /// Replaces the certificate and key; the next handshake uses them.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), NodeTlsError> {
        let next = certified(cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    /// The certificate used now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn certified(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, NodeTlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NodeTlsError::Invalid(format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(NodeTlsError::Invalid(
            "no certificate in the PEM text".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| NodeTlsError::Invalid(format!("not a PEM private key: {e}")))?;
    Ok(Arc::new(CertifiedKey::from_der(
        certs,
        key,
        &pki::crypto_provider(),
    )?))
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadableCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, NodeTlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert =
            cert.map_err(|e| NodeTlsError::Invalid(format!("the cluster CA is not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| NodeTlsError::Invalid(format!("the cluster CA is unusable: {e}")))?;
    }
    if roots.is_empty() {
        return Err(NodeTlsError::Invalid("no cluster CA certificate".into()));
    }
    Ok(Arc::new(roots))
}

/// The TLS configuration of a node's servers: `cert` as the server's, and client
/// certificates verified against the cluster CA (`ca_pem`). With `require_client` a
/// client without one fails the handshake; without, it may connect (the node server's
/// `/metrics`) but a certificate it presents must still chain to the CA.
pub fn server_config(
    ca_pem: &str,
    cert: Arc<ReloadableCert>,
    require_client: bool,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, NodeTlsError> {
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(ca_pem)?,
        pki::crypto_provider(),
    );
    let builder = if require_client {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    let verifier = builder
        .build()
        .map_err(|e| NodeTlsError::Invalid(format!("client certificate verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(pki::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The TLS configuration of a caller of nodes: servers verified against the cluster CA
/// (and the name or address dialed), `cert` presented as the client's.
pub fn client_config(
    ca_pem: &str,
    cert: Arc<ReloadableCert>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, NodeTlsError> {
    let mut config = ClientConfig::builder_with_provider(pki::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The API server's client configuration towards nodes: a new client certificate for
/// [`APISERVER_NODE_CLIENT`] from the CA in `pki_dir`. Blocking: reads the CA's key.
pub fn apiserver_client_config(
    pki_dir: &Path,
    now: SystemTime,
) -> Result<Arc<ClientConfig>, NodeTlsError> {
    let cert = pki::issue_client_cert(
        pki_dir,
        APISERVER_NODE_CLIENT,
        &[],
        APISERVER_CLIENT_VALIDITY,
        now,
    )?;
    let ca = std::fs::read_to_string(pki_dir.join(pki::CA_CERT)).map_err(|error| PkiError::Io {
        path: pki_dir.join(pki::CA_CERT),
        error,
    })?;
    let cert = Arc::new(ReloadableCert::from_pem(&cert.cert_pem, &cert.key_pem)?);
    client_config(&ca, cert, &[b"http/1.1"])
}

/// Whether `cert` (PEM) is fit to keep using at `now` for these names: it chains to the
/// CA, is before its renewal time, and names every address and DNS name. `Err` says why
/// not.
pub fn check_node_cert(
    ca_pem: &str,
    cert_pem: &str,
    ips: &[IpAddr],
    dns: &[String],
    now: SystemTime,
) -> Result<SystemTime, String> {
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| format!("{NODE_CERT} unreadable: {e}"))?;
    let (not_before, not_after) = validity(&cert).ok_or(format!("{NODE_CERT} unreadable"))?;
    let renew = renew_at(not_before, not_after);
    if now >= renew {
        return Err(format!("{NODE_CERT} is due for renewal"));
    }
    let roots = roots(ca_pem).map_err(|e| e.to_string())?;
    let parsed = rustls::server::ParsedCertificate::try_from(&cert)
        .map_err(|e| format!("{NODE_CERT} unreadable: {e}"))?;
    let unix = rustls::pki_types::UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let algs = pki::crypto_provider().signature_verification_algorithms.all;
    rustls::client::verify_server_cert_signed_by_trust_anchor(&parsed, &roots, &[], unix, algs)
        .map_err(|e| format!("{NODE_CERT} not valid under the cluster CA: {e}"))?;
    let names = ips
        .iter()
        .map(|ip| Ok(rustls::pki_types::ServerName::IpAddress((*ip).into())))
        .chain(dns.iter().map(|d| {
            rustls::pki_types::ServerName::try_from(d.clone()).map_err(|e| format!("{d}: {e}"))
        }));
    for name in names {
        let name = name?;
        rustls::client::verify_server_name(&parsed, &name)
            .map_err(|_| format!("{NODE_CERT} lacks the name {name:?}"))?;
    }
    Ok(renew)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn subject(cn: &str, orgs: &[&str], ips: &[&str], dns: &[&str]) -> CsrSubject {
        CsrSubject {
            common_name: Some(cn.into()),
            organizations: orgs.iter().map(|s| s.to_string()).collect(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            dns: dns.iter().map(|s| s.to_string()).collect(),
            other: vec![],
            is_ca: false,
        }
    }

    fn addresses() -> Vec<String> {
        vec!["10.0.0.7".into(), "worker-1".into()]
    }

    #[test]
    fn a_node_gets_its_own_certificate_for_its_published_addresses_only() {
        let ok = subject(
            "system:node:worker-1",
            &["system:nodes"],
            &["10.0.0.7"],
            &["worker-1"],
        );
        assert_eq!(check_node_csr("worker-1", &ok, &addresses()), Ok(()));

        // Another node's name: the requester must be the node the certificate names.
        let err = check_node_csr("worker-2", &ok, &addresses()).unwrap_err();
        assert!(err.contains("system:node:worker-2"), "{err}");
        // Extra or missing groups.
        let groups = subject(
            "system:node:worker-1",
            &["system:nodes", "system:masters"],
            &["10.0.0.7"],
            &[],
        );
        assert!(
            check_node_csr("worker-1", &groups, &addresses())
                .unwrap_err()
                .contains("organization")
        );
        // An address the node does not publish.
        let ip = subject(
            "system:node:worker-1",
            &["system:nodes"],
            &["10.0.0.8"],
            &[],
        );
        let err = check_node_csr("worker-1", &ip, &addresses()).unwrap_err();
        assert!(err.contains("10.0.0.8"), "{err}");
        let dns = subject(
            "system:node:worker-1",
            &["system:nodes"],
            &[],
            &["kubernetes.default.svc"],
        );
        assert!(check_node_csr("worker-1", &dns, &addresses()).is_err());
        // No names at all, a CA, anything else.
        let none = subject("system:node:worker-1", &["system:nodes"], &[], &[]);
        assert!(check_node_csr("worker-1", &none, &addresses()).is_err());
        let mut ca = ok.clone();
        ca.is_ca = true;
        assert!(check_node_csr("worker-1", &ca, &addresses()).is_err());
        let mut other = ok.clone();
        other.other.push("the name URI".into());
        assert!(check_node_csr("worker-1", &other, &addresses()).is_err());
    }

    #[test]
    fn renewal_is_at_two_thirds_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(3000);
        assert_eq!(renew_at(start, end), start + Duration::from_secs(2000));
        // A certificate whose end is before its start is due at once.
        assert_eq!(renew_at(end, start), end);
    }

    #[test]
    fn a_signed_request_verifies_under_the_ca_and_is_due_for_renewal_on_time() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        pki::Pki::load_or_generate(&dir, "127.0.0.1:6443".parse().unwrap()).unwrap();
        let ca = std::fs::read_to_string(dir.join(pki::CA_CERT)).unwrap();
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
        let (key, csr) = node_csr("worker-1", &[ip], &["worker-1".into()]).unwrap();
        let now = SystemTime::now();
        let validity = Duration::from_secs(3000);
        let cert = sign_node_csr(&dir, "worker-1", &csr, &addresses(), validity, now).unwrap();
        // Usable as a server and client certificate with its key.
        ReloadableCert::from_pem(&cert, &key.serialize_pem()).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(
            pki::client_identity(&der),
            Some(("system:node:worker-1".into(), vec!["system:nodes".into()]))
        );
        // Fit now; due for renewal at two thirds (the clock driven, not waited for).
        let renew = check_node_cert(&ca, &cert, &[ip], &["worker-1".into()], now).unwrap();
        let (not_before, not_after) = validity_of(&cert);
        assert_eq!(renew, renew_at(not_before, not_after));
        assert!(renew > now + Duration::from_secs(1500));
        assert!(check_node_cert(&ca, &cert, &[ip], &[], renew).is_err());
        // Not for another address, nor under another CA.
        let other_ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));
        assert!(check_node_cert(&ca, &cert, &[other_ip], &[], now).is_err());
        let other = tmp.path().join("other");
        pki::Pki::load_or_generate(&other, "127.0.0.1:6443".parse().unwrap()).unwrap();
        let other_ca = std::fs::read_to_string(other.join(pki::CA_CERT)).unwrap();
        assert!(check_node_cert(&other_ca, &cert, &[ip], &[], now).is_err());
        // Another node's request is refused by the signer.
        let err = sign_node_csr(&dir, "worker-2", &csr, &addresses(), validity, now).unwrap_err();
        assert!(matches!(err, NodeTlsError::Refused(_)), "{err}");
        // A tampered request does not parse.
        let tampered = csr.replace("A", "B");
        assert!(sign_node_csr(&dir, "worker-1", &tampered, &addresses(), validity, now).is_err());
    }

    fn validity_of(pem: &str) -> (SystemTime, SystemTime) {
        validity(&CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()).unwrap()
    }
}
