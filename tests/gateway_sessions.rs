//! Subscriptions as data (`pgevents serve --sessions`): sessions and their subscriptions made
//! in SQL, streamed at `/sessions/{id}/events` with Aquameta's events; Aquameta's own example
//! at each granularity, two connections on one session, a subscription added mid-stream, rows
//! addressed to one subscriber, row-level security between roles, tokens, and expiry.

mod common;

use std::time::Duration;

use common::gateway::{hs256, now, Gateway};
use common::{stop, World, WAIT};
use pgevents_testkit::{unique_name, wait_for, PgEventsProcess, SseClient};
use serde_json::{json, Value};
use tokio_postgres::NoTls;

const SHORT: Duration = Duration::from_millis(700);
const SECRET: &[u8] = b"a shared secret of 32 bytes, ok!";

async fn rules_install(world: &World) {
    let mut install = PgEventsProcess::spawn(&["rules", "install"], &world.pg.env());
    assert_eq!(install.wait(WAIT).await, Some(0), "{}", install.stderr());
}

/// `pgevents serve --sessions` on the world's database, with `extra` settings.
async fn gateway(world: &World, stream: &str, extra: &[(&str, &str)]) -> Gateway {
    let pg = world.pg.env();
    let mut env: Vec<(&str, &str)> = pg.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("PGEVENTS_SESSIONS", "true"));
    env.extend_from_slice(extra);
    Gateway::start(world, stream, None, &env).await
}

/// A new session of the superuser.
async fn session(world: &World) -> String {
    world.pg.query_text("SELECT pgevents.session_create()::text").await.expect("a session")
}

/// The next `n` events as (name, data).
async fn take(client: &mut SseClient, n: usize) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        match client.next(WAIT).await {
            Some(message) => out.push((message.event.clone(), message.json())),
            None => panic!("expected {n} events, got {out:?}"),
        }
    }
    out
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(name, _)| name.as_str()).collect()
}

/// Aquameta's example, at each granularity: an insert, an update of two columns and a delete
/// on `person` produce exactly the events of the documented table.
#[tokio::test(flavor = "multi_thread")]
async fn each_granularity_produces_its_events() {
    let world = World::new().await;
    world
        .pg
        .execute(
            "CREATE TABLE person (id int PRIMARY KEY, name text, score int, city text);
             ALTER TABLE person REPLICA IDENTITY FULL;",
        )
        .await;
    rules_install(&world).await;
    let stream = unique_name("history");
    let gw = gateway(&world, &stream, &[]).await;
    let producer = world.producer(&[("PGEVENTS_HISTORY_STREAM", &stream)]).await;
    let (table, row, column, field) =
        (session(&world).await, session(&world).await, session(&world).await, session(&world).await);
    world
        .pg
        .execute(&format!(
            "SELECT pgevents.subscribe_table('{table}', 'person');
             SELECT pgevents.subscribe_row('{row}', 'person', '1');
             SELECT pgevents.subscribe_column('{column}', 'person', 'name');
             SELECT pgevents.subscribe_field('{field}', 'person', '{{\"id\": 1}}', 'name');"
        ))
        .await;
    let mut clients = Vec::new();
    for id in [&table, &row, &column, &field] {
        clients.push(gw.subscribe(&format!("/sessions/{id}/events"), &[]).await);
    }
    world.pg.execute("INSERT INTO person VALUES (1, 'Ann', 10, 'Paris')").await;
    world.pg.execute("UPDATE person SET name = 'Anna', score = 11 WHERE id = 1").await;
    world.pg.execute("UPDATE person SET city = 'Lyon' WHERE id = 1").await;
    world.pg.execute("DELETE FROM person WHERE id = 1").await;

    let on_table = take(&mut clients[0], 5).await;
    assert_eq!(names(&on_table), ["row_insert", "field_update", "field_update", "field_update", "row_delete"]);
    assert_eq!(
        on_table[0].1,
        json!({"table": "public.person", "pk": 1, "row": {"id": 1, "name": "Ann", "score": 10, "city": "Paris"}})
    );
    let updates: Vec<&Value> = on_table[1..4].iter().map(|(_, data)| data).collect();
    assert!(
        updates.contains(&&json!({"table": "public.person", "pk": 1, "column": "name", "old": "Ann", "new": "Anna"})),
        "{updates:?}"
    );
    assert!(
        updates.contains(&&json!({"table": "public.person", "pk": 1, "column": "score", "old": 10, "new": 11})),
        "{updates:?}"
    );
    assert_eq!(
        on_table[4].1["pk"],
        json!(1),
        "the key as events carry it: the value, or an object for a composite key"
    );
    assert_eq!(on_table[4].1["row"]["city"], "Lyon", "the old row, where known");

    let on_row = take(&mut clients[1], 4).await;
    assert_eq!(names(&on_row), ["field_update", "field_update", "field_update", "row_delete"]);
    let on_column = take(&mut clients[2], 3).await;
    assert_eq!(names(&on_column), ["row_insert", "field_update", "row_delete"]);
    assert_eq!(on_column[1].1["column"], "name");
    let on_field = take(&mut clients[3], 2).await;
    assert_eq!(names(&on_field), ["field_update", "row_delete"]);
    assert_eq!((on_field[0].1["old"].clone(), on_field[0].1["new"].clone()), (json!("Ann"), json!("Anna")));
    for client in &mut clients {
        assert!(client.next(SHORT).await.is_none(), "nothing more");
    }
    stop(producer).await;
    gw.stop().await;
}

