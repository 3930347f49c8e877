//! Sessions and their subscriptions (`pgevents serve --sessions`), in memory and in step with
//! `pgevents.session` and `pgevents.subscription`: the tables' triggers notify
//! `pgevents_subscriptions` with a session's `notify_key` (not its id, which any role that
//! LISTENs would learn) and those sessions are read again, in batches (see
//! [`pgevents_pg::listen`]); everything is read again every `--sessions-refresh`. Each read asks
//! the database what the session's owner may read now (`pgevents.subscription_access`): a
//! subscription it may no longer read is dropped, and events carry only the columns it may
//! read. While a connection reads a session its `last_seen` is kept fresh; sessions not seen
//! for `--session-ttl` are removed with their subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use pgevents_pg::listen::{listen, watch, Change, Pace, Watched, BATCH_INTERVAL};
use pgevents_pg::{ConnectConfig, PgError, Pool};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics;
use crate::session_events::SessionSubscription;

const CHANNEL: &str = "pgevents_subscriptions";

/// `pgevents serve --sessions` settings.
#[derive(Debug, Clone)]
pub struct SessionsConfig {
    /// The database with the `pgevents` schema (installed by `pgevents rules install`); the role
    /// must see every session: the schema's owner, or one with `BYPASSRLS`.
    pub postgres: ConnectConfig,
    /// Everything is read again this often (notifications lost while reconnecting, privileges
    /// revoked since).
    pub refresh: Duration,
    /// Sessions not seen (read by a connection) for this long are removed.
    pub ttl: Duration,
    /// Longest wait for a session not in memory to be read (`--session-lookup-timeout`).
    pub lookup_timeout: Duration,
}

/// One session: its owner, its subscriptions now, and how many connections read it.
#[derive(Debug)]
pub struct Session {
    /// The id (the capability of a client without a token; never logged).
    pub id: String,
    /// What notifications and logs name it by.
    pub notify_key: String,
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

/// The sessions in memory, by id and by notify key.
#[derive(Default)]
struct Known {
    by_id: HashMap<Uuid, Arc<Session>>,
    by_key: HashMap<Uuid, Uuid>,
}

/// Every session.
pub struct Sessions {
    known: RwLock<Known>,
    pool: Pool,
    ttl: Duration,
    pub lookup_timeout: Duration,
}

/// Every session with its subscriptions (sessions without any have one row of nulls), and what
/// the owner may read of each subscription's table now.
const SESSIONS: &str = "
    SELECT s.id::text, s.notify_key::text, s.owner::text, sub.kind, sub.table_schema || '.' || sub.table_name,
           array_to_string(sub.pk, ','), sub.column_name, a.readable, a.every_column, a.refused
    FROM pgevents.session s
    LEFT JOIN pgevents.subscription sub ON sub.session_id = s.id
    LEFT JOIN LATERAL pgevents.subscription_access(s.owner, sub.table_schema, sub.table_name, sub.column_name) a
        ON sub.id IS NOT NULL";

/// Which sessions to read.
enum Which<'a> {
    All,
    Id(Uuid),
    Keys(&'a [Uuid]),
}

struct LoadedSession {
    notify_key: Uuid,
    owner: String,
    subscriptions: Vec<SessionSubscription>,
}

type Loaded = HashMap<Uuid, LoadedSession>;

async fn read(client: &Client, which: Which<'_>) -> Result<Loaded, PgError> {
    let rows = match which {
        Which::All => client.query(SESSIONS, &[]).await,
        Which::Id(id) => client.query(&format!("{SESSIONS} WHERE s.id = $1::text::uuid"), &[&id.to_string()]).await,
        Which::Keys(keys) => {
            let keys: Vec<String> = keys.iter().map(Uuid::to_string).collect();
            client.query(&format!("{SESSIONS} WHERE s.notify_key = ANY($1::text[]::uuid[])"), &[&keys]).await
        }
    };
    let rows = rows.map_err(|e| PgError::new("cannot read pgevents.session and pgevents.subscription", e))?;
    let read = |e| PgError::new("cannot read pgevents.session and pgevents.subscription", e);
    let mut loaded = Loaded::new();
    for row in rows {
        let id: Uuid = parse_uuid(row.try_get(0).map_err(read)?);
        let notify_key: Uuid = parse_uuid(row.try_get(1).map_err(read)?);
        let owner: String = row.try_get(2).map_err(read)?;
        let entry = loaded.entry(id).or_insert_with(|| LoadedSession { notify_key, owner, subscriptions: Vec::new() });
        let kind: Option<String> = row.try_get(3).map_err(read)?;
        let Some(kind) = kind.and_then(|k| k.parse().ok()) else { continue };
        let table: String = row.try_get(4).map_err(read)?;
        let refused: Option<String> = row.try_get(9).map_err(read)?;
        let readable: Option<Vec<String>> = row.try_get(7).map_err(read)?;
        let every_column: Option<bool> = row.try_get(8).map_err(read)?;
        let readable = match (refused, readable, every_column) {
            (None, Some(_), Some(true)) => None,
            (None, Some(columns), _) => Some(Arc::from(columns)),
            (refused, _, _) => {
                // Fail closed: no verdict, or a refusal, is no subscription.
                let reason = refused.unwrap_or_else(|| "no verdict on its privileges".to_owned());
                tracing::warn!(session = %entry.notify_key, owner = ?entry.owner, table = ?table, reason = ?reason, "a subscription is not streamed: its owner may not read it");
                ::metrics::counter!(metrics::SUBSCRIPTIONS_REFUSED).increment(1);
                continue;
            }
        };
        entry.subscriptions.push(SessionSubscription {
            kind,
            table,
            pk: row.try_get::<_, Option<String>>(5).map_err(read)?,
            column: row.try_get(6).map_err(read)?,
            readable,
        });
    }
    Ok(loaded)
}

/// A uuid column read as text (tokio-postgres reads uuid only with a feature this crate does not
/// need otherwise).
fn parse_uuid(text: String) -> Uuid {
    Uuid::try_parse(&text).unwrap_or_default()
}

impl Sessions {
    /// Reads every session and starts keeping them current (and expiring them) until
    /// `shutdown`.
    pub async fn start(config: &SessionsConfig, shutdown: CancellationToken) -> Result<Arc<Sessions>, PgError> {
        let (client, notified) = listen(&config.postgres, "sessions", CHANNEL).await?;
        let pool = pgevents_pg::pool(&config.postgres, "sessions", 2)?;
        let sessions = Arc::new(Sessions {
            known: RwLock::default(),
            pool,
            ttl: config.ttl,
            lookup_timeout: config.lookup_timeout,
        });
        sessions.replace_all(read(&client, Which::All).await?);
        tracing::info!(sessions = sessions.count(), "sessions loaded");
        let listener = (client, notified);
        tokio::spawn(watch(
            sessions.clone(),
            config.postgres.clone(),
            "sessions",
            CHANNEL,
            listener,
            Pace { refresh: config.refresh, batches: BATCH_INTERVAL },
            shutdown.clone(),
        ));
        tokio::spawn(sessions.clone().keep_alive(shutdown));
        Ok(sessions)
    }

