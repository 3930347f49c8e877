//! SQL actions: the statement runs in its own transaction, and its `succeeded` row is written in
//! that same transaction, so a statement that committed is never run again for the same job.

use pgevents_pg::{ErrorKind, JsonbText, PgError};
use pgevents_pg::{GenericClient, Pool};
use tokio_postgres::types::Type;

use crate::record::{insert, is_duplicate_success, RunRecord};
use crate::runner::{Attempt, Record};

/// Runs `statement` with `$1` = parameters and `$2` = event. `success` is the row to write
/// when it works (its duration is filled in here).
pub(crate) async fn run(
    pool: &Pool,
    statement: &str,
    parameters: &str,
    event: &str,
    timeout_ms: u128,
    success: RunRecord<'_>,
    clock: std::time::Instant,
) -> Result<Attempt, PgError> {
    let mut client = pool.get().await?;
    let failure = |e: tokio_postgres::Error| {
        let error = PgError::new("SQL action", e);
        let kind = if error.kind().is_transient() { ErrorKind::Transient } else { ErrorKind::Permanent };
        Attempt::failed(error.server_message(), kind)
    };
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => return Ok(failure(e)),
    };
    let prepared = match tx.prepare_typed_cached(statement, &[Type::JSONB, Type::JSONB]).await {
        Ok(prepared) => prepared,
        Err(e) => return Ok(failure(e)),
    };
    // The timeout and the statement go out together (one round trip); if the first fails, the
    // second fails too ("transaction is aborted"), so the first error is the one to report.
    let timeout = format!("SET LOCAL statement_timeout = {timeout_ms}");
    let (parameters, event) = (JsonbText(parameters), JsonbText(event));
    let values: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&parameters, &event];
    let (set, executed) = tokio::join!(tx.batch_execute(&timeout), tx.execute(&prepared, &values));
    if let Err(e) = set {
        return Ok(failure(e));
    }
    let rows = match executed {
        Ok(rows) => rows,
        Err(e) => return Ok(failure(e)),
    };
    let result = format!("{rows} rows");
    let record = RunRecord { duration: clock.elapsed(), result: Some(&result), ..success };
    if let Err(e) = insert(&tx, &record).await {
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
