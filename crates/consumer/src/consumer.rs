//! The consumer loop: declare, bind, receive, dispatch to handlers, settle, reconnect.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pgevents_amqp::{self as amqp, AmqpError, AmqpUrl, Channel, Delivery, ErrorKind, QueueSpec};
use pgevents_event::Event;
use pgevents_retry::{Reconnect, Waited};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::handler::{IncomingEvent, MessageHandler, Outcome, Registry};

/// Which queue the consumer reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueMode {
    /// A server-named, exclusive queue deleted on disconnect: sees events only while running.
    Temporary,
    /// A durable queue with this name: keeps events while the consumer is away, and several
    /// consumers on it share the load.
    Durable(String),
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub url: AmqpUrl,
    pub exchange: String,
    pub queue: QueueMode,
    /// Topic binding keys (`public.*`, `#`).
    pub binding_keys: Vec<String>,
    /// Unacknowledged deliveries the broker may send ahead.
    pub prefetch: u16,
    /// Handlers running at once.
    pub concurrency: usize,
    /// Wait before a `Retry` delivery goes back to the queue.
    pub retry_delay: Duration,
    /// Shown in the RabbitMQ management UI.
    pub name: String,
    /// Told `true` when consuming starts and `false` when the connection is lost (e.g. to
    /// drive a readiness check).
    pub on_connected: ConnectionWatch,
    /// Where the broker sends messages a handler `Fail`s (and unreadable ones): the queue is
    /// declared with this `x-dead-letter-exchange`. Without it such messages are dropped.
    pub dead_letter_exchange: Option<String>,
    /// Largest body accepted once decompressed (a gzip body can expand without bound); larger
    /// ones are rejected like unreadable ones.
    pub max_body_bytes: usize,
}

/// Default of [`ConsumerConfig::max_body_bytes`].
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

impl ConsumerConfig {
    pub fn new(url: AmqpUrl, exchange: &str) -> Self {
        ConsumerConfig {
            url,
            exchange: exchange.to_owned(),
            queue: QueueMode::Temporary,
            binding_keys: vec!["#".to_owned()],
            prefetch: 64,
            concurrency: 1,
            retry_delay: Duration::from_secs(1),
            name: "pgevents consumer".to_owned(),
            dead_letter_exchange: None,
            on_connected: ConnectionWatch::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// A callback told whether the consumer is connected and consuming.
#[derive(Clone, Default)]
pub struct ConnectionWatch(Option<std::sync::Arc<dyn Fn(bool) + Send + Sync>>);

impl ConnectionWatch {
    pub fn new(callback: impl Fn(bool) + Send + Sync + 'static) -> ConnectionWatch {
        ConnectionWatch(Some(std::sync::Arc::new(callback)))
    }

    fn tell(&self, connected: bool) {
        if let Some(callback) = &self.0 {
            callback(connected);
        }
    }
}

impl std::fmt::Debug for ConnectionWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "ConnectionWatch(set)" } else { "ConnectionWatch(none)" })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("the RabbitMQ delivery stream ended (connection or channel closed)")]
    StreamEnded,
}

impl ConsumerError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConsumerError::Amqp(e) => e.kind(),
            ConsumerError::StreamEnded => ErrorKind::Transient,
        }
    }
}

/// A consumer: configuration plus what handles the messages.
pub struct Consumer {
    config: ConsumerConfig,
    handlers: Handlers,
}

enum Handlers {
    /// pgevents events, routed by table and action.
    Events(Registry),
    /// Any message, as delivered.
    Messages(Arc<dyn MessageHandler>),
}

/// Decodes the body (gunzipping when the producer compressed it) into an event.
fn parse(delivery: &Delivery, max_body_bytes: usize) -> Result<(Event, Vec<u8>), String> {
    let body = delivery.decoded_body(max_body_bytes).map_err(|e| e.to_string())?.into_owned();
    let event = Event::from_slice(&body).map_err(|e| e.to_string())?;
    Ok((event, body))
}

impl Consumer {
    /// Consumes pgevents events and hands them to the registry's handlers.
    pub fn new(config: ConsumerConfig, registry: Registry) -> Self {
        Consumer { config, handlers: Handlers::Events(registry) }
    }

    /// Consumes messages of any kind (e.g. work messages) and hands each to `handler`.
    pub fn messages(config: ConsumerConfig, handler: impl MessageHandler) -> Self {
        Consumer { config, handlers: Handlers::Messages(Arc::new(handler)) }
    }

