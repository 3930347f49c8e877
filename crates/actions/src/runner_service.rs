//! `pgevents action-runner`: consumes work messages and runs their jobs.

use std::sync::Arc;

use pgevents_amqp::AmqpUrl;
use pgevents_consumer::{ConnectionWatch, Consumer, ConsumerConfig, ConsumerError, Outcome, QueueMode};
use tokio_util::sync::CancellationToken;

use crate::{Job, JobError, JobOutcome, JobRunner, WorkTopology};

/// How the worker and the action runner consume: the same settings, each on its own queue.
#[derive(Debug, Clone)]
pub struct StageConsumer {
    pub url: AmqpUrl,
    pub topology: WorkTopology,
    /// Messages the broker sends ahead.
    pub prefetch: u16,
    /// Messages handled at once.
    pub concurrency: usize,
    /// Told whether the stage is connected to RabbitMQ and consuming.
    pub on_connected: ConnectionWatch,
}

impl StageConsumer {
    /// A consumer of the durable `queue` bound to `exchange` with `keys`, whose rejected
    /// messages go to the dead-letter exchange.
    pub fn consumer_config(&self, exchange: &str, queue: &str, keys: Vec<String>, name: &str) -> ConsumerConfig {
        let mut consumer = ConsumerConfig::new(self.url.clone(), exchange);
        consumer.queue = QueueMode::Durable(queue.to_owned());
        consumer.binding_keys = keys;
        consumer.prefetch = self.prefetch.max(1);
        consumer.concurrency = self.concurrency.max(1);
        consumer.dead_letter_exchange = Some(self.topology.dead_exchange.clone());
        // A stage's `Retry` means PostgreSQL or RabbitMQ is unavailable (a job's own failures
        // are counted in `action_run`): retried with backoff until they are back, never
        // dead-lettered for an outage.
        consumer.max_deliveries = None;
        consumer.retry_delay_max = std::time::Duration::from_secs(30);
        consumer.name = name.to_owned();
        consumer.on_connected = self.on_connected.clone();
        consumer
    }
}

/// What to do with a work message after trying its job.
fn settle(result: Result<JobOutcome, JobError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(e) => Outcome::Retry(e.to_string()),
    }
}

/// Consumes the work queue until `shutdown`.
pub async fn run_action_runner(
    stage: StageConsumer,
    runner: Arc<JobRunner>,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let topology = &stage.topology;
    let consumer = stage.consumer_config(
        &topology.work_exchange,
        &topology.work_queue,
        vec!["#".to_owned()],
        "pgevents action-runner",
    );
    let stop = shutdown.clone();
    let handler = move |delivery: pgevents_amqp::Delivery| {
        let runner = runner.clone();
        let stop = stop.clone();
        async move {
            let job: Job = match serde_json::from_slice(&delivery.body) {
                Ok(job) => job,
                Err(e) => return Outcome::Fail(format!("not a pgevents work message: {e}")),
            };
            settle(runner.run(&job, &stop).await)
        }
    };
    Consumer::messages(consumer, handler).run(shutdown).await
}
