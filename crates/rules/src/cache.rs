//! The current rules in memory, reloaded when they change.
//!
//! A dedicated connection LISTENs on `pgevents_rules`; the rule tables' triggers notify it on
//! every change, and the cache reloads. It also reloads every refresh interval (a notification
//! sent while the connection was down is lost). When the database is unreachable the last rules
//! stay in use and the watcher reconnects with backoff.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use pgevents_pg::{connect, drive_connection, ConnectConfig, PgError};
use pgevents_retry::{Reconnect, Waited};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::{load, RuleSet, RulesError, RULES_CHANNEL};

/// The current rules, shared by every task of a worker.
#[derive(Debug)]
pub struct RulesCache {
    current: RwLock<Arc<RuleSet>>,
}

impl RulesCache {
    /// A cache holding fixed rules (no watcher).
    pub fn fixed(rules: RuleSet) -> Arc<RulesCache> {
        Arc::new(RulesCache { current: RwLock::new(Arc::new(rules)) })
    }

    /// The rules now.
    pub fn get(&self) -> Arc<RuleSet> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Reads the rules and makes them current; logs `what` with the number of work items.
    async fn reload(&self, client: &mut Client, what: &'static str) -> Result<(), RulesError> {
        let rules = load(client).await?;
        tracing::info!(work_items = rules.work_item_count(), "{what}");
        self.set(rules);
        Ok(())
    }

    fn set(&self, rules: RuleSet) {
        metrics::gauge!("pgevents_rules_work_items").set(rules.work_item_count() as f64);
        metrics::counter!("pgevents_rules_reloads_total").increment(1);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(rules);
    }

    /// Loads the rules (failing if that is impossible now, e.g. not installed) and starts the
    /// watcher that keeps them current until `shutdown`.
    pub async fn start(
        settings: ConnectConfig,
        refresh: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<RulesCache>, RulesError> {
        let (mut client, notified) = listen(&settings).await?;
        let cache = Arc::new(RulesCache { current: RwLock::new(Arc::new(RuleSet::default())) });
        cache.reload(&mut client, "rules loaded").await?;
        tokio::spawn(watch(cache.clone(), settings, client, notified, refresh, shutdown));
        Ok(cache)
    }
}

/// Connects and listens; the receiver yields once per notification and ends with the connection.
async fn listen(settings: &ConnectConfig) -> Result<(Client, mpsc::Receiver<()>), RulesError> {
    let (client, driver) = connect(settings, "rules").await?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(drive_connection(driver, move |channel, _| {
        if channel == RULES_CHANNEL {
            // A full channel already holds a pending reload.
            let _ = tx.try_send(());
        }
    }));
    client
        .batch_execute(&format!("LISTEN {RULES_CHANNEL}"))
        .await
        .map_err(|e| PgError::new("cannot LISTEN for rule changes", e))?;
    Ok((client, rx))
}

async fn watch(
    cache: Arc<RulesCache>,
    settings: ConnectConfig,
    mut client: Client,
    mut notified: mpsc::Receiver<()>,
    refresh: Duration,
    shutdown: CancellationToken,
) {
    let mut reconnect = Reconnect::new("rules listener", Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            signal = notified.recv() => signal.is_some(),
            _ = tokio::time::sleep(refresh) => true,
        };
        if connected {
            match cache.reload(&mut client, "rules reloaded").await {
                Ok(()) => continue,
                Err(e) if !client.is_closed() => {
                    tracing::error!(error = %e, "cannot reload the rules; keeping the previous ones");
                    continue;
                }
                Err(_) => {}
            }
        }
        // The connection is gone: reconnect (with backoff), then reload.
        let mut error: Box<dyn std::fmt::Display + Send + Sync> = Box::new("lost the rules connection");
        loop {
            if reconnect.wait(&*error, &shutdown).await == Waited::Cancelled {
                return;
            }
            reconnect.attempt();
            match listen(&settings).await {
                Ok((new_client, new_notified)) => {
                    client = new_client;
                    notified = new_notified;
                    if let Err(e) = cache.reload(&mut client, "rules reloaded after reconnecting").await {
                        tracing::error!(error = %e, "cannot reload the rules; keeping the previous ones");
                    }
                    break;
                }
                Err(e) => error = Box::new(e),
            }
        }
    }
}
