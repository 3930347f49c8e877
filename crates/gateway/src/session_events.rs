//! What a session's subscriptions make of one event (Aquameta's granularities):
//!
//! | subscription | events it produces |
//! | --- | --- |
//! | table | `row_insert`, `row_delete`, `field_update` |
//! | row (table, pk) | `field_update`, `row_delete` |
//! | column (table, column) | `field_update` (of that column), `row_delete`, `row_insert` |
//! | field (table, pk, column) | `field_update` (of that column), `row_delete` |
//!
//! Subscriptions that overlap produce each event once. `field_update` carries the table, the
//! key, the column and its old and new values (the old one when the table's replica identity
//! sends it, else null); `row_insert` the row; `row_delete` the key and the old row as far as it
//! is known. Other events (truncate, snapshot reads) produce nothing. Rows and fields hold only
//! the columns the session's owner may read (column privileges).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pgevents_event::Action;
use serde_json::{json, Map, Value};

use crate::frame::EventFrame;
use crate::sse;

/// The granularity of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Table,
    Row,
    Column,
    Field,
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(kind: &str) -> Result<Kind, String> {
        Ok(match kind {
            "table" => Kind::Table,
            "row" => Kind::Row,
            "column" => Kind::Column,
            "field" => Kind::Field,
            other => return Err(format!("unknown subscription kind {other:?}")),
        })
    }
}

/// One row of `pgevents.subscription`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSubscription {
    pub kind: Kind,
    /// `schema.table`.
    pub table: String,
    /// Row and field: the key's values in key order, joined with commas (as events' keys are
    /// compared).
    pub pk: Option<String>,
    /// Column and field.
    pub column: Option<String>,
    /// The columns the session's owner may read; `None`: all of them.
    pub readable: Option<Arc<[String]>>,
}

impl SessionSubscription {
    /// Whether it covers the event's row (kinds without a key cover every row).
    fn covers_row(&self, frame: &EventFrame) -> bool {
        self.pk.is_none() || self.pk == frame.pk
    }

    /// Whether it covers a change of `column` of the event's row.
    fn covers_field(&self, frame: &EventFrame, column: &str) -> bool {
        self.covers_row(frame) && self.column.as_deref().is_none_or(|c| c == column) && self.may_read(column)
    }

    fn may_read(&self, column: &str) -> bool {
        self.readable.as_ref().is_none_or(|readable| readable.iter().any(|c| c == column))
    }

    /// `row` with the columns the owner may read.
    fn visible(&self, row: &Map<String, Value>) -> Value {
        match &self.readable {
            None => Value::Object(row.clone()),
            Some(_) => Value::Object(
                row.iter().filter(|(c, _)| self.may_read(c)).map(|(c, v)| (c.clone(), v.clone())).collect(),
            ),
        }
    }
}

