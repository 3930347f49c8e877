//! The reading half of a session: WAL messages in, decoded and assembled per transaction, and
//! batches of outgoing messages (each transaction's last batch carrying its end LSN) out, through
//! a bounded channel to the publisher.

use std::sync::Arc;
use std::time::Duration;

use pgevents_amqp::Cause;
use pgevents_decode::encode::close_event;
use pgevents_decode::signal::{MessageKeys, Refusal};
use pgevents_decode::{
    Catalog, CatalogNeed, DecodeError, Decoded, Decoder, LogicalMessage, MessageIgnored, Signals, Taken,
    TransactionBuilder, TxBegin, TxOutcome,
};
use pgevents_event::{message_id, Action, Lsn};
use pgevents_replication::{ReplicationError, ReplicationReader, WalMessage};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::backfill::window::{self, ChunkId, Edge, Watermark, Windows};
use crate::backfill::{ChunkOutcome, Chunks, WINDOW_KEYS_PER_ROW};
use crate::clock::Watchdog;
use crate::config::ProducerConfig;
use crate::database::Database;
use crate::error::ProducerError;
use crate::message::{self, Envelope, OutboxPlace};
use crate::metrics::{
    EventCounters, MESSAGES_REFUSED, OUTBOX_DEAD, OUTBOX_PUBLISHED, TRANSACTIONS, TRANSACTIONS_SKIPPED,
};
use crate::publish::{Batch, Message, Position, PublishError};
use crate::routing::Router;
use crate::signals::{self, KeyRefresh, LogLimit};
use crate::stats::Stats;
use crate::txbuffer::{Item, PendingEvent, TxBuffer};

/// A batch is handed over at this many messages or bytes, whichever comes first, so that the
/// channel to the publisher holds at most `CHANNEL_BATCHES` × (`BATCH_BYTES` + one message).
const BATCH_SIZE: usize = 256;
const BATCH_BYTES: usize = 1 << 20;

/// Collects the messages of one batch.
#[derive(Default)]
struct BatchBuilder {
    messages: Vec<Message>,
    bytes: usize,
}

impl BatchBuilder {
    /// Adds a message; returns the batch when it is full.
    fn push(&mut self, message: Message) -> Option<Vec<Message>> {
        self.bytes += message.body.len();
        self.messages.push(message);
        if self.messages.len() < BATCH_SIZE && self.bytes < BATCH_BYTES {
            return None;
        }
        self.bytes = 0;
        Some(std::mem::take(&mut self.messages))
    }
}

pub struct Reader {
    pub stream: ReplicationReader,
    pub decoder: Decoder,
    pub catalog: Catalog,
    pub db: Arc<Database>,
    pub out: mpsc::Sender<Batch>,
    pub config: Arc<ProducerConfig>,
    pub stats: Arc<Stats>,
    /// Wakes the status sender when the server asks for a reply.
    pub reply_requested: Arc<Notify>,
    /// No message for this long means the connection is dead.
    pub silence_timeout: Duration,
    tx: TransactionBuilder,
    buffer: TxBuffer,
    /// Highest position sent to the publisher as a commit or idle mark.
    last_mark: Lsn,
    event_counters: EventCounters,
    router: Router,
    key_refresh: KeyRefresh,
    refusal_log: LogLimit,
    /// Backfill windows open at this point of the WAL, and what the transaction being read did
    /// to their tables.
    windows: Windows,
    window_changes: window::Pending,
    chunks: Arc<Chunks>,
    /// Chunks published in the transaction being read, told its end LSN at its commit.
    chunks_published: Vec<(tokio::sync::oneshot::Sender<ChunkOutcome>, u64, u64)>,
    outbox_exchange: Arc<str>,
    outbox_dead_letter_exchange: Arc<str>,
}

/// Whether the reader goes on or stops (shutdown was requested).
enum Flow {
    Continue,
    Stop,
}

