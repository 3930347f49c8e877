//! Results: one record per scenario, printed as a table and optionally written as JSON.

use std::time::Duration;

use serde::Serialize;

use crate::latency::Latency;

/// A timed run over `items` items.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rate {
    pub seconds: f64,
    pub per_second: f64,
}

impl Rate {
    pub fn new(items: u64, elapsed: Duration) -> Rate {
        let seconds = elapsed.as_secs_f64();
        Rate { seconds, per_second: if seconds > 0.0 { items as f64 / seconds } else { 0.0 } }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub changes: u64,
    pub transactions: u64,
    pub mean_event_bytes: Option<u64>,
    /// `pg_recvlogical` draining the slot to /dev/null.
    pub decode_limit: Option<Rate>,
    /// amqprs publishing the same number of messages of the mean size with confirms.
    pub broker_limit_amqprs: Option<Rate>,
    /// lapin doing the same.
    pub broker_limit_lapin: Option<Rate>,
    /// A publisher over the stream protocol doing the same into a stream.
    pub broker_limit_stream: Option<Rate>,
    /// `pgevents producer` draining the slot until every message is confirmed in a queue.
    pub producer: Option<Rate>,
    /// The same, timed from its first event published to the broker's confirm of the last one
    /// (as the broker limits are).
    pub producer_to_confirm: Option<Rate>,
    /// producer (to the last confirm where measured) / min(decode limit, fastest broker limit).
    pub producer_ratio: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub cpu_us_per_event: Option<f64>,
    /// How busy the machine's CPUs were while the producer ran (0 to 1).
    pub machine_busy: Option<f64>,
    pub latency: Option<Latency>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fanout: Vec<crate::fanout::Fanout>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<crate::actions::ActionsRun>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backfill: Vec<crate::backfill::BackfillRun>,
}

impl ScenarioResult {
    /// Fills `producer_ratio` from the measured rates.
    pub fn compute_ratio(&mut self) {
        let broker = [self.broker_limit_amqprs, self.broker_limit_lapin, self.broker_limit_stream]
            .into_iter()
            .flatten()
            .map(|r| r.per_second)
            .fold(None, |best: Option<f64>, r| Some(best.map_or(r, |b| b.max(r))));
        let limit = match (self.decode_limit.map(|r| r.per_second), broker) {
            (Some(d), Some(b)) => Some(d.min(b)),
            (d, b) => d.or(b),
        };
        // Like for like: the broker limits are timed to their last confirm.
        self.producer_ratio = match (self.producer_to_confirm.or(self.producer), limit) {
            (Some(p), Some(limit)) if limit > 0.0 => Some(p.per_second / limit),
            _ => None,
        };
    }
}

fn rate(r: Option<Rate>) -> String {
    r.map(|r| format!("{:>9.0}/s ({:.2}s)", r.per_second, r.seconds)).unwrap_or_else(|| "-".into())
}

/// Prints the results as a table on stdout.
pub fn print(results: &[ScenarioResult]) {
    for r in results {
        println!("\n== {} ({} changes, {} transactions)", r.name, r.changes, r.transactions);
        if let Some(bytes) = r.mean_event_bytes {
            println!("  mean event size          {bytes} bytes");
        }
        if r.producer.is_some() {
            println!("  decode limit (pg_recvlogical)   {}", rate(r.decode_limit));
            println!("  broker limit (amqprs)           {}", rate(r.broker_limit_amqprs));
            println!("  broker limit (lapin)            {}", rate(r.broker_limit_lapin));
            if r.broker_limit_stream.is_some() {
                println!("  broker limit (stream protocol)  {}", rate(r.broker_limit_stream));
            }
            println!("  pgevents producer               {}", rate(r.producer));
        }
        if r.producer_to_confirm.is_some() {
            println!("  ... first publish to last confirm {}", rate(r.producer_to_confirm));
        }
        if let Some(ratio) = r.producer_ratio {
            println!("  producer / min(decode, fastest broker) {:.0}%", ratio * 100.0);
        }
        if let Some(rss) = r.peak_rss_mib {
            println!("  producer peak RSS               {rss:.1} MiB");
        }
        if let Some(cpu) = r.cpu_us_per_event {
            println!("  producer CPU per event          {cpu:.2} µs");
        }
        if let Some(busy) = r.machine_busy {
            println!("  machine CPUs busy meanwhile     {:.0}% (PostgreSQL, RabbitMQ, producer)", busy * 100.0);
        }
        if let Some(l) = &r.latency {
            println!(
                "  commit-to-delivery at {}/s      p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} transactions)",
                l.rate_per_s, l.p50_ms, l.p99_ms, l.max_ms, l.transactions
            );
            if let (Some(p50), Some(p99)) = (l.confirm_p50_ms, l.confirm_p99_ms) {
                println!("  producer commit-to-confirm      p50 <= {p50} ms, p99 <= {p99} ms (histogram buckets)");
            }
            if let Some([p50, p99, max]) = l.broker_only_ms {
                println!("  RabbitMQ alone, publish-to-confirm p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms");
            }
            let worst: Vec<String> = l.worst_at_ms.iter().map(|t| format!("{t:.0}")).collect();
            println!("  worst latencies at (ms into the run) {}", worst.join(", "));
        }
        for b in &r.backfill {
            let p99 = b.confirm_p99_ms.map(|p| format!("{p:.1} ms")).unwrap_or_else(|| "-".into());
            println!(
                "  backfill of {} rows, live at {}/s, cap {} rows/s   {:.0} rows/s ({:.2}s), live changes {:.0}/s meanwhile, commit-to-confirm p99 {p99}, chunks read again {}",
                b.rows, b.live_rate_per_s, b.max_rows_per_s, b.rows_per_s, b.seconds, b.live_changes_per_s, b.chunks_retried
            );
        }
        for a in &r.actions {
            println!(
                "  sync SQL actions, concurrency {}  {:.0} actions/s ({} in {:.2}s), worker CPU {:.0} µs/action, peak RSS {:.1} MiB",
                a.concurrency, a.actions_per_s, a.actions, a.seconds, a.worker_cpu_us_per_action, a.worker_peak_rss_mib
            );
        }
        if !r.fanout.is_empty() {
            println!(
                "  {:>11} {:>14} {:>12} {:>22} {:>14} {:>14} {:>13} {:>8}",
                "subscribers",
                "deliveries/s",
                "CPU/delivery",
                "latency p50/p99 (ms)",
                "at events/s",
                "idle KiB/sub",
                "peak RSS MiB",
                "channels"
            );
        }
        for f in &r.fanout {
            println!(
                "  {:>11} {:>14.0} {:>10.2}µs {:>11.1} / {:>8.1} {:>14} {:>14.1} {:>13.1} {:>8}",
                f.clients,
                f.deliveries_per_s,
                f.gateway_cpu_us_per_delivery,
                f.latency_p50_ms,
                f.latency_p99_ms,
                f.latency_rate_per_s,
                f.idle_rss_kib_per_client,
                f.gateway_peak_rss_mib,
                f.amqp_channels
            );
        }
    }
}
