//! One scenario, end to end: a fresh cluster, slots that retain the workload, the workload, then
//! each measurement in turn on the same data.

use std::path::Path;
use std::time::Duration;

use anyhow::ensure;
use pgevents_testkit::{amqp_url, free_local_addr, http_get, unique_name, PgEventsProcess};

use crate::args::{BenchArgs, QueueKind, Scenario};
use crate::broker::BenchQueue;
use crate::report::{Rate, ScenarioResult};
use crate::{broker_limit, decode_limit, fanout, latency, producer_run, stream_run, workload};

const DECODE_SLOT: &str = "bench_decode_limit";
const PRODUCER_SLOT: &str = "bench_producer";

/// Generous: the slowest expected rate on a 2-core machine is a few thousand changes per second.
fn drain_timeout(changes: u64) -> Duration {
    Duration::from_secs(60 + changes / 1000)
}

pub async fn run(args: &BenchArgs, binary: &Path, scenario: Scenario) -> anyhow::Result<Vec<ScenarioResult>> {
    let one = match scenario {
        Scenario::Latency => latency_run(args, binary).await,
        Scenario::Fanout => fanout_run(args, binary).await,
        Scenario::Actions => actions_run(args, binary).await,
        Scenario::Backfill => backfill_run(args, binary).await,
        Scenario::Stream => stream_run(args, binary).await,
        Scenario::StreamLatency => stream_latency_run(args, binary).await,
        _ => return throughput_run(args, binary, scenario).await,
    };
    one.map(|result| vec![result])
}

/// The slot the producer drains into a queue of this type.
fn producer_slot(kind: QueueKind) -> String {
    format!("{PRODUCER_SLOT}_{kind:?}").to_lowercase()
}

/// One workload, its decode limit, then for each queue type of `--queue-types`: the producer
/// draining a slot of its own into a queue of that type, and the broker limit into the same.
async fn throughput_run(args: &BenchArgs, binary: &Path, scenario: Scenario) -> anyhow::Result<Vec<ScenarioResult>> {
    let pg = workload::cluster().await;
    let slots: Vec<String> = args.queue_types.iter().map(|kind| producer_slot(*kind)).collect();
    let mut all_slots = vec![DECODE_SLOT];
    all_slots.extend(slots.iter().map(String::as_str));
    workload::prepare(&pg, &all_slots).await?;
    eprintln!("[{scenario:?}] writing the workload");
    let (changes, transactions) = match scenario {
        Scenario::Batched => workload::batched(&pg, args.changes).await?,
        Scenario::Single => workload::single(&pg, args.transactions).await?,
        _ => workload::big_transaction(&pg, args.big_rows).await?,
    };
    let end = workload::end_lsn(&pg).await?;
    eprintln!("[{scenario:?}] decode limit: pg_recvlogical to {end}");
    let decode_limit = Some(Rate::new(changes, decode_limit::drain(&pg, DECODE_SLOT, &end).await?));
    let mut results = Vec::new();
    for kind in &args.queue_types {
        let name = match kind {
            QueueKind::Classic => format!("{scenario:?}").to_lowercase(),
            other => format!("{scenario:?}-{other:?}").to_lowercase(),
        };
        let mut result = ScenarioResult { name, changes, transactions, decode_limit, ..Default::default() };
        into_queue(args, binary, scenario, &pg, *kind, &mut result).await?;
        result.compute_ratio();
        results.push(result);
    }
    Ok(results)
}

/// The producer into a queue of type `kind`, then the broker limit into the same.
async fn into_queue(
    args: &BenchArgs,
    binary: &Path,
    scenario: Scenario,
    pg: &pgevents_testkit::PgCluster,
    kind: QueueKind,
    result: &mut ScenarioResult,
) -> anyhow::Result<()> {
    let changes = result.changes;
    let queue = BenchQueue::declare_kind(&amqp_url(), &unique_name("bench_x"), &unique_name("bench_q"), kind).await?;
    eprintln!("[{scenario:?}] producer into a {kind:?} queue, --headers {}", args.headers);
    let mut env = producer_run::producer_env(pg, &queue, &producer_slot(kind));
    env.push(("PGEVENTS_HEADERS".into(), args.headers.clone()));
    let run = producer_run::drain_with(binary, env, &queue, changes, drain_timeout(changes)).await?;
    result.producer = Some(Rate::new(changes, run.elapsed));
    result.producer_to_confirm = run.confirmed.map(|elapsed| Rate::new(changes, elapsed));
    result.peak_rss_mib = Some(run.peak_rss_kib as f64 / 1024.0);
    result.cpu_us_per_event = Some(run.cpu.as_secs_f64() * 1e6 / changes as f64);
    result.machine_busy = run.machine_busy;

    let (count, bytes, typical) = queue.drain_sizes(changes).await?;
    ensure!(count == changes, "the queue held {count} messages, expected {changes}");
    result.mean_event_bytes = Some(bytes / count.max(1));

    if scenario != Scenario::Bigtx {
        queue.empty().await?;
        eprintln!("[{scenario:?}] broker limit: amqprs into a {kind:?} queue");
        let elapsed = broker_limit::amqprs(&queue, changes, &typical, args.window).await?;
        ensure!(queue.wait_for_depth(changes, Duration::from_secs(30)).await?, "amqprs messages missing");
        result.broker_limit_amqprs = Some(Rate::new(changes, elapsed));
        queue.empty().await?;
        eprintln!("[{scenario:?}] broker limit: lapin into a {kind:?} queue");
        let elapsed = broker_limit::lapin(&queue, changes, &typical, args.window).await?;
        ensure!(queue.wait_for_depth(changes, Duration::from_secs(30)).await?, "lapin messages missing");
        result.broker_limit_lapin = Some(Rate::new(changes, elapsed));
    }
    queue.delete().await;
    Ok(())
}

