//! TLS and SCRAM: a replication role with a password on a TLS-only server, with sslmode
//! require and verify-full, and the errors for a wrong root certificate and for no TLS.

mod common;

use std::process::Command;

use common::{stop, World, WAIT};
use pgevents_testkit::{PgCluster, PgEventsProcess, PgOptions};

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
