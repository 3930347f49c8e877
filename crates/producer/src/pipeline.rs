//! The streaming part of a session: three tasks joined by channels, and how they stop.
//!
//! - the reader: replication stream, decoding, per-transaction assembly, batches out;
//! - the publisher: batches published with many messages in flight, the confirmed LSN out as
//!   the broker confirms (see [`crate::publish`]);
//! - the status sender: standby status updates with that confirmed LSN;
//!
//! plus the monitor (server WAL position, heartbeat statement), which ends with the session.
//! On shutdown the reader returns, the publisher drains what is in flight, and the last status
//! is sent; any other ending is a failure, reported with the confirmed position kept.

use std::sync::Arc;
use std::time::Duration;

use pgevents_decode::signal::MessageKeys;
use pgevents_decode::{Catalog, Decoder};
use pgevents_event::Lsn;
use pgevents_replication::{ReplicationReader, StatusSender, WalMessage};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::backfill;
use crate::config::ProducerConfig;
use crate::database::Database;
use crate::error::ProducerError;
use crate::monitor::run_monitor;
use crate::publish::stage::{run_publisher, Marks};
use crate::publish::{Outputs, Transport};
use crate::reader::Reader;
use crate::state::SessionState;
use crate::stats::Stats;
use crate::status::run_status;

/// Batches between reader and publisher; with up to 256 messages or 1 MiB each (plus one
/// message), this bounds memory.
const CHANNEL_BATCHES: usize = 16;
/// How long a stopping session reads the stream for PostgreSQL's end of it.
const END_OF_STREAM_WAIT: Duration = Duration::from_secs(3);

type ReaderDone = (ReplicationReader, Catalog);

/// The running tasks of a streaming session.
pub struct Pipeline {
    reader: JoinHandle<Result<ReaderDone, ProducerError>>,
    publisher: JoinHandle<Result<Outputs, ProducerError>>,
    status: JoinHandle<Result<StatusSender, ProducerError>>,
    _monitor: AbortOnDrop,
    /// Backfills on demand, when signed messages (their watermarks) can be written and read.
    _backfill: Option<AbortOnDrop>,
    confirmed: watch::Receiver<Lsn>,
    stop_status: CancellationToken,
    shutdown: CancellationToken,
}

/// How the first task to end ended.
enum First {
    /// Shutdown: the reader returned (or the publisher drained) and the rest follows.
    Stopping {
        reader: Option<ReaderDone>,
        publisher: Option<Outputs>,
    },
    Failed(ProducerError),
}

/// Aborts a background task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Pipeline {
    /// Spawns the tasks, streaming from `start`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        stream: ReplicationReader,
        sender: StatusSender,
        publisher: Outputs,
        catalog: Catalog,
        keys: MessageKeys,
        backfills: bool,
        db: Arc<Database>,
        config: &Arc<ProducerConfig>,
        stats: &Arc<Stats>,
        start: Lsn,
        shutdown: &CancellationToken,
    ) -> Pipeline {
        let (batch_tx, batch_rx) = mpsc::channel(CHANNEL_BATCHES);
        let (confirmed_tx, confirmed) = watch::channel(start);
        let reply = Arc::new(Notify::new());
        let stop_status = CancellationToken::new();
        let decoder = Decoder::new(config.plugin, config.values);
        let chunks = backfill::shared();
        let reader = Reader::new(
            stream,
            decoder,
            catalog,
            db.clone(),
            batch_tx,
            config.clone(),
            stats.clone(),
            reply.clone(),
            keys,
            chunks.clone(),
        );
        let backfill = backfills.then(|| {
            AbortOnDrop(tokio::spawn(backfill::run(config.clone(), chunks, confirmed.clone(), shutdown.clone())))
        });
        Pipeline {
            _monitor: AbortOnDrop(tokio::spawn(run_monitor(db, config.clone(), stats.clone()))),
            _backfill: backfill,
            reader: tokio::spawn(reader.run(shutdown.clone())),
            publisher: tokio::spawn(run_publisher(
                publisher,
                batch_rx,
                confirmed_tx,
                config.clone(),
                stats.clone(),
                Marks::Wal,
            )),
            status: tokio::spawn(run_status(
                sender,
                confirmed.clone(),
                stats.clone(),
                reply,
                config.status_interval,
                stop_status.clone(),
            )),
            confirmed,
            stop_status,
            shutdown: shutdown.clone(),
        }
    }

    /// Runs until shutdown (then stops cleanly: `Ok`) or a failure. Either way `state` keeps
    /// the confirmed position (and, after a clean stop, the catalog) for the next session.
    pub async fn run(mut self, state: &mut SessionState, stats: &Stats) -> Result<(), ProducerError> {
        let result = match self.first_to_end().await {
            First::Failed(e) => Err(e),
            First::Stopping { reader, publisher } => self.stop(reader, publisher, state, stats).await,
        };
        state.confirmed = state.confirmed.max(*self.confirmed.borrow());
        if result.is_err() {
            self.reader.abort();
            self.publisher.abort();
            self.status.abort();
        }
        result
    }

    /// Waits for the first task to end. On shutdown the reader returns and the publisher drains
    /// (in either order); the publisher ending on its own means the reader failed (it closed the
    /// channel), and the reader's error is the one to report.
    async fn first_to_end(&mut self) -> First {
        tokio::select! {
            biased;
            r = &mut self.reader => match joined(r) {
                Ok(done) => First::Stopping { reader: Some(done), publisher: None },
                Err(e) => First::Failed(e),
            },
            r = &mut self.publisher => match joined(r) {
                Ok(publisher) if self.shutdown.is_cancelled() => First::Stopping { reader: None, publisher: Some(publisher) },
                Ok(_) => First::Failed(match joined((&mut self.reader).await) {
                    Err(e) => e,
                    Ok(_) => ProducerError::Protocol("the reader stopped unexpectedly".into()),
                }),
                Err(e) => First::Failed(e),
            },
            r = &mut self.status => First::Failed(match joined(r) {
                Ok(_) => ProducerError::Protocol("the status sender stopped unexpectedly".into()),
                Err(e) => e,
            }),
        }
    }

    /// The clean stop: the remaining tasks end, the publisher closes, and PostgreSQL gets the
    /// final confirmed position before the replication connection ends.
    async fn stop(
        &mut self,
        reader: Option<ReaderDone>,
        publisher: Option<Outputs>,
        state: &mut SessionState,
        stats: &Stats,
    ) -> Result<(), ProducerError> {
        let (mut stream, catalog) = match reader {
            Some(done) => done,
            None => joined((&mut self.reader).await)?,
        };
        state.catalog = catalog;
        let publisher = match publisher {
            Some(publisher) => publisher,
            None => joined((&mut self.publisher).await)?,
        };
        self.stop_status.cancel();
        let mut sender = joined((&mut self.status).await)?;
        let confirmed = state.confirmed.max(*self.confirmed.borrow());
        publisher.close().await;
        sender.send_status(Lsn(Stats::get(&stats.received_lsn)), confirmed, false).await?;
        sender.finish().await?;
        let _ = tokio::time::timeout(END_OF_STREAM_WAIT, async {
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
}

/// The result of a joined task, with a panic or cancellation reported as an error.
fn joined<T>(r: Result<Result<T, ProducerError>, JoinError>) -> Result<T, ProducerError> {
    match r {
        Ok(inner) => inner,
        Err(e) => Err(ProducerError::Protocol(format!("internal task failed: {e}"))),
    }
}
