//! Publishing to a RabbitMQ stream over the stream protocol (`--publish-to stream|both`):
//! exactly once across SIGKILLs, both outputs confirmed together, the message's properties,
//! and the settings refused or reported.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{pg_port, run_to_end, stop, World, WAIT};
use pgevents_testkit::{
    delete_stream, free_local_addr, read_stream, stream_connections_of, stream_url, unique_name, wait_for,
    PgEventsProcess, StreamRecord,
};

const ROWS: i32 = 10_000;
const ROWS_PER_TRANSACTION: i32 = 10;

/// Reads the stream until it holds `count` messages (or `WAIT` passes), then what may follow.
async fn read_until(stream: &str, count: usize) -> Vec<StreamRecord> {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let records = read_stream(stream, Duration::from_secs(2), usize::MAX).await;
        if records.len() >= count || tokio::time::Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn stream_env<'a>(stream: &'a str, url: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("PGEVENTS_PUBLISH_TO", "stream"),
        ("PGEVENTS_STREAM", stream),
        ("PGEVENTS_STREAM_URL", url),
        ("PGTABLES", "public.numbers"),
        // Confirmed positions reach PostgreSQL late: every kill leaves events in the stream that
        // the slot replays.
        ("PGEVENTS_STATUS_INTERVAL", "5"),
    ]
}

