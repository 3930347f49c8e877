//! Sessions and their subscriptions (`pgevents serve --sessions`), in memory and in step with
//! `pgevents.session` and `pgevents.subscription`: the tables' triggers notify
//! `pgevents_subscriptions` with the session's id and that session is read again at once
//! (everything is read again every `--sessions-refresh`, see [`pgevents_pg::listen`]). While a
//! connection reads a session its `last_seen` is kept fresh; sessions not seen for
//! `--session-ttl` are removed with their subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use pgevents_pg::listen::{listen, watch, Change, Watched};
use pgevents_pg::{ConnectConfig, PgError, Pool};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::session_events::SessionSubscription;

const CHANNEL: &str = "pgevents_subscriptions";

/// `pgevents serve --sessions` settings.
#[derive(Debug, Clone)]
pub struct SessionsConfig {
    /// The database with the `pgevents` schema (installed by `pgevents rules install`); the role
    /// must see every session: the schema's owner, or one with `BYPASSRLS`.
    pub postgres: ConnectConfig,
    /// Everything is read again this often (notifications lost while reconnecting).
    pub refresh: Duration,
    /// Sessions not seen (read by a connection) for this long are removed.
    pub ttl: Duration,
}

/// One session: its owner, its subscriptions now, and how many connections read it.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub owner: String,
    subscriptions: RwLock<Arc<Vec<SessionSubscription>>>,
    readers: AtomicUsize,
}

