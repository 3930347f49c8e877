//! The backfill task of a streaming session: takes requests, and for each chunk writes the low
//! watermark, reads the rows, hands them to the reader, writes the high watermark, waits for the
//! reader's verdict and RabbitMQ's confirmation, then records the progress.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use pgevents_decode::{Plugin, RowChange, TableRef};
use pgevents_event::Lsn;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::requests::{self, End, Request};
use super::window::{key_of, ChunkId, Edge, Key, Watermark};
use super::{Chunk, ChunkOutcome, Chunks};
use crate::config::ProducerConfig;
use crate::database::quote_ident;
use crate::database::Database;
use crate::error::ProducerError;
use crate::metrics::{BACKFILL_CHUNKS_RETRIED, BACKFILL_ROWS, BACKFILL_RUNNING};
use crate::routing::{Route, Router};
use crate::table_read::{self, batch_query_where, read_error, Columns, Paging, TableCatalog};

/// The function a partial backfill's condition becomes, in the reading session's own schema.
const CONDITION_FUNCTION: &str = "pgevents_backfill_condition";
const CONDITION_CALL: &str = "pg_temp.pgevents_backfill_condition";

/// Wait after a failure of the task itself (a lost connection) before it starts again.
const RESTART_WAIT: Duration = Duration::from_secs(5);
/// A chunk read again this many times in a row fails the backfill (halving the chunk each time
/// did not help: the table changes faster than it can be read).
const MAX_RETRIES_IN_A_ROW: u32 = 12;

