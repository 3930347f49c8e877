//! One session, as stages that run in order: check the server, take the slot's lock (or wait
//! as a standby), prepare the publication and inspect the slot, connect to RabbitMQ, connect for
//! replication, position the slot (create it, take a snapshot, or resume), then stream until
//! shutdown or failure (see [`crate::pipeline`]) and stop cleanly.

use std::sync::Arc;

use pgevents_decode::Plugin;
use pgevents_event::Lsn;
use pgevents_replication::{ReplicationClient, ReplicationError, SlotSnapshot};
use tokio_util::sync::CancellationToken;

use crate::config::ProducerConfig;
use crate::config::SnapshotMode;
use crate::database::{quote_ident, Database};
use crate::error::ProducerError;
use crate::pipeline::Pipeline;
use crate::publish::outputs::Role;
use crate::publish::stream::producer_name;
use crate::publish::Outputs;
use crate::setup::{prepare, SlotState};
use crate::signals;
use crate::snapshot::{self, SnapshotEnd};
use crate::standby::{take_slot_lock, Lock};
use crate::state::SessionState;
use crate::stats::{Phase, Stats};

/// Whether the plugin passes logical messages on (pgoutput: its `messages` option, from
/// PostgreSQL 14; wal2json: always), which signals and backfills need.
pub(crate) fn passes_messages(plugin: Plugin, server_version: u32) -> bool {
    plugin == Plugin::Wal2Json || server_version >= 140_000
}

fn plugin_options(config: &ProducerConfig, server_version: u32) -> Vec<(String, String)> {
    let pair = |k: &str, v: String| (k.to_owned(), v);
    match config.plugin {
        Plugin::PgOutput => {
            let mut options =
                vec![pair("proto_version", "1".into()), pair("publication_names", quote_ident(&config.publication))];
            if passes_messages(config.plugin, server_version) {
                options.push(pair("messages", "true".into()));
            }
            options
        }
        Plugin::Wal2Json => {
            let mut options = vec![
                pair("format-version", "2".into()),
                pair("include-xids", "1".into()),
                pair("include-timestamp", "1".into()),
                pair("include-lsn", "1".into()),
                pair("include-type-oids", "1".into()),
                pair("include-types", "0".into()),
                pair("add-msg-prefixes", pgevents_decode::CONTEXT_PREFIX.into()),
            ];
            if !config.tables.is_empty() {
                let escape = |s: &str| {
                    s.chars().fold(String::new(), |mut out, c| {
                        if matches!(c, ' ' | '\'' | ',' | '.' | '*' | '\\') {
                            out.push('\\');
                        }
                        out.push(c);
                        out
                    })
                };
                let tables: Vec<String> =
                    config.tables.iter().map(|t| format!("{}.{}", escape(&t.schema), escape(&t.name))).collect();
                options.push(pair("add-tables", tables.join(",")));
            }
            options
        }
    }
}

/// Turns server errors users can fix into one clear message. A slot held by another process
/// names that process (from `pg_replication_slots`).
pub(crate) async fn explain(e: ReplicationError, config: &ProducerConfig, db: &Database) -> ProducerError {
    let Some(server) = (match &e {
        ReplicationError::Server(s) => Some(s.clone()),
        _ => None,
    }) else {
        return e.into();
    };
    let user = &config.postgres.user;
    let hint = match server.code.as_str() {
        "28P01" => format!("check the password of user {user:?} (PGPASSWORD)"),
        "28000" if server.message.contains("pg_hba.conf") => format!(
            "allow replication connections for {user:?}: add `host replication {user} <client address>/32 scram-sha-256` to pg_hba.conf and reload"
        ),
        "28000" => format!("check that role {user:?} exists and may log in"),
        "3D000" => "check PGDATABASE".into(),
        "42501" => format!("give the role replication rights: ALTER ROLE {} REPLICATION", quote_ident(user)),
        "53400" => "all replication slots are in use: raise max_replication_slots (restart needed) or drop unused slots".into(),
        "53300" => "no free connection or WAL sender: raise max_wal_senders / max_connections".into(),
        "55006" => {
            let pid = db.slot(&config.slot).await.ok().flatten().and_then(|slot| slot.active_pid);
            return ProducerError::SlotBusy { slot: config.slot.clone(), pid };
        }
        "58P01" if server.message.contains("wal2json") => {
            "the wal2json plugin is not installed on the server: install postgresql-<version>-wal2json".into()
        }
        _ if server.message.contains("may not be used as an output plugin") => {
            "add the plugin to output_plugin_libraries in postgresql.conf and reload".into()
        }
        _ => return e.into(),
    };
    ProducerError::Setup(format!("PostgreSQL refused: {server}; {hint}"))
}

