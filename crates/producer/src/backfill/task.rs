//! The backfill task of a streaming session: takes requests, and for each chunk writes the low
//! watermark, reads the rows, hands them to the reader, writes the high watermark, waits for the
//! reader's verdict and RabbitMQ's confirmation, then records the progress.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use pgevents_decode::TableRef;
use pgevents_event::Lsn;
use tokio::sync::{oneshot, watch};
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

use super::requests::{self, End, Request};
use super::window::{key_of, ChunkId, Edge, Watermark};
use super::{Chunk, ChunkOutcome, Chunks};
use crate::config::ProducerConfig;
use crate::database::Database;
use crate::error::ProducerError;
use crate::metrics::{BACKFILL_CHUNKS_RETRIED, BACKFILL_ROWS, BACKFILL_RUNNING};
use crate::routing::{Route, Router};
use crate::table_read::{self, batch_query, read_error, Columns, Paging, TableCatalog};

/// How long a chunk waits for the reader to meet its high watermark (a reader far behind the
/// WAL meets it late) before it is read again.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(600);
/// Wait after a failure of the task itself (a lost connection) before it starts again.
const RESTART_WAIT: Duration = Duration::from_secs(5);

/// Runs until `shutdown`: backfills the requests for this producer one after the other.
pub async fn run(
    config: Arc<ProducerConfig>,
    chunks: Arc<Chunks>,
    confirmed: watch::Receiver<Lsn>,
    shutdown: CancellationToken,
) {
    let run = super::run_id();
    while !shutdown.is_cancelled() {
        let served = serve(&config, &chunks, confirmed.clone(), run, &shutdown).await;
        metrics::gauge!(BACKFILL_RUNNING).set(0.0);
        if let Err(e) = served {
            tracing::warn!(error = %e, "the backfill task failed; it starts again in 5 s (running backfills resume from their last chunk)");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RESTART_WAIT) => {}
            }
        }
    }
}

struct Backfiller<'a> {
    config: &'a ProducerConfig,
    /// Requests, progress and watermarks.
    db: Database,
    /// Chunk reads, each in a read-only transaction of its own.
    reader: Database,
    catalog: TableCatalog,
    router: Router,
    chunks: &'a Chunks,
    confirmed: watch::Receiver<Lsn>,
    run: u64,
    shutdown: &'a CancellationToken,
}

async fn serve(
    config: &ProducerConfig,
    chunks: &Chunks,
    confirmed: watch::Receiver<Lsn>,
    run: u64,
    shutdown: &CancellationToken,
) -> Result<(), ProducerError> {
    let mut backfiller = Backfiller {
        config,
        db: Database::connect(&config.postgres).await?,
        reader: Database::connect(&config.postgres).await?,
        catalog: TableCatalog::default(),
        router: config.router(),
        chunks,
        confirmed,
        run,
        shutdown,
    };
    while !shutdown.is_cancelled() {
        match requests::claim(&backfiller.db, &config.slot).await? {
            Some(request) => {
                metrics::gauge!(BACKFILL_RUNNING).set(1.0);
                let end = backfiller.backfill(&request).await?;
                metrics::gauge!(BACKFILL_RUNNING).set(0.0);
                if let Some(end) = end {
                    requests::finish(&backfiller.db, request.id, &end).await?;
                    let table = format!("{}.{}", request.schema, request.table);
                    match &end {
                        End::Failed(why) => {
                            tracing::warn!(backfill = request.id, %table, error = %why, "backfill failed")
                        }
                        end => tracing::info!(backfill = request.id, %table, ?end, "backfill ended"),
                    }
                }
            }
            None => {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(config.backfill_poll) => {}
                }
            }
        }
    }
    Ok(())
}

