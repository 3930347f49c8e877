//! SQL jobs run together: with a backlog, the worker hands over many fresh sync SQL jobs at
//! once, and those of one owner run in one transaction of the owner's session, in one round
//! trip (`pgevents.run_sql_actions`: each statement, then its `succeeded` row). It is all or
//! nothing: if anything fails (a statement, a record, the commit, the time), the transaction is
//! rolled back and each of those jobs runs alone ([`JobRunner::run`]), which reports, retries
//! and dead-letters it as always. A statement and its success row still commit together, so a
//! job that committed here is found done by a later run, and exactly-once holds.
//!
//! Only jobs that have never run take this way: if any job of the transaction has an
//! `action_run` row already (a redelivery), the database refuses the whole call
//! (`pgevents.require_fresh_jobs`) and they run alone; so do retries, revived jobs, HTTP
//! actions and jobs whose action cannot run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgevents_pg::JsonbText;
use pgevents_rules::{ActionDef, ActionKind, RuleSet};
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};

use crate::record::parameters_text;
use crate::runner::{runnable, EventReaders, JobRunner};
use crate::{metric, Job};

const RUN: &str = "SELECT pgevents.run_sql_actions($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// Whether the jobs of `action` may run together with others: a checked SQL statement, an owner,
/// no problem, at least one attempt.
pub fn can_run_together(rules: &RuleSet, action: &ActionDef) -> bool {
    matches!(action.kind, ActionKind::Sql { .. })
        && action.problem.is_none()
        && action.owner.is_some()
        && action.max_attempts > 0
        && rules.action_checked(&action.name)
}

/// A job ready to run together: its index, its action and its statement.
type Ready = (usize, Arc<ActionDef>, String);

/// How one call with several events' (or jobs') rule text went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt<R> {
    /// It went through, and gave this.
    Done(R),
    /// Something in it failed that may be one of them's doing (a statement, a limit, a job that
    /// ran before): nothing of it was kept, and fewer of them together may go through.
    Refused,
    /// The session could not be had, the connection was lost or the time ran out: the rest would
    /// only wait again.
    Stopped,
}

