//! The producer against a broker's limits: events larger than RabbitMQ takes (`--oversize
//! stub`, `--oversize fail`, and the broker's own `max_message_size` refusing one), resource
//! alarms that block publishing, and the in-flight byte limit.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{stop, World, WAIT};
use pgevents_testkit::{free_local_addr, http_get, metric_value, wait_for, EventQueue, PgEventsProcess, RabbitNode};

const TABLE: &str = "CREATE TABLE big (id int PRIMARY KEY, payload text); ALTER TABLE big REPLICA IDENTITY FULL;";

/// A producer on `node` with its metrics on a fresh address.
async fn producer(world: &World, node: &RabbitNode, extra: &[(&str, &str)]) -> (PgEventsProcess, SocketAddr) {
    let addr = free_local_addr();
    let addr_text = addr.to_string();
    let mut env = vec![("RABBITMQ_URL", node.url()), ("PGEVENTS_METRICS_ADDR", addr_text)];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    (world.producer(&env).await, addr)
}

/// `/readyz` once it answers 503 with a reason containing `text`.
async fn not_ready_with(addr: SocketAddr, text: &str) -> String {
    wait_for(&format!("/readyz to say {text:?}"), WAIT, || async {
        let (status, reason) = http_get(addr, "/readyz").await?;
        (status == 503 && reason.contains(text)).then_some(reason)
    })
    .await
}

async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let text = http_get(addr, "/metrics").await.map(|(_, text)| text).unwrap_or_default();
    metric_value(&text, series).unwrap_or(0.0)
}

fn ids(events: &[pgevents_testkit::ReceivedEvent]) -> Vec<i64> {
    events.iter().filter_map(|e| e.json["new"]["id"].as_i64()).collect()
}

/// An event above `--max-message-bytes`: `stub` publishes it with the large value left out
/// (and the events after it); `fail` halts before publishing it; and where the broker's own
/// `max_message_size` is lower than `--max-message-bytes`, the broker's refusal halts the
/// producer too, instead of a reconnect loop that republishes the same transaction forever.
/// Halted, the producer stays up: `/readyz` and `pgevents_halted` say why.
#[tokio::test(flavor = "multi_thread")]
async fn events_larger_than_the_broker_takes_are_stubbed_or_halt_the_producer() {
    let node = RabbitNode::start_with("max_message_size = 65536").await;
    let world = World::new().await;
    world.pg.execute(TABLE).await;
    let mut queue = EventQueue::bind_to(&node.url(), &world.exchange, &["#"]).await;
    let big = |id: i32| format!("INSERT INTO big VALUES ({id}, repeat('x', 100000))");
    let small = |id: i32| format!("INSERT INTO big VALUES ({id}, 'small')");

    // stub: the big value is left out, named in the `omitted` header, and what follows arrives.
    let limits = [("PGEVENTS_MAX_MESSAGE_BYTES", "60000"), ("PGEVENTS_OVERSIZE", "stub")];
    let (stubbing, addr) = producer(&world, &node, &limits).await;
    for sql in [small(1), big(2), small(3)] {
        world.pg.execute(&sql).await;
    }
    let events = queue.take(3, WAIT).await;
    assert_eq!(ids(&events), [1, 2, 3]);
    let stubbed = &events[1];
    assert_eq!(stubbed.json["new"]["payload"], serde_json::json!({"omitted_bytes": 100002}));
    assert_eq!(stubbed.delivery.header("omitted").as_deref(), Some("new.payload,diff.payload"));
    assert!(stubbed.body.len() <= 60000);
    assert_eq!(metric(addr, "pgevents_events_stubbed_total{table=\"public.big\"}").await, 1.0);
    stop(stubbing).await;

    // The broker's max_message_size below --max-message-bytes: RabbitMQ closes the channel
    // (406); the producer halts with the broker's words, no reconnect loop.
    let (halting, addr) = producer(&world, &node, &[]).await;
    world.pg.execute(&small(4)).await;
    world.pg.execute(&big(5)).await;
    world.pg.execute(&small(6)).await;
    let reason = not_ready_with(addr, "halted").await;
    assert!(reason.contains("larger than configured max size"), "{reason}");
    assert_eq!(ids(&queue.take(1, WAIT).await), [4]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metric(addr, "pgevents_halted").await, 1.0);
    assert_eq!(metric(addr, "pgevents_reconnects_total").await, 0.0, "halted, not reconnecting");
    assert!(queue.next(Duration::from_millis(500)).await.is_none(), "nothing after the refused event");
    stop(halting).await;

    // fail: the producer's own limit halts it before it publishes the event.
    let (failing, addr) = producer(&world, &node, &[("PGEVENTS_MAX_MESSAGE_BYTES", "60000")]).await;
    let reason = not_ready_with(addr, "above --max-message-bytes 60000").await;
    assert!(reason.contains("of public.big is 200") && reason.contains("--oversize stub"), "{reason}");
    // Event 4 may come again (its confirm may not have reached PostgreSQL before the halt):
    // at least once. Nothing from the refused event on.
    let again = ids(&queue.drain(Duration::from_secs(1)).await);
    assert!(again.iter().all(|id| *id == 4), "nothing published past the halt: {again:?}");
    let log = stop(failing).await;
    assert!(log.contains("halted"), "{log}");
    queue.close().await;
}

