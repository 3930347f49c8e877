//! SQL actions: the statement runs in a session of the action's owner (so it can do only what
//! its author can), in its own transaction, and its `succeeded` row is written in that same
//! transaction (through `pgevents.record_action_success`, which lets an owner record only its own
//! actions), so a statement that committed is never run again for the same job.

use pgevents_pg::{ErrorKind, JsonbText, PgError};
use pgevents_rules::OwnerSession;
use tokio_postgres::types::{ToSql, Type};

use crate::record::{is_duplicate_success, record_success_as_owner, RunRecord};
use crate::runner::{Attempt, Record};

/// Time allowed past `timeout_ms` before the worker stops waiting itself.
pub(crate) const GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `statement` with `$1` = parameters and `$2` = event in `session`, a session of the
/// action's owner. `success` is the row to write when it works (its duration is filled in
/// here).
///
/// Two flights: the transaction with its `statement_timeout` and the statement go out
/// together; then the timeout again (the statement may have lifted it, and the record and the
/// commit, deferred triggers included, are statements too), the record and the commit. If a
/// message of a flight fails, the ones after it fail too ("current transaction is aborted"),
/// and a commit of an aborted transaction rolls it back, so the first error is the one to
/// report. Every statement is unnamed, parsed afresh. Every error is the attempt's: how it
/// failed, and whether trying again can help.
pub(crate) async fn run(
    session: &mut OwnerSession,
    statement: &str,
    parameters: &str,
    event: &str,
    timeout_ms: u128,
    success: RunRecord<'_>,
    clock: std::time::Instant,
) -> Attempt {
    let failure = |e: tokio_postgres::Error| {
        let error = PgError::new("SQL action", e);
        let kind = if error.kind().is_transient() { ErrorKind::Transient } else { ErrorKind::Permanent };
        Attempt::failed(error.server_message(), kind)
    };
    let begin = format!("BEGIN; SET LOCAL statement_timeout = {timeout_ms}");
    let timeout = format!("SET LOCAL statement_timeout = {timeout_ms}");
    let (parameters, event) = (JsonbText(parameters), JsonbText(event));
    let values: [(&(dyn ToSql + Sync), Type); 2] = [(&parameters, Type::JSONB), (&event, Type::JSONB)];
    session.begin();
    let client: &tokio_postgres::Client = session;
    let executed = async {
        let rows = client.query_typed_raw(statement, values.iter().map(|(v, t)| (*v, t.clone()))).await?;
        futures_util::pin_mut!(rows);
        while futures_util::StreamExt::next(&mut rows).await.transpose()?.is_some() {}
        Ok::<_, tokio_postgres::Error>(rows.rows_affected().unwrap_or(0))
    };
    // Sent in this order: each message goes out when first polled, and a biased `join!` polls
    // in the order written.
    let (begun, executed) = tokio::join!(biased; client.batch_execute(&begin), executed);
    let outcome = match begun.and(executed) {
        Ok(rows) => {
            let result = format!("{rows} rows");
            let record = RunRecord { duration: clock.elapsed(), result: Some(&result), ..success };
            let (set, recorded, committed) = tokio::join!(
                biased;
                client.batch_execute(&timeout),
                record_success_as_owner(client, &record),
                client.batch_execute("COMMIT")
            );
            match (set, recorded, committed) {
                (Err(e), _, _) => failure(e),
                // Only the record can say the job is done: a 23505 at the commit is the
                // statement's own deferred constraint, a failure like any other.
                (Ok(()), Err(e), _) if is_duplicate_success(&e) => Attempt::AlreadyDone,
                (Ok(()), Err(e), _) | (Ok(()), Ok(()), Err(e)) => failure(e),
                (Ok(()), Ok(()), Ok(())) => {
                    Attempt::Succeeded { response_code: None, result: Some(result), record: Record::Written }
                }
            }
        }
        Err(e) => {
            // The statement or its timeout failed: the transaction is aborted, end it. If that
            // fails too the session is closed (it stays marked as in a transaction), and the
            // statement's error is the one to report.
            if let Err(rollback) = client.batch_execute("ROLLBACK").await {
                tracing::debug!(error = %pgevents_pg::describe(&rollback), "cannot roll back a failed SQL action");
                return failure(e);
            }
            failure(e)
        }
    };
    session.ended();
    outcome
}
