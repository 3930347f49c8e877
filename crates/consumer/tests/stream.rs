//! The stream consumer against the local RabbitMQ's stream protocol: a restart goes on right
//! after the last handled event (the offset stored on the broker under the consumer's name,
//! another name reads everything), a failed event is not stored (the consumer stops at it and
//! starts there again), and skipping goes past failed and unreadable events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgevents_consumer::{
    ConnectionWatch, IncomingEvent, OnFailure, Outcome, Registry, StreamConsumer, StreamConsumerConfig,
    StreamConsumerError, StreamUrl, STREAM_OFFSET,
};
use pgevents_stream::{Dedup, OutgoingStreamMessage, StreamPublisher, StreamRetention};
use pgevents_testkit::{delete_stream, stream_url, unique_name, wait_for};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn url() -> StreamUrl {
    stream_url().parse().expect("stream url")
}

fn event(seq: u64) -> Vec<u8> {
    format!(
        r#"{{"table_name":"public.t","action":"I","old":{{}},"new":{{"n":{seq}}},"diff":{{}},"id":{seq},"lsn":"0/{seq:X}","xid":1,"commit_time":"2026-11-23T00:00:00Z","seq":0}}"#
    )
    .into_bytes()
}

/// Declares `stream` and appends these bodies, confirmed.
async fn append(stream: &str, bodies: Vec<Vec<u8>>) {
    append_with(stream, bodies, &[]).await
}

