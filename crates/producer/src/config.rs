//! Producer settings (the binary fills them from flags, environment and files).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use pgevents_amqp::Brokers;
use pgevents_decode::{Plugin, ValueOptions};
use pgevents_pg::ConnectConfig;

use crate::oversize::Oversize;
use crate::routing::{Router, RoutingConfig};

/// A table named in PGTABLES: `schema.table`, or `table` for `public.table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

impl FromStr for TableName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (schema, name) = s.split_once('.').unwrap_or(("public", s));
        if schema.is_empty() || name.is_empty() || name.contains('.') {
            return Err(format!("invalid table {s:?} in PGTABLES: expected schema.table or table, comma-separated"));
        }
        Ok(TableName { schema: schema.to_owned(), name: name.to_owned() })
    }
}

/// When to take a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotMode {
    /// Only stream changes.
    #[default]
    Never,
    /// When the slot is created (and to finish an interrupted snapshot).
    Initial,
    /// At every start; with an existing slot, rows are read as of the start and changes from the
    /// slot's position follow (some may be seen twice, none is missed).
    Always,
}

/// Where row events go (`--publish-to`). Outbox messages always go to their AMQP exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublishTo {
    /// The AMQP topic exchange (routing, work queues).
    #[default]
    Exchange,
    /// The RabbitMQ stream over the stream protocol (a replayable log, exactly once).
    Stream,
    /// Both, each event confirmed by both before its LSN moves.
    Both,
}

/// The stream output (`--stream`, `--stream-url`).
#[derive(Debug, Clone)]
pub struct StreamOutputConfig {
    pub url: pgevents_stream::StreamUrl,
    pub stream: String,
    /// Applied when the stream is declared (an existing one keeps its settings).
    pub retention: pgevents_stream::StreamRetention,
}

/// Which headers and properties each event carries (`--headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderMode {
    /// The `action`, `table` and `lsn` headers; message id, content type, timestamp and app id.
    #[default]
    Full,
    /// The message id and content type only (the routing key names the table; the body holds the
    /// rest).
    Minimal,
    /// No header and no property but persistence (and `content_encoding` when compressed).
    None,
}

