//! PostgreSQL connection options: libpq's environment variables, a connection string, and the
//! original pgevents' spellings.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use pgevents_pg::{ConnectConfig, TlsMode};

#[derive(Debug, Clone, Args)]
pub struct PgArgs {
    /// Connection string (URL or key=value); the options below override its parts.
    #[arg(long = "pg-dsn", env = "DATABASE_URL", alias = "pg_dsn", value_name = "DSN", hide_env_values = true)]
    pub dsn: Option<String>,
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
    pub password: Option<String>,
    /// TLS: disable, prefer, require (encrypted, unverified) or verify-full [default: prefer]
    #[arg(long = "pgsslmode", env = "PGSSLMODE", alias = "pg_sslmode")]
    pub sslmode: Option<String>,
    /// Root certificate(s) to verify the server with; implies verify-full
    #[arg(long = "pgsslrootcert", env = "PGSSLROOTCERT", alias = "pg_sslrootcert")]
    pub sslrootcert: Option<PathBuf>,
    /// Seconds to wait for a connection
    #[arg(long = "pg-connect-timeout", env = "PGCONNECT_TIMEOUT", default_value_t = 10)]
    pub connect_timeout: u64,
}

fn tls_mode(mode: &str, root: Option<PathBuf>) -> anyhow::Result<TlsMode> {
    Ok(match mode {
        "disable" => TlsMode::Disable,
        "allow" | "prefer" => TlsMode::Prefer,
        "require" => TlsMode::Require,
        "verify-ca" | "verify-full" => TlsMode::VerifyFull { root_cert: root },
        other => bail!("invalid sslmode {other:?}: use disable, prefer, require or verify-full"),
    })
}

impl PgArgs {
    /// Merges the connection string, the options and the defaults.
    pub fn connect_config(&self, application_name: &str) -> anyhow::Result<ConnectConfig> {
        let mut host = None;
        let mut port = None;
        let mut user = None;
        let mut password = None;
        let mut dbname = None;
        let mut sslmode = None;
        if let Some(dsn) = &self.dsn {
            // The DSN's sslmode may say verify-full, which tokio-postgres does not parse.
            let (cleaned, dsn_sslmode) = take_sslmode(dsn);
            sslmode = dsn_sslmode;
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
            if sslmode.is_none() && self.dsn.as_deref().is_some_and(|d| d.contains("sslmode")) {
                sslmode = Some(
                    match parsed.get_ssl_mode() {
                        tokio_postgres::config::SslMode::Disable => "disable",
                        tokio_postgres::config::SslMode::Require => "require",
                        _ => "prefer",
                    }
                    .to_owned(),
                );
            }
        }
        let user = self.user.clone().or(user).unwrap_or_else(|| "postgres".to_owned());
        let sslmode = self
            .sslmode
            .clone()
            .or(sslmode)
            .unwrap_or_else(|| if self.sslrootcert.is_some() { "verify-full" } else { "prefer" }.to_owned());
        let host = self.host.clone().or(host).unwrap_or_else(|| "localhost".to_owned());
        let tls = if host.starts_with('/') { TlsMode::Disable } else { tls_mode(&sslmode, self.sslrootcert.clone())? };
        Ok(ConnectConfig {
            host,
            port: self.port.or(port).unwrap_or(5432),
            dbname: self.database.clone().or(dbname).unwrap_or_else(|| user.clone()),
            password: self.password.clone().or(password),
            user,
            application_name: application_name.to_owned(),
            tls,
            connect_timeout: Duration::from_secs(self.connect_timeout.max(1)),
        })
    }
}

/// Removes `sslmode=...` from a DSN (URL query or key=value) and returns it separately.
fn take_sslmode(dsn: &str) -> (String, Option<String>) {
    if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        let Some((base, query)) = dsn.split_once('?') else { return (dsn.to_owned(), None) };
        let (kept, mode) = without_sslmode(query.split('&'));
        let cleaned = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        return (cleaned, mode);
    }
    let (kept, mode) = without_sslmode(dsn.split_whitespace());
    (kept.join(" "), mode)
}

/// The `key=value` parts other than `sslmode`, and the value of `sslmode`.
fn without_sslmode<'a>(parts: impl Iterator<Item = &'a str>) -> (Vec<&'a str>, Option<String>) {
    let mut mode = None;
    let kept = parts
        .filter(|kv| match kv.strip_prefix("sslmode=") {
            Some(v) => {
                mode = Some(v.to_owned());
                false
            }
            None => true,
        })
        .collect();
    (kept, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dsn: Option<&str>) -> PgArgs {
        PgArgs {
            dsn: dsn.map(str::to_owned),
            host: None,
            port: None,
            database: None,
            user: None,
            password: None,
            sslmode: None,
            sslrootcert: None,
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
        assert_eq!(c.tls, TlsMode::VerifyFull { root_cert: None });
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
    }
}
