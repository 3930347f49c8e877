//! Backfills on demand, without locks: `SELECT pgevents.snapshot(ARRAY['public.orders'])` (or
//! `pgevents snapshot --table public.orders`) and the producer publishes the table's rows as
//! `R` events while it goes on streaming.
//!
//! The algorithm is DBLog's (Netflix, Andreakis and Papapanagiotou, 2020), with watermarks the
//! producer writes: for each chunk (the next `--backfill-chunk-rows` rows in key order) a signed
//! low watermark, the read, a signed high watermark, each in a transaction of its own. The reader
//! sees them in commit order among the changes ([`window`]): the chunk's rows whose keys changed
//! in between are dropped (the stream carries their change), the rest are published in the high
//! watermark's transaction, under the confirm-before-LSN rule. A chunk's progress is recorded
//! once RabbitMQ confirmed it, so a restart resumes the backfill from its last confirmed chunk.
//!
//! Why written watermarks and not `pg_current_snapshot()` (Debezium's read-only variant): the
//! producer already decodes the WAL in commit order, so two markers in it place the chunk among
//! the changes exactly, without reasoning about which in-flight transactions a snapshot saw;
//! writing them needs only what the signed messages need (the producer owns the signing key).

mod publication;
pub mod requests;
mod task;
pub mod window;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use pgevents_decode::RowChange;
use pgevents_event::Lsn;
use tokio::sync::oneshot;

pub use publication::STREAMED_TABLES_SQL;
pub use requests::REQUESTS_SQL;
pub use task::run;
use window::{ChunkId, Key};

/// A chunk read, waiting for its high watermark.
pub struct Chunk {
    /// The rows as `R` changes, each with its key.
    pub rows: Vec<(Key, RowChange)>,
    /// The transactions in progress in the read's snapshot (low 32 bits of their ids).
    pub in_progress: HashSet<u32>,
    /// Told what became of it.
    pub done: oneshot::Sender<ChunkOutcome>,
}

/// What the reader did with a chunk at its high watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Its rows, but those changed meanwhile, are published in the transaction that ends at
    /// `end_lsn` (the chunk is done once that is confirmed).
    Published { rows: u64, dropped: u64, end_lsn: Lsn },
    /// Read it again: why.
    Retry(String),
}

/// The chunks read and not yet met by the reader, shared by the backfill task and the reader.
#[derive(Default)]
pub struct Chunks {
    waiting: Mutex<HashMap<ChunkId, Chunk>>,
}

impl Chunks {
    pub fn insert(&self, id: ChunkId, chunk: Chunk) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(id, chunk);
        }
    }

    /// The chunk of this high watermark (`None` for one written by an earlier session).
    pub fn take(&self, id: &ChunkId) -> Option<Chunk> {
        self.waiting.lock().ok().and_then(|mut waiting| waiting.remove(id))
    }
}

/// A new run's id: chunks of earlier sessions, met again when their WAL is read again, belong to
/// other runs and are left alone.
pub fn run_id() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (nanos as u64) ^ (u64::from(std::process::id()) << 32)
}

/// A window holds at most this many changed keys per row of a chunk (`--backfill-chunk-rows`);
/// beyond, its chunk is read again (memory stays bounded under a write storm).
pub const WINDOW_KEYS_PER_ROW: usize = 16;

pub fn shared() -> Arc<Chunks> {
    Arc::new(Chunks::default())
}
