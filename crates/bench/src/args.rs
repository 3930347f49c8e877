//! Command-line arguments of the benchmark.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// N changes: N/2 inserts in 1,000-row transactions, then one UPDATE of every row.
    Batched,
    /// Single-row transactions: per-transaction overhead dominates.
    Single,
    /// One transaction of many rows: the producer's memory must not grow with it.
    Bigtx,
    /// Commit-to-delivery latency at a steady rate of single-row transactions.
    Latency,
    /// Events/s `pgevents serve` delivers to many concurrent SSE subscribers.
    Fanout,
    /// Sync SQL actions/s of `pgevents worker` (filter, work_item_query, statement, action_run row).
    Actions,
    /// Rows/s of a backfill (`pgevents.snapshot()`), alone and while live changes stream.
    Backfill,
    /// The batched workload into a RabbitMQ stream over the stream protocol (`--publish-to
    /// stream`), beside the decode limit and the stream protocol's own limit.
    Stream,
    /// Commit-to-delivery latency through a stream (`--publish-to stream`), read from it.
    StreamLatency,
}

/// The type of the queue the throughput runs fill through the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// A durable classic queue.
    Classic,
    /// A quorum queue (`x-queue-type: quorum`).
    Quorum,
    /// A stream queue (`x-queue-type: stream`), filled over AMQP.
    Stream,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "pgevents-bench", about = "Measure the pgevents producer against the decode and broker limits")]
pub struct BenchArgs {
    /// Scenarios to run, comma-separated
    #[arg(long, value_enum, value_delimiter = ',', default_value = "batched,single,bigtx,latency")]
    pub scenarios: Vec<Scenario>,
    /// Changes in the batched workload (half inserts, half updates)
    #[arg(long, default_value_t = 200_000)]
    pub changes: u64,
    /// Transactions in the single-row workload
    #[arg(long, default_value_t = 100_000)]
    pub transactions: u64,
    /// Rows of the one big transaction
    #[arg(long, default_value_t = 1_000_000)]
    pub big_rows: u64,
    /// Transactions per second of the latency run
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Seconds of the latency run
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Numbers of SSE subscribers of the fan-out run, comma-separated (all connected at once)
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000,10000")]
    pub clients: Vec<u64>,
    /// Deliveries of each fan-out throughput run (events = deliveries / subscribers, at least 100)
    #[arg(long, default_value_t = 2_000_000)]
    pub fanout_deliveries: u64,
    /// Seconds of each fan-out latency run
    #[arg(long, default_value_t = 5)]
    pub fanout_latency_seconds: u64,
    /// Events (= actions) of the actions run
    #[arg(long, default_value_t = 20_000)]
    pub actions: u64,
    /// Worker concurrencies of the actions run, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub action_concurrency: Vec<usize>,
    /// Rows of the table the backfill run reads
    #[arg(long, default_value_t = 200_000)]
    pub backfill_rows: u64,
    /// Live single-row transactions per second during the second backfill run (0: only the first)
    #[arg(long, default_value_t = 2_000)]
    pub backfill_live_rate: u64,
    /// `--backfill-max-rows-per-s` of a third backfill run, with live changes (0: no such run)
    #[arg(long, default_value_t = 5_000)]
    pub backfill_max_rows_per_s: u64,
    /// Queue types the throughput scenarios (batched, single, bigtx) fill, comma-separated: each is
    /// measured in turn on the same workload, beside publishers at the broker's limit into the same
    /// type
    #[arg(long, value_enum, value_delimiter = ',', default_value = "classic")]
    pub queue_types: Vec<QueueKind>,
    /// `--headers` of the producer in the throughput runs (full, minimal or none)
    #[arg(long, default_value = "full")]
    pub headers: String,
    /// Messages in flight for the broker-limit publishers (the producer's default too)
    #[arg(long, default_value_t = 4096)]
    pub window: usize,
    /// Also write the results as JSON to this file
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The pgevents binary [default: target/release/pgevents, built first]
    #[arg(long, env = "PGEVENTS_BIN")]
    pub binary: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    pub bench: bool,
}
