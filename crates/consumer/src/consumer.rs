//! The consumer loop: declare, bind, receive, dispatch to handlers, settle, reconnect.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgevents_amqp::{self as amqp, AmqpError, Brokers, Channel, Delivery, ErrorKind, QueueSpec, QueueType};
use pgevents_event::Event;
use pgevents_retry::{Policy, SessionEnd, Step, Supervisor};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::attempts::{self, RetryPolicy, Verdict, Work};
use crate::dead_letter::{DeadLetters, Settle};
use crate::handler::{BatchHandler, Handler, IncomingEvent, MessageHandler, Registry, Together};
use crate::lanes::Lanes;

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
    pub url: Brokers,
    pub exchange: String,
    pub queue: QueueMode,
    /// The type of a durable queue (`Quorum` for a cluster); a temporary queue is classic.
    pub queue_type: QueueType,
    /// Topic binding keys (`public.*`, `#`).
    pub binding_keys: Vec<String>,
    /// Unacknowledged deliveries the broker may send ahead.
    pub prefetch: u16,
    /// Handlers running at once.
    pub concurrency: usize,
    /// Wait before the handler runs again after its first `Retry` (or panic); the wait doubles
    /// after each further one, with ±20% jitter, up to `retry_delay_max`. The message stays
    /// unacknowledged meanwhile (it keeps its place in the queue).
    pub retry_delay: Duration,
    /// Longest wait between two runs of a retried message.
    pub retry_delay_max: Duration,
    /// Runs of the handler on one message (counting earlier deliveries where the broker counts
    /// them, as quorum queues do) before it is given up: sent to `dead_letter_exchange` with
    /// the reason. `None`: retry forever.
    pub max_deliveries: Option<NonZeroU32>,
    /// Longest time a retried message is held unacknowledged in all; a retry that would wait
    /// longer puts it back in the queue (where its count starts again on classic queues).
    /// Keep it below RabbitMQ's `consumer_timeout`.
    pub max_hold: Duration,
    /// Shown in the RabbitMQ management UI.
    pub name: String,
    /// Told `true` when consuming starts and `false` when the connection is lost (e.g. to
    /// drive a readiness check).
    pub on_connected: ConnectionWatch,
    /// Where messages a handler `Fail`s or retries `max_deliveries` times (and unreadable ones)
    /// go: a copy with `error` and `deliveries` headers is published with confirms, then the
    /// original is acknowledged. The queue is declared with this `x-dead-letter-exchange`, so
    /// the broker dead-letters a message itself if the copy cannot be published. Without it
    /// such messages are dropped.
    pub dead_letter_exchange: Option<String>,
    /// Largest body accepted once decompressed (a gzip body can expand without bound); larger
    /// ones are rejected like unreadable ones.
    pub max_body_bytes: usize,
}

/// Default of [`ConsumerConfig::max_deliveries`].
pub const DEFAULT_MAX_DELIVERIES: u32 = 10;

/// Default of [`ConsumerConfig::max_body_bytes`].
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

impl ConsumerConfig {
    pub fn new(url: Brokers, exchange: &str) -> Self {
        ConsumerConfig {
            url,
            exchange: exchange.to_owned(),
            queue: QueueMode::Temporary,
            queue_type: QueueType::Classic,
            binding_keys: vec!["#".to_owned()],
            prefetch: 64,
            concurrency: 1,
            retry_delay: Duration::from_secs(1),
            retry_delay_max: Duration::from_secs(60),
            max_deliveries: NonZeroU32::new(DEFAULT_MAX_DELIVERIES),
            max_hold: Duration::from_secs(600),
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

    pub(crate) fn tell(&self, connected: bool) {
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
    #[error("{0}")]
    ConnectionEnded(String),
}

impl ConsumerError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConsumerError::Amqp(e) => e.kind(),
            ConsumerError::StreamEnded | ConsumerError::ConnectionEnded(_) => ErrorKind::Transient,
        }
    }
}

/// A consumer: configuration plus what handles the messages.
pub struct Consumer {
    config: ConsumerConfig,
    handlers: Handlers,
    dead_letters: Arc<DeadLetters>,
}

