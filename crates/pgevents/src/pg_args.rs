//! PostgreSQL connection options: libpq's environment variables, a connection string, and the
//! original pgevents' spellings.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use pgevents_pg::pgpass::{self, PassKey};
use pgevents_pg::{ChannelBinding, ClientCert, ConnectConfig, TlsMode};

use crate::secret_arg::SecretArg;

#[derive(Debug, Clone, Args)]
pub struct PgArgs {
    /// Connection string (URL or key=value); the options below override its parts.
    #[arg(long = "pg-dsn", env = "DATABASE_URL", alias = "pg_dsn", value_name = "DSN", hide_env_values = true)]
    pub dsn: Option<SecretArg>,
    /// Host name, IP address, or Unix socket directory [default: localhost]
    #[arg(long = "pghost", env = "PGHOST", alias = "pg_host")]
    pub host: Option<String>,
    /// Port [default: 5432]
    #[arg(long = "pgport", env = "PGPORT", alias = "pg_port")]
    pub port: Option<u16>,
    /// Database [default: the user name]
    #[arg(long = "pgdatabase", env = "PGDATABASE", alias = "pg_database")]
    pub database: Option<String>,
    /// User; needs the REPLICATION attribute (or superuser) [default: postgres]
    #[arg(long = "pguser", env = "PGUSER", alias = "pg_user")]
    pub user: Option<String>,
    /// Password
    #[arg(long = "pgpassword", env = "PGPASSWORD", alias = "pg_password", hide_env_values = true)]
    pub password: Option<SecretArg>,
    /// TLS: disable, prefer, require (encrypted, unverified), verify-ca (chain checked) or verify-full (chain and host name) [default: prefer, verify-full with --pgsslrootcert]
    #[arg(long = "pgsslmode", env = "PGSSLMODE", alias = "pg_sslmode")]
    pub sslmode: Option<String>,
    /// CA certificate(s) to verify the server with (verify-ca, verify-full) [default: the Mozilla roots]
    #[arg(long = "pgsslrootcert", env = "PGSSLROOTCERT", alias = "pg_sslrootcert")]
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate (PEM), presented when the server asks for one (pg_hba.conf cert or clientcert=verify-full)
    #[arg(long = "pgsslcert", env = "PGSSLCERT")]
    pub sslcert: Option<PathBuf>,
    /// The client certificate's private key (PEM)
    #[arg(long = "pgsslkey", env = "PGSSLKEY")]
    pub sslkey: Option<PathBuf>,
    /// SCRAM channel binding: disable, prefer or require (refuse cleartext and MD5 passwords and unbound SCRAM) [default: prefer]
    #[arg(long = "pgchannelbinding", env = "PGCHANNELBINDING")]
    pub channel_binding: Option<String>,
    /// Password file, read when no password is given [default: ~/.pgpass]
    #[arg(long = "pgpassfile", env = "PGPASSFILE")]
    pub passfile: Option<PathBuf>,
    /// Seconds to wait for a connection
    #[arg(long = "pg-connect-timeout", env = "PGCONNECT_TIMEOUT", default_value_t = 10)]
    pub connect_timeout: u64,
}

/// The connection string's parts pgevents reads itself (tokio-postgres does not know them, or
/// not all their values).
#[derive(Debug, Default)]
struct DsnExtras {
    sslmode: Option<String>,
    sslrootcert: Option<PathBuf>,
    sslcert: Option<PathBuf>,
    sslkey: Option<PathBuf>,
    channel_binding: Option<String>,
    passfile: Option<PathBuf>,
}

impl DsnExtras {
    /// Takes `key=value` if it is one of ours.
    fn take(&mut self, key: &str, value: &str) -> bool {
        let slot = match key {
            "sslmode" => {
                self.sslmode = Some(value.to_owned());
                return true;
            }
            "channel_binding" => {
                self.channel_binding = Some(value.to_owned());
                return true;
            }
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            "passfile" => &mut self.passfile,
            _ => return false,
        };
        *slot = Some(PathBuf::from(value));
        true
    }
}

