//! A work item against one event: whether its owner may see the event, then its filter and its
//! query's parameters rows, run in a session of its owner.
//!
//! The event is data of its table: a work item whose owner may not read the columns the event
//! carries (or on whose table row-level security applies to it) never sees it, and the run is
//! recorded as failed with the reason. The filter and the query run in a read-only transaction
//! of the owner's session and are rolled back: they only read. Each runs under
//! `statement_timeout`, and the worker keeps its own clock too (rule text can change its
//! session's settings): past the timeout the query is cancelled and the session closed. A filter
//! is read to its first row; a query's parameters rows are bounded in number and size.

use std::time::Duration;

use futures_util::TryStreamExt as _;
use pgevents_event::Event;
use pgevents_pg::{JsonbText, PgError, Pool};
use pgevents_retry::ErrorKind;
use pgevents_rules::access::event_refusal;
use pgevents_rules::statements::Shape;
use pgevents_rules::{OwnerSessions, WorkItem};
use serde_json::{Map, Value};
use tokio_postgres::types::Type;

/// Why a work item could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// The database is unreachable or restarting: try the event again later.
    #[error("{0}")]
    Unavailable(String),
    /// The rule cannot take this event (an error in its SQL, a timeout, a wrong result, an owner
    /// who may not read the event): recorded as failed.
    #[error("{0}")]
    Rule(String),
}

/// What evaluating needs: the worker's own pool (for the access checks) and its owners'
/// sessions (for the rules' text).
pub struct Evaluator {
    pub pool: Pool,
    pub sessions: std::sync::Arc<OwnerSessions>,
    /// `statement_timeout` of filters and queries.
    pub timeout: Duration,
    pub limits: RowLimits,
}

/// How much a work item's query may return for one event.
#[derive(Debug, Clone, Copy)]
pub struct RowLimits {
    /// Parameters rows (`--max-parameter-rows`).
    pub rows: usize,
    /// Their JSON, in bytes (`--max-parameter-bytes`).
    pub bytes: usize,
}

/// Counter by `limit` (`timeout`, `rows`, `bytes`): rule runs stopped at a limit.
pub const RULE_LIMITS: &str = "pgevents_worker_rule_limits_total";

/// Time allowed past `statement_timeout` before the worker stops waiting itself.
const GRACE: Duration = Duration::from_secs(1);

/// The columns the event carries, sorted.
fn carried_columns(event: &Event) -> Vec<String> {
    let mut columns: Vec<String> = event.new.keys().chain(event.old.keys()).cloned().collect();
    columns.sort();
    columns.dedup();
    columns
}

fn failure(what: &str, item: &WorkItem, e: tokio_postgres::Error) -> EvaluateError {
    let error = PgError::new(format!("{what} of work item {:?}", item.name), e);
    if error.server_gone() {
        EvaluateError::Unavailable(error.to_string())
    } else {
        EvaluateError::Rule(format!("{what} of work item {:?} failed: {}", item.name, error.server_message()))
    }
}

impl Evaluator {
    /// The parameters rows of `item` for the event (`document` is the event as jsonb text);
    /// empty when the filter does not match.
    pub async fn evaluate(
        &self,
        item: &WorkItem,
        event: &Event,
        document: &str,
    ) -> Result<Vec<Map<String, Value>>, EvaluateError> {
        let owner = match (&item.problem, &item.owner) {
            (Some(problem), _) => {
                return Err(EvaluateError::Rule(format!("work item {:?} cannot run: {problem}", item.name)))
            }
            (None, None) => return Err(EvaluateError::Rule(format!("work item {:?} has no owner", item.name))),
            (None, Some(owner)) => owner,
        };
        let unavailable = |e: PgError| EvaluateError::Unavailable(e.to_string());
        let refusal = async {
            let client = self.pool.get().await?;
            let columns = carried_columns(event);
            event_refusal(&client, owner, &event.table_name, &columns).await
        };
        if let Some(refused) = refusal.await.map_err(unavailable)? {
            return Err(EvaluateError::Rule(format!("work item {:?} may not see this event: {refused}", item.name)));
        }
        if item.filter.is_none() && item.query.is_none() {
            let row = if event.new.is_empty() { &event.old } else { &event.new };
            return Ok(vec![row.clone()]);
        }
        let mut client = match self.sessions.get(owner).await {
            Ok(client) => client,
            Err(e) if e.kind() == ErrorKind::Transient => return Err(EvaluateError::Unavailable(e.to_string())),
            Err(e) => return Err(EvaluateError::Rule(format!("work item {:?} cannot run: {e}", item.name))),
        };
        let evaluated =
            tokio::time::timeout(self.timeout + GRACE, self.run_text(&mut client, item, event, document)).await;
        match evaluated {
            Ok(result) => result,
            Err(_) => {
                metrics::counter!(RULE_LIMITS, "limit" => "timeout").increment(1);
                self.sessions.abandon(owner, client).await;
                Err(EvaluateError::Rule(format!(
                    "work item {:?} ran longer than --rule-timeout-ms ({} ms): stopped",
                    item.name,
                    self.timeout.as_millis()
                )))
            }
        }
    }