/// The SSE bytes of `frame` for a session with `subscriptions`; `None` when they produce
/// nothing. Of several events, the last carries the id, so a client resuming from it has seen
/// all of them.
pub fn render(subscriptions: &[SessionSubscription], frame: &EventFrame, offset: i64) -> Option<Bytes> {
    let event = &frame.event;
    let on_table: Vec<&SessionSubscription> = subscriptions.iter().filter(|s| s.table == event.table_name).collect();
    if on_table.is_empty() {
        return None;
    }
    let key = || event.id.clone();
    // Every subscription of a session has its owner's privileges: the first one's will do.
    let owner_view = on_table[0];
    let events: Vec<(&str, Value)> = match event.action {
        Action::Insert if on_table.iter().any(|s| matches!(s.kind, Kind::Table | Kind::Column)) => {
            vec![("row_insert", json!({"table": event.table_name, "pk": key(), "row": owner_view.visible(&event.new)}))]
        }
        Action::Delete if on_table.iter().any(|s| s.covers_row(frame)) => {
            vec![("row_delete", json!({"table": event.table_name, "pk": key(), "row": owner_view.visible(&event.old)}))]
        }
        Action::Update => event
            .diff
            .iter()
            .filter(|(column, _)| on_table.iter().any(|s| s.covers_field(frame, column)))
            .map(|(column, new)| {
                let old = event.old.get(column).cloned().unwrap_or(Value::Null);
                let field = json!({"table": event.table_name, "pk": key(), "column": column, "old": old, "new": new});
                ("field_update", field)
            })
            .collect(),
        _ => Vec::new(),
    };
    if events.is_empty() {
        return None;
    }
    let last = events.len() - 1;
    let mut out = BytesMut::new();
    for (i, (name, data)) in events.iter().enumerate() {
        out.extend_from_slice(&sse::event((i == last).then_some(offset), name, data.to_string().as_bytes()));
    }
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(action: &str, old: Value, new: Value, diff: Value) -> EventFrame {
        let body = json!({
            "table_name": "public.person", "action": action, "old": old, "new": new, "diff": diff,
            "id": {"id": 1}, "lsn": "0/1", "xid": 1, "commit_time": "2026-11-23T10:00:00Z", "seq": 0
        });
        EventFrame::from_body(body.to_string().as_bytes(), 5).unwrap()
    }

    fn sub(kind: Kind, pk: Option<&str>, column: Option<&str>) -> SessionSubscription {
        SessionSubscription {
            kind,
            table: "public.person".into(),
            pk: pk.map(str::to_owned),
            column: column.map(str::to_owned),
            readable: None,
        }
    }

    /// The event names each subscription gets for an insert, an update of two columns and a
    /// delete of row 1.
    fn names(subscriptions: &[SessionSubscription]) -> Vec<String> {
        let changes = [
            frame("I", json!({}), json!({"id": 1, "name": "A", "age": 1}), json!({"id": 1, "name": "A", "age": 1})),
            frame(
                "U",
                json!({"id": 1, "name": "A", "age": 1}),
                json!({"id": 1, "name": "B", "age": 2}),
                json!({"name": "B", "age": 2}),
            ),
            frame("D", json!({"id": 1, "name": "B", "age": 2}), json!({}), json!({})),
        ];
        changes
            .iter()
            .filter_map(|f| render(subscriptions, f, 5))
            .flat_map(|bytes| {
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .filter_map(|l| l.strip_prefix("event: ").map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn each_granularity_produces_its_events() {
        assert_eq!(
            names(&[sub(Kind::Table, None, None)]),
            ["row_insert", "field_update", "field_update", "row_delete"]
        );
        assert_eq!(names(&[sub(Kind::Row, Some("1"), None)]), ["field_update", "field_update", "row_delete"]);
        assert_eq!(names(&[sub(Kind::Column, None, Some("name"))]), ["row_insert", "field_update", "row_delete"]);
        assert_eq!(names(&[sub(Kind::Field, Some("1"), Some("name"))]), ["field_update", "row_delete"]);
        assert!(names(&[sub(Kind::Row, Some("2"), None)]).is_empty(), "another row");
        // Overlapping subscriptions: each event once.
        let both = [sub(Kind::Table, None, None), sub(Kind::Field, Some("1"), Some("name"))];
        assert_eq!(names(&both), ["row_insert", "field_update", "field_update", "row_delete"]);
    }

    #[test]
    fn only_the_columns_the_owner_may_read_are_sent() {
        let mut table = sub(Kind::Table, None, None);
        table.readable = Some(Arc::from(vec!["id".to_owned(), "name".to_owned()]));
        let insert = frame("I", json!({}), json!({"id": 1, "name": "A", "age": 1}), json!({}));
        let text = String::from_utf8(render(&[table.clone()], &insert, 1).unwrap().to_vec()).unwrap();
        assert!(text.contains(r#""row":{"id":1,"name":"A"}"#), "{text}");
        let update = frame(
            "U",
            json!({"id": 1, "name": "A", "age": 1}),
            json!({"id": 1, "name": "B", "age": 2}),
            json!({"name": "B", "age": 2}),
        );
        let text = String::from_utf8(render(&[table.clone()], &update, 2).unwrap().to_vec()).unwrap();
        assert!(text.contains(r#""column":"name""#) && !text.contains("age"), "{text}");
        let age_only = frame("U", json!({"id": 1, "age": 1}), json!({"id": 1, "age": 2}), json!({"age": 2}));
        assert!(render(&[table.clone()], &age_only, 3).is_none(), "a change of an unreadable column sends nothing");
        let delete = frame("D", json!({"id": 1, "name": "B", "age": 2}), json!({}), json!({}));
        let text = String::from_utf8(render(&[table], &delete, 4).unwrap().to_vec()).unwrap();
        assert!(!text.contains("age"), "{text}");
    }

    #[test]
    fn field_updates_carry_table_key_column_and_values() {
        let update = frame("U", json!({"id": 1, "name": "A"}), json!({"id": 1, "name": "B"}), json!({"name": "B"}));
        let text = String::from_utf8(render(&[sub(Kind::Table, None, None)], &update, 9).unwrap().to_vec()).unwrap();
        assert!(
            text.contains(r#"data: {"column":"name","new":"B","old":"A","pk":{"id":1},"table":"public.person"}"#),
            "{text}"
        );
        assert!(text.contains("id: 9"), "{text}");
    }
}