/// Tries `items` in parts of at most `chunk`, one part after the other: a refused part is split
/// in halves, each tried again, so one item that fails costs a few calls and is the only one
/// left out; a stopped part ends it. Gives what each part that went through gave; the items of
/// no part given must run alone.
pub async fn in_halves<'a, T, R, F, Fut>(items: &'a [T], chunk: usize, mut call: F) -> Vec<(&'a [T], R)>
where
    F: FnMut(&'a [T]) -> Fut,
    Fut: std::future::Future<Output = Attempt<R>>,
{
    let mut done = Vec::new();
    let mut parts: Vec<&[T]> = items.chunks(chunk.max(1)).rev().collect();
    while let Some(part) = parts.pop() {
        match call(part).await {
            Attempt::Done(result) => done.push((part, result)),
            Attempt::Refused if part.len() > 1 => {
                let (first, second) = part.split_at(part.len() / 2);
                parts.extend([second, first]);
            }
            Attempt::Refused => {}
            Attempt::Stopped => break,
        }
    }
    done
}

impl JobRunner {
    /// Runs fresh sync SQL `jobs` together, at most `chunk` per transaction (the owners' at the
    /// same time), and says for each whether it is done (its statement and success row
    /// committed). The others must run alone with [`JobRunner::run`]. `readers[i]` is what the
    /// caller knows about who may read job `i`'s event.
    pub async fn run_together(&self, jobs: &[Job], readers: &[EventReaders<'_>], chunk: usize) -> Vec<bool> {
        let mut done = vec![false; jobs.len()];
        let rules = self.rules.get();
        let mut by_owner: BTreeMap<String, Vec<Ready>> = BTreeMap::new();
        for (index, job) in jobs.iter().enumerate() {
            let Ok((action, owner)) = runnable(&rules, job) else { continue };
            let ActionKind::Sql { statement } = &action.kind else { continue };
            if job.revive || !can_run_together(&rules, &action) {
                continue;
            }
            let reader = readers.get(index).copied().unwrap_or(EventReaders::Unknown);
            if reader != EventReaders::Checked(&owner) {
                let event: Value = serde_json::from_str(job.event_json.get()).unwrap_or(Value::Null);
                if !matches!(self.refusal(&owner, job, &event).await, Ok(None)) {
                    continue;
                }
            }
            let statement = statement.clone();
            by_owner.entry(owner).or_default().push((index, action, statement));
        }
        let owners = by_owner.iter().map(|(owner, ready)| async move {
            let committed = in_halves(ready, chunk, |part| async move {
                let clock = Instant::now();
                match self.commit_together(owner, jobs, part).await {
                    Attempt::Done(()) => Attempt::Done(clock.elapsed() / u32::try_from(part.len()).unwrap_or(u32::MAX)),
                    Attempt::Refused => Attempt::Refused,
                    Attempt::Stopped => Attempt::Stopped,
                }
            })
            .await;
            let mut done = Vec::new();
            for (part, share) in committed {
                done.extend(part.iter().map(|(index, action, _)| (*index, action.name.clone(), share)));
            }
            done
        });
        for (index, action, share) in futures_util::future::join_all(owners).await.into_iter().flatten() {
            done[index] = true;
            metrics::histogram!(metric::ACTION_DURATION, "action" => action.clone()).record(share.as_secs_f64());
            metrics::counter!(metric::ACTION_RUNS, "action" => action, "status" => "succeeded").increment(1);
        }
        done
    }

    /// One transaction of `owner`'s session with the statements and success rows of `part`, in
    /// one flight: the transaction with its `statement_timeout` (the longest of the actions':
    /// the call is one statement; inside it each statement is held to its own `timeout_ms`),
    /// the call, the timeout again (rule text may have lifted it, and deferred triggers run at
    /// the commit), the commit. A failed call makes the commit a rollback.
    async fn commit_together(&self, owner: &str, jobs: &[Job], part: &[Ready]) -> Attempt<()> {
        let secrets = self.http.secrets();
        let Ok(session) = self.rules.sessions().get(owner).await else { return Attempt::Stopped };
        let timeout = part.iter().map(|(_, action, _)| action.timeout).max().unwrap_or(Duration::from_secs(1));
        let jobs: Vec<&Job> = part.iter().map(|(index, _, _)| &jobs[*index]).collect();
        let parameters: Vec<String> = part
            .iter()
            .zip(&jobs)
            .map(|((_, action, _), job)| parameters_text(&job.merged_parameters(&action.static_parameters)))
            .collect();
        let recorded: Vec<String> = parameters.iter().map(|text| secrets.redact(text)).collect();
        let statements: Vec<&str> = part.iter().map(|(_, _, statement)| statement.as_str()).collect();
        let timeouts: Vec<i32> = part
            .iter()
            .map(|(_, action, _)| i32::try_from(action.timeout.as_millis()).unwrap_or(i32::MAX).max(1))
            .collect();
        let text = |field: fn(&Job) -> &str| jobs.iter().map(|job| field(job)).collect::<Vec<&str>>();
        let keys = text(|job| &job.idempotency_key);
        let work_items = text(|job| &job.work_item);
        let actions = text(|job| &job.action);
        let message_ids = text(|job| &job.event.message_id);
        let tables = text(|job| &job.event.table_name);
        let event_actions = text(|job| job.event.action.code());
        let (parameters, recorded) = (jsonb(&parameters), jsonb(&recorded));
        let events: Vec<JsonbText> = jobs.iter().map(|job| JsonbText(job.event_json.get())).collect();
        let worker = self.worker.as_str();
        let values: [(&(dyn ToSql + Sync), Type); 12] = [
            (&statements, Type::TEXT_ARRAY),
            (&timeouts, Type::INT4_ARRAY),
            (&parameters, Type::JSONB_ARRAY),
            (&events, Type::JSONB_ARRAY),
            (&keys, Type::TEXT_ARRAY),
            (&work_items, Type::TEXT_ARRAY),
            (&actions, Type::TEXT_ARRAY),
            (&message_ids, Type::TEXT_ARRAY),
            (&tables, Type::TEXT_ARRAY),
            (&event_actions, Type::TEXT_ARRAY),
            (&recorded, Type::JSONB_ARRAY),
            (&worker, Type::TEXT),
        ];
        let limit = format!("SET LOCAL statement_timeout = {}", timeout.as_millis().max(1));
        let begin = format!("BEGIN; {limit}");
        // The timeout again before the commit: rule text may have lifted it, and deferred
        // triggers run at the commit.
        let sessions = self.rules.sessions();
        let deadline = timeout + crate::sql::GRACE;
        let Some(flight) = sessions.flight(owner, session, &begin, (RUN, &values), &[&limit, "COMMIT"], deadline).await
        else {
            return Attempt::Stopped;
        };
        let Err(e) = flight.rows() else { return Attempt::Done(()) };
        let error = secrets.redact(&pgevents_pg::describe(&e));
        tracing::debug!(owner, jobs = part.len(), error = %error, "SQL jobs run together failed");
        refused_or_stopped(&e)
    }
}

/// What a call of several events' (or jobs') rule text that failed with `e` was: stopped when
/// past the time (cancelled, or a statement past its own: each half would wait again) or with
/// the connection lost; refused otherwise, since it may be one of them's doing.
pub fn refused_or_stopped<R>(e: &tokio_postgres::Error) -> Attempt<R> {
    match e.as_db_error().map(|db| db.code().code()) {
        None | Some("57014" | "PGE02") => Attempt::Stopped,
        Some(_) => Attempt::Refused,
    }
}

/// JSON texts as a `jsonb[]` parameter.
fn jsonb(texts: &[String]) -> Vec<JsonbText<'_>> {
    texts.iter().map(|text| JsonbText(text)).collect()
}
