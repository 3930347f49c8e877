//! Running the producer in production: metrics and health endpoints, the slot advancing while
//! only unsubscribed tables change (and the heartbeat statement), and high availability (a
//! standby producer takes over when the active one dies, losing nothing; a session that holds
//! the slot's lock without streaming is reported).

mod common;

use std::time::Duration;

use common::{check_at_least_once_in_order, pg_port, stop, write_rows, World, WAIT};
use pgevents_testkit::{free_local_addr, http_get, metric_value, wait_for, PgEventsProcess};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_readiness_are_served() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let mut queue = world.queue(&["#"]).await;
    let addr = free_local_addr();
    let addr_text = addr.to_string();
    let producer = world.producer(&[("PGEVENTS_METRICS_ADDR", &addr_text)]).await;

    assert_eq!(http_get(addr, "/healthz").await.map(|r| r.0), Some(200));
    wait_for("/readyz to say ready", WAIT, || async { (http_get(addr, "/readyz").await?.0 == 200).then_some(()) })
        .await;

    world
        .pg
        .execute("BEGIN; INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c'); UPDATE t SET v = 'z' WHERE id = 2; COMMIT;")
        .await;
    assert_eq!(queue.take(4, WAIT).await.len(), 4);
    let text = wait_for("the confirm and the lag to be recorded", WAIT, || async {
        let (_, text) = http_get(addr, "/metrics").await?;
        let confirmed = metric_value(&text, "pgevents_events_confirmed_total")?;
        let lag = metric_value(&text, "pgevents_replication_lag_bytes")?;
        (confirmed >= 4.0 && lag >= 0.0).then_some(text)
    })
    .await;
    let value = |series: &str| metric_value(&text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"));
    assert_eq!(value(r#"pgevents_events_published_total{table="public.t",action="I"}"#), 3.0);
    assert_eq!(value(r#"pgevents_events_published_total{table="public.t",action="U"}"#), 1.0);
    assert_eq!(value("pgevents_confirms_pending"), 0.0);
    assert_eq!(value("pgevents_streaming"), 1.0);
    assert!(value("pgevents_confirmed_lsn") > 0.0);
    assert!(value("pgevents_server_wal_lsn") > 0.0);
    assert!(value("pgevents_transactions_total") >= 1.0);
    assert!(value("pgevents_commit_to_confirm_seconds_count") >= 1.0, "{text}");
    assert!(text.contains("pgevents_commit_to_confirm_seconds_bucket{le=\"0.005\"}"), "{text}");
    assert!(text.contains("# HELP pgevents_replication_lag_seconds"), "{text}");

    let log = stop(producer).await;
    assert!(!log.contains("ERROR"), "{log}");
    world.cleanup(queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_slot_advances_while_only_unsubscribed_tables_change() {
    let world = World::new().await;
    world
        .pg
        .execute(
            "CREATE TABLE watched (id int PRIMARY KEY); CREATE TABLE other (id serial PRIMARY KEY, at timestamptz);",
        )
        .await;
    world.pg.execute("CREATE TABLE beats (at timestamptz)").await;
    let queue = world.queue(&["#"]).await;
    let producer = world
        .producer(&[
            ("PGTABLES", "public.watched"),
            ("PGEVENTS_HEARTBEAT_SQL", "INSERT INTO beats VALUES (now())"),
            ("PGEVENTS_HEARTBEAT_INTERVAL", "1"),
        ])
        .await;
    let lsn = |text: Option<String>| -> u64 {
        let text = text.expect("an LSN");
        let (hi, lo) = text.split_once('/').expect("an LSN");
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    let mut seen = vec![lsn(world.pg.slot_confirmed_flush(&world.slot).await)];
    for _ in 0..4 {
        for _ in 0..5 {
            world.pg.execute("INSERT INTO other (at) VALUES (now())").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let written = lsn(world.pg.query_text("SELECT pg_current_wal_lsn()::text").await);
        let confirmed = wait_for("the slot to pass the unsubscribed writes", WAIT, || async {
            let confirmed = lsn(world.pg.slot_confirmed_flush(&world.slot).await);
            (confirmed >= written).then_some(confirmed)
        })
        .await;
        seen.push(confirmed);
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "confirmed_flush_lsn kept moving: {seen:?}");
    wait_for("the heartbeat statement to run every second", WAIT, || async {
        let beats: i64 = world.pg.query_text("SELECT count(*)::text FROM beats").await?.parse().ok()?;
        (beats >= 3).then_some(())
    })
    .await;
    stop(producer).await;
    world.cleanup(queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_producer_takes_over_when_the_active_one_dies() {
    let world = World::new().await;
    world.pg.execute(pgevents_testkit::AB_TABLES).await;
    let mut queue = world.queue(&["#"]).await;
    let mut active = world.producer(&[]).await;
    let standby_addr = free_local_addr();
    let standby_addr_text = standby_addr.to_string();
    let mut standby =
        PgEventsProcess::spawn(&["producer"], &world.producer_env(&[("PGEVENTS_METRICS_ADDR", &standby_addr_text)]));
    standby.wait_for_log("standby: another producer streams this slot", WAIT).await;
    wait_for("the standby's /readyz to say standby", WAIT, || async {
        let (status, reason) = http_get(standby_addr, "/readyz").await?;
        (status == 503 && reason.contains("standby")).then_some(())
    })
    .await;

    let rows = 2000;
    let writer = write_rows(&world.pg, rows);
    let failover = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        active.kill();
        assert_eq!(active.wait(WAIT).await, None, "killed by SIGKILL");
        let killed_at = std::time::Instant::now();
        standby.wait_for_log("took over", WAIT).await;
        standby.wait_for_log("streaming", WAIT).await;
        killed_at.elapsed()
    };
    let ((), takeover) = tokio::join!(writer, failover);
    assert!(takeover < Duration::from_secs(10), "the standby took over within seconds ({takeover:?})");
    let events = queue.drain(Duration::from_secs(5)).await;
    let duplicates = check_at_least_once_in_order(&events, rows);
    eprintln!("takeover after {takeover:?}; {} deliveries for {rows} changes ({duplicates} duplicates)", events.len());
    assert_eq!(http_get(standby_addr, "/readyz").await.map(|r| r.0), Some(200));
    stop(standby).await;
    world.cleanup(queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_have_no_line_per_event_and_report_progress() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut queue = world.queue(&["#"]).await;
    let mut producer = world.producer(&[("PGEVENTS_LOG_FORMAT", "json")]).await;
    world.pg.execute("INSERT INTO t SELECT generate_series(1, 500)").await;
    assert_eq!(queue.take(500, WAIT).await.len(), 500);
    producer.wait_for_log("\"message\":\"progress\"", Duration::from_secs(15)).await;
    let log = stop(producer).await;
    let lines: Vec<&str> = log.lines().collect();
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
        assert!(value["level"].is_string() && value["timestamp"].is_string(), "{line}");
    }
    assert!(lines.len() < 20, "no line per event at the default level ({} lines):\n{log}", lines.len());
    let progress: serde_json::Value =
        serde_json::from_str(lines.iter().find(|l| l.contains("\"progress\"")).unwrap()).unwrap();
    assert_eq!(progress["events_confirmed"], 500);
    assert!(progress["lag_bytes"].is_u64() && progress["rate_per_s"].is_u64(), "{progress}");
    world.cleanup(queue).await;
}

/// Any role can take a plain advisory lock: an ordinary user holding the producer's lock (by
/// mistake or not) would keep every producer in standby while WAL piles up. The standby
/// notices that the holder does not stream the slot and reports it within
/// `--lock-holder-timeout` (log with PID and user, `/readyz`, metric); ending that session, as
/// the report says, lets the producer take over.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_holding_the_lock_without_streaming_is_reported() {
    let world = World::new().await;
    world.pg.execute("CREATE ROLE mallory LOGIN PASSWORD 'mallory'").await;
    let (mallory, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(pg_port(&world.pg))
        .user("mallory")
        .password("mallory")
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect as an ordinary role");
    tokio::spawn(connection);
    let pid: i32 = mallory.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    mallory.execute("SELECT pg_advisory_lock(1885824374, hashtext('pgevents_test'))", &[]).await.unwrap();

    let addr = free_local_addr();
    let addr_text = addr.to_string();
    let env = world.producer_env(&[("PGEVENTS_METRICS_ADDR", &addr_text), ("PGEVENTS_LOCK_HOLDER_TIMEOUT", "2")]);
    let mut producer = PgEventsProcess::spawn(&["producer"], &env);
    producer.wait_for_log("standby", WAIT).await;
    let reason = wait_for("/readyz to report the lock holder", WAIT, || async {
        let (status, reason) = http_get(addr, "/readyz").await?;
        (status == 503 && reason.contains("has not streamed")).then_some(reason)
    })
    .await;
    assert!(reason.contains(&format!("PID {pid}")) && reason.contains("user mallory"), "{reason}");
    assert!(reason.contains(&format!("pg_terminate_backend({pid})")), "{reason}");
    let text = http_get(addr, "/metrics").await.map(|(_, text)| text).unwrap_or_default();
    assert_eq!(metric_value(&text, "pgevents_standby_lock_suspect"), Some(1.0), "{text}");
    assert!(producer.stderr().contains(&format!("pid={pid}")), "{}", producer.stderr());

    world.pg.execute(&format!("SELECT pg_terminate_backend({pid})")).await;
    producer.wait_for_log("took over", WAIT).await;
    producer.wait_for_log("streaming", WAIT).await;
    wait_for("/readyz to say ready", WAIT, || async { (http_get(addr, "/readyz").await?.0 == 200).then_some(()) })
        .await;
    let text = http_get(addr, "/metrics").await.map(|(_, text)| text).unwrap_or_default();
    assert_eq!(metric_value(&text, "pgevents_standby_lock_suspect"), Some(0.0));
    stop(producer).await;
}
