//! The publishing stage of a session: batches in, published with many messages in flight, and
//! the confirmed LSN out (through a watch channel) as the broker acknowledges. The AMQP side
//! (tags, confirm events) is [`pgevents_amqp::Publisher`]'s; the LSNs are [`LsnTracker`]'s.
//!
//! It takes a batch only while fewer than `max_in_flight` messages and `max_in_flight_bytes`
//! bytes wait for confirms, and publishes nothing while RabbitMQ blocks the connection (a
//! resource alarm): it then waits for `unblocked` without counting the wait against
//! `confirm_timeout`, and reports `RabbitMQ blocked: <reason>` to `/readyz`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use pgevents_amqp::{Flow, OutgoingMessage, Publisher};
use pgevents_event::Lsn;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::ProducerConfig;
use crate::error::ProducerError;
use crate::lsn_tracker::LsnTracker;
use crate::metrics::{
    BLOCKED, BLOCKS, COMMIT_TO_CONFIRM, CONFIRMED_LSN, CONFIRMS_PENDING, EVENTS_CONFIRMED, IN_FLIGHT_BYTES,
    IN_FLIGHT_LIMIT,
};
use crate::reader::Batch;
use crate::stats::{Phase, Stats};

/// What the stage has taken from the reader and not yet published: messages, and the commit
/// marks that follow them.
enum Pending {
    Message(OutgoingMessage),
    Commit(Lsn, Option<i64>),
}

/// Body bytes of the messages in flight. Tags are consecutive on a channel, so the sizes are
/// kept in tag order from the oldest unacknowledged one: O(1) per publish and per ack.
#[derive(Default)]
struct InFlightBytes {
    /// The tag of `sizes[0]`.
    first: u64,
    /// Sizes by tag; an acknowledged message in the middle counts 0 until the ones before it
    /// are acknowledged too.
    sizes: VecDeque<usize>,
    total: usize,
}

impl InFlightBytes {
    fn published(&mut self, tag: u64, bytes: usize) {
        if self.sizes.is_empty() {
            self.first = tag;
        }
        self.sizes.push_back(bytes);
        self.total += bytes;
    }

    fn acked(&mut self, tag: u64, multiple: bool) {
        let Some(index) = tag.checked_sub(self.first).and_then(|i| usize::try_from(i).ok()) else { return };
        if multiple {
            let through = (index + 1).min(self.sizes.len());
            self.total -= self.sizes.drain(..through).sum::<usize>();
            self.first += through as u64;
        } else if let Some(size) = self.sizes.get_mut(index) {
            self.total -= std::mem::take(size);
        }
        while self.sizes.front() == Some(&0) {
            self.sizes.pop_front();
            self.first += 1;
        }
    }
}

