//! Runs a job to its end: attempts with exponential backoff, a row per attempt, and the
//! dead-letter queue when the attempts are used up or the failure cannot be fixed by retrying.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pgevents_pg::{ErrorKind, PgError, Pool};
use pgevents_rules::access::carried_columns;
use pgevents_rules::{ActionDef, ActionKind, RuleSet, RulesCache};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::dead::DeadLetters;
use crate::http::{HttpAction, HttpCaller};
use crate::record::{self, parameters_text, RunRecord, Status};
use crate::{metric, Job, JobError};

/// What one attempt did.
#[derive(Debug, Clone)]
pub(crate) enum Attempt {
    Succeeded {
        response_code: Option<i32>,
        result: Option<String>,
        record: Record,
    },
    /// Another run of the same job had already succeeded (its row is there).
    AlreadyDone,
    /// `kind` says whether another attempt can help (a bad template, a statement error or a
    /// 4xx status cannot).
    Failed {
        error: String,
        kind: ErrorKind,
        response_code: Option<i32>,
        result: Option<String>,
    },
}

/// Whose job the `succeeded` row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record {
    /// The runner writes it.
    ToWrite,
    /// Already written, in the action's own transaction (SQL actions).
    Written,
}

impl Attempt {
    pub fn failed(error: String, kind: ErrorKind) -> Attempt {
        Attempt::Failed { error, kind, response_code: None, result: None }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// The action succeeded at this attempt.
    Succeeded { attempt: u32 },
    /// The job had already succeeded or died before (a redelivery): nothing was run.
    AlreadyDone,
    /// Given up: in the dead-letter queue, with a `dead` row.
    Dead,
}

/// What the caller of [`JobRunner::run`] already knows about who may read a job's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventReaders<'a> {
    /// Nothing (a job from a queue): the runner asks the database.
    Unknown,
    /// The database has just said this role may read every column the event carries (the
    /// worker asks for its work item's owner before the rule's text sees the event); when it is
    /// the action's owner too, the runner does not ask again.
    Checked(&'a str),
}

/// The action `job` runs and its owner, or why it cannot run at all: a job is what one of the
/// rules made (its work item runs this action on this table: a job from elsewhere, or made
/// before the rules changed, does not run), and its action has an owner and no problem.
pub(crate) fn runnable(rules: &RuleSet, job: &Job) -> Result<(Arc<ActionDef>, String), String> {
    let Some(action) = rules.action(&job.action) else {
        return Err(format!("unknown action {:?}: it is not in pgevents.action (deleted or renamed?)", job.action));
    };
    match rules.work_item(&job.work_item) {
        None => {
            return Err(format!(
                "work item {:?} is not among the rules (deleted, renamed or disabled since the job was made?)",
                job.work_item
            ))
        }
        Some(item) if item.action != job.action => {
            return Err(format!("work item {:?} runs action {:?}, not {:?}", job.work_item, item.action, job.action))
        }
        Some(item) if item.table != job.event.table_name => {
            return Err(format!(
                "work item {:?} is about table {}, not {}",
                job.work_item, item.table, job.event.table_name
            ))
        }
        Some(_) => {}
    }
    match (&action.problem, &action.owner) {
        (None, Some(owner)) => {
            let owner = owner.clone();
            Ok((action, owner))
        }
        (problem, _) => {
            Err(format!("action {:?} cannot run: {}", job.action, problem.as_deref().unwrap_or("it has no owner")))
        }
    }
}

/// Runs jobs; shared by every task of a worker or action runner.
pub struct JobRunner {
    pub(crate) pool: Pool,
    pub(crate) rules: Arc<RulesCache>,
    pub(crate) http: HttpCaller,
    dead: DeadLetters,
    /// Recorded in `action_run.worker`.
    pub(crate) worker: String,
    /// Overrides the `base_url` setting.
    base_url: Option<String>,
}

impl JobRunner {
    pub fn new(
        pool: Pool,
        rules: Arc<RulesCache>,
        http: HttpCaller,
        dead: DeadLetters,
        worker: String,
        base_url: Option<String>,
    ) -> JobRunner {
        JobRunner { pool, rules, http, dead, worker, base_url }
    }

