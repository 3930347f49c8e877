//! `pgevents serve`: pushes events to live subscribers over Server-Sent Events.
//!
//! History lives in a RabbitMQ **stream** queue bound to the events exchange
//! ([`pgevents_amqp::ensure_stream`]); its offsets are the SSE event ids. Every subscriber gets its own
//! consumer on the stream, starting right after its `Last-Event-ID` (or at the end), so a
//! reconnecting client gets exactly what it missed, in order, and then live events, with no gap
//! and no duplicate at the seam. Filters ([`filter::Filter`]) narrow a subscription down to
//! tables, actions, one row, or changed columns, optionally as one event per changed field.
//! A slow subscriber is disconnected once its bounded buffer is full; a lost broker connection
//! disconnects everyone (they come back with `Last-Event-ID` and miss nothing).

pub mod filter;
mod server;
mod subscription;

pub use pgevents_amqp::Retention;
pub use server::{router, serve, GatewayConfig, GatewayError};