impl Session {
    /// Its subscriptions now (changes apply to the next event).
    pub fn subscriptions(&self) -> Arc<Vec<SessionSubscription>> {
        self.subscriptions.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set(&self, subscriptions: Vec<SessionSubscription>) {
        *self.subscriptions.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(subscriptions);
    }

    /// Counts a connection reading the session until the guard is dropped.
    pub fn reader(self: &Arc<Self>) -> Reader {
        self.readers.fetch_add(1, Ordering::Relaxed);
        Reader(self.clone())
    }
}

/// A connection reading a session (keeps its `last_seen` fresh).
#[derive(Debug)]
pub struct Reader(Arc<Session>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every session, by id.
pub struct Sessions {
    by_id: RwLock<HashMap<String, Arc<Session>>>,
    pool: Pool,
    ttl: Duration,
}

/// Every session with its subscriptions (sessions without any have one row of nulls).
const SESSIONS: &str = "
    SELECT s.id::text, s.owner::text, sub.kind, sub.table_schema || '.' || sub.table_name,
           array_to_string(sub.pk, ','), sub.column_name
    FROM pgevents.session s LEFT JOIN pgevents.subscription sub ON sub.session_id = s.id";

type Loaded = HashMap<String, (String, Vec<SessionSubscription>)>;

async fn read(client: &Client, id: Option<&str>) -> Result<Loaded, PgError> {
    let rows = match id {
        None => client.query(SESSIONS, &[]).await,
        Some(id) => client.query(&format!("{SESSIONS} WHERE s.id::text = $1"), &[&id]).await,
    }
    .map_err(|e| PgError::new("cannot read pgevents.session and pgevents.subscription", e))?;
    let mut loaded = Loaded::new();
    for row in rows {
        let (id, owner): (String, String) = (row.get(0), row.get(1));
        let entry = loaded.entry(id).or_insert_with(|| (owner, Vec::new()));
        let kind: Option<String> = row.get(2);
        let Some(kind) = kind.and_then(|k| k.parse().ok()) else { continue };
        entry.1.push(SessionSubscription {
            kind,
            table: row.get(3),
            pk: row.get::<_, Option<String>>(4),
            column: row.get(5),
        });
    }
    Ok(loaded)
}

impl Sessions {
    /// Reads every session and starts keeping them current (and expiring them) until
    /// `shutdown`.
    pub async fn start(config: &SessionsConfig, shutdown: CancellationToken) -> Result<Arc<Sessions>, PgError> {
        let (client, notified) = listen(&config.postgres, "sessions", CHANNEL).await?;
        let pool = pgevents_pg::pool(&config.postgres, "sessions", 2)?;
        let sessions = Arc::new(Sessions { by_id: RwLock::default(), pool, ttl: config.ttl });
        sessions.replace_all(read(&client, None).await?);
        tracing::info!(sessions = sessions.count(), "sessions loaded");
        let listener = (client, notified);
        tokio::spawn(watch(
            sessions.clone(),
            config.postgres.clone(),
            "sessions",
            CHANNEL,
            listener,
            config.refresh,
            shutdown.clone(),
        ));
        tokio::spawn(sessions.clone().keep_alive(shutdown));
        Ok(sessions)
    }

    fn count(&self) -> usize {
        self.by_id.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The session `id`, read from the database if it is not known yet (created a moment ago).
    pub async fn get(&self, id: &str) -> Result<Option<Arc<Session>>, PgError> {
        if let Some(session) = self.by_id.read().unwrap_or_else(PoisonError::into_inner).get(id) {
            return Ok(Some(session.clone()));
        }
        let client = self.pool.get().await?;
        self.replace_one(id, read(&client, Some(id)).await?);
        Ok(self.by_id.read().unwrap_or_else(PoisonError::into_inner).get(id).cloned())
    }

    /// Makes `loaded` the sessions now; known sessions keep their place (and get the new
    /// subscriptions), the others are dropped.
    fn replace_all(&self, loaded: Loaded) {
        let mut by_id = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = HashMap::with_capacity(loaded.len());
        for (id, (owner, subscriptions)) in loaded {
            let session = updated(by_id.remove(&id), &id, owner, subscriptions);
            next.insert(id, session);
        }
        for gone in by_id.values() {
            retire(gone);
        }
        *by_id = next;
        ::metrics::gauge!(metrics::SESSIONS).set(by_id.len() as f64);
    }

    /// Applies what was read of session `id` (nothing: it was dropped).
    fn replace_one(&self, id: &str, mut loaded: Loaded) {
        let mut by_id = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        let previous = by_id.remove(id);
        match loaded.remove(id) {
            Some((owner, subscriptions)) => {
                by_id.insert(id.to_owned(), updated(previous, id, owner, subscriptions));
            }
            None => {
                if let Some(gone) = previous {
                    retire(&gone);
                }
            }
        }
        ::metrics::gauge!(metrics::SESSIONS).set(by_id.len() as f64);
    }

    /// Keeps `last_seen` fresh for the sessions being read, and removes the sessions not seen
    /// for the TTL (which notifies, so they leave memory too).
    async fn keep_alive(self: Arc<Self>, shutdown: CancellationToken) {
        let every = (self.ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.touch_and_expire().await {
                tracing::warn!(error = %e, "cannot refresh or expire sessions; trying again later");
            }
        }
    }

    async fn touch_and_expire(&self) -> Result<(), PgError> {
        let read: Vec<String> = self
            .by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|s| s.readers.load(Ordering::Relaxed) > 0)
            .map(|s| s.id.clone())
            .collect();
        let client = self.pool.get().await?;
        if !read.is_empty() {
            client
                .execute("UPDATE pgevents.session SET last_seen = now() WHERE id::text = ANY($1)", &[&read])
                .await
                .map_err(|e| PgError::new("cannot update pgevents.session.last_seen", e))?;
        }
        let ttl = self.ttl.as_secs_f64();
        let expired = client
            .execute(
                "DELETE FROM pgevents.session WHERE last_seen < now() - make_interval(secs => $1) AND NOT (id::text = ANY($2))",
                &[&ttl, &read],
            )
            .await
            .map_err(|e| PgError::new("cannot remove expired sessions", e))?;
        if expired > 0 {
            tracing::info!(expired, ttl_s = ttl, "removed sessions not seen for --session-ttl");
            ::metrics::counter!(metrics::SESSIONS_EXPIRED).increment(expired);
        }
        Ok(())
    }
}

/// Session `id` as read now: the `previous` one with the new subscriptions, or a new one if
/// there was none or its owner changed (connections reading the old one get nothing more).
fn updated(
    previous: Option<Arc<Session>>,
    id: &str,
    owner: String,
    subscriptions: Vec<SessionSubscription>,
) -> Arc<Session> {
    let session = match previous {
        Some(session) if session.owner == owner => session,
        previous => {
            if let Some(old) = previous {
                retire(&old);
            }
            Arc::new(Session {
                id: id.to_owned(),
                owner,
                subscriptions: RwLock::default(),
                readers: AtomicUsize::new(0),
            })
        }
    };
    session.set(subscriptions);
    session
}

/// A session gone from the database (or from its owner): connections still reading it get
/// nothing more.
fn retire(session: &Session) {
    session.set(Vec::new());
}

impl Watched for Sessions {
    type Error = PgError;

    async fn apply(&self, client: &mut Client, change: Change) -> Result<(), PgError> {
        match change {
            Change::Everything => self.replace_all(read(client, None).await?),
            Change::Notified(id) => self.replace_one(&id, read(client, Some(&id)).await?),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session_events::Kind;

    fn table(name: &str) -> Vec<SessionSubscription> {
        vec![SessionSubscription { kind: Kind::Table, table: name.into(), pk: None, column: None }]
    }

    #[test]
    fn a_session_read_again_keeps_its_place_unless_its_owner_changed() {
        let first = updated(None, "s1", "ann".into(), table("public.a"));
        let again = updated(Some(first.clone()), "s1", "ann".into(), table("public.b"));
        assert!(Arc::ptr_eq(&first, &again), "connections reading it see the new subscriptions");
        assert_eq!(first.subscriptions()[0].table, "public.b");

        let taken = updated(Some(first.clone()), "s1", "bob".into(), table("public.c"));
        assert!(!Arc::ptr_eq(&first, &taken));
        assert!(first.subscriptions().is_empty(), "connections of the old owner get nothing more");
        assert_eq!((taken.owner.as_str(), taken.subscriptions()[0].table.as_str()), ("bob", "public.c"));
    }
}
