//! A consumer of a RabbitMQ stream over the stream protocol: events in stream order, one at a
//! time, the same [`Registry`] and handlers as the queue consumer, and the offset of the last
//! handled event stored on the broker under the consumer's name, so that a restarted consumer
//! goes on right after it (server-side offset tracking).
//!
//! The offset is stored only after the handler returned `Ok` (or the event was skipped): an
//! event whose handler had not finished runs again after a restart, none is skipped. It is stored
//! every `store_every` events or `store_interval`, whichever comes first, and when the consumer
//! stops; a crash may thus run up to that many events again: handlers must be idempotent (the
//! event's `message_id` is stable).
//!
//! A log cannot go past an event without giving it up: a `Retry` runs the handler again in
//! place (jittered exponential delay, `max_runs` at most); a `Fail`, a `Retry` too many or a
//! body that is not an event then stops the consumer with the offset in the error
//! ([`OnFailure::Stop`], the default), or is skipped with a warning naming its offset
//! ([`OnFailure::Skip`]): the event stays in the stream, to be read again from there.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use pgevents_amqp::{self as amqp, BasicProperties, Delivery, FieldValue};
use pgevents_event::Event;
use pgevents_retry::{ErrorKind, Policy, SessionEnd, Step, Supervisor};
use pgevents_stream::{Record, Start, StreamError, StreamReader, StreamUrl};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::attempts::{self, RetryPolicy, Verdict, Work};
use crate::consumer::ConnectionWatch;
use crate::handler::{IncomingEvent, Registry};

/// The header that carries an event's stream offset, as RabbitMQ gives it to AMQP consumers of
/// a stream.
pub const STREAM_OFFSET: &str = "x-stream-offset";

/// What becomes of an event that will not be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The consumer stops with an error naming the event's offset; it starts there again.
    Stop,
    /// A warning with the offset and the reason, and on to the next event.
    Skip,
}

#[derive(Debug, Clone)]
pub struct StreamConsumerConfig {
    pub url: StreamUrl,
    pub stream: String,
    /// The name the offset is stored under: one per application reading the stream (run one
    /// consumer per name at a time).
    pub name: String,
    /// Where a consumer that has stored no offset yet starts: `Start::First` (everything the
    /// stream holds) or `Start::Next` (what is written from now on).
    pub start: Start,
    /// Store the offset after this many handled events at most...
    pub store_every: u32,
    /// ...and after this long at most (when events were handled meanwhile).
    pub store_interval: Duration,
    /// The wait before a `Retry`ed event runs again; it doubles after each further one (±20%
    /// jitter) up to `retry_delay_max`.
    pub retry_delay: Duration,
    pub retry_delay_max: Duration,
    /// Runs of the handler on one event before it is given up (`None`: retry forever).
    pub max_runs: Option<NonZeroU32>,
    pub on_failure: OnFailure,
    /// Largest body accepted once decompressed.
    pub max_body_bytes: usize,
    /// Told `true` when reading starts and `false` when the connection is lost.
    pub on_connected: ConnectionWatch,
    /// Longest wait between reconnection attempts.
    pub backoff_max: Duration,
}

impl StreamConsumerConfig {
    pub fn new(url: StreamUrl, stream: &str, name: &str) -> Self {
        StreamConsumerConfig {
            url,
            stream: stream.to_owned(),
            name: name.to_owned(),
            start: Start::First,
            store_every: 1000,
            store_interval: Duration::from_secs(1),
            retry_delay: Duration::from_secs(1),
            retry_delay_max: Duration::from_secs(60),
            max_runs: NonZeroU32::new(crate::DEFAULT_MAX_DELIVERIES),
            on_failure: OnFailure::Stop,
            max_body_bytes: crate::DEFAULT_MAX_BODY_BYTES,
            on_connected: ConnectionWatch::default(),
            backoff_max: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamConsumerError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the event at offset {offset} of stream {stream:?} was given up: {reason}; it is still in the stream (fix the cause and restart, or set OnFailure::Skip)")]
    GivenUp { stream: String, offset: u64, reason: String },
}

impl StreamConsumerError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StreamConsumerError::Stream(e) => e.kind(),
            StreamConsumerError::GivenUp { .. } => ErrorKind::Permanent,
        }
    }
}

/// Reads a stream and hands its events to the registry's handlers.
pub struct StreamConsumer {
    config: StreamConsumerConfig,
    registry: Registry,
}

/// The offset handled last, and whether the broker has it.
struct Progress {
    handled: Option<u64>,
    unstored: u32,
    since: Instant,
}

impl StreamConsumer {
    pub fn new(config: StreamConsumerConfig, registry: Registry) -> Self {
        StreamConsumer { config, registry }
    }

