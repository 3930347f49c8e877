//! The work-item stage of pgevents (`pgevents worker`).
//!
//! For each event from its durable queue the worker finds the work items of the event's table
//! and action, evaluates each one's filter and `work_item_query` in PostgreSQL with the event
//! bound as `$1` (jsonb: the event, its `message_id`, its transaction `context`, and the work
//! item's `transaction_label`), and turns every parameters row into a job: run at once in
//! `sync` mode, published to the work exchange in `async` mode. The event is acknowledged only
//! after every job is finished, dead-lettered or safely queued.

mod batch;
mod document;
mod evaluate;
mod together;
mod worker;

pub use evaluate::RowLimits;
pub use worker::{run_worker, WorkerConfig};

/// Metric names of the work-item stage.
pub mod metric {
    /// Events read, by whether any work item matched (`matched`, `unmatched`).
    pub const EVENTS: &str = "pgevents_worker_events_total";
    /// Jobs made, by work item and mode.
    pub const JOBS: &str = "pgevents_worker_jobs_total";
    /// Rule runs stopped at a limit, by `limit` (`timeout`, `rows`, `bytes`).
    pub const RULE_LIMITS: &str = crate::evaluate::RULE_LIMITS;
    /// Events of a batch that ran alone instead (some of their work could not run together).
    pub const EVENTS_ALONE: &str = crate::batch::EVENTS_ALONE;
    /// Events per batch handed to the worker (histogram).
    pub const BATCH_EVENTS: &str = crate::batch::BATCH_EVENTS;
}