/// A disk alarm blocks the publishing connection: the producer pauses with `/readyz` 503
/// "RabbitMQ blocked: low on disk" and `pgevents_rabbitmq_blocked` 1, does not time out into
/// reconnects while blocked (confirm timeout 2 s here), and resumes when the alarm clears.
#[tokio::test(flavor = "multi_thread")]
async fn a_resource_alarm_pauses_publishing_until_it_clears() {
    let node = RabbitNode::start().await;
    let world = World::new().await;
    world.pg.execute(TABLE).await;
    let mut queue = EventQueue::bind_to(&node.url(), &world.exchange, &["#"]).await;
    let (producer, addr) = producer(&world, &node, &[("PGEVENTS_CONFIRM_TIMEOUT", "2")]).await;
    world.pg.execute("INSERT INTO big VALUES (1, 'before')").await;
    assert_eq!(ids(&queue.take(1, WAIT).await), [1]);

    node.ctl(&["set_disk_free_limit", "100000GB"]).await;
    world.pg.execute("INSERT INTO big VALUES (2, 'during')").await;
    let reason = not_ready_with(addr, "RabbitMQ blocked").await;
    assert!(reason.contains("low on disk"), "{reason}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(metric(addr, "pgevents_rabbitmq_blocked").await, 1.0);
    assert_eq!(metric(addr, "pgevents_reconnects_total").await, 0.0, "no reconnect churn while blocked");
    assert!(http_get(addr, "/readyz").await.is_some_and(|(status, _)| status == 503));

    node.ctl(&["set_disk_free_limit", "1MB"]).await;
    let events = queue.take(1, WAIT).await;
    assert_eq!(ids(&events), [2]);
    wait_for("/readyz to say ready", WAIT, || async { (http_get(addr, "/readyz").await?.0 == 200).then_some(()) })
        .await;
    assert_eq!(metric(addr, "pgevents_rabbitmq_blocked").await, 0.0);
    assert_eq!(metric(addr, "pgevents_rabbitmq_blocks_total").await, 1.0);
    stop(producer).await;
    queue.close().await;
}

/// The same alarm with `--publish-to stream`: the stream protocol has no notice of alarms, and
/// RabbitMQ 3.10 does not even block stream writers (the stream would fill the disk that is
/// running low). The producer asks over its AMQP connection once a second, and pauses both
/// outputs while the broker is blocked, as above.
#[tokio::test(flavor = "multi_thread")]
async fn a_resource_alarm_pauses_stream_publishing_until_it_clears() {
    let node = RabbitNode::start_with_stream().await;
    let world = World::new().await;
    world.pg.execute(TABLE).await;
    let stream = pgevents_testkit::unique_name("alarm");
    let stream_url = node.stream_url().expect("a stream port");
    let extra = [
        ("PGEVENTS_CONFIRM_TIMEOUT", "2"),
        ("PGEVENTS_PUBLISH_TO", "stream"),
        ("PGEVENTS_STREAM", stream.as_str()),
        ("PGEVENTS_STREAM_URL", stream_url.as_str()),
    ];
    let (producer, addr) = producer(&world, &node, &extra).await;
    let confirmed = |n: f64| async move { (metric(addr, "pgevents_events_confirmed_total").await >= n).then_some(()) };
    world.pg.execute("INSERT INTO big VALUES (1, 'before')").await;
    wait_for("the first event confirmed", WAIT, || confirmed(1.0)).await;

    node.ctl(&["set_disk_free_limit", "100000GB"]).await;
    let reason = not_ready_with(addr, "RabbitMQ blocked").await;
    assert!(reason.contains("low on disk"), "{reason}");
    world.pg.execute("INSERT INTO big VALUES (2, 'during')").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(metric(addr, "pgevents_rabbitmq_blocked").await, 1.0);
    assert_eq!(metric(addr, "pgevents_reconnects_total").await, 0.0, "no reconnect churn while blocked");
    assert_eq!(
        metric(addr, "pgevents_events_confirmed_total").await,
        1.0,
        "nothing written to the stream during the alarm:\n{}",
        producer.stderr()
    );

    node.ctl(&["set_disk_free_limit", "1MB"]).await;
    wait_for("the second event confirmed", WAIT, || confirmed(2.0)).await;
    wait_for("/readyz to say ready", WAIT, || async { (http_get(addr, "/readyz").await?.0 == 200).then_some(()) })
        .await;
    assert_eq!(metric(addr, "pgevents_rabbitmq_blocked").await, 0.0);
    let log = stop(producer).await;
    assert!(!log.contains("reconnect"), "{log}");
}

/// A RabbitMQ user without write permission on the default exchange cannot ask about alarms:
/// the producer says so once, keeps its connections (a publish on the channel the broker closed
/// would cost it the connection) and keeps streaming.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_who_may_not_probe_is_told_once_and_the_stream_goes_on() {
    let node = RabbitNode::start_with_stream().await;
    node.ctl(&["add_user", "narrow", "narrow-pw"]).await;
    // Everything named pgevents... (the events exchange, the outbox exchange, the stream), not
    // amq.default.
    node.ctl(&["set_permissions", "-p", "/", "narrow", "^pgevents.*", "^pgevents.*", "^pgevents.*"]).await;
    let world = World::new().await;
    world.pg.execute(TABLE).await;
    let stream = pgevents_testkit::unique_name("narrow");
    let amqp_url = node.url().replace("guest:guest@", "narrow:narrow-pw@");
    let stream_url = node.stream_url().expect("a stream port").replace("guest:guest@", "narrow:narrow-pw@");
    let addr = free_local_addr();
    let addr_text = addr.to_string();
    let env = [
        ("RABBITMQ_URL", amqp_url.as_str()),
        ("PGEVENTS_METRICS_ADDR", addr_text.as_str()),
        ("PGEVENTS_PUBLISH_TO", "stream"),
        ("PGEVENTS_STREAM", stream.as_str()),
        ("PGEVENTS_STREAM_URL", stream_url.as_str()),
    ];
    let producer = world.producer(&env).await;
    for id in 1..=5 {
        world.pg.execute(&format!("INSERT INTO big VALUES ({id}, 'x')")).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    wait_for("five events confirmed", WAIT, || async {
        (metric(addr, "pgevents_events_confirmed_total").await >= 5.0).then_some(())
    })
    .await;
    assert_eq!(metric(addr, "pgevents_reconnects_total").await, 0.0, "no connection lost to the probe");
    let log = stop(producer).await;
    assert_eq!(log.matches("write permission on amq.default").count(), 1, "said once: {log}");
    assert!(!log.contains("reconnect"), "{log}");
}

/// `--max-in-flight-bytes` holds publishing back while that many body bytes wait for
/// confirms (the metric counts each time), and every event still arrives, in order.
#[tokio::test(flavor = "multi_thread")]
async fn the_in_flight_byte_limit_paces_publishing_and_loses_nothing() {
    let world = World::new().await;
    world.pg.execute(TABLE).await;
    let mut queue = world.queue(&["#"]).await;
    let addr = free_local_addr();
    let addr_text = addr.to_string();
    let limits = [("PGEVENTS_METRICS_ADDR", addr_text.as_str()), ("PGEVENTS_MAX_IN_FLIGHT_BYTES", "50000")];
    let producer = world.producer(&limits).await;
    world.pg.execute("INSERT INTO big SELECT n, repeat(md5(n::text), 300) FROM generate_series(1, 300) n").await;
    let events = queue.take(300, WAIT).await;
    assert_eq!(ids(&events), (1..=300).collect::<Vec<i64>>());
    let text = http_get(addr, "/metrics").await.map(|(_, text)| text).unwrap_or_default();
    let paused = metric_value(&text, "pgevents_in_flight_limit_reached_total{limit=\"bytes\"}").unwrap_or(0.0);
    assert!(paused >= 1.0, "10 KB events against a 50 KB limit must pause reading:\n{text}");
    stop(producer).await;
    world.cleanup(queue).await;
}