/// [`append`], each message with these application properties besides `table`.
async fn append_with(stream: &str, bodies: Vec<Vec<u8>>, extra: &[(&'static str, &str)]) {
    let client = pgevents_stream::client(&url(), "test setup").await.expect("connect");
    let retention = StreamRetention { max_age: "1h".into(), max_bytes: 1 << 30, segment_bytes: None, replicas: None };
    pgevents_stream::ensure_stream(&client, stream, &retention).await.expect("declare");
    let _ = client.close().await;
    let mut publisher = StreamPublisher::connect(&url(), stream, Dedup::Off, "test publisher", WAIT).await.unwrap();
    let count = bodies.len();
    for body in bodies {
        let mut properties = vec![("table".into(), "public.t".to_owned())];
        properties.extend(extra.iter().map(|(name, value)| ((*name).into(), (*value).to_owned())));
        publisher
            .send(OutgoingStreamMessage { body, application_properties: properties, ..Default::default() })
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    let mut confirmed = 0;
    while confirmed < count {
        confirmed += publisher.next_confirm().await.expect("confirmed").len();
    }
    publisher.close().await;
}

type Seen = Arc<Mutex<Vec<(u64, i64)>>>;

/// A registry recording (offset, new.n) of what it handled, failing `fail` events.
fn recording(seen: &Seen, fail: Option<i64>) -> Registry {
    let seen = seen.clone();
    Registry::new().on_all("public.t", move |e: IncomingEvent| {
        let seen = seen.clone();
        async move {
            let n = e.event.new["n"].as_i64().unwrap_or(-1);
            if Some(n) == fail {
                return Outcome::Fail(format!("row {n} is refused"));
            }
            let offset = e.delivery.header_i64(STREAM_OFFSET).expect("the offset header") as u64;
            seen.lock().unwrap().push((offset, n));
            Outcome::Ok
        }
    })
}

fn config(stream: &str, name: &str) -> StreamConsumerConfig {
    let mut config = StreamConsumerConfig::new(url(), stream, name);
    config.retry_delay = Duration::from_millis(20);
    config.on_connected = ConnectionWatch::default();
    config
}

/// Runs a consumer until it has handled `until` rows in all, then stops it.
async fn run_until(config: StreamConsumerConfig, registry: Registry, seen: &Seen, until: usize) {
    let shutdown = CancellationToken::new();
    let consumer = StreamConsumer::new(config, registry);
    let task = tokio::spawn(consumer.run(shutdown.clone()));
    wait_for("events handled", WAIT, || async { (seen.lock().unwrap().len() >= until).then_some(()) }).await;
    shutdown.cancel();
    task.await.unwrap().expect("a clean stop");
}

fn rows(seen: &Seen) -> Vec<i64> {
    seen.lock().unwrap().iter().map(|(_, n)| *n).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_consumer_goes_on_right_after_the_last_event_it_handled() {
    let stream = unique_name("cstream");
    append(&stream, (1..=30).map(event).collect()).await;
    let first: Seen = Arc::default();
    // Stored only when it stops (every 1000 events or a minute otherwise).
    let mut stored_at_stop = config(&stream, "app");
    stored_at_stop.store_every = 1000;
    stored_at_stop.store_interval = Duration::from_secs(60);
    run_until(stored_at_stop.clone(), recording(&first, None), &first, 30).await;
    assert_eq!(rows(&first), (1..=30).collect::<Vec<_>>());
    assert_eq!(first.lock().unwrap()[0].0, 0, "offsets from the stream's first");

    append(&stream, (31..=40).map(event).collect()).await;
    let second: Seen = Arc::default();
    run_until(stored_at_stop, recording(&second, None), &second, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rows(&second), (31..=40).collect::<Vec<_>>(), "right after the last handled event, nothing twice");

    // Stored every 4 events: a consumer of another name reads everything, from the first.
    let other: Seen = Arc::default();
    let mut every_four = config(&stream, "audit");
    every_four.store_every = 4;
    run_until(every_four.clone(), recording(&other, None), &other, 40).await;
    assert_eq!(rows(&other), (1..=40).collect::<Vec<_>>());
    let client = pgevents_stream::client(&url(), "test check").await.unwrap();
    let stored = client.query_offset("audit".to_owned(), &stream).await.expect("an offset stored for audit");
    let last = other.lock().unwrap().last().map(|(offset, _)| *offset);
    // (Not 39: the broker's records of stored offsets take offsets of the stream too.)
    assert_eq!(Some(stored), last, "the last handled event's offset");
    let _ = client.close().await;
    delete_stream(&stream).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_event_is_not_stored_the_consumer_stops_at_it_or_skips_it() {
    let stream = unique_name("cstream");
    let mut bodies: Vec<Vec<u8>> = (1..=5).map(event).collect();
    bodies.push(b"not an event".to_vec());
    bodies.push(event(7));
    append(&stream, bodies).await;

    let seen: Seen = Arc::default();
    let mut stop = config(&stream, "app");
    stop.store_every = 1;
    let consumer = StreamConsumer::new(stop.clone(), recording(&seen, Some(3)));
    let error = tokio::time::timeout(WAIT, consumer.run(CancellationToken::new())).await.expect("stops").unwrap_err();
    match &error {
        StreamConsumerError::GivenUp { offset, reason, .. } => {
            assert_eq!(*offset, 2, "{error}");
            assert!(reason.contains("row 3 is refused"), "{error}");
        }
        other => panic!("expected GivenUp, got {other}"),
    }
    assert!(error.to_string().contains("OnFailure::Skip"), "the error says what to do: {error}");
    assert_eq!(rows(&seen), vec![1, 2]);

    // The failed event was not stored: once its cause is fixed, a restart starts at it.
    // Skipping goes past a body that is not an event.
    let mut skip = stop;
    skip.on_failure = OnFailure::Skip;
    let after: Seen = Arc::default();
    run_until(skip.clone(), recording(&after, None), &after, 4).await;
    assert_eq!(rows(&after), vec![3, 4, 5, 7]);
    assert_eq!(after.lock().unwrap().iter().map(|(o, _)| *o).collect::<Vec<_>>(), vec![2, 3, 4, 6]);

    // And past an event its handler fails.
    let skipper: Seen = Arc::default();
    skip.name = "skipper".into();
    run_until(skip, recording(&skipper, Some(3)), &skipper, 5).await;
    assert_eq!(rows(&skipper), vec![1, 2, 4, 5, 7]);
    delete_stream(&stream).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_are_stored_every_interval_through_a_backlog_and_properties_cannot_pass_for_the_brokers() {
    let stream = unique_name("cstream");
    // Properties named like the broker's headers, which handlers must not take for them.
    let forged = [("x-stream-offset", "999"), ("x-delivery-count", "50")];
    append_with(&stream, (1..=20).map(event).collect(), &forged).await;
    let seen: Seen = Arc::default();
    let slow = {
        let seen = seen.clone();
        Registry::new().on_all("public.t", move |e: IncomingEvent| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let offset = e.delivery.header_i64(STREAM_OFFSET).unwrap_or(-1);
                assert_eq!(e.delivery.header("x-delivery-count"), None, "not a broker header");
                seen.lock().unwrap().push((offset as u64, e.event.new["n"].as_i64().unwrap_or(-1)));
                Outcome::Ok
            }
        })
    };
    let mut config = config(&stream, "slow");
    config.store_every = 1000;
    config.store_interval = Duration::from_millis(300);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(StreamConsumer::new(config, slow).run(shutdown.clone()));
    wait_for("ten events handled", WAIT, || async { (seen.lock().unwrap().len() >= 10).then_some(()) }).await;
    let client = pgevents_stream::client(&url(), "test check").await.unwrap();
    let stored = client.query_offset("slow".to_owned(), &stream).await;
    assert!(
        matches!(stored, Ok(offset) if offset >= 1),
        "stored within the interval while events kept coming: {stored:?}"
    );
    let _ = client.close().await;
    shutdown.cancel();
    task.await.unwrap().expect("a clean stop");
    let offsets: Vec<u64> = seen.lock().unwrap().iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>(), "the real offsets, not the forged one");
    delete_stream(&stream).await;
}
