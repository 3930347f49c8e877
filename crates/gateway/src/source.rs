//! Where the gateway reads the history from, behind one reader: a RabbitMQ stream queue over
//! AMQP 0-9-1 (consumed with `x-stream-offset`, acknowledged as read), or a stream over
//! RabbitMQ's stream protocol (`--history-protocol stream`: fewer copies in the broker, and the
//! stream the producer writes with `--publish-to stream`). The hub, the replays and the probes
//! of the stream's ends all read through a [`Reader`].

use std::sync::Arc;

use pgevents_amqp::{self as amqp, AmqpError, Brokers, Channel, Connection, DeliveryStream, FieldValue, Retention};
use pgevents_stream::{Start, StreamError, StreamReader, StreamUrl};

use crate::frame::{Frame, STREAM_OFFSET};

/// The protocol and the broker's address.
#[derive(Debug, Clone)]
pub enum Protocol {
    /// A stream queue bound to `exchange`, declared and bound if missing.
    Amqp { exchange: String },
    /// A stream read over the stream protocol at `url`, declared if missing (not bound: the
    /// producer writes it with `--publish-to stream`, or binds it as its `--history-stream`).
    Stream { url: Box<StreamUrl> },
}

/// What the hub's session offers replays and probes while it is up: its AMQP connection (they
/// open channels on it), or the stream protocol's address (they open connections of their own).
#[derive(Clone)]
pub enum Access {
    Amqp(Connection),
    Stream(Arc<StreamUrl>),
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    First,
    LastChunk,
    Next,
    Offset(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the RabbitMQ connection was lost")]
    Lost,
}

/// One message read, not decoded yet.
pub enum Message {
    Amqp(Box<amqp::Delivery>),
    Stream(Box<pgevents_stream::Record>),
}

impl Message {
    /// Its offset; `None` for an AMQP delivery without one (not from a stream queue).
    pub fn offset(&self) -> Option<i64> {
        match self {
            Message::Amqp(delivery) => delivery.header_i64(STREAM_OFFSET),
            Message::Stream(record) => i64::try_from(record.offset).ok(),
        }
    }

    /// The frame subscribers are sent; `None` without an offset.
    pub fn frame(&self, max_body_bytes: usize) -> Option<Frame> {
        let offset = self.offset()?;
        Some(match self {
            Message::Amqp(delivery) => Frame::new(
                offset,
                delivery.decoded_body(max_body_bytes).map_err(|e| e.to_string()),
                &delivery.routing_key,
            ),
            Message::Stream(record) => {
                let body = record.body(max_body_bytes).unwrap_or_else(|| Ok(Default::default()));
                let table = pgevents_stream::property(&record.message, "table").unwrap_or_default();
                Frame::new(offset, body.map_err(|e| e.to_string()), &table)
            }
        })
    }
}

/// A subscription to the history stream.
pub enum Reader {
    Amqp {
        channel: Channel,
        deliveries: DeliveryStream,
        /// The newest delivery tag not yet acknowledged.
        unacked: Option<u64>,
    },
    Stream(Box<StreamReader>),
}

impl Reader {
    /// Subscribes to `stream` from `from`; over AMQP, RabbitMQ sends `prefetch` deliveries
    /// ahead (the stream protocol reads ahead a chunk or two).
    pub async fn open(access: &Access, stream: &str, from: From, prefetch: u16) -> Result<Reader, SourceError> {
        match access {
            Access::Amqp(connection) => {
                let channel = amqp::open_channel(connection).await?;
                let offset = match from {
                    From::First => FieldValue::from("first"),
                    From::LastChunk => FieldValue::from("last"),
                    From::Next => FieldValue::from("next"),
                    From::Offset(offset) => FieldValue::l(offset),
                };
                let arguments = amqp::field_table(&[(STREAM_OFFSET, offset)]);
                let deliveries = amqp::consume(&channel, stream, prefetch, arguments).await?;
                Ok(Reader::Amqp { channel, deliveries, unacked: None })
            }
            Access::Stream(url) => {
                let start = match from {
                    From::First => Start::First,
                    From::LastChunk => Start::LastChunk,
                    From::Next => Start::Next,
                    From::Offset(offset) => Start::Offset(u64::try_from(offset).unwrap_or(0)),
                };
                let name = format!("pgevents serve ({stream})");
                Ok(Reader::Stream(Box::new(StreamReader::open(url, stream, start, &name).await?)))
            }
        }
    }

    /// The next message, waiting for it. Cancel-safe. An error means the subscription is done.
    pub async fn next(&mut self) -> Result<Message, SourceError> {
        match self {
            Reader::Amqp { deliveries, unacked, .. } => {
                let delivery = deliveries.next().await.ok_or(SourceError::Lost)?;
                *unacked = Some(delivery.delivery_tag);
                Ok(Message::Amqp(Box::new(delivery)))
            }
            Reader::Stream(reader) => Ok(Message::Stream(Box::new(reader.next().await?))),
        }
    }

    /// The next message if it has already arrived.
    pub fn try_next(&mut self) -> Option<Message> {
        match self {
            Reader::Amqp { deliveries, unacked, .. } => {
                let delivery = deliveries.try_next()?;
                *unacked = Some(delivery.delivery_tag);
                Some(Message::Amqp(Box::new(delivery)))
            }
            Reader::Stream(reader) => reader.try_next().map(|r| Message::Stream(Box::new(r))),
        }
    }

    /// Acknowledges everything taken so far: RabbitMQ sends an AMQP stream consumer more only
    /// as it acknowledges (the stream protocol's reader asks for more by itself). Never race it
    /// against anything else: a lost acknowledgement would leave the reader waiting.
    pub async fn acknowledge(&mut self) -> Result<(), SourceError> {
        if let Reader::Amqp { channel, unacked, .. } = self {
            if let Some(tag) = unacked.take() {
                amqp::ack_up_to(channel, tag).await?;
            }
        }
        Ok(())
    }

    /// Ends the subscription (its channel, or its connection).
    pub async fn close(self) {
        if let Reader::Amqp { channel, .. } = self {
            let _ = channel.close().await;
        }
    }
}

/// A session's connection to the history: the [`Access`] replays use, and what it must close.
pub struct Session {
    pub access: Access,
    connection: Option<Connection>,
}

impl Session {
    /// Connects, declares the stream if missing (and binds it to the exchange over AMQP).
    pub async fn connect(
        brokers: &Brokers,
        protocol: &Protocol,
        stream: &str,
        retention: &Retention,
        name: &str,
    ) -> Result<Session, SourceError> {
        match protocol {
            Protocol::Amqp { exchange } => {
                let connection = amqp::connect(brokers, name).await?;
                let channel = amqp::open_channel(&connection).await?;
                amqp::ensure_stream(&channel, stream, exchange, retention).await?;
                let _ = channel.close().await;
                Ok(Session { access: Access::Amqp(connection.clone()), connection: Some(connection) })
            }
            Protocol::Stream { url } => {
                let client = pgevents_stream::client(url, name).await?;
                let declared = pgevents_stream::ensure_stream(&client, stream, retention).await;
                let _ = client.close().await;
                declared?;
                Ok(Session { access: Access::Stream(Arc::new((**url).clone())), connection: None })
            }
        }
    }

    pub async fn close(self) {
        if let Some(connection) = self.connection {
            let _ = connection.close().await;
        }
    }
}
