//! One session: connect to PostgreSQL (catalog and replication) and RabbitMQ, stream until
//! shutdown or failure, and stop cleanly (outstanding confirms awaited, final status sent).

use std::sync::Arc;
use std::time::Duration;

use pgevents_amqp::ConfirmingPublisher;
use pgevents_decode::{Catalog, Decoder, Plugin};
use pgevents_event::Lsn;
use pgevents_replication::{ReplicationClient, ReplicationError, SlotSnapshot, WalMessage};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::ProducerConfig;
use crate::database::{quote_ident, Database};
use crate::error::ProducerError;
use crate::monitor::run_monitor;
use crate::publish::run_publisher;
use crate::reader::Reader;
use crate::setup::{prepare, SlotState};
use crate::snapshot::{self, SnapshotMode};
use crate::standby::take_slot_lock;
use crate::stats::{Phase, Stats};
use crate::status::run_status;

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What survives from one session to the next.
#[derive(Debug, Default)]
pub struct SessionState {
    /// The highest LSN confirmed so far; the next session resumes after it.
    pub confirmed: Lsn,
    /// Whether any session reached streaming (until then every error is fatal).
    pub streamed: bool,
    pub catalog: Catalog,
}

/// Batches between reader and publisher; with up to 256 messages each, this bounds memory.
const CHANNEL_BATCHES: usize = 16;

