//! One subscriber's feed: its own consumer on the history stream, starting at the requested
//! offset, filtered, into a bounded buffer that the SSE response drains. A full buffer means the
//! subscriber cannot keep up: it is disconnected rather than allowed to grow memory.

use std::convert::Infallible;

use axum::response::sse::Event as SseEvent;
use pgevents_amqp::{self as amqp, AmqpError, Connection, FieldTable, FieldValue};
use pgevents_event::Event;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::filter::{event_name, Filter};

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The next event published.
    Live,
    /// This offset (the one after the client's `Last-Event-ID`).
    Offset(i64),
}

pub const SLOW_CLIENTS: &str = "pgevents_gateway_slow_clients_total";
pub const EVENTS_SENT: &str = "pgevents_gateway_events_sent_total";
pub const CLIENTS: &str = "pgevents_gateway_clients";

/// Opens the consumer and starts forwarding; the receiver ends when the client is cut off (too
/// slow), the broker connection is lost, or the gateway shuts down.
pub async fn open(
    connection: &Connection,
    stream: &str,
    start: Start,
    filter: Filter,
    buffer: usize,
    consumer_id: String,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<Result<SseEvent, Infallible>>, AmqpError> {
    let channel = amqp::open_channel(connection).await?;
    let mut arguments = FieldTable::new();
    let offset = match start {
        Start::Live => FieldValue::from("next"),
        Start::Offset(n) => FieldValue::l(n),
    };
    if let Ok(key) = "x-stream-offset".try_into() {
        arguments.insert(key, offset);
    }
    let prefetch = u16::try_from(buffer.clamp(1, 1000)).unwrap_or(1000);
    let mut deliveries = amqp::consume(&channel, stream, prefetch, arguments).await?;
    let (tx, rx) = mpsc::channel(buffer.max(1));
    tokio::spawn(async move {
        metrics::gauge!(CLIENTS).increment(1.0);
        let why = loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => break "the gateway is stopping",
                _ = tx.closed() => break "the client left",
                delivery = deliveries.next() => match delivery {
                    Some(delivery) => delivery,
                    None => break "the RabbitMQ connection was lost",
                },
            };
            if let Err(e) = amqp::ack(&channel, delivery.delivery_tag).await {
                tracing::debug!(error = %e, "ack on the history stream failed");
                break "the RabbitMQ connection was lost";
            }
            let Some(offset) = delivery.header_i64("x-stream-offset") else { continue };
            let Ok(event) = Event::from_slice(&delivery.body) else { continue };
            if !filter.matches(&event) {
                continue;
            }
            match forward(&tx, &filter, &event, &delivery.body, offset) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!(SLOW_CLIENTS).increment(1);
                    break "the client is too slow (its buffer is full)";
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break "the client left",
            }
        };
        tracing::info!(consumer_id = %consumer_id, reason = why, "subscriber disconnected");
        metrics::gauge!(CLIENTS).decrement(1.0);
        let _ = channel.close().await;
    });
    Ok(rx)
}

/// Queues the SSE events of one stream message (several with field granularity; the offset goes
/// on the last, so a client resuming from it has seen all of them).
fn forward(
    tx: &mpsc::Sender<Result<SseEvent, Infallible>>,
    filter: &Filter,
    event: &Event,
    body: &[u8],
    offset: i64,
) -> Result<(), mpsc::error::TrySendError<Result<SseEvent, Infallible>>> {
    if filter.field_granularity {
        let fields = filter.field_updates(event);
        let last = fields.len().saturating_sub(1);
        for (i, field) in fields.into_iter().enumerate() {
            let mut sse = SseEvent::default().event("field_update").data(field.to_string());
            if i == last {
                sse = sse.id(offset.to_string());
            }
            tx.try_send(Ok(sse))?;
            metrics::counter!(EVENTS_SENT).increment(1);
        }
        return Ok(());
    }
    let data = String::from_utf8_lossy(body);
    let sse = SseEvent::default().id(offset.to_string()).event(event_name(event.action)).data(data);
    tx.try_send(Ok(sse))?;
    metrics::counter!(EVENTS_SENT).increment(1);
    Ok(())
}
