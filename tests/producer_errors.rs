//! Bad input fails fast: a clear one-line error on stderr, a non-zero exit, never a panic.

mod common;

use std::time::Duration;

use common::{World, WAIT};
use pgevents_testkit::{PgCluster, PgEventsProcess, PgOptions};

/// Runs `pgevents producer` with `overrides` and returns its error line, checking the exit
/// code, the absence of panics, and that the error is a single `error: ...` line.
async fn fails(world: &World, overrides: &[(&str, &str)]) -> String {
    fails_with(world, overrides, 1).await
}

/// As [`fails`], with the expected exit code (2 for usage errors).
async fn fails_with(world: &World, overrides: &[(&str, &str)], expected: i32) -> String {
    let mut p = PgEventsProcess::spawn(&["producer"], &world.producer_env(overrides));
    let code = p.wait(WAIT).await;
    let stderr = p.stderr();
    assert_eq!(code, Some(expected), "expected exit code {expected} for {overrides:?}; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line for {overrides:?}; stderr:\n{stderr}");
    errors[0].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_fail_fast_with_one_clear_line() {
    let world = World::new().await;
    world
        .pg
        .execute(
            "CREATE TABLE t (id int PRIMARY KEY);
             CREATE ROLE repl LOGIN REPLICATION PASSWORD 'right';
             CREATE ROLE plain LOGIN PASSWORD 'pw';",
        )
        .await;

    let e = fails(&world, &[("PGPORT", "1")]).await;
    assert!(e.contains("cannot connect to PostgreSQL at 127.0.0.1:1") && e.contains("refused"), "{e}");

    let e = fails(&world, &[("PGUSER", "repl"), ("PGPASSWORD", "wrong")]).await;
    assert!(e.contains("password authentication failed for user \"repl\""), "{e}");

    let e = fails(&world, &[("PGUSER", "repl")]).await;
    assert!(e.contains("password"), "a password is needed: {e}");

    let e = fails(&world, &[("PGTABLES", "public.t,public.missing")]).await;
    assert!(e.contains("table public.missing (listed in PGTABLES) does not exist"), "{e}");

    let e = fails(&world, &[("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:1/%2f")]).await;
    assert!(e.contains("could not connect to RabbitMQ at amqp://guest:***@127.0.0.1:1"), "{e}");

    let e = fails(&world, &[("RABBITMQ_URL", "amqp://guest:wrong@127.0.0.1:5672/%2f")]).await;
    assert!(e.contains("could not connect to RabbitMQ") && e.contains("password is probably wrong"), "{e}");
    assert!(!e.contains("wrong@"), "the password is not shown: {e}");

    let e = fails(&world, &[("RABBITMQ_URL", "http://example.com")]).await;
    assert!(e.contains("invalid RabbitMQ URL"), "{e}");

    let e = fails(&world, &[("DATABASE_URL", "postgres://x:y@h:notaport/db")]).await;
    assert!(e.contains("invalid connection string"), "{e}");

    let e = fails(&world, &[("PGSLOT", "Bad-Slot")]).await;
    assert!(e.contains("invalid slot name"), "{e}");

    let e = fails(&world, &[("PGUSER", "plain"), ("PGPASSWORD", "pw"), ("PGTABLES", "public.t")]).await;
    assert!(e.contains("publication") || e.contains("REPLICATION"), "a role without rights is told what to do: {e}");

    let e = fails(&world, &[("PGEVENTS_ROUTING_KEY_TEMPLATE", "{db}.{table}")]).await;
    assert!(e.contains("uses {db}; the placeholders are {database}, {schema} and {table}"), "{e}");

    let e = fails(&world, &[("PGEVENTS_EXCHANGE_MAP", "public.t")]).await;
    assert!(e.contains("invalid exchange map entry \"public.t\": expected schema.table=exchange"), "{e}");

    let e = fails_with(&world, &[("PGEVENTS_MAX_IN_FLIGHT", "lots")], 2).await;
    assert!(e.contains("invalid value 'lots' for '--max-in-flight"), "usage errors exit 2: {e}");
    assert!(
        world.pg.query_text("SELECT count(*)::text FROM pg_replication_slots").await.as_deref() == Some("0"),
        "failed starts create no slot"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_level_not_logical_is_explained() {
    let pg = PgCluster::start_with(PgOptions { wal_level: Some("replica".into()), ..Default::default() }).await;
    let world = World::with_cluster(pg).await;
    let e = fails(&world, &[]).await;
    assert!(e.contains("wal_level is 'replica'") && e.contains("ALTER SYSTEM SET wal_level = logical"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_held_by_another_client_is_reported() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    world.pg.execute(&format!("SELECT pg_create_logical_replication_slot('{}', 'pgoutput')", world.slot)).await;
    let env = world.pg.env();
    let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_default();
    let dsn =
        format!("host={} port={} user={} dbname={}", get("PGHOST"), get("PGPORT"), get("PGUSER"), get("PGDATABASE"));
    let mut holder = tokio::process::Command::new(pgevents_testkit::pg_bin_dir().join("pg_recvlogical"))
        .args(["-d", &dsn, "--slot", &world.slot, "--start", "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", "publication_names=pgevents"])
        .kill_on_drop(true)
        .spawn()
        .expect("pg_recvlogical");
    pgevents_testkit::wait_for("pg_recvlogical to hold the slot", WAIT, || async {
        world.pg.slot_active(&world.slot).await.then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    let e = fails(&world, &[("PGEVENTS_SLOT_BUSY_TIMEOUT", "2")]).await;
    assert!(e.contains("replication slot \"pgevents_test\" is in use by another connection"), "{e}");
    assert!(e.contains("not a pgevents producer"), "{e}");
    assert!(started.elapsed() >= Duration::from_secs(2), "it waited for the slot before giving up");
    let _ = holder.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wal2json_missing_from_output_plugin_libraries_is_explained() {
    // A cluster where wal2json is not allowed as an output plugin (PostgreSQL 15.19+), or when
    // the setting does not exist, a nonexistent plugin name path is exercised instead.
    let pg = PgCluster::start_with(PgOptions { extra_conf: vec![], ..Default::default() }).await;
    let restricted = pg.query_text("SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'").await;
    let world = World::with_cluster(pg).await;
    if restricted.is_some() {
        world.pg.execute("ALTER SYSTEM SET output_plugin_libraries = 'pgoutput'").await;
        world.pg.execute("SELECT pg_reload_conf()").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let e = fails(&world, &[("PGOUTPUTPLUGIN", "wal2json")]).await;
        assert!(e.contains("output_plugin_libraries"), "{e}");
    }
}
