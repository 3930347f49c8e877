//! Checks and preparation before streaming: `wal_level`, the listed tables, the publication
//! (created or completed for pgoutput) and the slot (inspected; created later on the replication
//! connection if missing, and never dropped).

use pgevents_decode::Plugin;
use pgevents_event::Lsn;

use crate::config::ProducerConfig;
use crate::database::{quote_ident, Database, SlotInfo};
use crate::error::ProducerError;

/// The slot as found before streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    Missing,
    Ready { confirmed_flush: Option<Lsn> },
}

/// Runs every check and creates or completes the publication. Returns the slot's state.
pub async fn prepare(db: &Database, config: &ProducerConfig) -> Result<SlotState, ProducerError> {
    check_wal_level(db).await?;
    check_tables(db, config).await?;
    if config.plugin == Plugin::PgOutput {
        ensure_publication(db, config).await?;
    }
    check_slot(db, config).await
}

pub(crate) async fn check_wal_level(db: &Database) -> Result<(), ProducerError> {
    let level = db.wal_level().await?;
    if level != "logical" {
        return Err(ProducerError::Setup(format!(
            "wal_level is '{level}' but logical decoding needs 'logical': run ALTER SYSTEM SET wal_level = logical \
             (or set wal_level = logical in postgresql.conf) and restart PostgreSQL"
        )));
    }
    Ok(())
}

pub(crate) async fn check_tables(db: &Database, config: &ProducerConfig) -> Result<(), ProducerError> {
    for table in &config.tables {
        match db.relkind(&table.schema, &table.name).await?.as_deref() {
            None => {
                return Err(ProducerError::Setup(format!(
                    "table {} (listed in PGTABLES) does not exist in database {:?}; create it or fix the list",
                    table.qualified(),
                    config.postgres.dbname
                )))
            }
            Some("r") | Some("p") => {}
            Some(kind) => {
                let what = match kind {
                    "v" => "a view",
                    "m" => "a materialized view",
                    "f" => "a foreign table",
                    "S" => "a sequence",
                    _ => "not a table",
                };
                return Err(ProducerError::Setup(format!(
                    "{} (listed in PGTABLES) is {what}; only tables have changes to stream",
                    table.qualified()
                )));
            }
        }
    }
    Ok(())
}

fn table_list(config: &ProducerConfig, only: impl Fn(&str) -> bool) -> Vec<String> {
    config
        .tables
        .iter()
        .filter(|t| only(&t.qualified()))
        .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name)))
        .collect()
}

async fn ensure_publication(db: &Database, config: &ProducerConfig) -> Result<(), ProducerError> {
    let name = &config.publication;
    let explain = |e: ProducerError, what: &str| match e {
        ProducerError::Postgres(e) if !e.kind().is_transient() => ProducerError::Setup(format!(
            "could not {what} publication {name:?}: {}; create it yourself as a superuser or the tables' owner \
             (CREATE PUBLICATION {} FOR TABLE ...), then start again",
            e.server_message(),
            quote_ident(name)
        )),
        other => other,
    };
    match db.publication(name).await? {
        None if config.tables.is_empty() => {
            db.execute(&format!("CREATE PUBLICATION {} FOR ALL TABLES", quote_ident(name)))
                .await
                .map_err(|e| explain(e, "create"))?;
            tracing::info!(publication = %name, "created publication FOR ALL TABLES");
        }
        None => {
            let tables = table_list(config, |_| true).join(", ");
            db.execute(&format!("CREATE PUBLICATION {} FOR TABLE {tables}", quote_ident(name)))
                .await
                .map_err(|e| explain(e, "create"))?;
            tracing::info!(publication = %name, %tables, "created publication");
        }
        Some(true) => {}
        Some(false) if config.tables.is_empty() => {
            tracing::warn!(publication = %name, "publication is not FOR ALL TABLES: only the tables it lists are streamed");
        }
        Some(false) => {
            let present = db.publication_tables(name).await?;
            let missing = table_list(config, |q| !present.iter().any(|p| p == q));
            if !missing.is_empty() {
                let tables = missing.join(", ");
                db.execute(&format!("ALTER PUBLICATION {} ADD TABLE {tables}", quote_ident(name)))
                    .await
                    .map_err(|e| explain(e, "extend"))?;
                tracing::info!(publication = %name, %tables, "added tables to publication");
            }
        }
    }
    Ok(())
}

pub(crate) async fn check_slot(db: &Database, config: &ProducerConfig) -> Result<SlotState, ProducerError> {
    let slot = &config.slot;
    let Some(info) = db.slot(slot).await? else {
        return Ok(SlotState::Missing);
    };
    let SlotInfo { plugin, database, active_pid, confirmed_flush, wal_status } = info;
    if plugin.is_empty() {
        return Err(ProducerError::Setup(format!(
            "replication slot {slot:?} is a physical slot; choose another --pgslot"
        )));
    }
    if plugin != config.plugin.name() {
        return Err(ProducerError::Setup(format!(
            "replication slot {slot:?} was created for plugin {plugin}, not {}; use --plugin {plugin} or another --pgslot",
            config.plugin.name()
        )));
    }
    let current = db.current_database().await?;
    if database.as_deref() != Some(current.as_str()) {
        return Err(ProducerError::Setup(format!(
            "replication slot {slot:?} belongs to database {:?}, not {current:?}; use another --pgslot",
            database.unwrap_or_default()
        )));
    }
    if wal_status.as_deref() == Some("lost") {
        return Err(ProducerError::Setup(format!(
            "replication slot {slot:?} has lost WAL it needed (max_slot_wal_keep_size was exceeded), so changes were lost; \
             drop it (SELECT pg_drop_replication_slot('{slot}')) to start over from now"
        )));
    }
    if let Some(pid) = active_pid {
        return Err(ProducerError::SlotBusy { slot: slot.clone(), pid: Some(pid) });
    }
    Ok(SlotState::Ready { confirmed_flush })
}
