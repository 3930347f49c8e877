//! `pgevents action-runner`: consumes work messages and runs their jobs.

use std::sync::Arc;

use pgevents_amqp::Brokers;
use pgevents_consumer::{ConnectionWatch, Consumer, ConsumerConfig, ConsumerError, Outcome, QueueMode};
use tokio_util::sync::CancellationToken;

use crate::{EventReaders, Job, JobError, JobOutcome, JobRunner, WorkTopology, SIGNATURE_HEADER};

/// How the worker and the action runner consume: the same settings, each on its own queue.
#[derive(Debug, Clone)]
pub struct StageConsumer {
    pub url: Brokers,
    pub topology: WorkTopology,
    /// Messages the broker sends ahead.
    pub prefetch: u16,
    /// Messages handled at once.
    pub concurrency: usize,
    /// Told whether the stage is connected to RabbitMQ and consuming.
    pub on_connected: ConnectionWatch,
    /// Deliveries of a message that keeps failing (not for an outage) before it goes to the
    /// dead-letter exchange (`--max-deliveries`).
    pub max_deliveries: std::num::NonZeroU32,
}

impl StageConsumer {
    /// A consumer of the durable `queue` bound to `exchange` with `keys`, whose rejected
    /// messages go to the dead-letter exchange.
    pub fn consumer_config(&self, exchange: &str, queue: &str, keys: Vec<String>, name: &str) -> ConsumerConfig {
        let mut consumer = ConsumerConfig::new(self.url.clone(), exchange);
        consumer.queue = QueueMode::Durable(queue.to_owned());
        consumer.queue_type = self.topology.queue_type;
        consumer.binding_keys = keys;
        consumer.prefetch = self.prefetch.max(1);
        consumer.concurrency = self.concurrency.max(1);
        consumer.dead_letter_exchange = Some(self.topology.dead_exchange.clone());
        // An outage (`Unavailable`) is waited out without limit; a message that keeps failing
        // otherwise (a job's own failures are counted in `action_run`) is poison: dead-lettered
        // after `max_deliveries`.
        consumer.max_deliveries = Some(self.max_deliveries);
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
        Err(e) => e.outcome(),
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
    let key = topology.key.clone();
    if key.is_none() {
        tracing::warn!("work messages are not signed (no --work-key-file): whoever may publish to the work exchange can make any action run on parameters of their choosing; give the workers, the action runners and requeue-dead one key");
    }
    let handler = move |delivery: pgevents_amqp::Delivery| {
        let runner = runner.clone();
        let stop = stop.clone();
        let key = key.clone();
        async move {
            if let Some(key) = &key {
                let signed = delivery.header(SIGNATURE_HEADER).is_some_and(|s| key.verify(&delivery.body, &s));
                if !signed {
                    metrics::counter!(crate::metric::WORK_MESSAGES_REFUSED).increment(1);
                    tracing::warn!(message_id = ?delivery.message_id(), "refused a work message without a valid signature");
                    return Outcome::Fail("a work message without a valid signature (--work-key-file): refused".into());
                }
            }
            let job: Job = match serde_json::from_slice(&delivery.body) {
                Ok(job) => job,
                Err(e) => return Outcome::Fail(format!("not a pgevents work message: {e}")),
            };
            settle(runner.run(&job, EventReaders::Unknown, &stop).await)
        }
    };
    Consumer::messages(consumer, handler).run(shutdown).await
}