/// Where streaming starts, or that shutdown came first.
enum Begin {
    At(Lsn),
    Interrupted,
}

/// Runs one session. `Ok` means a clean stop after shutdown was requested.
pub async fn run_session(
    config: &Arc<ProducerConfig>,
    state: &mut SessionState,
    stats: &Arc<Stats>,
    shutdown: &CancellationToken,
) -> Result<(), ProducerError> {
    stats.set_phase(Phase::Connecting);
    let db = Arc::new(Database::connect(&config.postgres).await?);
    let server_version = check_server(&db).await?;
    if take_slot_lock(&db, &config.slot, config.lock_holder_timeout, stats, shutdown).await? == Lock::Cancelled {
        return Ok(());
    }
    stats.set_phase(Phase::Connecting);
    let slot_state = prepare(&db, config).await?;
    let keys = signals::prepare(&db, config, server_version).await?;
    // Backfills write signed watermarks and keep their requests in the snapshot tables.
    let messages_read = passes_messages(config.plugin, server_version);
    if !messages_read {
        tracing::warn!(server_version, "with pgoutput, PostgreSQL before 14 does not pass logical messages on: signals (context, skip, outbox) and backfills are off");
    }
    let backfills = !keys.is_empty() && messages_read && snapshot::ensure_backfill_schema(&db, config).await?;
    declare_topology(config).await?;
    let mut client = match ReplicationClient::connect(&config.postgres).await {
        Ok(client) => client,
        Err(e) => return Err(explain(e, config, &db).await),
    };
    let system = match client.identify_system().await {
        Ok(system) => system,
        Err(e) => return Err(explain(e, config, &db).await),
    };
    let start = match position(&mut client, &db, config, state, slot_state, stats, shutdown).await? {
        Begin::At(start) => start,
        Begin::Interrupted => return Ok(()),
    };
    let database = system.dbname.unwrap_or_else(|| config.postgres.dbname.clone());
    let name = producer_name(&system.system_id, &database, &config.slot);
    let publisher = Outputs::connect(config, Role::Changes { start, wal_end: system.xlogpos, name }).await?;
    let options = plugin_options(config, server_version);
    let (stream, sender) = match client.start_logical_replication(&config.slot, start, &options).await {
        Ok(started) => started,
        Err(e) => return Err(explain(e, config, &db).await),
    };
    state.streamed = true;
    state.confirmed = start;
    Stats::set(&stats.confirmed_lsn, start.0);
    stats.set_phase(Phase::Streaming);
    tracing::info!(slot = %config.slot, plugin = config.plugin.name(), %start, exchange = %config.exchange, "streaming");
    let catalog = std::mem::take(&mut state.catalog);
    let pipeline =
        Pipeline::start(stream, sender, publisher, catalog, keys, backfills, db, config, stats, start, shutdown);
    pipeline.run(state, stats).await
}

/// The server's version, refusing those without logical decoding.
async fn check_server(db: &Database) -> Result<u32, ProducerError> {
    let server_version = db.server_version_num().await?;
    if server_version < 100_000 {
        return Err(ProducerError::Setup(format!(
            "PostgreSQL {server_version} is too old: logical replication with pgoutput needs 10 or later"
        )));
    }
    Ok(server_version)
}

