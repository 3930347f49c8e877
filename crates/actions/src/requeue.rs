//! `pgevents requeue-dead`: jobs from the dead-letter queue back to the work exchange, once the
//! cause is fixed (the API is back, the rule corrected).
//!
//! Each job is republished (with confirms) marked `revive`, so the action runner runs it again
//! with a fresh attempt budget although its last row says `dead`, then it is removed from the
//! dead-letter queue. Messages that are not jobs (unreadable events) stay where they are, and so
//! do jobs whose signature does not hold when work messages are signed (`--work-key-file`):
//! anyone who may publish to the dead-letter exchange could otherwise have any action run.

use pgevents_amqp::{self as amqp, AmqpError, Brokers, ConfirmedSender, FieldTable};

use crate::dead::work_message;
use crate::{Job, WorkTopology, SIGNATURE_HEADER};

/// What a requeue did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequeueReport {
    /// Jobs sent back to the work exchange.
    pub requeued: u64,
    /// Messages left in the dead-letter queue because they are not jobs.
    pub kept: u64,
    /// Of those, jobs left because their signature does not hold (or is missing).
    pub unsigned: u64,
}

/// Moves up to `limit` jobs (and at most what the queue held at the start) from the
/// dead-letter queue to the work exchange; `work_item` keeps only that work item's jobs.
pub async fn requeue_dead(
    url: &Brokers,
    topology: &WorkTopology,
    work_item: Option<&str>,
    limit: u64,
) -> Result<RequeueReport, AmqpError> {
    let connection = amqp::connect(url, "pgevents requeue-dead").await?;
    let result = async {
        let channel = amqp::open_channel(&connection).await?;
        let waiting = u64::from(amqp::queue_depth(&channel, &topology.dead_queue).await?);
        let budget = waiting.min(limit);
        let mut report = RequeueReport::default();
        if budget == 0 {
            return Ok(report);
        }
        let work = ConfirmedSender::to_exchange(url.clone(), &topology.work_exchange, "pgevents requeue-dead", 64);
        // Messages left alone stay unacknowledged (so they are not delivered again to this
        // consumer) and go back to the queue when the channel closes.
        let prefetch = u16::try_from(budget).unwrap_or(u16::MAX);
        let mut deliveries = amqp::consume(&channel, &topology.dead_queue, prefetch, FieldTable::new()).await?;
        let quiet = std::time::Duration::from_secs(2);
        while report.requeued + report.kept < budget {
            let Ok(Some(delivery)) = tokio::time::timeout(quiet, deliveries.next()).await else { break };
            let signed = match &topology.key {
                None => true,
                Some(key) => delivery.header(SIGNATURE_HEADER).is_some_and(|s| key.verify(&delivery.body, &s)),
            };
            let job = serde_json::from_slice::<Job>(&delivery.body)
                .ok()
                .filter(|job| work_item.is_none_or(|name| job.work_item == name));
            let (Some(mut job), true) = (job, signed) else {
                report.kept += 1;
                report.unsigned += u64::from(!signed);
                continue;
            };
            job.revive = true;
            work.send(work_message(&job, None, None, topology.key.as_ref())).await?;
            amqp::ack(&channel, delivery.delivery_tag).await?;
            report.requeued += 1;
        }
        let _ = channel.close().await;
        Ok(report)
    }
    .await;
    let _ = connection.close().await;
    result
}
