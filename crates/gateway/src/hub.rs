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

use pgevents_amqp::{self as amqp, ensure_stream, AmqpError, Brokers, Connection, FieldValue, Retention};
use pgevents_retry::{Policy, SessionEnd, Step, Supervisor};
use pgevents_telemetry::Readiness;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::frame::{Frame, STREAM_OFFSET};
use crate::metrics;
use crate::probe;
use crate::ring::Ring;

/// Deliveries drained into one append, at most (and at most a quarter of the ring, so that one
/// append never pushes a subscriber that keeps up out of it).
const BATCH: usize = 256;

/// Where the stream is read from.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub url: Brokers,
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
    /// Not connected yet, or reconnecting after a loss.
    Down,
    /// Reading the stream; `generation` changes with every new connection.
    Up { generation: u64, connection: Connection },
}

impl Link {
    pub fn generation(&self) -> Option<u64> {
        match self {
            Link::Up { generation, .. } => Some(*generation),
            Link::Down => None,
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
    /// With the next message published.
    Next,
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
    let (link, receiver) = watch::channel(Link::Down);
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
    let policy = Policy { max: config.backoff_max, ..Policy::default() };
    let batch = (ring.max_events() / 4).clamp(1, BATCH);
    let mut reader = Reader { config: &config, ring, link: &link, position: Position::Next, generation: 0, batch };
    let mut supervisor = Supervisor::new("history stream", policy);
    loop {
        let end = match reader.session(&readiness, &shutdown).await {
            Ok(()) => SessionEnd::Stop(()),
            Err(error) => {
                ::metrics::counter!(metrics::HUB_RECONNECTS).increment(1);
                readiness.set_not_ready(format!("RabbitMQ connection lost: {error}"));
                link.send_replace(Link::Down);
                SessionEnd::retry(error)
            }
        };
        if supervisor.next(end, &shutdown).await != Step::Again {
            break;
        }
    }
    link.send_replace(Link::Down);
}

struct Reader<'a> {
    config: &'a StreamConfig,
    ring: Arc<Ring>,
    link: &'a watch::Sender<Link>,
    position: Position,
    generation: u64,
    batch: usize,
}

/// Everything published from the hub's first session on reaches it, and what was published
/// before ends at the newest offset now: subscribers up to date with it need no replay. (Until
/// this is known, or when the hub has read a message first, they replay from the stream.)
async fn find_floor(connection: Connection, stream: String, ring: Arc<Ring>) {
    match probe::newest_offset(&connection, &stream).await {
        Ok(Some(newest)) => ring.set_floor(newest),
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "cannot look up the newest offset of the history stream"),
    }
}

/// How a session's deliveries relate to what the hub read before.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// From the next message published.
    Fresh,
    /// From the message after `after`: RabbitMQ starts at the beginning of the chunk holding
    /// it, so earlier messages are skipped; if the first one is not `after + 1`, the stream does
    /// not continue where the hub left off.
    Resumed { after: i64, checked: bool },
}

impl Reader<'_> {
    /// One connection: consume from the position, append to the ring, until lost or shutdown.
    async fn session(&mut self, readiness: &Readiness, shutdown: &CancellationToken) -> Result<(), HubError> {
        let config = self.config;
        if let (Position::Next, Some(floor)) = (self.position, self.ring.floor()) {
            // A probe of an earlier session found where the stream ended: continue from there.
            self.position = Position::After(floor);
        }
        let name = format!("pgevents serve ({})", config.stream);
        let connection = amqp::connect(&config.url, &name).await?;
        let channel = amqp::open_channel(&connection).await?;
        ensure_stream(&channel, &config.stream, &config.exchange, &config.retention).await?;
        let (mut start, offset) = match self.position {
            Position::Next => (Start::Fresh, FieldValue::from("next")),
            Position::After(after) => {
                (Start::Resumed { after, checked: false }, FieldValue::l(after.saturating_add(1)))
            }
        };
        let arguments = amqp::field_table(&[(STREAM_OFFSET, offset)]);
        let mut deliveries = amqp::consume(&channel, &config.stream, config.prefetch, arguments).await?;
        self.generation += 1;
        self.link.send_replace(Link::Up { generation: self.generation, connection: connection.clone() });
        readiness.set_ready();
        tracing::info!(stream = %config.stream, position = ?self.position, "reading the history stream");
        if let Start::Fresh = start {
            tokio::spawn(find_floor(connection.clone(), config.stream.clone(), self.ring.clone()));
        }
        loop {
            let first = tokio::select! {
                delivery = deliveries.next() => delivery.ok_or(HubError::Lost)?,
                _ = shutdown.cancelled() => break,
            };
            let mut batch = vec![first];
            while batch.len() < self.batch {
                match deliveries.try_next() {
                    Some(delivery) => batch.push(delivery),
                    None => break,
                }
            }
            let frames = batch
                .iter()
                .filter_map(|d| Frame::decode(d, config.max_body_bytes))
                .filter(|frame| self.continues(&mut start, frame.offset))
                .collect();
            self.ring.push(frames);
            if let Some(last) = batch.last() {
                amqp::ack_up_to(&channel, last.delivery_tag).await?;
            }
        }
        let _ = channel.close().await;
        let _ = connection.close().await;
        Ok(())
    }

    /// Whether a frame at `offset` belongs in the ring (it advances the position).
    fn continues(&mut self, start: &mut Start, offset: i64) -> bool {
        if let Start::Resumed { after, checked } = start {
            if offset <= *after {
                return false;
            }
            if !*checked {
                *checked = true;
                if offset != *after + 1 {
                    tracing::warn!(expected = *after + 1, got = offset, "the stream does not continue where the hub left off; reconnecting subscribers will replay from the stream");
                    self.ring.clear();
                }
            }
        }
        self.position = Position::After(offset);
        true
    }
}
