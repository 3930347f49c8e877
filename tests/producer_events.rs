//! The event format end to end: every action, keys, replica identity, TOAST, types, filtering,
//! context and skip, compression, headers and message ids.

mod common;

use common::{bodies, stop, World, WAIT};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn insert_update_delete_truncate_with_primary_key() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE users (id int PRIMARY KEY, full_name text, email text)").await;
    let mut queue = world.queue(&["#"]).await;
    let producer = world.producer(&[]).await;
    world
        .pg
        .execute(
            "INSERT INTO users VALUES (1, 'A', 'a@example.com');
             UPDATE users SET full_name = 'B' WHERE id = 1;
             DELETE FROM users WHERE id = 1;
             TRUNCATE users;",
        )
        .await;
    let events = queue.take(4, WAIT).await;
    let b = bodies(&events);
    assert_eq!(b[0]["table_name"], "public.users");
    assert_eq!(b[0]["action"], "I");
    assert_eq!(b[0]["old"], json!({}));
    assert_eq!(b[0]["new"], json!({"id": 1, "full_name": "A", "email": "a@example.com"}));
    assert_eq!(b[0]["diff"], b[0]["new"]);
    assert_eq!(b[0]["id"], 1);
    assert_eq!(b[1]["action"], "U");
    assert_eq!(b[1]["old"], json!({"id": 1}));
    assert_eq!(b[1]["new"], json!({"id": 1, "full_name": "B", "email": "a@example.com"}));
    assert_eq!(b[1]["diff"]["full_name"], "B");
    assert!(b[1]["diff"].get("id").is_none());
    assert_eq!(b[2]["action"], "D");
    assert_eq!(b[2]["new"], json!({}));
    assert_eq!(b[2]["diff"], json!({"id": 1}));
    assert_eq!(b[3]["action"], "T");
    assert_eq!(b[3]["id"], serde_json::Value::Null);
    for e in &events {
        // position metadata, message properties
        assert!(e.json["lsn"].as_str().unwrap().contains('/'));
        assert!(e.json["xid"].as_u64().unwrap() > 0);
        assert!(e.json["commit_time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(e.message_id(), format!("{}:{}", e.json["lsn"].as_str().unwrap(), e.json["seq"]));
        assert_eq!(e.delivery.routing_key, "public.users");
        assert_eq!(e.delivery.properties.content_type().map(String::as_str), Some("application/json"));
        assert_eq!(e.delivery.properties.delivery_mode(), Some(2));
        assert_eq!(e.delivery.header("action").as_deref(), e.json["action"].as_str());
        assert_eq!(e.delivery.header("table").as_deref(), Some("public.users"));
        assert_eq!(e.delivery.header("lsn").as_deref(), e.json["lsn"].as_str());
    }
    // the slot stays after a clean stop
    stop(producer).await;
    assert!(world.pg.slot_confirmed_flush(&world.slot).await.is_some());
    world.cleanup(queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_identity_and_toast() {
    let world = World::new().await;
    world
        .pg
        .execute(
            "CREATE TABLE nopk (x int, y text);
             ALTER TABLE nopk REPLICA IDENTITY FULL;
             CREATE TABLE pairs (a int, b text, v text, PRIMARY KEY (a, b));
             CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
             CREATE TABLE fulldocs (id int PRIMARY KEY, body text, n int);
             ALTER TABLE fulldocs REPLICA IDENTITY FULL;",
        )
        .await;
    let mut queue = world.queue(&["#"]).await;
    let producer = world.producer(&[]).await;
    world
        .pg
        .execute(
            "INSERT INTO nopk VALUES (1, 'a'); UPDATE nopk SET y = 'b'; DELETE FROM nopk;
             INSERT INTO pairs VALUES (1, 'x', 'v1'); UPDATE pairs SET v = 'v2';
             INSERT INTO docs VALUES (1, (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 3000) i), 1);
             UPDATE docs SET n = 2;
             INSERT INTO fulldocs VALUES (1, (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 3000) i), 1);
             UPDATE fulldocs SET n = 2;",
        )
        .await;
    let b = bodies(&queue.take(9, WAIT).await);
    // no primary key, REPLICA IDENTITY FULL
    assert_eq!(b[0]["id"], serde_json::Value::Null);
    assert_eq!(b[1]["old"], json!({"x": 1, "y": "a"}));
    assert_eq!(b[1]["diff"], json!({"y": "b"}));
    assert_eq!(b[2]["old"], json!({"x": 1, "y": "b"}));
    // composite key
    assert_eq!(b[3]["id"], json!({"a": 1, "b": "x"}));
    assert_eq!(b[4]["diff"], json!({"v": "v2"}));
    // unchanged TOASTed value, DEFAULT identity: left out of new and diff, never null
    assert_eq!(b[5]["new"]["body"].as_str().unwrap().len(), 96_000);
    assert!(b[6]["new"].get("body").is_none());
    assert!(b[6]["diff"].get("body").is_none());
    assert_eq!(b[6]["diff"]["n"], 2);
    // unchanged TOASTed value, FULL identity: filled from the old row
    assert_eq!(b[8]["new"]["body"], b[7]["new"]["body"]);
    assert_eq!(b[8]["diff"], json!({"n": 2}));
    stop(producer).await;
    world.cleanup(queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_family() {
    let world = World::new().await;
    world
        .pg
        .execute(
            "CREATE TYPE mood AS ENUM ('sad', 'happy');
             CREATE DOMAIN posint AS int CHECK (VALUE > 0);
             CREATE TABLE t (id int PRIMARY KEY, i8 bigint, f4 real, f8 double precision, n numeric, big numeric,
               nan numeric, inf double precision, b bool, tx text, j json, jb jsonb, by bytea,
               ts timestamp, tstz timestamptz, tstz_inf timestamptz, d date, old_d date, iv interval, u uuid,
               ia int[], ta text[], m2 int[][], m mood, ma mood[], dom posint, nul text);",
        )
        .await;
    let mut queue = world.queue(&["public.t"]).await;
    let producer = world.producer(&[]).await;
    world
        .pg
        .execute(
            "INSERT INTO t VALUES (1, 9007199254740993, 1.5, 0.1, 12.3400, 123456789012345678901234567890.000000001,
               'NaN', '-Infinity', false, E'quote\" backslash\\\\ newline\n', '{\"a\": [1, 2]}', '{\"k\": null}', '\\xdeadbeef',
               '2026-11-23 10:00:00.5', '2026-11-23 10:00:00.123456+02', 'infinity', '2026-11-23', '0044-03-15 BC',
               '1 day 02:00:00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
               '{1,NULL,3}', '{\"x y\",NULL}', '{{1,2},{3,4}}', 'happy', '{sad,happy}', 7, NULL)",
        )
        .await;
    let e = queue.take(1, WAIT).await.remove(0);
    let row = &e.json["new"];
    let raw = String::from_utf8(e.body.clone()).unwrap();
    assert!(raw.contains(r#""i8":9007199254740993"#), "bigint keeps every digit: {raw}");
    assert!(raw.contains(r#""n":12.3400"#), "numeric keeps PostgreSQL's digits: {raw}");
    assert!(raw.contains(r#""big":123456789012345678901234567890.000000001"#), "{raw}");
    assert_eq!(row["f4"], 1.5);
    assert_eq!(row["f8"], 0.1);
    assert_eq!(row["nan"], "NaN");
    assert_eq!(row["inf"], "-Infinity");
    assert_eq!(row["b"], false);
    assert_eq!(row["tx"], "quote\" backslash\\ newline\n");
    assert_eq!(row["j"], json!({"a": [1, 2]}));
    assert_eq!(row["jb"], json!({"k": null}));
    assert_eq!(row["by"], "3q2+7w==");
    assert_eq!(row["ts"], "2026-11-23T10:00:00.5");
    // the test cluster runs in Europe/Paris; events are always in UTC
    assert_eq!(row["tstz"], "2026-11-23T08:00:00.123456Z");
    assert_eq!(row["tstz_inf"], "infinity");
    assert_eq!(row["d"], "2026-11-23");
    assert_eq!(row["old_d"], "0044-03-15 BC");
    assert_eq!(row["iv"], "1 day 02:00:00");
    assert_eq!(row["u"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(row["ia"], json!([1, null, 3]));
    assert_eq!(row["ta"], json!(["x y", null]));
    assert_eq!(row["m2"], json!([[1, 2], [3, 4]]));
    assert_eq!(row["m"], "happy");
    assert_eq!(row["ma"], json!(["sad", "happy"]));
    assert_eq!(row["dom"], 7);
    assert_eq!(row["nul"], serde_json::Value::Null);
    stop(producer).await;
    world.cleanup(queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgtables_filters_and_numeric_as_string() {
    let world = World::new().await;
    world
        .pg
        .execute("CREATE TABLE wanted (id int PRIMARY KEY, n numeric); CREATE TABLE other (id int PRIMARY KEY);")
        .await;
    let mut queue = world.queue(&["#"]).await;
    let producer = world.producer(&[("PGTABLES", "public.wanted"), ("PGEVENTS_NUMERIC_AS_STRING", "true")]).await;
    world
        .pg
        .execute("INSERT INTO other VALUES (1); INSERT INTO wanted VALUES (1, 1.50); INSERT INTO other VALUES (2);")
        .await;
    let events = queue.drain(std::time::Duration::from_secs(3)).await;
    assert_eq!(events.len(), 1, "{:?}", bodies(&events));
    assert_eq!(events[0].json["table_name"], "public.wanted");
    assert_eq!(events[0].json["new"]["n"], "1.50");
    let tables = world
        .pg
        .query_text("SELECT string_agg(tablename, ',') FROM pg_publication_tables WHERE pubname = 'pgevents'")
        .await;
    assert_eq!(tables.as_deref(), Some("wanted"), "the publication lists only PGTABLES");
    stop(producer).await;
    world.cleanup(queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_context_and_skip_only_when_allowed() {
    // What applications sent before messages were signed, believed only with
    // --allow-unsigned-messages (signed messages: tests/producer_messages.rs).
    let world = World::new().await;
    world.pg.execute("CREATE TABLE orders (id int PRIMARY KEY)").await;
    let mut queue = world.queue(&["#"]).await;
    let producer = world.producer(&[("PGEVENTS_ALLOW_UNSIGNED_MESSAGES", "true")]).await;
    world
        .pg
        .execute(
            "BEGIN; INSERT INTO orders VALUES (1);
                    SELECT pg_logical_emit_message(true, 'pgevents', '{\"uid\": 42, \"label\": \"signup\"}');
                    INSERT INTO orders VALUES (2); COMMIT;
             BEGIN; SELECT pg_logical_emit_message(true, 'pgevents', '{\"skip\": true}');
                    INSERT INTO orders VALUES (3); COMMIT;
             INSERT INTO orders VALUES (4);",
        )
        .await;
    let b = bodies(&queue.take(3, WAIT).await);
    assert_eq!(b[0]["context"], json!({"uid": 42, "label": "signup"}), "context reaches events before the message too");
    assert_eq!(b[1]["context"], json!({"uid": 42, "label": "signup"}));
    assert_eq!(b[2]["new"]["id"], 4, "the skipped transaction published nothing");
    assert!(b[2].get("context").is_none());
    assert!(queue.next(std::time::Duration::from_secs(1)).await.is_none());
    stop(producer).await;

    // By default an unsigned message is refused, said so, and the transaction published as is.
    let producer = world.producer(&[]).await;
    world
        .pg
        .execute(
            "BEGIN; SELECT pg_logical_emit_message(true, 'pgevents', '{\"skip\": true}');
                    INSERT INTO orders VALUES (5); COMMIT;",
        )
        .await;
    let b = bodies(&queue.take(1, WAIT).await);
    assert_eq!((b[0]["new"]["id"].as_i64(), b[0].get("context")), (Some(5), None));
    let log = stop(producer).await;
    assert!(log.contains("a pgevents message was refused") && log.contains("--allow-unsigned-messages"), "{log}");
    world.cleanup(queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_compression_is_announced() {
    use std::io::Read;
    let world = World::new().await;
    world.pg.execute("CREATE TABLE z (id int PRIMARY KEY, t text)").await;
    let mut queue = world.queue(&["#"]).await;
    let producer = world.producer(&[("PGEVENTS_COMPRESSION", "gzip")]).await;
    world.pg.execute("INSERT INTO z VALUES (1, repeat('abc', 1000))").await;
    let delivery = queue.next_raw(WAIT).await.expect("a message");
    assert_eq!(delivery.properties.content_encoding().map(String::as_str), Some("gzip"));
    let mut body = String::new();
    flate2::read::GzDecoder::new(&delivery.body[..]).read_to_string(&mut body).unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["new"]["t"].as_str().unwrap().len(), 3000);
    assert!(delivery.body.len() < 500, "compressed");
    stop(producer).await;
    world.cleanup(queue).await;
}