impl Backfiller<'_> {
    /// Backfills one table; `None` when shutdown came first (it resumes at the next start).
    async fn backfill(&mut self, request: &Request) -> Result<Option<End>, ProducerError> {
        let table = Arc::new(TableRef::new(&request.schema, &request.table));
        if !self.router.streams(&table.schema, &table.name) {
            return Ok(Some(End::Failed(format!(
                "{} is not streamed by the producer of slot {:?} (PGTABLES, --include-tables, --exclude-tables, or the publication)",
                table.qualified, self.config.slot
            ))));
        }
        let columns = match self.catalog.columns(&self.db, &self.reader, &table).await {
            Ok(columns) => columns,
            Err(ProducerError::Postgres(e)) if !e.kind().is_transient() => return Ok(Some(End::Failed(e.to_string()))),
            Err(e) => return Err(e),
        };
        if Paging::of(&columns) != Paging::Keyed {
            return Ok(Some(End::Failed(format!(
                "{} has no primary key of PostgreSQL's own types: a backfill reads in key order",
                table.qualified
            ))));
        }
        tracing::info!(backfill = request.id, table = %table.qualified, resumed_after_rows = request.rows_done, "backfill started");
        let chunk_rows = self.config.backfill_chunk_rows.max(1);
        let route = self.router.route(&table);
        let mut last_key = request.last_key.clone();
        let mut chunk = i64::from(request.chunks);
        loop {
            if self.shutdown.is_cancelled() {
                return Ok(None);
            }
            if requests::cancel_requested(&self.db, request.id).await? {
                return Ok(Some(End::Cancelled));
            }
            let id = ChunkId { backfill: request.id, chunk, run: self.run };
            chunk += 1;
            match self.chunk(id, &table, &columns, &route, last_key.as_deref(), chunk_rows).await? {
                Step::Done { rows, last } => {
                    metrics::counter!(BACKFILL_ROWS, "table" => table.qualified.clone()).increment(rows as u64);
                    if last.is_some() {
                        last_key = last;
                    }
                    requests::progress(&self.db, request.id, &last_key, rows as i64).await?;
                    if rows < chunk_rows {
                        return Ok(Some(End::Done));
                    }
                }
                Step::Retry(why) => {
                    metrics::counter!(BACKFILL_CHUNKS_RETRIED).increment(1);
                    tracing::info!(backfill = request.id, chunk = id.chunk, reason = %why, "a backfill chunk is read again");
                    requests::retried(&self.db, request.id).await?;
                }
                Step::Failed(why) => return Ok(Some(End::Failed(why))),
                Step::Interrupted => return Ok(None),
            }
        }
    }

    /// One chunk, from its low watermark to RabbitMQ's confirmation of its rows.
    async fn chunk(
        &mut self,
        id: ChunkId,
        table: &Arc<TableRef>,
        columns: &Columns,
        route: &Route,
        last_key: Option<&[String]>,
        chunk_rows: usize,
    ) -> Result<Step, ProducerError> {
        let low = Watermark { id, edge: Edge::Low, table: Some(table.qualified.clone()) };
        self.watermark(&low).await?;
        let read = self.read(table, columns, route, last_key, chunk_rows).await;
        let (done, verdict) = oneshot::channel();
        let read_rows = match read {
            Ok((rows, last)) => {
                let count = rows.len();
                self.chunks.insert(id, Chunk { rows, done });
                Ok((count, last))
            }
            Err(e) => Err(e),
        };
        // The high watermark closes the window even when the read failed.
        self.watermark(&Watermark { id, edge: Edge::High, table: None }).await?;
        let (rows, last) = match read_rows {
            Ok(read) => read,
            Err(ProducerError::Postgres(e)) if !e.kind().is_transient() => return Ok(Step::Failed(e.to_string())),
            Err(e) => return Err(e),
        };
        let outcome = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(Step::Interrupted),
            outcome = tokio::time::timeout(VERDICT_TIMEOUT, verdict) => outcome,
        };
        let end_lsn = match outcome {
            Ok(Ok(ChunkOutcome::Published { end_lsn, .. })) => end_lsn,
            Ok(Ok(ChunkOutcome::Retry(why))) => return Ok(Step::Retry(why)),
            Ok(Err(_)) => return Ok(Step::Retry("the reader dropped the chunk".into())),
            Err(_) => {
                let _ = self.chunks.take(&id);
                return Ok(Step::Retry(format!(
                    "its high watermark was not met within {}s",
                    VERDICT_TIMEOUT.as_secs()
                )));
            }
        };
        // Done once RabbitMQ confirmed the transaction that carries the rows.
        tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(Step::Interrupted),
            confirmed = self.confirmed.wait_for(|confirmed| *confirmed >= end_lsn) => {
                if confirmed.is_err() {
                    return Ok(Step::Interrupted);
                }
            }
        }
        Ok(Step::Done { rows, last })
    }

    async fn watermark(&self, watermark: &Watermark) -> Result<Lsn, ProducerError> {
        let payload = serde_json::to_string(watermark).map_err(|e| ProducerError::Protocol(e.to_string()))?;
        requests::watermark(&self.db, &payload).await
    }

    /// The rows after `last_key`, in key order, read in a read-only transaction of their own,
    /// as `R` changes with their keys; and the key of the last.
    async fn read(
        &self,
        table: &Arc<TableRef>,
        columns: &Columns,
        route: &Route,
        last_key: Option<&[String]>,
        chunk_rows: usize,
    ) -> Result<(Vec<(super::window::Key, pgevents_decode::RowChange)>, Option<Vec<String>>), ProducerError> {
        let client = self.reader.client();
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL row_security = off")
            .await
            .map_err(|e| read_error(table, e))?;
        let read = self.read_in_transaction(table, columns, route, last_key, chunk_rows).await;
        let end = if read.is_ok() { "COMMIT" } else { "ROLLBACK" };
        client.batch_execute(end).await.map_err(|e| read_error(table, e))?;
        read
    }

    async fn read_in_transaction(
        &self,
        table: &Arc<TableRef>,
        columns: &Columns,
        route: &Route,
        last_key: Option<&[String]>,
        chunk_rows: usize,
    ) -> Result<(Vec<(super::window::Key, pgevents_decode::RowChange)>, Option<Vec<String>>), ProducerError> {
        let query = batch_query(table, columns, Paging::Keyed, last_key, chunk_rows);
        let client = self.reader.client();
        let keys: Vec<&(dyn ToSql + Sync)> = query.keys.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
        let stream = client.query_raw(&query.sql, keys).await.map_err(|e| read_error(table, e))?;
        let mut stream = std::pin::pin!(stream);
        let mut rows = Vec::with_capacity(chunk_rows.min(16_384));
        let mut last = None;
        while let Some(row) = stream.next().await {
            let row = row.map_err(|e| read_error(table, e))?;
            let values = (0..row.len())
                .map(|i| row.try_get::<_, Option<String>>(i))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| read_error(table, e))?;
            let change = table_read::row_change(table, columns, route, &values, self.config.values);
            let key = key_of(&change, &change.new).ok_or_else(|| {
                ProducerError::Protocol(format!("a row of {} read without its primary key", table.qualified))
            })?;
            last = Some(
                columns.key_positions.iter().map(|&i| values.get(i).cloned().flatten().unwrap_or_default()).collect(),
            );
            rows.push((key, change));
        }
        Ok((rows, last))
    }
}

/// How one chunk went.
enum Step {
    Done { rows: usize, last: Option<Vec<String>> },
    Retry(String),
    Failed(String),
    Interrupted,
}
