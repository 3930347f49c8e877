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
use pgevents_rules::access::columns_of;
use pgevents_rules::statements::Shape;
use pgevents_rules::{OwnerSession, RulesCache, WorkItem};
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

/// What evaluating needs: the worker's own pool (for the access checks), what the owners may
/// see, and its owners' sessions (for the rules' text).
pub struct Evaluator {
    pub pool: Pool,
    pub rules: std::sync::Arc<RulesCache>,
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
pub(crate) const GRACE: Duration = Duration::from_secs(1);

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
        let refusal =
            self.rules.access().refusal(&self.pool, owner, &event.table_name, columns_of([&event.new, &event.old]));
        if let Some(refused) = refusal.await.map_err(unavailable)? {
            return Err(EvaluateError::Rule(format!("work item {:?} may not see this event: {refused}", item.name)));
        }
        if item.filter.is_none() && item.query.is_none() {
            return Ok(the_row(event));
        }
        let mut session = match self.rules.sessions().get(owner).await {
            Ok(session) => session,
            Err(e) if e.kind() == ErrorKind::Transient => return Err(EvaluateError::Unavailable(e.to_string())),
            Err(e) => return Err(EvaluateError::Rule(format!("work item {:?} cannot run: {e}", item.name))),
        };
        let evaluated =
            tokio::time::timeout(self.timeout + GRACE, self.run_text(&mut session, item, event, document)).await;
        match evaluated {
            Ok(result) => result,
            Err(_) => {
                metrics::counter!(RULE_LIMITS, "limit" => "timeout").increment(1);
                self.rules.sessions().abandon(owner, session).await;
                Err(EvaluateError::Rule(format!(
                    "work item {:?} ran longer than --rule-timeout-ms ({} ms): stopped",
                    item.name,
                    self.timeout.as_millis()
                )))
            }
        }
    }

    /// The filter, then (if it matched) the query, each in a read-only transaction of the
    /// owner's session.
    async fn run_text(
        &self,
        session: &mut OwnerSession,
        item: &WorkItem,
        event: &Event,
        document: &str,
    ) -> Result<Vec<Map<String, Value>>, EvaluateError> {
        if let Some(filter) = &item.filter {
            let statement = Shape::Filter.statement(filter);
            let matched = self
                .read_only(session, &statement, document, |rows| async move {
                    futures_util::pin_mut!(rows);
                    // A filter is read to its first row.
                    let first = rows.try_next().await?;
                    Ok(first.map(|row| row.try_get::<_, Option<bool>>(0)).transpose()?.flatten())
                })
                .await
                .map_err(|e| e.context("filter", item))?;
            if matched != Some(true) {
                return Ok(Vec::new());
            }
        }
        let Some(query) = &item.query else {
            return Ok(the_row(event));
        };
        let statement = Shape::Query.statement(query);
        let limits = self.limits;
        self.read_only(session, &statement, document, |rows| async move { parameters_rows(rows, limits).await })
            .await
            .map_err(|e| e.context("work_item_query", item))
    }

    /// Runs `statement` (over `$1`, the event) in a read-only transaction of its own, rolled
    /// back, and gives its rows to `read`. One flight: the transaction with its
    /// `statement_timeout`, the statement (unnamed, parsed afresh: nothing prepared earlier in
    /// the session runs) and the rollback are sent together, in that order (each is sent when
    /// first polled, and a biased `join!` polls them in the order written). If the transaction
    /// cannot begin, the statement fails too ("current transaction is aborted"), so it never
    /// runs outside it.
    async fn read_only<T, F, Fut>(
        &self,
        session: &mut OwnerSession,
        statement: &str,
        document: &str,
        read: F,
    ) -> Result<T, TextError>
    where
        F: FnOnce(tokio_postgres::RowStream) -> Fut,
        Fut: std::future::Future<Output = Result<T, TextError>>,
    {
        let begin =
            format!("START TRANSACTION READ ONLY; SET LOCAL statement_timeout = {}", self.timeout.as_millis().max(1));
        let parameter = JsonbText(document);
        let parameters = [(&parameter as &(dyn tokio_postgres::types::ToSql + Sync), Type::JSONB)];
        session.begin();
        let client: &tokio_postgres::Client = session;
        let rows = async {
            let rows = client.query_typed_raw(statement, parameters.iter().map(|(v, t)| (*v, t.clone()))).await?;
            read(rows).await
        };
        let (begun, result, ended) =
            tokio::join!(biased; client.batch_execute(&begin), rows, client.batch_execute("ROLLBACK"));
        begun.map_err(TextError::Transaction)?;
        // Back to the pool only once the rollback is answered; the statement's error comes first.
        if ended.is_ok() {
            session.ended();
        }
        let value = result?;
        ended.map_err(TextError::Transaction)?;
        Ok(value)
    }
}