enum Handlers {
    /// pgevents events, routed by table and action.
    Events(Registry),
    /// pgevents events, up to `size` at once when several are waiting; `one` is the same
    /// handler, for an event run alone.
    Batches { one: Arc<dyn Handler>, batch: Arc<dyn BatchHandler>, size: usize },
    /// Any message, as delivered.
    Messages(Arc<dyn MessageHandler>),
}

/// What a task of the consumer gives back.
enum Finished {
    /// How to settle its one delivery.
    One(Settle),
    /// A batch's events, in order, with what became of each, and when the batch began.
    Batch(Vec<(Work, Together)>, Instant),
}

/// Events a batch left to run alone, waiting for a free handler slot: tag, lane, the work, and
/// when it began to be held.
type Waiting = std::collections::VecDeque<(u64, Option<u64>, Work, Instant)>;

/// What the consumer keeps while a session lasts.
struct Running {
    tasks: JoinSet<Finished>,
    /// Each task's deliveries.
    tags: Tags,
    /// Events of one row wait for the one before them (keyed lanes), whatever the concurrency.
    lanes: Lanes<(u64, Work, Instant)>,
    /// What batches left to run alone; they start before new deliveries, as handler slots free
    /// up. Unacknowledged, they go back to the queue with the channel if the consumer stops
    /// first.
    waiting: Waiting,
    /// Stops the retries waiting for their next run: at shutdown, or when the connection is
    /// gone (the broker then gives their deliveries back to the queue by itself).
    abandon: CancellationToken,
}

/// Each running task's deliveries: tag and lane.
type Tags = HashMap<tokio::task::Id, Vec<(u64, Option<u64>)>>;

/// Decodes the body (gunzipping when the producer compressed it) into an event.
fn parse(delivery: &Delivery, max_body_bytes: usize) -> Result<(Event, Vec<u8>), String> {
    let body = delivery.decoded_body(max_body_bytes).map_err(|e| e.to_string())?.into_owned();
    let event = Event::from_slice(&body).map_err(|e| e.to_string())?;
    Ok((event, body))
}

impl Consumer {
    /// Consumes pgevents events and hands them to the registry's handlers.
    pub fn new(config: ConsumerConfig, registry: Registry) -> Self {
        Consumer::with(config, Handlers::Events(registry))
    }

    /// Consumes pgevents events, handing `handler` up to `size` of them at once when several
    /// are waiting (one at a time otherwise); an event it does not handle in a batch runs
    /// alone, as with [`Consumer::new`].
    pub fn batched<H: BatchHandler>(config: ConsumerConfig, handler: H, size: usize) -> Self {
        let handler = Arc::new(handler);
        let (one, batch): (Arc<dyn Handler>, Arc<dyn BatchHandler>) = (handler.clone(), handler);
        Consumer::with(config, Handlers::Batches { one, batch, size: size.max(1) })
    }

    /// Consumes messages of any kind (e.g. work messages) and hands each to `handler`.
    pub fn messages(config: ConsumerConfig, handler: impl MessageHandler) -> Self {
        Consumer::with(config, Handlers::Messages(Arc::new(handler)))
    }

    fn with(config: ConsumerConfig, handlers: Handlers) -> Self {
        let dead_letters = DeadLetters::new(&config.url, config.dead_letter_exchange.as_deref(), &config.name);
        Consumer { config, handlers, dead_letters: Arc::new(dead_letters) }
    }

