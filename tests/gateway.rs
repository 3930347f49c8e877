//! `pgevents serve`: live events over SSE, resumed from the in-memory feed or replayed from the
//! RabbitMQ stream (over AMQP, and over the stream protocol), filters down to a row or a field,
//! slow clients cut off, clients disconnected when the broker goes away, gzip bodies, gaps past
//! the stream's retention.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::gateway::{Gateway, Over};
use common::{stop, World, WAIT};
use pgevents_testkit::{amqp_url, http_get, stream_url, unique_name, FaultProxy, SseClient, SseMessage};

const SHORT: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread")]
async fn subscribers_get_live_events_and_replay_what_they_missed() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE users (id int PRIMARY KEY, name text)").await;
    let stream = unique_name("history");
    let proxy = FaultProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let proxied = amqp_url().replace("127.0.0.1:5672", &proxy.addr.to_string());
    let gw = Gateway::start(&world, &stream, Some(&proxied), &[]).await;
    let producer = world.producer(&[("PGEVENTS_HISTORY_STREAM", &stream)]).await;

    let anonymous = SseClient::connect(gw.addr, "/events", &[]).await;
    assert_eq!(anonymous.status, 400);
    assert!(anonymous.body.contains("the X-Consumer-Id header"), "{}", anonymous.body);

    let mut first = gw.subscribe("/events", &[("X-Consumer-Id", "dashboard")]).await;
    let mut second = gw.subscribe("/events?consumer_id=dashboard", &[]).await;
    world.pg.execute("INSERT INTO users VALUES (1, 'ann')").await;
    let a = first.next(WAIT).await.expect("first client gets the event");
    let b = second.next(WAIT).await.expect("second client with the same id gets it too");
    assert_eq!((a.event.as_str(), a.json()["new"]["name"].as_str()), ("insert", Some("ann")));
    assert_eq!(a, b);

    world.pg.execute("INSERT INTO users VALUES (2, 'bob'); INSERT INTO users VALUES (3, 'cy')").await;
    let two = first.next(WAIT).await.unwrap();
    let three = first.next(WAIT).await.unwrap();
    assert_eq!(three.json()["id"], 3);
    drop(first);
    world.pg.execute("INSERT INTO users VALUES (4, 'dee'); UPDATE users SET name = 'eve' WHERE id = 1").await;

    let last_seen = two.id.clone().expect("events carry ids");
    let mut back = gw.subscribe("/events", &[("X-Consumer-Id", "dashboard"), ("Last-Event-ID", &last_seen)]).await;
    world.pg.execute("DELETE FROM users WHERE id = 2").await;
    let replayed: Vec<_> = {
        let mut out = Vec::new();
        for _ in 0..4 {
            out.push(back.next(WAIT).await.expect("missed and live events"));
        }
        out
    };
    let summary: Vec<(String, i64)> =
        replayed.iter().map(|m| (m.event.clone(), m.json()["id"].as_i64().unwrap_or(-1))).collect();
    assert_eq!(
        summary,
        vec![("insert".into(), 3), ("insert".into(), 4), ("update".into(), 1), ("delete".into(), 2)],
        "exactly the missed events in order, then the live one"
    );
    let ids: Vec<i64> = replayed.iter().map(|m| m.id.as_deref().unwrap().parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]) && ids[0] > last_seen.parse::<i64>().unwrap());
    assert!(back.next(SHORT).await.is_none(), "no duplicate at the seam");

    let query = format!("/events?last_event_id={}", replayed[2].id.as_deref().unwrap());
    let mut by_query = gw.subscribe(&query, &[("X-Consumer-Id", "other")]).await;
    assert_eq!(by_query.next(WAIT).await.unwrap().event, "delete");
    while second.next(SHORT).await.is_some() {}
    let before = second.comments;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = second.next(SHORT).await;
    assert!(second.comments > before, "heartbeat comments on an idle stream");

    assert_eq!(http_get(gw.addr, "/readyz").await.map(|(status, _)| status), Some(200));

    // The broker connection goes away: live clients are cut at once, to come back with their id,
    // and /readyz says why until the gateway reads the stream again.
    proxy.cut();
    assert!(second.closed_within(Duration::from_secs(10)).await, "clients are disconnected when the broker is lost");
    let (status, body) = http_get(gw.addr, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("RabbitMQ connection lost"), "{body}");
    let (status, _) = http_get(gw.metrics, "/readyz").await.unwrap();
    assert_eq!(status, 503, "the metrics port's /readyz says the same");
    proxy.restore().await;
    pgevents_testkit::wait_for("/readyz 200 after the broker is back", WAIT, || async {
        http_get(gw.addr, "/readyz").await.filter(|(status, _)| *status == 200)
    })
    .await;
    let mut again = gw.subscribe("/events", &[("X-Consumer-Id", "dashboard"), ("Last-Event-ID", &last_seen)]).await;
    let resumed = again.next(WAIT).await.expect("resumed after the broker came back");
    assert_eq!(resumed.id, replayed[0].id, "from the event after the one it had");
    assert!(gw.metric("pgevents_gateway_hub_reconnects_total").await >= 1.0);

    stop(producer).await;
    gw.stop().await;
    pgevents_testkit::delete_exchange(&world.exchange).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_select_tables_actions_rows_columns_and_fields() {
    let world = World::new().await;
    world
        .pg
        .execute(
            "CREATE TABLE users (id int PRIMARY KEY, name text, score int); ALTER TABLE users REPLICA IDENTITY FULL;
             CREATE TABLE orders (id int PRIMARY KEY);",
        )
        .await;
    let stream = unique_name("history");
    let gw = Gateway::start(&world, &stream, None, &[]).await;
    let producer = world.producer(&[("PGEVENTS_HISTORY_STREAM", &stream)]).await;
    let consumer = [("X-Consumer-Id", "filters")];
    let mut orders = gw.subscribe("/events?table=public.ord*", &consumer).await;
    let mut updates = gw.subscribe("/events?action=U", &consumer).await;
    let mut row2 = gw.subscribe("/events?table=public.users&pk=2", &consumer).await;
    let mut scores = gw.subscribe("/events?columns=score", &consumer).await;
    let mut fields = gw.subscribe("/events?granularity=field&action=U&pk=2", &consumer).await;
    let mut row2_fields = gw.subscribe("/events?granularity=field&table=public.users&pk=2", &consumer).await;
    let bad = gw.refused("/events?action=X", &consumer).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("invalid action"), "{}", bad.body);

    world.pg.execute("INSERT INTO users VALUES (1, 'a', 1), (2, 'b', 2); INSERT INTO orders VALUES (1)").await;
    world.pg.execute("UPDATE users SET name = 'x' WHERE id = 1").await;
    world.pg.execute("UPDATE users SET score = 5, name = 'y' WHERE id = 2").await;

    let only_order = orders.next(WAIT).await.unwrap();
    assert_eq!(only_order.json()["table_name"], "public.orders");
    assert!(orders.next(SHORT).await.is_none());

    let u1 = updates.next(WAIT).await.unwrap();
    let u2 = updates.next(WAIT).await.unwrap();
    assert_eq!((u1.json()["id"].as_i64(), u2.json()["id"].as_i64()), (Some(1), Some(2)));
    assert!(updates.next(SHORT).await.is_none());

    let r1 = row2.next(WAIT).await.unwrap();
    let r2 = row2.next(WAIT).await.unwrap();
    assert_eq!((r1.event.as_str(), r2.event.as_str()), ("insert", "update"));
    assert!(row2.next(SHORT).await.is_none());

    let changed = scores.next(WAIT).await.unwrap();
    assert_eq!(changed.json()["id"], 2, "only the update that changed score");
    assert!(scores.next(SHORT).await.is_none());

    let f1 = fields.next(WAIT).await.unwrap();
    let f2 = fields.next(WAIT).await.unwrap();
    assert_eq!((f1.event.as_str(), f2.event.as_str()), ("field_update", "field_update"));
    let mut columns =
        vec![f1.json()["column"].as_str().unwrap().to_owned(), f2.json()["column"].as_str().unwrap().to_owned()];
    columns.sort();
    assert_eq!(columns, vec!["name", "score"]);
    let score = if f1.json()["column"] == "score" { f1.json() } else { f2.json() };
    assert_eq!(
        score,
        serde_json::json!({"table_name": "public.users", "id": 2, "column": "score", "old": 2, "new": 5})
    );
    assert!(f1.id.is_none() && f2.id.is_some(), "the last field event carries the id");
    assert!(fields.next(SHORT).await.is_none());

    // Field events are for updates: the row's insert and delete stay row events.
    world.pg.execute("DELETE FROM users WHERE id = 2").await;
    let mut kinds = Vec::new();
    while let Some(event) = row2_fields.next(SHORT).await {
        kinds.push(event.event.clone());
        if event.event == "delete" {
            assert_eq!(event.json()["old"]["score"], 5, "a delete is the row event with the old row");
        }
    }
    assert_eq!(kinds, vec!["insert", "field_update", "field_update", "delete"]);

    stop(producer).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_composite_key_matches_in_key_order() {
    let world = World::new().await;
    // Key order (z, a) is not the alphabetical order of the key's columns.
    world.pg.execute("CREATE TABLE pairs (a text, z int, note text, PRIMARY KEY (z, a))").await;
    let stream = unique_name("history");
    let gw = Gateway::start(&world, &stream, None, &[]).await;
    let producer = world.producer(&[("PGEVENTS_HISTORY_STREAM", &stream)]).await;
    let mut in_key_order = gw.subscribe("/events?pk=1,x", &[("X-Consumer-Id", "pk")]).await;
    let mut by_name_order = gw.subscribe("/events?pk=x,1", &[("X-Consumer-Id", "pk")]).await;
    world.pg.execute("INSERT INTO pairs VALUES ('x', 1, 'wanted'), ('y', 1, 'other'), ('1', 0, 'other')").await;
    let event = in_key_order.next(WAIT).await.expect("the row with z=1, a=x");
    assert_eq!(event.json()["new"]["note"], "wanted");
    assert!(in_key_order.next(SHORT).await.is_none());
    assert!(by_name_order.next(SHORT).await.is_none(), "pk values are in key order, not by column name");
    stop(producer).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_client_is_cut_off_while_a_fast_one_keeps_up() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE blobs (id int PRIMARY KEY, body text)").await;
    let stream = unique_name("history");
    let gw = Gateway::start(&world, &stream, None, &[("PGEVENTS_CLIENT_BUFFER", "2000")]).await;
    let producer = world.producer(&[("PGEVENTS_HISTORY_STREAM", &stream)]).await;
    let mut fast = gw.subscribe("/events", &[("X-Consumer-Id", "fast")]).await;
    let mut slow = gw.subscribe("/events", &[("X-Consumer-Id", "slow")]).await;
    let rows = 8000;
    world.pg.execute(&format!("INSERT INTO blobs SELECT i, repeat('x', 8000) FROM generate_series(1, {rows}) i")).await;
    let mut received = 0;
    while received < rows {
        let event = fast.next(WAIT).await.unwrap_or_else(|| panic!("the fast client stalled after {received}"));
        received += 1;
        if received == rows {
            assert_eq!(event.json()["id"], rows, "in order, to the last");
        }
    }
    let mut slow_received = 0;
    while slow.next(Duration::from_secs(5)).await.is_some() {
        slow_received += 1;
    }
    assert!(slow_received < rows, "the slow client was cut off ({slow_received} of {rows})");
    let log = gw.process.stderr();
    assert!(log.contains("too slow"), "{log}");
    assert!(gw.metric("pgevents_gateway_slow_clients_total").await >= 1.0);
    stop(producer).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_stream_protocol_a_lost_broker_cuts_subscribers_who_resume_where_they_were() {
    let world = World::new().await;
    let stream = unique_name("history");
    let (proxy, gw, producer, mut live) = behind_a_proxy(&world, &stream, "").await;
    world.pg.execute("INSERT INTO users VALUES (1, 'ann'); INSERT INTO users VALUES (2, 'bob')").await;
    let first = live.next(WAIT).await.expect("a live event over the stream protocol");
    let second = live.next(WAIT).await.expect("and the next");
    assert_eq!((first.event.as_str(), first.json()["new"]["name"].as_str()), ("insert", Some("ann")));
    let (first_id, second_id): (i64, i64) =
        (first.id.as_deref().unwrap().parse().unwrap(), second.id.as_deref().unwrap().parse().unwrap());
    assert_eq!(second_id, first_id + 1, "ids are the stream's offsets");

    proxy.cut();
    assert!(live.closed_within(Duration::from_secs(10)).await, "subscribers are cut when the broker is lost");
    let (status, body) = http_get(gw.addr, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("RabbitMQ connection lost"), "{body}");
    // A consumer stores its offset meanwhile: the record takes an offset of the stream, so the
    // next event is not right after the last one the hub read, yet nothing is missing.
    let direct = pgevents_stream::client(&stream_url().parse().unwrap(), "test").await.unwrap();
    direct.store_offset("someone", &stream, 0).await.unwrap();
    drop(direct);
    world.pg.execute("INSERT INTO users VALUES (3, 'cy')").await;
    proxy.restore().await;
    pgevents_testkit::wait_for("/readyz 200 after the broker is back", WAIT, || async {
        http_get(gw.addr, "/readyz").await.filter(|(status, _)| *status == 200)
    })
    .await;
    // Once a live subscriber has what was written meanwhile, the hub has read it too.
    let mut watcher =
        gw.subscribe("/events", &[("X-Consumer-Id", "dashboard"), ("Last-Event-ID", &second_id.to_string())]).await;
    assert_eq!(watcher.next(WAIT).await.expect("the event written meanwhile").json()["new"]["name"], "cy");
    let mut again =
        gw.subscribe("/events", &[("X-Consumer-Id", "dashboard"), ("Last-Event-ID", &first_id.to_string())]).await;
    let resumed = again.next(WAIT).await.expect("resumed after the broker came back");
    assert_eq!(resumed.id, second.id, "from the event after the one it had");
    let written_meanwhile = again.next(WAIT).await.expect("then what was written while the gateway was cut off");
    assert_eq!(written_meanwhile.json()["new"]["name"], "cy");
    assert!(again.next(SHORT).await.is_none(), "nothing twice");
    assert_eq!(written_meanwhile.id.as_deref(), Some((second_id + 2).to_string().as_str()), "after the offset record");
    assert!(gw.metric("pgevents_gateway_hub_reconnects_total").await >= 1.0);
    assert_eq!(
        gw.metric("pgevents_gateway_replays_total").await,
        0.0,
        "the hub kept what it had read (an offset record is no gap): the subscriber resumed from memory"
    );

    stop(producer).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_stream_protocol_a_broker_gone_silent_is_noticed_by_the_heartbeat() {
    let world = World::new().await;
    let stream = unique_name("history");
    // Heartbeats every second: a broker silent for four is taken for gone.
    let (proxy, gw, producer, mut live) = behind_a_proxy(&world, &stream, "?heartbeat=1").await;
    world.pg.execute("INSERT INTO users VALUES (1, 'ann')").await;
    let first = live.next(WAIT).await.expect("a live event");

    // The connection stays open, but nothing comes through any more (a broker or a network
    // that went silent): no close, no reset, only the heartbeat tells.
    proxy.freeze();
    assert!(live.closed_within(Duration::from_secs(15)).await, "subscribers are cut once the heartbeat times out");
    let (status, body) = http_get(gw.addr, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    world.pg.execute("INSERT INTO users VALUES (2, 'bob')").await;
    proxy.thaw();
    pgevents_testkit::wait_for("/readyz 200 once the broker answers again", Duration::from_secs(60), || async {
        http_get(gw.addr, "/readyz").await.filter(|(status, _)| *status == 200)
    })
    .await;
    let mut again = gw
        .subscribe("/events", &[("X-Consumer-Id", "dashboard"), ("Last-Event-ID", first.id.as_deref().unwrap())])
        .await;
    let resumed = again.next(WAIT).await.expect("resumed");
    assert_eq!(resumed.json()["new"]["name"], "bob");
    stop(producer).await;
    gw.stop().await;
}

/// A gateway reading `stream` over the stream protocol through a proxy the test can cut or
/// freeze (`options` appended to its URL), a producer writing the stream directly, a `users`
/// table, and a live subscriber.
async fn behind_a_proxy(
    world: &World,
    stream: &str,
    options: &str,
) -> (FaultProxy, Gateway, pgevents_testkit::PgEventsProcess, SseClient) {
    world.pg.execute("CREATE TABLE users (id int PRIMARY KEY, name text)").await;
    let proxy = FaultProxy::start("127.0.0.1:5552".parse().unwrap()).await;
    let proxied = format!("{}{options}", stream_url().replace("127.0.0.1:5552", &proxy.addr.to_string()));
    let env = [("PGEVENTS_HISTORY_PROTOCOL", "stream"), ("PGEVENTS_STREAM_URL", proxied.as_str())];
    let gw = Gateway::start(world, stream, None, &env).await;
    let producer = Over::Stream.producer(world, stream, &[]).await;
    let live = gw.subscribe("/events", &[("X-Consumer-Id", "dashboard")]).await;
    (proxy, gw, producer, live)
}

/// Rows of table `seam` received by one subscriber: (event id, row id).
type Received = Arc<Mutex<Vec<(i64, i64)>>>;

/// Reads `seam` inserts into `into` until row `last` arrives (or the stream ends).
fn collect(mut client: SseClient, last: i64, into: Received) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(message) = client.next(Duration::from_secs(60)).await {
            let row = message.json()["id"].as_i64().expect("row id");
            let id = message.id.as_deref().and_then(|id| id.parse().ok()).expect("event id");
            into.lock().unwrap().push((id, row));
            if row == last {
                break;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn replays_join_the_live_feed_with_no_gap_and_no_duplicate_under_concurrent_writes() {
    replays_join_the_live_feed(Over::Amqp).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_stream_protocol_replays_join_the_live_feed_with_no_gap_and_no_duplicate() {
    replays_join_the_live_feed(Over::Stream).await;
}

async fn replays_join_the_live_feed(over: Over) {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE seam (id int PRIMARY KEY)").await;
    let stream = unique_name("history");
    // A short in-memory feed, so that most resumes replay from the stream, and few replay slots.
    let gw =
        Gateway::start_over(over, &world, &stream, &[("PGEVENTS_CLIENT_BUFFER", "300"), ("PGEVENTS_MAX_REPLAYS", "2")])
            .await;
    let producer = over.producer(&world, &stream, &[]).await;
    let rows: i64 = 2000;
    let reference: Received = Arc::default();
    let reference_reader =
        collect(gw.subscribe("/events", &[("X-Consumer-Id", "reference")]).await, rows, reference.clone());
    let client = world.pg.client().await;
    let writer = tokio::spawn(async move {
        for id in 1..=rows {
            client.execute("INSERT INTO seam VALUES ($1)", &[&(id as i32)]).await.expect("insert");
            if id % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    // While rows keep coming, subscribers resume from ids seen so far: old ones (a replay from
    // the stream that must catch up with the live feed), recent ones (from memory).
    let mut resumed = Vec::new();
    for round in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let seen: Vec<(i64, i64)> = reference.lock().unwrap().clone();
        let Some(&(id, row)) = (if round % 3 == 2 { seen.last() } else { seen.get(seen.len() * round / 24) }) else {
            continue;
        };
        if row == rows {
            continue;
        }
        let client = gw.subscribe("/events", &[("X-Consumer-Id", "resumer"), ("Last-Event-ID", &id.to_string())]).await;
        let received: Received = Arc::default();
        resumed.push((row, received.clone(), collect(client, rows, received)));
    }
    assert!(!writer.is_finished(), "the writes went on while subscribers resumed");
    writer.await.unwrap();
    reference_reader.await.unwrap();
    let reference = reference.lock().unwrap().clone();
    assert_eq!(reference.iter().map(|(_, row)| *row).collect::<Vec<_>>(), (1..=rows).collect::<Vec<_>>());
    let offsets: BTreeMap<i64, i64> = reference.iter().copied().collect();
    assert!(resumed.len() >= 8, "subscribers resumed while rows were written");
    for (after_row, received, reader) in resumed {
        reader.await.unwrap();
        let received = received.lock().unwrap().clone();
        let got: Vec<i64> = received.iter().map(|(_, row)| *row).collect();
        assert_eq!(got, ((after_row + 1)..=rows).collect::<Vec<_>>(), "exactly the rows after {after_row}, in order");
        assert!(received.iter().all(|(id, row)| offsets.get(id) == Some(row)), "the same ids as the live feed");
    }
    let replays = gw.metric("pgevents_gateway_replays_total").await;
    assert!(replays >= 1.0, "some subscribers replayed from the stream");
    assert!(replays < 12.0, "the up-to-date ones resumed from memory ({replays} replays)");
    if over == Over::Stream {
        // Each replay read on a connection of its own, closed when it joined the live feed.
        pgevents_testkit::wait_for("only the hub's stream connection left", WAIT, || async {
            (gw.stream_connections() == 1).then_some(())
        })
        .await;
    }
    stop(producer).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gzipped_events_read_the_same_live_and_replayed() {
    gzipped_events(Over::Amqp).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_stream_protocol_gzipped_events_read_the_same_live_and_replayed() {
    gzipped_events(Over::Stream).await;
}

async fn gzipped_events(over: Over) {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE users (id int PRIMARY KEY, name text)").await;
    let stream = unique_name("history");
    let gw = Gateway::start_over(over, &world, &stream, &[("PGEVENTS_CLIENT_BUFFER", "300")]).await;
    let producer = over.producer(&world, &stream, &[("PGEVENTS_COMPRESSION", "gzip")]).await;
    let mut live = gw.subscribe("/events", &[("X-Consumer-Id", "gzip")]).await;
    world.pg.execute("INSERT INTO users VALUES (1, 'ann'); INSERT INTO users VALUES (2, 'bob')").await;
    let first = live.next(WAIT).await.expect("a gzipped event arrives as JSON");
    assert_eq!(first.json()["new"]["name"], "ann");
    assert_eq!(live.next(WAIT).await.unwrap().json()["new"]["name"], "bob");
    world.pg.execute("INSERT INTO users SELECT i, 'n' || i FROM generate_series(3, 1000) i").await;
    let mut sentinel = gw.subscribe("/events?pk=1001", &[("X-Consumer-Id", "gzip")]).await;
    world.pg.execute("INSERT INTO users VALUES (1001, 'last')").await;
    if sentinel.next(WAIT).await.is_none() {
        panic!("the gateway has read every row:\n{}", gw.process.stderr());
    }
    // Older than the in-memory feed: read back from the stream.
    let id = first.id.unwrap();
    let mut replayed = gw.subscribe("/events", &[("X-Consumer-Id", "gzip"), ("Last-Event-ID", &id)]).await;
    let again: Vec<SseMessage> = vec![replayed.next(WAIT).await.unwrap(), replayed.next(WAIT).await.unwrap()];
    assert_eq!(again.iter().map(|m| m.json()["new"]["name"].clone()).collect::<Vec<_>>(), vec!["bob", "n3"]);
    assert!(gw.metric("pgevents_gateway_replays_total").await >= 1.0, "read back from the stream");
    assert_eq!(gw.metric("pgevents_gateway_unreadable_messages_total").await, 0.0);
    stop(producer).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_past_the_retention_starts_with_a_gap_event() {
    a_replay_past_the_retention(Over::Amqp).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_stream_protocol_a_replay_past_the_retention_starts_with_a_gap_event() {
    a_replay_past_the_retention(Over::Stream).await;
}

async fn a_replay_past_the_retention(over: Over) {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)").await;
    let stream = unique_name("history");
    // Small segments and a small size limit, so that retention removes the oldest events. (Not
    // too small: RabbitMQ 3.10's retention can crash and restart the stream when segments roll
    // many times a second.)
    let retention = [("PGEVENTS_HISTORY_MAX_BYTES", "150000"), ("PGEVENTS_HISTORY_SEGMENT_BYTES", "50000")];
    let mut gw_env = retention.to_vec();
    gw_env.push(("PGEVENTS_CLIENT_BUFFER", "200"));
    // (Over the stream protocol, the gateway declares the stream first, with these settings.)
    let gw = Gateway::start_over(over, &world, &stream, &gw_env).await;
    let producer = over.producer(&world, &stream, &retention).await;
    let mut live = gw.subscribe("/events", &[("X-Consumer-Id", "gap")]).await;
    let reader = tokio::spawn(async move {
        let mut ids = Vec::new();
        while ids.len() < 400 {
            match live.next(WAIT).await {
                Some(event) => ids.push(event.id.expect("an id")),
                None => break,
            }
        }
        ids
    });
    for batch in 0..20 {
        world
            .pg
            .execute(&format!(
                "INSERT INTO notes SELECT i, repeat('x', 1500) FROM generate_series({}, {}) i",
                batch * 20 + 1,
                batch * 20 + 20
            ))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live_ids = reader.await.unwrap();
    assert_eq!(live_ids.len(), 400, "every event live:\n{}", gw.process.stderr());
    let last_id = live_ids.last().cloned().unwrap();
    let mut old = gw.subscribe("/events", &[("X-Consumer-Id", "gap"), ("Last-Event-ID", "0")]).await;
    let gap = old.next(WAIT).await.expect("a gap event");
    assert_eq!(gap.event, "gap", "{gap:?}");
    let first_available = gap.json()["first_available"].as_i64().unwrap();
    assert_eq!(gap.json()["last_event_id"], 0);
    assert!(first_available > 1, "retention removed the oldest events: {gap:?}");
    assert_eq!(gap.id, Some((first_available - 1).to_string()), "resuming from the gap's id asks for what is left");
    let next = old.next(WAIT).await.unwrap();
    assert_eq!(next.id, Some(first_available.to_string()), "then every event still held, from the first");
    let mut replayed = vec![next.id.unwrap()];
    while replayed.last() != Some(&last_id) {
        replayed.push(old.next(WAIT).await.expect("the rest of the history").id.unwrap());
    }
    let position = live_ids.iter().position(|id| *id == replayed[0]).expect("the first replayed event was live too");
    assert_eq!(replayed, live_ids[position..], "every event still held, as the live feed had them");
    assert_eq!(gw.metric("pgevents_gateway_replay_gaps_total").await, 1.0);
    stop(producer).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_it_cannot_serve_are_refused_with_the_reason() {
    let world = World::new().await;
    let stream = unique_name("history");
    let gw =
        Gateway::start(&world, &stream, None, &[("PGEVENTS_MAX_FILTERS", "3"), ("PGEVENTS_MAX_QUERY_BYTES", "200")])
            .await;
    let consumer = [("X-Consumer-Id", "limits")];
    for bad in ["-1", "abc", "99999999999999999999", "9223372036854775807"] {
        let refused = gw.refused("/events", &[("X-Consumer-Id", "limits"), ("Last-Event-ID", bad)]).await;
        assert_eq!(refused.status, 400, "Last-Event-ID {bad}");
        assert!(refused.body.contains("invalid Last-Event-ID"), "{}", refused.body);
    }
    let many = gw.refused("/events?table=a,b&action=I,U", &consumer).await;
    assert_eq!(many.status, 400);
    assert!(many.body.contains("too many filters (4)"), "{}", many.body);
    let long = gw.refused(&format!("/events?table={}", "t".repeat(300)), &consumer).await;
    assert_eq!(long.status, 414);
    assert!(long.body.contains("--max-query-bytes"), "{}", long.body);
    assert!(gw.metric("pgevents_gateway_rejected_total{reason=\"bad_request\"}").await >= 6.0);
    gw.stop().await;
}