/// Runs until `shutdown`: backfills the requests for this producer one after the other.
pub async fn run(
    config: Arc<ProducerConfig>,
    chunks: Arc<Chunks>,
    confirmed: watch::Receiver<Lsn>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        // A new run id each time: chunks and windows of a failed run are never taken for this one's.
        let served = serve(&config, &chunks, confirmed.clone(), super::run_id(), &shutdown).await;
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
    /// Chunk reads, each in a read-only transaction of its own, values rendered as the
    /// replication stream renders them (so that keys compare equal).
    reader: Database,
    catalog: TableCatalog,
    router: Router,
    chunks: &'a Chunks,
    confirmed: watch::Receiver<Lsn>,
    run: u64,
    next_chunk: i64,
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
        reader: Database::connect_for_rows(&config.postgres).await?,
        catalog: TableCatalog::default(),
        router: config.router(),
        chunks,
        confirmed,
        run,
        next_chunk: 0,
        shutdown,
    };
    let follows = super::publication::follows(config);
    // Requests for any slot that this producer does not stream: left to the others.
    let mut not_mine: Vec<i64> = Vec::new();
    while !shutdown.is_cancelled() {
        if follows {
            for table in super::publication::follow(&backfiller.db, config, &backfiller.router).await? {
                tracing::info!(%table, "a table was added to the publication: it streams from now on, and its rows are backfilled (--snapshot-new-tables)");
            }
        }
        match requests::claim(&backfiller.db, &config.slot, &not_mine).await? {
            Some(request) => {
                let end = match backfiller.refusal(&request).await? {
                    Some(_) if request.for_any_slot => {
                        requests::release(&backfiller.db, request.id).await?;
                        not_mine.push(request.id);
                        continue;
                    }
                    Some(why) => Some(End::Failed(why)),
                    None => {
                        metrics::gauge!(BACKFILL_RUNNING).set(1.0);
                        let end = backfiller.backfill(&request).await?;
                        metrics::gauge!(BACKFILL_RUNNING).set(0.0);
                        end
                    }
                };
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

/// A non-transient failure of PostgreSQL ends the backfill with its message; others end the
/// task, which starts again.
fn fails_backfill(e: ProducerError) -> Result<End, ProducerError> {
    match e {
        ProducerError::Postgres(e) if !e.kind().is_transient() => Ok(End::Failed(e.to_string())),
        ProducerError::Protocol(why) => Ok(End::Failed(why)),
        e => Err(e),
    }
}

impl Backfiller<'_> {
    /// Why this producer cannot backfill the request's table, if it cannot: the events would
    /// not match the stream's (a table it does not stream, or streams under another name).
    async fn refusal(&self, request: &Request) -> Result<Option<String>, ProducerError> {
        let table = format!("{}.{}", request.schema, request.table);
        if !self.router.streams(&request.schema, &request.table) {
            return Ok(Some(format!(
                "{table} is not streamed by the producer of slot {:?} (PGTABLES, --include-tables, --exclude-tables)",
                self.config.slot
            )));
        }
        if self.config.plugin != Plugin::PgOutput {
            return Ok(None);
        }
        // The stream names a change by the table the publication publishes it as (a leaf
        // partition, or the root with publish_via_partition_root): only those are backfilled.
        let published = self.db.published_tables(&self.config.publication).await?.unwrap_or_default();
        if !published.iter().any(|(s, t)| *s == request.schema && *t == request.table) {
            return Ok(Some(format!(
                "{table} is not a table publication {:?} streams changes of (a partitioned table's changes are streamed as its partitions')",
                self.config.publication
            )));
        }
        Ok(None)
    }

    /// Backfills one table; `None` when shutdown came first (it resumes at the next start).
    async fn backfill(&mut self, request: &Request) -> Result<Option<End>, ProducerError> {
        let table = Arc::new(TableRef::new(&request.schema, &request.table));
        let columns = match self.catalog.columns(&self.db, &self.reader, &table).await {
            Ok(columns) => columns,
            Err(e) => return fails_backfill(e).map(Some),
        };
        if Paging::of(&columns) != Paging::Keyed {
            return Ok(Some(End::Failed(format!(
                "{} has no primary key of PostgreSQL's own types: a backfill reads in key order",
                table.qualified
            ))));
        }
        let route = self.router.route(&table);
        if columns.key_positions.iter().any(|&i| !route.keeps_column(&columns.names[i])) {
            return Ok(Some(End::Failed(format!(
                "a primary key column of {} is left out by --exclude-columns: the backfill matches rows by key",
                table.qualified
            ))));
        }
        let filtered = match &request.condition {
            None => None,
            Some(condition) => match self.prepare_condition(&request.requested_by, &table, condition).await? {
                Ok(()) => Some(request.requested_by.as_str()),
                Err(why) => return Ok(Some(End::Failed(why))),
            },
        };
        tracing::info!(backfill = request.id, table = %table.qualified, resumed_after_rows = request.rows_done, partial = filtered.is_some(), "backfill started");
        let full_chunk = self.config.backfill_chunk_rows.max(1);
        let mut chunk_rows = full_chunk;
        let mut retries_in_a_row = 0;
        let mut last_key = request.last_key.clone();
        loop {
            if self.shutdown.is_cancelled() {
                return Ok(None);
            }
            if requests::cancel_requested(&self.db, request.id).await? {
                return Ok(Some(End::Cancelled));
            }
            let started = std::time::Instant::now();
            let id = ChunkId { backfill: request.id, chunk: self.next_chunk, run: self.run };
            self.next_chunk += 1;
            let target = Target { table: &table, columns: &columns, route: &route, filtered };
            let step = match self.chunk(id, &target, last_key.as_deref(), chunk_rows).await {
                Ok(step) => step,
                Err(e) => return fails_backfill(e).map(Some),
            };
            match step {
                Step::Done { rows, last } => {
                    metrics::counter!(BACKFILL_ROWS, "table" => table.qualified.clone()).increment(rows as u64);
                    if last.is_some() {
                        last_key = last;
                    }
                    requests::progress(&self.db, request.id, &last_key, rows as i64).await?;
                    if rows < chunk_rows {
                        return Ok(Some(End::Done));
                    }
                    let pause = pause_for_rate(rows, started.elapsed(), self.config.backfill_max_rows_per_s);
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    retries_in_a_row = 0;
                    chunk_rows = (chunk_rows * 2).min(full_chunk);
                }
                Step::Retry(why) => {
                    metrics::counter!(BACKFILL_CHUNKS_RETRIED).increment(1);
                    requests::retried(&self.db, request.id).await?;
                    retries_in_a_row += 1;
                    if retries_in_a_row >= MAX_RETRIES_IN_A_ROW {
                        return Ok(Some(End::Failed(format!(
                            "a chunk was read again {MAX_RETRIES_IN_A_ROW} times in a row, the last because {why}"
                        ))));
                    }
                    chunk_rows = (chunk_rows / 2).max(1);
                    tracing::info!(backfill = request.id, chunk = id.chunk, reason = %why, next_chunk_rows = chunk_rows, "a backfill chunk is read again");
                }
                Step::Interrupted => return Ok(None),
            }
        }
    }

    /// A partial backfill's condition becomes a function of the row, created in the reading
    /// session by the requester's role, and the chunks are read as that role: the condition
    /// runs with its rights only, and, whatever its text, answers yes or no for a row of the
    /// table (it cannot add rows of its own). The function is `SECURITY DEFINER` (its owner is
    /// the requester): PostgreSQL then refuses any change of role inside it, which would
    /// otherwise fall back to the session's login role, the producer's. Every read ends in a
    /// ROLLBACK, so no setting it changes outlives the chunk. `Err` says why it cannot be used.
    async fn prepare_condition(
        &self,
        requester: &str,
        table: &TableRef,
        condition: &str,
    ) -> Result<Result<(), String>, ProducerError> {
        let client = self.reader.client();
        let allowed: bool = client
            .query_one("SELECT pg_catalog.pg_has_role($1, 'MEMBER')", &[&requester])
            .await
            .map(|row| row.get(0))
            .unwrap_or(false);
        if !allowed {
            return Ok(Err(format!(
                "a condition runs with the rights of the role that asked ({requester:?}), and the producer's role may not act as it: \
                 GRANT {} TO the producer's role, or ask without a condition",
                quote_ident(requester)
            )));
        }
        let tag = format!("pgevents_condition_{:x}", self.run);
        if condition.contains(&tag) {
            return Ok(Err("the condition holds pgevents' quote tag".into()));
        }
        let row_type = format!("{}.{}", quote_ident(&table.schema), quote_ident(&table.name));
        let sql = format!(
            "DROP FUNCTION IF EXISTS pg_temp.{CONDITION_FUNCTION}({row_type});
             SET ROLE {role};
             CREATE FUNCTION pg_temp.{CONDITION_FUNCTION}(r {row_type}) RETURNS boolean LANGUAGE sql STABLE
                 SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS ${tag}$
                 SELECT coalesce((SELECT ({condition}) FROM (SELECT (r).*) AS t), false)
             ${tag}$;
             RESET ROLE;",
            role = quote_ident(requester)
        );
        match client.batch_execute(&sql).await {
            Ok(()) => Ok(Ok(())),
            Err(e) => {
                let _ = client.batch_execute("RESET ROLE").await;
                let e = pgevents_pg::PgError::new("prepare the backfill's condition", e);
                if e.kind().is_transient() {
                    return Err(e.into());
                }
                Ok(Err(format!("the condition cannot be used: {}", e.server_message())))
            }
        }
    }

    /// One chunk, from its low watermark to RabbitMQ's confirmation of its rows.
    async fn chunk(
        &mut self,
        id: ChunkId,
        target: &Target<'_>,
        last_key: Option<&[String]>,
        chunk_rows: usize,
    ) -> Result<Step, ProducerError> {
        let table = target.table;
        let slot = self.config.slot.clone();
        let low = Watermark { slot: slot.clone(), id, edge: Edge::Low, table: Some(table.qualified.clone()) };
        self.watermark(&low).await?;
        let read = self.read(target, last_key, chunk_rows).await;
        let (done, verdict) = oneshot::channel();
        // Whatever happens from here on, the chunk does not stay in the shared map.
        let handed = Handed { chunks: self.chunks, id };
        let read = read.map(|read| {
            let count = read.rows.len();
            self.chunks.insert(id, Chunk { rows: read.rows, in_progress: read.in_progress, done });
            (count, read.last)
        });
        // The high watermark closes the window, also when the read failed.
        let high_lsn = self.watermark(&Watermark { slot, id, edge: Edge::High, table: None }).await?;
        let (rows, last) = read?;
        let end_lsn = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(Step::Interrupted),
            outcome = self.verdict(verdict, high_lsn) => match outcome {
                Ok(end_lsn) => end_lsn,
                Err(why) => return Ok(Step::Retry(why)),
            },
        };
        drop(handed);
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

    /// The reader's verdict on the chunk, however far behind the WAL the reader is; an error
    /// when it went past the high watermark (at `high_lsn`) without one.
    async fn verdict(&self, mut verdict: oneshot::Receiver<ChunkOutcome>, high_lsn: Lsn) -> Result<Lsn, String> {
        let read = |outcome: ChunkOutcome| match outcome {
            ChunkOutcome::Published { end_lsn, .. } => Ok(end_lsn),
            ChunkOutcome::Retry(why) => Err(why),
        };
        let mut confirmed = self.confirmed.clone();
        loop {
            tokio::select! {
                biased;
                outcome = &mut verdict => {
                    return outcome.map_err(|_| "the reader dropped the chunk (the session ended)".to_owned()).and_then(read);
                }
                changed = confirmed.changed() => {
                    if changed.is_err() {
                        return Err("the session ended".into());
                    }
                    // Confirmed past the watermark without a verdict: the reader did not meet it
                    // (a verdict is given before its transaction is even published).
                    if *confirmed.borrow() > high_lsn {
                        return match verdict.try_recv() {
                            Ok(outcome) => read(outcome),
                            Err(_) => Err("the reader went past its high watermark without meeting it".into()),
                        };
                    }
                }
            }
        }
    }

    async fn watermark(&self, watermark: &Watermark) -> Result<Lsn, ProducerError> {
        let payload = serde_json::to_string(watermark).map_err(|e| ProducerError::Protocol(e.to_string()))?;
        requests::watermark(&self.db, &payload).await
    }

    /// The rows after `last_key`, in key order, as `R` changes with their keys, read in a
    /// read-only transaction of their own; with the transactions its snapshot saw in progress.
    /// With `filtered` (a partial backfill), the rows are read as that role, through the
    /// condition's function.
    async fn read(
        &self,
        target: &Target<'_>,
        last_key: Option<&[String]>,
        chunk_rows: usize,
    ) -> Result<Read, ProducerError> {
        let table = target.table;
        let client = self.reader.client();
        let role = target.filtered.map(|r| format!("SET LOCAL ROLE {};", quote_ident(r))).unwrap_or_default();
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {role} SET LOCAL row_security = off"
            ))
            .await
            .map_err(|e| read_error(table, e))?;
        let read = self.read_in_transaction(target, last_key, chunk_rows).await;
        // Nothing read needs committing; a rollback also undoes whatever a condition set.
        client.batch_execute("ROLLBACK").await.map_err(|e| read_error(table, e))?;
        read
    }

    async fn read_in_transaction(
        &self,
        target: &Target<'_>,
        last_key: Option<&[String]>,
        chunk_rows: usize,
    ) -> Result<Read, ProducerError> {
        let Target { table, columns, route, filtered } = *target;
        let row_filter = filtered.map(|_| CONDITION_CALL);
        let client = self.reader.client();
        // The first statement takes the snapshot the chunk is read in.
        let in_progress: Vec<i64> = client
            .query_one(
                "SELECT coalesce(array_agg((x::text::bigint % 4294967296)::bigint), '{}')
                 FROM pg_catalog.pg_snapshot_xip(pg_catalog.pg_current_snapshot()) x",
                &[],
            )
            .await
            .map_err(|e| read_error(table, e))?
            .get(0);
        let query = batch_query_where(table, columns, Paging::Keyed, last_key, chunk_rows, row_filter);
        let stream = table_read::rows(client, &query, table).await?;
        let mut stream = std::pin::pin!(stream);
        let mut rows = Vec::with_capacity(chunk_rows.min(16_384));
        let mut last = None;
        while let Some(values) = stream.next().await {
            let values = values?;
            let change = table_read::row_change(table, columns, route, &values, self.config.values);
            let key = key_of(&change, &change.new).ok_or_else(|| {
                ProducerError::Protocol(format!("a row of {} read without its primary key", table.qualified))
            })?;
            last = Some(
                columns.key_positions.iter().map(|&i| values.get(i).cloned().flatten().unwrap_or_default()).collect(),
            );
            rows.push((key, change));
        }
        let in_progress = in_progress.into_iter().filter_map(|x| u32::try_from(x).ok()).collect();
        Ok(Read { rows, in_progress, last })
    }
}

