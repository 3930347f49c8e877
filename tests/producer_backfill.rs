//! Backfills on demand (`pgevents.snapshot()`, `pgevents snapshot`): a table read in chunks
//! between watermarks while a writer changes it at full speed, the events folded per key in
//! order against the table's final state; a backfill resumed after a SIGKILL; status and
//! cancellation.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{pg_port, run_to_end, stop, World, WAIT};
use pgevents_testkit::{EventQueue, PgCluster, PgEventsProcess};
use serde_json::Value;

/// Folds events per key in arrival order: inserts, updates and reads set the row, deletes and
/// truncates remove it.
#[derive(Default)]
struct Fold {
    rows: BTreeMap<i64, Value>,
    reads: u64,
    events: u64,
}

impl Fold {
    fn apply(&mut self, event: &Value) {
        self.events += 1;
        match event["action"].as_str() {
            Some("I" | "U" | "R") => {
                if event["action"] == "R" {
                    self.reads += 1;
                }
                if event["action"] == "U" {
                    if let Some(old) = event["old"]["id"].as_i64() {
                        self.rows.remove(&old);
                    }
                }
                let id = event["new"]["id"].as_i64().expect("id");
                self.rows.insert(id, event["new"].clone());
            }
            Some("D") => {
                self.rows.remove(&event["old"]["id"].as_i64().expect("id"));
            }
            Some("T") => self.rows.clear(),
            other => panic!("unexpected action {other:?}"),
        }
    }
}

/// The table as the events would show it.
async fn table(pg: &PgCluster) -> BTreeMap<i64, Value> {
    let rows = pg.client().await.query("SELECT id, row_to_json(b)::text FROM big b", &[]).await.unwrap();
    rows.iter().map(|r| (r.get::<_, i32>(0) as i64, serde_json::from_str(&r.get::<_, String>(1)).unwrap())).collect()
}

async fn status(pg: &PgCluster, id: i64) -> (String, i64, i32) {
    let row = pg
        .client()
        .await
        .query_opt("SELECT status, rows_done, chunks_retried FROM pgevents.backfill WHERE id = $1", &[&id])
        .await
        .unwrap();
    row.map(|row| (row.get(0), row.get(1), row.get(2))).unwrap_or_else(|| ("absent".into(), 0, 0))
}

async fn wait_status(pg: &PgCluster, id: i64, wanted: &str, timeout: Duration) -> (String, i64, i32) {
    pgevents_testkit::wait_for(&format!("backfill {id} to be {wanted}"), timeout, || async {
        let now = status(pg, id).await;
        assert_ne!(
            now.0,
            "failed",
            "the backfill failed: {:?}",
            pg.query_text(&format!("SELECT error FROM pgevents.backfill WHERE id = {id}")).await
        );
        (now.0 == wanted).then_some(now)
    })
    .await
}

/// Writes at full speed until `stop`: updates, deletes and inserts of random rows (ids up to
/// 10% above the table's), each its own transaction. Returns how many it wrote.
async fn writer(port: u16, seed: u64, rows: i64, stop: Arc<AtomicBool>) -> u64 {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("writer connects");
    tokio::spawn(connection);
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut written = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = (next() % (rows as u64 * 11 / 10)) as i32 + 1;
        let sql = match next() % 10 {
            0..=5 => "UPDATE big SET v = v + 1, note = 'updated' WHERE id = $1",
            6..=7 => "DELETE FROM big WHERE id = $1",
            _ => "INSERT INTO big VALUES ($1, 0, 'inserted') ON CONFLICT (id) DO UPDATE SET v = big.v + 100",
        };
        client.execute(sql, &[&id]).await.expect("write");
        written += 1;
    }
    written
}

