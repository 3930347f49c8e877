//! Sync SQL actions: how many actions per second `pgevents worker` runs, each event going
//! through a filter, a work_item_query and an SQL action (statement and `action_run` row in one
//! transaction, `synchronous_commit = on`).
//!
//! The events are queued first (the worker declares its queue, stops, the producer fills it),
//! so the clock measures the worker alone: from its start until every action has its
//! `succeeded` row.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgevents_testkit::{unique_name, PgEventsProcess};
use serde::Serialize;

use crate::broker::BenchQueue;
use crate::procstat::{cpu_time, peak_rss_kib};
use crate::producer_run::producer_env;
use crate::workload;

#[derive(Debug, Clone, Serialize)]
pub struct ActionsRun {
    pub concurrency: usize,
    pub actions: u64,
    pub seconds: f64,
    pub actions_per_s: f64,
    pub worker_cpu_us_per_action: f64,
    pub worker_peak_rss_mib: f64,
}

const RULES: &str = r#"
    CREATE TABLE public.bench_done (id bigserial PRIMARY KEY, source_id int, t text);
    INSERT INTO pgevents.event_table (table_name) VALUES ('bench');
    INSERT INTO pgevents.action (name, kind, sql)
    VALUES ('record', 'sql', 'INSERT INTO public.bench_done (source_id, t) VALUES (($1->>''id'')::int, $1->>''t'')');
    INSERT INTO pgevents.work_item (name, table_name, trigger_actions, filter, work_item_query, action)
    VALUES ('record', 'bench', '{I,U}', $$($1->'new'->>'i')::int >= 0$$,
            $$SELECT jsonb_build_object('id', $1->'new'->'id', 't', $1->'new'->>'t') AS parameters$$, 'record');
"#;

async fn run_to_end(binary: &Path, args: &[&str], env: &[(String, String)]) -> anyhow::Result<()> {
    let mut process = PgEventsProcess::spawn_binary(binary, args, env);
    if process.wait(Duration::from_secs(60)).await != Some(0) {
        bail!("pgevents {args:?} failed:\n{}", process.stderr());
    }
    Ok(())
}

/// Successes so far, asked on one connection for the whole run (a connection per poll would
/// cost PostgreSQL a process start twenty times a second, counted against the worker).
async fn count_runs(client: &tokio_postgres::Client) -> anyhow::Result<u64> {
    let row = client
        .query_one("SELECT count(*) FROM pgevents.action_run WHERE status = 'succeeded'", &[])
        .await
        .context("count action runs")?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// One measurement on a fresh cluster.
pub async fn measure(binary: &Path, slot: &str, changes: u64, concurrency: usize) -> anyhow::Result<ActionsRun> {
    let pg = workload::latency_cluster().await;
    workload::prepare(&pg, &[slot]).await?;
    run_to_end(binary, &["rules", "install"], &pg.env()).await?;
    pg.client().await.batch_execute(RULES).await.context("write the bench rules")?;

    let exchange = unique_name("bench_x");
    let worker_queue = unique_name("bench_worker");
    let mut env = pg.env();
    env.extend([
        ("RABBITMQ_URL".to_owned(), pgevents_testkit::amqp_url()),
        ("RABBITMQ_EXCHANGE".to_owned(), exchange.clone()),
        ("RABBITMQ_QUEUE_NAME".to_owned(), worker_queue.clone()),
        ("PGEVENTS_WORK_EXCHANGE".to_owned(), unique_name("bench_work")),
        ("PGEVENTS_WORK_QUEUE".to_owned(), unique_name("bench_actions")),
        ("PGEVENTS_DEAD_LETTER_EXCHANGE".to_owned(), unique_name("bench_dead")),
        ("PGEVENTS_DEAD_LETTER_QUEUE".to_owned(), unique_name("bench_deadq")),
        ("PGEVENTS_CONCURRENCY".to_owned(), concurrency.to_string()),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ]);
    // The worker declares its queue; then the producer fills it while no worker runs.
    let mut worker = PgEventsProcess::spawn_binary(binary, &["worker"], &env);
    worker.wait_for_log("consuming", Duration::from_secs(30)).await;
    worker.terminate();
    worker.wait(Duration::from_secs(30)).await;
    let queue = BenchQueue::existing(&pgevents_testkit::amqp_url(), &exchange, &worker_queue).await?;
    let (changes, _) = workload::batched(&pg, changes).await?;
    let mut producer_env = producer_env(&pg, &queue, slot);
    producer_env.retain(|(k, _)| k != "RABBITMQ_EXCHANGE");
    producer_env.push(("RABBITMQ_EXCHANGE".into(), exchange.clone()));
    let mut producer = PgEventsProcess::spawn_binary(binary, &["producer"], &producer_env);
    let queued = queue.wait_for_depth(changes, Duration::from_secs(120)).await?;
    producer.terminate();
    producer.wait(Duration::from_secs(30)).await;
    if !queued {
        bail!("only {} of {changes} events reached the worker's queue", queue.depth().await?);
    }

    eprintln!("[Actions] worker, concurrency {concurrency}: {changes} events queued");
    let poll = pg.client().await;
    let started = Instant::now();
    let mut worker = PgEventsProcess::spawn_binary(binary, &["worker"], &env);
    let pid = worker.pid();
    let deadline = started + Duration::from_secs(120 + changes / 100);
    loop {
        if count_runs(&poll).await? >= changes {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the worker ran {} of {changes} actions in time; log:\n{}",
                count_runs(&poll).await?,
                worker.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time(pid).unwrap_or_default();
    let rss = peak_rss_kib(pid).unwrap_or(0);
    worker.terminate();
    worker.wait(Duration::from_secs(30)).await;
    let written = pg.query_text("SELECT count(*)::text FROM bench_done").await.unwrap_or_default();
    if written != changes.to_string() {
        bail!("the SQL action wrote {written} rows for {changes} events");
    }
    queue.delete().await;
    Ok(ActionsRun {
        concurrency,
        actions: changes,
        seconds: elapsed.as_secs_f64(),
        actions_per_s: changes as f64 / elapsed.as_secs_f64(),
        worker_cpu_us_per_action: cpu.as_secs_f64() * 1e6 / changes as f64,
        worker_peak_rss_mib: rss as f64 / 1024.0,
    })
}
