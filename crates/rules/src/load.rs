//! Reads the rule tables into a [`RuleSet`], in one consistent snapshot.

use std::collections::HashMap;
use std::time::Duration;

use pgevents_event::Action;
use serde_json::{Map, Value};
use tokio_postgres::{Client, IsolationLevel, Row};

use crate::model::{ActionDef, ActionKind, Mode, RuleSet, WorkItem};
use pgevents_pg::PgError;

use crate::RulesError;

/// Work items, with whether their owner may (still) use their action.
const WORK_ITEMS: &str = "
    SELECT w.name, w.table_schema, w.table_name, w.trigger_actions, w.filter, w.work_item_query,
           w.action, w.mode, w.transaction_label, w.owner::text,
           a.owner::text AS action_owner, pgevents.has_rights_of(w.owner, a.owner) AS may_use_action
    FROM pgevents.work_item w
    JOIN pgevents.event_table t USING (table_schema, table_name)
    LEFT JOIN pgevents.action a ON a.name = w.action
    WHERE w.enabled AND t.enabled
    ORDER BY w.name";

const ACTIONS: &str = "
    SELECT name, kind, sql, http_method, url, headers, body_template, static_parameters,
           timeout_ms, max_attempts, backoff_ms, backoff_max_ms, owner::text
    FROM pgevents.action";

const SETTINGS: &str = "SELECT name, value FROM pgevents.setting";

/// The secrets granted to each action owner (directly, through a role it has the privileges
/// of, or to PUBLIC).
const SECRET_GRANTS: &str = "
    SELECT DISTINCT a.owner::text, g.secret
    FROM pgevents.action a
    JOIN pgevents.secret_grant g ON g.grantee = 'PUBLIC' OR pgevents.has_rights_of(a.owner, g.grantee)
    WHERE a.owner IS NOT NULL";

/// Why a rule without an owner does not run, and how to fix it.
pub fn ownerless(table: &str, name: &str) -> String {
    format!(
        "it has no owner (written before rules ran with their author's rights), so it does not run: the schema's owner reads it and gives it to the role whose rights it should run with: UPDATE pgevents.{table} SET owner = '<role>' WHERE name = '{}'",
        name.replace('\'', "''")
    )
}

fn pg_error(context: impl Into<String>, e: tokio_postgres::Error) -> RulesError {
    PgError::new(context, e).into()
}

fn invalid(what: String, reason: impl Into<String>) -> RulesError {
    RulesError::InvalidRule { what, reason: reason.into() }
}

fn work_item(row: &Row) -> Result<WorkItem, RulesError> {
    let get = |e| pg_error("cannot read pgevents.work_item", e);
    let name: String = row.try_get("name").map_err(get)?;
    let schema: String = row.try_get("table_schema").map_err(get)?;
    let table: String = row.try_get("table_name").map_err(get)?;
    let codes: Vec<String> = row.try_get("trigger_actions").map_err(get)?;
    let trigger_actions = codes
        .iter()
        .map(|code| code.parse::<Action>().map_err(|e| invalid(format!("work item {name:?}"), e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let mode = match row.try_get::<_, String>("mode").map_err(get)?.as_str() {
        "async" => Mode::Async,
        _ => Mode::Sync,
    };
    let owner: Option<String> = row.try_get("owner").map_err(get)?;
    let action: String = row.try_get("action").map_err(get)?;
    let problem = match (&owner, row.try_get::<_, Option<bool>>("may_use_action").map_err(get)?) {
        (None, _) => Some(ownerless("work_item", &name)),
        (Some(_), Some(true)) => None,
        (Some(owner), _) => {
            let action_owner: Option<String> = row.try_get("action_owner").map_err(get)?;
            Some(format!(
                "its owner {owner:?} may not use action {action:?} of owner {:?}: a work item runs the actions of its own owner, or of a role whose privileges its owner has",
                action_owner.unwrap_or_default()
            ))
        }
    };
    Ok(WorkItem {
        table: pgevents_event::routing_key(&schema, &table),
        owner,
        problem,
        trigger_actions,
        filter: row.try_get("filter").map_err(get)?,
        query: row.try_get("work_item_query").map_err(get)?,
        action,
        mode,
        transaction_label: row.try_get("transaction_label").map_err(get)?,
        name,
    })
}

fn millis(row: &Row, column: &str) -> Result<Duration, RulesError> {
    let ms: i32 = row.try_get(column).map_err(|e| pg_error("cannot read pgevents.action", e))?;
    Ok(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn action(row: &Row) -> Result<ActionDef, RulesError> {
    let get = |e| pg_error("cannot read pgevents.action", e);
    let name: String = row.try_get("name").map_err(get)?;
    let kind = match row.try_get::<_, String>("kind").map_err(get)?.as_str() {
        "sql" => ActionKind::Sql {
            statement: row
                .try_get::<_, Option<String>>("sql")
                .map_err(get)?
                .ok_or_else(|| invalid(format!("action {name:?}"), "kind sql without sql"))?,
        },
        _ => ActionKind::Http {
            method: row.try_get("http_method").map_err(get)?,
            url: row
                .try_get::<_, Option<String>>("url")
                .map_err(get)?
                .ok_or_else(|| invalid(format!("action {name:?}"), "kind http without url"))?,
            headers: object(row.try_get("headers").map_err(get)?),
            body_template: row.try_get("body_template").map_err(get)?,
        },
    };
    let max_attempts: i32 = row.try_get("max_attempts").map_err(get)?;
    let owner: Option<String> = row.try_get("owner").map_err(get)?;
    Ok(ActionDef {
        problem: owner.is_none().then(|| ownerless("action", &name)),
        owner,
        static_parameters: object(row.try_get("static_parameters").map_err(get)?),
        timeout: millis(row, "timeout_ms")?,
        max_attempts: u32::try_from(max_attempts).unwrap_or(1).max(1),
        backoff: millis(row, "backoff_ms")?,
        backoff_max: millis(row, "backoff_max_ms")?,
        kind,
        name,
    })
}

/// Reads every enabled work item, every action and every setting.
pub async fn load(client: &mut Client) -> Result<RuleSet, RulesError> {
    crate::schema::require_installed(client).await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| pg_error("cannot read the rules", e))?;
    let read = |what: &'static str| move |e| pg_error(format!("cannot read {what}"), e);
    let work_items = tx.query(WORK_ITEMS, &[]).await.map_err(read("pgevents.work_item"))?;
    let actions = tx.query(ACTIONS, &[]).await.map_err(read("pgevents.action"))?;
    let settings = tx.query(SETTINGS, &[]).await.map_err(read("pgevents.setting"))?;
    let grants = tx.query(SECRET_GRANTS, &[]).await.map_err(read("pgevents.secret_grant"))?;
    tx.commit().await.map_err(read("the rules"))?;
    let grants = grants
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<(String, String)>, tokio_postgres::Error>>()
        .map_err(read("pgevents.secret_grant"))?;
    let settings = settings
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<HashMap<String, String>, tokio_postgres::Error>>()
        .map_err(read("pgevents.setting"))?;
    Ok(RuleSet::new(
        work_items.iter().map(work_item).collect::<Result<_, _>>()?,
        actions.iter().map(action).collect::<Result<_, _>>()?,
        settings,
    )
    .with_secret_grants(grants))
}
