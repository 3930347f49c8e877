//! A failed SQL operation: what was being done, the server's words, and whether trying again
//! can help, decided here from the SQLSTATE (or, without one, from the connection's state).

use pgevents_retry::ErrorKind;
use tokio_postgres::error::SqlState;

use crate::TlsConfigError;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A statement or a connection failed. The message already describes `cause` with its own
    /// causes (tokio-postgres says only "db error"), so it is not repeated as a source.
    #[error("{context}: {}", describe(cause))]
    Sql { context: String, cause: tokio_postgres::Error, kind: ErrorKind },
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// The pool could not hand out a connection (other than a failed connection attempt).
    #[error("cannot get a database connection from the pool: {0}")]
    Pool(String),
}

impl PgError {
    /// Wraps a tokio-postgres error with what was being done.
    pub fn new(context: impl Into<String>, source: tokio_postgres::Error) -> PgError {
        let kind = classify(&source);
        PgError::Sql { context: context.into(), cause: source, kind }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            PgError::Sql { kind, .. } => *kind,
            PgError::Tls(_) => ErrorKind::Config,
            PgError::Pool(_) => ErrorKind::Transient,
        }
    }

    /// Whether the server cannot be used now at all (the connection is lost or refused, the
    /// server is shutting down or starting, or out of resources), as opposed to this statement
    /// failing (including a cancelled one, a timeout, a deadlock): any other statement would
    /// fail too, so the work waits without being held against it.
    pub fn server_gone(&self) -> bool {
        match self {
            PgError::Sql { cause, .. } => match cause.as_db_error() {
                None => true,
                Some(db) => {
                    let code = db.code().code();
                    matches!(&code[..2], "08" | "53" | "58")
                        || matches!(code, "57P01" | "57P02" | "57P03" | "57P04" | "57P05")
                }
            },
            PgError::Tls(_) => false,
            PgError::Pool(_) => true,
        }
    }

    /// The server's SQLSTATE, when the server reported the error.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            PgError::Sql { cause, .. } => cause.code(),
            _ => None,
        }
    }

    /// The server's message and SQLSTATE without the context (for records that say the
    /// context themselves).
    pub fn server_message(&self) -> String {
        match self {
            PgError::Sql { cause, .. } => describe(cause),
            other => other.to_string(),
        }
    }
}

/// SQLSTATE classes: 08 connection exception, 53 insufficient resources, 57 operator
/// intervention (shutdown, starting up), 58 system error and 40 transaction rollback (deadlock,
/// serialization failure) pass; 28 (authorization) and 3D (no such database) are settings; the
/// rest is the statement's own fault. An error without SQLSTATE is a lost or failed connection.
fn classify(e: &tokio_postgres::Error) -> ErrorKind {
    let Some(db) = e.as_db_error() else { return ErrorKind::Transient };
    let code = db.code();
    match &code.code()[..2] {
        "08" | "53" | "57" | "58" | "40" => ErrorKind::Transient,
        "28" | "3D" => ErrorKind::Config,
        _ if *code == SqlState::INSUFFICIENT_PRIVILEGE => ErrorKind::Config,
        _ => ErrorKind::Permanent,
    }
}

/// The server's message with SQLSTATE, detail and hint, or the client error and its causes
/// (tokio-postgres' own Display says only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}
