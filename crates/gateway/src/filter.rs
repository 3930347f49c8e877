//! What a subscriber asked for, from the query string: `table` (repeatable, globs), `action`
//! (`I,U`), `pk` (one row), `columns` (only updates that changed one of them) and
//! `granularity=field` (updates as one `field_update` event per changed column; inserts,
//! deletes and the rest stay row events).

use bytes::{Bytes, BytesMut};
use pgevents_event::{Action, Glob};
use serde_json::{json, Value};

use crate::frame::EventFrame;
use crate::sse;

/// Query parameters that are not filters.
pub const CONSUMER_ID: &str = "consumer_id";
pub const ACCESS_TOKEN: &str = "access_token";
pub const LAST_EVENT_ID: &str = "last_event_id";

/// A subscriber's filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The `table=` patterns as given (empty: every table the subscriber may read).
    pub tables: Vec<String>,
    table_globs: Vec<Glob>,
    actions: Vec<Action>,
    pk: Option<String>,
    columns: Vec<String>,
    granularity: Granularity,
}

/// Row events, or one event per changed field of an update.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Granularity {
    #[default]
    Row,
    Field,
}

/// A query parameter that cannot be understood; the response is 400 with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadFilter(pub String);

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty())
}

impl Filter {
    /// Builds a filter from query pairs. Unknown keys are errors, and so are more than
    /// `max_filters` values (tables, actions, columns and the pk together).
    pub fn from_query(pairs: &[(String, String)], max_filters: usize) -> Result<Filter, BadFilter> {
        let mut filter = Filter::default();
        for (key, value) in pairs {
            match key.as_str() {
                "table" => filter.tables.extend(list(value).map(str::to_owned)),
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
                "granularity" => {
                    filter.granularity = match value.as_str() {
                        "row" => Granularity::Row,
                        "field" => Granularity::Field,
                        other => return Err(BadFilter(format!("invalid granularity {other:?}: use row or field"))),
                    }
                }
                CONSUMER_ID | ACCESS_TOKEN | LAST_EVENT_ID => {}
                other => {
                    return Err(BadFilter(format!(
                        "unknown query parameter {other:?}: use table, action, pk, columns, granularity, consumer_id, access_token or last_event_id"
                    )))
                }
            }
        }
        let count =
            filter.tables.len() + filter.actions.len() + filter.columns.len() + usize::from(filter.pk.is_some());
        if count > max_filters {
            return Err(BadFilter(format!(
                "too many filters ({count}): at most {max_filters} tables, actions, columns and pk values together (--max-filters)"
            )));
        }
        filter.table_globs = filter.tables.iter().map(|t| Glob::new(t)).collect();
        Ok(filter)
    }

    /// Whether the event is wanted.
    pub fn matches(&self, frame: &EventFrame) -> bool {
        let event = &frame.event;
        if !self.table_globs.is_empty() && !self.table_globs.iter().any(|g| g.matches(&event.table_name)) {
            return false;
        }
        if !self.actions.is_empty() && !self.actions.contains(&event.action) {
            return false;
        }
        if self.pk.is_some() && frame.pk != self.pk {
            return false;
        }
        if !self.columns.is_empty() {
            return event.action == Action::Update && self.columns.iter().any(|c| event.diff.contains_key(c));
        }
        true
    }

    /// The SSE bytes of a wanted event: the shared row frame, or for an update at field
    /// granularity one `field_update` event per changed column (the last one carries the id,
    /// so a client resuming from it has seen all of them).
    pub fn render(&self, frame: &EventFrame, offset: i64) -> Bytes {
        if self.granularity == Granularity::Row || frame.event.action != Action::Update {
            return frame.sse.clone();
        }
        let fields = self.field_updates(frame);
        let last = fields.len().saturating_sub(1);
        let mut out = BytesMut::new();
        for (i, field) in fields.iter().enumerate() {
            let id = (i == last).then_some(offset);
            out.extend_from_slice(&sse::event(id, "field_update", field.to_string().as_bytes()));
        }
        out.freeze()
    }

