//! Keeping something in memory in step with tables, through `LISTEN`: a dedicated connection
//! listens on a channel that the tables' triggers notify; notifications are handed over in
//! batches of their distinct payloads, and everything is reloaded every refresh interval (a
//! notification sent while the connection was down is lost) and after reconnecting. When the
//! database is unreachable the last state stays in use and the watcher reconnects with backoff.
//!
//! Any role can `NOTIFY` any channel, so notifications are treated as hints that cost a bounded
//! amount: batches are at least the watcher's pace apart (a cheap reload can follow every
//! [`BATCH_INTERVAL`], an expensive one less often) and hold at most [`PENDING`] payloads;
//! when more arrive than that, they are dropped and one full reload covers them, at most once
//! per [`OVERFLOW_RELOAD_INTERVAL`]; and a steady stream of notifications never delays the
//! periodic full reload.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgevents_retry::{Policy, SessionEnd, Step, Supervisor};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::{connect, drive_connection, ConnectConfig, PgError};

/// Notifications waiting to be handled, at most (more are dropped, and covered by a full
/// reload).
pub const PENDING: usize = 1024;

/// The least time between two batches of notifications for a cheap reload.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Least time between two full reloads caused by dropped notifications.
pub const OVERFLOW_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Counter by `what` and `result` (`handled`, `dropped`): notifications received.
pub const NOTIFICATIONS: &str = "pgevents_listen_notifications_total";

/// What notifications ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Notifications, as their distinct payloads (at most [`PENDING`]).
    Notified(Vec<String>),
    /// Reload everything (notifications were dropped, or the refresh interval passed).
    Everything,
}

/// The receiving end of a listening connection.
pub struct Notifications {
    payloads: mpsc::Receiver<String>,
    /// Set when a notification did not fit.
    overflowed: Arc<AtomicBool>,
}

impl Notifications {
    /// Waits for a notification, then takes every other one waiting: their distinct payloads.
    /// `None` when the connection has ended.
    async fn batch(&mut self) -> Option<Vec<String>> {
        let first = self.payloads.recv().await?;
        let mut distinct = BTreeSet::from([first]);
        while let Ok(next) = self.payloads.try_recv() {
            distinct.insert(next);
        }
        Some(distinct.into_iter().collect())
    }

    fn take_overflow(&self) -> bool {
        self.overflowed.swap(false, Ordering::Relaxed)
    }
}

/// Something kept in step with the database.
pub trait Watched: Send + Sync + 'static {
    type Error: std::fmt::Display + Send;

    /// Applies `change`, reading what it needs through `client`.
    fn apply(&self, client: &mut Client, change: Change) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// A connection listening on `channel`: the client, and its notifications (which end with the
/// connection).
pub async fn listen(
    settings: &ConnectConfig,
    role: &'static str,
    channel: &'static str,
) -> Result<(Client, Notifications), PgError> {
    let (client, driver) = connect(settings, role).await?;
    let (tx, rx) = mpsc::channel(PENDING);
    let overflowed = Arc::new(AtomicBool::new(false));
    let overflow = overflowed.clone();
    tokio::spawn(drive_connection(driver, move |from, payload| {
        if from != channel {
            return;
        }
        let result = match tx.try_send(payload.to_owned()) {
            Ok(()) => "handled",
            Err(_) => {
                overflow.store(true, Ordering::Relaxed);
                "dropped"
            }
        };
        metrics::counter!(NOTIFICATIONS, "what" => role, "result" => result).increment(1);
    }));
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .map_err(|e| PgError::new(format!("cannot LISTEN on {channel}"), e))?;
    Ok((client, Notifications { payloads: rx, overflowed }))
}

/// When the next full reload is due.
struct Reloads {
    refresh: Duration,
    next_full: Instant,
    last_full: Instant,
}

impl Reloads {
    fn new(refresh: Duration) -> Reloads {
        let now = Instant::now();
        Reloads { refresh, next_full: now + refresh, last_full: now }
    }

    fn done_full(&mut self) {
        self.last_full = Instant::now();
        self.next_full = self.last_full + self.refresh;
    }

    /// Notifications were dropped: a full reload soon, but not more often than the interval.
    fn overflowed(&mut self) {
        let soon = (self.last_full + OVERFLOW_RELOAD_INTERVAL).max(Instant::now());
        self.next_full = self.next_full.min(soon);
    }
}

/// How often a watcher reloads.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Everything is read again this often.
    pub refresh: Duration,
    /// Batches of notifications are at least this far apart.
    pub batches: Duration,
}

