//! Ordinary SQL against the source database (tokio-postgres): configuration checks, publication
//! and slot inspection, and the catalog look-ups the decoders ask for.

use pgevents_decode::{PrimaryKey, TableRef, TypeInfo};
use pgevents_event::Lsn;
use pgevents_pg::{connect_driven, ConnectConfig};
use tokio_postgres::Client;

use crate::error::{pg_error, ProducerError};

/// What `pg_replication_slots` says of a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub plugin: String,
    pub database: Option<String>,
    pub active_pid: Option<i32>,
    pub confirmed_flush: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+).
    pub wal_status: Option<String>,
}

/// A column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub type_oid: u32,
    /// The type as SQL spells it (`format_type`), e.g. `character varying(20)`.
    pub type_sql: String,
}

/// A regular (non-replication) connection.
/// The session holding the slot's advisory lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: i32,
    pub user: String,
    pub application: String,
    /// Client address, or `local socket`.
    pub client: String,
    /// Whether some connection streams the slot right now.
    pub slot_streamed: bool,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PID {} (user {}, application {:?}, from {})", self.pid, self.user, self.application, self.client)
    }
}

pub struct Database {
    client: Client,
}

/// Quotes an identifier for SQL text, as `quote_ident` does.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Database {
    pub async fn connect(settings: &ConnectConfig) -> Result<Database, ProducerError> {
        Ok(Database { client: connect_driven(settings, "catalog").await? })
    }

    /// A connection that renders values as the replication stream does (the same session
    /// settings: hex bytea, ISO dates in UTC, exact floats), for reading rows that must look
    /// like the stream's: the snapshot's and the backfills'.
    pub async fn connect_for_rows(settings: &ConnectConfig) -> Result<Database, ProducerError> {
        let db = Self::connect(settings).await?;
        // The settings are constants of pgevents, never input.
        let sets: String = pgevents_replication::SESSION_SETTINGS
            .iter()
            .map(|(name, value)| format!("SET {name} = '{value}';"))
            .collect();
        db.client.batch_execute(&sets).await.map_err(|e| pg_error("set the session up for reading rows", e))?;
        Ok(db)
    }

    async fn scalar(&self, sql: &str) -> Result<String, ProducerError> {
        let row = self.client.query_one(sql, &[]).await.map_err(|e| pg_error(format!("query {sql:?}"), e))?;
        row.try_get::<_, String>(0).map_err(|e| pg_error(format!("query {sql:?}"), e))
    }

    pub async fn wal_level(&self) -> Result<String, ProducerError> {
        self.scalar("SHOW wal_level").await
    }

    pub async fn server_version_num(&self) -> Result<u32, ProducerError> {
        let text = self.scalar("SHOW server_version_num").await?;
        text.parse().map_err(|_| ProducerError::Protocol(format!("unexpected server_version_num {text:?}")))
    }

    pub async fn current_database(&self) -> Result<String, ProducerError> {
        self.scalar("SELECT current_database()::text").await
    }

    /// The `relkind` of a table, or `None` when it does not exist.
    pub async fn relkind(&self, schema: &str, table: &str) -> Result<Option<String>, ProducerError> {
        let row = self
            .client
            .query_opt(
                "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                &[&schema, &table],
            )
            .await
            .map_err(|e| pg_error("look up table", e))?;
        Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
    }

    /// Whether the publication exists, and if so whether it is `FOR ALL TABLES`.
    pub async fn publication(&self, name: &str) -> Result<Option<bool>, ProducerError> {
        let row = self
            .client
            .query_opt("SELECT puballtables FROM pg_publication WHERE pubname = $1", &[&name])
            .await
            .map_err(|e| pg_error("look up publication", e))?;
        Ok(row.map(|r| r.get::<_, bool>(0)))
    }

    /// The tables whose changes the publication streams, as (schema, table): every ordinary table
    /// for `FOR ALL TABLES`; `None` when the publication does not exist.
    pub async fn published_tables(&self, name: &str) -> Result<Option<Vec<(String, String)>>, ProducerError> {
        Ok(match self.publication(name).await? {
            Some(true) => Some(self.ordinary_tables().await?),
            Some(false) => Some(self.publication_table_pairs(name).await?),
            None => None,
        })
    }

    /// The tables of a publication, as `schema.table`.
    pub async fn publication_tables(&self, name: &str) -> Result<Vec<String>, ProducerError> {
        let rows = self
            .client
            .query(
                "SELECT schemaname::text || '.' || tablename::text FROM pg_publication_tables WHERE pubname = $1",
                &[&name],
            )
            .await
            .map_err(|e| pg_error("list publication tables", e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The tables of a publication, as (schema, table).
    pub async fn publication_table_pairs(&self, name: &str) -> Result<Vec<(String, String)>, ProducerError> {
        let rows = self
            .client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2",
                &[&name],
            )
            .await
            .map_err(|e| pg_error("list publication tables", e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The server's WAL position (its replay position on a standby).
    pub async fn current_wal_lsn(&self) -> Result<Lsn, ProducerError> {
        let text = self
            .scalar("SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text")
            .await?;
        text.parse().map_err(|_| ProducerError::Protocol(format!("unexpected WAL position {text:?}")))
    }

    /// Tries for the session-level advisory lock `(namespace, hashtext(name))`.
    pub async fn try_advisory_lock(&self, namespace: i32, name: &str) -> Result<bool, ProducerError> {
        let row = self
            .client
            .query_one("SELECT pg_try_advisory_lock($1, hashtext($2))", &[&namespace, &name])
            .await
            .map_err(|e| pg_error("take the producer lock of the slot", e))?;
        Ok(row.get(0))
    }

    /// Who holds that advisory lock, and whether anyone streams `slot` meanwhile.
    pub async fn advisory_lock_holder(
        &self,
        namespace: i32,
        name: &str,
        slot: &str,
    ) -> Result<Option<LockHolder>, ProducerError> {
        let row = self
            .client
            .query_opt(
                "SELECT l.pid, coalesce(a.usename::text, '?'), coalesce(a.application_name, ''),
                        coalesce(a.client_addr::text, 'local socket'),
                        coalesce((SELECT s.active FROM pg_replication_slots s WHERE s.slot_name = $3), false)
                 FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                   AND l.classid = $1::int4::oid AND l.objid = hashtext($2)::oid",
                &[&namespace, &name, &slot],
            )
            .await
            .map_err(|e| pg_error("look up the holder of the producer lock", e))?;
        Ok(row.map(|r| LockHolder {
            pid: r.get(0),
            user: r.get(1),
            application: r.get(2),
            client: r.get(3),
            slot_streamed: r.get(4),
        }))
    }

    /// The underlying client, for queries of their own (snapshot, progress).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Ordinary tables outside the system schemas and pgevents' own, as (schema, table).
    pub async fn ordinary_tables(&self) -> Result<Vec<(String, String)>, ProducerError> {
        let rows = self
            .client
            .query(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind = 'r' AND NOT c.relispartition AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgevents')
                   AND n.nspname NOT LIKE 'pg\\_%'
                 ORDER BY 1, 2",
                &[],
            )
            .await
            .map_err(|e| pg_error("list tables", e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The columns logical replication sends for a table (not dropped, not generated), in
    /// order, with their type OIDs.
    pub async fn columns(&self, table: &TableRef) -> Result<Vec<ColumnInfo>, ProducerError> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, a.atttypid::int8, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                 ORDER BY a.attnum",
                &[&table.schema, &table.name],
            )
            .await
            .map_err(|e| pg_error(format!("list the columns of {}", table.qualified), e))?;
        if rows.is_empty() {
            return Err(ProducerError::Setup(format!(
                "snapshot: table {} does not exist (any more) or has no columns",
                table.qualified
            )));
        }
        Ok(rows
            .iter()
            .map(|r| ColumnInfo {
                name: r.get(0),
                type_oid: u32::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                type_sql: r.get(2),
            })
            .collect())
    }

    /// Runs a statement (DDL).
    pub async fn execute(&self, sql: &str) -> Result<(), ProducerError> {
        self.client.batch_execute(sql).await.map_err(|e| pg_error(format!("run {sql:?}"), e))
    }

    pub async fn slot(&self, slot: &str) -> Result<Option<SlotInfo>, ProducerError> {
        let row = self
            .client
            .query_opt(
                "SELECT plugin::text, database::text, active_pid, confirmed_flush_lsn::text, to_jsonb(s)->>'wal_status'
                 FROM pg_replication_slots s WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| pg_error("look up replication slot", e))?;
        Ok(row.map(|r| SlotInfo {
            plugin: r.get::<_, Option<String>>(0).unwrap_or_default(),
            database: r.get(1),
            active_pid: r.get(2),
            confirmed_flush: r.get::<_, Option<String>>(3).and_then(|s| s.parse().ok()),
            wal_status: r.get(4),
        }))
    }

    /// The primary key columns of a table in key order (empty without one or if the table is gone).
    pub async fn primary_key(&self, table: &TableRef) -> Result<PrimaryKey, ProducerError> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text
                 FROM pg_index i
                 JOIN pg_class c ON c.oid = i.indrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                 WHERE i.indisprimary AND n.nspname = $1 AND c.relname = $2
                 ORDER BY k.ord",
                &[&table.schema, &table.name],
            )
            .await
            .map_err(|e| pg_error(format!("look up the primary key of {}", table.qualified), e))?;
        Ok(PrimaryKey::new(rows.iter().map(|r| r.get(0)).collect()))
    }

    /// `pg_type` rows for these OIDs; an OID the catalog does not know maps to text.
    pub async fn types(&self, oids: &[u32]) -> Result<Vec<TypeInfo>, ProducerError> {
        let wanted: Vec<i64> = oids.iter().map(|&o| i64::from(o)).collect();
        let rows = self
            .client
            .query(
                "SELECT oid::int8, typtype::text, typcategory::text, typelem::int8, typbasetype::int8, typdelim::text
                 FROM pg_type WHERE oid = ANY($1::int8[]::oid[])",
                &[&wanted],
            )
            .await
            .map_err(|e| pg_error("look up column types", e))?;
        let byte = |s: String| s.bytes().next().unwrap_or(0);
        let mut infos: Vec<TypeInfo> = rows
            .into_iter()
            .map(|r| TypeInfo {
                oid: r.get::<_, i64>(0) as u32,
                typtype: byte(r.get(1)),
                category: byte(r.get(2)),
                elem: r.get::<_, i64>(3) as u32,
                base: r.get::<_, i64>(4) as u32,
                delim: byte(r.get(5)),
            })
            .collect();
        for &oid in oids {
            if !infos.iter().any(|i| i.oid == oid) {
                infos.push(TypeInfo { oid, typtype: 0, category: 0, elem: 0, base: 0, delim: b',' });
            }
        }
        Ok(infos)
    }
}