    fn count(&self) -> usize {
        self.known.read().unwrap_or_else(PoisonError::into_inner).by_id.len()
    }

    fn known(&self, id: &Uuid) -> Option<Arc<Session>> {
        self.known.read().unwrap_or_else(PoisonError::into_inner).by_id.get(id).cloned()
    }

    /// The session `id`, read from the database if it is not known yet (created a moment ago).
    pub async fn get(&self, id: Uuid) -> Result<Option<Arc<Session>>, PgError> {
        if let Some(session) = self.known(&id) {
            return Ok(Some(session));
        }
        let client = self.pool.get().await?;
        let mut loaded = read(&client, Which::Id(id)).await?;
        if let Some(session) = loaded.remove(&id) {
            self.apply(id, Some(session));
        }
        Ok(self.known(&id))
    }

    /// Makes `loaded` the sessions now; known sessions keep their place (and get the new
    /// subscriptions), the others are dropped.
    fn replace_all(&self, loaded: Loaded) {
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = Known::default();
        for (id, session) in loaded {
            next.by_key.insert(session.notify_key, id);
            let session = updated(known.by_id.remove(&id), id, session);
            next.by_id.insert(id, session);
        }
        for gone in known.by_id.values() {
            retire(gone);
        }
        *known = next;
        ::metrics::gauge!(metrics::SESSIONS).set(known.by_id.len() as f64);
    }

    /// Applies what was read of session `id` (nothing: it was dropped).
    fn apply(&self, id: Uuid, loaded: Option<LoadedSession>) {
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        let previous = known.by_id.remove(&id);
        if let Some(previous) = &previous {
            if let Ok(key) = Uuid::try_parse(&previous.notify_key) {
                known.by_key.remove(&key);
            }
        }
        match loaded {
            Some(session) => {
                known.by_key.insert(session.notify_key, id);
                let session = updated(previous, id, session);
                known.by_id.insert(id, session);
            }
            None => {
                if let Some(gone) = previous {
                    retire(&gone);
                }
            }
        }
        ::metrics::gauge!(metrics::SESSIONS).set(known.by_id.len() as f64);
    }

