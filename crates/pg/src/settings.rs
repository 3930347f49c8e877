//! Where and as whom to connect.

use std::path::PathBuf;
use std::time::Duration;

use crate::pgpass::{self, PassFileError, PassKey};
use crate::tls::{ChannelBinding, ClientCert, TlsMode};

/// The settings of every connection to the database, replication or SQL. `Debug` never shows
/// the password.
#[derive(Clone)]
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
    /// The password file other roles' passwords are looked up in (`PGPASSFILE`, `~/.pgpass`),
    /// see [`ConnectConfig::as_role`].
    pub passfile: Option<PathBuf>,
    /// Where unqualified names are looked up in the session.
    pub search_path: SearchPath,
}

/// Where a session looks up unqualified names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchPath {
    /// `pg_catalog, pg_temp`: pgevents' own sessions, whose SQL names its objects in full; a
    /// function another role creates in a schema it may write can never stand in for a built-in
    /// there.
    #[default]
    Pinned,
    /// The role's own (`search_path` as configured for it): the sessions rules run in, whose
    /// text was written for it.
    RoleDefault,
}

impl std::fmt::Debug for ConnectConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("tls", &self.tls)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("ssl_cert", &self.ssl_cert)
            .field("channel_binding", &self.channel_binding)
            .field("connect_timeout", &self.connect_timeout)
            .field("passfile", &self.passfile)
            .field("search_path", &self.search_path)
            .finish()
    }
}

impl ConnectConfig {
    /// The same server and database as the role `user`, in a session with that role's own
    /// search path: its password from the password file (never this role's password), no
    /// client certificate (one names its own role). Reads a small file: call it off the async
    /// runtime's threads.
    pub fn as_role(&self, user: &str) -> Result<ConnectConfig, PassFileError> {
        let password = match &self.passfile {
            Some(file) => {
                pgpass::read(file, PassKey { host: &self.host, port: self.port, dbname: &self.dbname, user })?
            }
            None => None,
        };
        Ok(ConnectConfig {
            user: user.to_owned(),
            password,
            ssl_cert: None,
            search_path: SearchPath::RoleDefault,
            ..self.clone()
        })
    }

    /// `host:port` (or the socket path) for messages.
    pub fn address(&self) -> String {
        if self.host.starts_with('/') {
            format!("{}/.s.PGSQL.{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(passfile: Option<PathBuf>) -> ConnectConfig {
        ConnectConfig {
            host: "db".into(),
            port: 5432,
            user: "worker".into(),
            password: Some("worker-secret".into()),
            dbname: "app".into(),
            application_name: "t".into(),
            tls: TlsMode::Disable,
            ssl_root_cert: None,
            ssl_cert: None,
            channel_binding: ChannelBinding::Prefer,
            connect_timeout: Duration::from_secs(1),
            passfile,
            search_path: SearchPath::Pinned,
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let text = format!("{:?}", config(None));
        assert!(!text.contains("worker-secret") && text.contains("***"), "{text}");
    }

    #[test]
    fn another_role_gets_its_own_password_and_never_this_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "db:5432:app:alice:alice-secret\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let alice = config(Some(file.clone())).as_role("alice").unwrap();
        assert_eq!((alice.user.as_str(), alice.password.as_deref()), ("alice", Some("alice-secret")));
        assert_eq!(alice.search_path, SearchPath::RoleDefault, "rule text was written for the role's own path");
        let bob = config(Some(file)).as_role("bob").unwrap();
        assert_eq!(bob.password, None, "not the worker's password");
        assert_eq!(config(None).as_role("alice").unwrap().password, None);
    }
}
