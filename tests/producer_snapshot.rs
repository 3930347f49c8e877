//! The initial snapshot: existing rows arrive as `R` events before the changes that follow, with
//! no gap and no overlap even while the tables are being written; an interrupted snapshot
//! resumes; `always` reads the tables again at every start.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{stop, World, WAIT};
use pgevents_testkit::PgEventsProcess;

#[tokio::test(flavor = "multi_thread")]
async fn existing_rows_then_changes_with_no_gap_and_no_overlap() {
    let world = World::new().await;
    world
        .pg
        .execute(
            "CREATE TABLE users (id int PRIMARY KEY, name text, tags text[], secret text);
             INSERT INTO users SELECT i, 'user ' || i, ARRAY['a', NULL], 's' FROM generate_series(1, 2500) i;
             CREATE TABLE pairs (a int, b text, v numeric, PRIMARY KEY (a, b));
             INSERT INTO pairs VALUES (1, 'x', 1.50), (1, 'y', NULL), (2, 'it''s', 3);
             CREATE TABLE keyless (note text);
             INSERT INTO keyless VALUES ('one'), (E'two\\tlines\\n');",
        )
        .await;
    let mut queue = world.queue(&["#"]).await;
    // Rows keep arriving while the producer starts and reads the snapshot.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (client, writing) = (world.pg.client().await, writing.clone());
        tokio::spawn(async move {
            let mut id = 100_000;
            while writing.load(Ordering::Relaxed) {
                client.batch_execute(&format!("INSERT INTO users VALUES ({id}, 'live', '{{}}', 's')")).await.unwrap();
                id += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let producer = world
        .producer(&[
            ("PGEVENTS_SNAPSHOT", "initial"),
            ("PGEVENTS_SNAPSHOT_BATCH_ROWS", "400"),
            ("PGEVENTS_EXCLUDE_COLUMNS", "secret"),
        ])
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    writing.store(false, Ordering::Relaxed);
    writer.await.unwrap();
    world.pg.execute("UPDATE users SET name = 'changed' WHERE id = 1").await;

    let total_users: usize = world.pg.query_text("SELECT count(*)::text FROM users").await.unwrap().parse().unwrap();
    let events = queue.take(total_users + 3 + 2 + 1, WAIT).await;
    let mut seen: HashMap<i64, Vec<String>> = HashMap::new();
    for e in events.iter().filter(|e| e.json["table_name"] == "public.users") {
        seen.entry(e.json["id"].as_i64().unwrap()).or_default().push(e.json["action"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen.len(), total_users, "every row of users arrives");
    for (id, actions) in &seen {
        let expected: &[&str] = if *id == 1 { &["R", "U"] } else { &["R"] };
        let alone = actions.len() == 1 && (actions[0] == "R" || actions[0] == "I");
        assert!(actions == expected || alone, "row {id} arrives exactly once (R or I), then its update: {actions:?}");
    }
    let first = events.iter().find(|e| e.json["table_name"] == "public.users").unwrap();
    assert_eq!(first.json["action"], "R");
    assert_eq!(first.json["old"], serde_json::json!({}));
    assert_eq!(first.json["new"], serde_json::json!({"id": 1, "name": "user 1", "tags": ["a", null]}));
    assert_eq!(first.json["diff"], first.json["new"]);
    assert!(first.message_id().starts_with("snapshot:"), "{}", first.message_id());
    let pairs: Vec<_> = events.iter().filter(|e| e.json["table_name"] == "public.pairs").collect();
    assert_eq!(pairs.len(), 3);
    assert_eq!(pairs[2].json["id"], serde_json::json!({"a": 2, "b": "it's"}));
    assert!(String::from_utf8_lossy(&pairs[0].body).contains(r#""v":1.50"#), "numeric keeps its digits");
    let keyless: Vec<_> = events.iter().filter(|e| e.json["table_name"] == "public.keyless").collect();
    assert_eq!(keyless.len(), 2);
    assert_eq!(keyless[1].json["new"]["note"], "two\tlines\n");
    assert_eq!(keyless[1].json["id"], serde_json::Value::Null);
    let r_positions: Vec<usize> =
        events.iter().enumerate().filter(|(_, e)| e.json["action"] == "R").map(|(i, _)| i).collect();
    let first_change = events.iter().position(|e| e.json["action"] != "R").unwrap();
    assert!(r_positions.iter().all(|&i| i < first_change), "every R event comes before the first change");
    assert!(queue.drain(Duration::from_millis(500)).await.is_empty(), "nothing more");
    assert_eq!(
        world.pg.query_text("SELECT (finished_at IS NOT NULL)::text FROM pgevents.snapshot").await.as_deref(),
        Some("true")
    );
    stop(producer).await;

    // `always` reads the tables again at the next start.
    let producer = world.producer(&[("PGEVENTS_SNAPSHOT", "always")]).await;
    let again = queue.take(total_users + 5, WAIT).await;
    assert!(again.iter().all(|e| e.json["action"] == "R"));
    stop(producer).await;
    world.cleanup(queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_snapshot_resumes_where_it_stopped() {
    let world = World::new().await;
    let rows: i64 = 20_000;
    world
        .pg
        .execute(&format!(
            "CREATE TABLE big (id int PRIMARY KEY, v text); INSERT INTO big SELECT i, md5(i::text) FROM generate_series(1, {rows}) i;"
        ))
        .await;
    let mut queue = world.queue(&["#"]).await;
    let env = world.producer_env(&[("PGEVENTS_SNAPSHOT", "initial"), ("PGEVENTS_SNAPSHOT_BATCH_ROWS", "50")]);
    let mut first = PgEventsProcess::spawn(&["producer"], &env);
    let mut received = Vec::new();
    while received.len() < 3000 {
        received.extend(queue.take(1, WAIT).await);
    }
    first.kill();
    assert_eq!(first.wait(WAIT).await, None);
    let progress: i64 = world
        .pg
        .query_text("SELECT rows_read::text FROM pgevents.snapshot_progress WHERE NOT done")
        .await
        .expect("an unfinished table")
        .parse()
        .unwrap();
    assert!(progress > 0 && progress < rows, "progress was recorded: {progress}");

    let second = world.producer(&[("PGEVENTS_SNAPSHOT", "initial"), ("PGEVENTS_SNAPSHOT_BATCH_ROWS", "50")]).await;
    world.pg.execute("INSERT INTO big VALUES (0, 'after')").await;
    let mut all = received;
    let deadline = std::time::Instant::now() + WAIT;
    while !all.iter().any(|e| e.json["action"] == "I") {
        assert!(std::time::Instant::now() < deadline, "the insert after the snapshot did not arrive");
        all.extend(queue.drain(Duration::from_millis(300)).await);
    }
    all.extend(queue.drain(Duration::from_millis(500)).await);
    let mut ids: Vec<i64> = all.iter().map(|e| e.json["id"].as_i64().unwrap()).collect();
    let inserted = all.iter().filter(|e| e.json["action"] == "I").count();
    assert_eq!(inserted, 1, "the insert after the snapshot arrives once");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids, (0..=rows).collect::<Vec<_>>(), "every row arrives at least once");
    assert!(
        all.len() < rows as usize + 1 + 4000,
        "the second run resumed rather than starting over ({} events)",
        all.len()
    );
    stop(second).await;
    world.cleanup(queue).await;
}

/// Key values with quotes and backslashes page correctly whatever the server's
/// `standard_conforming_strings`: they are bound as parameters, never pasted into SQL.
#[tokio::test(flavor = "multi_thread")]
async fn keys_with_quotes_and_backslashes_page_safely() {
    let world = World::new().await;
    world
        .pg
        .execute(
            r#"ALTER DATABASE postgres SET standard_conforming_strings = off;
               CREATE TABLE tricky (k text PRIMARY KEY, n int);
               INSERT INTO tricky VALUES (E'a\'b', 1), (E'a\\''b', 2), (E'c\\', 3), (E'c\\d', 4),
                                         (E'd''', 5), (E'e\\\\''f', 6), ('plain', 7);"#,
        )
        .await;
    let mut queue = world.queue(&["#"]).await;
    let producer = world.producer(&[("PGEVENTS_SNAPSHOT", "initial"), ("PGEVENTS_SNAPSHOT_BATCH_ROWS", "2")]).await;
    let events = queue.take(7, WAIT).await;
    let mut numbers: Vec<i64> = events.iter().map(|e| e.json["new"]["n"].as_i64().unwrap()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=7).collect::<Vec<_>>(), "every row once, across batches of 2");
    assert!(queue.next(Duration::from_millis(500)).await.is_none(), "and no row twice");
    assert!(
        events.iter().any(|e| e.json["id"] == "e\\\\'f"),
        "{:?}",
        events.iter().map(|e| &e.json["id"]).collect::<Vec<_>>()
    );
    stop(producer).await;
    world.cleanup(queue).await;
}