    /// Reads again the sessions notified by their keys (payloads that are not keys are
    /// ignored: any role can notify).
    async fn reload_notified(&self, client: &Client, payloads: &[String]) -> Result<(), PgError> {
        let keys: Vec<Uuid> = payloads.iter().filter_map(|p| Uuid::try_parse(p).ok()).collect();
        let ignored = payloads.len() - keys.len();
        if ignored > 0 {
            ::metrics::counter!(metrics::NOTIFICATIONS_IGNORED).increment(ignored as u64);
        }
        if keys.is_empty() {
            return Ok(());
        }
        let mut loaded = read(client, Which::Keys(&keys)).await?;
        let ids: Vec<Uuid> = {
            let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
            keys.iter().filter_map(|key| known.by_key.get(key).copied()).collect()
        };
        // Known sessions (changed or dropped), then new ones.
        for id in ids {
            let session = loaded.remove(&id);
            self.apply(id, session);
        }
        for (id, session) in loaded {
            self.apply(id, Some(session));
        }
        Ok(())
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
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .values()
            .filter(|s| s.readers.load(Ordering::Relaxed) > 0)
            .map(|s| s.id.clone())
            .collect();
        let client = self.pool.get().await?;
        if !read.is_empty() {
            client
                // Rows a writer holds locked (adding subscriptions) are skipped: touched next time.
                .execute(
                    "UPDATE pgevents.session SET last_seen = now() WHERE id IN (
                         SELECT id FROM pgevents.session WHERE id = ANY($1::text[]::uuid[]) FOR UPDATE SKIP LOCKED)",
                    &[&read],
                )
                .await
                .map_err(|e| PgError::new("cannot update pgevents.session.last_seen", e))?;
        }
        let ttl = self.ttl.as_secs_f64();
        let expired = client
            .execute(
                "DELETE FROM pgevents.session WHERE id IN (
                     SELECT id FROM pgevents.session
                     WHERE last_seen < now() - make_interval(secs => $1) AND NOT (id = ANY($2::text[]::uuid[]))
                     FOR UPDATE SKIP LOCKED)",
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
fn updated(previous: Option<Arc<Session>>, id: Uuid, loaded: LoadedSession) -> Arc<Session> {
    let LoadedSession { notify_key, owner, subscriptions } = loaded;
    let session = match previous {
        Some(session) if session.owner == owner => session,
        previous => {
            if let Some(old) = previous {
                retire(&old);
            }
            Arc::new(Session {
                id: id.to_string(),
                notify_key: notify_key.to_string(),
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

/// Roles holding as many sessions as `max_sessions_per_role` allows (the database refuses them
/// more).
const AT_LIMIT: &str = "
    SELECT count(*) FROM (
        SELECT s.owner FROM pgevents.session s GROUP BY s.owner
        HAVING count(*) >= coalesce((SELECT value::integer FROM pgevents.setting WHERE name = 'max_sessions_per_role'), 100)
    ) full_up";

impl Watched for Sessions {
    type Error = PgError;

    async fn apply(&self, client: &mut Client, change: Change) -> Result<(), PgError> {
        match change {
            Change::Everything => {
                self.replace_all(read(client, Which::All).await?);
                let at_limit: i64 = client
                    .query_one(AT_LIMIT, &[])
                    .await
                    .and_then(|row| row.try_get(0))
                    .map_err(|e| PgError::new("cannot count the sessions per role", e))?;
                ::metrics::gauge!(metrics::SESSION_OWNERS_AT_LIMIT).set(at_limit as f64);
            }
            Change::Notified(payloads) => self.reload_notified(client, &payloads).await?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session_events::Kind;

    fn loaded(owner: &str, table: &str) -> LoadedSession {
        LoadedSession {
            notify_key: Uuid::from_u128(7),
            owner: owner.into(),
            subscriptions: vec![SessionSubscription {
                kind: Kind::Table,
                table: table.into(),
                pk: None,
                column: None,
                readable: None,
            }],
        }
    }

    #[test]
    fn a_session_read_again_keeps_its_place_unless_its_owner_changed() {
        let id = Uuid::from_u128(1);
        let first = updated(None, id, loaded("ann", "public.a"));
        let again = updated(Some(first.clone()), id, loaded("ann", "public.b"));
        assert!(Arc::ptr_eq(&first, &again), "connections reading it see the new subscriptions");
        assert_eq!(first.subscriptions()[0].table, "public.b");

        let taken = updated(Some(first.clone()), id, loaded("bob", "public.c"));
        assert!(!Arc::ptr_eq(&first, &taken));
        assert!(first.subscriptions().is_empty(), "connections of the old owner get nothing more");
        assert_eq!((taken.owner.as_str(), taken.subscriptions()[0].table.as_str()), ("bob", "public.c"));
    }
}