/// Two connections (tabs) on one session both receive; a subscription added while they are
/// connected applies to the next change, and one removed stops at once.
#[tokio::test(flavor = "multi_thread")]
async fn connections_share_a_session_and_subscriptions_apply_at_once() {
    let world = World::new().await;
    world
        .pg
        .execute(
            "CREATE TABLE person (id int PRIMARY KEY, name text); CREATE TABLE pet (id int PRIMARY KEY, name text);",
        )
        .await;
    rules_install(&world).await;
    let stream = unique_name("history");
    let gw = gateway(&world, &stream, &[]).await;
    let producer = world.producer(&[("PGEVENTS_HISTORY_STREAM", &stream)]).await;
    let id = session(&world).await;
    world.pg.execute(&format!("SELECT pgevents.subscribe_table('{id}', 'person')")).await;
    let path = format!("/sessions/{id}/events");
    let (mut tab, mut phone) = (gw.subscribe(&path, &[]).await, gw.subscribe(&path, &[]).await);

    world.pg.execute("INSERT INTO pet VALUES (1, 'Rex'); INSERT INTO person VALUES (1, 'Ann');").await;
    for client in [&mut tab, &mut phone] {
        let events = take(client, 1).await;
        assert_eq!(events[0].1["table"], "public.person", "the pet is not subscribed");
    }

    let pets = world.pg.query_text(&format!("SELECT pgevents.subscribe_table('{id}', 'pet')::text")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    world.pg.execute("INSERT INTO pet VALUES (2, 'Tom')").await;
    for client in [&mut tab, &mut phone] {
        let events = take(client, 1).await;
        assert_eq!((events[0].0.as_str(), events[0].1["row"]["name"].clone()), ("row_insert", json!("Tom")));
    }

    world.pg.execute(&format!("SELECT pgevents.unsubscribe('{pets}')")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    world.pg.execute("INSERT INTO pet VALUES (3, 'Felix'); INSERT INTO person VALUES (2, 'Bob');").await;
    let events = take(&mut tab, 1).await;
    assert_eq!(events[0].1["row"]["name"], "Bob", "the pet subscription is gone");

    // Replay: a connection resuming after the first event (offset 0, the first pet) gets the
    // rest again, through the session's subscriptions as they are now (persons only).
    let mut late = gw.subscribe(&path, &[("Last-Event-ID", "0")]).await;
    let replayed = take(&mut late, 2).await;
    let rows: Vec<Value> = replayed.iter().map(|(_, data)| data["row"]["name"].clone()).collect();
    assert_eq!(rows, [json!("Ann"), json!("Bob")]);
    assert!(late.next(SHORT).await.is_none());
    stop(producer).await;
    gw.stop().await;
}

/// `--subscriber-column subscriber`: a row of a table with that column reaches only the
/// session (or `/events` consumer) it names, live and in replay; nobody else gets it.
#[tokio::test(flavor = "multi_thread")]
async fn addressed_rows_reach_only_their_subscriber() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE events (id serial PRIMARY KEY, type text, subscriber text, payload jsonb)").await;
    rules_install(&world).await;
    let stream = unique_name("history");
    let gw = gateway(&world, &stream, &[("PGEVENTS_SUBSCRIBER_COLUMN", "subscriber")]).await;
    let producer = world.producer(&[("PGEVENTS_HISTORY_STREAM", &stream)]).await;
    let (ann, bob) = (session(&world).await, session(&world).await);
    world
        .pg
        .execute(&format!(
            "SELECT pgevents.subscribe_table('{ann}', 'events'); SELECT pgevents.subscribe_table('{bob}', 'events');"
        ))
        .await;
    let mut to_ann = gw.subscribe(&format!("/sessions/{ann}/events"), &[]).await;
    let mut to_bob = gw.subscribe(&format!("/sessions/{bob}/events"), &[]).await;
    let mut consumer = gw.subscribe("/events?table=public.events", &[("X-Consumer-Id", "dashboard")]).await;
    world
        .pg
        .execute(&format!(
            "INSERT INTO events (type, subscriber, payload) VALUES
                ('mail', '{ann}', '{{\"n\": 1}}'), ('mail', '{bob}', '{{\"n\": 2}}'),
                ('mail', 'dashboard', '{{\"n\": 3}}'), ('mail', NULL, '{{\"n\": 4}}')"
        ))
        .await;
    let n =
        |events: &[(String, Value)]| events.iter().map(|(_, d)| d["row"]["payload"]["n"].clone()).collect::<Vec<_>>();
    assert_eq!(n(&take(&mut to_ann, 1).await), [json!(1)]);
    assert_eq!(n(&take(&mut to_bob, 1).await), [json!(2)]);
    let seen = consumer.next(WAIT).await.expect("the dashboard's row");
    assert_eq!(seen.json()["new"]["payload"]["n"], 3);
    for client in [&mut to_ann, &mut to_bob, &mut consumer] {
        assert!(client.next(SHORT).await.is_none(), "no row addressed to another (or to nobody)");
    }
    // Replay applies it too: after offset 0 (Ann's row) Bob gets his row again, nothing else.
    let mut again = gw.subscribe(&format!("/sessions/{bob}/events"), &[("Last-Event-ID", "0")]).await;
    assert_eq!(n(&take(&mut again, 1).await), [json!(2)]);
    assert!(again.next(SHORT).await.is_none());
    let mut from_start =
        gw.subscribe("/events?table=public.events", &[("X-Consumer-Id", &ann), ("Last-Event-ID", "0")]).await;
    assert!(from_start.next(SHORT).await.is_none(), "after offset 0 nothing is addressed to Ann");
    stop(producer).await;
    gw.stop().await;
}

/// Row-level security: a role sees and subscribes only its own sessions; arguments are checked
/// with errors that name what is wrong; with JWT authentication the token's subject must own
/// the session.
#[tokio::test(flavor = "multi_thread")]
async fn roles_manage_only_their_sessions_and_arguments_are_checked() {
    let world = World::new().await;
    world
        .pg
        .execute(
            "CREATE TABLE person (id int PRIMARY KEY, name text);
             CREATE TABLE pair (a int, b text, PRIMARY KEY (a, b));
             CREATE TABLE nokey (v text);
             CREATE TABLE secret (id int PRIMARY KEY);
             CREATE ROLE alice LOGIN PASSWORD 'alice'; CREATE ROLE bob LOGIN PASSWORD 'bob';
             GRANT SELECT ON person, pair, nokey TO alice, bob;",
        )
        .await;
    rules_install(&world).await;
    let connect = |user: &'static str| {
        let port = common::pg_port(&world.pg);
        async move {
            let (client, connection) = tokio_postgres::Config::new()
                .host("127.0.0.1")
                .port(port)
                .user(user)
                .password(user)
                .dbname("postgres")
                .connect(NoTls)
                .await
                .expect("connect as an ordinary role");
            tokio::spawn(connection);
            client
        }
    };
    let (alice, bob) = (connect("alice").await, connect("bob").await);
    let mine: String = alice.query_one("SELECT pgevents.session_create()::text", &[]).await.unwrap().get(0);
    let error = |result: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>| {
        result.err().and_then(|e| e.as_db_error().map(|d| d.message().to_owned())).unwrap_or_default()
    };
    // Bob cannot see, subscribe or drop Alice's session.
    let sessions: i64 = bob.query_one("SELECT count(*) FROM pgevents.session", &[]).await.unwrap().get(0);
    assert_eq!(sessions, 0, "row-level security hides other roles' sessions");
    let refused = error(bob.query(&format!("SELECT pgevents.subscribe_table('{mine}', 'person')"), &[]).await);
    assert_eq!(refused, format!("no session {mine}"));
    let refused = error(bob.query(&format!("SELECT pgevents.session_drop('{mine}')"), &[]).await);
    assert_eq!(refused, format!("no session {mine}"));
    // Alice's own mistakes, each named.
    for (call, message) in [
        ("subscribe_table('{s}', 'missing')", "relation \"missing\" does not exist"),
        ("subscribe_column('{s}', 'person', 'age')", "column age does not exist in table public.person"),
        (
            "subscribe_row('{s}', 'nokey', '1')",
            "table public.nokey has no primary key, so its rows cannot be subscribed to",
        ),
        (
            "subscribe_row('{s}', 'pair', '1')",
            "the primary key of table public.pair has 2 columns (a, b): give them as an object",
        ),
        ("subscribe_row('{s}', 'pair', '{\"a\": 1}')", "the primary key of table public.pair is (a, b), not (a)"),
        (
            "subscribe_table('{s}', 'secret')",
            "permission denied to subscribe to public.secret: role alice cannot read table public.secret",
        ),
    ] {
        let sql = format!("SELECT pgevents.{}", call.replace("{s}", &mine));
        let message_got = error(alice.query(&sql, &[]).await);
        assert!(message_got.starts_with(message), "{sql}: {message_got}");
    }
    let ok = alice
        .query(&format!("SELECT pgevents.subscribe_row('{mine}', 'pair', '{{\"b\": \"x\", \"a\": 1}}')"), &[])
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    let stored: String =
        alice.query_one("SELECT array_to_string(pk, ',') FROM pgevents.subscription", &[]).await.unwrap().get(0);
    assert_eq!(stored, "1,x", "the key in key order");

    // With tokens, the subject must own the session.
    let keys = tempfile::tempdir().unwrap();
    let secret_file = keys.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let secret_file = secret_file.display().to_string();
    let stream = unique_name("history");
    let gw = gateway(&world, &stream, &[("PGEVENTS_JWT_SECRET_FILE", &secret_file)]).await;
    let token = |sub: &str| format!("Bearer {}", hs256(SECRET, json!({"sub": sub, "exp": now() + 600})));
    let path = format!("/sessions/{mine}/events");
    let refused = gw.refused(&path, &[("Authorization", &token("bob"))]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("belongs to another role"), "{}", refused.body);
    assert_eq!(gw.refused(&path, &[]).await.status, 401);
    assert_eq!(
        gw.refused("/sessions/00000000-0000-0000-0000-000000000000/events", &[("Authorization", &token("alice"))])
            .await
            .status,
        404
    );
    let filters = gw.refused(&format!("{path}?table=x"), &[("Authorization", &token("alice"))]).await;
    assert_eq!(filters.status, 400, "{}", filters.body);
    let _alice = gw.subscribe(&path, &[("Authorization", &token("alice"))]).await;
    gw.stop().await;
}