/// The batched workload into a stream over the stream protocol, beside the decode limit and the
/// stream protocol's own limit (the same number of messages of the producer's typical event).
async fn stream_run(args: &BenchArgs, binary: &Path) -> anyhow::Result<ScenarioResult> {
    let pg = workload::cluster().await;
    workload::prepare(&pg, &[DECODE_SLOT, PRODUCER_SLOT]).await?;
    eprintln!("[Stream] writing the workload");
    let (changes, transactions) = workload::batched(&pg, args.changes).await?;
    let end = workload::end_lsn(&pg).await?;
    let mut result = ScenarioResult { name: "stream".into(), changes, transactions, ..Default::default() };
    eprintln!("[Stream] decode limit: pg_recvlogical to {end}");
    result.decode_limit = Some(Rate::new(changes, decode_limit::drain(&pg, DECODE_SLOT, &end).await?));

    let stream = unique_name("bench_stream");
    eprintln!("[Stream] producer into stream {stream}");
    let mut env = stream_run::producer_env(&pg, &amqp_url(), PRODUCER_SLOT, &stream);
    env.push(("PGEVENTS_HEADERS".into(), args.headers.clone()));
    eprintln!("[Stream] --headers {}", args.headers);
    let run = stream_run::drain(binary, env, changes, drain_timeout(changes)).await?;
    result.producer = Some(Rate::new(changes, run.elapsed));
    result.producer_to_confirm = run.confirmed.map(|elapsed| Rate::new(changes, elapsed));
    result.peak_rss_mib = Some(run.peak_rss_kib as f64 / 1024.0);
    result.cpu_us_per_event = Some(run.cpu.as_secs_f64() * 1e6 / changes as f64);
    result.machine_busy = run.machine_busy;
    let stored = pgevents_testkit::read_stream(&stream, Duration::from_secs(3), usize::MAX).await;
    ensure!(stored.len() as u64 == changes, "the stream holds {} messages, expected {changes}", stored.len());
    result.mean_event_bytes = Some(stored.iter().map(|r| r.body.len() as u64).sum::<u64>() / changes.max(1));
    let typical = stored[stored.len() / 2].clone();
    drop(stored);
    pgevents_testkit::delete_stream(&stream).await;

    let limit_stream = unique_name("bench_stream_limit");
    eprintln!("[Stream] broker limit: the stream protocol into {limit_stream}");
    let elapsed = stream_run::broker_limit(&limit_stream, changes, &typical, args.window).await?;
    result.broker_limit_stream = Some(Rate::new(changes, elapsed));
    pgevents_testkit::delete_stream(&limit_stream).await;
    result.compute_ratio();
    Ok(result)
}

/// Commit-to-delivery latency through a stream, read from it as events arrive.
async fn stream_latency_run(args: &BenchArgs, binary: &Path) -> anyhow::Result<ScenarioResult> {
    let pg = workload::latency_cluster().await;
    workload::prepare(&pg, &[PRODUCER_SLOT]).await?;
    let stream = unique_name("bench_stream");
    let mut env = stream_run::producer_env(&pg, &amqp_url(), PRODUCER_SLOT, &stream);
    env.retain(|(k, _)| k != "RUST_LOG");
    env.push(("RUST_LOG".into(), "info".into()));
    let metrics_addr = free_local_addr();
    env.push(("PGEVENTS_METRICS_ADDR".into(), metrics_addr.to_string()));
    let mut producer = PgEventsProcess::spawn_binary(binary, &["producer"], &env);
    producer.wait_for_log("streaming", Duration::from_secs(30)).await;
    let bodies = stream_run::follow(&stream).await?;
    eprintln!("[StreamLatency] {} transactions/s for {} s", args.rate, args.seconds);
    let measured = latency::measure_bodies(&pg, bodies, args.rate, args.seconds).await;
    let measured = with_confirm_histogram(measured, metrics_addr).await;
    producer.terminate();
    let _ = producer.wait(Duration::from_secs(30)).await;
    pgevents_testkit::delete_stream(&stream).await;
    let measured = measured?;
    Ok(ScenarioResult {
        name: "stream-latency".into(),
        changes: measured.transactions,
        transactions: measured.transactions,
        latency: Some(measured),
        ..Default::default()
    })
}