    /// Consumes until `shutdown` (then returns after running handlers finish) or an error that
    /// reconnecting cannot fix. Errors before the first successful start are returned at once.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let mut started = false;
        let mut reconnect = Reconnect::new("RabbitMQ consumer", Duration::from_millis(500), Duration::from_secs(30));
        loop {
            reconnect.attempt();
            match self.session(&shutdown, &mut started).await {
                Ok(()) => return Ok(()),
                Err(e) if !started || !e.kind().is_transient() => return Err(e),
                Err(e) => {
                    self.config.on_connected.tell(false);
                    if reconnect.wait(&e, &shutdown).await == Waited::Cancelled {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn declare(&self, channel: &Channel) -> Result<String, ConsumerError> {
        amqp::declare_topic_exchange(channel, &self.config.exchange).await?;
        let spec = match &self.config.queue {
            QueueMode::Temporary => QueueSpec { exclusive: true, auto_delete: true, ..Default::default() },
            QueueMode::Durable(name) => QueueSpec { name: name.clone(), durable: true, ..Default::default() },
        };
        let mut spec = spec;
        if let Some(dlx) = &self.config.dead_letter_exchange {
            amqp::declare_topic_exchange(channel, dlx).await?;
            spec.arguments = amqp::field_table(&[("x-dead-letter-exchange", amqp::FieldValue::from(dlx.as_str()))]);
        }
        let queue = amqp::declare_queue(channel, &spec).await?;
        amqp::bind_queue(channel, &queue, &self.config.exchange, &self.config.binding_keys).await?;
        Ok(queue)
    }

    async fn session(&self, shutdown: &CancellationToken, started: &mut bool) -> Result<(), ConsumerError> {
        let connection = amqp::connect(&self.config.url, &self.config.name).await?;
        let channel = amqp::open_channel(&connection).await?;
        let queue = self.declare(&channel).await?;
        let mut deliveries = amqp::consume(&channel, &queue, self.config.prefetch, amqp::FieldTable::new()).await?;
        *started = true;
        self.config.on_connected.tell(true);
        tracing::info!(queue = %queue, exchange = %self.config.exchange, keys = ?self.config.binding_keys, "consuming");

        let concurrency = self.config.concurrency.max(1);
        let mut running: JoinSet<Outcome> = JoinSet::new();
        let mut tags: HashMap<tokio::task::Id, u64> = HashMap::new();
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let (id, outcome) = match done {
                        Ok((id, outcome)) => (id, outcome),
                        Err(e) => (e.id(), Outcome::Retry(format!("handler panicked: {e}"))),
                    };
                    if let Some(tag) = tags.remove(&id) {
                        settle(&channel, tag, &outcome).await?;
                    }
                }
                delivery = deliveries.next(), if running.len() < concurrency => {
                    let Some(delivery) = delivery else { break Err(ConsumerError::StreamEnded) };
                    let tag = delivery.delivery_tag;
                    match self.dispatch(delivery) {
                        Dispatch::Settle(outcome) => settle(&channel, tag, &outcome).await?,
                        Dispatch::Run(work) => {
                            let retry_delay = self.config.retry_delay;
                            let handle = running.spawn(async move {
                                let outcome = work.run().await;
                                if let Outcome::Retry(_) = outcome {
                                    tokio::time::sleep(retry_delay).await;
                                }
                                outcome
                            });
                            tags.insert(handle.id(), tag);
                        }
                    }
                }
            }
        };
        // Let running handlers finish and settle them, then close.
        while let Some(done) = running.join_next_with_id().await {
            let (id, outcome) = match done {
                Ok((id, outcome)) => (id, outcome),
                Err(e) => (e.id(), Outcome::Retry(format!("handler panicked: {e}"))),
            };
            if let Some(tag) = tags.remove(&id) {
                let _ = settle(&channel, tag, &outcome).await;
            }
        }
        let _ = channel.close().await;
        let _ = connection.close().await;
        result
    }

    fn dispatch(&self, delivery: Delivery) -> Dispatch {
        let registry = match &self.handlers {
            Handlers::Events(registry) => registry,
            Handlers::Messages(handler) => return Dispatch::Run(Work::Message(Box::new(delivery), handler.clone())),
        };
        let (event, body) = match parse(&delivery, self.config.max_body_bytes) {
            Ok(parsed) => parsed,
            Err(why) => {
                tracing::warn!(routing_key = %delivery.routing_key, error = %why, "rejecting a message that is not a pgevents event");
                return Dispatch::Settle(Outcome::Fail(why));
            }
        };
        let Some(handler) = registry.find(&event.table_name, event.action) else {
            return Dispatch::Settle(Outcome::Ok);
        };
        let message_id = delivery
            .message_id()
            .map(str::to_owned)
            .unwrap_or_else(|| event.message_id().map(|id| id.to_string()).unwrap_or_default());
        Dispatch::Run(Work::Event(Box::new(IncomingEvent { event, body, message_id, delivery }), handler))
    }
}

enum Dispatch {
    Settle(Outcome),
    Run(Work),
}

/// A delivery with the handler that will take it.
enum Work {
    Event(Box<IncomingEvent>, Arc<dyn crate::Handler>),
    Message(Box<Delivery>, Arc<dyn MessageHandler>),
}

impl Work {
    async fn run(self) -> Outcome {
        match self {
            Work::Event(incoming, handler) => handler.handle(&incoming).await,
            Work::Message(delivery, handler) => handler.handle(&delivery).await,
        }
    }
}

async fn settle(channel: &Channel, tag: u64, outcome: &Outcome) -> Result<(), ConsumerError> {
    match outcome {
        Outcome::Ok => amqp::ack(channel, tag).await?,
        Outcome::Retry(why) => {
            tracing::info!(reason = %why, "handler asked for a retry; requeueing");
            amqp::nack(channel, tag, true).await?
        }
        Outcome::Fail(why) => {
            tracing::warn!(reason = %why, "handler failed; rejecting the message");
            amqp::nack(channel, tag, false).await?
        }
    }
    Ok(())
}
