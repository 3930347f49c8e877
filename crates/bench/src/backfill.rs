//! Backfills on demand: rows per second of `pgevents.snapshot()` on a table of `rows` rows,
//! alone and while live changes stream at a steady rate (and how many of those arrived in the
//! same time, and the commit-to-confirm p99 the producer saw meanwhile). The events go to a
//! durable queue, with publisher confirms, as in production.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgevents_testkit::{amqp_url, free_local_addr, http_get, unique_name, PgEventsProcess};
use serde::Serialize;

use crate::broker::BenchQueue;
use crate::producer_run::producer_env;
use crate::{latency, workload};

#[derive(Debug, Clone, Serialize)]
pub struct BackfillRun {
    pub rows: u64,
    /// Live single-row transactions per second asked for during the backfill (0: alone).
    pub live_rate_per_s: u64,
    /// `--backfill-max-rows-per-s` (0: no limit).
    pub max_rows_per_s: u64,
    pub seconds: f64,
    pub rows_per_s: f64,
    /// Live changes written during the backfill, per second.
    pub live_changes_per_s: f64,
    /// The producer's commit-to-confirm p99 over the run (live transactions and watermarks).
    pub confirm_p99_ms: Option<f64>,
    pub chunks_retried: i64,
}

const BACKFILL_TABLE: &str = "CREATE TABLE bench_backfill (id int PRIMARY KEY, i int, t text, n numeric, j jsonb);";

/// One measurement on a fresh cluster.
pub async fn measure(
    binary: &Path,
    slot: &str,
    rows: u64,
    live_rate: u64,
    max_rows_per_s: u64,
) -> anyhow::Result<BackfillRun> {
    let pg = workload::latency_cluster().await;
    workload::prepare(&pg, &[slot]).await?;
    let client = pg.client().await;
    client
        .batch_execute(&format!(
            "{BACKFILL_TABLE}
             INSERT INTO bench_backfill SELECT g, g * 7, 'row number ' || g, g * 1.25, jsonb_build_object('k', g)
             FROM generate_series(1, {rows}) g;
             ANALYZE bench_backfill;
             ALTER PUBLICATION {} ADD TABLE bench_backfill;",
            workload::PUBLICATION
        ))
        .await
        .context("write the table to backfill")?;
    let queue = BenchQueue::declare(&amqp_url(), &unique_name("bench_x"), &unique_name("bench_q")).await?;
    let metrics = free_local_addr();
    let mut env: Vec<(String, String)> =
        producer_env(&pg, &queue, slot).into_iter().filter(|(k, _)| k != "PGTABLES" && k != "RUST_LOG").collect();
    env.extend([
        ("RUST_LOG".to_owned(), "info".to_owned()),
        ("PGTABLES".to_owned(), "public.bench,public.bench_backfill".to_owned()),
        ("PGEVENTS_BACKFILL_POLL_MS".to_owned(), "20".to_owned()),
        ("PGEVENTS_BACKFILL_MAX_ROWS_PER_S".to_owned(), max_rows_per_s.to_string()),
        ("PGEVENTS_METRICS_ADDR".to_owned(), metrics.to_string()),
    ]);
    let mut producer = PgEventsProcess::spawn_binary(binary, &["producer"], &env);
    producer.wait_for_log("streaming", Duration::from_secs(30)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let live_client = pg.client().await;
    let writer =
        (live_rate > 0).then(|| tokio::spawn(live_writes(live_client, live_rate, stop.clone(), written.clone())));
    if writer.is_some() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let written_before = written.load(Ordering::Relaxed);
    let started = Instant::now();
    let id: i64 = client
        .query_one("SELECT pgevents.snapshot(ARRAY['public.bench_backfill'])", &[])
        .await
        .context("ask for the backfill")?
        .get(0);
    let retried = loop {
        let row = client
            .query_one("SELECT status, chunks_retried, error FROM pgevents.backfill WHERE id = $1", &[&id])
            .await?;
        match row.get::<_, &str>(0) {
            "done" => break row.get::<_, i32>(1),
            "failed" | "cancelled" => {
                bail!("the backfill ended {}: {:?}", row.get::<_, &str>(0), row.get::<_, Option<String>>(2))
            }
            _ if started.elapsed() > Duration::from_secs(600) => bail!("the backfill did not end within 10 minutes"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let live = written.load(Ordering::Relaxed) - written_before;
    stop.store(true, Ordering::Relaxed);
    if let Some(writer) = writer {
        writer.await.context("the live writer")??;
    }
    let confirm_p99_ms = http_get(metrics, "/metrics")
        .await
        .and_then(|(_, text)| latency::histogram_quantile(&text, "pgevents_commit_to_confirm_seconds", 0.99));
    producer.terminate();
    let _ = producer.wait(Duration::from_secs(30)).await;
    queue.delete().await;
    Ok(BackfillRun {
        rows,
        live_rate_per_s: live_rate,
        max_rows_per_s,
        seconds,
        rows_per_s: rows as f64 / seconds,
        live_changes_per_s: live as f64 / seconds,
        confirm_p99_ms,
        chunks_retried: i64::from(retried),
    })
}

/// Single-row transactions into `bench` at `rate` per second (in 10 ms steps) until `stop`.
async fn live_writes(
    client: tokio_postgres::Client,
    rate: u64,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let per_step = (rate / 100).max(1);
    let mut next_id: i32 = 1;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for _ in 0..per_step {
            client
                .execute(
                    "INSERT INTO bench (id, i, t, n, arr, j) VALUES ($1, $1, 'live', 1.5, ARRAY['a'], '{}')",
                    &[&next_id],
                )
                .await
                .context("live insert")?;
            next_id += 1;
            written.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}