    /// Consumes until `shutdown` (then returns after running handlers finish) or an error that
    /// reconnecting cannot fix. Errors before the first successful start are returned at once.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let mut started = false;
        let mut supervisor = Supervisor::new("RabbitMQ consumer", Policy::default());
        loop {
            let end = match self.session(&shutdown, &mut started).await {
                Ok(()) => SessionEnd::Stop(Ok(())),
                Err(e) if !started || !e.kind().is_transient() => SessionEnd::Stop(Err(e)),
                Err(e) => SessionEnd::retry(e),
            };
            match supervisor.next(end, &shutdown).await {
                Step::Again => {}
                Step::Stop(result) => return result,
                Step::Cancelled => return Ok(()),
            }
        }
    }

    async fn declare(&self, connection: &amqp::Connection, channel: &Channel) -> Result<String, ConsumerError> {
        // An existing exchange is taken as it is: it may be a consistent-hash exchange in front
        // of several workers' queues. A missing one is declared as a topic exchange, unless the
        // binding keys are weights (a consistent-hash binding): a topic exchange would match
        // none of them and drop every event.
        let exchange = &self.config.exchange;
        if !amqp::exchange_exists(connection, exchange).await? {
            let weights =
                self.config.binding_keys.iter().all(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()));
            if weights {
                return Err(ConsumerError::Amqp(AmqpError::InvalidName {
                    what: "exchange",
                    name: exchange.clone(),
                    reason: "does not exist, and the binding keys are weights: declare the consistent-hash exchange first (see Running at scale)",
                }));
            }
            amqp::declare_topic_exchange(channel, exchange).await?;
        }
        let spec = match &self.config.queue {
            QueueMode::Temporary => QueueSpec { exclusive: true, auto_delete: true, ..Default::default() },
            QueueMode::Durable(name) => QueueSpec {
                name: name.clone(),
                durable: true,
                queue_type: self.config.queue_type,
                ..Default::default()
            },
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
        let queue = self.declare(&connection, &channel).await?;
        let mut deliveries = amqp::consume(&channel, &queue, self.config.prefetch, amqp::FieldTable::new()).await?;
        *started = true;
        self.config.on_connected.tell(true);
        tracing::info!(queue = %queue, exchange = %self.config.exchange, keys = ?self.config.binding_keys, "consuming");

        let concurrency = self.config.concurrency.max(1);
        let mut run = Running {
            tasks: JoinSet::new(),
            tags: HashMap::new(),
            lanes: Lanes::default(),
            waiting: Waiting::new(),
            abandon: shutdown.child_token(),
        };
        // Watched on its own: with every handler slot busy the deliveries are not read, and
        // their end would not tell.
        let mut ended = Box::pin(amqp::ended(&connection));
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                why = &mut ended => break Err(ConsumerError::ConnectionEnded(why)),
                Some(done) = run.tasks.join_next_with_id(), if !run.tasks.is_empty() => {
                    let (id, finished) = finished(done);
                    let Some(deliveries) = run.tags.remove(&id) else { continue };
                    let outcome = match finished {
                        Finished::One(how) => {
                            let mut result = Ok(());
                            for delivery in deliveries {
                                result = result.and(self.settled(&channel, &mut run, delivery, how).await);
                            }
                            result
                        }
                        Finished::Batch(results, began) => self.batch_finished(&channel, &mut run, deliveries, results, began).await,
                    };
                    if let Err(e) = outcome {
                        break Err(e);
                    }
                    while run.tasks.len() < concurrency {
                        let Some((tag, lane, work, held)) = run.waiting.pop_front() else { break };
                        self.spawn_work(&mut run, (tag, lane), work, held.elapsed());
                    }
                }
                delivery = deliveries.next(), if run.tasks.len() < concurrency && run.waiting.is_empty() => {
                    let Some(delivery) = delivery else { break Err(ConsumerError::StreamEnded) };
                    let mut batch = Vec::new();
                    let mut next = Some(delivery);
                    let mut failed = None;
                    while let Some(delivery) = next.take() {
                        let tag = delivery.delivery_tag;
                        match self.dispatch(delivery) {
                            Dispatch::Ignore => {
                                if let Err(e) = settle(&channel, tag, Settle::Ack).await {
                                    failed = Some(e);
                                    break;
                                }
                            }
                            Dispatch::Run(work) => {
                                let lane = work.lane();
                                if let Some((tag, work, _)) = run.lanes.admit(lane, (tag, work, Instant::now())) {
                                    batch.push((tag, lane, work));
                                }
                            }
                            Dispatch::Unreadable(delivery, reason) => {
                                let dead = self.dead_letters.clone();
                                let handle = run.tasks.spawn(async move { Finished::One(dead.give_up(&delivery, &reason, 1).await) });
                                run.tags.insert(handle.id(), vec![(tag, None)]);
                            }
                        }
                        // With a batch handler, what is already waiting joins the batch.
                        if matches!(&self.handlers, Handlers::Batches { size, .. } if batch.len() < *size) {
                            next = deliveries.try_next();
                        }
                    }
                    if let Some(e) = failed {
                        break Err(e);
                    }
                    self.start(&mut run, batch);
                }
            }
        };
        drop(ended);
        if result.is_err() {
            // Not consuming any more: say so at once, not after the running handlers finish.
            self.config.on_connected.tell(false);
        }
        run.abandon.cancel();
        // Let running handlers finish (a retry waiting for its next run is requeued) and settle
        // them, then close. Deliveries still waiting in a lane, and events a batch left to run
        // alone, go back to the queue.
        while let Some(done) = run.tasks.join_next_with_id().await {
            let (id, finished) = finished(done);
            let Some(deliveries) = run.tags.remove(&id) else { continue };
            let settles: Vec<Settle> = match finished {
                Finished::One(how) => vec![how; deliveries.len()],
                Finished::Batch(results, _) => results
                    .iter()
                    .map(|(_, together)| match together {
                        Together::Done => Settle::Ack,
                        Together::Alone => Settle::Requeue,
                    })
                    .collect(),
            };
            for ((tag, _), how) in deliveries.into_iter().zip(settles) {
                let _ = settle(&channel, tag, how).await;
            }
        }
        let _ = channel.close().await;
        let _ = connection.close().await;
        result
    }

    /// Starts the admitted deliveries: as one batch when there are several and the handler
    /// takes batches, each in a task of its own otherwise.
    fn start(&self, run: &mut Running, mut admitted: Vec<(u64, Option<u64>, Work)>) {
        match &self.handlers {
            Handlers::Batches { batch, .. } if admitted.len() > 1 => {
                let deliveries = admitted.iter().map(|(tag, lane, _)| (*tag, *lane)).collect();
                let works: Vec<Work> = admitted.drain(..).map(|(_, _, work)| work).collect();
                let handler = batch.clone();
                let began = Instant::now();
                let handle = run.tasks.spawn(async move { Finished::Batch(run_batch(handler, works).await, began) });
                run.tags.insert(handle.id(), deliveries);
            }
            _ => {
                for (tag, lane, work) in admitted {
                    self.spawn_work(run, (tag, lane), work, Duration::ZERO);
                }
            }
        }
    }

    /// Settles what a batch did; the events it left wait to run alone (their lanes stay busy:
    /// the rows' next events still wait for them), held since the batch `began`.
    async fn batch_finished(
        &self,
        channel: &Channel,
        run: &mut Running,
        deliveries: Vec<(u64, Option<u64>)>,
        results: Vec<(Work, Together)>,
        began: Instant,
    ) -> Result<(), ConsumerError> {
        for ((tag, lane), (work, together)) in deliveries.into_iter().zip(results) {
            match together {
                Together::Done => self.settled(channel, run, (tag, lane), Settle::Ack).await?,
                Together::Alone => run.waiting.push_back((tag, lane, work, began)),
            }
        }
        Ok(())
    }

    /// Settles one delivery, then lets the next event of its row run (or, when it went back to
    /// the queue, sends the row's later events back behind it, in order).
    async fn settled(
        &self,
        channel: &Channel,
        run: &mut Running,
        (tag, lane): (u64, Option<u64>),
        how: Settle,
    ) -> Result<(), ConsumerError> {
        let requeued = matches!(how, Settle::Requeue);
        settle(channel, tag, how).await?;
        let Some(lane) = lane else { return Ok(()) };
        if requeued {
            for (tag, _, _) in run.lanes.requeued(lane) {
                settle(channel, tag, Settle::Requeue).await?;
            }
        } else if let Some((tag, work, arrived)) = run.lanes.finished(lane) {
            self.spawn_work(run, (tag, Some(lane)), work, arrived.elapsed());
        }
        Ok(())
    }

    /// Runs `work` (delivery `tag`, in `lane`) until it is settled, in a task of its own.
    fn spawn_work(&self, run: &mut Running, (tag, lane): (u64, Option<u64>), work: Work, waited: Duration) {
        let (policy, stop, dead) = (self.retry_policy(), run.abandon.clone(), self.dead_letters.clone());
        let handle = run.tasks.spawn(async move {
            Finished::One(match attempts::run(&work, policy, &stop, waited).await {
                Verdict::Ack => Settle::Ack,
                Verdict::Requeue => Settle::Requeue,
                Verdict::GiveUp { reason, deliveries } => dead.give_up(work.delivery(), &reason, deliveries).await,
            })
        });
        run.tags.insert(handle.id(), vec![(tag, lane)]);
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            first_delay: self.config.retry_delay,
            max_delay: self.config.retry_delay_max,
            max_deliveries: self.config.max_deliveries,
            max_hold: self.config.max_hold,
        }
    }

    fn dispatch(&self, delivery: Delivery) -> Dispatch {
        let registry = match &self.handlers {
            Handlers::Events(registry) => Some(registry),
            Handlers::Batches { .. } => None,
            Handlers::Messages(handler) => return Dispatch::Run(Work::Message(Arc::new(delivery), handler.clone())),
        };
        let (event, body) = match parse(&delivery, self.config.max_body_bytes) {
            Ok(parsed) => parsed,
            Err(why) => {
                tracing::warn!(routing_key = %delivery.routing_key, error = %why, "a message that is not a pgevents event");
                return Dispatch::Unreadable(Box::new(delivery), format!("not a pgevents event: {why}"));
            }
        };
        let handler = match (registry, &self.handlers) {
            (Some(registry), _) => registry.find(&event.table_name, event.action),
            (None, Handlers::Batches { one, .. }) => Some(one.clone()),
            (None, _) => None,
        };
        let Some(handler) = handler else {
            return Dispatch::Ignore;
        };
        let message_id = delivery
            .message_id()
            .map(str::to_owned)
            .unwrap_or_else(|| event.message_id().map(|id| id.to_string()).unwrap_or_default());
        Dispatch::Run(Work::Event(Arc::new(IncomingEvent { event, body, message_id, delivery }), handler))
    }
}

