//! The pgevents producer: streams changes from a PostgreSQL logical replication slot to a
//! RabbitMQ topic exchange without losing any.
//!
//! A session (see [`session`]) runs three tasks: the reader (replication stream, decoding,
//! per-transaction assembly), the publisher (many messages in flight, publisher confirms) and
//! the status sender (standby status updates). An LSN is reported to PostgreSQL as flushed only
//! after every message before it was confirmed ([`publish::lsn_tracker::LsnTracker`]). [`run`] restarts
//! failed sessions with backoff, resuming from the last confirmed LSN.

pub mod backfill;
pub mod check;
mod clock;
mod config;
mod database;
mod error;
mod message;
pub mod metrics;
mod monitor;
mod oversize;
mod pipeline;
mod publish;
mod reader;
mod routing;
mod session;
mod setup;
pub mod signals;
mod snapshot;
mod standby;
mod state;
mod stats;
mod status;
mod table_read;
mod txbuffer;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{Compression, HeaderMode, ProducerConfig, PublishTo, SnapshotMode, StreamOutputConfig, TableName};
pub use error::ProducerError;
pub use message::WRITTEN_HEADERS;
pub use oversize::{stub, Oversize, StubError, Stubbed};
pub use routing::RoutingConfig;
pub use stats::{Phase, Stats};

use pgevents_retry::{ErrorKind, Policy, SessionEnd, Step, Supervisor};
use session::run_session;
use state::SessionState;

/// Runs the producer until `shutdown` is cancelled (then returns `Ok` after a clean stop) or an
/// error that retrying cannot fix. Errors before streaming first started are returned at once,
/// so that bad settings fail fast.
pub async fn run(config: ProducerConfig, stats: Arc<Stats>, shutdown: CancellationToken) -> Result<(), ProducerError> {
    let config = Arc::new(config);
    let mut state = SessionState::default();
    let policy = Policy { min: config.backoff_min, max: config.backoff_max, ..Policy::default() };
    let progress = tokio::spawn(log_progress(stats.clone(), shutdown.clone()));
    // Since when the slot has been found busy (held by a connection that is not a producer
    // holding the slot's lock, e.g. a crashed producer's walsender that has not exited yet).
    let mut busy_since: Option<Instant> = None;
    let mut supervisor = Supervisor::new("producer session", policy);
    let result = loop {
        let outcome = run_session(&config, &mut state, &stats, &shutdown).await;
        if let Err(e) = &outcome {
            ::metrics::counter!(metrics::ERRORS, "kind" => e.label()).increment(1);
        }
        let end = match outcome {
            Ok(()) => SessionEnd::Stop(Ok(())),
            Err(e) if shutdown.is_cancelled() => {
                tracing::warn!(error = %e, "error while stopping");
                SessionEnd::Stop(Ok(()))
            }
            Err(ProducerError::SlotBusy { slot, pid })
                if busy_since.get_or_insert_with(Instant::now).elapsed() < config.slot_busy_timeout =>
            {
                tracing::info!(%slot, pid = pid.map(|p| p.to_string()).unwrap_or_default(), "replication slot in use by another connection; waiting for it to be released");
                stats.set_phase(Phase::Reconnecting);
                SessionEnd::Pause(Duration::from_secs(1))
            }
            // After streaming began, a setting or an event only the operator can fix: stay up,
            // not ready, saying why (restarting would stop at the same place again).
            Err(e)
                if e.kind() == ErrorKind::Config && (state.streamed || matches!(e, ProducerError::Oversize { .. })) =>
            {
                halt(&e, &stats, &shutdown).await;
                SessionEnd::Stop(Ok(()))
            }
            Err(e) if !state.streamed || !e.kind().is_transient() => SessionEnd::Stop(Err(e)),
            Err(e) => {
                busy_since = None;
                Stats::add(&stats.reconnects, 1);
                ::metrics::counter!(metrics::RECONNECTS).increment(1);
                stats.set_phase(Phase::Reconnecting);
                SessionEnd::retry(format!("{e} (resuming after {})", state.confirmed))
            }
        };
        match supervisor.next(end, &shutdown).await {
            Step::Again => {}
            Step::Stop(result) => break result,
            Step::Cancelled => break Ok(()),
        }
    };
    if stats.phase() != Phase::Halted {
        stats.set_phase(Phase::Stopped);
    }
    progress.abort();
    result
}

/// Halts: nothing more is read or published (the slot keeps the confirmed position), and
/// `/readyz`, the `pgevents_halted` metric and the log say why, until shutdown.
async fn halt(error: &ProducerError, stats: &Stats, shutdown: &CancellationToken) {
    tracing::error!(error = %error, "halted: fix the cause and restart the producer; it resumes from the confirmed position");
    stats.set_phase_with(Phase::Halted, Some(error.to_string()));
    ::metrics::gauge!(metrics::HALTED).set(1.0);
    shutdown.cancelled().await;
    ::metrics::gauge!(metrics::HALTED).set(0.0);
}

/// Logs a progress line every 5 seconds while events flow: rate, confirmed position and how far
/// behind the server's WAL position it is.
async fn log_progress(stats: Arc<Stats>, shutdown: CancellationToken) {
    let every = Duration::from_secs(5);
    let mut last = Stats::get(&stats.events_confirmed);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        let now = Stats::get(&stats.events_confirmed);
        if now != last {
            let confirmed = Stats::get(&stats.confirmed_lsn);
            tracing::info!(
                events_confirmed = now,
                rate_per_s = (now - last) / every.as_secs(),
                confirmed_lsn = %pgevents_event::Lsn(confirmed),
                lag_bytes = Stats::get(&stats.server_wal_lsn).saturating_sub(confirmed),
                in_flight = Stats::get(&stats.in_flight),
                "progress"
            );
            last = now;
        }
    }
}
