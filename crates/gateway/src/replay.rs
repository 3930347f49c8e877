//! One subscriber's replay: a reader of its own on the history stream, starting right after
//! the subscriber's `Last-Event-ID`, read until the subscriber reaches what the ring holds
//! (see the feed). A subscriber asking for events older than the stream's retention is told so
//! with a gap (the first offset still available), never silently skipped.

use crate::frame::Frame;
use crate::probe;
use crate::source::{Access, From, Message, Reader, SourceError};

/// Deliveries RabbitMQ sends ahead to one replay.
const PREFETCH: u16 = 256;

/// A message taken by [`Replay::recv`].
pub enum Delivery {
    Received(Message),
    /// A frame held back while its gap was reported.
    Held(Frame),
}

/// What a replay yields.
#[derive(Debug)]
pub enum ReplayItem {
    Frame(Frame),
    /// The events from the requested offset up to `first_available` are no longer in the stream.
    Gap {
        first_available: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the RabbitMQ connection was lost during the replay")]
    Lost,
}

pub struct Replay {
    access: Access,
    stream: String,
    reader: Reader,
    /// The first offset wanted.
    from: i64,
    /// Whether the first delivery has been seen (and checked against retention).
    started: bool,
    /// A frame held back while its gap is reported.
    pending: Option<Frame>,
    max_body_bytes: usize,
}

impl Replay {
    /// Starts reading the stream at `from`.
    pub async fn open(access: &Access, stream: &str, from: i64, max_body_bytes: usize) -> Result<Replay, SourceError> {
        let reader = Reader::open(access, stream, From::Offset(from), PREFETCH).await?;
        Ok(Replay {
            access: access.clone(),
            stream: stream.to_owned(),
            reader,
            from,
            started: false,
            pending: None,
            max_body_bytes,
        })
    }

    /// The next message, as it arrives. Cancel-safe: nothing is lost if the caller stops
    /// waiting; hand what it returns to [`Replay::accept`].
    pub async fn recv(&mut self) -> Option<Delivery> {
        if let Some(frame) = self.pending.take() {
            return Some(Delivery::Held(frame));
        }
        self.reader.next().await.ok().map(Delivery::Received)
    }

    /// What a delivery means for the subscriber: a frame, a gap before it (the frame follows
    /// from the next [`Replay::recv`]), or nothing (before the requested offset, or unreadable
    /// as a stream message). A lost connection shows as a `recv` of `None`.
    pub async fn accept(&mut self, delivery: Option<Delivery>) -> Result<Option<ReplayItem>, ReplayError> {
        let frame = match delivery.ok_or(ReplayError::Lost)? {
            Delivery::Held(frame) => return Ok(Some(ReplayItem::Frame(frame))),
            Delivery::Received(message) => message.frame(self.max_body_bytes),
        };
        let Some(frame) = frame else { return Ok(None) };
        if frame.offset < self.from {
            return Ok(None); // RabbitMQ starts at the beginning of the chunk holding `from`
        }
        if self.started {
            return Ok(Some(ReplayItem::Frame(frame)));
        }
        self.started = true;
        if frame.offset > self.from {
            // Either retention removed what was asked for, or the stream has no message at those
            // offsets; only the first is a gap.
            if let Some(first_available) = probe::first_offset(&self.access, &self.stream).await? {
                if first_available > self.from {
                    self.pending = Some(frame);
                    return Ok(Some(ReplayItem::Gap { first_available }));
                }
            }
        }
        Ok(Some(ReplayItem::Frame(frame)))
    }

    /// The next frame if it has already arrived (to fill a chunk without waiting); gaps and
    /// everything else are left to [`Replay::recv`].
    pub fn try_next(&mut self) -> Option<Frame> {
        if !self.started || self.pending.is_some() {
            return None;
        }
        loop {
            let message = self.reader.try_next()?;
            match message.frame(self.max_body_bytes) {
                Some(frame) if frame.offset >= self.from => return Some(frame),
                _ => continue,
            }
        }
    }

    /// Acknowledges everything taken so far (RabbitMQ sends an AMQP stream consumer more only
    /// as it acknowledges). Call it after each chunk, never raced against anything else: a lost
    /// acknowledgement would leave the consumer waiting for deliveries that never come.
    pub async fn acknowledge(&mut self) -> Result<(), ReplayError> {
        Ok(self.reader.acknowledge().await?)
    }

    /// Ends the replay's subscription.
    pub async fn close(self) {
        self.reader.close().await;
    }
}
