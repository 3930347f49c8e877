//! Everything that can stop a producer session, each with the [`ErrorKind`] that decides
//! whether reconnecting can help (taken from the error it wraps, which classified itself where it
//! was made).

use pgevents_amqp::AmqpError;
use pgevents_decode::DecodeError;
use pgevents_pg::{ErrorKind, PgError};
use pgevents_replication::ReplicationError;

use crate::publish::PublishError;

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    /// A setting is wrong; nothing will work until it is changed.
    #[error("{0}")]
    Config(String),
    /// The database is not set up for logical replication the way the settings need.
    #[error("{0}")]
    Setup(String),
    #[error("replication slot {slot:?} is in use by another connection (PID {}) that is not a pgevents producer (pg_recvlogical or another tool?); stop it, or choose another --pgslot", pid.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into()))]
    SlotBusy { slot: String, pid: Option<i32> },
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("RabbitMQ has not confirmed {in_flight} published messages for {seconds}s")]
    ConfirmTimeout { in_flight: u64, seconds: u64 },
    #[error("{0}")]
    Protocol(String),
    #[error("cannot decode a change: {0}")]
    Decode(DecodeError),
    #[error("transaction spill file: {0}")]
    Spill(#[from] std::io::Error),
    #[error("PostgreSQL ended the replication stream")]
    StreamEnded,
    /// The replication stream contradicts itself; reconnecting reads it again from the
    /// confirmed position.
    #[error("{0}; reading the stream again from the confirmed position")]
    Inconsistent(String),
    /// An event larger than the broker takes, under `--oversize fail` (or too large even with
    /// its values left out).
    #[error("event {message_id} of {table} is {bytes} bytes, above --max-message-bytes {limit}{}; nothing after it is published: raise --max-message-bytes (and RabbitMQ's max_message_size) or start with --oversize stub to publish it with its largest values left out", why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default())]
    Oversize { table: String, message_id: String, bytes: usize, limit: usize, why: Option<String> },
}

impl ProducerError {
    /// Whether reconnecting may help (once the pipeline has worked at least once).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProducerError::Config(_) | ProducerError::Setup(_) | ProducerError::Oversize { .. } => ErrorKind::Config,
            ProducerError::Decode(_) | ProducerError::Protocol(_) => ErrorKind::Permanent,
            ProducerError::Postgres(e) => e.kind(),
            ProducerError::Replication(e) => e.kind(),
            ProducerError::Publish(e) => e.kind(),
            ProducerError::SlotBusy { .. }
            | ProducerError::ConfirmTimeout { .. }
            | ProducerError::Spill(_)
            | ProducerError::StreamEnded
            | ProducerError::Inconsistent(_) => ErrorKind::Transient,
        }
    }

    /// A short label for the `pgevents_errors_total` metric.
    pub fn label(&self) -> &'static str {
        match self {
            ProducerError::Config(_) | ProducerError::Setup(_) => "setup",
            ProducerError::SlotBusy { .. } => "slot_busy",
            ProducerError::Postgres(_) | ProducerError::Replication(_) | ProducerError::StreamEnded => "postgres",
            ProducerError::Publish(e) => e.label(),
            ProducerError::ConfirmTimeout { .. } => "broker",
            ProducerError::Protocol(_) | ProducerError::Inconsistent(_) => "protocol",
            ProducerError::Decode(_) => "decode",
            ProducerError::Spill(_) => "spill",
            ProducerError::Oversize { .. } => "oversize",
        }
    }
}

impl From<AmqpError> for ProducerError {
    fn from(e: AmqpError) -> Self {
        ProducerError::Publish(e.into())
    }
}

/// Wraps a tokio-postgres error with what was being done.
pub fn pg_error(context: impl Into<String>, e: tokio_postgres::Error) -> ProducerError {
    PgError::new(context, e).into()
}
