//! The action stage of pgevents: running the action of a work item for one parameters row.
//!
//! A [`Job`] is one action to run: the work item, the action's name, the parameters, the event
//! it came from and an idempotency key (`event message id/work item/row`). The worker builds
//! jobs from events; in `async` mode it publishes them to the work exchange as work messages
//! (the JSON of a [`Job`]) for `pgevents action-runner` ([`run_action_runner`]).
//!
//! [`JobRunner::run`] runs a job to its end:
//! - an SQL action runs its statement in its own transaction, together with the insert of its
//!   `succeeded` row in `pgevents.action_run`, so it happens exactly once;
//! - an HTTP action sends the request with an `Idempotency-Key` header; a 2xx status is a
//!   success, anything else a failure;
//! - failures are retried with exponential backoff up to the action's `max_attempts`, each
//!   attempt recorded; then the job goes to the dead-letter queue and its last row says `dead`;
//! - a job whose key already has a `succeeded` (or `dead`) row is not run again, so a
//!   redelivered event or work message does not repeat a finished action.

mod dead;
mod error;
mod http;
mod job;
mod outbound;
mod record;
mod requeue;
mod runner;
mod runner_service;
mod secrets;
mod sql;
mod template;

pub use dead::{declare_work_topology, work_message, DeadLetters, WorkTopology};
pub use error::JobError;
pub use http::{HttpCaller, HttpSettings};
pub use job::{EventInfo, Job};
pub use outbound::AllowList;
pub use requeue::{requeue_dead, RequeueReport};
pub use runner::{JobOutcome, JobRunner};
pub use runner_service::{run_action_runner, StageConsumer};
pub use secrets::{redact_url, Secrets, SecretsError, ENV_PREFIX as SECRET_ENV_PREFIX};

/// Metric names of the action stage.
pub mod metric {
    /// Attempts by action and status (`succeeded`, `failed`, `dead`).
    pub const ACTION_RUNS: &str = "pgevents_action_runs_total";
    /// Time per attempt, by action.
    pub const ACTION_DURATION: &str = "pgevents_action_duration_seconds";
    /// Jobs skipped because their key already succeeded (redeliveries).
    pub const ACTION_SKIPPED: &str = "pgevents_action_skipped_total";
}
