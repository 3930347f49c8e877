//! `pgevents.action_run`: one row per attempt, and what earlier attempts of a job did.

use std::time::{Duration, SystemTime};

use pgevents_pg::{GenericClient, JsonbText, PgError};
use tokio_postgres::types::{ToSql, Type};

use crate::Job;

/// What the rows of a job's key say so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prior {
    /// Failed attempts so far (since the last `dead` row, for a job revived after dying).
    pub failed: u32,
    pub succeeded: bool,
    pub dead: bool,
}

/// The status column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Succeeded,
    Failed,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Dead => "dead",
        }
    }
}

/// One attempt's record.
#[derive(Debug, Clone)]
pub struct RunRecord<'a> {
    pub job: &'a Job,
    /// The parameters the action got (static ones merged in), as JSON text.
    pub parameters: Option<&'a str>,
    pub status: Status,
    pub attempt: u32,
    pub started_at: SystemTime,
    pub duration: Duration,
    pub error: Option<&'a str>,
    pub response_code: Option<i32>,
    pub result: Option<&'a str>,
    pub worker: &'a str,
}

/// A job is its key and its action: a success of another action under the same key (a work item
/// rewired meanwhile, or a row some owner recorded for its own action) does not count.
const PRIOR: &str = "
    WITH runs AS (SELECT id, status FROM pgevents.action_run WHERE idempotency_key = $1 AND action = $2),
         last_dead AS (SELECT coalesce(max(id), 0) AS id FROM runs WHERE status = 'dead')
    SELECT (SELECT count(*) FROM runs, last_dead WHERE runs.status = 'failed' AND runs.id > last_dead.id)::integer,
           EXISTS (SELECT 1 FROM runs WHERE status = 'succeeded'),
           EXISTS (SELECT 1 FROM runs WHERE status = 'dead')";

const INSERT: &str = "
    INSERT INTO pgevents.action_run
        (idempotency_key, work_item, action, event_message_id, event_table, event_action, parameters,
         status, attempt, started_at, duration_ms, error, response_code, result, worker)
    VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9, $10, $11, $12, $13, $14, $15)";

/// Longest `result` kept.
const RESULT_LIMIT: usize = 8192;

fn truncate(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

pub async fn prior(client: &impl GenericClient, key: &str, action: &str) -> Result<Prior, PgError> {
    let statement =
        client.prepare_cached(PRIOR).await.map_err(|e| PgError::new("cannot read pgevents.action_run", e))?;
    let row = client
        .query_one(&statement, &[&key, &action])
        .await
        .map_err(|e| PgError::new("cannot read pgevents.action_run", e))?;
    let read = |e| PgError::new("cannot read pgevents.action_run", e);
    let failed: i32 = row.try_get(0).map_err(read)?;
    Ok(Prior {
        failed: u32::try_from(failed).unwrap_or(0),
        succeeded: row.try_get(1).map_err(read)?,
        dead: row.try_get(2).map_err(read)?,
    })
}

/// Inserts one row. Fails with SQLSTATE 23505 when the job already has a `succeeded` row.
pub async fn insert(client: &impl GenericClient, record: &RunRecord<'_>) -> Result<(), tokio_postgres::Error> {
    let job = record.job;
    let attempt = i32::try_from(record.attempt).unwrap_or(i32::MAX);
    let duration_ms = record.duration.as_secs_f64() * 1000.0;
    let result = record.result.map(|r| truncate(r, RESULT_LIMIT));
    let statement = client.prepare_cached(INSERT).await?;
    client
        .execute(
            &statement,
            &[
                &job.idempotency_key,
                &job.work_item,
                &job.action,
                &job.event.message_id,
                &job.event.table_name,
                &job.event.action.code(),
                &record.parameters,
                &record.status.as_str(),
                &attempt,
                &record.started_at,
                &duration_ms,
                &record.error,
                &record.response_code,
                &result,
                &record.worker,
            ],
        )
        .await?;
    Ok(())
}

/// Records the success of an SQL action in the transaction that ran it, in the session of the
/// action's owner (which may write only its own actions' successes, through the function). The
/// unnamed statement: nothing the owner's text prepared in the session can stand in for it.
pub async fn record_success_as_owner(
    client: &tokio_postgres::Client,
    record: &RunRecord<'_>,
) -> Result<(), tokio_postgres::Error> {
    let job = record.job;
    let attempt = i32::try_from(record.attempt).unwrap_or(i32::MAX);
    let duration_ms = record.duration.as_secs_f64() * 1000.0;
    let result = record.result.map(|r| truncate(r, RESULT_LIMIT));
    let parameters = record.parameters.map(JsonbText);
    let action_code = job.event.action.code();
    let values: [(&(dyn ToSql + Sync), Type); 12] = [
        (&job.idempotency_key, Type::TEXT),
        (&job.work_item, Type::TEXT),
        (&job.action, Type::TEXT),
        (&job.event.message_id, Type::TEXT),
        (&job.event.table_name, Type::TEXT),
        (&action_code, Type::TEXT),
        (&parameters, Type::JSONB),
        (&attempt, Type::INT4),
        (&record.started_at, Type::TIMESTAMPTZ),
        (&duration_ms, Type::FLOAT8),
        (&result, Type::TEXT),
        (&record.worker, Type::TEXT),
    ];
    client
        .query_typed(
            "SELECT pgevents.record_action_success($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &values,
        )
        .await?;
    Ok(())
}

/// Whether an error is the unique index saying the job already succeeded (not another unique
/// violation, such as one of an SQL action's own tables).
pub fn is_duplicate_success(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION && db.constraint() == Some(ONE_SUCCESS_INDEX)
    })
}

/// The unique index on the successes of a job (migration 4).
const ONE_SUCCESS_INDEX: &str = "action_run_one_success";

/// The parameters as JSON text for the record and for SQL actions.
pub fn parameters_text(parameters: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::Value::Object(parameters.clone()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
