//! A library for consumers of pgevents events.
//!
//! ```no_run
//! use pgevents_consumer::{Consumer, ConsumerConfig, Outcome, Registry};
//! use pgevents_event::Action;
//! # async fn example(config: ConsumerConfig) -> Result<(), pgevents_consumer::ConsumerError> {
//! let registry = Registry::new().on("public.users", Action::Insert, |e: pgevents_consumer::IncomingEvent| async move {
//!     println!("welcome {}", e.event.new["email"]);
//!     Outcome::Ok
//! });
//! Consumer::new(config, registry).run(tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```
//!
//! The consumer declares its queue and bindings, receives with a prefetch limit, runs up to
//! `concurrency` handlers at once, acknowledges after the handler returns, reconnects with
//! backoff, and on shutdown stops receiving and lets running handlers finish.
//!
//! A poison message cannot stall it: a handler that returns `Retry` or panics runs again after
//! a jittered exponential delay, and after `max_deliveries` runs the message goes to the
//! dead-letter exchange with the reason, as do `Fail`ed messages and bodies that are not
//! events (or that decompress beyond `max_body_bytes`).
//!
//! [`StreamConsumer`] reads a RabbitMQ stream over the stream protocol instead (the producer's
//! `--publish-to stream`) with the same registry: in stream order, one event at a time, the
//! offset stored on the broker after the handler succeeded, so that a restart goes on where the
//! consumer stopped.

mod attempts;
mod consumer;
mod dead_letter;
mod handler;
mod lanes;
pub mod outbox;
mod stream;

pub use consumer::{
    ConnectionWatch, Consumer, ConsumerConfig, ConsumerError, QueueMode, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_DELIVERIES,
};
pub use handler::{
    BatchFuture, BatchHandler, Handler, HandlerFuture, IncomingEvent, MessageHandler, Outcome, Registry, Together,
};
pub use pgevents_event::Glob;
pub use pgevents_stream::{Start, StreamUrl};
pub use stream::{OnFailure, StreamConsumer, StreamConsumerConfig, StreamConsumerError, STREAM_OFFSET};
