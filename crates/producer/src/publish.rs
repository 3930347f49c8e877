//! The publishing half of a session: batches in, published with many messages in flight, and
//! the confirmed LSN out (through a watch channel) as the broker acknowledges.

use std::sync::Arc;
use std::time::Duration;

use pgevents_amqp::{ConfirmEvent, Publisher};
use pgevents_event::Lsn;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::ProducerConfig;
use crate::confirm::ConfirmTracker;
use crate::error::ProducerError;
use crate::reader::Batch;
use crate::stats::Stats;

/// Publishes until the reader closes the channel and outstanding confirms are in (or the
/// shutdown timeout passes), or until the broker fails.
pub async fn run_publisher<P: Publisher>(
    mut publisher: P,
    mut batches: mpsc::Receiver<Batch>,
    confirmed: watch::Sender<Lsn>,
    config: Arc<ProducerConfig>,
    stats: Arc<Stats>,
) -> Result<P, ProducerError> {
    let mut tracker = ConfirmTracker::new(*confirmed.borrow());
    let mut last_progress = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    let far = Duration::from_secs(3600 * 24);
    loop {
        if drain_deadline.is_some() && tracker.in_flight() == 0 {
            return Ok(publisher);
        }
        Stats::set(&stats.in_flight, tracker.in_flight());
        let confirm_deadline = last_progress + config.confirm_timeout;
        tokio::select! {
            biased;
            event = publisher.next_event() => {
                match event {
                    ConfirmEvent::Ack { tag, multiple } => {
                        let before = tracker.in_flight();
                        let advanced = tracker.ack(tag, multiple).map_err(|e| ProducerError::Protocol(e.to_string()))?;
                        Stats::add(&stats.events_confirmed, before - tracker.in_flight());
                        last_progress = Instant::now();
                        if let Some(lsn) = advanced {
                            publish_confirmed(&confirmed, &stats, lsn);
                        }
                    }
                    ConfirmEvent::Nack { .. } => return Err(ProducerError::Nacked),
                    ConfirmEvent::Returned { routing_key, reply_code, reply_text, .. } => {
                        return Err(ProducerError::Returned { routing_key, reply_code, reply_text });
                    }
                    ConfirmEvent::Closed(reason) => return Err(ProducerError::BrokerClosed(reason)),
                }
            }
            batch = batches.recv(), if drain_deadline.is_none() && tracker.in_flight() < config.max_in_flight => {
                match batch {
                    Some(Batch { messages, commit }) => {
                        if tracker.in_flight() == 0 {
                            last_progress = Instant::now();
                        }
                        let count = messages.len() as u64;
                        for message in messages {
                            let tag = publisher.publish(message).await?;
                            tracker.published(tag);
                        }
                        Stats::add(&stats.events_published, count);
                        if let Some(lsn) = commit {
                            if let Some(lsn) = tracker.commit(lsn) {
                                publish_confirmed(&confirmed, &stats, lsn);
                            }
                        }
                    }
                    None => {
                        drain_deadline = Some(Instant::now() + config.shutdown_timeout);
                    }
                }
            }
            _ = tokio::time::sleep_until(confirm_deadline), if tracker.in_flight() > 0 && drain_deadline.is_none() => {
                return Err(ProducerError::ConfirmTimeout {
                    in_flight: tracker.in_flight(),
                    seconds: config.confirm_timeout.as_secs(),
                });
            }
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(|| Instant::now() + far)), if drain_deadline.is_some() => {
                tracing::warn!(in_flight = tracker.in_flight(), "stopping without confirms for some messages; they will be published again at the next start");
                return Ok(publisher);
            }
        }
    }
}

fn publish_confirmed(confirmed: &watch::Sender<Lsn>, stats: &Stats, lsn: Lsn) {
    confirmed.send_replace(lsn);
    Stats::set(&stats.confirmed_lsn, lsn.0);
}
