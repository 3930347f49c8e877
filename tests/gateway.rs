//! `pgevents serve`: live events over SSE with replay from the RabbitMQ stream, filters down to
//! a row or a field, slow clients cut off, clients disconnected when the broker goes away.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{stop, World, WAIT};
use pgevents_testkit::{amqp_url, delete_queue, free_local_addr, unique_name, FaultProxy, PgEventsProcess, SseClient};

const SHORT: Duration = Duration::from_millis(700);

struct Gateway {
    process: PgEventsProcess,
    addr: SocketAddr,
    stream: String,
}

/// Starts `pgevents serve` for the world's exchange (through `broker_url` if given).
async fn gateway(world: &World, stream: &str, broker_url: Option<&str>, extra: &[(&str, &str)]) -> Gateway {
    let addr = free_local_addr();
    let mut env = vec![
        ("RABBITMQ_URL".to_owned(), broker_url.map(str::to_owned).unwrap_or_else(amqp_url)),
        ("RABBITMQ_EXCHANGE".to_owned(), world.exchange.clone()),
        ("PGEVENTS_HISTORY_STREAM".to_owned(), stream.to_owned()),
        ("PGEVENTS_LISTEN".to_owned(), addr.to_string()),
        ("PGEVENTS_SSE_HEARTBEAT".to_owned(), "1".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut process = PgEventsProcess::spawn(&["serve"], &env);
    process.wait_for_log("serving /events", WAIT).await;
    Gateway { process, addr, stream: stream.to_owned() }
}

async fn subscribe(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
    let client = SseClient::connect(addr, path, headers).await;
    assert_eq!(client.status, 200, "{}", client.body);
    // The consumer on the stream is attached once the response has started.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribers_get_live_events_and_replay_what_they_missed() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE users (id int PRIMARY KEY, name text)").await;
    let stream = unique_name("history");
    let proxy = FaultProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let proxied = amqp_url().replace("127.0.0.1:5672", &proxy.addr.to_string());
    let gw = gateway(&world, &stream, Some(&proxied), &[]).await;
    let producer = world.producer(&[("PGEVENTS_HISTORY_STREAM", &stream)]).await;

    let anonymous = SseClient::connect(gw.addr, "/events", &[]).await;
    assert_eq!(anonymous.status, 400);
    assert!(anonymous.body.contains("the X-Consumer-Id header"), "{}", anonymous.body);

    let mut first = subscribe(gw.addr, "/events", &[("X-Consumer-Id", "dashboard")]).await;
    let mut second = subscribe(gw.addr, "/events", &[("X-Consumer-Id", "dashboard")]).await;
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
    let mut back =
        subscribe(gw.addr, "/events", &[("X-Consumer-Id", "dashboard"), ("Last-Event-ID", &last_seen)]).await;
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
    let mut by_query = subscribe(gw.addr, &query, &[("X-Consumer-Id", "other")]).await;
    assert_eq!(by_query.next(WAIT).await.unwrap().event, "delete");
    while second.next(SHORT).await.is_some() {}
    let before = second.comments;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = second.next(SHORT).await;
    assert!(second.comments > before, "heartbeat comments on an idle stream");

    // The broker connection goes away: live clients are cut at once, to come back with their id.
    proxy.cut();
    assert!(second.closed_within(Duration::from_secs(10)).await, "clients are disconnected when the broker is lost");
    proxy.restore().await;

    stop(producer).await;
    stop(gw.process).await;
    delete_queue(&gw.stream).await;
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
    let gw = gateway(&world, &stream, None, &[]).await;
    let producer = world.producer(&[("PGEVENTS_HISTORY_STREAM", &stream)]).await;
    let consumer = [("X-Consumer-Id", "filters")];
    let mut orders = subscribe(gw.addr, "/events?table=public.ord*", &consumer).await;
    let mut updates = subscribe(gw.addr, "/events?action=U", &consumer).await;
    let mut row2 = subscribe(gw.addr, "/events?table=public.users&pk=2", &consumer).await;
    let mut scores = subscribe(gw.addr, "/events?columns=score", &consumer).await;
    let mut fields = subscribe(gw.addr, "/events?granularity=field&action=U&pk=2", &consumer).await;
    let bad = SseClient::connect(gw.addr, "/events?action=X", &consumer).await;
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

    stop(producer).await;
    stop(gw.process).await;
    delete_queue(&gw.stream).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_client_is_cut_off_while_a_fast_one_keeps_up() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE blobs (id int PRIMARY KEY, body text)").await;
    let stream = unique_name("history");
    let gw = gateway(&world, &stream, None, &[("PGEVENTS_CLIENT_BUFFER", "2000")]).await;
    let producer = world.producer(&[("PGEVENTS_HISTORY_STREAM", &stream)]).await;
    let mut fast = subscribe(gw.addr, "/events", &[("X-Consumer-Id", "fast")]).await;
    let mut slow = subscribe(gw.addr, "/events", &[("X-Consumer-Id", "slow")]).await;
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
    stop(producer).await;
    stop(gw.process).await;
    delete_queue(&gw.stream).await;
}
