//! Where rule text runs: in sessions authenticated as the rule's owner, the role that wrote it.
//!
//! Not `SET ROLE` on the worker's own connection: the text could take the worker's role back
//! (`set_config('role', 'none', true)`, or a deferred trigger that fires at commit), and with
//! it every other author's rights, since the worker must be a member of each author's role to
//! switch to it. In a session of its owner, the most a rule's text can reach is its owner. The
//! worker logs in as each owner with the password its password file holds for that role (never
//! the worker's own), or as pg_hba.conf admits that role. Connections of one owner are never
//! lent to another, nor to the worker's own statements (rule text could leave things behind in
//! a session: prepared statements, settings, temporary objects); those of the worker's own
//! role's rules are a pool of their own too. Rule sessions keep their role's search path.

use std::collections::HashMap;
use std::sync::Arc;

use pgevents_pg::pgpass::PassFileError;
use pgevents_pg::{ConnectConfig, ErrorKind, PgError, Pool, Pooled, SearchPath};
use tokio_postgres::types::{ToSql, Type};

/// Why no session of a rule's owner could be had.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("cannot read the password file for the rule owner {owner:?}: {source}")]
    PassFile { owner: String, source: PassFileError },
    #[error("cannot log in as the rule owner {owner:?} ({source}): rules run in sessions of their owner, so the worker needs that role's password in its password file (PGPASSFILE or ~/.pgpass), or a pg_hba.conf line that admits it")]
    Connect { owner: String, source: PgError },
}

impl OwnerError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            OwnerError::PassFile { .. } => ErrorKind::Config,
            OwnerError::Connect { source, .. } => source.kind(),
        }
    }
}

/// Whether a session may go back to its pool as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionState {
    Idle,
    /// A transaction was begun (or may have been: its BEGIN was sent) and its end has not been
    /// seen: the session is closed rather than lent again, so that the next job cannot commit
    /// what this one left.
    InTransaction,
    /// Stopped after a timeout ([`OwnerSessions::abandon`]): whatever rule text left in it
    /// stays out of the pool.
    Abandoned,
}

/// A session of a rule's owner, lent by [`OwnerSessions::get`]. Statements that begin a
/// transaction say so ([`OwnerSession::begin`]) and those that end it too
/// ([`OwnerSession::ended`]); dropped in between (a job cut short: shutdown, a timeout), the
/// session is closed instead of going back to the pool. Closing it rolls back a transaction
/// whose end was not sent yet; one whose COMMIT was already sent may still commit (a job's
/// success row commits with its statement, so its retry then finds it done).
pub struct OwnerSession {
    client: Option<Pooled>,
    state: SessionState,
}

impl OwnerSession {
    /// A transaction is about to be begun in the session.
    pub fn begin(&mut self) {
        self.state = SessionState::InTransaction;
    }

    /// The transaction has ended (its COMMIT or ROLLBACK has been answered).
    pub fn ended(&mut self) {
        self.state = SessionState::Idle;
    }
}

impl std::ops::Deref for OwnerSession {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        // `client` is taken only in `drop`.
        self.client
            .as_deref()
            .map(|wrapper| &**wrapper)
            .unwrap_or_else(|| unreachable!("a lent session has its client"))
    }
}

impl Drop for OwnerSession {
    fn drop(&mut self) {
        if self.state != SessionState::Idle {
            if let Some(client) = self.client.take() {
                drop(Pooled::take(client));
            }
        }
    }
}

/// What a transaction sent in one flight ([`OwnerSessions::flight`]) got back.
pub struct Flight {
    pub begun: Result<(), tokio_postgres::Error>,
    pub called: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>,
    /// The first error among the ending messages.
    pub ended: Result<(), tokio_postgres::Error>,
}

impl Flight {
    /// The rows of the call, or the first error of the flight.
    pub fn rows(self) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        self.begun?;
        let rows = self.called?;
        self.ended?;
        Ok(rows)
    }
}