    /// The filter, then the query, in a read-only transaction of the owner's session.
    async fn run_text(
        &self,
        client: &mut tokio_postgres::Client,
        item: &WorkItem,
        event: &Event,
        document: &str,
    ) -> Result<Vec<Map<String, Value>>, EvaluateError> {
        let tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(|e| failure("the transaction", item, e))?;
        // Before each statement: the one before may have changed it.
        let timeout = format!("SET LOCAL statement_timeout = {}", self.timeout.as_millis().max(1));
        let parameter = JsonbText(document);
        let parameters = [(&parameter as &(dyn tokio_postgres::types::ToSql + Sync), Type::JSONB)];
        let typed = || parameters.iter().map(|(v, t)| (*v, t.clone()));
        if let Some(filter) = &item.filter {
            // The unnamed statement, parsed afresh: nothing prepared earlier in the session runs.
            // It goes out with the timeout (one round trip); if setting the timeout fails, the
            // transaction is aborted and the statement fails too.
            let statement = Shape::Filter.statement(filter);
            let (set, rows) = tokio::join!(tx.batch_execute(&timeout), tx.query_typed_raw(&statement, typed()));
            set.map_err(|e| failure("the timeout", item, e))?;
            let rows = rows.map_err(|e| failure("filter", item, e))?;
            futures_util::pin_mut!(rows);
            let first = rows.try_next().await.map_err(|e| failure("filter", item, e))?;
            let matched: Option<bool> =
                first.map(|row| row.try_get(0)).transpose().map_err(|e| failure("filter", item, e))?.flatten();
            if matched != Some(true) {
                return Ok(Vec::new());
            }
        }
        let Some(query) = &item.query else {
            let row = if event.new.is_empty() { &event.old } else { &event.new };
            return Ok(vec![row.clone()]);
        };
        let statement = Shape::Query.statement(query);
        let (set, rows) = tokio::join!(tx.batch_execute(&timeout), tx.query_typed_raw(&statement, typed()));
        set.map_err(|e| failure("the timeout", item, e))?;
        let rows = rows.map_err(|e| failure("work_item_query", item, e))?;
        futures_util::pin_mut!(rows);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        // Dropping the transaction rolls it back: a query only reads.
        while let Some(row) = rows.try_next().await.map_err(|e| failure("work_item_query", item, e))? {
            let parameters = match row.try_get::<_, Option<Value>>(0) {
                Ok(Some(Value::Object(map))) => map,
                Ok(None | Some(Value::Null)) => Map::new(),
                Ok(Some(other)) => {
                    return Err(EvaluateError::Rule(format!(
                        "work_item_query of work item {:?} returned parameters that are not a JSON object: {other}",
                        item.name
                    )))
                }
                Err(e) => return Err(failure("work_item_query", item, e)),
            };
            bytes += Value::Object(parameters.clone()).to_string().len();
            out.push(parameters);
            let over = if out.len() > self.limits.rows {
                Some(("rows", format!("more than {} rows (--max-parameter-rows)", self.limits.rows)))
            } else if bytes > self.limits.bytes {
                Some(("bytes", format!("more than {} bytes of parameters (--max-parameter-bytes)", self.limits.bytes)))
            } else {
                None
            };
            if let Some((limit, what)) = over {
                metrics::counter!(RULE_LIMITS, "limit" => limit).increment(1);
                return Err(EvaluateError::Rule(format!(
                    "work_item_query of work item {:?} returned {what}",
                    item.name
                )));
            }
        }
        Ok(out)
    }
}
