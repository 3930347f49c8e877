//! Errors of the rules crate, each saying what to do about it.

use pgevents_pg::schema::SchemaError;
use pgevents_pg::{ErrorKind, PgError};

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("the pgevents rule tables are not installed in this database: run `pgevents rules install` first")]
    NotInstalled,
    #[error(
        "the pgevents rule tables are at version {found}; run `pgevents rules install` to upgrade them to {latest}"
    )]
    Outdated { found: i32, latest: i32 },
    #[error("the pgevents rule tables are at version {found}, newer than this pgevents knows ({supported}): upgrade pgevents")]
    NewerSchema { found: i32, supported: i32 },
    #[error("invalid rule {what}: {reason}")]
    InvalidRule { what: String, reason: String },
}

impl RulesError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RulesError::Postgres(e) => e.kind(),
            RulesError::Schema(e) => e.kind(),
            RulesError::NotInstalled | RulesError::Outdated { .. } | RulesError::NewerSchema { .. } => {
                ErrorKind::Config
            }
            RulesError::InvalidRule { .. } => ErrorKind::Permanent,
        }
    }
}