impl Reader {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stream: ReplicationReader,
        decoder: Decoder,
        catalog: Catalog,
        db: Arc<Database>,
        out: mpsc::Sender<Batch>,
        config: Arc<ProducerConfig>,
        stats: Arc<Stats>,
        reply_requested: Arc<Notify>,
        keys: MessageKeys,
        chunks: Arc<Chunks>,
    ) -> Self {
        let silence_timeout = config.status_interval * 3 + Duration::from_secs(5);
        let router = config.router();
        let buffer = TxBuffer::new(config.tx_memory_budget, config.spill_dir.clone());
        let signals = Signals { keys, accept_unsigned: config.allow_unsigned_messages };
        let tx = TransactionBuilder::new(config.max_context_bytes, signals);
        let outbox_exchange = Arc::from(config.outbox_exchange.as_str());
        let outbox_dead_letter_exchange = Arc::from(config.outbox_dead_letter_exchange.as_str());
        let windows = Windows::new(config.backfill_chunk_rows.max(1) * WINDOW_KEYS_PER_ROW);
        Reader {
            stream,
            decoder,
            catalog,
            db,
            out,
            config,
            stats,
            reply_requested,
            silence_timeout,
            tx,
            buffer,
            last_mark: Lsn::ZERO,
            event_counters: EventCounters::default(),
            router,
            key_refresh: KeyRefresh::new(Duration::from_secs(1)),
            refusal_log: LogLimit::new(Duration::from_secs(1)),
            windows,
            window_changes: window::Pending::default(),
            chunks,
            chunks_published: Vec::new(),
            outbox_exchange,
            outbox_dead_letter_exchange,
        }
    }

    /// Reads until shutdown (returning the stream, for a clean end of the session) or an error.
    /// The catalog is returned too, so the next session need not look everything up again.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(ReplicationReader, Catalog), ProducerError> {
        let mut silence = Watchdog::new(self.silence_timeout);
        loop {
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok((self.stream, self.catalog)),
                message = self.stream.next() => message?,
                _ = silence.expired() => return Err(ReplicationError::Silent(self.silence_timeout.as_secs()).into()),
            };
            silence.note();
            let flow = match message {
                WalMessage::XLogData { wal_start, wal_end, data } => {
                    Stats::set(&self.stats.received_lsn, wal_end.0.max(wal_start.0));
                    self.handle(wal_start, &data, &shutdown).await?
                }
                WalMessage::Keepalive { wal_end, reply_requested } => {
                    Stats::set(&self.stats.received_lsn, wal_end.0);
                    if reply_requested {
                        self.reply_requested.notify_one();
                    }
                    self.mark_idle_position(wal_end, &shutdown).await?
                }
                WalMessage::End => return Err(ProducerError::StreamEnded),
            };
            if let Flow::Stop = flow {
                return Ok((self.stream, self.catalog));
            }
        }
    }

    /// Between transactions, everything up to the server's position has been read: that position
    /// may be confirmed once the messages before it are, so the slot advances on an idle or
    /// filtered database.
    async fn mark_idle_position(&mut self, wal_end: Lsn, shutdown: &CancellationToken) -> Result<Flow, ProducerError> {
        if self.tx.in_transaction() || !self.buffer.is_empty() || wal_end <= self.last_mark {
            return Ok(Flow::Continue);
        }
        self.send(Batch::mark(wal_end, None), shutdown).await
    }

    async fn send(&mut self, batch: Batch, shutdown: &CancellationToken) -> Result<Flow, ProducerError> {
        if let Some(lsn) = batch.commit {
            self.last_mark = self.last_mark.max(lsn);
        }
        tokio::select! {
            biased;
            sent = self.out.send(batch) => sent
                .map(|_| Flow::Continue)
                .map_err(|_| ProducerError::Publish(PublishError::Closed(Cause::Lost("the publisher stopped".into())))),
            _ = shutdown.cancelled() => Ok(Flow::Stop),
        }
    }

    async fn decode(&mut self, data: &[u8]) -> Result<Decoded, ProducerError> {
        for _ in 0..64 {
            match self.decoder.decode(data, &self.catalog) {
                Ok(decoded) => return Ok(decoded),
                Err(DecodeError::NeedCatalog(CatalogNeed::Type(oid))) => {
                    let infos = self.db.types(&[oid]).await?;
                    self.catalog.insert_types(infos);
                }
                Err(DecodeError::NeedCatalog(CatalogNeed::PrimaryKey(table))) => {
                    let key = self.db.primary_key(&table).await?;
                    self.catalog.insert_primary_key(&table, key);
                    self.decoder.catalog_updated(&self.catalog);
                }
                Err(e) => return Err(ProducerError::Decode(e)),
            }
        }
        Err(ProducerError::Protocol("catalog look-ups for one change did not settle after 64 rounds".into()))
    }

    async fn handle(
        &mut self,
        wal_start: Lsn,
        data: &[u8],
        shutdown: &CancellationToken,
    ) -> Result<Flow, ProducerError> {
        match self.decode(data).await? {
            Decoded::Begin(begin) => {
                // Never drop the open transaction's events and confirm past them: end the
                // session, which starts again from the confirmed position.
                self.tx.begin(begin).map_err(|e| ProducerError::Inconsistent(e.to_string()))?;
            }
            Decoded::Row(mut change) => {
                let route = self.router.route(&change.table);
                if route.streamed {
                    if !route.excluded_columns.is_empty() {
                        change.old.retain(|column| route.keeps_column(column));
                        change.new.retain(|column| route.keeps_column(column));
                    }
                    self.windows.note(&mut self.window_changes, &change);
                    let mut body = Vec::with_capacity(256);
                    if let Some(seq) = self.tx.row(&change, &mut body) {
                        self.buffer.push(PendingEvent::change(change.table.clone(), change.action, seq, body)).await?;
                    }
                }
            }
            Decoded::Truncate(tables) => {
                for table in tables.iter().filter(|t| self.router.route(t).streamed) {
                    self.windows.note_truncate(&mut self.window_changes, table);
                    let mut body = Vec::with_capacity(160);
                    if let Some(seq) = self.tx.truncate(table, &mut body) {
                        self.buffer.push(PendingEvent::change(table.clone(), Action::Truncate, seq, body)).await?;
                    }
                }
            }
            Decoded::Message(message) => self.message(&message).await?,
            Decoded::Relation(table) => self.catalog.forget_primary_key(&table),
            Decoded::Commit => return self.commit(wal_start, shutdown).await,
            Decoded::Ignored => {}
        }
        Ok(Flow::Continue)
    }

    /// A logical message: signals are verified (the keys read again, at most once a second,
    /// when one names a key the producer does not know), refusals logged and counted.
    async fn message(&mut self, message: &LogicalMessage) -> Result<(), ProducerError> {
        let mut taken = self.tx.message(message);
        if let Err(MessageIgnored::Refused { refusal: Refusal::UnknownKey(kid), xid }) = &taken {
            if self.key_refresh.due(*kid, self.tx.keys_mut().newest(), *xid) {
                self.reload_keys().await?;
                taken = self.tx.message(message);
            }
        }
        match taken {
            Ok(Taken::Nothing) => {}
            Ok(Taken::KeysChanged) => {
                // Authentic: read at once, in WAL order, so that no transaction that commits after
                // the rotation is verified with the keys it retired.
                self.reload_keys().await?;
                tracing::info!(keys = self.tx.keys_mut().len(), "the message keys were rotated; read them again");
            }
            Ok(Taken::Outbox(outbox)) => self.buffer.push(PendingEvent::outbox(outbox)).await?,
            Ok(Taken::Watermark(payload)) => self.watermark(&payload).await?,
            Ok(Taken::MalformedOutbox(bad)) => {
                tracing::warn!(xid = ?self.tx.current().map(|b| b.xid), reason = ?bad.reason, "a signed outbox message cannot be published as written; it goes to the dead-letter exchange");
                self.buffer.push(PendingEvent::dead_outbox(bad)).await?;
            }
            Err(MessageIgnored::Refused { xid, refusal }) => {
                metrics::counter!(MESSAGES_REFUSED, "reason" => refusal.reason()).increment(1);
                if let Some(left_out) = self.refusal_log.admit() {
                    tracing::warn!(?xid, reason = refusal.reason(), error = ?refusal.to_string(), left_out, "a pgevents message was refused (left_out: refusals not logged since the last line; all are counted in pgevents_messages_refused_total)");
                }
            }
            Err(MessageIgnored::Context(bad)) => {
                metrics::counter!(crate::metrics::CONTEXT_IGNORED).increment(1);
                if let Some(left_out) = self.refusal_log.admit() {
                    tracing::warn!(error = ?bad.to_string(), left_out, "a context message was ignored");
                }
            }
        }
        Ok(())
    }

    /// A backfill's watermark: a low one opens a window on its table; at a high one, the chunk's
    /// rows not changed in the window are published in this transaction.
    async fn watermark(&mut self, payload: &[u8]) -> Result<(), ProducerError> {
        let watermark: Watermark = match serde_json::from_slice(payload) {
            Ok(watermark) => watermark,
            Err(e) => {
                tracing::warn!(error = %e, "a backfill watermark cannot be read; ignored");
                return Ok(());
            }
        };
        let Watermark { slot, id, edge, table } = watermark;
        if slot != self.config.slot {
            return Ok(()); // another producer's
        }
        match edge {
            Edge::Low => self.windows.open(id, table.unwrap_or_default()),
            Edge::High => self.close_window(id).await?,
        }
        Ok(())
    }

    async fn close_window(&mut self, id: ChunkId) -> Result<(), ProducerError> {
        let Some(chunk) = self.chunks.take(&id) else {
            // Written by an earlier run: its task reads the chunk again.
            self.windows.close(id, &Default::default());
            return Ok(());
        };
        let changed = match self.windows.close(id, &chunk.in_progress) {
            window::Verdict::Publish { changed } => changed,
            window::Verdict::Retry(why) => {
                let _ = chunk.done.send(ChunkOutcome::Retry(why));
                return Ok(());
            }
            window::Verdict::Unknown => {
                let _ = chunk.done.send(ChunkOutcome::Retry("its low watermark was not met".into()));
                return Ok(());
            }
        };
        let (mut published, mut dropped) = (0, 0);
        for (key, change) in chunk.rows {
            if changed.contains(&key) {
                dropped += 1;
                continue;
            }
            let mut body = Vec::with_capacity(256);
            if let Some(seq) = self.tx.row(&change, &mut body) {
                self.buffer.push(PendingEvent::change(change.table.clone(), Action::Read, seq, body)).await?;
                published += 1;
            }
        }
        self.chunks_published.push((chunk.done, published, dropped));
        Ok(())
    }

    /// Reads the signing keys again. Should they no longer be readable (a privilege revoked),
    /// none is kept: every signed message is refused from then on, and said so.
    async fn reload_keys(&mut self) -> Result<(), ProducerError> {
        *self.tx.keys_mut() = match signals::read_keys(&self.db).await {
            Ok(keys) => keys,
            Err(ProducerError::Postgres(e)) if !e.kind().is_transient() => {
                tracing::warn!(error = %e, "the message keys cannot be read; signed messages are refused");
                MessageKeys::default()
            }
            Err(e) => return Err(e),
        };
        Ok(())
    }

    async fn commit(&mut self, end_lsn: Lsn, shutdown: &CancellationToken) -> Result<Flow, ProducerError> {
        let (Some(begin), Some(outcome)) = (self.tx.current(), self.tx.commit()) else {
            tracing::warn!(%end_lsn, "commit without a transaction; ignored");
            return Ok(Flow::Continue);
        };
        Stats::add(&self.stats.transactions, 1);
        metrics::counter!(TRANSACTIONS).increment(1);
        // A skipped transaction's changes are not published: they change no backfill window.
        let changes = std::mem::take(&mut self.window_changes);
        if !outcome.skip {
            self.windows.commit(begin.xid, changes);
        }
        if outcome.skip {
            // The row events only: outbox messages were asked for explicitly.
            Stats::add(&self.stats.transactions_skipped, 1);
            metrics::counter!(TRANSACTIONS_SKIPPED).increment(1);
        }
        let mut events = self.buffer.take().await?;
        let lsn_text = begin.commit_lsn.to_string();
        let mut batch = BatchBuilder::default();
        while let Some(event) = events.next().await? {
            if outcome.skip && matches!(event.item, Item::Change { .. }) {
                continue;
            }
            if let Some(full) = batch.push(self.outgoing(event, &outcome, &begin, &lsn_text)?) {
                if let Flow::Stop = self.send(Batch::part(full), shutdown).await? {
                    return Ok(Flow::Stop);
                }
            }
        }
        let commit_time_micros = Some(begin.commit_time_micros);
        let flow =
            self.send(Batch { messages: batch.messages, commit: Some(end_lsn), commit_time_micros }, shutdown).await;
        for (done, rows, dropped) in self.chunks_published.drain(..) {
            let _ = done.send(ChunkOutcome::Published { rows, dropped, end_lsn });
        }
        flow
    }

    fn outgoing(
        &mut self,
        event: PendingEvent,
        outcome: &TxOutcome,
        begin: &TxBegin,
        lsn_text: &str,
    ) -> Result<Message, ProducerError> {
        let PendingEvent { item, seq, mut body } = event;
        let place = || OutboxPlace {
            default_id: format!("{}:outbox:{seq}", begin.commit_lsn),
            lsn_text,
            commit_time_micros: begin.commit_time_micros,
        };
        let (table, action) = match item {
            Item::Change { table, action } => (table, action),
            Item::Outbox(header) if body.len() <= self.config.max_message_bytes => {
                metrics::counter!(OUTBOX_PUBLISHED).increment(1);
                return Ok(message::outbox(&header, body, place(), &self.outbox_exchange));
            }
            Item::Outbox(header) => {
                let reason = format!(
                    "the body ({} bytes) is above --max-message-bytes ({}) for routing key {:?}",
                    body.len(),
                    self.config.max_message_bytes,
                    header.routing_key
                );
                tracing::warn!(xid = begin.xid, reason = ?reason, "an outbox message goes to the dead-letter exchange");
                return Ok(self.dead_outbox(&reason, body, place()));
            }
            Item::DeadOutbox(reason) => return Ok(self.dead_outbox(&reason, body, place())),
        };
        self.event_counters.published(&table.qualified, action);
        let route = self.router.route(&table);
        close_event(&mut body, outcome.context.as_deref());
        let envelope = Envelope {
            table: &table,
            action,
            message_id: message_id(begin.commit_lsn, seq),
            lsn_text,
            commit_time_micros: begin.commit_time_micros,
            position: Some(Position { commit: begin.commit_lsn, seq }),
        };
        message::build_within_limit(envelope, &route, body, &self.config)
    }

    fn dead_outbox(&self, reason: &str, content: Vec<u8>, place: OutboxPlace<'_>) -> Message {
        metrics::counter!(OUTBOX_DEAD).increment(1);
        let max_bytes = self.config.max_message_bytes.saturating_sub(64 << 10).max(1024);
        message::dead_outbox(reason, content, place, &self.outbox_dead_letter_exchange, max_bytes)
    }
}
