//! The benchmark's table and workloads, written straight into PostgreSQL (server-side loops, so
//! that writing is never what is measured).

use anyhow::Context;
use pgevents_testkit::{PgCluster, PgOptions};

/// The table every workload writes: int, text, numeric, text[], jsonb and timestamptz columns.
/// `ts` is `clock_timestamp()` at insert, which the latency run compares with the arrival time.
pub const TABLE: &str = "CREATE TABLE bench (id int PRIMARY KEY, i int, t text, n numeric, arr text[], j jsonb,
    ts timestamptz DEFAULT clock_timestamp())";

/// The publication the producer and `pg_recvlogical` read.
pub const PUBLICATION: &str = "pgevents";

/// The values of row `g` (an SQL expression list over `g`).
const ROW: &str = "g, g * 7, 'row number ' || g, g * 1.25, ARRAY['a' || g, 'b'],
    jsonb_build_object('k', g, 'tags', jsonb_build_array('x', 'y')), clock_timestamp()";

/// A cluster tuned for write throughput (the limits measured are decoding and publishing).
pub async fn cluster() -> PgCluster {
    cluster_with(false).await
}

/// A cluster for the latency run: `synchronous_commit = on`, as in production. (With it off,
/// WAL reaches the disk, and so the WAL sender, only every `wal_writer_delay` (200 ms), which
/// would be measured instead of pgevents.)
pub async fn latency_cluster() -> PgCluster {
    cluster_with(true).await
}

async fn cluster_with(synchronous_commit: bool) -> PgCluster {
    let commit = if synchronous_commit { "on" } else { "off" };
    PgCluster::start_with(PgOptions {
        extra_conf: vec![
            "shared_buffers = 256MB".into(),
            "max_wal_size = 8GB".into(),
            format!("synchronous_commit = {commit}"),
            "logical_decoding_work_mem = 64MB".into(),
            "wal_sender_timeout = 0".into(),
        ],
        ..Default::default()
    })
    .await
}

/// Creates the table, the publication, and one slot per name, before any change is written, so
/// that every slot retains the whole workload.
pub async fn prepare(pg: &PgCluster, slots: &[&str]) -> anyhow::Result<()> {
    let client = pg.client().await;
    client.batch_execute(TABLE).await.context("create the bench table")?;
    client
        .batch_execute(&format!("CREATE PUBLICATION {PUBLICATION} FOR TABLE bench"))
        .await
        .context("create the publication")?;
    for slot in slots {
        client
            .execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[slot])
            .await
            .with_context(|| format!("create slot {slot}"))?;
    }
    Ok(())
}

/// `changes / 2` rows inserted in 1,000-row transactions, then one UPDATE of every row.
/// Returns the number of changes and of transactions.
pub async fn batched(pg: &PgCluster, changes: u64) -> anyhow::Result<(u64, u64)> {
    let rows = changes / 2;
    let client = pg.client().await;
    client
        .batch_execute(&format!(
            "DO $$ BEGIN
               FOR b IN 0..(({rows} + 999) / 1000 - 1) LOOP
                 INSERT INTO bench SELECT {ROW} FROM generate_series(b * 1000 + 1, least(b * 1000 + 1000, {rows})) g;
                 COMMIT;
               END LOOP;
             END $$"
        ))
        .await
        .context("write the batched workload")?;
    // A statement of its own: several statements in one query would make one transaction, in
    // which the loop's COMMITs are not allowed.
    client.batch_execute("UPDATE bench SET i = i + 1").await.context("update every row")?;
    Ok((rows * 2, rows.div_ceil(1000) + 1))
}

/// `transactions` single-row transactions.
pub async fn single(pg: &PgCluster, transactions: u64) -> anyhow::Result<(u64, u64)> {
    let client = pg.client().await;
    client
        .batch_execute(&format!(
            "DO $$ BEGIN
               FOR g IN 1..{transactions} LOOP
                 INSERT INTO bench VALUES ({ROW});
                 COMMIT;
               END LOOP;
             END $$"
        ))
        .await
        .context("write the single-row workload")?;
    Ok((transactions, transactions))
}

/// One transaction inserting `rows` rows.
pub async fn big_transaction(pg: &PgCluster, rows: u64) -> anyhow::Result<(u64, u64)> {
    let client = pg.client().await;
    client
        .batch_execute(&format!("INSERT INTO bench SELECT {ROW} FROM generate_series(1, {rows}) g"))
        .await
        .context("write the big transaction")?;
    Ok((rows, 1))
}

/// The current WAL insert position: every change written so far is before it.
pub async fn end_lsn(pg: &PgCluster) -> anyhow::Result<String> {
    let client = pg.client().await;
    let row =
        client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.context("read the WAL position")?;
    Ok(row.get(0))
}
