//! Whether a rule's owner may see an event: the event is data of its table, so a rule whose owner
//! may not read the columns the event carries (or on whose table row-level security applies to
//! it) never gets it. Asked of the database (`pgevents.event_access`) with the worker's own
//! connection, before any of the owner's text sees the event.

use pgevents_pg::PgError;
use serde_json::Value;
use tokio_postgres::types::Type;

/// The columns an event carries (of its new and old rows), sorted, from its JSON.
pub fn carried_columns(event: &Value) -> Vec<String> {
    let mut columns: Vec<String> = ["new", "old"]
        .iter()
        .filter_map(|row| event.get(*row)?.as_object())
        .flat_map(|row| row.keys().cloned())
        .collect();
    columns.sort();
    columns.dedup();
    columns
}

/// Why `owner` may not receive an event of `table` carrying `columns`; `None` when it may.
pub async fn event_refusal(
    client: &tokio_postgres::Client,
    owner: &str,
    table: &str,
    columns: &[String],
) -> Result<Option<String>, PgError> {
    let read = |e| PgError::new("cannot check the rule owner's privileges", e);
    // Typed and unnamed: one round trip, nothing prepared first (this runs for every event).
    let rows = client
        .query_typed(
            "SELECT pgevents.event_access($1, $2, $3)",
            &[(&owner, Type::TEXT), (&table, Type::TEXT), (&columns, Type::TEXT_ARRAY)],
        )
        .await
        .map_err(read)?;
    match rows.first() {
        Some(row) => row.try_get(0).map_err(read),
        None => Ok(Some("pgevents.event_access returned no row".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_of_both_rows_once_each() {
        let event =
            serde_json::json!({"new": {"id": 1, "email": "a"}, "old": {"id": 1, "secret": "s"}, "diff": {"x": 1}});
        assert_eq!(carried_columns(&event), ["email", "id", "secret"]);
        assert!(carried_columns(&serde_json::json!({"table_name": "t"})).is_empty());
    }
}
