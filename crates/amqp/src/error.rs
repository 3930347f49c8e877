//! Errors talking to RabbitMQ, each with an [`ErrorKind`] decided where it is made: from the
//! broker's reply code when the broker closed the channel or connection over it, and otherwise
//! from what failed (a lost connection is transient, a bad URL or name is a setting).

use std::fmt;

use pgevents_retry::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("invalid RabbitMQ URL: {0}")]
    InvalidUrl(String),
    #[error("could not connect to RabbitMQ at {url}: {reason}; check RABBITMQ_URL, the credentials, and that the broker is running")]
    Connect { url: String, reason: String, kind: ErrorKind },
    #[error("RabbitMQ {operation} failed: {cause}")]
    Operation { operation: String, cause: Cause },
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName { what: &'static str, name: String, reason: &'static str },
    #[error("the RabbitMQ connection or channel closed: {0}")]
    Closed(String),
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The broker refused it and closed the channel (or connection) with this reply.
    Refused(ServerReply),
    /// The channel or connection was lost (or the client library said so, in these words).
    Lost(String),
    /// The broker could not take a published message (`basic.nack`).
    Nacked,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Refused(reply) => write!(f, "{reply}"),
            Cause::Lost(reason) => f.write_str(reason),
            Cause::Nacked => f.write_str("RabbitMQ could not take the message (nack)"),
        }
    }
}

/// A reply code and text of the broker's `channel.close` or `connection.close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    pub code: u16,
    pub text: String,
}

impl fmt::Display for ServerReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (reply code {})", self.text, self.code)
    }
}

impl ServerReply {
    pub const CONTENT_TOO_LARGE: u16 = 311;
    pub const NO_ROUTE: u16 = 312;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const NOT_ALLOWED: u16 = 530;

    /// From the AMQP 0-9-1 reply codes: refused access, invalid paths, inequivalent
    /// declarations and operations not allowed are settings; a message too large or unroutable,
    /// and the client's own protocol errors (501-505, 540), cannot succeed again; the rest
    /// (connection forced by a restarting broker, resources, internal errors, a queue or
    /// exchange not found, which pgevents declares again when it reconnects) is transient.
    pub fn kind(&self) -> ErrorKind {
        match self.code {
            Self::ACCESS_REFUSED | Self::PRECONDITION_FAILED | Self::NOT_ALLOWED | 402 => ErrorKind::Config,
            Self::CONTENT_TOO_LARGE | Self::NO_ROUTE | 501..=505 | 540 => ErrorKind::Permanent,
            _ => ErrorKind::Transient,
        }
    }
}

impl AmqpError {
    pub fn op(operation: impl Into<String>, cause: Cause) -> AmqpError {
        AmqpError::Operation { operation: operation.into(), cause }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            AmqpError::InvalidUrl(_) | AmqpError::InvalidName { .. } => ErrorKind::Config,
            AmqpError::Connect { kind, .. } => *kind,
            AmqpError::Operation { cause: Cause::Refused(reply), .. } => reply.kind(),
            AmqpError::Operation { cause: Cause::Lost(_) | Cause::Nacked, .. } | AmqpError::Closed(_) => {
                ErrorKind::Transient
            }
        }
    }

    /// The broker's reply, when it refused the operation.
    pub fn reply(&self) -> Option<&ServerReply> {
        match self {
            AmqpError::Operation { cause: Cause::Refused(reply), .. } => Some(reply),
            _ => None,
        }
    }
}

/// AMQP short strings (exchange, queue, routing key) are at most 255 bytes.
pub fn check_short_string(what: &'static str, name: &str) -> Result<(), AmqpError> {
    if name.len() > 255 {
        return Err(AmqpError::InvalidName { what, name: name.to_owned(), reason: "longer than 255 bytes" });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_reply_code() {
        let reply = |code| ServerReply { code, text: "X".into() };
        assert_eq!(reply(403).kind(), ErrorKind::Config);
        assert_eq!(reply(406).kind(), ErrorKind::Config);
        assert_eq!(reply(311).kind(), ErrorKind::Permanent);
        assert_eq!(reply(320).kind(), ErrorKind::Transient);
        assert_eq!(reply(404).kind(), ErrorKind::Transient);
        let refused = AmqpError::op("declare queue \"q\"", Cause::Refused(reply(406)));
        assert_eq!(refused.kind(), ErrorKind::Config);
        assert_eq!(refused.to_string(), "RabbitMQ declare queue \"q\" failed: X (reply code 406)");
        assert_eq!(AmqpError::op("ack", Cause::Lost("gone".into())).kind(), ErrorKind::Transient);
    }
}
