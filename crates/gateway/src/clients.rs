//! Who is connected: admission under `--max-clients`, and a watchdog that disconnects a
//! subscriber that has stopped reading (a write to it has been pending for `--stall-timeout`),
//! so a stuck client cannot hold a slot, a replay or memory forever.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics;

pub struct Clients {
    slots: Arc<Semaphore>,
    max: usize,
    entries: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
    epoch: Instant,
    stall_timeout: Duration,
}

/// Since when a write to a subscriber has been pending (milliseconds since the registry
/// started, 0 when none is); and how to drop its connection.
pub struct Activity {
    /// How logs name the subscriber.
    label: String,
    kill: CancellationToken,
    writing_since_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    /// A write to the connection starts.
    pub fn writing(&self) {
        self.writing_since_ms.store(millis_since(self.epoch), Ordering::Relaxed);
    }

    /// The write is done (the socket took it).
    pub fn written(&self) {
        self.writing_since_ms.store(0, Ordering::Relaxed);
    }

    /// How long the pending write has waited, if one is pending.
    fn stalled_for(&self, now_ms: u64) -> Option<Duration> {
        let since = self.writing_since_ms.load(Ordering::Relaxed);
        (since != 0).then(|| Duration::from_millis(now_ms.saturating_sub(since)))
    }
}

/// Milliseconds since `epoch`, from 1 (0 means never).
fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1)
}

/// A subscriber's place: released (with its slot) when dropped.
pub struct Admission {
    id: u64,
    clients: Arc<Clients>,
    pub activity: Arc<Activity>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.clients.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
        ::metrics::gauge!(metrics::CLIENTS).decrement(1.0);
    }
}

impl Clients {
    pub fn new(max: usize, stall_timeout: Duration) -> Arc<Clients> {
        let max = max.max(1);
        Arc::new(Clients {
            slots: Arc::new(Semaphore::new(max)),
            max,
            entries: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            stall_timeout,
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for a new subscriber, or `None` when `--max-clients` are connected. `kill`
    /// drops the subscriber's connection.
    pub fn admit(self: &Arc<Self>, label: &str, kill: CancellationToken) -> Option<Admission> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity {
            label: label.to_owned(),
            kill,
            writing_since_ms: AtomicU64::new(0),
            epoch: self.epoch,
        });
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).insert(id, activity.clone());
        ::metrics::gauge!(metrics::CLIENTS).increment(1.0);
        Some(Admission { id, clients: self.clone(), activity, _slot: slot })
    }

    /// Subscribers connected now.
    #[cfg(test)]
    fn connected(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Every second, drops the connections of subscribers stalled longer than the timeout.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let now_ms = millis_since(self.epoch);
            let stalled: Vec<Arc<Activity>> = self
                .entries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .filter(|a| a.stalled_for(now_ms).is_some_and(|d| d > self.stall_timeout))
                .cloned()
                .collect();
            for activity in stalled {
                tracing::info!(subscriber = %activity.label, timeout_s = self.stall_timeout.as_secs(), "subscriber disconnected: it has not read what was sent to it for longer than --stall-timeout");
                ::metrics::counter!(metrics::STALLED).increment(1);
                activity.kill.cancel();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_maximum_and_frees_slots_on_drop() {
        let clients = Clients::new(2, Duration::from_secs(30));
        let a = clients.admit("a", CancellationToken::new()).unwrap();
        let _b = clients.admit("b", CancellationToken::new()).unwrap();
        assert!(clients.admit("c", CancellationToken::new()).is_none());
        assert_eq!(clients.connected(), 2);
        drop(a);
        assert!(clients.admit("c", CancellationToken::new()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn disconnects_a_subscriber_that_stopped_reading() {
        let clients = Clients::new(10, Duration::from_secs(3));
        let shutdown = CancellationToken::new();
        let (reading_kill, stuck_kill) = (CancellationToken::new(), CancellationToken::new());
        let reading = clients.admit("reading", reading_kill.clone()).unwrap();
        let stuck = clients.admit("stuck", stuck_kill.clone()).unwrap();
        tokio::spawn(clients.clone().watch(shutdown.clone()));
        stuck.activity.writing();
        for _ in 0..6 {
            reading.activity.writing();
            tokio::time::sleep(Duration::from_millis(1000)).await;
            reading.activity.written();
        }
        assert!(!reading_kill.is_cancelled(), "writes that finish are not a stall");
        assert!(stuck_kill.is_cancelled(), "data waited and nobody took it");
        shutdown.cancel();
    }
}