    async fn write(&self, record: &RunRecord<'_>) -> Result<(), JobError> {
        let client = self.pool.get().await.map_err(PgError::from)?;
        match record::insert(&client, record).await {
            Ok(()) => Ok(()),
            // Another worker recorded the success first: the job is done either way.
            Err(e) if record.status == Status::Succeeded && record::is_duplicate_success(&e) => Ok(()),
            Err(e) => Err(PgError::new("cannot record the action run in pgevents.action_run", e).into()),
        }
    }

    /// What the rows of the job's key say so far.
    async fn prior(&self, job: &Job) -> Result<record::Prior, JobError> {
        let client = self.pool.get().await.map_err(PgError::from)?;
        Ok(record::prior(&client, &job.idempotency_key, &job.action).await?)
    }

    /// Why the action's owner may not see the job's event, if it may not.
    pub(crate) async fn refusal(&self, owner: &str, job: &Job, event: &Value) -> Result<Option<String>, JobError> {
        let columns = carried_columns(event);
        Ok(self.rules.access().refusal(&self.pool, owner, &job.event.table_name, columns).await?)
    }

    /// Dead-letters the job, then records its last attempt as `dead`.
    async fn bury(&self, record: RunRecord<'_>) -> Result<JobOutcome, JobError> {
        let error = record.error.unwrap_or("failed");
        self.dead.publish(record.job, error).await?;
        self.write(&RunRecord { status: Status::Dead, ..record }).await?;
        metrics::counter!(metric::ACTION_RUNS, "action" => record.job.action.clone(), "status" => "dead").increment(1);
        tracing::warn!(
            key = ?record.job.idempotency_key, action = ?record.job.action, attempt = record.attempt, error = ?error,
            "action failed for good; the job is in the dead-letter queue"
        );
        Ok(JobOutcome::Dead)
    }

