//! Where and as whom to connect.

use std::path::PathBuf;
use std::time::Duration;

use crate::tls::{ChannelBinding, ClientCert, TlsMode};

/// The settings of every connection to the database, replication or SQL.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// Host name, IP address, or a directory holding a Unix socket (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub application_name: String,
    pub tls: TlsMode,
    /// CA certificates for `verify-ca` and `verify-full` (`sslrootcert`); `None`: the Mozilla
    /// roots.
    pub ssl_root_cert: Option<PathBuf>,
    /// Client certificate and key (`sslcert`, `sslkey`).
    pub ssl_cert: Option<ClientCert>,
    pub channel_binding: ChannelBinding,
    pub connect_timeout: Duration,
}

impl ConnectConfig {
    /// `host:port` (or the socket path) for messages.
    pub fn address(&self) -> String {
        if self.host.starts_with('/') {
            format!("{}/.s.PGSQL.{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}
