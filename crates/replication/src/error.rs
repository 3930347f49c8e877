//! Errors of the replication client, with the server's SQLSTATE when it sent one.

use std::fmt;
use std::io;

use pgevents_pg::{ErrorKind, TlsConfigError};

/// An ErrorResponse from the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerError {
    pub severity: String,
    /// SQLSTATE, e.g. `28P01`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, "; {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("could not connect to PostgreSQL at {addr}: {source}; check the host and port, and that the server is running and accepts TCP connections")]
    Connect { addr: String, source: io::Error },
    #[error("timed out after {seconds}s connecting to PostgreSQL at {addr}")]
    ConnectTimeout { addr: String, seconds: u64 },
    #[error("PostgreSQL at {addr} does not accept TLS connections, but sslmode=require was given")]
    TlsRefused { addr: String },
    #[error("TLS with PostgreSQL at {addr} failed: {source}")]
    Tls { addr: String, source: io::Error },
    #[error(transparent)]
    TlsConfig(#[from] TlsConfigError),
    #[error("PostgreSQL asks for a password for user {user:?} but none was given: set PGPASSWORD or --pgpassword")]
    PasswordRequired { user: String },
    #[error("PostgreSQL asks for an authentication method pgevents does not support (code {0}); use scram-sha-256, md5 or password in pg_hba.conf")]
    UnsupportedAuth(u32),
    #[error("channel_binding=require, but PostgreSQL at {addr} {what}: use TLS (sslmode=require or stricter) and scram-sha-256 in pg_hba.conf, or lower channel_binding")]
    ChannelBindingRequired { what: String, addr: String },
    #[error("PostgreSQL rejected the connection: {0}")]
    Server(ServerError),
    #[error("PostgreSQL protocol error: {0}")]
    Protocol(String),
    #[error("connection to PostgreSQL lost: {0}")]
    Io(#[from] io::Error),
    #[error("no message from PostgreSQL for {0}s; the connection is presumed dead")]
    Silent(u64),
    #[error("invalid {what} name {name:?}: use 1 to 63 lower-case letters, digits and underscores")]
    InvalidName { what: String, name: String },
}

impl ReplicationError {
    /// The server's SQLSTATE, when the server reported the error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// What the failure means for trying again: lost or refused connections, server restarts and
    /// resource shortages are transient; authentication, permissions and settings are config.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReplicationError::Connect { .. }
            | ReplicationError::ConnectTimeout { .. }
            | ReplicationError::Io(_)
            | ReplicationError::Silent(_)
            | ReplicationError::Tls { .. } => ErrorKind::Transient,
            ReplicationError::Server(e) => e.kind(),
            ReplicationError::TlsRefused { .. }
            | ReplicationError::TlsConfig(_)
            | ReplicationError::PasswordRequired { .. }
            | ReplicationError::UnsupportedAuth(_)
            | ReplicationError::ChannelBindingRequired { .. }
            | ReplicationError::InvalidName { .. } => ErrorKind::Config,
            ReplicationError::Protocol(_) => ErrorKind::Permanent,
        }
    }
}

impl ServerError {
    /// From the SQLSTATE: 08 connection exception, 53 insufficient resources, 57 operator
    /// intervention (shutdown, starting up), 58 system error, 40 rollback (deadlock) and 55006
    /// (the slot is active for another process, which may let go) pass; 28 (authorization), 3D
    /// (no such database) and 42501 (no REPLICATION attribute) are settings.
    pub fn kind(&self) -> ErrorKind {
        match &self.code[..2.min(self.code.len())] {
            "08" | "53" | "57" | "58" | "40" => ErrorKind::Transient,
            _ if self.code == "55006" => ErrorKind::Transient,
            "28" | "3D" => ErrorKind::Config,
            _ if self.code == "42501" => ErrorKind::Config,
            _ => ErrorKind::Permanent,
        }
    }
}
