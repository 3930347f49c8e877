//! The producer's Prometheus metrics, recorded through the `metrics` facade (nothing is recorded
//! unless the binary installs a recorder). Names are documented in the README.

use std::collections::HashMap;

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Unit};
use pgevents_event::Action;

pub const EVENTS_PUBLISHED: &str = "pgevents_events_published_total";
pub const EVENTS_CONFIRMED: &str = "pgevents_events_confirmed_total";
pub const TRANSACTIONS: &str = "pgevents_transactions_total";
pub const TRANSACTIONS_SKIPPED: &str = "pgevents_transactions_skipped_total";
pub const MESSAGES_REFUSED: &str = "pgevents_messages_refused_total";
pub const OUTBOX_PUBLISHED: &str = "pgevents_outbox_messages_total";
pub const OUTBOX_DEAD: &str = "pgevents_outbox_dead_lettered_total";
pub const BACKFILL_ROWS: &str = "pgevents_backfill_rows_total";
pub const BACKFILL_CHUNKS_RETRIED: &str = "pgevents_backfill_chunks_retried_total";
pub const BACKFILL_RUNNING: &str = "pgevents_backfill_running";
pub const CONTEXT_IGNORED: &str = "pgevents_context_messages_ignored_total";
pub const CONFIRMS_PENDING: &str = "pgevents_confirms_pending";
pub const CONFIRMED_LSN: &str = "pgevents_confirmed_lsn";
pub const SERVER_WAL_LSN: &str = "pgevents_server_wal_lsn";
pub const LAG_BYTES: &str = "pgevents_replication_lag_bytes";
pub const LAG_SECONDS: &str = "pgevents_replication_lag_seconds";
pub const RECONNECTS: &str = "pgevents_reconnects_total";
pub const ERRORS: &str = "pgevents_errors_total";
pub const STREAMING: &str = "pgevents_streaming";
pub const SNAPSHOT_ROWS: &str = "pgevents_snapshot_rows_total";
pub const HEARTBEATS: &str = "pgevents_heartbeats_total";
pub const COMMIT_TO_CONFIRM: &str = "pgevents_commit_to_confirm_seconds";
pub const EVENTS_STUBBED: &str = "pgevents_events_stubbed_total";
pub const HALTED: &str = "pgevents_halted";
pub const STANDBY_LOCK_SUSPECT: &str = "pgevents_standby_lock_suspect";
pub const IN_FLIGHT_BYTES: &str = "pgevents_in_flight_bytes";
pub const IN_FLIGHT_LIMIT: &str = "pgevents_in_flight_limit_reached_total";
pub const BLOCKED: &str = "pgevents_rabbitmq_blocked";
pub const BLOCKS: &str = "pgevents_rabbitmq_blocks_total";

/// Buckets of [`COMMIT_TO_CONFIRM`], in seconds: fine around the 5 ms / 25 ms targets.
pub const COMMIT_TO_CONFIRM_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Registers help texts and units.
pub fn describe() {
    describe_counter!(EVENTS_PUBLISHED, "Events handed to the broker, by table and action");
    describe_counter!(EVENTS_CONFIRMED, "Events confirmed by the broker");
    describe_counter!(TRANSACTIONS, "Transactions read from the slot");
    describe_counter!(TRANSACTIONS_SKIPPED, "Transactions whose row events were suppressed by pgevents.skip()");
    describe_counter!(
        MESSAGES_REFUSED,
        "pgevents messages refused, by reason: unsigned, forged, other_transaction, unknown_key, retired_key, not_transactional, unreadable"
    );
    describe_counter!(OUTBOX_PUBLISHED, "Outbox messages published (pgevents.outbox())");
    describe_counter!(BACKFILL_ROWS, "Rows read by backfills (pgevents.snapshot()), by table");
    describe_counter!(
        BACKFILL_CHUNKS_RETRIED,
        "Backfill chunks read again (a TRUNCATE, or too many changes, during their read)"
    );
    describe_gauge!(BACKFILL_RUNNING, "1 while a backfill runs");
    describe_counter!(
        OUTBOX_DEAD,
        "Signed outbox messages that could not be published as written, sent to --outbox-dead-letter-exchange"
    );
    describe_counter!(
        CONTEXT_IGNORED,
        "Context messages ignored: not a JSON object, or over --max-context-bytes for their transaction"
    );
    describe_gauge!(CONFIRMS_PENDING, "Messages published and not yet confirmed");
    describe_gauge!(CONFIRMED_LSN, "Last LSN reported to PostgreSQL as flushed (as a number)");
    describe_gauge!(SERVER_WAL_LSN, "The server's current WAL position (as a number)");
    describe_gauge!(LAG_BYTES, Unit::Bytes, "Server WAL position minus the confirmed LSN");
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Now minus the commit time of the last confirmed transaction, while behind; 0 when caught up"
    );
    describe_counter!(RECONNECTS, "Sessions restarted after a failure");
    describe_counter!(ERRORS, "Session failures, by kind");
    describe_gauge!(STREAMING, "1 while streaming from the slot, 0 otherwise");
    describe_counter!(SNAPSHOT_ROWS, "Rows published by the initial snapshot, by table");
    describe_counter!(HEARTBEATS, "Heartbeat statements run");
    describe_counter!(
        EVENTS_STUBBED,
        "Events above --max-message-bytes published with their largest values left out (--oversize stub), by table"
    );
    describe_gauge!(
        HALTED,
        "1 while the producer is halted on an error only the operator can fix (see /readyz and the log)"
    );
    describe_gauge!(
        STANDBY_LOCK_SUSPECT,
        "1 while a standby sees the slot's lock held by a session that has not streamed the slot for --lock-holder-timeout"
    );
    describe_gauge!(IN_FLIGHT_BYTES, Unit::Bytes, "Bytes of message bodies published and not yet confirmed");
    describe_counter!(
        IN_FLIGHT_LIMIT,
        "Times reading paused because --max-in-flight (limit=messages) or --max-in-flight-bytes (limit=bytes) was reached"
    );
    describe_gauge!(BLOCKED, "1 while RabbitMQ blocks the publishing connection (memory or disk alarm)");
    describe_counter!(BLOCKS, "Times RabbitMQ blocked the publishing connection");
    describe_histogram!(
        COMMIT_TO_CONFIRM,
        Unit::Seconds,
        "Commit time of a transaction to the broker's confirm of its last event"
    );
}

/// Counter handles of [`EVENTS_PUBLISHED`], created once per table and action.
#[derive(Default)]
pub struct EventCounters {
    by_table: HashMap<String, [Option<Counter>; 5]>,
}

fn action_index(action: Action) -> usize {
    match action {
        Action::Insert => 0,
        Action::Update => 1,
        Action::Delete => 2,
        Action::Truncate => 3,
        Action::Read => 4,
    }
}

impl EventCounters {
    pub fn published(&mut self, table: &str, action: Action) {
        let slots = match self.by_table.get_mut(table) {
            Some(slots) => slots,
            None => self.by_table.entry(table.to_owned()).or_default(),
        };
        slots[action_index(action)]
            .get_or_insert_with(
                || metrics::counter!(EVENTS_PUBLISHED, "table" => table.to_owned(), "action" => action.code()),
            )
            .increment(1);
    }
}
