//! Errors of the rules crate, each saying what to do about it.

use pgevents_replication::{describe_sql_error, sql_error_is_transient, SqlConnectError};

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{context}: {message}")]
    Postgres { context: String, message: String, transient: bool },
    #[error(transparent)]
    Connect(#[from] SqlConnectError),
    #[error("the pgevents rule tables are not installed in this database: run `pgevents rules install` first")]
    NotInstalled,
    #[error("the pgevents rule tables are at version {found}, newer than this pgevents knows ({supported}): upgrade pgevents")]
    NewerSchema { found: i32, supported: i32 },
    #[error("invalid rule {what}: {reason}")]
    InvalidRule { what: String, reason: String },
    #[error("cannot get a database connection from the pool: {0}")]
    Pool(String),
}

impl RulesError {
    /// Whether trying again later may help (the database is unreachable or restarting).
    pub fn is_transient(&self) -> bool {
        match self {
            RulesError::Postgres { transient, .. } => *transient,
            RulesError::Connect(e) => e.is_transient(),
            RulesError::Pool(_) => true,
            _ => false,
        }
    }
}

/// Wraps a tokio-postgres error with what was being done.
pub fn pg_error(context: impl Into<String>, e: tokio_postgres::Error) -> RulesError {
    RulesError::Postgres {
        context: context.into(),
        message: describe_sql_error(&e),
        transient: sql_error_is_transient(&e),
    }
}

impl From<deadpool_postgres::PoolError> for RulesError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => pg_error("cannot connect to PostgreSQL", e),
            other => RulesError::Pool(other.to_string()),
        }
    }
}
