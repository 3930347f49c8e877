//! SQL actions: the statement runs in a session of the action's owner (so it can do only what
//! its author can), in its own transaction, and its `succeeded` row is written in that same
//! transaction (through `pgevents.record_action_success`, which lets an owner record only its own
//! actions), so a statement that committed is never run again for the same job.

use pgevents_pg::{ErrorKind, JsonbText, PgError, Pooled};
use tokio_postgres::types::{ToSql, Type};

use crate::record::{is_duplicate_success, record_success_as_owner, RunRecord};
use crate::runner::{Attempt, Record};

/// Time allowed past `timeout_ms` before the worker stops waiting itself.
pub(crate) const GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `statement` with `$1` = parameters and `$2` = event in `client`, a session of the
/// action's owner. `success` is the row to write when it works (its duration is filled in
/// here).
pub(crate) async fn run(
    client: &mut Pooled,
    statement: &str,
    parameters: &str,
    event: &str,
    timeout_ms: u128,
    success: RunRecord<'_>,
    clock: std::time::Instant,
) -> Result<Attempt, PgError> {
    let failure = |e: tokio_postgres::Error| {
        let error = PgError::new("SQL action", e);
        let kind = if error.kind().is_transient() { ErrorKind::Transient } else { ErrorKind::Permanent };
        Attempt::failed(error.server_message(), kind)
    };
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => return Ok(failure(e)),
    };
    // The timeout and the statement go out together (one round trip); if the first fails, the
    // second fails too ("transaction is aborted"), so the first error is the one to report. The
    // statement is the unnamed one, parsed afresh.
    let timeout = format!("SET LOCAL statement_timeout = {timeout_ms}");
    let (parameters, event) = (JsonbText(parameters), JsonbText(event));
    let values: [(&(dyn ToSql + Sync), Type); 2] = [(&parameters, Type::JSONB), (&event, Type::JSONB)];
    let executed = async {
        let rows = tx.query_typed_raw(statement, values.iter().map(|(v, t)| (*v, t.clone()))).await?;
        futures_util::pin_mut!(rows);
        while futures_util::StreamExt::next(&mut rows).await.transpose()?.is_some() {}
        Ok::<_, tokio_postgres::Error>(rows.rows_affected().unwrap_or(0))
    };
    let (set, executed) = tokio::join!(tx.batch_execute(&timeout), executed);
    if let Err(e) = set {
        return Ok(failure(e));
    }
    let rows = match executed {
        Ok(rows) => rows,
        Err(e) => return Ok(failure(e)),
    };
    let result = format!("{rows} rows");
    let record = RunRecord { duration: clock.elapsed(), result: Some(&result), ..success };
    // Again, with the record (one round trip): the statement may have lifted it, and the record
    // and the commit (deferred triggers) are statements too.
    let (set, recorded) = tokio::join!(tx.batch_execute(&timeout), record_success_as_owner(&tx, &record));
    if let Err(e) = set {
        return Ok(failure(e));
    }
    if let Err(e) = recorded {
        if is_duplicate_success(&e) {
            return Ok(Attempt::AlreadyDone);
        }
        return Ok(failure(e));
    }
    match tx.commit().await {
        Ok(()) => Ok(Attempt::Succeeded { response_code: None, result: Some(result), record: Record::Written }),
        Err(e) => Ok(failure(e)),
    }
}
