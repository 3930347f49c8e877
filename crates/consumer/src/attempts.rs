//! Running one delivery's handler until it is settled: a panic is caught and counted like a
//! `Retry`; a `Retry` runs again in place after a jittered exponential delay (the message
//! stays unacknowledged, so it keeps its place and no other consumer takes it meanwhile); after
//! `max_deliveries` runs the message is given up with the last reason. `Unavailable` waits the
//! same way but is not counted: an outage is no fault of the message. A message is held at most
//! `max_hold` in all; then it goes back to the queue and its count starts again (unless the
//! broker counts deliveries, as quorum queues do).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use pgevents_amqp::Delivery;
use pgevents_retry::Backoff;
use tokio_util::sync::CancellationToken;

use crate::handler::{Handler, IncomingEvent, MessageHandler, Outcome};

/// How often and how patiently a `Retry` is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first `Retry`; it doubles after each further one (±20% jitter).
    pub first_delay: Duration,
    /// The longest wait between two runs.
    pub max_delay: Duration,
    /// Runs of the handler (deliveries) before the message is given up; `None`: never give up.
    pub max_deliveries: Option<NonZeroU32>,
    /// Longest time a message is held unacknowledged between runs; a retry that would wait
    /// longer puts it back in the queue instead (RabbitMQ closes the channel of a consumer
    /// that holds a delivery beyond its `consumer_timeout`).
    pub max_hold: Duration,
}

/// What becomes of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Handled: acknowledge.
    Ack,
    /// Not handled, and the consumer is stopping or has held it for `max_hold`: back to the
    /// queue.
    Requeue,
    /// Will not be handled: to the dead-letter exchange with the reason.
    GiveUp { reason: String, deliveries: u32 },
}

/// A delivery with the handler that will take it.
pub enum Work {
    Event(Arc<IncomingEvent>, Arc<dyn Handler>),
    Message(Arc<Delivery>, Arc<dyn MessageHandler>),
}

impl Work {
    /// The keyed lane of an event (its table and primary key); messages that are not events
    /// run in parallel.
    pub fn lane(&self) -> Option<u64> {
        match self {
            Work::Event(incoming, _) => crate::lanes::event_lane(&incoming.event),
            Work::Message(..) => None,
        }
    }

    pub fn delivery(&self) -> &Delivery {
        match self {
            Work::Event(incoming, _) => &incoming.delivery,
            Work::Message(delivery, _) => delivery,
        }
    }

    /// One run of the handler, in a task of its own so that a panic is caught (and reported
    /// as a `Retry`, to be counted like one).
    async fn attempt(&self) -> Outcome {
        let run = match self {
            Work::Event(incoming, handler) => {
                let (incoming, handler) = (incoming.clone(), handler.clone());
                tokio::spawn(async move { handler.handle(&incoming).await })
            }
            Work::Message(delivery, handler) => {
                let (delivery, handler) = (delivery.clone(), handler.clone());
                tokio::spawn(async move { handler.handle(&delivery).await })
            }
        };
        match run.await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Retry(format!("the handler panicked: {}", panic_text(e))),
        }
    }
}

fn panic_text(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned()),
        Err(e) => e.to_string(),
    }
}

/// Deliveries of this message before this one, as the broker counts them (quorum queues set
/// `x-delivery-count` on redeliveries); 0 where it does not count.
fn earlier_deliveries(delivery: &Delivery) -> u32 {
    delivery.header_i64("x-delivery-count").and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

/// Runs `work` until it is acknowledged, given up, or `shutdown` interrupts a wait.
/// `waited` is how long the delivery has been held already (behind an earlier event of its row):
/// it counts toward `max_hold`, since the broker's `consumer_timeout` counts from the delivery.
pub async fn run(work: &Work, policy: RetryPolicy, shutdown: &CancellationToken, waited: Duration) -> Verdict {
    let mut deliveries = earlier_deliveries(work.delivery());
    let mut held = waited;
    // Runs so far, counted or not (the backoff grows with both).
    let mut runs: u32 = 0;
    loop {
        runs = runs.saturating_add(1);
        let reason = match work.attempt().await {
            Outcome::Ok => return Verdict::Ack,
            Outcome::Fail(reason) => return Verdict::GiveUp { reason, deliveries: deliveries.saturating_add(1) },
            Outcome::Retry(reason) => {
                deliveries = deliveries.saturating_add(1);
                if policy.max_deliveries.is_some_and(|max| deliveries >= max.get()) {
                    let reason = format!("gave up after {deliveries} deliveries: {reason}");
                    return Verdict::GiveUp { reason, deliveries };
                }
                reason
            }
            Outcome::Unavailable(reason) => reason,
        };
        let delay = Backoff::after_failures(policy.first_delay, policy.max_delay, runs);
        held += delay;
        if held > policy.max_hold {
            tracing::info!(%reason, deliveries, "handler asked for a retry; held long enough, back to the queue");
            return Verdict::Requeue;
        }
        tracing::info!(%reason, deliveries, delay_ms = delay.as_millis() as u64, "handler asked for a retry");
        tokio::select! {
            _ = shutdown.cancelled() => return Verdict::Requeue,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
