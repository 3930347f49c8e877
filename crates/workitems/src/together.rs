//! Work items of one owner evaluated for several events in one round trip: every filter and
//! query in one call (`pgevents.evaluate_work_items`), in a read-only transaction of the
//! owner's session that is rolled back. All or nothing, like the jobs run together: an error, a
//! statement past `--rule-timeout-ms` (or the call past it), a query past
//! `--max-parameter-rows`, the parameters of the call past `--max-parameter-bytes` in all, or
//! parameters that are not an object, and each event is evaluated alone
//! ([`Evaluator::evaluate`]), which reports it as always. The filter still gates the query (an
//! event the filter refuses never runs it), and `$1` is each event's own document.

use pgevents_actions::{refused_or_stopped, Attempt};
use pgevents_event::Event;
use pgevents_pg::JsonbText;
use pgevents_rules::statements::Shape;
use pgevents_rules::{Flight, WorkItem};
use serde_json::{Map, Value};
use tokio_postgres::types::{ToSql, Type};

use crate::evaluate::{as_parameters, object_bytes, the_row, Evaluator, GRACE};

const EVALUATE: &str = "SELECT matched, parameters FROM pgevents.evaluate_work_items($1, $2, $3, $4, $5, $6)";

/// One work item against one event.
pub struct Evaluation<'a> {
    pub item: &'a WorkItem,
    pub event: &'a Event,
    /// The event as the work item's text sees it (jsonb text).
    pub document: &'a str,
}

/// For each evaluation of a call, its parameters rows (empty when the filter does not match),
/// or `None` where the evaluation alone would fail (a limit, parameters that are not an object).
pub type Evaluated = Vec<Option<Vec<Map<String, Value>>>>;

impl Evaluator {
    /// Evaluates work items of `owner` (whose access to their events was checked) in one call.
    pub async fn evaluate_together(&self, owner: &str, evaluations: &[Evaluation<'_>]) -> Attempt<Evaluated> {
        let Ok(session) = self.rules.sessions().get(owner).await else { return Attempt::Stopped };
        let filters: Vec<Option<String>> =
            evaluations.iter().map(|e| e.item.filter.as_deref().map(|f| Shape::Filter.statement(f))).collect();
        let queries: Vec<Option<String>> =
            evaluations.iter().map(|e| e.item.query.as_deref().map(|q| Shape::Query.statement(q))).collect();
        let documents: Vec<JsonbText> = evaluations.iter().map(|e| JsonbText(e.document)).collect();
        let max_rows = i32::try_from(self.limits.rows).unwrap_or(i32::MAX);
        let max_bytes = i64::try_from(self.limits.bytes).unwrap_or(i64::MAX);
        let timeout_ms = i32::try_from(self.timeout.as_millis()).unwrap_or(i32::MAX).max(1);
        let values: [(&(dyn ToSql + Sync), Type); 6] = [
            (&filters, Type::TEXT_ARRAY),
            (&queries, Type::TEXT_ARRAY),
            (&documents, Type::JSONB_ARRAY),
            (&max_rows, Type::INT4),
            (&max_bytes, Type::INT8),
            (&timeout_ms, Type::INT4),
        ];
        let begin =
            format!("START TRANSACTION READ ONLY; SET LOCAL statement_timeout = {}", self.timeout.as_millis().max(1));
        // The call is one statement: `statement_timeout` bounds all of it (inside, each statement
        // is held to the same time), and past it each event is evaluated alone.
        let sessions = self.rules.sessions();
        let flight = sessions.flight(owner, session, &begin, (EVALUATE, &values), &["ROLLBACK"], self.timeout + GRACE);
        let rows = match flight.await.map(Flight::rows) {
            None => return Attempt::Stopped,
            Some(Ok(rows)) if rows.len() == evaluations.len() => rows,
            Some(Ok(_)) => return Attempt::Stopped,
            Some(Err(e)) => return refused_or_stopped(&e),
        };
        let out = rows
            .iter()
            .zip(evaluations)
            .map(|(row, evaluation)| {
                let matched: bool = row.try_get(0).ok()?;
                let found: Option<Vec<Option<Value>>> = row.try_get(1).ok()?;
                match (matched, found) {
                    (false, _) => Some(Vec::new()),
                    (true, None) => Some(the_row(evaluation.event)),
                    (true, Some(found)) => self.parameters(found),
                }
            })
            .collect();
        Attempt::Done(out)
    }

    /// A query's rows as parameters, or `None` where the query alone would fail (a limit, a
    /// row that is not an object).
    fn parameters(&self, found: Vec<Option<Value>>) -> Option<Vec<Map<String, Value>>> {
        let mut bytes = 0usize;
        let mut out = Vec::with_capacity(found.len());
        for value in found {
            let parameters = as_parameters(value).ok()?;
            bytes += object_bytes(&parameters);
            out.push(parameters);
            if self.limits.exceeded(out.len(), bytes).is_some() {
                return None;
            }
        }
        Some(out)
    }
}
