//! Standby status updates: tell PostgreSQL what has been received and what is confirmed (so it
//! can advance the slot), answer its keepalive requests at once, and probe liveness regularly.

use std::sync::Arc;
use std::time::Duration;

use pgevents_event::Lsn;
use pgevents_replication::StatusSender;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ProducerError;
use crate::stats::Stats;

/// At most this often on account of confirmations alone.
const MIN_GAP: Duration = Duration::from_millis(100);

pub async fn run_status(
    mut sender: StatusSender,
    mut confirmed: watch::Receiver<Lsn>,
    stats: Arc<Stats>,
    reply_requested: Arc<Notify>,
    interval: Duration,
    stop: CancellationToken,
) -> Result<StatusSender, ProducerError> {
    let mut probe = tokio::time::interval(interval);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sent = Instant::now() - MIN_GAP;
    let mut pending = false;
    let mut publisher_gone = false;
    loop {
        let flush_at = last_sent + MIN_GAP;
        let reply = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(sender),
            _ = reply_requested.notified() => false,
            _ = probe.tick() => true,
            changed = confirmed.changed(), if !pending && !publisher_gone => {
                match changed {
                    Ok(()) => pending = true,
                    Err(_) => publisher_gone = true,
                }
                continue;
            }
            _ = tokio::time::sleep_until(flush_at), if pending => false,
        };
        let flushed = *confirmed.borrow_and_update();
        let received = Lsn(Stats::get(&stats.received_lsn));
        sender.send_status(received, flushed, reply).await?;
        pending = false;
        last_sent = Instant::now();
    }
}
