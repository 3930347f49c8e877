//! Certificates for TLS tests, made with `openssl` in a directory of their own: a CA, server
//! certificates it signs for given names, and client certificates with a given common name.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A test certificate authority (deleted with its directory).
pub struct TestCa {
    dir: tempfile::TempDir,
}

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestCa {
    /// A new CA, valid for two days.
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::Builder::new().prefix("pgevents-ca-").tempdir().expect("temp dir");
        let subject = format!("/CN={name}");
        openssl(
            dir.path(),
            &["req", "-new", "-x509", "-days", "2", "-nodes", "-subj", &subject, "-keyout", "ca.key", "-out", "ca.crt"],
        );
        TestCa { dir }
    }

    /// The CA certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A certificate for `file_stem` signed by the CA: `cn` as its subject, `names` (DNS names
    /// and IP addresses) as its subject alternative names, for servers (`server`) or clients.
    fn issue(&self, file_stem: &str, cn: &str, names: &[&str], server: bool) -> CertPair {
        let dir = self.dir.path();
        let (key, csr, cert, ext) = (
            format!("{file_stem}.key"),
            format!("{file_stem}.csr"),
            format!("{file_stem}.crt"),
            format!("{file_stem}.ext"),
        );
        openssl(dir, &["req", "-new", "-nodes", "-subj", &format!("/CN={cn}"), "-keyout", &key, "-out", &csr]);
        let alt: Vec<String> = names
            .iter()
            .map(|n| if n.parse::<std::net::IpAddr>().is_ok() { format!("IP:{n}") } else { format!("DNS:{n}") })
            .collect();
        let usage = if server { "serverAuth" } else { "clientAuth" };
        let mut extensions = format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n");
        if !alt.is_empty() {
            extensions.push_str(&format!("subjectAltName={}\n", alt.join(",")));
        }
        std::fs::write(dir.join(&ext), extensions).expect("extensions file");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &cert,
                "-extfile",
                &ext,
            ],
        );
        CertPair { cert: dir.join(cert), key: dir.join(key) }
    }

    /// A server certificate valid for `names` (`localhost`, `127.0.0.1`).
    pub fn server(&self, file_stem: &str, names: &[&str]) -> CertPair {
        self.issue(file_stem, names.first().copied().unwrap_or("server"), names, true)
    }

    /// A client certificate whose common name is `cn` (the user name servers map it to).
    pub fn client(&self, file_stem: &str, cn: &str) -> CertPair {
        self.issue(file_stem, cn, &[], false)
    }

    /// Makes the directory and its files readable by `user` (a server started as that user).
    pub fn give_to(&self, user: &str) {
        let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false);
        if is_root {
            let owner = format!("{user}:{user}");
            let status = Command::new("chown").args(["-R", &owner]).arg(self.dir.path()).status();
            assert!(status.is_ok_and(|s| s.success()), "chown the certificates to {user}");
        }
    }
}

/// A TLS server side presenting `pair` (for test servers).
pub fn server_tls_acceptor(pair: &CertPair) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&pair.cert)
        .expect("server certificate")
        .collect::<Result<Vec<_>, _>>()
        .expect("server certificate");
    let key = PrivateKeyDer::from_pem_file(&pair.key).expect("server key");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server TLS configuration");
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}