/// Body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub postgres: ConnectConfig,
    pub slot: String,
    pub publication: String,
    /// Tables to stream; empty for every table.
    pub tables: Vec<TableName>,
    pub plugin: Plugin,
    pub amqp_url: Brokers,
    pub exchange: String,
    /// Have RabbitMQ return (not drop) events that no queue is bound for; the producer then
    /// stops confirming and retries until a queue is bound.
    pub mandatory: bool,
    pub compression: Compression,
    /// `--pk-hash-header`: a header of this name holds a digest of `schema.table:<primary key>`,
    /// for RabbitMQ's consistent-hash exchange (`hash-header`), so that every event of a row
    /// goes to the same queue.
    pub pk_hash_header: Option<String>,
    pub values: ValueOptions,
    /// Soft limit of messages published but not yet confirmed.
    pub max_in_flight: u64,
    /// Soft limit of message body bytes published but not yet confirmed (a batch is taken
    /// while below it).
    pub max_in_flight_bytes: u64,
    /// Largest message body published (RabbitMQ's `max_message_size`: 16 MiB by default since
    /// 4.0, 128 MiB before); a larger event is handled by `oversize`.
    pub max_message_bytes: usize,
    pub oversize: Oversize,
    /// How often a standby status update (with a liveness probe) is sent.
    pub status_interval: Duration,
    /// Memory for the events of one transaction before they spill to disk.
    pub tx_memory_budget: usize,
    pub spill_dir: Option<PathBuf>,
    /// How long a graceful stop waits for outstanding confirms.
    pub shutdown_timeout: Duration,
    /// How long published messages may stay unconfirmed before the connection is presumed broken.
    pub confirm_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// At start, how long to wait for a slot held by another connection (a crashed producer's
    /// connection may hold it for a moment) before failing.
    pub slot_busy_timeout: Duration,
    /// How long a standby tolerates the slot's lock held by a session while nobody streams the
    /// slot, before reporting the holder (it may not be a producer at all).
    pub lock_holder_timeout: Duration,
    /// A statement run every `heartbeat_interval` on the catalog connection (e.g.
    /// `SELECT pg_logical_emit_message(false, 'pgevents-heartbeat', '')`), so the slot's database
    /// has WAL of its own even when nothing subscribed changes.
    pub heartbeat_sql: Option<String>,
    pub heartbeat_interval: Duration,
    pub routing: RoutingConfig,
    pub snapshot: SnapshotMode,
    /// A stream queue to keep the event history in (for `pgevents serve`), declared and bound
    /// to the exchange at start.
    pub history_stream: Option<(String, pgevents_amqp::Retention)>,
    /// Where row events go.
    pub publish_to: PublishTo,
    /// Which headers and properties events carry.
    pub headers: HeaderMode,
    /// The stream output, when `publish_to` names it.
    pub stream: Option<StreamOutputConfig>,
    /// Rows per snapshot batch (one query, confirmed before its progress is recorded).
    pub snapshot_batch_rows: usize,
    /// Take unsigned `pgevents` messages as context (and `{"skip": true}` as a skip request),
    /// as pgevents did before messages were signed: any role that can connect may send one.
    pub allow_unsigned_messages: bool,
    /// The exchange of outbox messages: never the events exchange (see [`Self::check_exchanges`]).
    pub outbox_exchange: String,
    /// Where signed outbox messages that cannot be published go, with the reason (a durable
    /// queue of the same name is bound to it).
    pub outbox_dead_letter_exchange: String,
    /// Largest context of a transaction, in bytes of its messages (more is ignored).
    pub max_context_bytes: usize,
    /// Rows per backfill chunk (read between two watermarks, published together).
    pub backfill_chunk_rows: usize,
    /// How often the producer looks for backfill requests (and, with `snapshot_new_tables`, at
    /// the publication).
    pub backfill_poll: Duration,
    /// Backfill the tables added to the publication while streaming (pgoutput, no `PGTABLES`).
    pub snapshot_new_tables: bool,
    /// Rows per second a backfill reads at most (0: as fast as it can), to leave the broker room
    /// for the live changes.
    pub backfill_max_rows_per_s: u64,
}

impl ProducerConfig {
    /// Settings with the documented defaults.
    pub fn new(postgres: ConnectConfig, amqp_url: Brokers) -> Self {
        ProducerConfig {
            postgres,
            slot: "pgevents".into(),
            publication: "pgevents".into(),
            tables: Vec::new(),
            plugin: Plugin::PgOutput,
            amqp_url,
            exchange: "table_exchange".into(),
            mandatory: false,
            compression: Compression::None,
            pk_hash_header: None,
            values: ValueOptions::default(),
            max_in_flight: 4096,
            max_in_flight_bytes: 64 << 20,
            max_message_bytes: 16 << 20,
            oversize: Oversize::Fail,
            status_interval: Duration::from_secs(10),
            tx_memory_budget: 16 << 20,
            spill_dir: None,
            shutdown_timeout: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(60),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            slot_busy_timeout: Duration::from_secs(10),
            lock_holder_timeout: Duration::from_secs(60),
            heartbeat_sql: None,
            heartbeat_interval: Duration::from_secs(30),
            routing: RoutingConfig::default(),
            snapshot: SnapshotMode::Never,
            history_stream: None,
            publish_to: PublishTo::Exchange,
            headers: HeaderMode::Full,
            stream: None,
            snapshot_batch_rows: 1000,
            allow_unsigned_messages: false,
            outbox_exchange: "pgevents.outbox".into(),
            outbox_dead_letter_exchange: "pgevents.outbox.dead".into(),
            max_context_bytes: pgevents_decode::DEFAULT_MAX_CONTEXT_BYTES,
            backfill_chunk_rows: 1000,
            backfill_poll: Duration::from_secs(1),
            snapshot_new_tables: false,
            backfill_max_rows_per_s: 0,
        }
    }

