//! TLS for connections to PostgreSQL, with libpq's meanings of `sslmode`:
//! `disable` (never), `prefer` (if the server offers it, unverified), `require` (always,
//! unverified), and `verify-full` (always, certificate and host name checked against a root
//! certificate file, or the Mozilla roots when no file is given).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// TLS settings that cannot be used (a root certificate file that cannot be read, a host name
/// that is not a valid server name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid TLS settings: {0}")]
pub struct TlsConfigError(pub String);

/// When to use TLS and how much to check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsMode {
    Disable,
    /// TLS when the server offers it, certificate not checked (libpq's default).
    #[default]
    Prefer,
    /// TLS always, certificate not checked.
    Require,
    /// TLS always, certificate and host name checked against this root file (or Mozilla's roots).
    VerifyFull {
        root_cert: Option<PathBuf>,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration for `mode` (`None` for `Disable`).
pub fn client_config(mode: &TlsMode) -> Result<Option<Arc<ClientConfig>>, TlsConfigError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError(e.to_string()))?;
    let config = match mode {
        TlsMode::Disable => return Ok(None),
        TlsMode::Prefer | TlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
            .with_no_client_auth(),
        TlsMode::VerifyFull { root_cert } => {
            let roots = match root_cert {
                Some(path) => roots_from_file(path)?,
                None => RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let bad = |why: String| TlsConfigError(format!("root certificate file {}: {why}", path.display()));
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
    for cert in certs {
        roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    Ok(roots)
}

/// The server name to present and verify.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsConfigError> {
    ServerName::try_from(host.to_owned()).map_err(|e| TlsConfigError(format!("host {host:?}: {e}")))
}

/// Encryption without authentication of the server, as libpq's `sslmode=require` does.
/// Signatures are still checked, so the session is bound to the certificate presented.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
