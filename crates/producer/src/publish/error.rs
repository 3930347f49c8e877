//! Why publishing failed, classified where the failure is made: a transport's own error keeps
//! its kind; a refused message or a lost connection is transient (it is published again on a new
//! connection), an acknowledgement for a message never sent is a broken protocol.

use pgevents_amqp::{AmqpError, Cause, UnknownTag};
use pgevents_retry::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error(transparent)]
    Stream(#[from] pgevents_stream::StreamError),
    #[error("RabbitMQ refused (nacked) a message; it will be published again after reconnecting")]
    Nacked,
    #[error("RabbitMQ returned a message for routing key {routing_key:?} ({reply_code} {reply_text}): no queue is bound for it and --mandatory is on; bind a queue, or turn --mandatory off to let RabbitMQ drop unroutable events")]
    Returned { routing_key: String, reply_code: u16, reply_text: String },
    #[error("RabbitMQ connection lost: {0}")]
    Closed(Cause),
    #[error(transparent)]
    UnknownTag(#[from] UnknownTag),
}

impl PublishError {
    /// Whether reconnecting may help.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PublishError::Amqp(e) => e.kind(),
            PublishError::Stream(e) => e.kind(),
            PublishError::Closed(Cause::Refused(reply)) => reply.kind(),
            PublishError::Nacked | PublishError::Returned { .. } | PublishError::Closed(_) => ErrorKind::Transient,
            PublishError::UnknownTag(_) => ErrorKind::Permanent,
        }
    }

    /// A short label for the `pgevents_errors_total` metric.
    pub fn label(&self) -> &'static str {
        match self {
            PublishError::Amqp(_) | PublishError::Closed(_) => "broker",
            PublishError::Stream(_) => "stream",
            PublishError::Nacked => "nacked",
            PublishError::Returned { .. } => "returned",
            PublishError::UnknownTag(_) => "protocol",
        }
    }
}
