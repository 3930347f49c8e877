//! Signals in the WAL, end to end with both plugins: signed context, skip requests and outbox
//! messages from `pgevents.context()`, `pgevents.skip()` and `pgevents.outbox()`; what an
//! unsigned, forged, replayed or retired message gets; the key table's protection; the SQL
//! HMAC against RFC 4231.

mod common;

use std::net::SocketAddr;

use common::{stop, World, WAIT};
use pgevents_decode::signal::{sign, SignalKind};
use pgevents_testkit::{
    amqp_url, delete_queue, free_local_addr, http_get, metric_value, unique_name, wait_for, Delivery, EventQueue,
    PgCluster,
};
use serde_json::{json, Value};

const SETUP: &str = "
    CREATE TABLE orders (id int PRIMARY KEY, note text);
    CREATE ROLE app LOGIN;
    CREATE ROLE stranger LOGIN;
    GRANT INSERT, SELECT ON orders TO app, stranger;";

/// What the roles that may signal get.
const GRANTS: &str = "
    GRANT USAGE ON SCHEMA pgevents TO app, stranger;
    GRANT EXECUTE ON FUNCTION pgevents.context(jsonb), pgevents.skip(),
        pgevents.outbox(text, jsonb, text, jsonb) TO app;";

struct Signals {
    world: World,
    queue: EventQueue,
    /// Bound to the outbox exchange.
    outbox: EventQueue,
    outbox_exchange: String,
    dead_letter: String,
    dead: EventQueue,
    metrics: SocketAddr,
    producer: pgevents_testkit::PgEventsProcess,
}

async fn start(plugin: &str) -> Signals {
    let world = World::new().await;
    world.pg.execute(SETUP).await;
    let queue = world.queue(&["#"]).await;
    let dead_letter = unique_name("outbox_dead");
    let outbox_exchange = unique_name("outbox");
    let outbox = EventQueue::bind(&outbox_exchange, &["#"]).await;
    let metrics = free_local_addr();
    let metrics_text = metrics.to_string();
    let producer = world
        .producer(&[
            ("PGOUTPUTPLUGIN", plugin),
            ("PGTABLES", "public.orders"),
            ("PGEVENTS_METRICS_ADDR", &metrics_text),
            ("PGEVENTS_OUTBOX_DEAD_LETTER_EXCHANGE", &dead_letter),
            ("PGEVENTS_OUTBOX_EXCHANGE", &outbox_exchange),
            ("PGEVENTS_MAX_MESSAGE_BYTES", "4096"),
        ])
        .await;
    world.pg.execute(GRANTS).await;
    let dead = EventQueue::reattach(&amqp_url(), &dead_letter).await;
    Signals { world, queue, outbox, outbox_exchange, dead_letter, dead, metrics, producer }
}

impl Signals {
    /// Stops the producer (returning its log) and removes the queues and exchanges.
    async fn cleanup(self) -> String {
        let log = stop(self.producer).await;
        self.queue.close().await;
        self.outbox.close().await;
        self.dead.close().await;
        delete_queue(&self.dead_letter).await;
        for exchange in [&self.dead_letter, &self.outbox_exchange, &self.world.exchange] {
            pgevents_testkit::delete_exchange(exchange).await;
        }
        assert!(!log.contains("panicked"), "{log}");
        log
    }
}

async fn next(queue: &mut EventQueue) -> Delivery {
    queue.next_raw(WAIT).await.expect("a message within the wait")
}

fn json(delivery: &Delivery) -> Value {
    serde_json::from_slice(&delivery.body)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&delivery.body)))
}

async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let text = http_get(addr, "/metrics").await.map(|(_, text)| text).unwrap_or_default();
    metric_value(&text, series).unwrap_or(0.0)
}

async fn refused(addr: SocketAddr, reason: &str, count: f64) {
    let series = format!("pgevents_messages_refused_total{{reason=\"{reason}\"}}");
    wait_for(&format!("{series} to reach {count}"), WAIT, || async {
        (metric(addr, &series).await >= count).then_some(())
    })
    .await;
}

