//! Publishing to one stream with confirms. [`StreamPublisher::send`] numbers each message (1,
//! 2, ... per connection) and [`StreamPublisher::next_confirm`] says which number the broker
//! stored, or why not, in arrival order (callbacks of several confirm frames may be out of
//! order; the caller tracks them by number).
//!
//! A named publisher ([`Dedup::Named`]) is deduplicated by the broker: each message carries a
//! publishing id chosen by the caller, strictly increasing, and the broker drops (and confirms)
//! any whose id is not above the last it stored for the name ([`StreamPublisher::last_stored_id`],
//! asked at connect). An anonymous one leaves the ids to the client library.

use rabbitmq_stream_client::error::ProducerPublishError;
use rabbitmq_stream_client::types::{Message, ResponseCode};
use rabbitmq_stream_client::{ConfirmationStatus, Dedup as NamedProducer, Environment, NoDedup, OnClosed, Producer};
use tokio::sync::mpsc;

use crate::connect::{client, environment};
use crate::{OutgoingStreamMessage, StreamError, StreamUrl};

/// Whether the broker deduplicates the publisher's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dedup {
    Off,
    /// By this producer name (the caller numbers messages).
    Named(String),
}

/// What the broker said about one message.
#[derive(Debug)]
pub struct StreamConfirm {
    pub number: u64,
    pub result: Result<(), StreamError>,
}

enum Inner {
    Named(Producer<NamedProducer>),
    Anonymous(Producer<NoDedup>),
}

/// A publisher on its own connection (to the stream's leader).
pub struct StreamPublisher {
    _environment: Environment,
    producer: Inner,
    stream: String,
    confirms: mpsc::UnboundedReceiver<StreamConfirm>,
    sender: mpsc::UnboundedSender<StreamConfirm>,
    next_number: u64,
    last_stored_id: u64,
}

/// Turns the end of the connection into a failed confirm.
struct ReportClosed {
    sender: mpsc::UnboundedSender<StreamConfirm>,
}

#[async_trait::async_trait]
impl OnClosed for ReportClosed {
    async fn on_closed(&self, unconfirmed: Vec<Message>) {
        let reason = format!("the connection closed with {} messages unconfirmed", unconfirmed.len());
        let _ = self.sender.send(StreamConfirm { number: 0, result: Err(StreamError::Closed(reason)) });
    }
}

impl StreamPublisher {
    /// Connects to `stream` (which must exist), at most `batch_size` messages per publish frame.
    pub async fn connect(
        url: &StreamUrl,
        stream: &str,
        dedup: Dedup,
        connection_name: &str,
        batch_size: usize,
    ) -> Result<StreamPublisher, StreamError> {
        let last_stored_id = match &dedup {
            Dedup::Named(name) => {
                let probe = client(url, connection_name).await?;
                let last = probe
                    .query_publisher_sequence(name, stream)
                    .await
                    .map_err(|e| StreamError::operation(stream, "ask for the last stored publishing id", &e));
                let _ = probe.close().await;
                last?
            }
            Dedup::Off => 0,
        };
        let environment = environment(url, connection_name).await?;
        let (sender, confirms) = mpsc::unbounded_channel();
        let builder = environment
            .producer()
            .client_provided_name(connection_name)
            .batch_size(batch_size.max(1))
            .on_closed(Box::new(ReportClosed { sender: sender.clone() }));
        let created = |e: rabbitmq_stream_client::error::ProducerCreateError| {
            use rabbitmq_stream_client::error::ProducerCreateError as E;
            match e {
                E::Create { status, .. } => StreamError::refused(stream, "declare the publisher", &status),
                E::StreamDoesNotExist { .. } => {
                    StreamError::refused(stream, "declare the publisher", &ResponseCode::StreamDoesNotExist)
                }
                E::Client(e) => StreamError::operation(stream, "declare the publisher", &e),
                other => StreamError::Operation {
                    stream: stream.to_owned(),
                    operation: "declare the publisher",
                    reason: other.to_string(),
                    kind: pgevents_retry::ErrorKind::Permanent,
                },
            }
        };
        let producer = match &dedup {
            Dedup::Named(name) => Inner::Named(builder.name(name).build(stream).await.map_err(created)?),
            Dedup::Off => Inner::Anonymous(builder.build(stream).await.map_err(created)?),
        };
        Ok(StreamPublisher {
            _environment: environment,
            producer,
            stream: stream.to_owned(),
            confirms,
            sender,
            next_number: 1,
            last_stored_id,
        })
    }

    /// The last publishing id the broker stored for this publisher's name (0: none, or no name).
    pub fn last_stored_id(&self) -> u64 {
        self.last_stored_id
    }

    /// Sends one message (with `publishing_id` for a named publisher); returns its number.
    pub async fn send(
        &mut self,
        message: OutgoingStreamMessage,
        publishing_id: Option<u64>,
    ) -> Result<u64, StreamError> {
        let number = self.next_number;
        let sender = self.sender.clone();
        let stream = self.stream.clone();
        let callback = move |status: Result<ConfirmationStatus, ProducerPublishError>| {
            let result = match status {
                Ok(status) if status.confirmed() => Ok(()),
                Ok(status) => Err(StreamError::refused(&stream, "store a message", status.status())),
                Err(e) => Err(StreamError::Operation {
                    stream: stream.clone(),
                    operation: "store a message",
                    reason: e.to_string(),
                    kind: pgevents_retry::ErrorKind::Transient,
                }),
            };
            let _ = sender.send(StreamConfirm { number, result });
            std::future::ready(())
        };
        let message = message.into_message(publishing_id);
        let sent = match &mut self.producer {
            Inner::Named(producer) => producer.send(message, callback).await,
            Inner::Anonymous(producer) => producer.send(message, callback).await,
        };
        sent.map_err(|e| StreamError::Operation {
            stream: self.stream.clone(),
            operation: "publish",
            reason: e.to_string(),
            kind: pgevents_retry::ErrorKind::Transient,
        })?;
        self.next_number += 1;
        Ok(number)
    }

    /// The number of the next message the broker stored. Cancel-safe. An error means the
    /// connection is done (or the broker refused a message, with its code's kind).
    pub async fn next_confirm(&mut self) -> Result<u64, StreamError> {
        match self.confirms.recv().await {
            Some(StreamConfirm { number, result }) => result.map(|()| number),
            None => Err(StreamError::Closed("the confirm channel ended".into())),
        }
    }

    /// Closes the publisher and its connection.
    pub async fn close(self) {
        let _ = match self.producer {
            Inner::Named(producer) => producer.close().await,
            Inner::Anonymous(producer) => producer.close().await,
        };
    }
}

impl std::fmt::Debug for StreamPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPublisher").field("stream", &self.stream).field("next_number", &self.next_number).finish()
    }
}
