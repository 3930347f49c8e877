//! The pgevents benchmark: how fast the producer drains a slot, against the two limits it
//! cannot beat, measured in one run on the same local PostgreSQL and RabbitMQ.
//!
//! - the **decode limit**: `pg_recvlogical` draining the same slot contents to `/dev/null`;
//! - the **broker limit**: the fastest publishers with confirms we can write (amqprs and lapin,
//!   many messages in flight) sending the same number of messages of the same size;
//! - the **producer**: `pgevents producer` (release build) draining the slot until every message
//!   sits confirmed in a queue bound to the exchange; with its peak RSS and CPU time per event;
//! - the commit-to-delivery **latency** at a steady rate of single-row transactions;
//! - the SSE **fan-out** of `pgevents serve` to many concurrent subscribers;
//! - the **stream** output (`--publish-to stream`): catch-up beside the stream protocol's own
//!   limit, and latency.
//!
//! Run it with `cargo bench -p pgevents-bench` (see `--help` after `--`). The same crate holds
//! the soak test of the fault suite: `cargo run -p pgevents-bench --bin pgevents-soak -- --rounds 100`.

pub mod actions;
mod args;
pub mod backfill;
mod binary;
pub mod broker;
pub mod broker_limit;
pub mod decode_limit;
pub mod fanout;
pub mod latency;
pub mod procstat;
pub mod producer_run;
pub mod report;
pub mod scenario;
pub mod soak;
pub mod sse_load;
pub mod stream_run;
pub mod workload;

pub use args::{BenchArgs, QueueKind, Scenario};
pub use binary::{binary_or_release, release_binary, run_main};