    /// Runs `job` until it succeeds or dies. Errors mean "not finished, try the whole job
    /// again later" (the database or the broker is unreachable, or shutdown came).
    pub async fn run(
        &self,
        job: &Job,
        readers: EventReaders<'_>,
        shutdown: &CancellationToken,
    ) -> Result<JobOutcome, JobError> {
        let prior = self.prior(job).await?;
        if prior.succeeded || (prior.dead && !job.revive) {
            metrics::counter!(metric::ACTION_SKIPPED, "action" => job.action.clone()).increment(1);
            tracing::debug!(key = ?job.idempotency_key, "job already finished; not running it again");
            return Ok(JobOutcome::AlreadyDone);
        }
        let mut attempt = prior.failed + 1;
        let base = RunRecord {
            job,
            parameters: None,
            status: Status::Failed,
            attempt,
            started_at: SystemTime::now(),
            duration: Duration::ZERO,
            error: None,
            response_code: None,
            result: None,
            worker: &self.worker,
        };
        let rules = self.rules.get();
        let (action, owner) = match runnable(&rules, job) {
            Ok(runnable) => runnable,
            Err(error) => return self.bury(RunRecord { error: Some(&error), ..base }).await,
        };
        // The event is data of its table: only for an owner who may read what it carries.
        let event: Value = serde_json::from_str(job.event_json.get()).unwrap_or(Value::Null);
        let checked = readers == EventReaders::Checked(&owner);
        if let Some(refused) = if checked { None } else { self.refusal(&owner, job, &event).await? } {
            let error = format!("action {:?} may not see this event: {refused}", job.action);
            return self.bury(RunRecord { error: Some(&error), ..base }).await;
        }
        let parameters = job.merged_parameters(&action.static_parameters);
        let parameters_json = parameters_text(&parameters);
        // What is recorded never holds a secret value (errors, bodies and parameters alike).
        let secrets = self.http.secrets();
        let recorded_parameters = secrets.redact(&parameters_json);
        let base = RunRecord { parameters: Some(&recorded_parameters), ..base };
        if attempt > action.max_attempts {
            // An earlier run used every attempt but could not dead-letter the job.
            let error = format!("gave up after {} failed attempts", prior.failed);
            return self.bury(RunRecord { attempt: prior.failed, error: Some(&error), ..base }).await;
        }
        let base_url = self.base_url.as_deref().or_else(|| rules.setting("base_url"));
        let granted = rules.secrets_granted_to(&owner).cloned().unwrap_or_default();
        loop {
            let started_at = SystemTime::now();
            let clock = Instant::now();
            let record = RunRecord { attempt, started_at, ..base.clone() };
            let outcome = match &action.kind {
                ActionKind::Sql { statement } => {
                    let success = RunRecord { status: Status::Succeeded, ..record.clone() };
                    let mut session = match self.rules.sessions().get(&owner).await {
                        Ok(session) => session,
                        Err(e) if e.kind().is_transient() => {
                            return Err(JobError::Database(PgError::Pool(e.to_string())))
                        }
                        Err(e) => {
                            let error = format!("action {:?} cannot run: {e}", job.action);
                            return self.bury(RunRecord { error: Some(&error), ..record }).await;
                        }
                    };
                    let run = crate::sql::run(
                        &mut session,
                        statement,
                        &parameters_json,
                        job.event_json.get(),
                        action.timeout.as_millis(),
                        success,
                        clock,
                    );
                    // The worker's own clock too: rule text can change its session's settings
                    // (and deferred triggers run at commit).
                    match tokio::time::timeout(action.timeout + crate::sql::GRACE, run).await {
                        Ok(attempt) => attempt,
                        Err(_) => {
                            self.rules.sessions().abandon(&owner, session).await;
                            Attempt::failed(
                                format!("ran longer than timeout_ms ({} ms): stopped", action.timeout.as_millis()),
                                ErrorKind::Transient,
                            )
                        }
                    }
                }
                ActionKind::Http { method, url, headers, body_template } => {
                    let http = HttpAction { method, url, headers, body_template: body_template.as_ref() };
                    self.http.call(&action, &http, job, &parameters, &event, base_url, &granted).await
                }
            };
            let duration = clock.elapsed();
            metrics::histogram!(metric::ACTION_DURATION, "action" => job.action.clone()).record(duration.as_secs_f64());
            let (error, kind, response_code, result) = match outcome {
                Attempt::AlreadyDone => return Ok(JobOutcome::AlreadyDone),
                Attempt::Succeeded { response_code, result, record: written } => {
                    let result = result.map(|text| secrets.redact(&text));
                    if written == Record::ToWrite {
                        let record = RunRecord {
                            status: Status::Succeeded,
                            duration,
                            response_code,
                            result: result.as_deref(),
                            ..record
                        };
                        self.write(&record).await?;
                    }
                    metrics::counter!(metric::ACTION_RUNS, "action" => job.action.clone(), "status" => "succeeded")
                        .increment(1);
                    return Ok(JobOutcome::Succeeded { attempt });
                }
                Attempt::Failed { error, kind, response_code, result } => {
                    (secrets.redact(&error), kind, response_code, result.map(|text| secrets.redact(&text)))
                }
            };
            let record =
                RunRecord { duration, error: Some(&error), response_code, result: result.as_deref(), ..record };
            if !kind.is_transient() || attempt >= action.max_attempts {
                return self.bury(record).await;
            }
            self.write(&record).await?;
            metrics::counter!(metric::ACTION_RUNS, "action" => job.action.clone(), "status" => "failed").increment(1);
            let wait = action.backoff_after(attempt);
            tracing::info!(
                key = ?job.idempotency_key, action = ?job.action, attempt, error = ?record.error.unwrap_or(""),
                retry_in_ms = wait.as_millis() as u64, "action failed; retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return Err(JobError::Interrupted),
            }
            attempt += 1;
        }
    }

    /// Records that `job` cannot run at all (its work item's filter or query fails for this
    /// event): a `dead` row with the error, and the job in the dead-letter queue. Done once per
    /// key, so a redelivered event does not add more.
    pub async fn fail_job(&self, job: &Job, error: &str) -> Result<JobOutcome, JobError> {
        let prior = self.prior(job).await?;
        if prior.dead || prior.succeeded {
            return Ok(JobOutcome::AlreadyDone);
        }
        let record = RunRecord {
            job,
            parameters: None,
            status: Status::Dead,
            attempt: prior.failed + 1,
            started_at: SystemTime::now(),
            duration: Duration::ZERO,
            error: Some(error),
            response_code: None,
            result: None,
            worker: &self.worker,
        };
        self.bury(record).await
    }
}