impl PgArgs {
    /// Merges the connection string, the options, the password file and the defaults.
    pub fn connect_config(&self, application_name: &str) -> anyhow::Result<ConnectConfig> {
        let mut host = None;
        let mut port = None;
        let mut user = None;
        let mut password = None;
        let mut dbname = None;
        let mut extras = DsnExtras::default();
        if let Some(dsn) = &self.dsn {
            let cleaned = take_extras(dsn.expose(), &mut extras);
            let parsed = tokio_postgres::Config::from_str(&cleaned)
                .with_context(|| "invalid connection string (--pg-dsn / DATABASE_URL); expected postgres://user:password@host:5432/db or \"host=... user=...\"")?;
            host = parsed.get_hosts().first().map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            });
            port = parsed.get_ports().first().copied();
            user = parsed.get_user().map(str::to_owned);
            password = parsed.get_password().map(|p| String::from_utf8_lossy(p).into_owned());
            dbname = parsed.get_dbname().map(str::to_owned);
        }
        let user = self.user.clone().or(user).unwrap_or_else(|| "postgres".to_owned());
        let ssl_root_cert = self.sslrootcert.clone().or(extras.sslrootcert);
        let sslmode = self
            .sslmode
            .clone()
            .or(extras.sslmode)
            .unwrap_or_else(|| if ssl_root_cert.is_some() { "verify-full" } else { "prefer" }.to_owned());
        let host = self.host.clone().or(host).unwrap_or_else(|| "localhost".to_owned());
        let tls = if host.starts_with('/') { TlsMode::Disable } else { sslmode.parse().map_err(anyhow::Error::msg)? };
        let ssl_cert = match (self.sslcert.clone().or(extras.sslcert), self.sslkey.clone().or(extras.sslkey)) {
            (Some(cert_file), Some(key_file)) => Some(ClientCert { cert_file, key_file }),
            (None, None) => None,
            _ => bail!("a client certificate needs both --pgsslcert (PGSSLCERT) and --pgsslkey (PGSSLKEY)"),
        };
        let channel_binding = match self.channel_binding.clone().or(extras.channel_binding) {
            Some(mode) => mode.parse().map_err(anyhow::Error::msg)?,
            None => ChannelBinding::Prefer,
        };
        if channel_binding == ChannelBinding::Require && tls == TlsMode::Disable {
            bail!("channel_binding=require needs TLS, but sslmode is disable (or the host is a Unix socket)");
        }
        let port = self.port.or(port).unwrap_or(5432);
        let dbname = self.database.clone().or(dbname).unwrap_or_else(|| user.clone());
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let passfile =
            self.passfile.clone().or(extras.passfile).or_else(|| pgpass::default_file(None, home.as_deref()));
        let password = match self.password.as_ref().map(|p| p.expose().to_owned()).or(password) {
            Some(password) => Some(password),
            None => {
                password_from_file(passfile.as_deref(), PassKey { host: &host, port, dbname: &dbname, user: &user })
            }
        };
        Ok(ConnectConfig {
            host,
            port,
            dbname,
            password,
            user,
            application_name: application_name.to_owned(),
            tls,
            ssl_root_cert,
            ssl_cert,
            channel_binding,
            connect_timeout: Duration::from_secs(self.connect_timeout.max(1)),
            passfile,
            search_path: Default::default(),
        })
    }
}

/// The password file's password for the connection, as libpq finds it (a file others can read
/// is ignored with a warning).
fn password_from_file(file: Option<&std::path::Path>, key: PassKey<'_>) -> Option<String> {
    match pgpass::read(file?, key) {
        Ok(password) => password,
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    }
}