/// The signing key (as the superuser, whom row-level security does not hold) and the low 32
/// bits of a transaction id.
async fn key(pg: &PgCluster) -> (i32, Vec<u8>) {
    let row = pg
        .client()
        .await
        .query_one("SELECT kid, key FROM pgevents.message_key ORDER BY kid DESC LIMIT 1", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn the_contract(plugin: &str) {
    let Signals { world, mut queue, mut outbox, outbox_exchange, dead_letter, mut dead, metrics, producer } =
        start(plugin).await;
    let app = "SET ROLE app;";
    world
        .pg
        .execute(&format!(
            "{app}
             BEGIN;
               INSERT INTO orders VALUES (1, 'one');
               SELECT pgevents.context('{{\"uid\": 42}}');
               SELECT pgevents.outbox('orders.placed', '{{\"order_id\": 1, \"total\": 99.50}}', 'order-1-placed', '{{\"tenant\": \"t1\"}}');
               INSERT INTO orders VALUES (2, 'two');
             COMMIT;
             BEGIN;
               SELECT pgevents.skip();
               INSERT INTO orders VALUES (3, 'skipped');
               SELECT pgevents.outbox('orders.bulk', '{{\"n\": 123456789012345678901234567890}}');
             COMMIT;
             BEGIN;
               INSERT INTO orders VALUES (4, 'rolled back');
               SELECT pgevents.outbox('orders.never', '{{}}');
             ROLLBACK;
             INSERT INTO orders VALUES (5, 'five');"
        ))
        .await;

    // The events on the events exchange; the outbox messages on their own, in transaction
    // order, each with its transaction's commit LSN; nothing of the rolled-back transaction.
    let first = next(&mut queue).await;
    assert_eq!((json(&first)["new"]["id"].as_i64(), &json(&first)["context"]), (Some(1), &json!({"uid": 42})));
    let second = next(&mut queue).await;
    assert_eq!((json(&second)["new"]["id"].as_i64(), &json(&second)["context"]), (Some(2), &json!({"uid": 42})));
    assert_eq!(first.message_id().map(|id| id.ends_with(":0")), Some(true));
    assert_eq!(second.message_id().map(|id| id.ends_with(":1")), Some(true), "outbox messages take no event position");
    let fifth = next(&mut queue).await;
    assert_eq!(json(&fifth)["new"]["id"], 5, "the skipped transaction's row is not published");
    assert!(json(&fifth).get("context").is_none());

    let placed = next(&mut outbox).await;
    assert_eq!(placed.routing_key, "orders.placed");
    assert_eq!(placed.body, br#"{"total": 99.50, "order_id": 1}"#, "the jsonb's text, digits kept");
    assert_eq!(placed.message_id(), Some("order-1-placed"));
    assert_eq!(placed.header("tenant").as_deref(), Some("t1"));
    assert_eq!(placed.header("outbox").as_deref(), Some("true"));
    assert_eq!(placed.properties.message_type().map(String::as_str), Some("orders.placed"));
    assert_eq!(placed.header("lsn"), first.header("lsn"), "the commit LSN of its transaction");
    let bulk = next(&mut outbox).await;
    assert_eq!(bulk.routing_key, "orders.bulk", "skip hides row events, not what was sent explicitly");
    assert_eq!(bulk.body, br#"{"n": 123456789012345678901234567890}"#);
    let lsn = bulk.header("lsn").expect("lsn header");
    assert_eq!(bulk.message_id().map(str::to_owned), Some(format!("{lsn}:outbox:0")), "a stable default id");
    assert!(lsn.parse::<pgevents_event::Lsn>().unwrap() < fifth.header("lsn").unwrap().parse().unwrap());

    // Without EXECUTE: refused by the database.
    let client = world.pg.client().await;
    client.batch_execute("SET ROLE stranger").await.unwrap();
    for call in [
        "SELECT pgevents.context('{}')",
        "SELECT pgevents.skip()",
        "SELECT pgevents.outbox('a', '{}')",
        "SELECT pgevents._emit_signed('skip', '')",
        "SELECT pgevents.rotate_message_key()",
    ] {
        let err = client.batch_execute(call).await.expect_err(call);
        assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{call}: {err}");
    }
    // The raw messages anyone may write: unsigned, forged, a signature from another transaction.
    let emit = |content: Vec<u8>, id: i32| {
        let client = &client;
        async move {
            client.batch_execute("BEGIN").await.unwrap();
            client.execute("SELECT pg_logical_emit_message(true, 'pgevents', $1::bytea)", &[&content]).await.unwrap();
            client.execute("INSERT INTO orders VALUES ($1, 'raw')", &[&id]).await.unwrap();
            client.batch_execute("COMMIT").await.unwrap();
        }
    };
    emit(br#"{"skip": true, "uid": 666}"#.to_vec(), 10).await;
    let unsigned = next(&mut queue).await;
    assert_eq!(json(&unsigned)["new"]["id"], 10, "not skipped");
    assert!(json(&unsigned).get("context").is_none(), "no context either: {}", json(&unsigned));
    refused(metrics, "unsigned", 1.0).await;

    let (kid, secret) = key(&world.pg).await;
    emit(format!("v1|{kid}|1|skip|{}|", "0".repeat(64)).into_bytes(), 11).await;
    assert_eq!(json(&next(&mut queue).await)["new"]["id"], 11);
    refused(metrics, "forged", 1.0).await;

    // A valid signature made for transaction 7, copied into another one.
    emit(sign(kid, &secret, 7, SignalKind::Skip, b""), 12).await;
    assert_eq!(json(&next(&mut queue).await)["new"]["id"], 12);
    refused(metrics, "other_transaction", 1.0).await;

    // Bytes that are not UTF-8 (wal2json writes them into its JSON): refused, never a halt.
    emit(vec![0xff, 0xfe, b'{'], 14).await;
    assert_eq!(json(&next(&mut queue).await)["new"]["id"], 14);

    // Non-transactional: refused, whatever it holds.
    client.execute("SELECT pg_logical_emit_message(false, 'pgevents', '{}')", &[]).await.unwrap();
    refused(metrics, "not_transactional", 1.0).await;

    // Signed right, in its own transaction (so the producer and the SQL functions agree on the
    // format), but an outbox message that cannot be published as written, and one too large:
    // both to the dead-letter exchange with the reason, in their place; the events go on.
    client.batch_execute("BEGIN").await.unwrap();
    let xid: i64 =
        client.query_one("SELECT pg_current_xact_id()::text::bigint % 4294967296", &[]).await.unwrap().get(0);
    let xid = u32::try_from(xid).unwrap();
    let envelope = b"{\"routing_key\": \"x\", \"exchange\": \"elsewhere\"}\n{}";
    let bad = sign(kid, &secret, xid, SignalKind::Outbox, envelope);
    client.execute("SELECT pg_logical_emit_message(true, 'pgevents', $1::bytea)", &[&bad]).await.unwrap();
    client.execute("INSERT INTO orders VALUES (13, 'after the bad outbox message')", &[]).await.unwrap();
    client.batch_execute("COMMIT; RESET ROLE").await.unwrap();
    world
        .pg
        .execute("SET ROLE app; SELECT pgevents.outbox('orders.big', jsonb_build_object('pad', repeat('x', 5000)), 'big-1');")
        .await;
    assert_eq!(json(&next(&mut queue).await)["new"]["id"], 13);
    let unreadable = next(&mut dead).await;
    assert!(
        unreadable.header("reason").is_some_and(|r| r.contains("unknown field")),
        "{:?}",
        unreadable.header("reason")
    );
    assert_eq!(unreadable.body, envelope);
    assert!(unreadable.message_id().is_some_and(|id| id.ends_with(":outbox:0")));
    let big = next(&mut dead).await;
    assert!(big.header("reason").is_some_and(|r| r.contains("--max-message-bytes")), "{:?}", big.header("reason"));
    wait_for("the dead-letter metric", WAIT, || async {
        (metric(metrics, "pgevents_outbox_dead_lettered_total").await >= 2.0).then_some(())
    })
    .await;
    assert!(metric(metrics, "pgevents_outbox_messages_total").await >= 2.0);
    assert!(queue.next_raw(std::time::Duration::from_millis(500)).await.is_none(), "nothing else");
    assert!(outbox.next_raw(std::time::Duration::from_millis(100)).await.is_none(), "nothing else");

    let signals = Signals { world, queue, outbox, outbox_exchange, dead_letter, dead, metrics, producer };
    let log = signals.cleanup().await;
    assert!(log.contains("a pgevents message was refused"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn signals_with_pgoutput() {
    the_contract("pgoutput").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signals_with_wal2json() {
    the_contract("wal2json").await;
}

/// The keys: the owner reads them, nobody else (not even a role that reads all data); a
/// rotation makes a new key sign, and the old one stops signing for transactions that commit
/// after its grace; the SQL HMAC is RFC 4231's.
#[tokio::test(flavor = "multi_thread")]
async fn keys_are_the_owners_and_retire() {
    let Signals { world, mut queue, outbox, outbox_exchange, dead_letter, dead, metrics, producer } =
        start("pgoutput").await;
    let pg = &world.pg;
    for (key, data, mac) in [
        (
            "'\\x0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b'::bytea",
            "'Hi There'",
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        (
            "convert_to('Jefe', 'UTF8')",
            "'what do ya want for nothing?'",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        // Test case 6: a key longer than the block is hashed first.
        (
            "decode(repeat('aa', 131), 'hex')",
            "'Test Using Larger Than Block-Size Key - Hash Key First'",
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
    ] {
        let sql = format!("SELECT encode(pgevents.hmac_sha256({key}, convert_to({data}, 'UTF8')), 'hex')");
        assert_eq!(pg.query_text(&sql).await.as_deref(), Some(mac), "{sql}");
    }

    pg.execute("CREATE ROLE reader LOGIN; GRANT pg_read_all_data TO reader;").await;
    let client = pg.client().await;
    client.batch_execute("SET ROLE reader").await.unwrap();
    let rows: i64 = client.query_one("SELECT count(*) FROM pgevents.message_key", &[]).await.unwrap().get(0);
    assert_eq!(rows, 0, "row-level security, forced, hides the keys from pg_read_all_data");
    client.batch_execute("SET ROLE app").await.unwrap();
    let err = client.query_one("SELECT count(*) FROM pgevents.message_key", &[]).await.expect_err("app reads no key");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    client.batch_execute("RESET ROLE").await.unwrap();

    // A transaction signs with the current key, a rotation without grace commits before it,
    // then it commits: its skip request no longer verifies, and its row is published.
    let (old_kid, _) = key(pg).await;
    let writer = pg.client().await;
    writer
        .batch_execute("SET ROLE app; BEGIN; SELECT pgevents.skip(); INSERT INTO orders VALUES (20, 'late');")
        .await
        .unwrap();
    let new_kid: i32 = client.query_one("SELECT pgevents.rotate_message_key('0 seconds')", &[]).await.unwrap().get(0);
    assert!(new_kid > old_kid);
    writer.batch_execute("COMMIT").await.unwrap();
    assert_eq!(json(&next(&mut queue).await)["new"]["id"], 20);
    refused(metrics, "retired_key", 1.0).await;
    // The new key signs from now on; the producer reads it when it first sees it.
    writer
        .batch_execute(
            "BEGIN; SELECT pgevents.context('{\"k\": \"new\"}'); INSERT INTO orders VALUES (21, 'new key'); COMMIT;",
        )
        .await
        .unwrap();
    let event = json(&next(&mut queue).await);
    assert_eq!((event["new"]["id"].as_i64(), &event["context"]), (Some(21), &json!({"k": "new"})));

    // A rotation with grace: what was signed before it still verifies within the grace.
    writer.batch_execute("BEGIN; SELECT pgevents.skip(); INSERT INTO orders VALUES (22, 'hidden');").await.unwrap();
    client.batch_execute("SELECT pgevents.rotate_message_key('1 hour')").await.unwrap();
    writer.batch_execute("COMMIT; INSERT INTO orders VALUES (23, 'shown');").await.unwrap();
    assert_eq!(json(&next(&mut queue).await)["new"]["id"], 23, "22 was skipped");

    Signals { world, queue, outbox, outbox_exchange, dead_letter, dead, metrics, producer }.cleanup().await;
}

/// The consumer library's typed outbox handler, on what the producer published: each message
/// once, typed, with its id and headers; an outbox message of another shape fails with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_typed_consumer_reads_outbox_messages() {
    use pgevents_consumer::{outbox, Consumer, ConsumerConfig, Outcome};
    #[derive(serde::Deserialize)]
    struct Placed {
        order_id: i64,
    }
    let Signals { world, queue, outbox, outbox_exchange, dead_letter, dead, metrics, producer } =
        start("pgoutput").await;
    let mut config = ConsumerConfig::new(amqp_url().parse().unwrap(), &outbox_exchange);
    config.binding_keys = vec!["orders.*".into()];
    config.max_deliveries = std::num::NonZeroU32::new(1);
    let (seen, mut received) = tokio::sync::mpsc::unbounded_channel();
    let handler = outbox::handler(move |message: outbox::OutboxMessage<Placed>| {
        let seen = seen.clone();
        async move {
            let _ = seen.send((
                message.payload.order_id,
                message.message_id.clone(),
                message.header("tenant").map(str::to_owned),
            ));
            Outcome::Ok
        }
    });
    let stop_consumer = tokio_util::sync::CancellationToken::new();
    let consumer = tokio::spawn(Consumer::messages(config, handler).run(stop_consumer.clone()));
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    world
        .pg
        .execute(
            "SET ROLE app;
             BEGIN; INSERT INTO orders VALUES (1, 'one');
                    SELECT pgevents.outbox('orders.placed', '{\"order_id\": 1}', 'order-1', '{\"tenant\": \"t1\"}'); COMMIT;
             SELECT pgevents.outbox('orders.placed', '{\"wrong\": true}', 'order-x');
             SELECT pgevents.outbox('orders.placed', '{\"order_id\": 2}');",
        )
        .await;
    let first = tokio::time::timeout(WAIT, received.recv()).await.unwrap().unwrap();
    assert_eq!(first, (1, "order-1".to_owned(), Some("t1".to_owned())));
    let second = tokio::time::timeout(WAIT, received.recv()).await.unwrap().unwrap();
    assert_eq!(second.0, 2, "the mistyped one failed, and the next went on");
    // (The last two calls share one implicit transaction: positions 0 and 1.)
    assert!(second.1.ends_with(":outbox:1"), "a default id: {}", second.1);
    stop_consumer.cancel();
    let _ = consumer.await;
    Signals { world, queue, outbox, outbox_exchange, dead_letter, dead, metrics, producer }.cleanup().await;
}

/// A schema `pgevents` that another role made first could hold that role's keys and functions:
/// the producer streams, installs nothing there, and refuses every signed message, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn a_schema_someone_else_owns_is_not_trusted() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE orders (id int PRIMARY KEY); CREATE ROLE mallory; CREATE SCHEMA pgevents AUTHORIZATION mallory;").await;
    let mut queue = world.queue(&["#"]).await;
    let producer = world.producer(&[("PGTABLES", "public.orders")]).await;
    world.pg.execute("INSERT INTO orders VALUES (1)").await;
    assert_eq!(json(&next(&mut queue).await)["new"]["id"], 1, "streaming goes on");
    let missing = world.pg.client().await.batch_execute("SELECT pgevents.skip()").await.expect_err("nothing installed");
    assert_eq!(missing.code().map(|c| c.code()), Some("42883"), "{missing}");
    let log = stop(producer).await;
    assert!(log.contains(r#"schema pgevents is owned by role \"mallory\""#) || log.contains("owned by role"), "{log}");
    assert!(log.contains("signed messages (pgevents.context, skip, outbox) are refused"), "{log}");
    world.cleanup(queue).await;
}
