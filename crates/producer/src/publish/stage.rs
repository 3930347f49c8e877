//! The publishing stage: batches in, published with many messages in flight through a
//! [`Transport`], and the confirmed position out (through a watch channel) as the transport
//! confirms. The numbering and confirms are the transport's; the LSNs are [`LsnTracker`]'s. It
//! runs the streamed changes ([`Marks::Wal`]) and the snapshot rows ([`Marks::Batches`]) alike.
//!
//! It takes a batch only while fewer than `max_in_flight` messages and `max_in_flight_bytes`
//! bytes wait for confirms, and publishes nothing while RabbitMQ blocks the publishing (a
//! resource alarm): it then waits for `unblocked` without counting the wait against
//! `confirm_timeout`, and reports `RabbitMQ blocked: <reason>` to `/readyz`.

use std::collections::VecDeque;
use std::sync::Arc;

use pgevents_event::Lsn;
use tokio::sync::{mpsc, watch};

use super::in_flight::InFlightBytes;
use super::lsn_tracker::LsnTracker;
use super::{Batch, Confirm, Flow, Message, Transport};
use crate::clock::{unix_micros, Watchdog};
use crate::config::ProducerConfig;
use crate::error::ProducerError;
use crate::metrics::{
    BLOCKED, BLOCKS, COMMIT_TO_CONFIRM, CONFIRMED_LSN, CONFIRMS_PENDING, EVENTS_CONFIRMED, IN_FLIGHT_BYTES,
    IN_FLIGHT_LIMIT,
};
use crate::stats::{Phase, Stats};

/// What the stage has taken from the reader and not yet published: messages, and the commit
/// marks that follow them. Nearly every entry is a message: boxing them would cost an
/// allocation each to save space on the few marks.
#[allow(clippy::large_enum_variant)]
enum Pending {
    Message(Message),
    Commit(Lsn, Option<i64>),
}

/// Which in-flight limit keeps the stage from taking the next batch.
fn limit_reached(tracker: &LsnTracker, bytes: &InFlightBytes, config: &ProducerConfig) -> Option<&'static str> {
    if tracker.in_flight() >= config.max_in_flight {
        Some("messages")
    } else if bytes.total() as u64 >= config.max_in_flight_bytes {
        Some("bytes")
    } else {
        None
    }
}

/// Publishes until the reader closes the channel and outstanding confirms are in (or the
/// shutdown timeout passes), or until the broker fails.
pub async fn run_publisher<P: Transport>(
    mut publisher: P,
    mut batches: mpsc::Receiver<Batch>,
    confirmed: watch::Sender<Lsn>,
    config: Arc<ProducerConfig>,
    stats: Arc<Stats>,
    marks: Marks,
) -> Result<P, ProducerError> {
    let mut tracker = LsnTracker::new(*confirmed.borrow());
    let mut bytes = InFlightBytes::default();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut flow = publisher.flow();
    // Once the connection is gone its flow no longer changes (its end arrives as an event).
    let mut flow_open = true;
    // No confirm for `confirm_timeout` while messages are in flight: the connection is presumed
    // broken.
    let mut progress = Watchdog::new(config.confirm_timeout);
    let mut drain_deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut limited: Option<&'static str> = None;
    let events_confirmed = metrics::counter!(EVENTS_CONFIRMED);
    let confirms_pending = metrics::gauge!(CONFIRMS_PENDING);
    let in_flight_bytes = metrics::gauge!(IN_FLIGHT_BYTES);
    metrics::gauge!(BLOCKED).set(0.0);
    loop {
        let running = *flow.borrow() == Flow::Running;
        if running {
            let mut out = Confirmed { watch: &confirmed, stats: &stats, marks };
            publish_pending(&mut publisher, &mut pending, &mut tracker, &mut bytes, &flow, &mut out).await?;
        }
        let empty = pending.is_empty();
        if drain_deadline.is_some() && tracker.in_flight() == 0 && empty {
            return Ok(publisher);
        }
        Stats::set(&stats.in_flight, tracker.in_flight());
        Stats::set(&stats.in_flight_bytes, bytes.total() as u64);
        confirms_pending.set(tracker.in_flight() as f64);
        in_flight_bytes.set(bytes.total() as f64);
        let limit = limit_reached(&tracker, &bytes, &config);
        if limit.is_some() && limit != limited {
            metrics::counter!(IN_FLIGHT_LIMIT, "limit" => limit.unwrap_or_default()).increment(1);
        }
        limited = limit;
        tokio::select! {
            biased;
            confirm = publisher.next_confirm() => {
                let Confirm { seq, multiple } = confirm?;
                let before = tracker.in_flight();
                let advanced = tracker.ack(seq, multiple).map_err(|e| ProducerError::Protocol(e.to_string()))?;
                bytes.confirmed(seq, multiple);
                let newly = before - tracker.in_flight();
                if marks == Marks::Wal {
                    Stats::add(&stats.events_confirmed, newly);
                    events_confirmed.increment(newly);
                }
                progress.note();
                if let Some(lsn) = advanced {
                    Confirmed { watch: &confirmed, stats: &stats, marks }.advanced(&mut tracker, lsn);
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
                        stats.set_phase(if marks == Marks::Wal { Phase::Streaming } else { Phase::Snapshot });
                        // Confirms were not expected while blocked.
                        progress.restart();
                    }
                }
            }
            batch = batches.recv(), if empty && running && drain_deadline.is_none() && limit.is_none() => {
                match batch {
                    Some(Batch { messages, commit, commit_time_micros }) => {
                        if tracker.in_flight() == 0 {
                            progress.restart();
                        }
                        pending.extend(messages.into_iter().map(Pending::Message));
                        if let Some(lsn) = commit {
                            pending.push_back(Pending::Commit(lsn, commit_time_micros));
                        }
                    }
                    None => {
                        drain_deadline = Some(Box::pin(tokio::time::sleep(config.shutdown_timeout)));
                    }
                }
            }
            _ = progress.expired(), if tracker.in_flight() > 0 && drain_deadline.is_none() && running => {
                return Err(ProducerError::ConfirmTimeout {
                    in_flight: tracker.in_flight(),
                    seconds: config.confirm_timeout.as_secs(),
                });
            }
            _ = async { if let Some(deadline) = drain_deadline.as_mut() { deadline.await } }, if drain_deadline.is_some() => {
                tracing::warn!(in_flight = tracker.in_flight(), "stopping without confirms for some messages; they will be published again at the next start");
                return Ok(publisher);
            }
        }
    }
}