/// Which in-flight limit keeps the stage from taking the next batch.
fn limit_reached(tracker: &LsnTracker, bytes: &InFlightBytes, config: &ProducerConfig) -> Option<&'static str> {
    if tracker.in_flight() >= config.max_in_flight {
        Some("messages")
    } else if bytes.total as u64 >= config.max_in_flight_bytes {
        Some("bytes")
    } else {
        None
    }
}

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
    let mut bytes = InFlightBytes::default();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut flow = publisher.flow();
    // Once the connection is gone its flow no longer changes (its end arrives as an event).
    let mut flow_open = true;
    let mut last_progress = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    let mut limited: Option<&'static str> = None;
    let far = Duration::from_secs(3600 * 24);
    let events_confirmed = metrics::counter!(EVENTS_CONFIRMED);
    let confirms_pending = metrics::gauge!(CONFIRMS_PENDING);
    let in_flight_bytes = metrics::gauge!(IN_FLIGHT_BYTES);
    metrics::gauge!(BLOCKED).set(0.0);
    loop {
        let running = *flow.borrow() == Flow::Running;
        if running {
            publish_pending(&mut publisher, &mut pending, &mut tracker, &mut bytes, &flow, &confirmed, &stats).await?;
        }
        let empty = pending.is_empty();
        if drain_deadline.is_some() && tracker.in_flight() == 0 && empty {
            return Ok(publisher);
        }
        Stats::set(&stats.in_flight, tracker.in_flight());
        Stats::set(&stats.in_flight_bytes, bytes.total as u64);
        confirms_pending.set(tracker.in_flight() as f64);
        in_flight_bytes.set(bytes.total as f64);
        let limit = limit_reached(&tracker, &bytes, &config);
        if limit.is_some() && limit != limited {
            metrics::counter!(IN_FLIGHT_LIMIT, "limit" => limit.unwrap_or_default()).increment(1);
        }
        limited = limit;
        let confirm_deadline = last_progress + config.confirm_timeout;
        tokio::select! {
            biased;
            event = publisher.next_event() => {
                let (tag, multiple) = event.into_ack()?;
                let before = tracker.in_flight();
                let advanced = tracker.ack(tag, multiple).map_err(|e| ProducerError::Protocol(e.to_string()))?;
                bytes.acked(tag, multiple);
                let newly = before - tracker.in_flight();
                Stats::add(&stats.events_confirmed, newly);
                events_confirmed.increment(newly);
                last_progress = Instant::now();
                if let Some(lsn) = advanced {
                    publish_confirmed(&confirmed, &stats, &mut tracker, lsn);
                }
            }
            changed = flow.changed(), if flow_open => {
                if changed.is_err() {
                    flow_open = false;
                    continue;
                }
                match &*flow.borrow_and_update() {
                    Flow::Blocked(reason) => {
                        metrics::counter!(BLOCKS).increment(1);
                        metrics::gauge!(BLOCKED).set(1.0);
                        stats.set_phase_with(Phase::Blocked, Some(reason.clone()));
                    }
                    Flow::Running => {
                        metrics::gauge!(BLOCKED).set(0.0);
                        stats.set_phase(Phase::Streaming);
                        // Confirms were not expected while blocked.
                        last_progress = Instant::now();
                    }
                }
            }
            batch = batches.recv(), if empty && running && drain_deadline.is_none() && limit.is_none() => {
                match batch {
                    Some(Batch { messages, commit, commit_time_micros }) => {
                        if tracker.in_flight() == 0 {
                            last_progress = Instant::now();
                        }
                        pending.extend(messages.into_iter().map(Pending::Message));
                        if let Some(lsn) = commit {
                            pending.push_back(Pending::Commit(lsn, commit_time_micros));
                        }
                    }
                    None => {
                        drain_deadline = Some(Instant::now() + config.shutdown_timeout);
                    }
                }
            }
            _ = tokio::time::sleep_until(confirm_deadline), if tracker.in_flight() > 0 && drain_deadline.is_none() && running => {
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

/// Publishes what is pending, in order, until it is all out or the broker blocks the
/// connection (checked before each message: publishing into a blocked connection stalls).
async fn publish_pending<P: Publisher>(
    publisher: &mut P,
    pending: &mut VecDeque<Pending>,
    tracker: &mut LsnTracker,
    bytes: &mut InFlightBytes,
    flow: &watch::Receiver<Flow>,
    confirmed: &watch::Sender<Lsn>,
    stats: &Stats,
) -> Result<(), ProducerError> {
    let mut published = 0;
    while *flow.borrow() == Flow::Running {
        match pending.pop_front() {
            Some(Pending::Message(message)) => {
                let size = message.body.len();
                let tag = publisher.publish(message).await?;
                tracker.published(tag);
                bytes.published(tag, size);
                published += 1;
            }
            Some(Pending::Commit(lsn, commit_time_micros)) => {
                if let Some(lsn) = tracker.commit(lsn, commit_time_micros) {
                    publish_confirmed(confirmed, stats, tracker, lsn);
                }
            }
            None => break,
        }
    }
    Stats::add(&stats.events_published, published);
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_bytes_follow_single_and_multiple_acks() {
        let mut bytes = InFlightBytes::default();
        for (tag, size) in [(1, 100), (2, 200), (3, 300), (4, 400)] {
            bytes.published(tag, size);
        }
        assert_eq!(bytes.total, 1000);
        bytes.acked(3, false);
        assert_eq!(bytes.total, 700);
        bytes.acked(2, true);
        assert_eq!(bytes.total, 400);
        bytes.acked(9, true);
        assert_eq!((bytes.total, bytes.sizes.len()), (0, 0));
        bytes.acked(4, false);
        assert_eq!(bytes.total, 0, "an ack for a tag already gone changes nothing");
        // Out of order: the middle one first, then the rest at once.
        for (tag, size) in [(10, 10), (11, 20), (12, 30)] {
            bytes.published(tag, size);
        }
        bytes.acked(11, false);
        assert_eq!((bytes.total, bytes.sizes.len()), (40, 3));
        bytes.acked(10, false);
        assert_eq!((bytes.total, bytes.sizes.len(), bytes.first), (30, 1, 12), "the acknowledged front is dropped");
        bytes.acked(12, true);
        assert_eq!((bytes.total, bytes.sizes.len()), (0, 0));
    }
}
