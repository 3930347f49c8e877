//! The producer's run: `pgevents producer` draining a slot until every message is confirmed in
//! the bench queue, with its peak RSS and CPU time.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use pgevents_testkit::{PgCluster, PgEventsProcess};

use crate::broker::BenchQueue;
use crate::procstat::{cpu_time, peak_rss_kib, MachineCpu};

#[derive(Debug, Clone)]
pub struct ProducerRun {
    /// From start to the last message in the queue.
    pub elapsed: Duration,
    /// From its first event published to the broker's confirm of the last one, as the
    /// broker-limit publishers are timed (connecting and starting replication left out), read
    /// from the producer's `/metrics` every 20 ms.
    pub confirmed: Option<Duration>,
    pub peak_rss_kib: u64,
    pub cpu: Duration,
    /// How busy the machine's CPUs were during the run (0 to 1): PostgreSQL, RabbitMQ and the
    /// producer share them.
    pub machine_busy: Option<f64>,
}

/// Environment of a producer reading `slot` on `pg` into the queue's exchange.
pub fn producer_env(pg: &PgCluster, queue: &BenchQueue, slot: &str) -> Vec<(String, String)> {
    let mut env = pg.env();
    env.extend([
        ("RABBITMQ_URL".to_owned(), queue.url.clone()),
        ("RABBITMQ_EXCHANGE".to_owned(), queue.exchange.clone()),
        ("PGSLOT".to_owned(), slot.to_owned()),
        ("PGTABLES".to_owned(), "public.bench".to_owned()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ]);
    env
}

/// Starts the producer on `slot` and waits until `expected` messages are in the queue.
pub async fn drain(
    binary: &Path,
    pg: &PgCluster,
    queue: &BenchQueue,
    slot: &str,
    expected: u64,
    timeout: Duration,
) -> anyhow::Result<ProducerRun> {
    drain_with(binary, producer_env(pg, queue, slot), queue, expected, timeout).await
}

/// [`drain`] with the producer's environment given.
pub async fn drain_with(
    binary: &Path,
    env: Vec<(String, String)>,
    queue: &BenchQueue,
    expected: u64,
    timeout: Duration,
) -> anyhow::Result<ProducerRun> {
    let metrics = pgevents_testkit::free_local_addr();
    let mut env = env;
    env.retain(|(k, _)| k != "PGEVENTS_METRICS_ADDR");
    env.push(("PGEVENTS_METRICS_ADDR".to_owned(), metrics.to_string()));
    let started = Instant::now();
    let machine = MachineCpu::now();
    let mut producer = PgEventsProcess::spawn_binary(binary, &["producer"], &env);
    let pid = producer.pid();
    let confirmed = confirmed_all(metrics, expected, timeout).await;
    let machine_busy = machine.zip(MachineCpu::now()).map(|(before, after)| after.busy_since(&before));
    let arrived = queue.wait_for_depth(expected, timeout).await?;
    let elapsed = started.elapsed();
    let peak_rss_kib = peak_rss_kib(pid).unwrap_or(0);
    let cpu = cpu_time(pid).unwrap_or_default();
    producer.terminate();
    let code = producer.wait(Duration::from_secs(30)).await;
    if !arrived {
        bail!(
            "only {} of {expected} messages arrived within {timeout:?}; producer log:\n{}",
            queue.depth().await?,
            producer.stderr()
        );
    }
    if code != Some(0) {
        bail!("the producer exited with {code:?}; log:\n{}", producer.stderr());
    }
    Ok(ProducerRun { elapsed, confirmed, peak_rss_kib, cpu, machine_busy })
}

/// How long from the producer's first event published until its metrics say `expected` events
/// are confirmed; `None` after `timeout` (polled every 20 ms: the figure is that much coarser).
pub(crate) async fn confirmed_all(metrics: std::net::SocketAddr, expected: u64, timeout: Duration) -> Option<Duration> {
    let deadline = Instant::now() + timeout;
    let mut first_published: Option<Instant> = None;
    while Instant::now() < deadline {
        if let Some((_, text)) = pgevents_testkit::http_get(metrics, "/metrics").await {
            let value = |series| pgevents_testkit::metric_value(&text, series).unwrap_or(0.0);
            if first_published.is_none() && value("pgevents_events_published_total") > 0.0 {
                first_published = Some(Instant::now());
            }
            if value("pgevents_events_confirmed_total") >= expected as f64 {
                return first_published.map(|first| first.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