/// The `n` of every message, checking each message's properties on the way.
fn numbers(records: &[StreamRecord]) -> Vec<i64> {
    let mut last_id = 0;
    records
        .iter()
        .map(|record| {
            let id: u64 = record.properties["publishing_id"].parse().expect("publishing_id");
            assert!(id > last_id, "publishing ids strictly increase: {id} after {last_id}");
            last_id = id;
            let event = record.json();
            assert_eq!(record.properties["table"], "public.numbers");
            assert_eq!(record.properties["action"], "I");
            assert_eq!(record.properties["lsn"], event["lsn"].as_str().expect("lsn"));
            event["new"]["n"].as_i64().expect("n")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_change_is_in_the_stream_exactly_once_in_commit_order_through_five_sigkills() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE numbers (n int PRIMARY KEY)").await;
    let stream = unique_name("events");
    let url = stream_url();
    let env = world.producer_env(&stream_env(&stream, &url));
    let spawn = || PgEventsProcess::spawn(&["producer"], &env);
    let mut producer = spawn();
    producer.wait_for_log("streaming", WAIT).await;

    let port = pg_port(&world.pg);
    let writer = tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect");
        tokio::spawn(connection);
        for first in (1..=ROWS).step_by(ROWS_PER_TRANSACTION as usize) {
            let last = first + ROWS_PER_TRANSACTION - 1;
            client
                .execute("INSERT INTO numbers SELECT generate_series($1::int, $2::int)", &[&first, &last])
                .await
                .expect("insert");
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
    });
    let mut resumed = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        producer.kill();
        let _ = producer.wait(WAIT).await;
        producer = spawn();
        producer.wait_for_log("streaming", WAIT).await;
        resumed += producer.log_count("those replayed up to it are not sent again");
    }
    writer.await.expect("writer");

    let records = read_until(&stream, ROWS as usize).await;
    let log = stop(producer).await;
    let numbers = numbers(&records);
    let distinct: HashSet<i64> = numbers.iter().copied().collect();
    assert_eq!(distinct.len(), ROWS as usize, "every change is in the stream");
    assert_eq!(numbers.len(), ROWS as usize, "no change is in it twice");
    assert_eq!(numbers, (1..=i64::from(ROWS)).collect::<Vec<_>>(), "in commit order");
    assert!(resumed >= 1, "a restart found events of the slot's replay already stored (and sent none of them again)");
    assert!(!log.contains("panicked"), "{log}");
    delete_stream(&stream).await;
    pgevents_testkit::delete_exchange(&world.exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_outputs_carry_every_event_and_the_outbox_stays_on_its_exchange() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE numbers (n int PRIMARY KEY)").await;
    let stream = unique_name("events");
    let url = stream_url();
    let outbox_exchange = unique_name("outbox");
    let mut env = stream_env(&stream, &url);
    env[0] = ("PGEVENTS_PUBLISH_TO", "both");
    env.push(("PGEVENTS_OUTBOX_EXCHANGE", &outbox_exchange));
    let mut queue = world.queue(&["#"]).await;
    let mut outbox = pgevents_testkit::EventQueue::bind(&outbox_exchange, &["#"]).await;
    let producer = world.producer(&env).await;
    world
        .pg
        .execute(
            "BEGIN; INSERT INTO numbers SELECT generate_series(1, 50);
             SELECT pgevents.outbox('orders.placed', '{\"total\": 5}'::jsonb, NULL, NULL); COMMIT;",
        )
        .await;
    world.pg.execute("UPDATE numbers SET n = n + 1000 WHERE n <= 5").await;

    let from_exchange = common::collect_all(&mut queue, Vec::new(), 55).await;
    let outbox_message = outbox.next_raw(WAIT).await.expect("the outbox message on its exchange");
    assert_eq!(outbox_message.routing_key, "orders.placed");
    let records = read_until(&stream, 55).await;
    let log = stop(producer).await;
    assert_eq!(from_exchange.len(), 55, "{log}");
    assert_eq!(records.len(), 55, "{log}");
    for (event, record) in from_exchange.iter().zip(&records) {
        assert_eq!(event.body, record.body, "the same event, in the same order, on both outputs");
        assert_eq!(record.properties["lsn"], event.json["lsn"].as_str().expect("lsn"));
    }
    assert_eq!(records[50].properties["action"], "U");
    assert!(records.iter().all(|r| r.json()["table_name"] == "public.numbers"), "no outbox message in the stream");
    outbox.close().await;
    pgevents_testkit::delete_exchange(&outbox_exchange).await;
    world.cleanup(queue).await;
    delete_stream(&stream).await;
}

#[tokio::test]
async fn stream_settings_that_cannot_work_are_refused_before_anything_starts() {
    let world = World::new().await;
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("PGEVENTS_STREAM", "s")], "use --publish-to stream"),
        (&[("PGEVENTS_PUBLISH_TO", "stream")], "need --stream"),
        (
            &[("PGEVENTS_PUBLISH_TO", "both"), ("PGEVENTS_STREAM", "h"), ("PGEVENTS_HISTORY_STREAM", "h")],
            "is also --history-stream",
        ),
    ];
    for (extra, expected) in cases {
        let mut producer = PgEventsProcess::spawn(&["producer"], &world.producer_env(extra));
        assert_ne!(producer.wait(WAIT).await, Some(0), "{extra:?}");
        assert!(producer.stderr().contains(expected), "{extra:?}: {}", producer.stderr());
    }
    // Nothing listens there: the error names the plugin, and `pgevents check` fails on it.
    let nowhere = format!("rabbitmq-stream://guest:guest@{}/%2f", free_local_addr());
    let extra =
        [("PGEVENTS_PUBLISH_TO", "stream"), ("PGEVENTS_STREAM", "s"), ("PGEVENTS_STREAM_URL", nowhere.as_str())];
    let mut producer = PgEventsProcess::spawn(&["producer"], &world.producer_env(&extra));
    assert_ne!(producer.wait(WAIT).await, Some(0));
    assert!(producer.stderr().contains("rabbitmq-plugins enable rabbitmq_stream"), "{}", producer.stderr());
    let mut check = PgEventsProcess::spawn(&["check"], &world.producer_env(&extra));
    assert_ne!(check.wait(WAIT).await, Some(0));
    assert!(check.stdout().contains("rabbitmq_stream"), "{}", check.stdout());
    let url = stream_url();
    let extra = [("PGEVENTS_PUBLISH_TO", "stream"), ("PGEVENTS_STREAM", "s"), ("PGEVENTS_STREAM_URL", url.as_str())];
    let out = run_to_end(&["check"], &world.producer_env(&extra)).await;
    assert!(out.contains("the stream protocol (plugin rabbitmq_stream) answers"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_full_minimal_and_none_carry_what_they_say_and_the_stream_keeps_what_resuming_reads() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE numbers (n int PRIMARY KEY)").await;
    let stream = unique_name("events");
    let url = stream_url();
    let mut queue = world.queue(&["#"]).await;
    for (n, mode) in [(1, "full"), (2, "minimal"), (3, "none")] {
        let mut env = stream_env(&stream, &url);
        env[0] = ("PGEVENTS_PUBLISH_TO", "both");
        env.push(("PGEVENTS_HEADERS", mode));
        let producer = world.producer(&env).await;
        world.pg.execute(&format!("INSERT INTO numbers VALUES ({n})")).await;
        let event = queue.next(WAIT).await.expect("the event");
        stop(producer).await;
        assert_eq!(event.json["new"]["n"], n, "{mode}: the body is the same whatever the headers");
        let properties = &event.delivery.properties;
        assert_eq!(properties.delivery_mode(), Some(2), "{mode}: persistent");
        let full = mode == "full";
        assert_eq!(event.delivery.header("table").is_some(), full, "{mode}");
        assert_eq!(event.delivery.header("action").is_some(), full, "{mode}");
        assert_eq!(properties.timestamp().is_some(), full, "{mode}");
        assert_eq!(properties.app_id().is_some(), full, "{mode}");
        assert_eq!(event.delivery.message_id().is_some(), mode != "none", "{mode}");
        assert_eq!(properties.content_type().is_some(), mode != "none", "{mode}");
    }
    let records = read_until(&stream, 3).await;
    assert_eq!(numbers(&records[..1]), vec![1]);
    for record in &records {
        for name in ["lsn", "seq", "publishing_id", "action"] {
            assert!(record.properties.contains_key(name), "{name} in {:?}", record.properties);
        }
    }
    assert!(!records[1].properties.contains_key("table"), "minimal: no table property");
    world.cleanup(queue).await;
    delete_stream(&stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_databases_with_the_same_slot_name_share_a_stream_and_neither_loses_a_change() {
    let first = World::new().await;
    let second = World::new().await;
    let stream = unique_name("events");
    let url = stream_url();
    let mut producers = Vec::new();
    for world in [&first, &second] {
        world.pg.execute("CREATE TABLE numbers (n int PRIMARY KEY)").await;
        producers.push(world.producer(&stream_env(&stream, &url)).await);
    }
    first.pg.execute("INSERT INTO numbers SELECT generate_series(1, 300)").await;
    second.pg.execute("INSERT INTO numbers SELECT generate_series(1001, 1300)").await;
    let records = read_until(&stream, 600).await;
    // Each producer again, after a kill: each finds its own last message among the other's.
    for producer in &producers {
        producer.kill();
    }
    let mut restarted = Vec::new();
    for (world, mut producer) in [&first, &second].into_iter().zip(producers) {
        let _ = producer.wait(WAIT).await;
        restarted.push(world.producer(&stream_env(&stream, &url)).await);
    }
    first.pg.execute("INSERT INTO numbers SELECT generate_series(301, 400)").await;
    second.pg.execute("INSERT INTO numbers SELECT generate_series(1301, 1400)").await;
    let after = read_until(&stream, 800).await;
    for producer in restarted {
        stop(producer).await;
    }
    assert_eq!(records.len(), 600);
    let mut ns: Vec<i64> = after.iter().map(|r| r.json()["new"]["n"].as_i64().expect("n")).collect();
    ns.sort_unstable();
    let expected: Vec<i64> = (1..=400).chain(1001..=1400).collect();
    assert_eq!(ns, expected, "every change of both databases, once");
    let names: HashSet<&str> = after.iter().map(|r| r.properties["producer"].as_str()).collect();
    assert_eq!(names.len(), 2, "a publisher name per database: {names:?}");
    delete_stream(&stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_rows_written_after_the_last_change_do_not_hide_it_at_restart() {
    let world = World::new().await;
    world
        .pg
        .execute("CREATE TABLE numbers (n int PRIMARY KEY); INSERT INTO numbers SELECT generate_series(1, 2000)")
        .await;
    let stream = unique_name("events");
    let url = stream_url();
    let mut env = stream_env(&stream, &url);
    env.push(("PGEVENTS_SNAPSHOT", "always"));
    let producer = world.producer(&env).await;
    world.pg.execute("INSERT INTO numbers SELECT generate_series(10001, 10100)").await;
    read_until(&stream, 2100).await;
    producer.kill();
    let mut producer = producer;
    let _ = producer.wait(WAIT).await;
    // At the next start the snapshot writes its 2,100 rows again before the changes resume: the
    // last change is found behind them.
    let producer = world.producer(&env).await;
    world.pg.execute("INSERT INTO numbers SELECT generate_series(10101, 10200)").await;
    let records = read_until(&stream, 4300).await;
    let log = stop(producer).await;
    let changes: Vec<i64> = records
        .iter()
        .filter(|r| r.properties["action"] == "I")
        .map(|r| r.json()["new"]["n"].as_i64().expect("n"))
        .collect();
    assert_eq!(changes, (10001..=10200).collect::<Vec<_>>(), "each change once, in order; {log}");
    assert_eq!(records.iter().filter(|r| r.properties["action"] == "R").count(), 4100, "two snapshots");
    delete_stream(&stream).await;
}

/// A reader of the stream (the consumer library's `StreamConsumer`, `pgevents serve`) stores its
/// offset in the stream itself: a record after the producer's last message, which resuming must
/// look past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_stored_after_the_last_change_does_not_hide_it_at_restart() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE numbers (n int PRIMARY KEY)").await;
    let stream = unique_name("events");
    let url = stream_url();
    let env = stream_env(&stream, &url);
    let mut producer = world.producer(&env).await;
    world.pg.execute("INSERT INTO numbers SELECT generate_series(1, 50)").await;
    let first = read_until(&stream, 50).await;
    producer.kill();
    let _ = producer.wait(WAIT).await;
    let reader = pgevents_stream::client(&url.parse().unwrap(), "test reader").await.unwrap();
    for name in ["search-indexer", "audit"] {
        reader.store_offset(name, &stream, first[49].offset).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(reader);
    let producer = world.producer(&env).await;
    world.pg.execute("INSERT INTO numbers SELECT generate_series(51, 60)").await;
    let records = read_until(&stream, 60).await;
    let log = stop(producer).await;
    assert_eq!(numbers(&records), (1..=60).collect::<Vec<_>>(), "each change once, in order; {log}");
    assert!(!log.contains("reconnect"), "it found its last message at once: {log}");
    delete_stream(&stream).await;
}

/// Frames larger than the negotiated size are refused by newer brokers (3.10 takes them): the
/// vendored client's splitting has a unit test; this proves large events arrive whole, in order,
/// and that one above the stream's limit is stubbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_reach_the_stream_whole_and_one_above_its_limit_is_stubbed() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE numbers (n int PRIMARY KEY, filler text)").await;
    let stream = unique_name("events");
    let url = stream_url();
    let mut env = stream_env(&stream, &url);
    env.push(("PGEVENTS_OVERSIZE", "stub"));
    let producer = world.producer(&env).await;
    // 400 events of 40 kB in one transaction: 16 MB, sixteen times a stream frame.
    world.pg.execute("INSERT INTO numbers SELECT g, repeat(md5(g::text), 1250) FROM generate_series(1, 400) g").await;
    // Above 1,000,000 bytes: larger than a stream frame takes.
    world.pg.execute("INSERT INTO numbers SELECT 401, repeat(md5('x'), 40000)").await;
    let records = read_until(&stream, 401).await;
    let log = stop(producer).await;
    assert_eq!(numbers(&records), (1..=401).collect::<Vec<_>>(), "{log}");
    assert!(!log.contains("reconnect"), "no connection was lost on the way: {log}");
    assert!(records[400].properties.get("omitted").is_some_and(|o| o.contains("new.filler")), "{log}");
    assert!(records[400].body.len() < 1000, "stubbed");
    delete_stream(&stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_session_leaves_no_stream_connection_behind() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE numbers (n int PRIMARY KEY)").await;
    let stream = unique_name("events");
    let slot = unique_name("leak");
    let url = stream_url();
    let mut env = stream_env(&stream, &url);
    env.push(("PGSLOT", &slot));
    let mut producer = world.producer(&env).await;
    for round in 1..=3 {
        world.pg.execute(&format!("INSERT INTO numbers VALUES ({round})")).await;
        // The session fails: PostgreSQL ends its replication connection.
        let streaming = producer.log_count("streaming");
        world
            .pg
            .execute(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .await;
        producer.wait_for_logs("streaming", streaming + 1, WAIT).await;
    }
    let pid = producer.pid();
    let left = wait_for("one stream connection", WAIT, || async {
        let count = stream_connections_of(pid);
        (count == 1).then_some(count)
    })
    .await;
    assert_eq!(left, 1);
    let records = read_until(&stream, 3).await;
    stop(producer).await;
    assert_eq!(numbers(&records), vec![1, 2, 3]);
    delete_stream(&stream).await;
}