/// Sessions no connection reads are removed after `--session-ttl`, with their
/// subscriptions; a session being read is kept.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_not_seen_for_the_ttl_are_removed() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE person (id int PRIMARY KEY)").await;
    rules_install(&world).await;
    let (idle, read) = (session(&world).await, session(&world).await);
    world.pg.execute(&format!("SELECT pgevents.subscribe_table('{idle}', 'person')")).await;
    let stream = unique_name("history");
    let gw = gateway(&world, &stream, &[("PGEVENTS_SESSION_TTL", "2")]).await;
    let _reading = gw.subscribe(&format!("/sessions/{read}/events"), &[]).await;
    let left = wait_for("the idle session to be removed", WAIT, || async {
        let left = world.pg.query_text("SELECT string_agg(id::text, ',') FROM pgevents.session").await;
        (left.as_deref() == Some(read.as_str())).then_some(left)
    })
    .await;
    assert_eq!(left.as_deref(), Some(read.as_str()), "the session being read stays");
    let subscriptions = world.pg.query_text("SELECT count(*)::text FROM pgevents.subscription").await;
    assert_eq!(subscriptions.as_deref(), Some("0"), "its subscriptions went with it");
    assert!(gw.metric("pgevents_gateway_sessions_expired_total").await >= 1.0);
    gw.stop().await;
}
