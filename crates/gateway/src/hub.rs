//! The hub: the gateway's one live reader of the history stream. It decodes each message once
//! into a [`Frame`] and appends it to the [`Ring`] that every subscriber reads, so RabbitMQ sends
//! each event to a gateway once however many subscribers there are.
//!
//! The hub publishes its [`Link`] to RabbitMQ: subscribers end when the link they started on is
//! lost (they come back with `Last-Event-ID`), and replays read through it (channels on its AMQP
//! connection, or connections of their own over the stream protocol). After a loss it reconnects
//! with backoff and resumes right after the last offset it read, so the ring stays complete; if
//! retention removed what followed, the ring is cleared and reconnecting subscribers replay from
//! the stream instead.

use std::sync::Arc;
use std::time::Duration;

use pgevents_amqp::{Brokers, Retention};
use pgevents_retry::{Policy, SessionEnd, Step, Supervisor};
use pgevents_telemetry::Readiness;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::probe;
use crate::ring::Ring;
use crate::source::{Access, From, Protocol, Reader, Session, SourceError};

/// Deliveries drained into one append, at most (and at most a quarter of the ring, so that one
/// append never pushes a subscriber that keeps up out of it).
const BATCH: usize = 256;

/// Where the stream is read from.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The AMQP brokers (unused with `Protocol::Stream`).
    pub url: Brokers,
    pub protocol: Protocol,
    pub stream: String,
    pub retention: Retention,
    /// Largest event body accepted once decompressed.
    pub max_body_bytes: usize,
    /// Unacknowledged deliveries RabbitMQ sends ahead to the hub over AMQP.
    pub prefetch: u16,
    pub backoff_max: Duration,
}

/// The hub's connection to RabbitMQ, as subscribers see it.
#[derive(Clone)]
pub enum Link {
    /// Not connected yet, or reconnecting after a loss.
    Down,
    /// Reading the stream; `generation` changes with every new connection.
    Up { generation: u64, access: Access },
}

impl Link {
    pub fn generation(&self) -> Option<u64> {
        match self {
            Link::Up { generation, .. } => Some(*generation),
            Link::Down => None,
        }
    }
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
    let mut hub =
        Hub { config: &config, ring, link: &link, position: Position::Next, generation: 0, batch, skipped: None };
    let mut supervisor = Supervisor::new("history stream", policy);
    loop {
        let end = match hub.session(&readiness, &shutdown).await {
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

struct Hub<'a> {
    config: &'a StreamConfig,
    ring: Arc<Ring>,
    link: &'a watch::Sender<Link>,
    position: Position,
    generation: u64,
    batch: usize,
    /// The session resumed after this offset but read first this one, further on.
    skipped: Option<(i64, i64)>,
}

/// Everything published from the hub's first session on reaches it, and what was published
/// before ends at the newest offset now: subscribers up to date with it need no replay. (Until
/// this is known, or when the hub has read a message first, they replay from the stream.)
async fn find_floor(access: Access, stream: String, ring: Arc<Ring>) {
    match probe::newest_offset(&access, &stream).await {
        Ok(Some(newest)) => ring.set_floor(newest),
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "cannot look up the newest offset of the history stream"),
    }
}

/// Whether messages right after `after` are gone from the stream (its first offset is beyond);
/// when that cannot be read, they are taken as gone (the ring is then only cleared, which costs
/// replays, never events).
async fn removed_after(access: &Access, stream: &str, after: i64) -> bool {
    match probe::first_offset(access, stream).await {
        Ok(Some(first)) => first > after.saturating_add(1),
        Ok(None) => true,
        Err(e) => {
            tracing::debug!(error = %e, "cannot look up the first offset of the history stream");
            true
        }
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

impl Hub<'_> {
    /// One connection: consume from the position, append to the ring, until lost or shutdown.
    async fn session(&mut self, readiness: &Readiness, shutdown: &CancellationToken) -> Result<(), SourceError> {
        let config = self.config;
        if let (Position::Next, Some(floor)) = (self.position, self.ring.floor()) {
            // A probe of an earlier session found where the stream ended: continue from there.
            self.position = Position::After(floor);
        }
        let name = format!("pgevents serve ({})", config.stream);
        let session = Session::connect(&config.url, &config.protocol, &config.stream, &config.retention, &name).await?;
        let (mut start, from) = match self.position {
            Position::Next => (Start::Fresh, From::Next),
            Position::After(after) => (Start::Resumed { after, checked: false }, From::Offset(after.saturating_add(1))),
        };
        let mut reader = Reader::open(&session.access, &config.stream, from, config.prefetch).await?;
        self.generation += 1;
        self.link.send_replace(Link::Up { generation: self.generation, access: session.access.clone() });
        readiness.set_ready();
        tracing::info!(stream = %config.stream, position = ?self.position, "reading the history stream");
        if let Start::Fresh = start {
            tokio::spawn(find_floor(session.access.clone(), config.stream.clone(), self.ring.clone()));
        }
        let outcome = loop {
            let first = tokio::select! {
                message = reader.next() => message,
                _ = shutdown.cancelled() => break Ok(()),
            };
            let mut batch = match first {
                Ok(message) => vec![message],
                Err(e) => break Err(e),
            };
            while batch.len() < self.batch {
                match reader.try_next() {
                    Some(message) => batch.push(message),
                    None => break,
                }
            }
            let frames = batch
                .iter()
                .filter_map(|m| m.frame(config.max_body_bytes))
                .filter(|frame| self.continues(&mut start, frame.offset))
                .collect();
            if let Some((after, got)) = self.skipped.take() {
                if removed_after(&session.access, &config.stream, after).await {
                    tracing::warn!(expected = after + 1, got, "the stream does not continue where the hub left off (retention removed what followed); reconnecting subscribers will replay from the stream");
                    self.ring.clear();
                }
            }
            self.ring.push(frames);
            if let Err(e) = reader.acknowledge().await {
                break Err(e);
            }
            // A stream-protocol reader hands a whole chunk over at once, without waiting on the
            // network between batches: let the subscribers read each append before the next, or
            // one that keeps up would fall a whole ring behind in a burst.
            tokio::task::yield_now().await;
        };
        if outcome.is_ok() {
            // Stopping: close politely (a lost connection is only dropped).
            reader.close().await;
            session.close().await;
        }
        outcome
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
                    // Either retention removed what followed, or the offsets between are records
                    // of stored consumer offsets, not messages: the session looks.
                    self.skipped = Some((*after, offset));
                }
            }
        }
        self.position = Position::After(offset);
        true
    }
}
