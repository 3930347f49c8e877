//! Counters of the pipeline, shared with progress logging, readiness and the monitor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

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
    /// Streaming, but RabbitMQ blocks publishing (a memory or disk alarm).
    Blocked = 6,
    /// Stopped on an error only the operator can fix (an event the broker cannot take, a
    /// setting the broker refuses); the process stays up so that `/readyz` and the metrics say
    /// why.
    Halted = 7,
}

impl Phase {
    fn from_u64(n: u64) -> Phase {
        match n {
            1 => Phase::Standby,
            2 => Phase::Snapshot,
            3 => Phase::Streaming,
            4 => Phase::Reconnecting,
            5 => Phase::Stopped,
            6 => Phase::Blocked,
            7 => Phase::Halted,
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
            Phase::Blocked => "RabbitMQ blocked",
            Phase::Halted => "halted",
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
    /// Bytes of message bodies published and not yet confirmed.
    pub in_flight_bytes: AtomicU64,
    phase: AtomicU64,
    /// What goes with the phase, for `/readyz` (the broker's reason for blocking, the error that
    /// halted the producer, a standby's suspicion about the lock holder).
    detail: Mutex<Option<String>>,
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

    /// The phase and, where there is one, the reason that goes with it.
    pub fn status(&self) -> (Phase, Option<String>) {
        let detail = self.detail.lock().unwrap_or_else(PoisonError::into_inner).clone();
        (self.phase(), detail)
    }

    /// Why the producer is not ready, for `/readyz`: the phase and its reason.
    pub fn not_ready_reason(&self) -> String {
        match self.status() {
            (phase, Some(detail)) => format!("{}: {detail}", phase.describe()),
            (phase, None) => phase.describe().to_owned(),
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.set_phase_with(phase, None);
    }

    /// Sets the phase with a reason shown on `/readyz`.
    pub fn set_phase_with(&self, phase: Phase, detail: Option<String>) {
        *self.detail.lock().unwrap_or_else(PoisonError::into_inner) = detail;
        self.phase.store(phase as u64, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::STREAMING).set(if phase == Phase::Streaming { 1.0 } else { 0.0 });
    }
}
