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
mod signing;
mod sql;
mod template;
mod together;

pub use dead::{declare_work_topology, work_message, DeadLetters, WorkTopology};
pub use error::JobError;
pub use http::{HttpCaller, HttpSettings};
pub use job::{EventInfo, Job};
pub use outbound::AllowList;
pub use requeue::{requeue_dead, RequeueReport};
pub use runner::{EventReaders, JobOutcome, JobRunner};
pub use runner_service::{run_action_runner, StageConsumer};
pub use secrets::{redact_url, Secrets, SecretsError, ENV_PREFIX as SECRET_ENV_PREFIX};
pub use signing::{ShortKey, WorkKey, SIGNATURE_HEADER};
pub use together::{can_run_together, in_halves, refused_or_stopped, Attempt};

/// Entry points for the fuzz targets (`fuzz/`): templates and redaction on arbitrary input.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use serde_json::{Map, Value};

    use crate::secrets::Secrets;
    use crate::template::{render_string, render_url, render_value, Scope};

    /// Renders `template` (JSON: a body template, or a string for a URL or header) with
    /// `parameters` and `event` (JSON), one secret, and redacts the results as the runner does.
    pub fn template(template: &str, parameters: &str, event: &str) {
        let Ok(template) = serde_json::from_str::<Value>(template) else { return };
        let parameters: Map<String, Value> = serde_json::from_str(parameters).unwrap_or_default();
        let event: Value = serde_json::from_str(event).unwrap_or(Value::Null);
        let secrets =
            Secrets::load([("PGEVENTS_SECRET_TOKEN".to_owned(), "fuzz-secret".to_owned())], None).unwrap_or_default();
        let granted = std::collections::BTreeSet::from(["TOKEN".to_owned()]);
        let scope =
            Scope { parameters: &parameters, event: &event, secrets: &secrets, granted: &granted, owner: "fuzz" };
        if let Ok(rendered) = render_value(&template, scope) {
            let _ = secrets.redact(&rendered.to_string());
        }
        if let Value::String(text) = &template {
            if let Ok(url) = render_url(text, scope) {
                let _ = secrets.redact(&crate::secrets::redact_url(&url));
            }
            let _ = render_string(text, scope, str::to_owned);
        }
    }
}

/// Metric names of the action stage.
pub mod metric {
    /// Attempts by action and status (`succeeded`, `failed`, `dead`).
    pub const ACTION_RUNS: &str = "pgevents_action_runs_total";
    /// Time per attempt, by action.
    pub const ACTION_DURATION: &str = "pgevents_action_duration_seconds";
    /// Jobs skipped because their key already succeeded (redeliveries).
    pub const ACTION_SKIPPED: &str = "pgevents_action_skipped_total";
    /// Work messages refused for a missing or wrong signature (`--work-key-file`).
    pub const WORK_MESSAGES_REFUSED: &str = "pgevents_work_messages_refused_total";
}
