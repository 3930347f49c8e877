//! High availability: of all producers configured with the same slot, the one holding a
//! session-level advisory lock (keyed on the slot name) streams; the others wait in standby and
//! the first to get the lock after the active one dies takes over, resuming from the slot's
//! confirmed LSN. The lock lives on the catalog connection, so PostgreSQL releases it the moment
//! that connection ends, even after `kill -9`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::database::Database;
use crate::error::ProducerError;
use crate::stats::{Phase, Stats};

/// First key of the two-key advisory lock: "pgev" in ASCII, so the lock is recognisable in
/// `pg_locks` (classid 1885824374) next to an application's own advisory locks.
pub const LOCK_NAMESPACE: i32 = 0x7067_6576;

/// How often a standby producer tries for the lock.
const POLL: Duration = Duration::from_millis(500);

/// Whether this producer holds the slot's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    Held,
    /// Shutdown was requested while waiting for it.
    Cancelled,
}

/// Takes the slot's lock, waiting in standby while another producer holds it.
pub async fn take_slot_lock(
    db: &Database,
    slot: &str,
    stats: &Stats,
    shutdown: &CancellationToken,
) -> Result<Lock, ProducerError> {
    let mut announced = false;
    loop {
        if db.try_advisory_lock(LOCK_NAMESPACE, slot).await? {
            if announced {
                tracing::info!(%slot, "took over: the previous producer of this slot is gone");
            }
            return Ok(Lock::Held);
        }
        if !announced {
            let holder = db.advisory_lock_holder(LOCK_NAMESPACE, slot).await.ok().flatten();
            tracing::info!(
                %slot,
                holder = holder.as_deref().unwrap_or("unknown"),
                "standby: another producer streams this slot; waiting to take over when it stops"
            );
            stats.set_phase(Phase::Standby);
            announced = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => return Ok(Lock::Cancelled),
        }
    }
}