    /// Settings of a publisher to the configured exchange(s); `role` names the connection in
    /// RabbitMQ's management UI.
    pub fn publisher_settings(&self, role: &str) -> pgevents_amqp::PublisherSettings {
        pgevents_amqp::PublisherSettings {
            exchange: self.exchange.clone(),
            mandatory: self.mandatory,
            declare_exchange: true,
            other_exchanges: self.other_exchanges(),
            connection_name: format!("pgevents {role} ({})", self.slot),
        }
    }

    /// The exchanges messages may name besides the events exchange: those of `--exchange-map`,
    /// the outbox exchange and its dead-letter exchange.
    fn other_exchanges(&self) -> Vec<String> {
        let mut names = self.routing.mapped_exchanges();
        names.push(self.outbox_exchange.clone());
        names.push(self.outbox_dead_letter_exchange.clone());
        names.sort();
        names.dedup();
        names.retain(|name| name != &self.exchange);
        names
    }

    /// Outbox messages have an exchange of their own, and so do the ones dead-lettered: on the
    /// events exchange (or one of `--exchange-map`), a role granted `pgevents.outbox()` could
    /// publish what consumers would take for row events.
    pub fn check_exchanges(&self) -> Result<(), String> {
        let events: Vec<&str> = std::iter::once(self.exchange.as_str())
            .chain(self.routing.exchange_map.iter().map(|(_, e)| e.as_str()))
            .collect();
        check_outbox_exchanges(&events, &self.outbox_exchange, &self.outbox_dead_letter_exchange)
    }

    /// The router of this configuration (which tables, which routing key and exchange).
    pub fn router(&self) -> Router {
        Router::new(self.routing.clone(), &self.postgres.dbname, self.tables.iter().map(TableName::qualified).collect())
    }
}

/// See [`ProducerConfig::check_exchanges`].
fn check_outbox_exchanges(events: &[&str], outbox: &str, dead: &str) -> Result<(), String> {
    for (option, name) in [("--outbox-exchange", outbox), ("--outbox-dead-letter-exchange", dead)] {
        if name.trim().is_empty() {
            return Err(format!("{option} may not be empty"));
        }
        if events.contains(&name) {
            return Err(format!(
                "{option} {name:?} is an events exchange: outbox messages there could pass for row events; choose an exchange of their own"
            ));
        }
    }
    if outbox == dead {
        return Err("--outbox-exchange and --outbox-dead-letter-exchange must differ".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_exchanges_are_their_own() {
        let events = ["table_exchange", "orders_x"];
        assert_eq!(check_outbox_exchanges(&events, "pgevents.outbox", "pgevents.outbox.dead"), Ok(()));
        for outbox in ["table_exchange", "orders_x"] {
            let err = check_outbox_exchanges(&events, outbox, "pgevents.outbox.dead").unwrap_err();
            assert!(err.contains("could pass for row events"), "{err}");
        }
        assert!(check_outbox_exchanges(&events, "o", "table_exchange").is_err());
        assert!(check_outbox_exchanges(&events, "o", "o").unwrap_err().contains("must differ"));
        assert!(check_outbox_exchanges(&events, " ", "d").unwrap_err().contains("may not be empty"));
    }

    #[test]
    fn table_names() {
        assert_eq!("public.users".parse(), Ok(TableName { schema: "public".into(), name: "users".into() }));
        assert_eq!(" orders ".parse(), Ok(TableName { schema: "public".into(), name: "orders".into() }));
        assert!("a.b.c".parse::<TableName>().is_err());
        assert!(".x".parse::<TableName>().is_err());
        assert!("".parse::<TableName>().is_err());
    }
}
