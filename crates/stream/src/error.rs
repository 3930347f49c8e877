//! Errors of the stream protocol, each with an [`ErrorKind`] decided where it is made: from the
//! broker's response code when it answered, from what failed otherwise (a lost or refused
//! connection is transient, bad credentials or certificates are settings).

use pgevents_retry::ErrorKind;
use rabbitmq_stream_client::error::ClientError;
use rabbitmq_stream_client::types::ResponseCode;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("invalid RabbitMQ stream URL: {0}")]
    InvalidUrl(String),
    #[error("could not connect to RabbitMQ's stream protocol at {url}: {reason}; check --stream-url, the credentials, and that the rabbitmq_stream plugin is enabled (rabbitmq-plugins enable rabbitmq_stream)")]
    Connect { url: String, reason: String, kind: ErrorKind },
    #[error("RabbitMQ stream {stream:?}: {operation} failed: {reason}")]
    Operation { stream: String, operation: &'static str, reason: String, kind: ErrorKind },
    #[error("the RabbitMQ stream connection closed: {0}")]
    Closed(String),
}

impl StreamError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StreamError::InvalidUrl(_) => ErrorKind::Config,
            StreamError::Connect { kind, .. } | StreamError::Operation { kind, .. } => *kind,
            StreamError::Closed(_) => ErrorKind::Transient,
        }
    }

    pub(crate) fn operation(stream: &str, operation: &'static str, error: &ClientError) -> StreamError {
        StreamError::Operation {
            stream: stream.to_owned(),
            operation,
            reason: error.to_string(),
            kind: client_kind(error),
        }
    }

    pub(crate) fn refused(stream: &str, operation: &'static str, code: &ResponseCode) -> StreamError {
        StreamError::Operation {
            stream: stream.to_owned(),
            operation,
            reason: format!("RabbitMQ answered {code:?}{}", hint(code)),
            kind: code_kind(code),
        }
    }
}

/// What the operator can do about a response code.
fn hint(code: &ResponseCode) -> &'static str {
    match code {
        ResponseCode::AccessRefused => " (give the user the configure, write and read permissions on the stream)",
        ResponseCode::StreamDoesNotExist => " (the stream was deleted or never declared)",
        ResponseCode::PreconditionFailed => " (the stream exists with other settings, or is not a stream)",
        ResponseCode::FrameTooLarge => " (a message is larger than the broker's frame_max for streams)",
        _ => "",
    }
}

/// The kind of a broker's answer.
pub(crate) fn code_kind(code: &ResponseCode) -> ErrorKind {
    match code {
        ResponseCode::AuthenticationFailure
        | ResponseCode::AuthenticationFailureLoopback
        | ResponseCode::SaslMechanismNotSupported
        | ResponseCode::VirtualHostAccessFailure
        | ResponseCode::AccessRefused
        | ResponseCode::PreconditionFailed => ErrorKind::Config,
        ResponseCode::FrameTooLarge | ResponseCode::UnknownFrame => ErrorKind::Permanent,
        _ => ErrorKind::Transient,
    }
}

/// The kind of a client library error.
pub(crate) fn client_kind(error: &ClientError) -> ErrorKind {
    match error {
        ClientError::RequestError(code) => code_kind(code),
        ClientError::Tls(_) => ErrorKind::Config,
        ClientError::Protocol(_) | ClientError::CastError(_) => ErrorKind::Permanent,
        ClientError::Io(_)
        | ClientError::GenericError(_)
        | ClientError::AlreadyClosed
        | ClientError::ConnectionClosed => ErrorKind::Transient,
    }
}
