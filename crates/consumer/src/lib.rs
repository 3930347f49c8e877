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

mod consumer;
mod handler;

pub use consumer::{ConnectionWatch, Consumer, ConsumerConfig, ConsumerError, QueueMode};
pub use handler::{Handler, HandlerFuture, IncomingEvent, MessageHandler, Outcome, Registry};
pub use pgevents_event::Glob;
