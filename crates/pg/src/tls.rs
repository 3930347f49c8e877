//! TLS for connections to PostgreSQL, with libpq's meanings of `sslmode`: `disable` (never),
//! `prefer` (if the server offers it, unverified), `require` (always, unverified), `verify-ca`
//! (always, the chain checked against `sslrootcert`, or the Mozilla roots) and `verify-full`
//! (the host name too). `sslcert`/`sslkey` are presented when the server asks for a client
//! certificate. The rustls configuration itself is [`pgevents_tls`]'s, as for RabbitMQ.

use std::sync::Arc;

use pgevents_tls::{ClientTls, Verify};
use rustls::ClientConfig;

pub use pgevents_tls::{server_name, tls_server_end_point, ClientCert, TlsError as TlsConfigError};

use crate::ConnectConfig;

/// When to use TLS and how much to check (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    Disable,
    /// TLS when the server offers it, certificate not checked (libpq's default).
    #[default]
    Prefer,
    /// TLS always, certificate not checked.
    Require,
    /// TLS always, the certificate's chain checked, not the host name.
    VerifyCa,
    /// TLS always, chain and host name checked.
    VerifyFull,
}

impl TlsMode {
    /// libpq's name.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

impl std::str::FromStr for TlsMode {
    type Err = String;

    fn from_str(mode: &str) -> Result<Self, Self::Err> {
        Ok(match mode {
            "disable" => TlsMode::Disable,
            "allow" | "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(format!(
                    "invalid sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }
}

/// libpq's `channel_binding`: whether SCRAM authentication binds itself to the TLS session
/// (SCRAM-SHA-256-PLUS), so that a server in the middle cannot relay it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelBinding {
    Disable,
    /// When the server offers it over TLS (libpq's default).
    #[default]
    Prefer,
    /// Always: a server that asks for a cleartext or MD5 password, or SCRAM without binding,
    /// is refused.
    Require,
}

impl std::str::FromStr for ChannelBinding {
    type Err = String;

    fn from_str(mode: &str) -> Result<Self, Self::Err> {
        Ok(match mode {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            other => return Err(format!("invalid channel_binding {other:?}: use disable, prefer or require")),
        })
    }
}

/// The rustls configuration for `settings` (`None` when TLS is disabled).
pub fn client_config(settings: &ConnectConfig) -> Result<Option<Arc<ClientConfig>>, TlsConfigError> {
    let verify = match settings.tls {
        TlsMode::Disable => return Ok(None),
        TlsMode::Prefer | TlsMode::Require => Verify::None,
        TlsMode::VerifyCa => Verify::Chain,
        TlsMode::VerifyFull => Verify::Full,
    };
    let tls = ClientTls { verify, ca_file: settings.ssl_root_cert.clone(), client_cert: settings.ssl_cert.clone() };
    tls.config().map(Some)
}
