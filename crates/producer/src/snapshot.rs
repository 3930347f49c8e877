//! The initial snapshot (`--snapshot initial|always`): every subscribed table read in one
//! consistent snapshot and published as `R` (read) events before streaming starts.
//!
//! When the slot is created, PostgreSQL exports the snapshot matching the slot's consistent
//! point: tables read in it plus changes streamed from that point give every row exactly once,
//! with no gap. Tables are read in key order, batch by batch (`SELECT ... WHERE key > $1 ORDER
//! BY key LIMIT n`, every column as PostgreSQL's text, the last key bound as a parameter, never
//! pasted into the statement); each batch is confirmed by RabbitMQ before its progress is written to
//! `pgevents.snapshot_progress`. An interrupted snapshot resumes where it stopped, in a fresh
//! snapshot (the exported one is gone): rows changed meanwhile then arrive both as `R` events and
//! as the streamed changes that follow, never missing. Nothing is confirmed to the slot until
//! the snapshot is complete.

use std::sync::Arc;

use futures_util::StreamExt;
use pgevents_decode::encode::{close_event, write_row_event, TxFields};
use pgevents_decode::TableRef;
use pgevents_event::{Action, Lsn};
use pgevents_pg::schema::{self, Component, Migration, SchemaError};
use tokio_util::sync::CancellationToken;

use crate::clock::unix_micros;
use crate::config::ProducerConfig;
use crate::database::Database;
use crate::error::{pg_error, ProducerError};
use crate::message::{self, Envelope};
use crate::metrics::SNAPSHOT_ROWS;
use crate::publish::outputs::Role;
use crate::publish::stage::StageHandle;
use crate::publish::{Message, Outputs};
use crate::routing::{Router, INTERNAL_SCHEMA};
use crate::stats::{Phase, Stats};
use crate::table_read::{self, batch_query, BatchQuery, Columns, Paging, TableCatalog};

/// How a snapshot (or one table of it) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotEnd {
    Complete,
    /// Shutdown came first; the progress so far is recorded.
    Interrupted,
}

/// The snapshot's progress tables and the backfill requests: the `snapshot` component of the
/// pgevents schema.
pub const SNAPSHOT_TABLES: Component = Component {
    name: "snapshot",
    migrations: &[
        Migration {
            version: 1,
            name: "snapshot progress",
            // IF NOT EXISTS: pgevents before 0.2 created these tables without recording them.
            sql: "
            CREATE TABLE IF NOT EXISTS pgevents.snapshot (
                slot text PRIMARY KEY,
                lsn pg_lsn NOT NULL,
                started_at timestamptz NOT NULL DEFAULT now(),
                finished_at timestamptz
            );
            CREATE TABLE IF NOT EXISTS pgevents.snapshot_progress (
                slot text NOT NULL REFERENCES pgevents.snapshot (slot) ON DELETE CASCADE,
                table_name text NOT NULL,
                schema_name text NOT NULL,
                relname text NOT NULL,
                last_key text[],
                rows_read bigint NOT NULL DEFAULT 0,
                done boolean NOT NULL DEFAULT false,
                updated_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (slot, table_name)
            );",
        },
        Migration { version: 2, name: "backfills on demand", sql: crate::backfill::REQUESTS_SQL },
        Migration { version: 3, name: "tables seen in the publication", sql: crate::backfill::STREAMED_TABLES_SQL },
    ],
};

/// Creates the progress tables (idempotent). Run before the slot is created, so a role that
/// may not create them fails before anything else happens.
pub async fn ensure_schema(config: &ProducerConfig) -> Result<(), ProducerError> {
    let mut client = pgevents_pg::connect_driven(&config.postgres, "schema").await?;
    match schema::install(&mut client, &SNAPSHOT_TABLES).await {
        Ok(_) => Ok(()),
        Err(SchemaError::Pg(e)) if e.kind().is_transient() => Err(e.into()),
        Err(e) => Err(ProducerError::Setup(format!(
            "the snapshot keeps its progress in schema {INTERNAL_SCHEMA}, which could not be created: {e}; \
             grant the role CREATE on the database, or run the producer once as the database owner"
        ))),
    }
}

/// Installs the snapshot tables (with the backfill requests) when missing or older, as
/// [`ensure_schema`] does; `false` (backfills off, with the reason logged) when the producer may
/// not, or when someone it does not trust owns them.
pub async fn ensure_backfill_schema(db: &Database, config: &ProducerConfig) -> Result<bool, ProducerError> {
    match schema::install_if_older(db.client(), &config.postgres, &SNAPSHOT_TABLES).await {
        Ok(_) => Ok(true),
        Err(SchemaError::Pg(e)) if e.kind().is_transient() => Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "backfills on demand (pgevents.snapshot()) are off: the snapshot tables in schema {INTERNAL_SCHEMA} could not be created or upgraded; grant the role CREATE on the database, or run the producer once as the database owner");
            Ok(false)
        }
    }
}

