//! The publishing stage of a session: batches in, published with many messages in flight, and
//! the confirmed LSN out (through a watch channel) as the broker acknowledges. The AMQP side
//! (tags, confirm events) is [`pgevents_amqp::Publisher`]'s; the LSNs are [`LsnTracker`]'s.

use std::sync::Arc;
use std::time::Duration;

use pgevents_amqp::Publisher;
use pgevents_event::Lsn;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::ProducerConfig;
use crate::error::ProducerError;
use crate::lsn_tracker::LsnTracker;
use crate::metrics::{COMMIT_TO_CONFIRM, CONFIRMED_LSN, CONFIRMS_PENDING, EVENTS_CONFIRMED};
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
    let mut tracker = LsnTracker::new(*confirmed.borrow());
    let mut last_progress = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    let far = Duration::from_secs(3600 * 24);
    let events_confirmed = metrics::counter!(EVENTS_CONFIRMED);
    let confirms_pending = metrics::gauge!(CONFIRMS_PENDING);
    loop {
        if drain_deadline.is_some() && tracker.in_flight() == 0 {
            return Ok(publisher);
        }
        Stats::set(&stats.in_flight, tracker.in_flight());
        confirms_pending.set(tracker.in_flight() as f64);
        let confirm_deadline = last_progress + config.confirm_timeout;
        tokio::select! {
            biased;
            event = publisher.next_event() => {
                let (tag, multiple) = event.into_ack()?;
                let before = tracker.in_flight();
                let advanced = tracker.ack(tag, multiple).map_err(|e| ProducerError::Protocol(e.to_string()))?;
                let newly = before - tracker.in_flight();
                Stats::add(&stats.events_confirmed, newly);
                events_confirmed.increment(newly);
                last_progress = Instant::now();
                if let Some(lsn) = advanced {
                    publish_confirmed(&confirmed, &stats, &mut tracker, lsn);
                }
            }
            batch = batches.recv(), if drain_deadline.is_none() && tracker.in_flight() < config.max_in_flight => {
                match batch {
                    Some(Batch { messages, commit, commit_time_micros }) => {
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
                            if let Some(lsn) = tracker.commit(lsn, commit_time_micros) {
                                publish_confirmed(&confirmed, &stats, &mut tracker, lsn);
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

/// Hands a newly confirmed LSN to the status sender and records how long its transactions took
/// from commit to confirm.
fn publish_confirmed(confirmed: &watch::Sender<Lsn>, stats: &Stats, tracker: &mut LsnTracker, lsn: Lsn) {
    confirmed.send_replace(lsn);
    Stats::set(&stats.confirmed_lsn, lsn.0);
    metrics::gauge!(CONFIRMED_LSN).set(lsn.0 as f64);
    let now = unix_micros();
    let histogram = metrics::histogram!(COMMIT_TO_CONFIRM);
    for commit_micros in tracker.take_confirmed_commit_times() {
        histogram.record((now - commit_micros).max(0) as f64 / 1e6);
        Stats::set(&stats.last_commit_micros, commit_micros.max(0) as u64);
    }
}

/// Now, in Unix microseconds.
pub fn unix_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}
