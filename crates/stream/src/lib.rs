//! Thin helpers over `rabbitmq-stream-client` (RabbitMQ's stream protocol, port 5552), shared by
//! the producer, the gateway and the consumer library: URLs ([`StreamUrl`]), connecting (TLS
//! included), declaring a stream with its retention, publishing with deduplication and confirms
//! ([`StreamPublisher`]), reading with offsets stored on the broker ([`StreamReader`]), and reading back the last messages of a stream ([`tail`]).
//!
//! Every error has an [`ErrorKind`], decided where it is made. Reconnecting is the caller's job:
//! an error here means "this connection is done".

mod connect;
mod error;
mod message;
mod publisher;
mod reader;
pub mod tail;
mod url;

pub use connect::{client, ensure_stream, environment, StreamConnection, StreamRetention};
pub use error::StreamError;
pub use message::{properties, property, OutgoingStreamMessage};
pub use pgevents_retry::ErrorKind;
pub use publisher::{Dedup, StreamPublisher};
pub use rabbitmq_stream_client::types::Message;
pub use reader::{Record, Start, StreamReader, CHUNKS_AHEAD};
pub use url::StreamUrl;

/// The largest message body published to a stream: RabbitMQ's stream frames are 1 MiB at most
/// (the client asks for that, the broker's `stream.frame_max` default), and a message travels in
/// one frame with its properties.
pub const MAX_MESSAGE_BYTES: usize = 1_000_000;