/// `measured`, with the producer's own view: its histogram of commit time to the broker's
/// confirm, read from its `/metrics` at `metrics_addr`.
async fn with_confirm_histogram(
    measured: anyhow::Result<latency::Latency>,
    metrics_addr: std::net::SocketAddr,
) -> anyhow::Result<latency::Latency> {
    match (measured, http_get(metrics_addr, "/metrics").await) {
        (Ok(mut m), Some((_, text))) => {
            m.confirm_p50_ms = latency::histogram_quantile(&text, "pgevents_commit_to_confirm_seconds", 0.50);
            m.confirm_p99_ms = latency::histogram_quantile(&text, "pgevents_commit_to_confirm_seconds", 0.99);
            Ok(m)
        }
        (other, _) => other,
    }
}

async fn latency_run(args: &BenchArgs, binary: &Path) -> anyhow::Result<ScenarioResult> {
    let pg = workload::latency_cluster().await;
    workload::prepare(&pg, &[PRODUCER_SLOT]).await?;
    let queue = BenchQueue::declare(&amqp_url(), &unique_name("bench_x"), &unique_name("bench_q")).await?;
    let env = producer_run::producer_env(&pg, &queue, PRODUCER_SLOT);
    let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k != "RUST_LOG").collect();
    env.push(("RUST_LOG".into(), "info".into()));
    let metrics_addr = free_local_addr();
    env.push(("PGEVENTS_METRICS_ADDR".into(), metrics_addr.to_string()));
    let mut producer = PgEventsProcess::spawn_binary(binary, &["producer"], &env);
    producer.wait_for_log("streaming", Duration::from_secs(30)).await;
    eprintln!("[Latency] {} transactions/s for {} s", args.rate, args.seconds);
    let measured = latency::measure(&pg, &queue, args.rate, args.seconds).await;
    let measured = with_confirm_histogram(measured, metrics_addr).await;
    producer.terminate();
    let _ = producer.wait(Duration::from_secs(30)).await;
    let measured = match measured {
        Ok(mut m) => {
            queue.purge().await?;
            eprintln!("[Latency] the broker alone at {}/s", args.rate);
            let body = vec![b'x'; 460];
            let broker = broker_limit::amqprs_confirm_latency(&queue, args.rate, args.seconds, &body).await?;
            let at = |q: f64| broker[((broker.len() as f64 * q) as usize).min(broker.len() - 1)] as f64 / 1000.0;
            m.broker_only_ms = Some([at(0.5), at(0.99), at(1.0)]);
            Ok(m)
        }
        err => err,
    };
    queue.delete().await;
    for line in pg.log().lines().filter(|l| l.contains("checkpoint")) {
        eprintln!("[Latency] postgres: {line}");
    }
    let measured = measured?;
    Ok(ScenarioResult {
        name: "latency".into(),
        changes: measured.transactions,
        transactions: measured.transactions,
        latency: Some(measured),
        ..Default::default()
    })
}

async fn fanout_run(args: &BenchArgs, binary: &Path) -> anyhow::Result<ScenarioResult> {
    let pg = workload::latency_cluster().await;
    workload::prepare(&pg, &[PRODUCER_SLOT]).await?;
    let plan = fanout::FanoutPlan {
        clients: args.clients.iter().copied().filter(|&c| c > 0).collect(),
        deliveries: args.fanout_deliveries,
        latency_seconds: args.fanout_latency_seconds.max(1),
    };
    let runs = fanout::measure(binary, &pg, PRODUCER_SLOT, &plan).await?;
    Ok(ScenarioResult {
        name: "fanout".into(),
        changes: runs.iter().map(|r| r.events).sum(),
        transactions: runs.iter().map(|r| r.events.div_ceil(1000)).sum(),
        fanout: runs,
        ..Default::default()
    })
}

async fn actions_run(args: &BenchArgs, binary: &Path) -> anyhow::Result<ScenarioResult> {
    let mut runs = Vec::new();
    for &concurrency in &args.action_concurrency {
        runs.push(crate::actions::measure(binary, PRODUCER_SLOT, args.actions, concurrency.max(1)).await?);
    }
    Ok(ScenarioResult {
        name: "actions".into(),
        changes: args.actions,
        transactions: args.actions.div_ceil(1000) + 1,
        actions: runs,
        ..Default::default()
    })
}

async fn backfill_run(args: &BenchArgs, binary: &Path) -> anyhow::Result<ScenarioResult> {
    let mut runs = Vec::new();
    let mut plan = vec![(0, 0)];
    if args.backfill_live_rate > 0 {
        plan.push((args.backfill_live_rate, 0));
        if args.backfill_max_rows_per_s > 0 {
            plan.push((args.backfill_live_rate, args.backfill_max_rows_per_s));
        }
    }
    for (live, cap) in plan {
        eprintln!(
            "[Backfill] {} rows, live changes at {live}/s, at most {cap} rows/s (0: no limit)",
            args.backfill_rows
        );
        runs.push(crate::backfill::measure(binary, PRODUCER_SLOT, args.backfill_rows, live, cap).await?);
    }
    Ok(ScenarioResult {
        name: "backfill".into(),
        changes: args.backfill_rows,
        transactions: args.backfill_rows.div_ceil(1000),
        backfill: runs,
        ..Default::default()
    })
}
