//! Keeping something in memory in step with tables, through `LISTEN`: a dedicated connection
//! listens on a channel that the tables' triggers notify; each notification is handed over
//! with its payload, and everything is reloaded every refresh interval (a notification sent
//! while the connection was down is lost) and after reconnecting. When the database is
//! unreachable the last state stays in use and the watcher reconnects with backoff.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pgevents_retry::{Reconnect, Waited};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::{connect, drive_connection, ConnectConfig, PgError};

/// Notifications waiting to be handled, at most (more are coalesced into a full reload).
const PENDING: usize = 256;

/// What a notification asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// One notification, with its payload.
    Notified(String),
    /// Reload everything (notifications were dropped, or the refresh interval passed).
    Everything,
}

/// Something kept in step with the database.
pub trait Watched: Send + Sync + 'static {
    type Error: std::fmt::Display + Send;

    /// Applies `change`, reading what it needs through `client`.
    fn apply(&self, client: &mut Client, change: Change) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// A connection listening on `channel`: the client, and the notifications' payloads (the
/// receiver ends with the connection; `Change::Everything` when some were dropped).
pub async fn listen(
    settings: &ConnectConfig,
    role: &str,
    channel: &'static str,
) -> Result<(Client, mpsc::Receiver<Change>), PgError> {
    let (client, driver) = connect(settings, role).await?;
    let (tx, rx) = mpsc::channel(PENDING);
    tokio::spawn(drive_connection(driver, move |from, payload| {
        if from == channel && tx.try_send(Change::Notified(payload.to_owned())).is_err() {
            // Too many at once: one full reload covers them all (if even that does not fit, a
            // full reload is already queued).
            let _ = tx.try_send(Change::Everything);
        }
    }));
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .map_err(|e| PgError::new(format!("cannot LISTEN on {channel}"), e))?;
    Ok((client, rx))
}

/// Applies notifications and periodic reloads to `watched` until `shutdown`, reconnecting
/// with backoff. `client` and `notified` come from [`listen`] (the caller has loaded the
/// initial state with them).
pub async fn watch<W: Watched>(
    watched: Arc<W>,
    settings: ConnectConfig,
    role: &'static str,
    channel: &'static str,
    (mut client, mut notified): (Client, mpsc::Receiver<Change>),
    refresh: Duration,
    shutdown: CancellationToken,
) {
    let mut reconnect = Reconnect::new(role, Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let change = tokio::select! {
            _ = shutdown.cancelled() => return,
            change = notified.recv() => change,
            _ = tokio::time::sleep(refresh) => Some(Change::Everything),
        };
        if let Some(change) = change {
            match watched.apply(&mut client, change).await {
                Ok(()) => continue,
                Err(e) if !client.is_closed() => {
                    tracing::error!(error = %e, what = role, "cannot apply a change; keeping the previous state");
                    continue;
                }
                Err(_) => {}
            }
        }
        // The connection is gone: reconnect (with backoff), then reload everything.
        let mut error: Box<dyn std::fmt::Display + Send + Sync> = Box::new(format!("lost the {role} connection"));
        loop {
            if reconnect.wait(&*error, &shutdown).await == Waited::Cancelled {
                return;
            }
            reconnect.attempt();
            match listen(&settings, role, channel).await {
                Ok((new_client, new_notified)) => {
                    (client, notified) = (new_client, new_notified);
                    match watched.apply(&mut client, Change::Everything).await {
                        Ok(()) => tracing::info!("{role} reloaded after reconnecting"),
                        Err(e) => {
                            tracing::error!(error = %e, what = role, "cannot reload after reconnecting; keeping the previous state")
                        }
                    }
                    break;
                }
                Err(e) => error = Box::new(e),
            }
        }
    }
}