/// The LSN of an unfinished snapshot of this slot, if there is one.
pub async fn unfinished(db: &Database, slot: &str) -> Result<Option<Lsn>, ProducerError> {
    let row = db
        .client()
        .query_opt("SELECT lsn::text FROM pgevents.snapshot WHERE slot = $1 AND finished_at IS NULL", &[&slot])
        .await
        .map_err(|e| pg_error("read the snapshot state", e))?;
    Ok(row.and_then(|r| r.get::<_, String>(0).parse().ok()))
}

/// Records a new snapshot of every streamed table at `lsn`, replacing any earlier one.
pub async fn plan(db: &Database, config: &ProducerConfig, lsn: Lsn) -> Result<(), ProducerError> {
    let router = config.router();
    // The tables listed, or those the publication streams (all of them only for FOR ALL TABLES).
    let candidates: Vec<(String, String)> = if !config.tables.is_empty() {
        config.tables.iter().map(|t| (t.schema.clone(), t.name.clone())).collect()
    } else {
        match db.published_tables(&config.publication).await? {
            Some(tables) => tables,
            None => db.ordinary_tables().await?,
        }
    };
    let tables: Vec<(String, String)> = candidates.into_iter().filter(|(s, t)| router.streams(s, t)).collect();
    let client = db.client();
    let fail = |e| pg_error("record the snapshot plan", e);
    client.execute("DELETE FROM pgevents.snapshot WHERE slot = $1", &[&config.slot]).await.map_err(fail)?;
    client
        .execute(
            "INSERT INTO pgevents.snapshot (slot, lsn) VALUES ($1, $2::text::pg_lsn)",
            &[&config.slot, &lsn.to_string()],
        )
        .await
        .map_err(fail)?;
    for (schema, name) in &tables {
        client
            .execute(
                "INSERT INTO pgevents.snapshot_progress (slot, table_name, schema_name, relname) VALUES ($1, $2, $3, $4)",
                &[&config.slot, &format!("{schema}.{name}"), schema, name],
            )
            .await
            .map_err(fail)?;
    }
    tracing::info!(slot = %config.slot, %lsn, tables = tables.len(), "initial snapshot planned");
    Ok(())
}

/// A table still to read.
struct Pending {
    table: Arc<TableRef>,
    last_key: Option<Vec<String>>,
    rows_read: i64,
}

/// Reads and publishes every unfinished table of the slot's snapshot. `exported` names the
/// snapshot exported when the slot was created; without it a fresh one is taken. Returns
/// `Interrupted` when shutdown came first (progress so far is kept).
pub async fn run(
    db: &Database,
    config: &Arc<ProducerConfig>,
    exported: Option<&str>,
    stats: &Arc<Stats>,
    shutdown: &CancellationToken,
) -> Result<SnapshotEnd, ProducerError> {
    stats.set_phase(Phase::Snapshot);
    let Some(lsn) = unfinished(db, &config.slot).await? else {
        return Ok(SnapshotEnd::Complete);
    };
    let reader = Database::connect_for_rows(&config.postgres).await?;
    reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    if let Some(name) = exported {
        // SET TRANSACTION SNAPSHOT takes no parameter; the name is PostgreSQL's own (hex digits
        // and dashes), checked before it goes into the statement.
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(ProducerError::Protocol(format!("unexpected exported snapshot name {name:?}")));
        }
        reader.execute(&format!("SET TRANSACTION SNAPSHOT '{name}'")).await?;
    }
    // Row-level security policies are the tables' owners' code: a table they would filter is an
    // error for the snapshot, never a silently partial read run through their functions.
    reader.execute("SET LOCAL row_security = off").await?;
    let outputs = Outputs::connect(config, Role::Snapshot).await?;
    let mut publisher = StageHandle::start(outputs, config.clone(), stats.clone());
    let mut snapshot = Snapshot {
        db,
        reader: &reader,
        config,
        router: config.router(),
        catalog: TableCatalog::default(),
        tx_fields: TxFields::new(lsn, 0, unix_micros()),
        lsn_text: lsn.to_string(),
        lsn,
    };
    let mut end = SnapshotEnd::Complete;
    for pending in snapshot.pending().await? {
        end = snapshot.read_table(pending, &mut publisher, shutdown).await?;
        if end == SnapshotEnd::Interrupted {
            break;
        }
    }
    publisher.finish().await?;
    let _ = reader.execute("COMMIT").await;
    if end == SnapshotEnd::Complete {
        db.client()
            .execute("UPDATE pgevents.snapshot SET finished_at = now() WHERE slot = $1", &[&config.slot])
            .await
            .map_err(|e| pg_error("record the end of the snapshot", e))?;
        tracing::info!(slot = %config.slot, %lsn, "initial snapshot complete; streaming changes from its position");
    }
    Ok(end)
}

struct Snapshot<'a> {
    db: &'a Database,
    reader: &'a Database,
    config: &'a ProducerConfig,
    router: Router,
    catalog: TableCatalog,
    tx_fields: TxFields,
    lsn_text: String,
    lsn: Lsn,
}

