//! Test support for pgevents' end-to-end tests: real servers, never mocks.
//!
//! - [`PgCluster`]: a throwaway PostgreSQL cluster (initdb + pg_ctl in a temporary directory,
//!   `wal_level=logical`, a free port, SCRAM passwords, optional TLS).
//! - [`unique_name`] and [`EventQueue`]: per-test exchange/queue names on the local RabbitMQ and
//!   a queue that collects what the producer publishes.
//! - [`PgEventsProcess`]: the `pgevents` binary as a child process (signals, exit status, logs).

mod broker;
mod http;
mod http_recorder;
mod impostor;
mod pg;
mod process;
mod proxy;
mod rabbit_node;
mod sse;
mod stream;
mod tls;
mod writer;

pub use broker::{
    amqp_url, connection_channels, consistent_hash_exchange, delete_exchange, delete_queue, publish_message,
    publish_raw, publish_raw_to, unique_name, EventQueue, ReceivedEvent,
};
pub use http::{free_local_addr, http_get, metric_value};
pub use http_recorder::{HttpRecorder, RecordedRequest, Reply};
pub use impostor::{ImpostorPg, ImpostorPlay};
pub use pg::{pg_bin_dir, PgCluster, PgOptions};
/// A message as delivered (headers and properties), for messages that are not events.
pub use pgevents_amqp::Delivery;
pub use process::{pgevents_binary, PgEventsProcess};
pub use proxy::FaultProxy;
pub use rabbit_node::{RabbitCluster, RabbitNode};
pub use sse::{SseClient, SseMessage};
pub use stream::{
    connections_to, delete_stream, read_stream, read_stream_at, stream_connections_of, stream_url, StreamRecord,
};
pub use tls::{server_tls_acceptor, CertPair, TestCa};
pub use writer::{write_ab_rows, write_ab_sequence, AB_TABLES};

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
