//! Errors talking to RabbitMQ.

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("invalid RabbitMQ URL: {0}")]
    InvalidUrl(String),
    #[error("could not connect to RabbitMQ at {url}: {reason}; check RABBITMQ_URL, the credentials, and that the broker is running")]
    Connect { url: String, reason: String },
    #[error("RabbitMQ {operation} failed: {reason}")]
    Operation { operation: String, reason: String },
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName { what: &'static str, name: String, reason: &'static str },
    #[error("the RabbitMQ connection or channel closed: {0}")]
    Closed(String),
}

impl AmqpError {
    pub(crate) fn op(operation: impl Into<String>, reason: impl std::fmt::Display) -> AmqpError {
        AmqpError::Operation { operation: operation.into(), reason: reason.to_string() }
    }
}

/// AMQP short strings (exchange, queue, routing key) are at most 255 bytes.
pub fn check_short_string(what: &'static str, name: &str) -> Result<(), AmqpError> {
    if name.len() > 255 {
        return Err(AmqpError::InvalidName { what, name: name.to_owned(), reason: "longer than 255 bytes" });
    }
    Ok(())
}
