//! Delivery guarantees end to end: pgoutput and wal2json agree byte for byte; kill -9 loses
//! nothing and keeps per-table order; SIGTERM stops cleanly and keeps the slot; unroutable
//! messages with --mandatory are retried, not dropped.

mod common;

use std::time::Duration;

use common::{check_at_least_once_in_order, stop, write_rows, World, WAIT};
use pgevents_testkit::{unique_name, EventQueue, PgEventsProcess};

const WORKLOAD: &str = "
    CREATE TYPE color AS ENUM ('red', 'green');
    CREATE TABLE a (id int PRIMARY KEY, n numeric, t text, j jsonb, ts timestamptz, arr int[], c color, big text);
    CREATE TABLE b (x int, y text);
    ALTER TABLE b REPLICA IDENTITY FULL;";

const CHANGES: &str = "
    INSERT INTO a VALUES (1, 12.3400, 'x\"y', '{\"k\": [1, {\"z\": null}]}', '2026-11-23 10:00:00.5+00', '{1,2,NULL}', 'red',
        (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 500) i));
    INSERT INTO a VALUES (2, -0.5, NULL, 'true', 'infinity', '{}', 'green', 'small');
    UPDATE a SET t = 'changed' WHERE id = 1;
    UPDATE a SET id = 3 WHERE id = 2;
    INSERT INTO b VALUES (1, 'one'), (2, 'two');
    UPDATE b SET y = 'uno' WHERE x = 1;
    BEGIN; SELECT pgevents.context('{\"uid\": 7}'); DELETE FROM a WHERE id = 3; COMMIT;
    DELETE FROM b;
    TRUNCATE a, b;";

#[tokio::test(flavor = "multi_thread")]
async fn pgoutput_and_wal2json_publish_the_same_events() {
    let world = World::new().await;
    world.pg.execute(WORKLOAD).await;
    let wal2json_exchange = unique_name("x_w2j");
    let mut from_pgoutput = world.queue(&["#"]).await;
    let mut from_wal2json = EventQueue::bind(&wal2json_exchange, &["#"]).await;
    let pgoutput = world.producer(&[("PGSLOT", "slot_pgoutput")]).await;
    let mut w2j = PgEventsProcess::spawn(
        &["producer"],
        &world.producer_env(&[
            ("PGSLOT", "slot_wal2json"),
            ("PGOUTPUTPLUGIN", "wal2json"),
            ("RABBITMQ_EXCHANGE", &wal2json_exchange),
        ]),
    );
    w2j.wait_for_log("streaming", WAIT).await;
    world.pg.execute(CHANGES).await;
    let expected = 12;
    let p = from_pgoutput.take(expected, WAIT).await;
    let w = from_wal2json.take(expected, WAIT).await;
    for (p, w) in p.iter().zip(&w) {
        assert_eq!(String::from_utf8_lossy(&p.body), String::from_utf8_lossy(&w.body));
        assert_eq!(p.message_id(), w.message_id());
        assert_eq!(p.delivery.routing_key, w.delivery.routing_key);
    }
    assert_eq!(p[7].json["context"]["uid"], 7);
    stop(pgoutput).await;
    stop(w2j).await;
    from_wal2json.close().await;
    pgevents_testkit::delete_exchange(&wal2json_exchange).await;
    world.cleanup(from_pgoutput).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream_then_restart_loses_nothing() {
    let world = World::new().await;
    world.pg.execute(pgevents_testkit::AB_TABLES).await;
    let mut queue = world.queue(&["#"]).await;
    let rows = 3000;
    let mut producer = world.producer(&[]).await;
    let writer = write_rows(&world.pg, rows);
    let killer = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            producer.kill();
            assert_eq!(producer.wait(WAIT).await, None, "killed by SIGKILL");
            producer = world.producer(&[]).await;
        }
        producer
    };
    let ((), producer) = tokio::join!(writer, killer);
    let events = queue.drain(Duration::from_secs(5)).await;
    let duplicates = check_at_least_once_in_order(&events, rows);
    eprintln!("{} deliveries for {rows} changes ({duplicates} duplicates) across 3 kills", events.len());
    stop(producer).await;
    world.cleanup(queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_keeps_the_slot() {
    let world = World::new().await;
    world.pg.execute(pgevents_testkit::AB_TABLES).await;
    let mut queue = world.queue(&["#"]).await;
    let rows = 2000;
    let producer = world.producer(&[]).await;
    let writer = write_rows(&world.pg, rows);
    let stopper = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        stop(producer).await
    };
    let ((), log) = tokio::join!(writer, stopper);
    assert!(log.contains("stopped; the slot keeps its position"), "{log}");
    let confirmed = world.pg.slot_confirmed_flush(&world.slot).await;
    assert!(confirmed.is_some(), "the slot is never dropped");
    assert!(!world.pg.slot_active(&world.slot).await);
    // the rest arrives after a restart
    let producer = world.producer(&[]).await;
    let events = queue.drain(Duration::from_secs(5)).await;
    let duplicates = check_at_least_once_in_order(&events, rows);
    eprintln!("{} deliveries, {duplicates} duplicates after a graceful stop", events.len());
    stop(producer).await;
    world.cleanup(queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mandatory_unroutable_events_are_retried_not_dropped() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE a (id int PRIMARY KEY)").await;
    let mut producer = world.producer(&[("RABBITMQ_MANDATORY", "true")]).await;
    world.pg.execute("INSERT INTO a VALUES (1)").await;
    producer.wait_for_log("no queue is bound", WAIT).await;
    let confirmed_before = world.pg.slot_confirmed_flush(&world.slot).await;
    // nothing was confirmed past the returned event: once a queue is bound, it arrives
    let mut queue = world.queue(&["public.a"]).await;
    let events = queue.take(1, Duration::from_secs(60)).await;
    assert_eq!(events[0].json["new"]["id"], 1);
    assert!(confirmed_before.is_some());
    stop(producer).await;
    world.cleanup(queue).await;
}
