//! A work item against one event: its filter, then its query's parameters rows.

use pgevents_event::Event;
use pgevents_pg::GenericClient;
use pgevents_pg::{JsonbText, PgError};
use pgevents_rules::WorkItem;
use serde_json::{Map, Value};
use tokio_postgres::types::Type;

/// Why a work item could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// The database is unreachable or restarting: try the event again later.
    #[error(transparent)]
    Unavailable(PgError),
    /// The rule itself fails for this event (an error in its SQL, a wrong result type).
    #[error("{0}")]
    Rule(String),
}

fn sql_failure(what: &str, item: &WorkItem, e: tokio_postgres::Error) -> EvaluateError {
    let error = PgError::new(format!("{what} of work item {:?}", item.name), e);
    if error.kind().is_transient() {
        EvaluateError::Unavailable(error)
    } else {
        EvaluateError::Rule(format!("{what} of work item {:?} failed: {}", item.name, error.server_message()))
    }
}

/// The parameters rows of `item` for the event (`document` is the event as jsonb text); empty
/// when the filter does not match.
pub async fn evaluate(
    client: &impl GenericClient,
    item: &WorkItem,
    event: &Event,
    document: &str,
) -> Result<Vec<Map<String, Value>>, EvaluateError> {
    let parameter = JsonbText(document);
    if let Some(filter) = &item.filter {
        let sql = format!("SELECT ({filter})::boolean");
        let statement =
            client.prepare_typed_cached(&sql, &[Type::JSONB]).await.map_err(|e| sql_failure("filter", item, e))?;
        let row = client.query_one(&statement, &[&parameter]).await.map_err(|e| sql_failure("filter", item, e))?;
        let matched: Option<bool> = row.try_get(0).map_err(|e| sql_failure("filter", item, e))?;
        if matched != Some(true) {
            return Ok(Vec::new());
        }
    }
    let Some(query) = &item.query else {
        let row = if event.new.is_empty() { &event.old } else { &event.new };
        return Ok(vec![row.clone()]);
    };
    let sql = format!("SELECT q.parameters::jsonb FROM ({query}) AS q");
    let statement =
        client.prepare_typed_cached(&sql, &[Type::JSONB]).await.map_err(|e| sql_failure("work_item_query", item, e))?;
    let rows = client.query(&statement, &[&parameter]).await.map_err(|e| sql_failure("work_item_query", item, e))?;
    rows.iter()
        .map(|row| match row.try_get::<_, Option<Value>>(0) {
            Ok(Some(Value::Object(map))) => Ok(map),
            Ok(None | Some(Value::Null)) => Ok(Map::new()),
            Ok(Some(other)) => Err(EvaluateError::Rule(format!(
                "work_item_query of work item {:?} returned parameters that are not a JSON object: {other}",
                item.name
            ))),
            Err(e) => Err(sql_failure("work_item_query", item, e)),
        })
        .collect()
}