/// How long to wait after a chunk of `rows` that took `took`, to stay at `max_rows_per_s` (0: no
/// limit).
fn pause_for_rate(rows: usize, took: Duration, max_rows_per_s: u64) -> Duration {
    if max_rows_per_s == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(rows as f64 / max_rows_per_s as f64).saturating_sub(took)
}

/// What a backfill reads: the table, its columns, its route (columns left out), and the
/// requester whose condition filters the rows, for a partial backfill.
#[derive(Clone, Copy)]
struct Target<'a> {
    table: &'a Arc<TableRef>,
    columns: &'a Columns,
    route: &'a Route,
    filtered: Option<&'a str>,
}

/// A chunk's read.
struct Read {
    rows: Vec<(Key, RowChange)>,
    in_progress: HashSet<u32>,
    last: Option<Vec<String>>,
}

/// Takes the chunk out of the shared map when the chunk's step ends, however it ends.
struct Handed<'a> {
    chunks: &'a Chunks,
    id: ChunkId,
}

impl Drop for Handed<'_> {
    fn drop(&mut self) {
        let _ = self.chunks.take(&self.id);
    }
}

/// How one chunk went.
enum Step {
    Done { rows: usize, last: Option<Vec<String>> },
    Retry(String),
    Interrupted,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_paced_to_the_rate() {
        assert_eq!(pause_for_rate(1000, Duration::from_millis(100), 0), Duration::ZERO, "no limit");
        assert_eq!(pause_for_rate(1000, Duration::from_millis(100), 2000), Duration::from_millis(400));
        assert_eq!(pause_for_rate(1000, Duration::from_millis(700), 2000), Duration::ZERO, "slower than the limit");
    }
}
