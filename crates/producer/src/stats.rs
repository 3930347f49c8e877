//! Counters of the pipeline, shared with progress logging and metrics.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    /// Events handed to the broker.
    pub events_published: AtomicU64,
    /// Events confirmed by the broker.
    pub events_confirmed: AtomicU64,
    pub transactions: AtomicU64,
    /// Transactions suppressed by `{"skip": true}`.
    pub transactions_skipped: AtomicU64,
    pub reconnects: AtomicU64,
    /// Last LSN reported to PostgreSQL as flushed.
    pub confirmed_lsn: AtomicU64,
    /// Last WAL position received from PostgreSQL.
    pub received_lsn: AtomicU64,
    /// Commit time (Unix microseconds) of the last confirmed transaction.
    pub last_commit_micros: AtomicU64,
    pub in_flight: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Ordering::Relaxed);
    }
}