/// The task id and result of a finished task (a task cannot panic: handlers run in tasks of
/// their own, but should one be cancelled its deliveries go back to the queue).
fn finished(done: Result<(tokio::task::Id, Finished), tokio::task::JoinError>) -> (tokio::task::Id, Finished) {
    match done {
        Ok((id, finished)) => (id, finished),
        Err(e) => (e.id(), Finished::One(Settle::Requeue)),
    }
}

/// Hands a batch's events to `handler`, in a task of its own so that a panic is caught: then
/// each event runs alone.
async fn run_batch(handler: Arc<dyn BatchHandler>, works: Vec<Work>) -> Vec<(Work, Together)> {
    let events: Vec<Arc<IncomingEvent>> = works
        .iter()
        .filter_map(|work| match work {
            Work::Event(incoming, _) => Some(incoming.clone()),
            Work::Message(..) => None,
        })
        .collect();
    let answers = if events.len() == works.len() {
        tokio::spawn(async move { handler.handle_batch(&events).await }).await.unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut answers = answers.into_iter();
    works.into_iter().map(|work| (work, answers.next().unwrap_or(Together::Alone))).collect()
}

enum Dispatch {
    /// No handler wants it: acknowledge.
    Ignore,
    Run(Work),
    /// Not readable as an event (not JSON, too large once decompressed): give it up.
    Unreadable(Box<Delivery>, String),
}

async fn settle(channel: &Channel, tag: u64, how: Settle) -> Result<(), ConsumerError> {
    match how {
        Settle::Ack => amqp::ack(channel, tag).await?,
        Settle::Requeue => amqp::nack(channel, tag, true).await?,
        Settle::Reject => amqp::nack(channel, tag, false).await?,
    }
    Ok(())
}
