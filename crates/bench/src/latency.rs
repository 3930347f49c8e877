//! Commit-to-delivery latency at a steady rate: single-row transactions written at `rate` per
//! second, each row stamped with `clock_timestamp()`; a consumer on the bench queue compares the
//! stamp with its own clock (the same machine, the same clock) when the event arrives.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use pgevents_testkit::PgCluster;
use serde::Serialize;
use tokio::time::MissedTickBehavior;

use crate::broker::BenchQueue;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub transactions: u64,
    pub rate_per_s: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Where the largest latencies were: milliseconds after the first write.
    pub worst_at_ms: Vec<f64>,
    /// The producer's histogram of commit time to confirm: the upper bound (ms) of the bucket
    /// holding the 50th / 99th percentile.
    pub confirm_p50_ms: Option<f64>,
    pub confirm_p99_ms: Option<f64>,
    /// The broker alone at the same rate, publish to confirm: p50, p99, max (ms).
    pub broker_only_ms: Option<[f64; 3]>,
}

/// The upper bound, in milliseconds, of the histogram bucket holding quantile `q` of the
/// Prometheus histogram `name` (seconds) in `text`.
pub fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets.iter().find(|(_, count)| *count >= total * q).map(|(le, _)| le * 1000.0)
}

/// Connections writing in parallel.
const WRITERS: u64 = 4;
/// Writes are issued in ticks of this length.
const TICK: Duration = Duration::from_millis(10);

/// The `ts` column of an event body (`"2026-11-23T10:00:00.123456Z"`) in Unix microseconds.
fn stamp_micros(body: &[u8]) -> Option<i64> {
    let event: serde_json::Value = serde_json::from_slice(body).ok()?;
    rfc3339_micros(event["new"]["ts"].as_str()?)
}

/// An event's UTC time (`2026-11-23T10:00:00.123456Z`) in Unix microseconds.
pub fn rfc3339_micros(text: &str) -> Option<i64> {
    let pg_form = text.replacen('T', " ", 1).replace('Z', "+00");
    pgevents_decode::time::parse_iso_timestamptz(&pg_form)
}

/// Unix microseconds now.
pub fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Inserts `total` single-row transactions into `bench` at `rate` per second (ids from
/// `first_id`), on a few connections in parallel so that one commit's latency does not slow the
/// rate.
pub async fn write_at_rate(pg: &PgCluster, rate: u64, total: u64, first_id: u64) -> anyhow::Result<()> {
    let per_tick = (rate as f64 * TICK.as_secs_f64()).max(1.0);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = pg.client().await;
        let statement = client
            .prepare("INSERT INTO bench (id, i, t, n, arr, j) VALUES ($1, $1, 'latency', 1.5, ARRAY['a'], '{}')")
            .await
            .context("prepare the latency insert")?;
        let mine = total / WRITERS + u64::from(w < total % WRITERS);
        let share = per_tick / WRITERS as f64;
        writers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let (mut written, mut owed) = (0u64, 0f64);
            while written < mine {
                tick.tick().await;
                owed += share;
                while owed >= 1.0 && written < mine {
                    let id = i32::try_from(first_id + w + written * WRITERS).context("row id")?;
                    client.execute(&statement, &[&id]).await.context("latency insert")?;
                    written += 1;
                    owed -= 1.0;
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for writer in writers {
        writer.await.context("writer task")??;
    }
    Ok(())
}

/// Writes `rate * seconds` single-row transactions at `rate` per second while a producer streams
/// them into `queue`; returns the latency of their arrival.
pub async fn measure(pg: &PgCluster, queue: &BenchQueue, rate: u64, seconds: u64) -> anyhow::Result<Latency> {
    let (tag, mut deliveries) = queue.consume().await?;
    let (tx, bodies) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = deliveries.recv().await {
            if tx.send(message.content.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let measured = measure_bodies(pg, bodies, rate, seconds).await;
    queue.cancel(&tag).await;
    measured
}

/// [`measure`], the events' bodies arriving on `bodies` (from a queue or a stream).
pub async fn measure_bodies(
    pg: &PgCluster,
    mut bodies: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Latency> {
    let total = rate * seconds;
    let collector = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(total as usize);
        let mut worst: Vec<(i64, i64)> = Vec::new();
        while (latencies.len() as u64) < total {
            let body = tokio::time::timeout(Duration::from_secs(60), bodies.recv())
                .await
                .map_err(|_| anyhow!("events stopped arriving after {}", latencies.len()))?
                .ok_or_else(|| anyhow!("the consumer closed"))?;
            let arrived = now_micros();
            if let Some(stamp) = stamp_micros(&body) {
                let latency = (arrived - stamp).max(0);
                latencies.push(latency);
                worst.push((latency, stamp));
                if worst.len() > 64 {
                    worst.sort_unstable_by(|a, b| b.cmp(a));
                    worst.truncate(8);
                }
            }
        }
        worst.sort_unstable_by(|a, b| b.cmp(a));
        worst.truncate(8);
        Ok::<_, anyhow::Error>((latencies, worst))
    });
    let started = now_micros();
    write_at_rate(pg, rate, total, 1).await?;
    let (mut latencies, worst) = collector.await.context("collector task")??;
    let worst_at_ms = worst.iter().map(|(_, stamp)| (stamp - started) as f64 / 1000.0).collect();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)] as f64 / 1000.0;
    Ok(Latency {
        transactions: total,
        rate_per_s: rate,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: at(1.0),
        worst_at_ms,
        confirm_p50_ms: None,
        confirm_p99_ms: None,
        broker_only_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stamp_of_an_event() {
        let body = br#"{"new":{"ts":"2026-11-23T10:00:00.123456Z"}}"#;
        assert_eq!(stamp_micros(body), Some(1_795_428_000_123_456));
        assert_eq!(stamp_micros(b"{}"), None);
    }

    #[test]
    fn reads_histogram_quantiles() {
        let text = "x_bucket{le=\"0.001\"} 10\nx_bucket{le=\"0.005\"} 98\nx_bucket{le=\"0.01\"} 100\nx_bucket{le=\"+Inf\"} 100\n";
        assert_eq!(histogram_quantile(text, "x", 0.5), Some(5.0));
        assert_eq!(histogram_quantile(text, "x", 0.99), Some(10.0));
        assert_eq!(histogram_quantile("", "x", 0.5), None);
    }
}
