//! SSE fan-out of `pgevents serve`: for each number of subscribers, all connected at once, every
//! one receiving every event:
//!
//! - the gateway's resident memory per idle subscriber (RSS after connecting them, minus before,
//!   divided by their number) and the AMQP channels its connection uses;
//! - throughput: events written in 1,000-row transactions, the clock stops when every subscriber
//!   has every event; deliveries/s and the gateway's CPU time per delivery;
//! - latency: single-row transactions at a steady rate (about 100,000 deliveries/s in all),
//!   commit time (the event's `commit_time`) to arrival at the subscriber, p50 and p99.
//!
//! The producer, the gateway (both release builds), RabbitMQ, PostgreSQL and the subscribers all
//! run on the same machine.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgevents_testkit::{
    amqp_url, connection_channels, delete_exchange, delete_queue, free_local_addr, http_get, unique_name, PgCluster,
    PgEventsProcess,
};
use serde::Serialize;

use crate::latency::write_at_rate;
use crate::procstat::{cpu_time, peak_rss_kib, rss_kib};
use crate::sse_load::{quantile_ms, subscribe, Tally};

/// One number of subscribers, measured.
#[derive(Debug, Clone, Serialize)]
pub struct Fanout {
    pub clients: u64,
    pub events: u64,
    pub seconds: f64,
    pub deliveries_per_s: f64,
    pub gateway_cpu_us_per_delivery: f64,
    pub idle_rss_kib_per_client: f64,
    pub gateway_peak_rss_mib: f64,
    pub amqp_channels: u32,
    /// Events/s of the latency phase (each to every subscriber).
    pub latency_rate_per_s: u64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

/// What the fan-out scenario is asked to do.
#[derive(Debug, Clone)]
pub struct FanoutPlan {
    pub clients: Vec<u64>,
    /// Deliveries of the throughput phase (events = deliveries / clients, at least 100).
    pub deliveries: u64,
    pub latency_seconds: u64,
}

/// Subscribers connected at once.
const WAVE: usize = 500;
/// Deliveries per second aimed at in the latency phase.
const LATENCY_DELIVERIES_PER_S: u64 = 100_000;

pub async fn measure(binary: &Path, pg: &PgCluster, slot: &str, plan: &FanoutPlan) -> anyhow::Result<Vec<Fanout>> {
    let exchange = unique_name("bench_fanout");
    let stream = unique_name("bench_history");
    let mut env = pg.env();
    env.extend([
        ("RABBITMQ_URL".to_owned(), amqp_url()),
        ("RABBITMQ_EXCHANGE".to_owned(), exchange.clone()),
        ("PGSLOT".to_owned(), slot.to_owned()),
        ("PGTABLES".to_owned(), "public.bench".to_owned()),
        ("PGEVENTS_HISTORY_STREAM".to_owned(), stream.clone()),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ]);
    let mut producer = PgEventsProcess::spawn_binary(binary, &["producer"], &env);
    producer.wait_for_log("streaming", Duration::from_secs(30)).await;
    let mut runs = Vec::new();
    let mut next_id = 1u64;
    for &clients in &plan.clients {
        eprintln!("[Fanout] {clients} subscribers");
        let run = one(binary, pg, &exchange, &stream, clients, plan, &mut next_id).await;
        match run {
            Ok(run) => runs.push(run),
            Err(e) => {
                producer.terminate();
                let _ = producer.wait(Duration::from_secs(30)).await;
                return Err(e.context(format!("{clients} subscribers")));
            }
        }
    }
    producer.terminate();
    let _ = producer.wait(Duration::from_secs(30)).await;
    delete_queue(&stream).await;
    delete_exchange(&exchange).await;
    Ok(runs)
}

async fn one(
    binary: &Path,
    pg: &PgCluster,
    exchange: &str,
    stream: &str,
    clients: u64,
    plan: &FanoutPlan,
    next_id: &mut u64,
) -> anyhow::Result<Fanout> {
    let addr = free_local_addr();
    let env = vec![
        ("RABBITMQ_URL".to_owned(), amqp_url()),
        ("RABBITMQ_EXCHANGE".to_owned(), exchange.to_owned()),
        ("PGEVENTS_HISTORY_STREAM".to_owned(), stream.to_owned()),
        ("PGEVENTS_LISTEN".to_owned(), addr.to_string()),
        ("PGEVENTS_MAX_CLIENTS".to_owned(), (clients + 100).to_string()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ];
    let mut gateway = PgEventsProcess::spawn_binary(binary, &["serve"], &env);
    let pid = gateway.pid();
    let ready = wait(Duration::from_secs(30), || async {
        http_get(addr, "/readyz").await.is_some_and(|(status, _)| status == 200)
    })
    .await;
    if !ready {
        bail!("the gateway did not become ready:\n{}", gateway.stderr());
    }
    let rss_before = rss_kib(pid).unwrap_or(0);

    // Connect every subscriber, in waves.
    let tally = Arc::new(Tally::default());
    let mut readers = Vec::with_capacity(clients as usize);
    let ids: Vec<u64> = (0..clients).collect();
    for wave in ids.chunks(WAVE) {
        let connects: Vec<_> = wave
            .iter()
            .map(|&i| {
                let tally = tally.clone();
                tokio::spawn(async move { subscribe(addr, &format!("/events?consumer_id=bench-{i}"), tally).await })
            })
            .collect();
        for connect in connects {
            readers.push(connect.await.context("connect task")??);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_kib(pid).unwrap_or(0);
    let channels = connection_channels(&format!("pgevents serve ({stream})")).unwrap_or(0);

    // Throughput.
    let events = (plan.deliveries / clients).max(100);
    let expected = clients * events;
    let cpu_before = cpu_time(pid).unwrap_or_default();
    let started = Instant::now();
    let db = pg.client().await;
    let mut written = 0;
    while written < events {
        let n = (events - written).min(1000);
        let (from, to) = (*next_id + written, *next_id + written + n - 1);
        db.batch_execute(&format!(
            "INSERT INTO bench (id, i, t, n, arr, j) SELECT g, g, 'fanout', 1.5, ARRAY['a'], '{{}}' FROM generate_series({from}, {to}) g"
        ))
        .await
        .context("insert the fan-out rows")?;
        written += n;
    }
    *next_id += events;
    let timeout = Duration::from_secs(120 + expected / 20_000);
    let arrived = wait(timeout, || async { tally.delivered() >= expected }).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_time(pid).unwrap_or_default().saturating_sub(cpu_before);
    if !arrived {
        bail!("only {} of {expected} deliveries within {timeout:?}", tally.delivered());
    }

    // Latency at a steady rate.
    let rate = (LATENCY_DELIVERIES_PER_S / clients).clamp(1, 1000);
    let total = rate * plan.latency_seconds;
    let base = tally.delivered();
    tally.phase.store(1, Ordering::Relaxed);
    write_at_rate(pg, rate, total, *next_id).await?;
    *next_id += total;
    let arrived = wait(Duration::from_secs(60), || async { tally.delivered() >= base + total * clients }).await;
    tally.phase.store(2, Ordering::Relaxed);
    // One more event to move every subscriber to phase 2, flushing its latencies.
    write_at_rate(pg, 10, 1, *next_id).await?;
    *next_id += 1;
    let _ = wait(Duration::from_secs(60), || async { tally.delivered() > base + total * clients }).await;
    if !arrived {
        bail!("the latency phase's events did not all arrive");
    }
    let peak_rss = peak_rss_kib(pid).unwrap_or(0);

    gateway.terminate();
    let _ = gateway.wait(Duration::from_secs(30)).await;
    for reader in readers {
        let _ = reader.await;
    }
    if tally.closed.load(Ordering::Relaxed) != clients {
        bail!("not every subscriber's stream ended with the gateway");
    }
    let mut latencies = tally.latencies[0].lock().map(|l| l.clone()).unwrap_or_default();
    latencies.sort_unstable();
    Ok(Fanout {
        clients,
        events,
        seconds,
        deliveries_per_s: expected as f64 / seconds,
        gateway_cpu_us_per_delivery: cpu.as_secs_f64() * 1e6 / expected as f64,
        idle_rss_kib_per_client: rss_idle.saturating_sub(rss_before) as f64 / clients as f64,
        gateway_peak_rss_mib: peak_rss as f64 / 1024.0,
        amqp_channels: channels,
        latency_rate_per_s: rate,
        latency_p50_ms: quantile_ms(&latencies, 0.50),
        latency_p99_ms: quantile_ms(&latencies, 0.99),
    })
}

/// Polls `done` every 20 ms until it holds (`true`) or `timeout` passes (`false`).
async fn wait<F, Fut>(timeout: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
