//! TLS client settings shared by every connection pgevents makes (PostgreSQL replication and
//! SQL, RabbitMQ): which certificates are trusted (a CA file, or the Mozilla roots), how much of
//! the server's certificate is checked ([`Verify`]: nothing, the chain, or chain and host name),
//! and the client's own certificate. Also the `tls-server-end-point` channel binding data of a
//! server certificate (RFC 5929), for SCRAM-SHA-256-PLUS.

mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// TLS settings that cannot be used: a file that cannot be read or holds no certificate or
/// key, a host name that is not a server name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid TLS settings: {0}")]
pub struct TlsError(pub String);

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Nothing: encrypted, but anyone in the middle can present a certificate (libpq's
    /// `require`). Signatures are still checked, so the session is bound to the certificate.
    None,
    /// The chain leads to a trusted root; the host name is not compared (libpq's `verify-ca`:
    /// for servers reached by an address their certificate does not name).
    Chain,
    /// Chain and host name (libpq's `verify-full`, and AMQPS).
    Full,
}

/// A client certificate and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Everything a TLS client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub verify: Verify,
    /// PEM file of the CA certificates to trust; `None`: the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Presented when the server asks for one (and for SASL EXTERNAL).
    pub client_cert: Option<ClientCert>,
}

impl ClientTls {
    /// Full verification against the Mozilla roots, no client certificate.
    pub fn verify_full() -> ClientTls {
        ClientTls { verify: Verify::Full, ca_file: None, client_cert: None }
    }

    /// The rustls configuration.
    pub fn config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?;
        let builder = match self.verify {
            Verify::None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verify::AcceptAnyCertificate::new(provider))),
            Verify::Chain => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verify::ChainOnly::new(self.roots()?, provider)?)),
            Verify::Full => builder.with_root_certificates(self.roots()?),
        };
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some(client) => {
                let (certs, key) = client_identity(client)?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| TlsError(format!("client certificate {}: {e}", client.cert_file.display())))?
            }
        };
        Ok(Arc::new(config))
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        match &self.ca_file {
            Some(path) => roots_from_file(path),
            None => Ok(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file, as trusted roots.
pub fn roots_from_file(path: &Path) -> Result<RootCertStore, TlsError> {
    let bad = |why: String| TlsError(format!("CA certificate file {}: {why}", path.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    Ok(roots)
}

fn client_identity(client: &ClientCert) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_error = |why: String| TlsError(format!("client certificate file {}: {why}", client.cert_file.display()));
    let certs = CertificateDer::pem_file_iter(&client.cert_file)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&client.key_file)
        .map_err(|e| TlsError(format!("client key file {}: {e}", client.key_file.display())))?;
    Ok((certs, key))
}

/// The server name to present (SNI) and verify.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|e| TlsError(format!("host {host:?}: {e}")))
}

/// The `tls-server-end-point` channel binding data of a server's certificate (DER): its hash
/// with the hash function of its signature algorithm (MD5 and SHA-1 upgraded to SHA-256, RFC
/// 5929 §4.1). `None` for algorithms without one (Ed25519) or a certificate that cannot be read.
pub fn tls_server_end_point(certificate: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    use x509_cert::der::oid::db::rfc5912::{
        ECDSA_WITH_SHA_256, ECDSA_WITH_SHA_384, ECDSA_WITH_SHA_512, ID_SHA_1, ID_SHA_256, ID_SHA_384, ID_SHA_512,
        SHA_1_WITH_RSA_ENCRYPTION, SHA_256_WITH_RSA_ENCRYPTION, SHA_384_WITH_RSA_ENCRYPTION,
        SHA_512_WITH_RSA_ENCRYPTION,
    };
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(certificate).ok()?;
    match parsed.signature_algorithm.oid {
        ID_SHA_1 | ID_SHA_256 | SHA_1_WITH_RSA_ENCRYPTION | SHA_256_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_256 => {
            Some(sha2::Sha256::digest(certificate).to_vec())
        }
        ID_SHA_384 | SHA_384_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_384 => {
            Some(sha2::Sha384::digest(certificate).to_vec())
        }
        ID_SHA_512 | SHA_512_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_512 => {
            Some(sha2::Sha512::digest(certificate).to_vec())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_there_or_hold_nothing_are_clear_errors() {
        let missing = ClientTls { ca_file: Some("/nonexistent/ca.pem".into()), ..ClientTls::verify_full() };
        let err = missing.config().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no pem here").unwrap();
        let err = ClientTls { ca_file: Some(empty.clone()), ..ClientTls::verify_full() }.config().unwrap_err();
        assert!(err.to_string().contains("no certificate found"), "{err}");
        let client = ClientCert { cert_file: empty.clone(), key_file: empty };
        let err = ClientTls { client_cert: Some(client), ..ClientTls::verify_full() }.config().unwrap_err();
        assert!(err.to_string().contains("client certificate file"), "{err}");
        assert!(ClientTls::verify_full().config().is_ok());
        assert!(ClientTls { verify: Verify::None, ..ClientTls::verify_full() }.config().is_ok());
        assert!(ClientTls { verify: Verify::Chain, ..ClientTls::verify_full() }.config().is_ok());
    }

    #[test]
    fn garbage_has_no_channel_binding() {
        assert_eq!(tls_server_end_point(b"not a certificate"), None);
    }
}