/// Applies notifications and periodic reloads to `watched` until `shutdown`, reconnecting
/// with backoff. `client` and `notified` come from [`listen`] (the caller has loaded the
/// initial state with them).
pub async fn watch<W: Watched>(
    watched: Arc<W>,
    settings: ConnectConfig,
    role: &'static str,
    channel: &'static str,
    listening: (Client, Notifications),
    pace: Pace,
    shutdown: CancellationToken,
) {
    let mut reloads = Reloads::new(pace.refresh);
    let mut connected = Some(listening);
    let mut supervisor = Supervisor::new(role, Policy::default());
    loop {
        let listening = match connected.take() {
            Some(listening) => Ok(listening),
            // After a lost connection: listen again, then reload everything.
            None => relisten(&*watched, &settings, role, channel, &mut reloads).await,
        };
        let end = match listening {
            Ok((mut client, mut notified)) => {
                match follow(&*watched, &mut client, &mut notified, &mut reloads, pace, role, &shutdown).await {
                    Followed::Shutdown => SessionEnd::Stop(()),
                    Followed::Lost => SessionEnd::retry(format!("lost the {role} connection")),
                }
            }
            Err(e) => SessionEnd::retry(e),
        };
        if supervisor.next(end, &shutdown).await != Step::Again {
            return;
        }
    }
}

/// A new LISTEN connection, with everything reloaded through it (a failed reload keeps the
/// previous state, logged).
async fn relisten<W: Watched>(
    watched: &W,
    settings: &ConnectConfig,
    role: &'static str,
    channel: &'static str,
    reloads: &mut Reloads,
) -> Result<(Client, Notifications), PgError> {
    let (mut client, notified) = listen(settings, role, channel).await?;
    match watched.apply(&mut client, Change::Everything).await {
        Ok(()) => tracing::info!("{role} reloaded after reconnecting"),
        Err(e) => {
            tracing::error!(error = %e, what = role, "cannot reload after reconnecting; keeping the previous state")
        }
    }
    reloads.done_full();
    Ok((client, notified))
}

/// How following one connection ended.
enum Followed {
    Shutdown,
    Lost,
}

/// Applies notifications and periodic reloads from one connection until it is lost.
async fn follow<W: Watched>(
    watched: &W,
    client: &mut Client,
    notified: &mut Notifications,
    reloads: &mut Reloads,
    pace: Pace,
    role: &'static str,
    shutdown: &CancellationToken,
) -> Followed {
    let mut next_batch = Instant::now();
    loop {
        if notified.take_overflow() {
            reloads.overflowed();
        }
        let change = tokio::select! {
            _ = shutdown.cancelled() => return Followed::Shutdown,
            _ = tokio::time::sleep_until(reloads.next_full) => Some(Change::Everything),
            // Batches are paced: what arrives in between waits in the channel and joins the next.
            batch = async {
                tokio::time::sleep_until(next_batch).await;
                notified.batch().await
            } => batch.map(Change::Notified),
        };
        match &change {
            Some(Change::Everything) => reloads.done_full(),
            Some(Change::Notified(_)) => next_batch = Instant::now() + pace.batches,
            None => {}
        }
        let Some(change) = change else { return Followed::Lost };
        match watched.apply(client, change).await {
            Ok(()) => {}
            Err(e) if !client.is_closed() => {
                tracing::error!(error = %e, what = role, "cannot apply a change; keeping the previous state");
            }
            Err(_) => return Followed::Lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn overflow_reloads_are_spaced_and_notifications_do_not_delay_the_periodic_one() {
        let refresh = Duration::from_secs(60);
        let mut reloads = Reloads::new(refresh);
        let start = Instant::now();
        assert_eq!(reloads.next_full, start + refresh);
        reloads.overflowed();
        assert_eq!(reloads.next_full, start + OVERFLOW_RELOAD_INTERVAL, "soon, but not at once after a reload");
        tokio::time::advance(OVERFLOW_RELOAD_INTERVAL).await;
        reloads.done_full();
        reloads.overflowed();
        assert_eq!(reloads.next_full, Instant::now() + OVERFLOW_RELOAD_INTERVAL);
        tokio::time::advance(Duration::from_secs(30)).await;
        reloads.overflowed();
        assert!(reloads.next_full <= Instant::now(), "due: the last full reload is long past");
    }

    #[tokio::test]
    async fn a_batch_holds_every_waiting_payload_once() {
        let (tx, rx) = mpsc::channel(PENDING);
        let mut notified = Notifications { payloads: rx, overflowed: Arc::new(AtomicBool::new(false)) };
        for payload in ["b", "a", "b", "c", "a"] {
            tx.try_send(payload.to_owned()).unwrap();
        }
        assert_eq!(notified.batch().await.unwrap(), ["a", "b", "c"]);
        drop(tx);
        assert_eq!(notified.batch().await, None);
    }
}
