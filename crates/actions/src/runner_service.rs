//! `pgevents action-runner`: consumes work messages and runs their jobs.

use std::sync::Arc;

use pgevents_amqp::AmqpUrl;
use pgevents_consumer::{ConnectionWatch, Consumer, ConsumerConfig, ConsumerError, Outcome, QueueMode};
use tokio_util::sync::CancellationToken;

use crate::{Job, JobError, JobOutcome, JobRunner, WorkTopology};

/// Settings of the action runner.
#[derive(Debug, Clone)]
pub struct ActionRunnerConfig {
    pub url: AmqpUrl,
    pub topology: WorkTopology,
    /// Work messages the broker sends ahead.
    pub prefetch: u16,
    /// Jobs running at once.
    pub concurrency: usize,
    /// Told whether the runner is connected to RabbitMQ and consuming.
    pub on_connected: ConnectionWatch,
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
    config: ActionRunnerConfig,
    runner: Arc<JobRunner>,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let mut consumer = ConsumerConfig::new(config.url, &config.topology.work_exchange);
    consumer.queue = QueueMode::Durable(config.topology.work_queue.clone());
    consumer.binding_keys = vec!["#".to_owned()];
    consumer.prefetch = config.prefetch.max(1);
    consumer.concurrency = config.concurrency.max(1);
    consumer.dead_letter_exchange = Some(config.topology.dead_exchange.clone());
    consumer.name = "pgevents action-runner".to_owned();
    consumer.on_connected = config.on_connected;
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
