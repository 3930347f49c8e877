//! Handlers and the registry that routes events to them by table and action.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use pgevents_amqp::Delivery;
use pgevents_event::{Action, Event};

use pgevents_event::Glob;

/// An event as received: the parsed body and the AMQP delivery it came in.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    pub event: Event,
    /// The event body exactly as published (decompressed): exact numerics, original key order.
    pub body: Vec<u8>,
    /// The producer's message id (`commit_lsn:seq`), stable across redeliveries.
    pub message_id: String,
    pub delivery: Delivery,
}

/// What a handler decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: acknowledge.
    Ok,
    /// Failed for now: deliver again later. Counts toward `max_deliveries`: a message that
    /// keeps failing is given up.
    Retry(String),
    /// A service the handler needs (the database, the broker) is unreachable: deliver again
    /// later, after the same backoff as `Retry`, without counting toward `max_deliveries` (an
    /// outage does not make a message poison).
    Unavailable(String),
    /// Will never work: give up (dead-letter when the queue has a dead-letter exchange).
    Fail(String),
}

pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// Something that handles events.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(&'a self, event: &'a IncomingEvent) -> HandlerFuture<'a>;
}

/// Any `async fn(&IncomingEvent) -> Outcome`-like closure is a handler.
impl<F, Fut> Handler for F
where
    F: Fn(IncomingEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn handle<'a>(&'a self, event: &'a IncomingEvent) -> HandlerFuture<'a> {
        Box::pin(self(event.clone()))
    }
}

/// What became of an event handed over in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Together {
    /// Handled: acknowledge.
    Done,
    /// Not handled: run it alone with [`Handler::handle`] (its runs, retries and limits as
    /// always).
    Alone,
}

pub type BatchFuture<'a> = Pin<Box<dyn Future<Output = Vec<Together>> + Send + 'a>>;

/// A handler that can also take several events at once (with a backlog, a round trip per
/// batch instead of per event). The events of a batch are of different rows (keyed lanes):
/// none has to wait for another.
pub trait BatchHandler: Handler {
    /// One answer per event, in order (a missing answer is [`Together::Alone`]). Nothing it
    /// leaves undone may be half done: an event answered `Alone` runs again from its start.
    fn handle_batch<'a>(&'a self, events: &'a [Arc<IncomingEvent>]) -> BatchFuture<'a>;
}

/// Something that handles raw messages (not necessarily pgevents events).
pub trait MessageHandler: Send + Sync + 'static {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> HandlerFuture<'a>;
}

impl<F, Fut> MessageHandler for F
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> HandlerFuture<'a> {
        Box::pin(self(delivery.clone()))
    }
}

struct Route {
    table: Glob,
    actions: Vec<Action>,
    handler: Arc<dyn Handler>,
}

/// Routes events to handlers: the first route whose table pattern and actions match wins;
/// events no route matches are acknowledged and ignored.
#[derive(Default, Clone)]
pub struct Registry {
    routes: Vec<Arc<Route>>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Handles `action` events of tables matching `table` (`public.users`, `public.*`, `*`).
    pub fn on(self, table: &str, action: Action, handler: impl Handler) -> Self {
        self.on_actions(table, &[action], handler)
    }

    /// Handles events with any of `actions` (every action when empty).
    pub fn on_actions(mut self, table: &str, actions: &[Action], handler: impl Handler) -> Self {
        self.routes.push(Arc::new(Route {
            table: Glob::new(table),
            actions: actions.to_vec(),
            handler: Arc::new(handler),
        }));
        self
    }

    /// Handles every event of tables matching `table`.
    pub fn on_all(self, table: &str, handler: impl Handler) -> Self {
        self.on_actions(table, &[], handler)
    }

    /// The handler for an event, if any.
    pub fn find(&self, table: &str, action: Action) -> Option<Arc<dyn Handler>> {
        self.routes
            .iter()
            .find(|r| r.table.matches(table) && (r.actions.is_empty() || r.actions.contains(&action)))
            .map(|r| r.handler.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}
