//! Inputs at the edges: 1 MB values, 1,600 columns, 10,000-element arrays, NaN and infinities,
//! dates before year 1, enum/domain/composite types, and a table altered and renamed while the
//! producer streams. Each must give a correct event, never a crash loop.

mod common;

use common::{stop, World, WAIT};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn extreme_values_give_correct_events() {
    let world = World::new().await;
    let columns: Vec<String> = (1..=1599).map(|i| format!("c{i} int")).collect();
    world
        .pg
        .execute(&format!(
            "CREATE TYPE mood AS ENUM ('sad', 'happy');
             CREATE DOMAIN posint AS int CHECK (VALUE > 0);
             CREATE TYPE pair AS (x int, label text);
             CREATE TABLE v (id int PRIMARY KEY, wide text, arr int[], n numeric, f float8, r real,
                             d date, ts timestamp, tstz timestamptz, m mood, p posint, c pair, ni numeric);
             CREATE TABLE w1600 (id int PRIMARY KEY, {});",
            columns.join(", ")
        ))
        .await;
    let mut queue = world.queue(&["#"]).await;
    let producer = world.producer(&[]).await;
    world
        .pg
        .execute(
            "INSERT INTO v VALUES (1, repeat('x', 1048576), (SELECT array_agg(i) FROM generate_series(1, 10000) i),
                'NaN', 'Infinity', '-Infinity', '0044-03-15 BC', 'infinity', '-infinity', 'happy', 7,
                ROW(1, 'a \"b\"'), 'Infinity')",
        )
        .await;
    let values: Vec<String> = (1..=1599).map(|i| i.to_string()).collect();
    world.pg.execute(&format!("INSERT INTO w1600 VALUES (0, {})", values.join(", "))).await;
    world.pg.execute("UPDATE v SET m = 'sad' WHERE id = 1").await;

    let events = queue.take(3, WAIT).await;
    let v = &events[0].json["new"];
    assert_eq!(v["wide"].as_str().map(str::len), Some(1_048_576));
    let arr = v["arr"].as_array().expect("an array");
    assert_eq!((arr.len(), arr[9999].as_i64()), (10_000, Some(10_000)));
    assert_eq!(v["n"], "NaN");
    assert_eq!(v["ni"], "Infinity");
    assert_eq!(v["f"], "Infinity");
    assert_eq!(v["r"], "-Infinity");
    assert_eq!(v["d"], "0044-03-15 BC");
    assert_eq!(v["ts"], "infinity");
    assert_eq!(v["tstz"], "-infinity");
    assert_eq!(v["m"], "happy");
    assert_eq!(v["p"], 7);
    assert_eq!(v["c"], "(1,\"a \"\"b\"\"\")");
    let wide = events[1].json["new"].as_object().expect("an object");
    assert_eq!(wide.len(), 1600);
    assert_eq!(wide["c1599"], 1599);
    let update = &events[2].json;
    assert_eq!(update["diff"]["m"], "sad");
    assert!(update["new"].get("wide").is_none(), "the unchanged 1 MB TOASTed value is left out, not null");
    stop(producer).await;
    world.cleanup(queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_altered_and_renamed_mid_stream_keeps_streaming() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE t (id int PRIMARY KEY, a text)").await;
    let mut queue = world.queue(&["#"]).await;
    let producer = world.producer(&[]).await;
    world.pg.execute("INSERT INTO t VALUES (1, 'one')").await;
    world.pg.execute("ALTER TABLE t ADD COLUMN b text; INSERT INTO t VALUES (2, 'two', 'bee')").await;
    world.pg.execute("ALTER TABLE t DROP COLUMN a; INSERT INTO t VALUES (3, 'three')").await;
    world
        .pg
        .execute(
            "ALTER TABLE t ALTER COLUMN b TYPE int USING coalesce(length(b), 0); UPDATE t SET b = b + 1 WHERE id = 2",
        )
        .await;
    world.pg.execute("ALTER TABLE t RENAME TO t2; INSERT INTO t2 VALUES (4, 40)").await;
    world.pg.execute("ALTER TABLE t2 DROP CONSTRAINT t_pkey; ALTER TABLE t2 ADD PRIMARY KEY (id, b)").await;
    world.pg.execute("DELETE FROM t2 WHERE id = 4").await;

    let events = queue.take(6, WAIT).await;
    let new = |i: usize| events[i].json["new"].clone();
    assert_eq!(new(0), json!({"id": 1, "a": "one"}));
    assert_eq!(new(1), json!({"id": 2, "a": "two", "b": "bee"}));
    assert_eq!(new(2), json!({"id": 3, "b": "three"}));
    assert_eq!(new(3), json!({"id": 2, "b": 4}), "the new type is used after ALTER COLUMN TYPE");
    assert_eq!(events[4].json["table_name"], "public.t2");
    assert_eq!(events[4].delivery.routing_key, "public.t2");
    assert_eq!(events[5].json["action"], "D");
    assert_eq!(events[5].json["id"], json!({"id": 4, "b": 40}), "the new primary key is used");
    let log = stop(producer).await;
    assert!(!log.contains("ERROR"), "{log}");
    world.cleanup(queue).await;
}
