//! Consuming outbox messages (`pgevents.outbox(routing_key, payload, message_id, headers)`), typed:
//! [`handler`] turns a function of [`OutboxMessage<T>`] into a handler for
//! [`crate::Consumer::messages`]. A delivery that is not an outbox message, or whose body is not
//! a `T`, fails (and goes to the dead-letter exchange, when the queue has one) with the reason.
//!
//! ```no_run
//! use pgevents_consumer::{outbox, Consumer, ConsumerConfig, Outcome};
//! #[derive(serde::Deserialize)]
//! struct Placed { order_id: i64 }
//! # async fn example(config: ConsumerConfig) -> Result<(), pgevents_consumer::ConsumerError> {
//! let handler = outbox::handler(|message: outbox::OutboxMessage<Placed>| async move {
//!     println!("order {} placed (message {})", message.payload.order_id, message.message_id);
//!     Outcome::Ok
//! });
//! Consumer::messages(config, handler).run(tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

use std::future::Future;
use std::marker::PhantomData;

use pgevents_amqp::Delivery;
use serde::de::DeserializeOwned;

use crate::handler::{HandlerFuture, MessageHandler, Outcome};

use pgevents_event::HEADER_LSN;
/// The header every outbox message carries (`true`).
pub use pgevents_event::HEADER_OUTBOX;

/// One outbox message, its payload read as a `T`.
#[derive(Debug, Clone)]
pub struct OutboxMessage<T> {
    pub routing_key: String,
    /// The id the application gave, or `<commit lsn>:<position>`: the same on every delivery,
    /// also after the producer published it again following a crash. Deduplicate on it.
    pub message_id: String,
    /// The commit LSN of the transaction that sent it.
    pub lsn: String,
    /// The application's headers (the producer's own, `outbox` and `lsn`, left out).
    pub headers: Vec<(String, String)>,
    pub payload: T,
    /// The body exactly as published (numbers with all their digits).
    pub body: Vec<u8>,
}

/// Why a delivery is not an outbox message of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    #[error("not a pgevents outbox message (no `outbox: true` header)")]
    NotOutbox,
    #[error("the outbox message has no message id")]
    NoMessageId,
    #[error("the outbox message's payload is not of the expected type: {0}")]
    Payload(String),
}

impl<T: DeserializeOwned> OutboxMessage<T> {
    /// Reads a delivery.
    pub fn from_delivery(delivery: &Delivery) -> Result<OutboxMessage<T>, OutboxError> {
        if delivery.header(HEADER_OUTBOX).as_deref() != Some("true") {
            return Err(OutboxError::NotOutbox);
        }
        let message_id = delivery.message_id().ok_or(OutboxError::NoMessageId)?.to_owned();
        let payload = serde_json::from_slice(&delivery.body).map_err(|e| OutboxError::Payload(e.to_string()))?;
        let mut headers: Vec<(String, String)> = delivery
            .properties
            .headers()
            .map(|table| table.as_ref().keys().map(|name| name.as_ref().to_owned()).collect::<Vec<String>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|name| name != HEADER_OUTBOX && name != HEADER_LSN)
            .filter_map(|name| delivery.header(&name).map(|value| (name, value)))
            .collect();
        headers.sort();
        Ok(OutboxMessage {
            routing_key: delivery.routing_key.clone(),
            message_id,
            lsn: delivery.header(HEADER_LSN).unwrap_or_default(),
            headers,
            payload,
            body: delivery.body.clone(),
        })
    }

    /// An application header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A [`MessageHandler`] that reads each delivery as an [`OutboxMessage<T>`] and hands it to `f`.
pub fn handler<T, F, Fut>(f: F) -> impl MessageHandler
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(OutboxMessage<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    Typed { f, payload: PhantomData }
}

struct Typed<T, F> {
    f: F,
    payload: PhantomData<fn() -> T>,
}

impl<T, F, Fut> MessageHandler for Typed<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(OutboxMessage<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> HandlerFuture<'a> {
        match OutboxMessage::from_delivery(delivery) {
            Ok(message) => Box::pin((self.f)(message)),
            Err(e) => Box::pin(std::future::ready(Outcome::Fail(e.to_string()))),
        }
    }
}
