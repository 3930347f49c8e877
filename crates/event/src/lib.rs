//! The event model shared by every pgevents stage.
//!
//! The producer writes events (see `pgevents-decode` for its allocation-light encoder); consumers
//! read them with [`Event`]. Everything that names a part of the wire format (field names, AMQP
//! header names, the routing key, the message id) lives here so that both sides agree.

mod action;
mod event;
mod glob;
mod lsn;
mod message_id;

pub use action::{Action, UnknownAction};
pub use event::{Event, EventParseError};
pub use glob::Glob;
pub use lsn::{InvalidLsn, Lsn};
pub use message_id::{message_id, MessageId, ParseMessageIdError};

/// AMQP header carrying the event's action code (`I`, `U`, `D`, `T`, `R`).
pub const HEADER_ACTION: &str = "action";
/// AMQP header carrying the qualified table name (`schema.table`).
pub const HEADER_TABLE: &str = "table";
/// AMQP header carrying the commit LSN of the event's transaction.
pub const HEADER_LSN: &str = "lsn";
/// AMQP header naming the values left out of an event too large to publish whole
/// (`--oversize stub`): `new.payload,old.payload`.
pub const HEADER_OMITTED: &str = "omitted";
/// AMQP header (`true`) marking an outbox message (`pgevents.outbox()`), not an event.
pub const HEADER_OUTBOX: &str = "outbox";
/// Content type of every event body.
pub const CONTENT_TYPE: &str = "application/json";
/// `app_id` property set on every message the producer publishes.
pub const APP_ID: &str = "pgevents";

/// Routing key of an event: `schema.table`.
pub fn routing_key(schema: &str, table: &str) -> String {
    let mut key = String::with_capacity(schema.len() + table.len() + 1);
    key.push_str(schema);
    key.push('.');
    key.push_str(table);
    key
}
