//! What a subscriber asked for, from the query string: `table` (repeatable, globs), `action`
//! (`I,U`), `pk` (one row), `columns` (only updates that changed one of them) and
//! `granularity=field` (one `field_update` event per changed column instead of row events).

use pgevents_event::{Action, Event, Glob};
use serde_json::{json, Value};

/// A subscriber's filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    tables: Vec<Glob>,
    actions: Vec<Action>,
    pk: Option<String>,
    columns: Vec<String>,
    pub field_granularity: bool,
}

/// A query parameter that cannot be understood; the response is 400 with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadFilter(pub String);

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty())
}

impl Filter {
    /// Builds a filter from query pairs (unknown keys other than `last_event_id` are errors).
    pub fn from_query(pairs: &[(String, String)]) -> Result<Filter, BadFilter> {
        let mut filter = Filter::default();
        for (key, value) in pairs {
            match key.as_str() {
                "table" => filter.tables.extend(list(value).map(Glob::new)),
                "action" => {
                    for code in list(value) {
                        let action = code.parse::<Action>().map_err(|_| {
                            BadFilter(format!("invalid action {code:?}: use I, U, D, T or R, comma-separated"))
                        })?;
                        filter.actions.push(action);
                    }
                }
                "pk" => filter.pk = Some(value.clone()),
                "columns" => filter.columns.extend(list(value).map(str::to_owned)),
                "granularity" => match value.as_str() {
                    "row" => filter.field_granularity = false,
                    "field" => filter.field_granularity = true,
                    other => return Err(BadFilter(format!("invalid granularity {other:?}: use row or field"))),
                },
                "last_event_id" => {}
                other => {
                    return Err(BadFilter(format!(
                    "unknown query parameter {other:?}: use table, action, pk, columns, granularity or last_event_id"
                )))
                }
            }
        }
        Ok(filter)
    }

    /// Whether the event is wanted.
    pub fn matches(&self, event: &Event) -> bool {
        if !self.tables.is_empty() && !self.tables.iter().any(|g| g.matches(&event.table_name)) {
            return false;
        }
        if !self.actions.is_empty() && !self.actions.contains(&event.action) {
            return false;
        }
        if let Some(pk) = &self.pk {
            if !pk_matches(&event.id, pk) {
                return false;
            }
        }
        if !self.columns.is_empty() {
            return event.action == Action::Update && self.columns.iter().any(|c| event.diff.contains_key(c));
        }
        true
    }

    /// The changed fields of an update as `field_update` payloads (only the filtered columns
    /// when `columns` is given); other actions give one payload per column of `diff`.
    pub fn field_updates(&self, event: &Event) -> Vec<Value> {
        event
            .diff
            .iter()
            .filter(|(column, _)| self.columns.is_empty() || self.columns.contains(column))
            .map(|(column, new)| {
                json!({
                    "table_name": event.table_name,
                    "id": event.id,
                    "column": column,
                    "old": event.old.get(column).cloned().unwrap_or(Value::Null),
                    "new": new,
                })
            })
            .collect()
    }
}

/// `pk=42` matches an id of 42 or "42"; a composite key is matched by its values joined with
/// commas in key order (`pk=1,x`).
fn pk_matches(id: &Value, wanted: &str) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match id {
        Value::Null => false,
        Value::Object(parts) => parts.values().map(text).collect::<Vec<_>>().join(",") == wanted,
        other => text(other) == wanted,
    }
}

/// The SSE event name of an action.
pub fn event_name(action: Action) -> &'static str {
    match action {
        Action::Insert => "insert",
        Action::Update => "update",
        Action::Delete => "delete",
        Action::Truncate => "truncate",
        Action::Read => "read",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(table: &str, action: &str, id: Value, diff: Value) -> Event {
        serde_json::from_value(json!({
            "table_name": table, "action": action, "old": {"score": 1}, "new": diff, "diff": diff, "id": id,
            "lsn": "0/1", "xid": 1, "commit_time": "2026-11-23T10:00:00Z", "seq": 0
        }))
        .unwrap()
    }

    fn filter(query: &[(&str, &str)]) -> Filter {
        Filter::from_query(&query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn filters_by_table_action_pk_and_columns() {
        let update = event("public.users", "U", json!(42), json!({"name": "A", "score": 2}));
        assert!(filter(&[]).matches(&update));
        assert!(filter(&[("table", "public.*"), ("table", "audit.log")]).matches(&update));
        assert!(!filter(&[("table", "audit.*")]).matches(&update));
        assert!(filter(&[("action", "I,U")]).matches(&update));
        assert!(!filter(&[("action", "D")]).matches(&update));
        assert!(filter(&[("pk", "42")]).matches(&update));
        assert!(!filter(&[("pk", "7")]).matches(&update));
        assert!(filter(&[("columns", "score,email")]).matches(&update));
        assert!(!filter(&[("columns", "email")]).matches(&update));
        let insert = event("public.users", "I", json!(1), json!({"score": 2}));
        assert!(!filter(&[("columns", "score")]).matches(&insert), "columns selects updates");
        let composite = event("public.pairs", "I", json!({"a": 1, "b": "x"}), json!({}));
        assert!(filter(&[("pk", "1,x")]).matches(&composite));
    }

    #[test]
    fn splits_an_update_into_field_events() {
        let update = event("public.users", "U", json!(42), json!({"name": "A", "score": 2}));
        let fields = filter(&[("granularity", "field")]).field_updates(&update);
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[1], json!({"table_name": "public.users", "id": 42, "column": "score", "old": 1, "new": 2}));
        assert_eq!(filter(&[("columns", "score")]).field_updates(&update).len(), 1);
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        let bad = |k: &str, v: &str| Filter::from_query(&[(k.to_string(), v.to_string())]).unwrap_err().0;
        assert!(bad("action", "X").contains("invalid action"));
        assert!(bad("granularity", "cell").contains("row or field"));
        assert!(bad("tables", "x").contains("unknown query parameter"));
    }
}