impl Snapshot<'_> {
    async fn pending(&self) -> Result<Vec<Pending>, ProducerError> {
        let rows = self
            .db
            .client()
            .query(
                "SELECT schema_name, relname, last_key, rows_read FROM pgevents.snapshot_progress
                 WHERE slot = $1 AND NOT done ORDER BY table_name",
                &[&self.config.slot],
            )
            .await
            .map_err(|e| pg_error("read the snapshot progress", e))?;
        Ok(rows
            .iter()
            .map(|r| Pending {
                table: Arc::new(TableRef::new(r.get(0), r.get(1))),
                last_key: r.get(2),
                rows_read: r.get(3),
            })
            .collect())
    }

    /// Reads one table batch by batch, recording its progress after each.
    async fn read_table(
        &mut self,
        pending: Pending,
        publisher: &mut StageHandle<Outputs>,
        shutdown: &CancellationToken,
    ) -> Result<SnapshotEnd, ProducerError> {
        let Pending { table, mut last_key, mut rows_read } = pending;
        let columns = self.catalog.columns(self.db, self.reader, &table).await?;
        let route = self.router.route(&table);
        let paging = Paging::of(&columns);
        let batch_rows = self.config.snapshot_batch_rows.max(1);
        tracing::info!(table = %table.qualified, resumed_after_rows = rows_read, "snapshot of table started");
        loop {
            if shutdown.is_cancelled() {
                return Ok(SnapshotEnd::Interrupted);
            }
            let query = batch_query(&table, &columns, paging, last_key.as_deref(), batch_rows);
            let batch = self.read_batch(&table, &columns, &route, &query, rows_read, publisher).await?;
            rows_read += batch.rows as i64;
            if batch.last_key.is_some() {
                last_key = batch.last_key;
            }
            let done = paging == Paging::Whole || batch.rows < batch_rows;
            self.record_progress(&table, &last_key, rows_read, done).await?;
            if done {
                tracing::info!(table = %table.qualified, rows = rows_read, "snapshot of table done");
                return Ok(SnapshotEnd::Complete);
            }
        }
    }

    /// Reads one batch, publishes its rows (confirmed before returning) and says how many
    /// there were and the key of the last.
    #[allow(clippy::too_many_arguments)]
    async fn read_batch(
        &mut self,
        table: &Arc<TableRef>,
        columns: &Columns,
        route: &crate::routing::Route,
        query: &BatchQuery,
        rows_before: i64,
        publisher: &mut StageHandle<Outputs>,
    ) -> Result<Batch, ProducerError> {
        let batch_rows = self.config.snapshot_batch_rows.max(1);
        let stream = table_read::rows(self.reader.client(), query, table).await?;
        let mut stream = std::pin::pin!(stream);
        let mut messages = Vec::with_capacity(batch_rows.min(4096));
        let mut rows = 0;
        let mut last_row: Option<Vec<Option<String>>> = None;
        while let Some(values) = stream.next().await {
            let values = values?;
            messages.push(self.event(table, columns, route, &values, (rows_before + rows as i64) as u64)?);
            rows += 1;
            last_row = Some(values);
            if messages.len() >= batch_rows {
                publisher.publish_confirmed(std::mem::take(&mut messages)).await?;
            }
        }
        publisher.publish_confirmed(messages).await?;
        metrics::counter!(SNAPSHOT_ROWS, "table" => table.qualified.clone()).increment(rows as u64);
        let last_key = last_row.map(|last| {
            columns.key_positions.iter().map(|&i| last.get(i).cloned().flatten().unwrap_or_default()).collect()
        });
        Ok(Batch { rows, last_key })
    }

    async fn record_progress(
        &self,
        table: &TableRef,
        last_key: &Option<Vec<String>>,
        rows_read: i64,
        done: bool,
    ) -> Result<(), ProducerError> {
        self.db
            .client()
            .execute(
                "UPDATE pgevents.snapshot_progress SET last_key = $3, rows_read = $4, done = $5, updated_at = now()
                 WHERE slot = $1 AND table_name = $2",
                &[&self.config.slot, &table.qualified, last_key, &rows_read, &done],
            )
            .await
            .map_err(|e| pg_error("record the snapshot progress", e))?;
        Ok(())
    }

    fn event(
        &self,
        table: &Arc<TableRef>,
        columns: &Columns,
        route: &crate::routing::Route,
        values: &[Option<String>],
        seq: u64,
    ) -> Result<Message, ProducerError> {
        let change = table_read::row_change(table, columns, route, values, self.config.values);
        let mut body = Vec::with_capacity(256);
        write_row_event(&mut body, &change, &self.tx_fields, seq);
        close_event(&mut body, None);
        let envelope = Envelope {
            table,
            action: Action::Read,
            message_id: format!("snapshot:{}:{}:{seq}", self.lsn, table.qualified),
            lsn_text: &self.lsn_text,
            commit_time_micros: unix_micros(),
            position: None,
        };
        message::build_within_limit(envelope, route, body, self.config)
    }
}

/// What one batch read.
struct Batch {
    rows: usize,
    /// The key values of its last row (keyed tables).
    last_key: Option<Vec<String>>,
}
