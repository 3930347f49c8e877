//! `pgevents worker`: events in, jobs out (run at once or queued), acknowledged when done.

use std::sync::Arc;

use pgevents_actions::{work_message, EventReaders, Job, JobRunner, StageConsumer};
use pgevents_amqp::ConfirmedSender;
use pgevents_consumer::{
    BatchFuture, BatchHandler, Consumer, ConsumerError, Handler, HandlerFuture, IncomingEvent, Outcome,
};
use pgevents_pg::Pool;
use pgevents_rules::{Mode, RulesCache, WorkItem};
use serde_json::value::RawValue;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::document::event_document;
use crate::evaluate::{EvaluateError, Evaluator};
use crate::metric;

/// Settings of a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub stage: StageConsumer,
    /// The exchange the producer publishes events to.
    pub exchange: String,
    /// The worker's durable queue; workers on the same queue share the events (with
    /// `concurrency` 1 a worker keeps the events' order).
    pub queue: String,
    pub binding_keys: Vec<String>,
    /// `statement_timeout` of filters and queries (`--rule-timeout-ms`).
    pub rule_timeout: Duration,
    /// What a work item's query may return for one event.
    pub row_limits: crate::evaluate::RowLimits,
    /// Events handed over at once when several are waiting (`--batch-size`; 1: one at a time).
    pub batch_size: usize,
}

pub(crate) struct Stage {
    pub(crate) evaluator: Evaluator,
    pub(crate) rules: Arc<RulesCache>,
    pub(crate) runner: Arc<JobRunner>,
    work: ConfirmedSender,
    /// Signs work messages.
    key: Option<pgevents_actions::WorkKey>,
    shutdown: CancellationToken,
    /// Jobs run together in one transaction, at most.
    pub(crate) batch_size: usize,
}

/// The stage as the consumer's handler: one event, or several at once.
struct StageHandler(Arc<Stage>);

impl Handler for StageHandler {
    fn handle<'a>(&'a self, incoming: &'a IncomingEvent) -> HandlerFuture<'a> {
        Box::pin(self.0.handle(incoming))
    }
}

impl BatchHandler for StageHandler {
    fn handle_batch<'a>(&'a self, events: &'a [Arc<IncomingEvent>]) -> BatchFuture<'a> {
        Box::pin(self.0.handle_batch(events))
    }
}

pub(crate) fn info(incoming: &IncomingEvent) -> pgevents_actions::EventInfo {
    let event = &incoming.event;
    pgevents_actions::EventInfo {
        table_name: event.table_name.clone(),
        action: event.action,
        lsn: event.lsn.clone(),
        commit_time: event.commit_time.clone(),
        message_id: incoming.message_id.clone(),
    }
}

impl Stage {
    async fn handle(&self, incoming: &IncomingEvent) -> Outcome {
        let rules = self.rules.get();
        let items: Vec<Arc<WorkItem>> =
            rules.work_items_for(&incoming.event.table_name, incoming.event.action).cloned().collect();
        count_event(!items.is_empty());
        for item in items {
            if let Err(outcome) = self.work_item(incoming, &item).await {
                return outcome;
            }
        }
        Outcome::Ok
    }

    /// Runs or queues every job of one work item; `Err` is how the event must be settled now.
    async fn work_item(&self, incoming: &IncomingEvent, item: &WorkItem) -> Result<(), Outcome> {
        let event_json = document(incoming, item).map_err(Outcome::Fail)?;
        let event = info(incoming);
        let job = |row: usize, parameters| job(incoming, item, &event, &event_json, row, parameters);
        let rows = match self.evaluator.evaluate(item, &incoming.event, event_json.get()).await {
            Ok(rows) => rows,
            Err(EvaluateError::Unavailable(e)) => return Err(Outcome::Unavailable(e)),
            Err(EvaluateError::Rule(error)) => {
                tracing::error!(work_item = ?item.name, message_id = ?incoming.message_id, error = ?error, "work item failed for this event");
                let mut failed = job(0, Default::default());
                failed.idempotency_key = format!("{}/{}/rule", incoming.message_id, item.name);
                return match self.runner.fail_job(&failed, &error).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.outcome()),
                };
            }
        };
        // The evaluator has just asked whether the work item's owner may read this event.
        let readers = item.owner.as_deref().map_or(EventReaders::Unknown, EventReaders::Checked);
        for (row, parameters) in rows.into_iter().enumerate() {
            let job = job(row, parameters);
            count_job(&item.name, item.mode);
            match item.mode {
                Mode::Sync => {
                    self.runner.run(&job, readers, &self.shutdown).await.map_err(|e| e.outcome())?;
                }
                Mode::Async => {
                    self.work
                        .send(work_message(&job, None, None, self.key.as_ref()))
                        .await
                        .map_err(|e| Outcome::Unavailable(format!("cannot queue the job: {e}")))?;
                }
            }
        }
        Ok(())
    }
}

/// The event as `item`'s text sees it (see [`event_document`]).
pub(crate) fn document(incoming: &IncomingEvent, item: &WorkItem) -> Result<Box<RawValue>, String> {
    let document = event_document(&incoming.body, &incoming.message_id, item.transaction_label.as_deref())?;
    RawValue::from_string(document).map_err(|e| format!("event body: {e}"))
}

/// Job `row` of `item` for the event.
pub(crate) fn job(
    incoming: &IncomingEvent,
    item: &WorkItem,
    event: &pgevents_actions::EventInfo,
    event_json: &RawValue,
    row: usize,
    parameters: serde_json::Map<String, serde_json::Value>,
) -> Job {
    Job {
        idempotency_key: Job::key(&incoming.message_id, &item.name, row),
        work_item: item.name.clone(),
        action: item.action.clone(),
        row,
        parameters,
        event: event.clone(),
        event_json: event_json.to_owned(),
        revive: false,
    }
}

pub(crate) fn count_event(matched: bool) {
    metrics::counter!(metric::EVENTS, "result" => if matched { "matched" } else { "unmatched" }).increment(1);
}

pub(crate) fn count_job(work_item: &str, mode: Mode) {
    let mode = match mode {
        Mode::Sync => "sync",
        Mode::Async => "async",
    };
    metrics::counter!(metric::JOBS, "work_item" => work_item.to_owned(), "mode" => mode).increment(1);
}

/// Consumes events until `shutdown`.
pub async fn run_worker(
    config: WorkerConfig,
    pool: Pool,
    rules: Arc<RulesCache>,
    runner: Arc<JobRunner>,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let work = ConfirmedSender::to_exchange(
        config.stage.url.clone(),
        &config.stage.topology.work_exchange,
        "pgevents worker (work messages)",
        256,
    );
    let evaluator = Evaluator { pool, rules: rules.clone(), timeout: config.rule_timeout, limits: config.row_limits };
    let key = config.stage.topology.key.clone();
    let batch_size = config.batch_size.max(1);
    let stage = Arc::new(Stage { evaluator, rules, runner, work, key, shutdown: shutdown.clone(), batch_size });
    let consumer =
        config.stage.consumer_config(&config.exchange, &config.queue, config.binding_keys, "pgevents worker");
    Consumer::batched(consumer, StageHandler(stage), batch_size).run(shutdown).await
}
