//! The hub: the gateway's one live reader of the history stream. It decodes each message once
//! into a [`Frame`] and appends it to the [`Ring`] that every subscriber reads, so RabbitMQ sends
//! each event to a gateway once however many subscribers there are.
//!
//! The hub publishes its [`Link`] to RabbitMQ: subscribers end when the link they started on is
//! lost (they come back with `Last-Event-ID`), and replays open their channels on its
//! connection. After a loss it reconnects with backoff and resumes right after the last offset
//! it read, so the ring stays complete; if the stream no longer continues there, the ring is
//! cleared and reconnecting subscribers replay from the stream instead.

use std::sync::Arc;
use std::time::Duration;

use pgevents_amqp::{self as amqp, ensure_stream, AmqpError, AmqpUrl, Connection, FieldValue, Retention};
use pgevents_retry::{Reconnect, Waited};
use pgevents_telemetry::Readiness;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::frame::{Frame, STREAM_OFFSET};
use crate::metrics;
use crate::ring::Ring;

/// Deliveries drained into one append.
const BATCH: usize = 256;

/// Where the stream is read from.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub url: AmqpUrl,
    pub exchange: String,
    pub stream: String,
    pub retention: Retention,
    /// Largest event body accepted once decompressed.
    pub max_body_bytes: usize,
    /// Unacknowledged deliveries RabbitMQ sends ahead to the hub.
    pub prefetch: u16,
    pub backoff_max: Duration,
}

/// The hub's connection to RabbitMQ, as subscribers see it.
#[derive(Clone)]
pub enum Link {
    /// Not connected yet, or reconnecting after a loss (the reason).
    Down(String),
    /// Reading the stream; `generation` changes with every new connection.
    Up { generation: u64, connection: Connection },
}

impl Link {
    pub fn generation(&self) -> Option<u64> {
        match self {
            Link::Up { generation, .. } => Some(*generation),
            Link::Down(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum HubError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("the RabbitMQ connection was lost")]
    Lost,
}

/// Where the next session starts reading.
#[derive(Debug, Clone, Copy)]
enum Position {
    /// The last chunk of the stream (the ring starts with the newest events, so subscribers
    /// that are up to date need no replay).
    Last,
    /// Right after this offset, the last one read.
    After(i64),
}

/// Starts the hub; it runs until `shutdown`.
pub fn start(
    config: StreamConfig,
    ring: Arc<Ring>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> (watch::Receiver<Link>, tokio::task::JoinHandle<()>) {
    let (link, receiver) = watch::channel(Link::Down("connecting to RabbitMQ".into()));
    let task = tokio::spawn(run(config, ring, link, readiness, shutdown));
    (receiver, task)
}

async fn run(
    config: StreamConfig,
    ring: Arc<Ring>,
    link: watch::Sender<Link>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut reconnect = Reconnect::new("history stream", Duration::from_millis(500), config.backoff_max);
    let mut reader = Reader { config: &config, ring: &ring, link: &link, position: Position::Last, generation: 0 };
    loop {
        reconnect.attempt();
        let error = match reader.session(&readiness, &shutdown).await {
            Ok(()) => break,
            Err(e) => e,
        };
        ::metrics::counter!(metrics::HUB_RECONNECTS).increment(1);
        readiness.set_not_ready(format!("RabbitMQ connection lost: {error}"));
        link.send_replace(Link::Down(error.to_string()));
        if reconnect.wait(&error, &shutdown).await == Waited::Cancelled {
            break;
        }
    }
    link.send_replace(Link::Down("the gateway is stopping".into()));
}

struct Reader<'a> {
    config: &'a StreamConfig,
    ring: &'a Ring,
    link: &'a watch::Sender<Link>,
    position: Position,
    generation: u64,
}

impl Reader<'_> {
    /// One connection: consume from the position, append to the ring, until lost or shutdown.
    async fn session(&mut self, readiness: &Readiness, shutdown: &CancellationToken) -> Result<(), HubError> {
        let config = self.config;
        let connection = amqp::connect(&config.url, "pgevents serve").await?;
        let channel = amqp::open_channel(&connection).await?;
        ensure_stream(&channel, &config.stream, &config.exchange, &config.retention).await?;
        let start = match self.position {
            Position::Last => FieldValue::from("last"),
            Position::After(offset) => FieldValue::l(offset.saturating_add(1)),
        };
        let arguments = amqp::field_table(&[(STREAM_OFFSET, start)]);
        let mut deliveries = amqp::consume(&channel, &config.stream, config.prefetch, arguments).await?;
        self.generation += 1;
        self.link.send_replace(Link::Up { generation: self.generation, connection: connection.clone() });
        readiness.set_ready();
        tracing::info!(stream = %config.stream, position = ?self.position, "reading the history stream");
        let mut resumed_after = match self.position {
            Position::After(offset) => Some(offset),
            Position::Last => None,
        };
        loop {
            let first = tokio::select! {
                delivery = deliveries.next() => delivery.ok_or(HubError::Lost)?,
                _ = shutdown.cancelled() => break,
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match deliveries.try_next() {
                    Some(delivery) => batch.push(delivery),
                    None => break,
                }
            }
            let mut frames = Vec::with_capacity(batch.len());
            for frame in batch.iter().filter_map(|d| Frame::decode(d, config.max_body_bytes)) {
                if let Position::After(last) = self.position {
                    if frame.offset <= last {
                        continue; // RabbitMQ starts at the beginning of the chunk holding the offset asked for
                    }
                }
                if let Some(after) = resumed_after.take() {
                    if frame.offset != after + 1 {
                        tracing::warn!(expected = after + 1, got = frame.offset, "the stream does not continue where the hub left off; reconnecting subscribers will replay from the stream");
                        self.ring.clear();
                    }
                }
                self.position = Position::After(frame.offset);
                frames.push(frame);
            }
            self.ring.push(frames);
            if let Some(last) = batch.last() {
                amqp::ack_up_to(&channel, last.delivery_tag).await?;
            }
        }
        let _ = channel.close().await;
        let _ = connection.close().await;
        Ok(())
    }
}