/// The exchanges, the outbox's dead-letter queue, and the history stream when one is
/// configured, before anything else: a broker that refuses them fails the start at once.
async fn declare_topology(config: &ProducerConfig) -> Result<(), ProducerError> {
    let connection = pgevents_amqp::connect(&config.amqp_url, "pgevents producer (topology)").await?;
    let channel = pgevents_amqp::open_channel(&connection).await?;
    let settings = config.publisher_settings("producer");
    for exchange in std::iter::once(&settings.exchange).chain(&settings.other_exchanges) {
        pgevents_amqp::declare_topic_exchange(&channel, exchange).await?;
    }
    if let Some((stream, retention)) = &config.history_stream {
        pgevents_amqp::ensure_stream(&channel, stream, &config.exchange, retention).await?;
    }
    // Never in the way of the events: a queue on a node that is down, or a user without the
    // configure permission on it, is said and streaming goes on (last: a refusal closes the channel).
    let dead = &config.outbox_dead_letter_exchange;
    let spec = pgevents_amqp::QueueSpec { name: dead.clone(), durable: true, ..Default::default() };
    let declared = match pgevents_amqp::declare_queue(&channel, &spec).await {
        Ok(_) => pgevents_amqp::bind_queue(&channel, dead, dead, &["#".to_owned()]).await,
        Err(e) => Err(e),
    };
    if let Err(e) = declared {
        tracing::warn!(queue = %dead, error = %e, "the outbox's dead-letter queue could not be declared; until it exists, RabbitMQ drops the outbox messages that cannot be published as written (declare it, or give the producer's RabbitMQ user the configure permission on it)");
    }
    let _ = channel.close().await;
    let _ = connection.close().await;
    Ok(())
}

/// Where to stream from: a new slot's consistent point (after its snapshot, if one is wanted)
/// or an existing slot's confirmed position (after finishing or repeating a snapshot), never
/// before what this process already confirmed. Snapshots are taken once per process start,
/// never on a reconnect.
async fn position(
    client: &mut ReplicationClient,
    db: &Database,
    config: &Arc<ProducerConfig>,
    state: &SessionState,
    slot_state: SlotState,
    stats: &Arc<Stats>,
    shutdown: &CancellationToken,
) -> Result<Begin, ProducerError> {
    let snapshot_wanted = config.snapshot != SnapshotMode::Never && !state.streamed;
    if snapshot_wanted {
        snapshot::ensure_schema(config).await?;
    }
    let (start, snapshot) = match slot_state {
        SlotState::Missing => {
            let export = if snapshot_wanted { SlotSnapshot::Export } else { SlotSnapshot::NoExport };
            let created = match client.create_logical_slot(&config.slot, config.plugin.name(), export).await {
                Ok(created) => created,
                Err(e) => return Err(explain(e, config, db).await),
            };
            tracing::info!(slot = %config.slot, plugin = config.plugin.name(), consistent_point = %created.consistent_point, "created replication slot");
            if snapshot_wanted {
                snapshot::plan(db, config, created.consistent_point).await?;
            }
            let exported = created.snapshot_name.filter(|_| snapshot_wanted);
            (created.consistent_point, snapshot_wanted.then_some(exported))
        }
        SlotState::Ready { confirmed_flush } => {
            let start = confirmed_flush.unwrap_or(Lsn::ZERO);
            let mut snapshot = None;
            if snapshot_wanted {
                let resume = snapshot::unfinished(db, &config.slot).await?;
                if config.snapshot == SnapshotMode::Always && resume.is_none() {
                    snapshot::plan(db, config, start).await?;
                }
                if resume.is_some() || config.snapshot == SnapshotMode::Always {
                    snapshot = Some(None);
                }
            }
            (start, snapshot)
        }
    };
    if let Some(exported) = snapshot {
        if snapshot::run(db, config, exported.as_deref(), stats, shutdown).await? == SnapshotEnd::Interrupted {
            return Ok(Begin::Interrupted);
        }
    }
    Ok(Begin::At(state.confirmed.max(start)))
}
