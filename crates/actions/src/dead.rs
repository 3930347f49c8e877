//! The work exchange and queue (async jobs) and the dead-letter exchange and queue (jobs that
//! failed for good, and messages no handler could read).

use pgevents_amqp::{
    self as amqp, AmqpError, Brokers, ConfirmedSender, FieldValue, OutgoingMessage, QueueSpec, QueueType,
};

use crate::{Job, WorkKey, SIGNATURE_HEADER};

/// Names of the exchanges and queues of the action stage, and the key work messages are signed
/// with.
#[derive(Debug, Clone)]
pub struct WorkTopology {
    /// Topic exchange work messages are published to (routing key: the action's name).
    pub work_exchange: String,
    /// Durable queue the action runners share.
    pub work_queue: String,
    /// Topic exchange for dead jobs and unreadable messages.
    pub dead_exchange: String,
    /// Durable queue that keeps them for inspection (bound with `#`).
    pub dead_queue: String,
    /// `--work-key-file`: work messages are signed and checked with it (see [`crate::WorkKey`]).
    pub key: Option<WorkKey>,
    /// `--queue-type` of the work and dead-letter queues (and of the worker's queue).
    pub queue_type: QueueType,
}

impl Default for WorkTopology {
    fn default() -> Self {
        WorkTopology {
            work_exchange: "pgevents.work".into(),
            work_queue: "pgevents.actions".into(),
            dead_exchange: "pgevents.dead".into(),
            dead_queue: "pgevents.dead".into(),
            key: None,
            queue_type: QueueType::Classic,
        }
    }
}

impl WorkTopology {
    /// The arguments of every queue whose failures go to the dead-letter exchange.
    pub fn dead_letter_arguments(&self) -> amqp::FieldTable {
        amqp::field_table(&[("x-dead-letter-exchange", FieldValue::from(self.dead_exchange.as_str()))])
    }
}

/// Declares both exchanges and both queues (durable; a no-op when they exist), so work
/// messages wait for a runner and dead jobs are kept even before anyone reads them.
pub async fn declare_work_topology(url: &Brokers, topology: &WorkTopology) -> Result<(), AmqpError> {
    let connection = amqp::connect(url, "pgevents setup").await?;
    let result = async {
        let channel = amqp::open_channel(&connection).await?;
        amqp::declare_topic_exchange(&channel, &topology.dead_exchange).await?;
        amqp::declare_topic_exchange(&channel, &topology.work_exchange).await?;
        let dead = QueueSpec {
            name: topology.dead_queue.clone(),
            durable: true,
            queue_type: topology.queue_type,
            ..Default::default()
        };
        let dead = amqp::declare_queue(&channel, &dead).await?;
        amqp::bind_queue(&channel, &dead, &topology.dead_exchange, &["#".to_owned()]).await?;
        let work = QueueSpec {
            name: topology.work_queue.clone(),
            durable: true,
            queue_type: topology.queue_type,
            arguments: topology.dead_letter_arguments(),
            ..Default::default()
        };
        let work = amqp::declare_queue(&channel, &work).await?;
        amqp::bind_queue(&channel, &work, &topology.work_exchange, &["#".to_owned()]).await?;
        let _ = channel.close().await;
        Ok(())
    }
    .await;
    let _ = connection.close().await;
    result
}

/// A work message for `job` to `exchange` (routing key: the action's name), signed with `key`.
pub fn work_message(job: &Job, exchange: Option<&str>, error: Option<&str>, key: Option<&WorkKey>) -> OutgoingMessage {
    let body = serde_json::to_vec(job).unwrap_or_default();
    let mut headers = vec![("work_item".into(), job.work_item.clone()), ("action".into(), job.action.clone())];
    if let Some(error) = error {
        headers.push(("error".into(), error.to_owned()));
    }
    if let Some(key) = key {
        headers.push((SIGNATURE_HEADER.into(), key.sign(&body)));
    }
    OutgoingMessage {
        message_type: None,
        mandatory: None,
        exchange: exchange.map(std::sync::Arc::from),
        routing_key: job.action.clone(),
        message_id: job.idempotency_key.clone(),
        headers,
        timestamp: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        content_type: pgevents_event::CONTENT_TYPE.into(),
        content_encoding: None,
        app_id: pgevents_event::APP_ID.into(),
        body,
    }
}

/// Publishes dead jobs, with confirms.
#[derive(Clone)]
pub struct DeadLetters {
    sender: ConfirmedSender,
    key: Option<WorkKey>,
}

impl DeadLetters {
    pub fn start(url: Brokers, topology: &WorkTopology) -> DeadLetters {
        DeadLetters {
            sender: ConfirmedSender::to_exchange(url, &topology.dead_exchange, "pgevents dead letters", 64),
            key: topology.key.clone(),
        }
    }

    /// Puts the job in the dead-letter queue (signed), with the error in the `error` header.
    pub async fn publish(&self, job: &Job, error: &str) -> Result<(), AmqpError> {
        self.sender.send(work_message(job, None, Some(error), self.key.as_ref())).await
    }
}