/// Pools of connections, one per rule owner.
pub struct OwnerSessions {
    base: ConnectConfig,
    size: usize,
    pools: tokio::sync::Mutex<HashMap<String, (Pool, ConnectConfig)>>,
}

impl OwnerSessions {
    /// `base` is how the worker connects (its role, and the password file); each owner gets a
    /// pool of up to `size` connections.
    pub fn new(base: ConnectConfig, size: usize) -> Arc<OwnerSessions> {
        Arc::new(OwnerSessions { base, size: size.max(1), pools: tokio::sync::Mutex::default() })
    }

    /// The role the worker logs in as.
    pub fn worker_role(&self) -> &str {
        &self.base.user
    }

    /// A session of `owner`.
    pub async fn get(&self, owner: &str) -> Result<OwnerSession, OwnerError> {
        let connect = |source: PgError| OwnerError::Connect { owner: owner.to_owned(), source };
        let pool = self.pool(owner).await?;
        let client = pool.get().await.map_err(|e| connect(e.into()))?;
        Ok(OwnerSession { client: Some(client), state: SessionState::Idle })
    }

    /// Stops what a session of `owner` runs, and closes the session (after a timeout: whatever
    /// rule text left in it stays out of the pool).
    pub async fn abandon(&self, owner: &str, mut session: OwnerSession) {
        let config = self.pools.lock().await.get(owner).map(|(_, config)| config.clone());
        if let (Some(config), Some(client)) = (config, &session.client) {
            pgevents_pg::cancel(client, &config).await;
        }
        session.state = SessionState::Abandoned;
    }

    /// Sends in one flight, in `session` of `owner`: `begin` (a simple query that begins a
    /// transaction), a `statement` with its `values`, then each of `end`, the last of which ends the
    /// transaction. Each message goes out when first polled, and they are polled in that order,
    /// so they leave in that order; if the transaction could not begin, the statement fails too
    /// and never runs outside it. Past `deadline` (rule text can change its session's settings,
    /// its timeouts included) the session is abandoned and `None` returned. The session goes
    /// back to the pool only once the last message was answered without error.
    pub async fn flight(
        &self,
        owner: &str,
        mut session: OwnerSession,
        begin: &str,
        (statement, values): (&str, &[(&(dyn ToSql + Sync), Type)]),
        end: &[&str],
        deadline: std::time::Duration,
    ) -> Option<Flight> {
        session.begin();
        let client: &tokio_postgres::Client = &session;
        let ends = futures_util::future::join_all(end.iter().map(|text| client.batch_execute(text)));
        let sent =
            async { tokio::join!(biased; client.batch_execute(begin), client.query_typed(statement, values), ends) };
        let Ok((begun, called, ended)) = tokio::time::timeout(deadline, sent).await else {
            self.abandon(owner, session).await;
            return None;
        };
        if ended.last().is_some_and(Result::is_ok) {
            session.ended();
        }
        let ended = ended.into_iter().find(Result::is_err).unwrap_or(Ok(()));
        Some(Flight { begun, called, ended })
    }

    async fn pool(&self, owner: &str) -> Result<Pool, OwnerError> {
        let mut pools = self.pools.lock().await;
        if let Some((pool, _)) = pools.get(owner) {
            return Ok(pool.clone());
        }
        let config = if owner == self.base.user {
            // The worker's own role: its own password, in sessions of their own.
            ConnectConfig { search_path: SearchPath::RoleDefault, ..self.base.clone() }
        } else {
            let base = self.base.clone();
            let role = owner.to_owned();
            tokio::task::spawn_blocking(move || base.as_role(&role))
                .await
                .map_err(|e| OwnerError::Connect { owner: owner.to_owned(), source: PgError::Pool(e.to_string()) })?
                .map_err(|source| OwnerError::PassFile { owner: owner.to_owned(), source })?
        };
        let pool = pgevents_pg::pool(&config, "rules", self.size)
            .map_err(|source| OwnerError::Connect { owner: owner.to_owned(), source })?;
        pools.insert(owner.to_owned(), (pool.clone(), config));
        Ok(pool)
    }
}
