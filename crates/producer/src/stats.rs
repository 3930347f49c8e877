//! Counters of the pipeline, shared with progress logging, readiness and the monitor.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the producer is doing; readiness (`/readyz`) is `Streaming`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting = 0,
    /// Another producer holds the slot's lock; this one waits to take over.
    Standby = 1,
    Snapshot = 2,
    Streaming = 3,
    Reconnecting = 4,
    Stopped = 5,
}

impl Phase {
    fn from_u64(n: u64) -> Phase {
        match n {
            1 => Phase::Standby,
            2 => Phase::Snapshot,
            3 => Phase::Streaming,
            4 => Phase::Reconnecting,
            5 => Phase::Stopped,
            _ => Phase::Connecting,
        }
    }

    /// Why the producer is not streaming, for `/readyz`.
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting to PostgreSQL and RabbitMQ",
            Phase::Standby => "standby: another producer holds the slot",
            Phase::Snapshot => "reading the initial snapshot",
            Phase::Streaming => "streaming",
            Phase::Reconnecting => "reconnecting after a failure",
            Phase::Stopped => "stopped",
        }
    }
}

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
    /// The server's WAL position when the monitor last asked.
    pub server_wal_lsn: AtomicU64,
    /// Commit time (Unix microseconds) of the last confirmed transaction.
    pub last_commit_micros: AtomicU64,
    pub in_flight: AtomicU64,
    phase: AtomicU64,
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

    pub fn phase(&self) -> Phase {
        Phase::from_u64(self.phase.load(Ordering::Relaxed))
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u64, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::STREAMING).set(if phase == Phase::Streaming { 1.0 } else { 0.0 });
    }
}