/// Publishes what is pending, in order, until it is all out or the broker blocks the
/// connection (checked before each message: publishing into a blocked connection stalls).
async fn publish_pending<P: Transport>(
    publisher: &mut P,
    pending: &mut VecDeque<Pending>,
    tracker: &mut LsnTracker,
    bytes: &mut InFlightBytes,
    flow: &watch::Receiver<Flow>,
    out: &mut Confirmed<'_>,
) -> Result<(), ProducerError> {
    let mut published = 0;
    while *flow.borrow() == Flow::Running {
        match pending.pop_front() {
            Some(Pending::Message(message)) => {
                let size = message.body.len();
                let seq = publisher.publish(message).await?;
                tracker.published(seq);
                bytes.published(seq, size);
                published += 1;
            }
            Some(Pending::Commit(lsn, commit_time_micros)) => {
                if let Some(lsn) = tracker.commit(lsn, commit_time_micros) {
                    out.advanced(tracker, lsn);
                }
            }
            None => break,
        }
    }
    publisher.flush().await?;
    if out.marks == Marks::Wal {
        Stats::add(&out.stats.events_published, published);
    }
    Ok(())
}

/// What the marks between batches are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marks {
    /// Commit LSNs and idle positions of the WAL: the confirmed one goes to PostgreSQL.
    Wal,
    /// The snapshot's batch numbers: the confirmed one tells the snapshot which batch is stored.
    Batches,
}

/// Where a newly confirmed mark goes.
struct Confirmed<'a> {
    watch: &'a watch::Sender<Lsn>,
    stats: &'a Stats,
    marks: Marks,
}

impl Confirmed<'_> {
    /// Hands a newly confirmed mark on; for the WAL, to the status sender, with how long its
    /// transactions took from commit to confirm.
    fn advanced(&mut self, tracker: &mut LsnTracker, lsn: Lsn) {
        self.watch.send_replace(lsn);
        if self.marks == Marks::Batches {
            return;
        }
        Stats::set(&self.stats.confirmed_lsn, lsn.0);
        metrics::gauge!(CONFIRMED_LSN).set(lsn.0 as f64);
        let now = unix_micros();
        let histogram = metrics::histogram!(COMMIT_TO_CONFIRM);
        for commit_micros in tracker.take_confirmed_commit_times() {
            histogram.record((now - commit_micros).max(0) as f64 / 1e6);
            Stats::set(&self.stats.last_commit_micros, commit_micros.max(0) as u64);
        }
    }
}

/// The stage as a task that a caller hands batches to and waits on, one at a time: the
/// snapshot's rows are published with the same limits, flow control and confirm timeout as the
/// streamed changes.
pub struct StageHandle<P> {
    /// `None` once finishing: the stage then drains and ends.
    batches: Option<mpsc::Sender<Batch>>,
    confirmed: watch::Receiver<Lsn>,
    task: tokio::task::JoinHandle<Result<P, ProducerError>>,
    last_mark: u64,
}

/// A handle dropped before [`StageHandle::finish`] (the snapshot failed) stops its stage: its
/// transport is dropped with it.
impl<P> Drop for StageHandle<P> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<P: Transport + 'static> StageHandle<P> {
    pub fn start(publisher: P, config: Arc<ProducerConfig>, stats: Arc<Stats>) -> StageHandle<P> {
        let (batches, rx) = mpsc::channel(1);
        let (confirmed_tx, confirmed) = watch::channel(Lsn::ZERO);
        let task = tokio::spawn(run_publisher(publisher, rx, confirmed_tx, config, stats, Marks::Batches));
        StageHandle { batches: Some(batches), confirmed, task, last_mark: 0 }
    }

    /// Publishes `messages` and returns once every one is confirmed.
    pub async fn publish_confirmed(&mut self, messages: Vec<Message>) -> Result<(), ProducerError> {
        self.last_mark += 1;
        let mark = Lsn(self.last_mark);
        let batch = Batch { messages, commit: Some(mark), commit_time_micros: None };
        let sent = match &self.batches {
            Some(batches) => batches.send(batch).await.is_ok(),
            None => false,
        };
        if !sent || self.confirmed.wait_for(|confirmed| *confirmed >= mark).await.is_err() {
            return Err(self.failure().await);
        }
        Ok(())
    }

    /// Why the stage ended before its work was done.
    async fn failure(&mut self) -> ProducerError {
        match (&mut self.task).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => ProducerError::Protocol("the publish stage stopped unexpectedly".into()),
            Err(e) => ProducerError::Protocol(format!("internal task failed: {e}")),
        }
    }

    /// Lets the stage drain (everything handed over was confirmed already) and closes the
    /// transport.
    pub async fn finish(mut self) -> Result<(), ProducerError> {
        self.batches = None;
        let publisher =
            (&mut self.task).await.map_err(|e| ProducerError::Protocol(format!("internal task failed: {e}")))??;
        publisher.close().await;
        Ok(())
    }
}
