//! Rows addressed to one subscriber (`--subscriber-column`): in tables that have the column,
//! a row goes only to the subscriber whose id (the consumer id on `/events`, the session id on
//! `/sessions/{id}/events`) equals the column's value, in live and replayed events alike; a row
//! whose value is null goes to nobody. The setting is `column` for every table, or
//! `table-glob=column` per table (the first matching rule wins).

use pgevents_event::{Action, Event, Glob};
use serde_json::Value;

use crate::frame::value_text;

/// The subscriber-column rules.
#[derive(Debug, Clone, Default)]
pub struct Addressing {
    rules: Vec<(Glob, String)>,
}

/// A `--subscriber-column` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --subscriber-column {0:?}: use a column name, or table-glob=column (public.events=recipient)")]
pub struct BadSubscriberColumn(pub String);

impl Addressing {
    /// From `--subscriber-column` items.
    pub fn parse(items: &[String]) -> Result<Addressing, BadSubscriberColumn> {
        let mut rules = Vec::new();
        for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
            let (table, column) = item.split_once('=').unwrap_or(("*", item));
            let (table, column) = (table.trim(), column.trim());
            if table.is_empty() || column.is_empty() || column.contains(['=', ',']) {
                return Err(BadSubscriberColumn(item.to_owned()));
            }
            rules.push((Glob::new(table), column.to_owned()));
        }
        Ok(Addressing { rules })
    }

    /// Whether any rule is set.
    pub fn is_active(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The column that addresses the rows of `table`, if one does.
    pub fn column_for(&self, table: &str) -> Option<&str> {
        self.rules.iter().find(|(glob, _)| glob.matches(table)).map(|(_, column)| column.as_str())
    }

    /// Whether `event` may go to `subscriber`.
    pub fn allows(&self, event: &Event, subscriber: &str) -> bool {
        let Some(column) = self.column_for(&event.table_name) else {
            return true;
        };
        let row = match event.action {
            Action::Delete => &event.old,
            Action::Insert | Action::Update | Action::Read => &event.new,
            // No row: nothing to address.
            Action::Truncate => return true,
        };
        match row.get(column) {
            // A full new row without the column: the table has none.
            None if event.action != Action::Delete => true,
            // The old row of a delete holds only the key: whose row it was is unknown.
            None => false,
            Some(Value::Null) => false,
            Some(value) => value_text(value) == subscriber,
        }
    }
}

/// Every table with its columns and whether its replica identity is FULL.
const TABLES: &str = "
    SELECT n.nspname || '.' || c.relname, c.relreplident = 'f', array_agg(a.attname::text)
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgevents')
      AND n.nspname NOT LIKE 'pg\\_%'
    GROUP BY 1, 2
    ORDER BY 1";

/// The tables whose rows `items` (`--subscriber-column`) address but whose deletes cannot say
/// whose row it was (their replica identity is not FULL, so a delete's old row holds only the
/// key): those deletes reach nobody. For `pgevents check`.
pub async fn tables_needing_full_identity(
    client: &tokio_postgres::Client,
    items: &[String],
) -> Result<Vec<String>, AddressingReviewError> {
    let addressing = Addressing::parse(items)?;
    if !addressing.is_active() {
        return Ok(Vec::new());
    }
    let rows = client.query(TABLES, &[]).await.map_err(|e| pgevents_pg::PgError::new("cannot read the tables", e))?;
    let mut out = Vec::new();
    for row in rows {
        let (table, full, columns): (String, bool, Vec<String>) = (row.get(0), row.get(1), row.get(2));
        let addressed = addressing.column_for(&table).is_some_and(|column| columns.iter().any(|c| c == column));
        if addressed && !full {
            out.push(table);
        }
    }
    Ok(out)
}

/// Why the addressing could not be reviewed.
#[derive(Debug, thiserror::Error)]
pub enum AddressingReviewError {
    #[error(transparent)]
    Setting(#[from] BadSubscriberColumn),
    #[error(transparent)]
    Postgres(#[from] pgevents_pg::PgError),
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(table: &str, action: &str, row: Value) -> Event {
        let (old, new) = if action == "D" { (row, json!({})) } else { (json!({}), row) };
        serde_json::from_value(json!({
            "table_name": table, "action": action, "old": old, "new": new, "diff": {}, "id": null,
            "lsn": "0/1", "xid": 1, "commit_time": "2026-11-23T10:00:00Z", "seq": 0
        }))
        .unwrap()
    }

    #[test]
    fn rows_go_only_to_the_subscriber_they_name() {
        let global = Addressing::parse(&["subscriber".into()]).unwrap();
        let mail = event("public.messages", "I", json!({"id": 1, "subscriber": "ann"}));
        assert!(global.allows(&mail, "ann"));
        assert!(!global.allows(&mail, "bob"));
        let deleted = event("public.messages", "D", json!({"id": 1, "subscriber": "ann"}));
        assert!(global.allows(&deleted, "ann") && !global.allows(&deleted, "bob"), "deletes by the old row");
        assert!(!global.allows(&event("public.messages", "I", json!({"subscriber": null})), "ann"), "null: nobody");
        assert!(global.allows(&event("public.other", "I", json!({"id": 1})), "bob"), "tables without the column");
        let key_only = event("public.messages", "D", json!({"id": 1}));
        assert!(
            !global.allows(&key_only, "ann") && !global.allows(&key_only, "bob"),
            "a delete of unknown owner: nobody"
        );
        let numeric = event("public.messages", "I", json!({"subscriber": 7}));
        assert!(global.allows(&numeric, "7"));

        let per_table = Addressing::parse(&["public.inbox=recipient".into(), "subscriber".into()]).unwrap();
        let inbox = event("public.inbox", "I", json!({"recipient": "ann", "subscriber": "bob"}));
        assert!(per_table.allows(&inbox, "ann") && !per_table.allows(&inbox, "bob"), "the first matching rule wins");
        assert!(Addressing::parse(&["=x".into()]).is_err());
        assert!(Addressing::parse(&["t=".into()]).is_err());
    }
}
