//! Whether a rule's owner may see an event: the event is data of its table, so a rule whose owner
//! may not read the columns the event carries (or on whose table row-level security applies to
//! it) never gets it. Asked of the database (`pgevents.event_access`) with the worker's own
//! connection, before any of the owner's text sees the event.
//!
//! A yes is kept for a while ([`AccessVerdicts`], `--access-recheck-ms`): asking costs more
//! database time than the rule itself, and most events of a table carry the same columns. A no
//! is never kept (the next event asks again), nor is a yes older than the recheck interval, so
//! a privilege revoked is honoured from the next event after that interval, as `pgevents serve`
//! honours one at its next reload of the sessions.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use pgevents_pg::{PgError, Pool};
use serde_json::Value;
use tokio_postgres::types::Type;

/// Counter by `source` (`database`, `kept`): answers to "may this owner see this event".
pub const ACCESS_CHECKS: &str = "pgevents_worker_access_checks_total";

/// Yeses kept at most; past it, the expired go, then (all still fresh) all of them.
const KEPT_MOST: usize = 4096;

/// Who, which table, which columns.
type Question = (String, String, Vec<String>);

/// The database's recent yeses to "may `owner` see an event of `table` carrying `columns`".
pub struct AccessVerdicts {
    recheck: Duration,
    granted: Mutex<Granted>,
}

/// The yeses, and how many times they were all forgotten (a yes asked for before the last
/// time is not kept).
#[derive(Default)]
struct Granted {
    at: HashMap<Question, Instant>,
    forgotten: u64,
}

impl AccessVerdicts {
    /// Keeps a yes for `recheck` (zero: asks for every event).
    pub fn new(recheck: Duration) -> AccessVerdicts {
        AccessVerdicts { recheck, granted: Mutex::default() }
    }

    /// Why `owner` may not receive an event of `table` carrying `columns` (sorted); `None`
    /// when it may. Asks the database with a connection of `pool` unless a yes younger than
    /// the recheck interval is kept.
    pub async fn refusal(
        &self,
        pool: &Pool,
        owner: &str,
        table: &str,
        columns: Vec<String>,
    ) -> Result<Option<String>, PgError> {
        let question = (owner.to_owned(), table.to_owned(), columns);
        if self.fresh(&question) {
            metrics::counter!(ACCESS_CHECKS, "source" => "kept").increment(1);
            return Ok(None);
        }
        metrics::counter!(ACCESS_CHECKS, "source" => "database").increment(1);
        let client = pool.get().await?;
        let (asked_at, forgotten) = (Instant::now(), self.lock().forgotten);
        let refusal = event_refusal(&client, owner, table, &question.2).await?;
        if refusal.is_none() && !self.recheck.is_zero() {
            self.keep(question, asked_at, forgotten);
        }
        Ok(refusal)
    }

    /// Forgets every yes (the rules changed: their owners may have too).
    pub fn forget(&self) {
        let mut granted = self.lock();
        granted.at.clear();
        granted.forgotten += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Granted> {
        self.granted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fresh(&self, question: &Question) -> bool {
        self.lock().at.get(question).is_some_and(|at| at.elapsed() < self.recheck)
    }

    /// Keeps a yes asked for at `asked_at`, unless everything was forgotten since.
    fn keep(&self, question: Question, asked_at: Instant, forgotten: u64) {
        let mut granted = self.lock();
        if granted.forgotten != forgotten {
            return;
        }
        if granted.at.len() >= KEPT_MOST {
            let recheck = self.recheck;
            granted.at.retain(|_, at| at.elapsed() < recheck);
            if granted.at.len() >= KEPT_MOST {
                granted.at.clear();
            }
        }
        granted.at.insert(question, asked_at);
    }
}

/// The columns an event carries (of its new and old rows), sorted, from its JSON.
pub fn carried_columns(event: &Value) -> Vec<String> {
    let rows = ["new", "old"].iter().filter_map(|row| event.get(*row)?.as_object());
    columns_of(rows)
}

/// The columns of `rows` (an event's new and old rows), sorted, each once: the column list
/// [`AccessVerdicts::refusal`] asks about.
pub fn columns_of<'a>(rows: impl IntoIterator<Item = &'a serde_json::Map<String, Value>>) -> Vec<String> {
    let mut columns: Vec<String> = rows.into_iter().flat_map(|row| row.keys().cloned()).collect();
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