    /// The changed fields of an update (only the filtered columns when `columns` is given).
    fn field_updates(&self, frame: &EventFrame) -> Vec<Value> {
        let event = &frame.event;
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use pgevents_event::Event;

    use super::*;

    fn frame(table: &str, action: &str, id: Value, pk: Option<&str>, diff: Value) -> EventFrame {
        let event: Event = serde_json::from_value(json!({
            "table_name": table, "action": action, "old": {"score": 1}, "new": diff, "diff": diff, "id": id,
            "lsn": "0/1", "xid": 1, "commit_time": "2026-11-23T10:00:00Z", "seq": 0
        }))
        .unwrap();
        EventFrame { event, pk: pk.map(str::to_owned), sse: Bytes::from_static(b"row\n\n") }
    }

    fn filter(query: &[(&str, &str)]) -> Filter {
        let pairs: Vec<_> = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Filter::from_query(&pairs, 64).unwrap()
    }

    #[test]
    fn filters_by_table_action_pk_and_columns() {
        let update = frame("public.users", "U", json!(42), Some("42"), json!({"name": "A", "score": 2}));
        assert!(filter(&[]).matches(&update));
        assert!(filter(&[("table", "public.*"), ("table", "audit.log")]).matches(&update));
        assert!(!filter(&[("table", "audit.*")]).matches(&update));
        assert!(filter(&[("action", "I,U")]).matches(&update));
        assert!(!filter(&[("action", "D")]).matches(&update));
        assert!(filter(&[("pk", "42")]).matches(&update));
        assert!(!filter(&[("pk", "7")]).matches(&update));
        assert!(filter(&[("columns", "score,email")]).matches(&update));
        assert!(!filter(&[("columns", "email")]).matches(&update));
        let insert = frame("public.users", "I", json!(1), Some("1"), json!({"score": 2}));
        assert!(!filter(&[("columns", "score")]).matches(&insert), "columns selects updates");
        let composite = frame("public.pairs", "I", json!({"b": 1, "a": "x"}), Some("1,x"), json!({}));
        assert!(filter(&[("pk", "1,x")]).matches(&composite));
        assert!(!filter(&[("pk", "x,1")]).matches(&composite));
    }

    #[test]
    fn field_granularity_splits_updates_only() {
        let update = frame("public.users", "U", json!(42), Some("42"), json!({"name": "A", "score": 2}));
        let fields = filter(&[("granularity", "field")]);
        let text = String::from_utf8(fields.render(&update, 9).to_vec()).unwrap();
        assert_eq!(text.matches("event: field_update").count(), 2);
        assert!(
            text.contains(r#"data: {"column":"score","id":42,"new":2,"old":1,"table_name":"public.users"}"#),
            "{text}"
        );
        assert_eq!(text.matches("id: 9").count(), 1, "the last field event carries the id");
        let only_score = filter(&[("granularity", "field"), ("columns", "score")]);
        assert_eq!(
            String::from_utf8(only_score.render(&update, 9).to_vec()).unwrap().matches("field_update").count(),
            1
        );
        for action in ["I", "D", "T", "R"] {
            let row = frame("public.users", action, json!(42), Some("42"), json!({"name": "A"}));
            assert_eq!(&fields.render(&row, 9)[..], b"row\n\n", "{action} stays a row event");
        }
    }

    #[test]
    fn rejects_what_it_does_not_understand_and_too_many_filters() {
        let bad = |k: &str, v: &str| Filter::from_query(&[(k.to_string(), v.to_string())], 64).unwrap_err().0;
        assert!(bad("action", "X").contains("invalid action"));
        assert!(bad("granularity", "cell").contains("row or field"));
        assert!(bad("tables", "x").contains("unknown query parameter"));
        let many = (0..10).map(|i| format!("t{i}")).collect::<Vec<_>>().join(",");
        let err = Filter::from_query(&[("table".into(), many)], 5).unwrap_err().0;
        assert!(err.contains("too many filters (10)") && err.contains("--max-filters"), "{err}");
    }
}