/// Without a query, the parameters are the event's row (its new row; the old one for a delete).
pub(crate) fn the_row(event: &Event) -> Vec<Map<String, Value>> {
    let row = if event.new.is_empty() { &event.old } else { &event.new };
    vec![row.clone()]
}

/// Why a statement of a rule's text failed.
enum TextError {
    /// Beginning or ending its transaction.
    Transaction(tokio_postgres::Error),
    Statement(tokio_postgres::Error),
    /// The rows are not what the rule must give (named by the statement's kind later).
    Rule(String),
}

/// An error while the statement runs or its rows are read.
impl From<tokio_postgres::Error> for TextError {
    fn from(e: tokio_postgres::Error) -> Self {
        TextError::Statement(e)
    }
}

impl TextError {
    fn context(self, what: &str, item: &WorkItem) -> EvaluateError {
        match self {
            TextError::Transaction(e) => failure("the transaction", item, e),
            TextError::Statement(e) => failure(what, item, e),
            TextError::Rule(problem) => {
                EvaluateError::Rule(format!("{what} of work item {:?} returned {problem}", item.name))
            }
        }
    }
}

impl RowLimits {
    /// Which limit `rows` parameters rows of `bytes` in all are past, and how to say it.
    pub(crate) fn exceeded(&self, rows: usize, bytes: usize) -> Option<(&'static str, String)> {
        if rows > self.rows {
            Some(("rows", format!("more than {} rows (--max-parameter-rows)", self.rows)))
        } else if bytes > self.bytes {
            Some(("bytes", format!("more than {} bytes of parameters (--max-parameter-bytes)", self.bytes)))
        } else {
            None
        }
    }
}

/// A query's `parameters` value as a job's parameters (NULL is none).
pub(crate) fn as_parameters(value: Option<Value>) -> Result<Map<String, Value>, String> {
    match value {
        Some(Value::Object(map)) => Ok(map),
        None | Some(Value::Null) => Ok(Map::new()),
        Some(other) => Err(format!("parameters that are not a JSON object: {other}")),
    }
}

/// The size of parameters as JSON, counted against `--max-parameter-bytes`.
pub(crate) fn object_bytes(parameters: &Map<String, Value>) -> usize {
    serde_json::to_string(parameters).map_or(0, |text| text.len())
}

/// A query's parameters rows, within `limits`.
async fn parameters_rows(
    rows: tokio_postgres::RowStream,
    limits: RowLimits,
) -> Result<Vec<Map<String, Value>>, TextError> {
    futures_util::pin_mut!(rows);
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.try_next().await? {
        let parameters = as_parameters(row.try_get::<_, Option<Value>>(0)?).map_err(TextError::Rule)?;
        bytes += object_bytes(&parameters);
        out.push(parameters);
        if let Some((limit, what)) = limits.exceeded(out.len(), bytes) {
            metrics::counter!(RULE_LIMITS, "limit" => limit).increment(1);
            return Err(TextError::Rule(what));
        }
    }
    Ok(out)
}
