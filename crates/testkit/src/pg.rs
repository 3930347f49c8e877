//! Throwaway PostgreSQL clusters for tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::tls::TestCa;

/// How to set a cluster up.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Serve TLS with a self-signed certificate (host name `localhost`).
    pub tls: bool,
    /// `wal_level` (default `logical`).
    pub wal_level: Option<String>,
    /// Extra `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
    /// Names the server certificate is valid for (with `tls`) [default: localhost, 127.0.0.1].
    pub tls_names: Vec<String>,
    /// `pg_hba.conf` lines put before the usual ones (first match wins).
    pub hba: Vec<String>,
}

/// A running cluster, stopped and deleted on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    pub port: u16,
    ca: Option<TestCa>,
}

/// The directory of the PostgreSQL server programs (`PGEVENTS_TEST_PG_BIN`, or the newest
/// `/usr/lib/postgresql/*/bin`).
pub fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PGEVENTS_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect()
        })
        .unwrap_or_default();
    candidates.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    });
    candidates.pop().unwrap_or_else(|| panic!("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin; install postgresql or set PGEVENTS_TEST_PG_BIN"))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Runs a PostgreSQL program, as the `postgres` user when we are root (initdb refuses root).
fn run_pg(bin: &Path, program: &str, args: &[&str]) -> std::process::Output {
    let exe = bin.join(program);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(args).stdin(Stdio::null());
    cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn chown_to_postgres(path: &Path) {
    if is_root() {
        let status = Command::new("chown").arg("-R").arg("postgres:postgres").arg(path).status().expect("chown");
        assert!(status.success(), "chown {} failed", path.display());
    }
}

impl PgCluster {
    /// initdb + start with `wal_level=logical`.
    pub async fn start() -> PgCluster {
        Self::start_with(PgOptions::default()).await
    }

    pub async fn start_with(options: PgOptions) -> PgCluster {
        let dir = tempfile::Builder::new().prefix("pgevents-test-pg-").tempdir().expect("temp dir");
        chown_to_postgres(dir.path());
        let data = dir.path().join("data");
        let bin = pg_bin_dir();
        let out = run_pg(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ],
        );
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let mut conf = vec![
            format!("port = {port}"),
            "listen_addresses = '127.0.0.1'".to_owned(),
            format!("unix_socket_directories = '{}'", dir.path().display()),
            format!("wal_level = {}", options.wal_level.as_deref().unwrap_or("logical")),
            "max_replication_slots = 20".to_owned(),
            "max_wal_senders = 20".to_owned(),
            "max_connections = 100".to_owned(),
            "fsync = off".to_owned(),
            "full_page_writes = off".to_owned(),
            "shared_buffers = 64MB".to_owned(),
            "password_encryption = 'scram-sha-256'".to_owned(),
            "log_min_messages = warning".to_owned(),
            "TimeZone = 'Europe/Paris'".to_owned(),
        ];
        // PostgreSQL 15.19+ restricts output plugins; allow wal2json where the setting exists.
        let probe =
            run_pg(&bin, "postgres", &["-D", data.to_str().unwrap_or_default(), "-C", "output_plugin_libraries"]);
        if probe.status.success() {
            conf.push("output_plugin_libraries = 'pgoutput, test_decoding, wal2json'".to_owned());
        }
        let ca = options.tls.then(|| {
            // A CA, and a server certificate it signs for the names asked for.
            let ca = TestCa::new("pgevents test CA");
            let names: Vec<&str> = options.tls_names.iter().map(String::as_str).collect();
            let names = if names.is_empty() { vec!["localhost", "127.0.0.1"] } else { names };
            let server = ca.server("server", &names);
            for (from, to) in [(&server.cert, "server.crt"), (&server.key, "server.key"), (&ca.cert(), "ca.crt")] {
                std::fs::copy(from, data.join(to)).expect("copy a certificate into the data directory");
            }
            chown_to_postgres(&data);
            let _ = Command::new("chmod").arg("600").arg(data.join("server.key")).status();
            conf.push("ssl = on".to_owned());
            // Client certificates signed by this CA are accepted (pg_hba.conf `cert`).
            conf.push("ssl_ca_file = 'ca.crt'".to_owned());
            ca
        });
        conf.extend(options.extra_conf);
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).expect("postgresql.conf");
        text.push('\n');
        text.push_str(&conf.join("\n"));
        text.push('\n');
        std::fs::write(&conf_path, text).expect("write postgresql.conf");
        let general = if options.tls {
            "local all all trust\nhostnossl all postgres 127.0.0.1/32 trust\nhostnossl replication postgres 127.0.0.1/32 trust\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostssl replication all 127.0.0.1/32 scram-sha-256\n"
        } else {
            "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost replication postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n"
        };
        let hba = format!("{}\n{general}", options.hba.join("\n"));
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        chown_to_postgres(dir.path());
        let cluster = PgCluster { dir, data, bin, port, ca };
        cluster.pg_ctl(&["start", "-w", "-t", "60"]);
        cluster
    }

    fn pg_ctl(&self, args: &[&str]) {
        let log = self.dir.path().join("postgres.log");
        let mut all = vec!["-D", self.data.to_str().unwrap_or_default(), "-l", log.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        let out = run_pg(&self.bin, "pg_ctl", &all);
        assert!(
            out.status.success(),
            "pg_ctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    /// The CA certificate that signed the server's (clusters started with `tls`).
    pub fn tls_ca_path(&self) -> PathBuf {
        self.data.join("ca.crt")
    }

    /// The CA of a cluster started with `tls`: it signs client certificates the server accepts.
    pub fn tls_ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    /// `pg_ctl restart -m fast`.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-w", "-m", "fast", "-t", "60"]);
    }

    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-w", "-m", "fast"]);
    }

    pub fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-t", "60"]);
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Environment variables for the `pgevents` binary (superuser `postgres`, no TLS).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), "127.0.0.1".into()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), "postgres".into()),
            ("PGDATABASE".into(), "postgres".into()),
            ("PGSSLMODE".into(), "disable".into()),
        ]
    }

    /// A superuser connection.
    pub async fn client(&self) -> Client {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(10))
            .connect(NoTls)
            .await
            .expect("connect to the test cluster");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Runs SQL (several statements allowed) as superuser.
    pub async fn execute(&self, sql: &str) {
        self.client().await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// A single text value.
    pub async fn query_text(&self, sql: &str) -> Option<String> {
        let client = self.client().await;
        let row = client.query_opt(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        row.and_then(|r| r.get::<_, Option<String>>(0))
    }

    /// The slot's `confirmed_flush_lsn` as text, if the slot exists.
    pub async fn slot_confirmed_flush(&self, slot: &str) -> Option<String> {
        self.query_text(&format!(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .await
    }

    /// Whether the slot is in use by a connection.
    pub async fn slot_active(&self, slot: &str) -> bool {
        self.query_text(&format!("SELECT active::text FROM pg_replication_slots WHERE slot_name = '{slot}'"))
            .await
            .as_deref()
            == Some("true")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let log = self.dir.path().join("postgres.log");
        let _ = run_pg(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap_or_default(),
                "-l",
                log.to_str().unwrap_or_default(),
                "stop",
                "-m",
                "immediate",
                "-w",
            ],
        );
    }
}
