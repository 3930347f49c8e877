//! The `pgevents` schema: every table pgevents keeps in the database is created here, by
//! versioned migrations grouped in components (`rules`: the rule tables; `snapshot`: the
//! producer's snapshot progress). A component is installed on its own, by whoever needs it.
//!
//! Each migration runs once, in the same transaction as its row in `pgevents.schema_migration`;
//! an advisory lock makes concurrent installs wait for each other; installing again applies only
//! what is missing. Never edit a released migration: add one.

use tokio_postgres::Client;

use crate::{ErrorKind, PgError};

/// One step of a component's tables.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// A group of tables installed together (versions from 1, in order).
#[derive(Debug, Clone, Copy)]
pub struct Component {
    pub name: &'static str,
    pub migrations: &'static [Migration],
}

impl Component {
    /// The version this pgevents installs.
    pub fn latest(&self) -> i32 {
        self.migrations.iter().map(|m| m.version).max().unwrap_or(0)
    }
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// The version before (0: not installed).
    pub from: i32,
    pub to: i32,
    /// The migrations applied now, as `version name`.
    pub applied: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("the pgevents {component} tables are at version {found}, newer than this pgevents knows ({supported}): upgrade pgevents")]
    Newer { component: &'static str, found: i32, supported: i32 },
}

impl SchemaError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SchemaError::Pg(e) => e.kind(),
            SchemaError::Newer { .. } => ErrorKind::Config,
        }
    }
}

/// Serialises installs (the key older pgevents versions used too).
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('pgevents rules install'))";

/// The schema and the record of applied migrations. A record made before components existed
/// (version as its only key) holds rule migrations: it gets the `component` column and key.
const BOOKKEEPING: &str = "
    CREATE SCHEMA IF NOT EXISTS pgevents;
    CREATE TABLE IF NOT EXISTS pgevents.schema_migration (
        component  text NOT NULL DEFAULT 'rules',
        version    integer NOT NULL,
        name       text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (component, version)
    );
    ALTER TABLE pgevents.schema_migration ADD COLUMN IF NOT EXISTS component text NOT NULL DEFAULT 'rules';
    DO $$
    DECLARE key_name text;
    BEGIN
        SELECT conname INTO key_name FROM pg_constraint
        WHERE conrelid = 'pgevents.schema_migration'::regclass AND contype = 'p' AND array_length(conkey, 1) = 1;
        IF key_name IS NOT NULL THEN
            EXECUTE format('ALTER TABLE pgevents.schema_migration DROP CONSTRAINT %I, ADD PRIMARY KEY (component, version)', key_name);
        END IF;
    END $$;";

/// Creates or upgrades a component's tables.
pub async fn install(client: &mut Client, component: &Component) -> Result<InstallReport, SchemaError> {
    let tx = client.transaction().await.map_err(|e| PgError::new("cannot begin the install transaction", e))?;
    tx.batch_execute(LOCK).await.map_err(|e| PgError::new("cannot lock the pgevents schema", e))?;
    tx.batch_execute(BOOKKEEPING).await.map_err(|e| {
        PgError::new("cannot create the pgevents schema (does the user have CREATE on the database?)", e)
    })?;
    let from: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM pgevents.schema_migration WHERE component = $1",
            &[&component.name],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| PgError::new("cannot read pgevents.schema_migration", e))?;
    let latest = component.latest();
    if from > latest {
        return Err(SchemaError::Newer { component: component.name, found: from, supported: latest });
    }
    let mut applied = Vec::new();
    for migration in component.migrations.iter().filter(|m| m.version > from) {
        let Migration { version, name, sql } = migration;
        tx.batch_execute(sql)
            .await
            .map_err(|e| PgError::new(format!("{} migration {version} ({name}) failed", component.name), e))?;
        tx.execute(
            "INSERT INTO pgevents.schema_migration (component, version, name) VALUES ($1, $2, $3)",
            &[&component.name, version, name],
        )
        .await
        .map_err(|e| PgError::new("cannot record the migration", e))?;
        applied.push(format!("{version} {name}"));
    }
    tx.commit().await.map_err(|e| PgError::new("cannot commit the install", e))?;
    Ok(InstallReport { from, to: latest, applied })
}

/// Installs or upgrades a component only when it is missing or older than this pgevents,
/// checked on `current`: an install needs `CREATE` on the database, an up-to-date component no
/// right at all. `None` when it was up to date.
pub async fn install_if_older(
    current: &Client,
    settings: &crate::ConnectConfig,
    component: &Component,
) -> Result<Option<InstallReport>, SchemaError> {
    if installed_version(current, component).await? >= component.latest() {
        return Ok(None);
    }
    let mut client = crate::connect_driven(settings, "schema").await?;
    install(&mut client, component).await.map(Some)
}

/// The installed version of a component (0 when its tables do not exist).
pub async fn installed_version(client: &Client, component: &Component) -> Result<i32, PgError> {
    let read = |e| PgError::new(format!("cannot read the version of the pgevents {} tables", component.name), e);
    let columns: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns
             WHERE table_schema = 'pgevents' AND table_name = 'schema_migration' AND column_name IN ('version', 'component')",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(read)?;
    let sql = match columns {
        0 => return Ok(0),
        // Recorded before components existed: only rule migrations.
        1 if component.name != "rules" => return Ok(0),
        1 => "SELECT coalesce(max(version), 0) FROM pgevents.schema_migration WHERE $1::text IS NOT NULL",
        _ => "SELECT coalesce(max(version), 0) FROM pgevents.schema_migration WHERE component = $1",
    };
    client.query_one(sql, &[&component.name]).await.and_then(|row| row.try_get(0)).map_err(read)
}
