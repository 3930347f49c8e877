//! Publishing as the producer sees it, whatever carries the messages.
//!
//! A [`Message`] goes out through a [`Transport`]: it is numbered (1, 2, ... per connection)
//! and later confirmed as stored, by number ([`Confirm`]), or the transport fails with a
//! classified [`PublishError`]. Two transports implement it: the AMQP exchange
//! ([`exchange::ExchangeOutput`]) and the RabbitMQ stream over the stream protocol
//! ([`stream::StreamOutput`]); [`Outputs`] is the one the producer uses, made by one factory
//! ([`Outputs::connect`]): one of them or both, a message confirmed when every transport it went
//! to confirmed it. The publish stage ([`stage`]) runs any of them, for the streamed changes and
//! the snapshot rows alike, and turns confirms into the LSN that may be reported to PostgreSQL
//! ([`lsn_tracker`]).

mod error;
pub mod exchange;
mod in_flight;
pub mod lsn_tracker;
mod numbers;
pub mod outputs;
pub mod stage;
pub mod stream;

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use pgevents_event::{Action, Lsn};
use tokio::sync::watch;

pub use error::PublishError;
pub use outputs::Outputs;

/// Where a streamed event sits in the WAL: its transaction's commit LSN and its number in the
/// transaction. The same on every read of the slot from a position before it, which is what
/// makes it a key for deduplication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub commit: Lsn,
    pub seq: u64,
}

/// What a message is, which decides where it may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A row event; `position` is `None` for snapshot rows (read, not streamed: no place in the
    /// WAL).
    Event { position: Option<Position>, action: Action },
    /// An outbox message (or a dead-lettered one): to its exchange only, never to the events'
    /// stream, where it could pass for a row event.
    Outbox,
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    /// The AMQP exchange when not the events exchange (`--exchange-map`, the outbox's).
    pub exchange: Option<Arc<str>>,
    pub routing_key: String,
    pub message_id: String,
    /// String headers (`action`, `table`, `lsn`, ...).
    pub headers: Vec<(Cow<'static, str>, String)>,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
    pub content_type: Cow<'static, str>,
    /// `gzip` when the body is compressed.
    pub content_encoding: Option<Cow<'static, str>>,
    pub app_id: Cow<'static, str>,
    /// The `type` property (outbox messages: their routing key); `None` for events.
    pub message_type: Option<String>,
    /// Whether the broker returns it when no queue takes it; `None`: the `--mandatory` setting.
    pub mandatory: Option<bool>,
    pub body: Vec<u8>,
}

/// The transport stored the message numbered `seq` (and every earlier one when `multiple`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirm {
    pub seq: u64,
    pub multiple: bool,
}

/// Whether the broker lets the producer publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    Running,
    /// Blocked by a resource alarm, with the broker's reason. Publishing now would stall;
    /// confirms for what was published still come.
    Blocked(String),
}

/// Publishes messages and says when they are stored.
pub trait Transport: Send {
    /// Publishes one message; returns its number (1, 2, ... on this connection). A transport may
    /// hold messages back until [`Transport::flush`].
    fn publish(&mut self, message: Message) -> impl Future<Output = Result<u64, PublishError>> + Send;
    /// Sends what `publish` held back.
    fn flush(&mut self) -> impl Future<Output = Result<(), PublishError>> + Send {
        async { Ok(()) }
    }
    /// The next confirm. Cancel-safe. An error means the connection is done: what it did not
    /// confirm is published again on a new one.
    fn next_confirm(&mut self) -> impl Future<Output = Result<Confirm, PublishError>> + Send;
    /// Whether the broker lets this transport publish.
    fn flow(&self) -> watch::Receiver<Flow>;
    /// Closes the connection(s).
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// Messages handed to the publish stage together; `commit` is the end LSN of the transaction
/// whose last message is in this batch (or of an empty transaction or an idle position when
/// there are none), or, for the snapshot, the batch's own number.
#[derive(Debug)]
pub struct Batch {
    pub messages: Vec<Message>,
    pub commit: Option<Lsn>,
    /// The commit time (Unix microseconds) of that transaction; `None` for an idle position.
    pub commit_time_micros: Option<i64>,
}

impl Batch {
    /// A batch in the middle of a transaction.
    pub fn part(messages: Vec<Message>) -> Batch {
        Batch { messages, commit: None, commit_time_micros: None }
    }

    /// Nothing to publish, but everything up to `lsn` has been read.
    pub fn mark(lsn: Lsn, commit_time_micros: Option<i64>) -> Batch {
        Batch { messages: Vec::new(), commit: Some(lsn), commit_time_micros }
    }
}
