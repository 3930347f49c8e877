//! TLS everywhere: PostgreSQL with SCRAM on a TLS-only server (sslmode require, verify-ca,
//! verify-full; client certificates; channel binding; password files; the errors for a wrong
//! root certificate and for no TLS), and RabbitMQ over AMQPS with a private CA, client
//! certificates (EXTERNAL) and a password file.

mod common;

use std::process::Command;

use common::{stop, World, WAIT};
use pgevents_testkit::{EventQueue, PgCluster, PgEventsProcess, PgOptions, RabbitNode, TestCa};

#[tokio::test(flavor = "multi_thread")]
async fn scram_over_tls_require_and_verify_full() {
    let pg = PgCluster::start_with(PgOptions { tls: true, ..Default::default() }).await;
    let world = World::with_cluster(pg).await;
    world
        .pg
        .execute(
            "CREATE ROLE repl LOGIN REPLICATION PASSWORD 'secret pw';
             GRANT CREATE ON DATABASE postgres TO repl;
             CREATE TABLE t (id int PRIMARY KEY);
             ALTER TABLE t OWNER TO repl;",
        )
        .await;
    let cert = world.pg.tls_ca_path();
    let cert = cert.to_str().unwrap();
    let mut queue = world.queue(&["#"]).await;
    let repl = [("PGUSER", "repl"), ("PGPASSWORD", "secret pw"), ("PGTABLES", "public.t")];

    let mut env = repl.to_vec();
    env.push(("PGSSLMODE", "require"));
    let producer = world.producer(&env).await;
    world.pg.execute("INSERT INTO t VALUES (1)").await;
    assert_eq!(queue.take(1, WAIT).await[0].json["new"]["id"], 1);
    stop(producer).await;

    let mut env = repl.to_vec();
    env.extend([("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", cert), ("PGHOST", "localhost")]);
    let producer = world.producer(&env).await;
    world.pg.execute("INSERT INTO t VALUES (2)").await;
    assert_eq!(queue.take(1, WAIT).await[0].json["new"]["id"], 2);
    stop(producer).await;

    // a root that did not sign the server's certificate
    let other = tempfile_dir();
    let other_cert = other.join("other.crt");
    let status = Command::new("openssl")
        .args(["req", "-new", "-x509", "-days", "1", "-nodes", "-subj", "/CN=localhost"])
        .arg("-out")
        .arg(&other_cert)
        .arg("-keyout")
        .arg(other.join("other.key"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mut env = repl.to_vec();
    env.extend([
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", other_cert.to_str().unwrap()),
        ("PGHOST", "localhost"),
    ]);
    let mut p = PgEventsProcess::spawn(&["producer"], &world.producer_env(&env));
    assert_eq!(p.wait(WAIT).await, Some(1));
    let err = p.stderr();
    assert!(err.contains("error: ") && (err.contains("certificate") || err.contains("Certificate")), "{err}");

    // without TLS the server's pg_hba.conf refuses, and the error says what to change
    let mut env = repl.to_vec();
    env.push(("PGSSLMODE", "disable"));
    let mut p = PgEventsProcess::spawn(&["producer"], &world.producer_env(&env));
    assert_eq!(p.wait(WAIT).await, Some(1));
    let err = p.stderr();
    assert!(err.contains("pg_hba.conf"), "{err}");
    world.cleanup(queue).await;
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgevents-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The producer's exit code and log, for one that must refuse to start.
async fn refused(world: &World, env: &[(&str, &str)]) -> String {
    let mut p = PgEventsProcess::spawn(&["producer"], &world.producer_env(env));
    assert_eq!(p.wait(WAIT).await, Some(1), "the producer should refuse: {}", p.stderr());
    let log = p.stderr();
    eprintln!("refused as it should be:\n{log}");
    log
}

/// `verify-ca` checks the chain but not the host name (a server reached by an address its
/// certificate does not name), `verify-full` both; a client certificate logs in where
/// `pg_hba.conf` says `cert`; `channel_binding=require` binds SCRAM to the TLS session on both
/// the replication and the SQL connections, and refuses a server that asks for a cleartext
/// password; the password can come from a password file.
#[tokio::test(flavor = "multi_thread")]
async fn verify_ca_client_certificates_channel_binding_and_password_files() {
    let hba = ["cert", "password"]
        .iter()
        .zip(["certuser", "clear"])
        .flat_map(|(method, user)| {
            [
                format!("hostssl all {user} 127.0.0.1/32 {method}"),
                format!("hostssl replication {user} 127.0.0.1/32 {method}"),
            ]
        })
        .collect();
    let options = PgOptions { tls: true, tls_names: vec!["pg.internal".into()], hba, ..Default::default() };
    let world = World::with_cluster(PgCluster::start_with(options).await).await;
    world
        .pg
        .execute(
            "CREATE ROLE writers;
             CREATE ROLE repl LOGIN REPLICATION PASSWORD 'secret pw' IN ROLE writers;
             CREATE ROLE certuser LOGIN REPLICATION IN ROLE writers;
             CREATE ROLE clear LOGIN REPLICATION PASSWORD 'clear pw' IN ROLE writers;
             GRANT CREATE ON DATABASE postgres TO writers;
             CREATE TABLE t (id int PRIMARY KEY);
             ALTER TABLE t OWNER TO writers;",
        )
        .await;
    let ca = world.pg.tls_ca().expect("a TLS cluster has a CA");
    let ca_file = ca.cert().display().to_string();
    let client = ca.client("certuser", "certuser");
    let (cert, key) = (client.cert.display().to_string(), client.key.display().to_string());
    let mut queue = world.queue(&["#"]).await;
    let base = [("PGHOST", "127.0.0.1"), ("PGTABLES", "public.t"), ("PGSSLROOTCERT", ca_file.as_str())];
    let with = |extra: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        base.iter().chain(extra).map(|(k, v)| (*k, v.to_string())).collect()
    };

    // verify-full: the certificate names pg.internal, not 127.0.0.1.
    let env = with(&[("PGUSER", "repl"), ("PGPASSWORD", "secret pw"), ("PGSSLMODE", "verify-full")]);
    let err = refused(&world, &borrowed(&env)).await;
    assert!(err.contains("NotValidForName") || err.contains("not valid for"), "{err}");

    // verify-ca: the chain is checked, the name is not.
    let env = with(&[("PGUSER", "repl"), ("PGPASSWORD", "secret pw"), ("PGSSLMODE", "verify-ca")]);
    let producer = world.producer(&borrowed(&env)).await;
    world.pg.execute("INSERT INTO t VALUES (1)").await;
    assert_eq!(queue.take(1, WAIT).await[0].json["new"]["id"], 1);
    stop(producer).await;

    // A client certificate instead of a password (pg_hba.conf: cert).
    let env = with(&[("PGUSER", "certuser"), ("PGSSLMODE", "verify-ca"), ("PGSSLCERT", &cert), ("PGSSLKEY", &key)]);
    let producer = world.producer(&borrowed(&env)).await;
    world.pg.execute("INSERT INTO t VALUES (2)").await;
    assert_eq!(queue.take(1, WAIT).await[0].json["new"]["id"], 2);
    stop(producer).await;
    let env = with(&[("PGUSER", "certuser"), ("PGSSLMODE", "verify-ca")]);
    let err = refused(&world, &borrowed(&env)).await;
    assert!(err.contains("certificate"), "without the certificate the server refuses: {err}");

    // channel_binding=require: SCRAM-SHA-256-PLUS, the password from a password file.
    let passfile = ca.dir().join("pgpass");
    std::fs::write(&passfile, "*:*:*:repl:secret pw\n").unwrap();
    std::fs::set_permissions(&passfile, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let passfile = passfile.display().to_string();
    let env = with(&[
        ("PGUSER", "repl"),
        ("PGPASSFILE", &passfile),
        ("PGSSLMODE", "verify-ca"),
        ("PGCHANNELBINDING", "require"),
    ]);
    let producer = world.producer(&borrowed(&env)).await;
    world.pg.execute("INSERT INTO t VALUES (3)").await;
    assert_eq!(queue.take(1, WAIT).await[0].json["new"]["id"], 3);
    stop(producer).await;

    // ... and a server asking for a cleartext password is refused.
    let env = with(&[
        ("PGUSER", "clear"),
        ("PGPASSWORD", "clear pw"),
        ("PGSSLMODE", "verify-ca"),
        ("PGCHANNELBINDING", "require"),
    ]);
    let err = refused(&world, &borrowed(&env)).await;
    assert!(err.to_lowercase().contains("channel binding") || err.contains("channel_binding"), "{err}");
    world.cleanup(queue).await;
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// AMQPS with a private CA: a client certificate as the login (SASL EXTERNAL), a password
/// from a file, the URL's standard parameters honoured (the broker shows the negotiated
/// frame_max and channel_max), a CA that did not sign the broker's certificate refused, and a
/// malformed URL refused without its password in the error.
#[tokio::test(flavor = "multi_thread")]
async fn amqps_with_a_private_ca_client_certificates_and_a_password_file() {
    let ca = TestCa::new("pgevents rabbit CA");
    let node = RabbitNode::start_tls(&ca).await;
    node.ctl(&["add_user", "pgevents-client", "not-used-with-external"]).await;
    node.ctl(&["set_permissions", "-p", "/", "pgevents-client", ".*", ".*", ".*"]).await;
    let client = ca.client("rabbit-client", "pgevents-client");
    let tls_port = node.tls_port.expect("a TLS port");
    let world = World::new().await;
    world.pg.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut queue = EventQueue::bind_to(&node.url(), &world.exchange, &["#"]).await;
    let ca_file = ca.cert().display().to_string();
    let (cert, key) = (client.cert.display().to_string(), client.key.display().to_string());

    // EXTERNAL: the certificate is the login.
    let url = format!("amqps://localhost:{tls_port}/%2f?auth_mechanism=external");
    let env = [
        ("RABBITMQ_URL", url.as_str()),
        ("RABBITMQ_CA_FILE", &ca_file),
        ("RABBITMQ_CERT_FILE", &cert),
        ("RABBITMQ_KEY_FILE", &key),
    ];
    let producer = world.producer(&env).await;
    world.pg.execute("INSERT INTO t VALUES (1)").await;
    assert_eq!(queue.take(1, WAIT).await[0].json["new"]["id"], 1);
    let connections = node.ctl_output(&["list_connections", "user", "auth_mechanism", "ssl"]).await;
    assert!(connections.contains("pgevents-client\tEXTERNAL\ttrue"), "{connections}");
    stop(producer).await;

    // A password from a file, and the URL's parameters.
    let password_file = ca.dir().join("rabbit-password");
    std::fs::write(&password_file, "guest\n").unwrap();
    let password_file = password_file.display().to_string();
    let url = format!(
        "amqps://guest@localhost:{tls_port}/%2f?heartbeat=10&frame_max=131072&channel_max=32&connection_timeout=5000"
    );
    let env =
        [("RABBITMQ_URL", url.as_str()), ("RABBITMQ_CA_FILE", &ca_file), ("RABBITMQ_PASSWORD_FILE", &password_file)];
    let producer = world.producer(&env).await;
    world.pg.execute("INSERT INTO t VALUES (2)").await;
    assert_eq!(queue.take(1, WAIT).await[0].json["new"]["id"], 2);
    let connections =
        node.ctl_output(&["list_connections", "user", "frame_max", "channel_max", "timeout", "ssl"]).await;
    assert!(connections.contains("guest\t131072\t32\t10\ttrue"), "{connections}");
    stop(producer).await;

    // A CA that did not sign the broker's certificate.
    let other = TestCa::new("another CA");
    let other_file = other.cert().display().to_string();
    let env = [
        ("RABBITMQ_URL", url.as_str()),
        ("RABBITMQ_CA_FILE", other_file.as_str()),
        ("RABBITMQ_PASSWORD_FILE", &password_file),
    ];
    let err = refused(&world, &env).await;
    assert!(err.contains("UnknownIssuer") || err.contains("certificate"), "{err}");

    // A malformed URL: a clear error, without the password.
    let env = [("RABBITMQ_URL", "amqps://guest:hunter2@localhost:notaport/%2f")];
    let mut p = PgEventsProcess::spawn(&["producer"], &world.producer_env(&env));
    assert_ne!(p.wait(WAIT).await, Some(0));
    let err = p.stderr();
    assert!(err.contains("RABBITMQ_URL") && err.contains("expected amqp://"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
    queue.close().await;
}
