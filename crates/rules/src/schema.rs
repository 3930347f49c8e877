//! `pgevents rules install`: versioned migrations of the rule tables.
//!
//! Each migration runs once, in the same transaction as the row in
//! `pgevents.schema_migration` that records it; an advisory lock makes concurrent installs
//! wait for each other. Running install again applies only what is missing.

use tokio_postgres::Client;

use crate::{pg_error, RulesError};

/// The migrations, in order. Never edit one that has been released: add a new one.
const MIGRATIONS: &[(i32, &str, &str)] = &[(1, "rule tables", include_str!("migrations/0001_rules.sql"))];

/// The schema version this pgevents works with.
pub const LATEST_VERSION: i32 = 1;

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// The version before (0: not installed).
    pub from: i32,
    pub to: i32,
    /// The migrations applied now, as `version name`.
    pub applied: Vec<String>,
}

const BOOKKEEPING: &str = "
    SELECT pg_advisory_xact_lock(hashtext('pgevents rules install'));
    CREATE SCHEMA IF NOT EXISTS pgevents;
    CREATE TABLE IF NOT EXISTS pgevents.schema_migration (
        version    integer PRIMARY KEY,
        name       text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    );";

/// Creates or upgrades the rule tables.
pub async fn install(client: &mut Client) -> Result<InstallReport, RulesError> {
    let tx = client.transaction().await.map_err(|e| pg_error("cannot begin the install transaction", e))?;
    tx.batch_execute(BOOKKEEPING)
        .await
        .map_err(|e| pg_error("cannot create the pgevents schema (does the user have CREATE on the database?)", e))?;
    let from: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM pgevents.schema_migration", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| pg_error("cannot read pgevents.schema_migration", e))?;
    if from > LATEST_VERSION {
        return Err(RulesError::NewerSchema { found: from, supported: LATEST_VERSION });
    }
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS.iter().filter(|(version, _, _)| *version > from) {
        tx.batch_execute(sql).await.map_err(|e| pg_error(format!("migration {version} ({name}) failed"), e))?;
        tx.execute("INSERT INTO pgevents.schema_migration (version, name) VALUES ($1, $2)", &[version, name])
            .await
            .map_err(|e| pg_error("cannot record the migration", e))?;
        applied.push(format!("{version} {name}"));
    }
    tx.commit().await.map_err(|e| pg_error("cannot commit the install", e))?;
    Ok(InstallReport { from, to: LATEST_VERSION, applied })
}

/// The installed version (0 when the rule tables do not exist).
pub async fn installed_version(client: &Client) -> Result<i32, RulesError> {
    let read = |e| pg_error("cannot read the rules schema version", e);
    let exists: bool = client
        .query_one("SELECT to_regclass('pgevents.schema_migration') IS NOT NULL", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(read)?;
    if !exists {
        return Ok(0);
    }
    client
        .query_one("SELECT coalesce(max(version), 0) FROM pgevents.schema_migration", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(read)
}

/// Fails unless the rule tables are installed at a version this pgevents knows.
pub(crate) async fn require_installed(client: &Client) -> Result<(), RulesError> {
    match installed_version(client).await? {
        0 => Err(RulesError::NotInstalled),
        v if v > LATEST_VERSION => Err(RulesError::NewerSchema { found: v, supported: LATEST_VERSION }),
        v if v < LATEST_VERSION => Err(RulesError::InvalidRule {
            what: "schema".into(),
            reason: format!(
                "the rule tables are at version {v}; run `pgevents rules install` to upgrade them to {LATEST_VERSION}"
            ),
        }),
        _ => Ok(()),
    }
}
