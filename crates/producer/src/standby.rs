//! High availability: of all producers configured with the same slot, the one holding a
//! session-level advisory lock (keyed on the slot name) streams; the others wait in standby and
//! the first to get the lock after the active one dies takes over, resuming from the slot's
//! confirmed LSN. The lock lives on the catalog connection, so PostgreSQL releases it the moment
//! that connection ends, even after `kill -9`.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::database::{Database, LockHolder};
use crate::error::ProducerError;
use crate::metrics::STANDBY_LOCK_SUSPECT;
use crate::stats::{Phase, Stats};

/// First key of the two-key advisory lock: "pgev" in ASCII, so the lock is recognisable in
/// `pg_locks` (classid 1885824374) next to an application's own advisory locks.
pub const LOCK_NAMESPACE: i32 = 0x7067_6576;

/// How often a standby producer tries for the lock.
const POLL: Duration = Duration::from_millis(500);
/// How often a standby looks at who holds the lock and whether the slot is streamed.
const CHECK_HOLDER: Duration = Duration::from_secs(5);

/// Whether this producer holds the slot's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    Held,
    /// Shutdown was requested while waiting for it.
    Cancelled,
}

/// What a standby makes of the lock holder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    /// It streams the slot (or nobody holds the lock any more).
    Streaming,
    /// It holds the lock, and nobody has streamed the slot since `since`.
    NotStreaming { pid: i32, since: Instant },
    /// Reported: it has held the lock without streaming for `lock_holder_timeout`.
    Suspect { pid: i32 },
}

impl Holder {
    /// The next state after looking at `holder` at `now`; `Some(report)` when it becomes
    /// suspect.
    fn observe(&self, holder: Option<&LockHolder>, now: Instant, timeout: Duration) -> Holder {
        match (self, holder) {
            (_, None) => Holder::Streaming,
            (_, Some(h)) if h.slot_streamed => Holder::Streaming,
            (Holder::NotStreaming { pid, since }, Some(h)) if *pid == h.pid => {
                if now.duration_since(*since) >= timeout {
                    Holder::Suspect { pid: h.pid }
                } else {
                    self.clone()
                }
            }
            (Holder::Suspect { pid }, Some(h)) if *pid == h.pid => self.clone(),
            (_, Some(h)) => Holder::NotStreaming { pid: h.pid, since: now },
        }
    }
}

/// Takes the slot's lock, waiting in standby while another producer holds it. Meanwhile it
/// checks that the holder really streams the slot: any role may take a plain advisory lock,
/// and a session that holds this one without streaming would keep every producer in standby
/// while WAL piles up. After `lock_holder_timeout` of that it is reported (log with the
/// holder's PID and user, `/readyz`, `pgevents_standby_lock_suspect`).
pub async fn take_slot_lock(
    db: &Database,
    slot: &str,
    lock_holder_timeout: Duration,
    stats: &Stats,
    shutdown: &CancellationToken,
) -> Result<Lock, ProducerError> {
    let mut announced = false;
    let mut holder = Holder::Streaming;
    let mut next_check = Instant::now();
    loop {
        if db.try_advisory_lock(LOCK_NAMESPACE, slot).await? {
            if announced {
                tracing::info!(%slot, "took over: the previous producer of this slot is gone");
                metrics::gauge!(STANDBY_LOCK_SUSPECT).set(0.0);
            }
            return Ok(Lock::Held);
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + CHECK_HOLDER;
            let current = db.advisory_lock_holder(LOCK_NAMESPACE, slot, slot).await.ok().flatten();
            if !announced {
                tracing::info!(
                    %slot,
                    holder = current.as_ref().map(ToString::to_string).unwrap_or_else(|| "unknown".into()),
                    "standby: another producer streams this slot; waiting to take over when it stops"
                );
                stats.set_phase(Phase::Standby);
                announced = true;
            }
            let next = holder.observe(current.as_ref(), Instant::now(), lock_holder_timeout);
            report(&holder, &next, current.as_ref(), slot, lock_holder_timeout, stats);
            holder = next;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => return Ok(Lock::Cancelled),
        }
    }
}

/// Logs and shows a change between a trusted and a suspect lock holder.
fn report(before: &Holder, after: &Holder, holder: Option<&LockHolder>, slot: &str, timeout: Duration, stats: &Stats) {
    match (before, after, holder) {
        (Holder::Suspect { .. }, Holder::Suspect { .. }, _) => {}
        (_, Holder::Suspect { pid }, Some(h)) => {
            let detail = format!(
                "the holder of the slot's lock, {h}, has not streamed slot {slot:?} for {}s: if it is not a pgevents producer (any role can take an advisory lock), end its session with SELECT pg_terminate_backend({pid})",
                timeout.as_secs()
            );
            tracing::warn!(%slot, pid, user = %h.user, application = %h.application, client = %h.client, "{detail}");
            stats.set_phase_with(Phase::Standby, Some(detail));
            metrics::gauge!(STANDBY_LOCK_SUSPECT).set(1.0);
        }
        (Holder::Suspect { .. }, _, _) => {
            tracing::info!(%slot, "the slot's lock holder changed or streams again");
            stats.set_phase(Phase::Standby);
            metrics::gauge!(STANDBY_LOCK_SUSPECT).set(0.0);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(pid: i32, slot_streamed: bool) -> LockHolder {
        LockHolder {
            pid,
            user: "mallory".into(),
            application: "psql".into(),
            client: "local socket".into(),
            slot_streamed,
        }
    }

    #[test]
    fn a_holder_that_does_not_stream_becomes_suspect_after_the_timeout() {
        let timeout = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut state = Holder::Streaming.observe(Some(&holder(7, false)), t0, timeout);
        assert_eq!(state, Holder::NotStreaming { pid: 7, since: t0 });
        state = state.observe(Some(&holder(7, false)), t0 + Duration::from_secs(59), timeout);
        assert!(matches!(state, Holder::NotStreaming { .. }));
        state = state.observe(Some(&holder(7, false)), t0 + Duration::from_secs(60), timeout);
        assert_eq!(state, Holder::Suspect { pid: 7 });
        // Another session took the lock: its own minute starts.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(state.observe(Some(&holder(8, false)), t1, timeout), Holder::NotStreaming { pid: 8, since: t1 });
        // The slot is streamed, or nobody holds the lock: fine.
        assert_eq!(state.observe(Some(&holder(7, true)), t1, timeout), Holder::Streaming);
        assert_eq!(state.observe(None, t1, timeout), Holder::Streaming);
    }
}