fn plugin_options(config: &ProducerConfig, server_version: u32) -> Vec<(String, String)> {
    let pair = |k: &str, v: String| (k.to_owned(), v);
    match config.plugin {
        Plugin::PgOutput => {
            let mut options =
                vec![pair("proto_version", "1".into()), pair("publication_names", quote_ident(&config.publication))];
            if server_version >= 140_000 {
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

/// Turns server errors users can fix into one clear message.
pub(crate) fn explain(e: ReplicationError, config: &ProducerConfig) -> ProducerError {
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
            return ProducerError::SlotBusy { slot: config.slot.clone(), pid: server.message.rsplit(' ').next().unwrap_or("?").to_owned() }
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

/// The result of a joined task, with a panic or cancellation reported as an error.
fn joined<T>(r: Result<Result<T, ProducerError>, tokio::task::JoinError>) -> Result<T, ProducerError> {
    match r {
        Ok(inner) => inner,
        Err(e) => Err(ProducerError::Protocol(format!("internal task failed: {e}"))),
    }
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
    let server_version = db.server_version_num().await?;
    if server_version < 100_000 {
        return Err(ProducerError::Setup(format!(
            "PostgreSQL {server_version} is too old: logical replication with pgoutput needs 10 or later"
        )));
    }
    if !take_slot_lock(&db, &config.slot, stats, shutdown).await? {
        return Ok(());
    }
    stats.set_phase(Phase::Connecting);
    let slot_state = prepare(&db, config).await?;

    let publisher = ConfirmingPublisher::connect(&config.amqp_url, &config.publisher_settings("producer")).await?;
    if let Some((stream, retention)) = &config.history_stream {
        let connection = pgevents_amqp::connect(&config.amqp_url, "pgevents producer (history stream)").await?;
        let channel = pgevents_amqp::open_channel(&connection).await?;
        pgevents_amqp::ensure_stream(&channel, stream, &config.exchange, retention).await?;
        let _ = channel.close().await;
        let _ = connection.close().await;
    }

    let mut client = ReplicationClient::connect(&config.postgres).await.map_err(|e| explain(e, config))?;
    let mut start = state.confirmed;
    // Snapshots are taken once per process start, never on a reconnect.
    let snapshot_wanted = config.snapshot != SnapshotMode::Never && !state.streamed;
    match slot_state {
        SlotState::Missing => {
            if snapshot_wanted {
                snapshot::ensure_schema(&db).await?;
            }
            let export = if snapshot_wanted { SlotSnapshot::Export } else { SlotSnapshot::NoExport };
            let created = client
                .create_logical_slot(&config.slot, config.plugin.name(), export)
                .await
                .map_err(|e| explain(e, config))?;
            tracing::info!(slot = %config.slot, plugin = config.plugin.name(), consistent_point = %created.consistent_point, "created replication slot");
            start = start.max(created.consistent_point);
            if snapshot_wanted {
                snapshot::plan(&db, config, created.consistent_point).await?;
                if !snapshot::run(&db, config, created.snapshot_name.as_deref(), stats, shutdown).await? {
                    return Ok(());
                }
            }
        }
        SlotState::Ready { confirmed_flush } => {
            start = start.max(confirmed_flush.unwrap_or(Lsn::ZERO));
            if snapshot_wanted {
                snapshot::ensure_schema(&db).await?;
                let resume = snapshot::unfinished(&db, &config.slot).await?;
                if config.snapshot == SnapshotMode::Always && resume.is_none() {
                    snapshot::plan(&db, config, start).await?;
                }
                if (resume.is_some() || config.snapshot == SnapshotMode::Always)
                    && !snapshot::run(&db, config, None, stats, shutdown).await?
                {
                    return Ok(());
                }
            }
        }
    }
    let options = plugin_options(config, server_version);
    let (stream, sender) =
        client.start_logical_replication(&config.slot, start, &options).await.map_err(|e| explain(e, config))?;
    state.streamed = true;
    state.confirmed = start;
    Stats::set(&stats.confirmed_lsn, start.0);
    stats.set_phase(Phase::Streaming);
    tracing::info!(slot = %config.slot, plugin = config.plugin.name(), %start, exchange = %config.exchange, "streaming");

    let (batch_tx, batch_rx) = mpsc::channel(CHANNEL_BATCHES);
    let (confirmed_tx, confirmed_rx) = watch::channel(start);
    let reply = Arc::new(Notify::new());
    let stop_status = CancellationToken::new();
    let decoder = Decoder::new(config.plugin, config.values);
    let reader = Reader::new(
        stream,
        decoder,
        std::mem::take(&mut state.catalog),
        db.clone(),
        batch_tx,
        config.clone(),
        stats.clone(),
        reply.clone(),
    );

    // Ends with the session (dropped on every return path).
    let _monitor = AbortOnDrop(tokio::spawn(run_monitor(db, config.clone(), stats.clone())));
    let mut reader_task = tokio::spawn(reader.run(shutdown.clone()));
    let mut publisher_task =
        tokio::spawn(run_publisher(publisher, batch_rx, confirmed_tx, config.clone(), stats.clone()));
    let mut status_task = tokio::spawn(run_status(
        sender,
        confirmed_rx.clone(),
        stats.clone(),
        reply,
        config.status_interval,
        stop_status.clone(),
    ));

    // Whichever task ends first: on shutdown the reader returns and the publisher drains (in
    // either order of completion); any other ending is a failure.
    let mut reader_done = None;
    let mut publisher_done = None;
    let failure = tokio::select! {
        // The reader first: when it fails, the publisher drains and ends too, and the reader's
        // error is the one to report.
        biased;
        r = &mut reader_task => match joined(r) {
            Ok(done) => {
                reader_done = Some(done);
                None
            }
            Err(e) => Some(e),
        },
        r = &mut publisher_task => match joined(r) {
            Ok(publisher) if shutdown.is_cancelled() => {
                publisher_done = Some(publisher);
                None
            }
            // The publisher ends on its own only after the reader closed its channel, i.e.
            // failed: report why.
            Ok(_) => Some(match joined((&mut reader_task).await) {
                Err(e) => e,
                Ok(_) => ProducerError::Protocol("the reader stopped unexpectedly".into()),
            }),
            Err(e) => Some(e),
        },
        r = &mut status_task => match joined(r) {
            Ok(_) => Some(ProducerError::Protocol("the status sender stopped unexpectedly".into())),
            Err(e) => Some(e),
        },
    };
    if let Some(failure) = failure {
        reader_task.abort();
        publisher_task.abort();
        status_task.abort();
        state.confirmed = state.confirmed.max(*confirmed_rx.borrow());
        return Err(failure);
    }
    let graceful = async {
        let (stream, catalog) = match reader_done.take() {
            Some(done) => done,
            None => joined((&mut reader_task).await)?,
        };
        state.catalog = catalog;
        let publisher = match publisher_done.take() {
            Some(publisher) => publisher,
            None => joined((&mut publisher_task).await)?,
        };
        stop_status.cancel();
        let sender = joined((&mut status_task).await)?;
        Ok::<_, ProducerError>((stream, publisher, sender))
    };
    match graceful.await {
        Ok((mut stream, publisher, mut sender)) => {
            state.confirmed = state.confirmed.max(*confirmed_rx.borrow());
            let confirmed = state.confirmed;
            publisher.close().await;
            sender.send_status(Lsn(Stats::get(&stats.received_lsn)), confirmed, false).await?;
            sender.finish().await?;
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                while let Ok(message) = stream.next().await {
                    if message == WalMessage::End {
                        break;
                    }
                }
            })
            .await;
            sender.terminate().await;
            tracing::info!(%confirmed, "stopped; the slot keeps its position for the next start");
            Ok(())
        }
        Err(e) => {
            reader_task.abort();
            publisher_task.abort();
            status_task.abort();
            state.confirmed = state.confirmed.max(*confirmed_rx.borrow());
            Err(e)
        }
    }
}