    /// Runs until `shutdown` (then stores the offset of the last handled event), an event is
    /// given up with [`OnFailure::Stop`], or an error that reconnecting cannot fix.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StreamConsumerError> {
        let policy = Policy { max: self.config.backoff_max, ..Policy::default() };
        let mut supervisor = Supervisor::new("RabbitMQ stream consumer", policy);
        loop {
            let end = match self.session(&shutdown).await {
                Ok(()) => SessionEnd::Stop(Ok(())),
                Err(e) if !e.kind().is_transient() => SessionEnd::Stop(Err(e)),
                Err(e) => SessionEnd::retry(e),
            };
            match supervisor.next(end, &shutdown).await {
                Step::Again => {}
                Step::Stop(result) => return result,
                Step::Cancelled => return Ok(()),
            }
        }
    }

    async fn session(&self, shutdown: &CancellationToken) -> Result<(), StreamConsumerError> {
        let config = &self.config;
        let connection_name = format!("pgevents stream consumer ({})", config.name);
        let mut reader =
            StreamReader::open_tracked(&config.url, &config.stream, &config.name, config.start, &connection_name)
                .await?;
        config.on_connected.tell(true);
        tracing::info!(stream = %config.stream, name = %config.name, "reading the stream");
        let mut progress = Progress { handled: None, unstored: 0, since: Instant::now() };
        let outcome = self.read(&mut reader, &mut progress, shutdown).await;
        config.on_connected.tell(false);
        // Whatever ended the session, what was handled is stored (if the connection still can).
        let stored = self.store(&reader, &mut progress).await;
        outcome.and(stored)
    }

    async fn read(
        &self,
        reader: &mut StreamReader,
        progress: &mut Progress,
        shutdown: &CancellationToken,
    ) -> Result<(), StreamConsumerError> {
        loop {
            let due = progress.since + self.config.store_interval;
            let record = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                record = reader.next() => record?,
                _ = tokio::time::sleep_until(due), if progress.unstored > 0 => {
                    self.store(reader, progress).await?;
                    continue;
                }
            };
            let offset = record.offset;
            match self.handle(record, shutdown).await {
                Handled::Done => {}
                Handled::Interrupted => return Ok(()),
                Handled::GivenUp(reason) => match self.config.on_failure {
                    OnFailure::Stop => {
                        return Err(StreamConsumerError::GivenUp { stream: self.config.stream.clone(), offset, reason })
                    }
                    OnFailure::Skip => {
                        tracing::warn!(stream = %self.config.stream, offset, %reason, "skipped an event that was given up; it is still in the stream at this offset");
                    }
                },
            }
            progress.handled = Some(offset);
            progress.unstored += 1;
            // (Checked here too: with a backlog the next event is always ready before the timer.)
            let interval_passed = Instant::now() >= progress.since + self.config.store_interval;
            if progress.unstored >= self.config.store_every.max(1) || interval_passed {
                self.store(reader, progress).await?;
            }
        }
    }

    /// Stores the last handled offset, if the broker does not have it yet.
    async fn store(&self, reader: &StreamReader, progress: &mut Progress) -> Result<(), StreamConsumerError> {
        progress.since = Instant::now();
        if let (Some(offset), true) = (progress.handled, progress.unstored > 0) {
            reader.store_offset(&self.config.name, offset).await?;
            progress.unstored = 0;
        }
        Ok(())
    }

    async fn handle(&self, record: Record, shutdown: &CancellationToken) -> Handled {
        let incoming = match incoming(&record, self.config.max_body_bytes) {
            Ok(incoming) => incoming,
            Err(reason) => return Handled::GivenUp(format!("not a readable pgevents event: {reason}")),
        };
        let Some(handler) = self.registry.find(&incoming.event.table_name, incoming.event.action) else {
            return Handled::Done; // no route: ignored, as the queue consumer does
        };
        let policy = RetryPolicy {
            first_delay: self.config.retry_delay,
            max_delay: self.config.retry_delay_max,
            max_deliveries: self.config.max_runs,
            max_hold: Duration::MAX,
        };
        match attempts::run(&Work::Event(Arc::new(incoming), handler), policy, shutdown, Duration::ZERO).await {
            Verdict::Ack => Handled::Done,
            Verdict::Requeue => Handled::Interrupted,
            Verdict::GiveUp { reason, .. } => Handled::GivenUp(reason),
        }
    }
}

enum Handled {
    Done,
    /// Shutdown interrupted a retry's wait: not handled.
    Interrupted,
    GivenUp(String),
}

/// A stream message as handlers see it: the event, and the delivery an AMQP consumer of the
/// stream would get (routing key the table, the application properties as headers but those
/// named `x-...`, the offset in `x-stream-offset`).
fn incoming(record: &Record, max_body_bytes: usize) -> Result<IncomingEvent, String> {
    let body = match record.body(max_body_bytes) {
        Some(body) => body.map_err(|e| e.to_string())?.into_owned(),
        None => return Err("the message has no data section".into()),
    };
    let event = Event::from_slice(&body).map_err(|e| e.to_string())?;
    let message_id = event.message_id().map(|id| id.to_string()).unwrap_or_default();
    // Names starting with `x-` are the broker's (`x-stream-offset`, `x-delivery-count`): a
    // property of the message may not pass for one.
    let mut headers: Vec<(String, FieldValue)> = pgevents_stream::properties(&record.message)
        .into_iter()
        .filter(|(name, _)| !name.to_ascii_lowercase().starts_with("x-"))
        .map(|(name, value)| (name, FieldValue::from(value)))
        .collect();
    headers.push((STREAM_OFFSET.to_owned(), FieldValue::l(i64::try_from(record.offset).unwrap_or(i64::MAX))));
    let pairs: Vec<(&str, FieldValue)> = headers.iter().map(|(name, value)| (name.as_str(), value.clone())).collect();
    let mut properties = BasicProperties::default();
    properties
        .with_message_id(&message_id)
        .with_content_type("application/json")
        .with_headers(amqp::field_table(&pairs));
    let delivery = Delivery {
        delivery_tag: record.offset,
        exchange: String::new(),
        routing_key: event.table_name.clone(),
        redelivered: false,
        properties,
        body: body.clone(),
    };
    Ok(IncomingEvent { event, body, message_id, delivery })
}
