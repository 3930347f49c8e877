//! Everything that can stop a producer session, and which of it is worth retrying.

use pgevents_amqp::AmqpError;
use pgevents_decode::DecodeError;
use pgevents_replication::ReplicationError;

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    /// A setting is wrong; nothing will work until it is changed.
    #[error("{0}")]
    Config(String),
    /// The database is not set up for logical replication the way the settings need.
    #[error("{0}")]
    Setup(String),
    #[error("replication slot {slot:?} is in use by another connection (PID {pid}) that is not a pgevents producer (pg_recvlogical or another tool?); stop it, or choose another --pgslot")]
    SlotBusy { slot: String, pid: String },
    #[error("{context}: {message}")]
    Postgres { context: String, message: String, transient: bool },
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("RabbitMQ refused (nacked) a message; it will be published again after reconnecting")]
    Nacked,
    #[error("RabbitMQ returned a message for routing key {routing_key:?} ({reply_code} {reply_text}): no queue is bound for it and --mandatory is on; bind a queue, or turn --mandatory off to let RabbitMQ drop unroutable events")]
    Returned { routing_key: String, reply_code: u16, reply_text: String },
    #[error("RabbitMQ has not confirmed {in_flight} published messages for {seconds}s")]
    ConfirmTimeout { in_flight: u64, seconds: u64 },
    #[error("RabbitMQ connection lost: {0}")]
    BrokerClosed(String),
    #[error("{0}")]
    Protocol(String),
    #[error("cannot decode a change: {0}")]
    Decode(DecodeError),
    #[error("transaction spill file: {0}")]
    Spill(#[from] std::io::Error),
    #[error("PostgreSQL ended the replication stream")]
    StreamEnded,
}

impl ProducerError {
    /// A short label for the `pgevents_errors_total` metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ProducerError::Config(_) | ProducerError::Setup(_) => "setup",
            ProducerError::SlotBusy { .. } => "slot_busy",
            ProducerError::Postgres { .. } | ProducerError::Replication(_) | ProducerError::StreamEnded => "postgres",
            ProducerError::Amqp(_) | ProducerError::BrokerClosed(_) | ProducerError::ConfirmTimeout { .. } => "broker",
            ProducerError::Nacked => "nacked",
            ProducerError::Returned { .. } => "returned",
            ProducerError::Protocol(_) => "protocol",
            ProducerError::Decode(_) => "decode",
            ProducerError::Spill(_) => "spill",
        }
    }

    /// Whether reconnecting later may help (once the pipeline has worked at least once).
    pub fn is_transient(&self) -> bool {
        match self {
            ProducerError::Config(_)
            | ProducerError::Setup(_)
            | ProducerError::Decode(_)
            | ProducerError::Protocol(_) => false,
            ProducerError::SlotBusy { .. } => true,
            ProducerError::Postgres { transient, .. } => *transient,
            ProducerError::Replication(e) => e.is_transient(),
            ProducerError::Amqp(e) => match e {
                AmqpError::Connect { reason, .. } => !reason.contains("ACCESS_REFUSED"),
                AmqpError::Closed(_) => true,
                AmqpError::Operation { reason, .. } => {
                    !reason.contains("PRECONDITION_FAILED") && !reason.contains("ACCESS_REFUSED")
                }
                AmqpError::InvalidUrl(_) | AmqpError::InvalidName { .. } => false,
            },
            ProducerError::Nacked
            | ProducerError::Returned { .. }
            | ProducerError::ConfirmTimeout { .. }
            | ProducerError::BrokerClosed(_)
            | ProducerError::Spill(_)
            | ProducerError::StreamEnded => true,
        }
    }
}

/// Describes a tokio-postgres error with the server's message, detail and hint (its own Display
/// only says "db error").
pub fn describe_pg(e: &tokio_postgres::Error) -> String {
    pgevents_replication::describe_sql_error(e)
}

/// Wraps a tokio-postgres error; connection problems and server restarts are transient.
pub fn pg_error(context: impl Into<String>, e: tokio_postgres::Error) -> ProducerError {
    let transient = pgevents_replication::sql_error_is_transient(&e);
    ProducerError::Postgres { context: context.into(), message: describe_pg(&e), transient }
}
