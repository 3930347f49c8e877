//! The current rules in memory, reloaded when they change.
//!
//! A dedicated connection LISTENs on `pgevents_rules`; the rule tables' triggers notify it on
//! every change, and the cache reloads. It also reloads every refresh interval (a notification
//! sent while the connection was down is lost). When the database is unreachable the last rules
//! stay in use and the watcher reconnects with backoff. Each load checks the rules' text in
//! their owners' sessions (see [`crate::validate`]), and forgets what the owners were allowed
//! to see ([`AccessVerdicts`]).

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use pgevents_pg::listen::{listen, watch, Change, Pace, Watched};
use pgevents_pg::ConnectConfig;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::access::AccessVerdicts;
use crate::{load, validate, Checked, OwnerSessions, RuleSet, RulesError, RULES_CHANNEL};

/// The current rules, shared by every task of a worker.
pub struct RulesCache {
    current: RwLock<Arc<RuleSet>>,
    sessions: Arc<OwnerSessions>,
    checked: tokio::sync::Mutex<Checked>,
    access: AccessVerdicts,
}

impl RulesCache {
    async fn load_checked(&self, client: &mut Client) -> Result<RuleSet, RulesError> {
        let rules = load(client).await?;
        let mut checked = self.checked.lock().await;
        Ok(validate(rules, &self.sessions, &mut checked).await)
    }

    /// Sessions of the rules' owners.
    pub fn sessions(&self) -> &Arc<OwnerSessions> {
        &self.sessions
    }

    /// What the rules' owners may see.
    pub fn access(&self) -> &AccessVerdicts {
        &self.access
    }

    /// The rules now.
    pub fn get(&self) -> Arc<RuleSet> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set(&self, rules: RuleSet) {
        metrics::gauge!("pgevents_rules_work_items").set(rules.work_item_count() as f64);
        metrics::counter!("pgevents_rules_reloads_total").increment(1);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(rules);
        self.access.forget();
    }

    /// Loads the rules (failing if that is impossible now, e.g. not installed) and starts the
    /// watcher that keeps them current until `shutdown`. What the owners may see is asked again
    /// after `access_recheck` (see [`AccessVerdicts`]).
    pub async fn start(
        settings: ConnectConfig,
        sessions: Arc<OwnerSessions>,
        refresh: Duration,
        access_recheck: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<RulesCache>, RulesError> {
        let (mut client, notified) = listen(&settings, "rules", RULES_CHANNEL).await?;
        let cache = Arc::new(RulesCache {
            current: RwLock::new(Arc::new(RuleSet::default())),
            sessions,
            checked: tokio::sync::Mutex::default(),
            access: AccessVerdicts::new(access_recheck),
        });
        let rules = cache.load_checked(&mut client).await?;
        tracing::info!(work_items = rules.work_item_count(), "rules loaded");
        cache.set(rules);
        // A reload parses every rule that failed before, in its owner's session: at most one a
        // second for notifications (any role can send them).
        let pace = Pace { refresh, batches: std::time::Duration::from_secs(1) };
        tokio::spawn(watch(cache.clone(), settings, "rules", RULES_CHANNEL, (client, notified), pace, shutdown));
        Ok(cache)
    }
}

/// Any change of the rule tables reloads them all.
impl Watched for RulesCache {
    type Error = RulesError;

    async fn apply(&self, client: &mut Client, _change: Change) -> Result<(), RulesError> {
        let rules = self.load_checked(client).await?;
        tracing::info!(work_items = rules.work_item_count(), "rules reloaded");
        self.set(rules);
        Ok(())
    }
}
