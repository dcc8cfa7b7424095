//! TLS for guests' outgoing `https` requests.
//!
//! A guest's `https://` request is sent by the node over TLS (rustls with the ring
//! provider, as the rest of wharf), HTTP/1.1 inside. The server is verified against the
//! machine's trusted roots plus the CAs the node adds ([`crate::RuntimeConfig::egress_ca_pems`]):
//! the node adds its cluster's CA, the one it mounts for pods as
//! `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`, so that a pod reaches the API
//! server at `https://kubernetes.default.svc` as in Kubernetes. The name checked (and sent
//! as SNI) is the host the guest wrote, never the address the request is routed to, so a
//! Service or an alias can move the connection but never what the certificate must prove.
//!
//! One client configuration is built per runtime, when it starts: reading the system's
//! roots is blocking file I/O and the same answer serves every request.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Why the guests' TLS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EgressTlsError {
    #[error("extra CA certificate {index}: {message}")]
    BadCa { index: usize, message: String },
    #[error("extra CA certificate {index} holds no PEM certificate")]
    EmptyCa { index: usize },
    #[error("TLS client: {0}")]
    Config(#[from] rustls::Error),
}

/// The client configuration for guests' `https` requests: the system's roots (those that
/// can be read: a machine without a trust store still gets the extra CAs) plus `extra_pems`
/// (each one or more PEM certificates). Blocking (reads the trust store).
pub(crate) fn client_config(
    extra_pems: &[String],
) -> Result<Arc<rustls::ClientConfig>, EgressTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!("reading the system's trusted roots: {e}");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!("guests' TLS: {added} system roots ({ignored} unparsable)");
    for (index, pem) in extra_pems.iter().enumerate() {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| EgressTlsError::BadCa {
                index,
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(EgressTlsError::EmptyCa { index });
        }
        for cert in certs {
            roots.add(cert)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The connection speaks HTTP/1.1 (the client is hyper's http1).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name a guest's `https` request is verified against: the URL's host as written
/// (brackets and a trailing root dot removed; an IP address is checked as one).
pub(crate) fn server_name(host: &str) -> Option<ServerName<'static>> {
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.');
    ServerName::try_from(bare.to_owned()).ok()
}

/// The wasi:http error a failed TLS handshake is to the guest: a certificate that does not
/// verify is `TLS-certificate-error`, an alert from the server `TLS-alert-received`,
/// anything else `TLS-protocol-error` (with the cause in the log).
pub(crate) fn handshake_error(e: std::io::Error) -> wasmtime_wasi_http::Error {
    use wasmtime_wasi_http::Error;
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => Error::TlsCertificateError,
        Some(rustls::Error::AlertReceived(alert)) => Error::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        Some(other) => {
            tracing::debug!("guest TLS handshake: {other}");
            Error::TlsProtocolError
        }
        None => Error::Tls(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_host_as_written() {
        assert_eq!(
            server_name("kubernetes.default.svc."),
            Some(ServerName::try_from("kubernetes.default.svc").unwrap())
        );
        assert!(matches!(
            server_name("[::1]"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Some(ServerName::IpAddress(_))
        ));
        assert_eq!(server_name("bad name!"), None);
    }

    #[test]
    fn extra_cas_must_be_certificates() {
        assert!(matches!(
            client_config(&["not a certificate".into()]),
            Err(EgressTlsError::EmptyCa { index: 0 })
        ));
        assert!(client_config(&[]).is_ok());
    }
}