/// The events until the last writer's marker arrived, folded.
async fn fold_until_marker(queue: &mut EventQueue, marker: i64) -> Fold {
    let mut fold = Fold::default();
    loop {
        let delivery = queue.next_raw(WAIT).await.expect("events until the marker");
        let event: Value = serde_json::from_slice(&delivery.body).expect("an event");
        if event["table_name"] == "public.marker" {
            if event["new"]["n"].as_i64() == Some(marker) {
                return fold;
            }
            continue;
        }
        fold.apply(&event);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_while_a_writer_runs_at_full_speed_folds_to_the_table() {
    const ROWS: i64 = 200_000;
    let world = World::new().await;
    world
        .pg
        .execute(&format!(
            "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, note text);
             INSERT INTO big SELECT i, i % 1000, 'initial ' || i FROM generate_series(1, {ROWS}) i;
             CREATE TABLE marker (n int PRIMARY KEY);"
        ))
        .await;
    let mut queue = world.queue(&["#"]).await;
    let producer =
        world.producer(&[("PGTABLES", "public.big,public.marker"), ("PGEVENTS_BACKFILL_POLL_MS", "100")]).await;

    let stop_writers = Arc::new(AtomicBool::new(false));
    let port = pg_port(&world.pg);
    let writers: Vec<_> = (0..1).map(|seed| tokio::spawn(writer(port, seed + 1, ROWS, stop_writers.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = run_to_end(&["snapshot", "--table", "public.big"], &world.pg.env()).await;
    assert!(out.contains("backfill 1 of public.big queued"), "{out}");
    let (_, rows_done, retried) = wait_status(&world.pg, 1, "done", Duration::from_secs(300)).await;
    stop_writers.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    world.pg.execute("INSERT INTO marker VALUES (1)").await;
    let fold = fold_until_marker(&mut queue, 1).await;
    let expected = table(&world.pg).await;
    eprintln!(
        "backfill: {rows_done} rows read, {retried} chunks read again, {} R events; writers: {written} changes; {} events in all",
        fold.reads, fold.events
    );
    assert!(written > 1000, "the writers wrote during the backfill: {written}");
    assert_eq!(fold.rows.len(), expected.len(), "rows");
    let wrong: Vec<_> = expected.iter().filter(|(id, row)| fold.rows.get(id) != Some(row)).take(5).collect();
    assert!(wrong.is_empty(), "rows whose last event is not the table's row, e.g. {wrong:?}");
    assert!(
        fold.reads <= ROWS as u64 + 2000,
        "read events: {} (a chunk of rows changed meanwhile is dropped, not published twice)",
        fold.reads
    );

    let status = run_to_end(&["snapshot", "--status"], &world.pg.env()).await;
    assert!(status.contains("public.big") && status.contains("done"), "{status}");
    stop(producer).await;
    world.cleanup(queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_backfill_resumes_and_backfills_can_be_cancelled() {
    const ROWS: i64 = 30_000;
    let world = World::new().await;
    world
        .pg
        .execute(&format!(
            "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, note text);
             INSERT INTO big SELECT i, i, 'row ' || i FROM generate_series(1, {ROWS}) i;
             CREATE TABLE marker (n int PRIMARY KEY);
             CREATE TABLE nokey (v int);"
        ))
        .await;
    let mut queue = world.queue(&["#"]).await;
    let env = [
        ("PGTABLES", "public.big,public.marker,public.nokey"),
        ("PGEVENTS_BACKFILL_POLL_MS", "100"),
        ("PGEVENTS_BACKFILL_CHUNK_ROWS", "200"),
    ];
    let producer = world.producer(&env).await;
    run_to_end(&["snapshot", "--table", "public.big"], &world.pg.env()).await;
    pgevents_testkit::wait_for("a third of the backfill", WAIT, || async {
        (status(&world.pg, 1).await.1 >= ROWS / 3).then_some(())
    })
    .await;
    producer.kill();
    let mut producer = producer;
    producer.wait(WAIT).await;
    let (state, done_at_kill, _) = status(&world.pg, 1).await;
    assert_eq!(state, "running", "it stays running, to be resumed");
    let producer = world.producer(&env).await;
    let (_, rows_done, _) = wait_status(&world.pg, 1, "done", Duration::from_secs(120)).await;
    assert!(
        (ROWS..ROWS + 2 * 200).contains(&rows_done),
        "resumed from its last chunk, not from the start: {rows_done}"
    );
    world.pg.execute("INSERT INTO marker VALUES (1)").await;
    let fold = fold_until_marker(&mut queue, 1).await;
    assert_eq!(fold.rows, table(&world.pg).await, "every row, once folded");
    assert!(
        fold.reads < (ROWS + done_at_kill) as u64,
        "{} read events; {done_at_kill} rows were done at the kill",
        fold.reads
    );

    // Cancelled while queued (no producer takes another slot's request), and while running.
    let queued = run_to_end(&["snapshot", "--table", "big", "--slot", "another_slot"], &world.pg.env()).await;
    assert!(queued.contains("backfill 2 of big queued"), "{queued}");
    run_to_end(&["snapshot", "--cancel", "2"], &world.pg.env()).await;
    assert_eq!(status(&world.pg, 2).await.0, "cancelled");
    let mut again = PgEventsProcess::spawn(&["snapshot", "--cancel", "2"], &world.pg.env());
    assert_eq!(again.wait(WAIT).await, Some(1), "nothing left to cancel");
    assert!(again.stderr().contains("no queued or running backfill 2"), "{}", again.stderr());
    world.pg.execute("SELECT pgevents.snapshot(ARRAY['public.big'])").await;
    pgevents_testkit::wait_for("backfill 3 to run", WAIT, || async {
        (status(&world.pg, 3).await.1 > 0).then_some(())
    })
    .await;
    run_to_end(&["snapshot", "--cancel", "3"], &world.pg.env()).await;
    wait_status(&world.pg, 3, "cancelled", WAIT).await;

    // What cannot be backfilled fails with the reason; what does not exist is refused at once.
    world.pg.execute("SELECT pgevents.snapshot(ARRAY['public.nokey'])").await;
    pgevents_testkit::wait_for("backfill 4 to fail", WAIT, || async {
        let (state, _, _) = status(&world.pg, 4).await;
        (state == "failed").then_some(())
    })
    .await;
    let error = world.pg.query_text("SELECT error FROM pgevents.backfill WHERE id = 4").await.unwrap_or_default();
    assert!(error.contains("no primary key"), "{error}");
    let mut missing = PgEventsProcess::spawn(&["snapshot", "--table", "public.nothing"], &world.pg.env());
    assert_eq!(missing.wait(WAIT).await, Some(1));
    assert!(missing.stderr().contains("there is no table public.nothing"), "{}", missing.stderr());

    // A partial backfill: only the rows the condition keeps.
    world.pg.execute("INSERT INTO marker VALUES (2)").await;
    fold_until_marker(&mut queue, 2).await;
    let partial = run_to_end(&["snapshot", "--table", "public.big", "--where", "id % 1000 = 0"], &world.pg.env()).await;
    assert!(partial.contains("backfill 5 of public.big queued"), "{partial}");
    wait_status(&world.pg, 5, "done", WAIT).await;
    world.pg.execute("INSERT INTO marker VALUES (3)").await;
    let fold = fold_until_marker(&mut queue, 3).await;
    let ids: Vec<i64> = fold.rows.keys().copied().collect();
    assert_eq!(ids, (1..=30).map(|n| n * 1000).collect::<Vec<_>>(), "only the rows the condition keeps");
    assert_eq!(fold.reads, 30);
    stop(producer).await;
    world.cleanup(queue).await;
}

/// The streamed set follows the publication: a table added with `ALTER PUBLICATION ... ADD
/// TABLE` streams from then on, without a restart, and with `--snapshot-new-tables` its rows are
/// backfilled; one dropped from the publication stops; one added while the producer was stopped
/// is backfilled at the next start.
#[tokio::test(flavor = "multi_thread")]
async fn tables_added_to_the_publication_stream_and_are_backfilled() {
    let world = World::new().await;
    world
        .pg
        .execute(
            "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); CREATE TABLE c (id int PRIMARY KEY);
             INSERT INTO b SELECT generate_series(1, 50); INSERT INTO c SELECT generate_series(1, 5);
             CREATE PUBLICATION pgevents FOR TABLE a;",
        )
        .await;
    let mut queue = world.queue(&["#"]).await;
    let env = [("PGEVENTS_SNAPSHOT_NEW_TABLES", "true"), ("PGEVENTS_BACKFILL_POLL_MS", "100")];
    let producer = world.producer(&env).await;
    world.pg.execute("INSERT INTO a VALUES (1); INSERT INTO b VALUES (100);").await;
    let first = queue.take(1, WAIT).await;
    assert_eq!(first[0].json["table_name"], "public.a", "b is not published yet");

    world.pg.execute("ALTER PUBLICATION pgevents ADD TABLE b; INSERT INTO b VALUES (101);").await;
    wait_status(&world.pg, 1, "done", WAIT).await;
    world.pg.execute("INSERT INTO a VALUES (2)").await;
    let mut fold = Fold::default();
    loop {
        let event = queue.next(WAIT).await.expect("b's events, then a's").json;
        if event["table_name"] == "public.a" && event["new"]["id"] == 2 {
            break;
        }
        assert_eq!(event["table_name"], "public.b", "{event}");
        fold.apply(&event);
    }
    let ids: Vec<i64> = fold.rows.keys().copied().collect();
    assert_eq!(ids, (1..=50).chain([100, 101]).collect::<Vec<_>>(), "b's rows, backfilled, and its change, live");
    assert!(fold.reads >= 51, "{} read events", fold.reads);

    world
        .pg
        .execute("ALTER PUBLICATION pgevents DROP TABLE b; INSERT INTO b VALUES (102); INSERT INTO a VALUES (3);")
        .await;
    let next = queue.next(WAIT).await.expect("a's change").json;
    assert_eq!((next["table_name"].as_str(), next["new"]["id"].as_i64()), (Some("public.a"), Some(3)), "b stopped");

    stop(producer).await;
    world.pg.execute("ALTER PUBLICATION pgevents ADD TABLE c").await;
    let producer = world.producer(&env).await;
    let reads = queue.take(5, WAIT).await;
    assert!(
        reads.iter().all(|e| e.json["table_name"] == "public.c" && e.json["action"] == "R"),
        "c, added while stopped, is backfilled at the start"
    );
    stop(producer).await;
    world.cleanup(queue).await;
}