/// The connection string without the parameters pgevents reads itself, which go to `extras`.
fn take_extras(dsn: &str, extras: &mut DsnExtras) -> String {
    if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        let Some((base, query)) = dsn.split_once('?') else { return dsn.to_owned() };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|kv| {
                let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
                let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
                !extras.take(key, &value)
            })
            .collect();
        return if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    }
    let kept: Vec<&str> = dsn
        .split_whitespace()
        .filter(|kv| {
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            !extras.take(key.trim(), value.trim().trim_matches('\''))
        })
        .collect();
    kept.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dsn: Option<&str>) -> PgArgs {
        PgArgs {
            dsn: dsn.map(SecretArg::from),
            host: None,
            port: None,
            database: None,
            user: None,
            password: None,
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            channel_binding: None,
            passfile: Some(PathBuf::from("/nonexistent/pgpass")),
            connect_timeout: 10,
        }
    }

    #[test]
    fn defaults_follow_libpq() {
        let c = args(None).connect_config("t").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.user.as_str(), c.dbname.as_str()),
            ("localhost", 5432, "postgres", "postgres")
        );
        assert_eq!(c.tls, TlsMode::Prefer);
    }

    #[test]
    fn dsn_then_overrides() {
        let mut a = args(Some("postgres://repl:s3cret@db.example:6543/app?sslmode=verify-full"));
        let c = a.connect_config("t").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.user.as_str(), c.dbname.as_str()), ("db.example", 6543, "repl", "app"));
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.tls, TlsMode::VerifyFull);
        a.port = Some(5432);
        a.sslmode = Some("disable".into());
        let c = a.connect_config("t").unwrap();
        assert_eq!((c.port, c.tls), (5432, TlsMode::Disable));
        let kv = args(Some("host=h user=u dbname=d sslmode=require")).connect_config("t").unwrap();
        assert_eq!((kv.host.as_str(), kv.user.as_str(), kv.dbname.as_str(), kv.tls), ("h", "u", "d", TlsMode::Require));
    }

    #[test]
    fn bad_input_is_explained() {
        let err = args(Some("postgres://x:y@h:notaport/db")).connect_config("t").unwrap_err();
        assert!(format!("{err:#}").contains("invalid connection string"));
        let mut a = args(None);
        a.sslmode = Some("sometimes".into());
        assert!(format!("{:#}", a.connect_config("t").unwrap_err()).contains("invalid sslmode"));
        let mut a = args(None);
        a.sslcert = Some("c.pem".into());
        assert!(format!("{:#}", a.connect_config("t").unwrap_err()).contains("--pgsslkey"));
        let mut a = args(Some("host=h sslmode=disable"));
        a.channel_binding = Some("require".into());
        assert!(format!("{:#}", a.connect_config("t").unwrap_err()).contains("needs TLS"));
    }

    #[test]
    fn tls_files_and_channel_binding_come_from_the_dsn_too() {
        let dsn = "postgres://u@h/d?sslmode=verify-ca&sslrootcert=/ca.pem&sslcert=/c.pem&sslkey=/k.pem&channel_binding=require&application_name=x";
        let c = args(Some(dsn)).connect_config("t").unwrap();
        assert_eq!(c.tls, TlsMode::VerifyCa);
        assert_eq!(c.ssl_root_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(c.ssl_cert, Some(ClientCert { cert_file: "/c.pem".into(), key_file: "/k.pem".into() }));
        assert_eq!(c.channel_binding, ChannelBinding::Require);
        let kv = args(Some("host=h sslmode=verify-full sslrootcert='/r.pem'")).connect_config("t").unwrap();
        assert_eq!((kv.tls, kv.ssl_root_cert), (TlsMode::VerifyFull, Some(PathBuf::from("/r.pem"))));
    }

    #[cfg(unix)]
    #[test]
    fn a_missing_password_comes_from_the_password_file() {
        use std::os::unix::fs::PermissionsExt;
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let file = dir.join("pgpass");
        std::fs::write(&file, "db:5432:app:repl:from-file\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut a = args(Some("postgres://repl@db/app"));
        a.passfile = Some(file.clone());
        assert_eq!(a.connect_config("t").unwrap().password.as_deref(), Some("from-file"));
        a.password = Some(SecretArg::from("given"));
        assert_eq!(a.connect_config("t").unwrap().password.as_deref(), Some("given"), "a given password wins");
    }
}
