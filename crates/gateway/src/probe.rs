//! Where the history stream begins and ends, found by reading it briefly on a channel of its
//! own: the first offset still held (for gaps past retention) and the newest offset (so that,
//! at start, subscribers that are up to date join the live feed without a replay).

use std::time::Duration;

use pgevents_amqp::{self as amqp, AmqpError, Connection, FieldValue};

use crate::frame::STREAM_OFFSET;

/// How long to wait for the first message (an empty stream sends none).
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);
/// The end of the last chunk: no further message for this long.
const QUIET: Duration = Duration::from_millis(200);
const PREFETCH: u16 = 1000;

/// The offset of the oldest message the stream still holds; `None` when it is empty.
pub async fn first_offset(connection: &Connection, stream: &str) -> Result<Option<i64>, AmqpError> {
    read(connection, stream, "first", Reading::First).await
}

/// The offset of the newest message; `None` when the stream is empty.
pub async fn newest_offset(connection: &Connection, stream: &str) -> Result<Option<i64>, AmqpError> {
    read(connection, stream, "last", Reading::LastChunk).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reading {
    First,
    /// The whole last chunk (RabbitMQ's `last` starts at its beginning).
    LastChunk,
}

async fn read(connection: &Connection, stream: &str, spec: &str, reading: Reading) -> Result<Option<i64>, AmqpError> {
    let channel = amqp::open_channel(connection).await?;
    let arguments = amqp::field_table(&[(STREAM_OFFSET, FieldValue::from(spec))]);
    let mut deliveries = amqp::consume(&channel, stream, PREFETCH, arguments).await?;
    let mut found: Option<i64> = None;
    loop {
        let wait = if found.is_none() { FIRST_MESSAGE_TIMEOUT } else { QUIET };
        let Ok(Some(delivery)) = tokio::time::timeout(wait, deliveries.next()).await else { break };
        if let Some(offset) = delivery.header_i64(STREAM_OFFSET) {
            found = Some(found.map_or(offset, |f| f.max(offset)));
        }
        if reading == Reading::First {
            break;
        }
        if delivery.delivery_tag % u64::from(PREFETCH / 2) == 0 {
            amqp::ack_up_to(&channel, delivery.delivery_tag).await?;
        }
    }
    let _ = channel.close().await;
    Ok(found)
}
