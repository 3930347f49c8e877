//! The statements a rule's text becomes, and checking them without running them.
//!
//! A filter is an expression over `$1` (the event, jsonb), run as `SELECT (<filter>)::boolean`;
//! a `work_item_query` a query over `$1` whose `parameters` column is read, run as `SELECT
//! q.parameters::jsonb FROM (<query>) AS q`; an SQL action one statement over `$1` (parameters)
//! and `$2` (the event). Each is checked by PostgreSQL's parser through the extended protocol
//! (Parse and Describe, in the owner's session so names resolve as the owner's): one statement
//! only (the protocol refuses more), with the result the worker reads (one boolean, or one
//! jsonb). Nothing is executed, and nothing is assembled from the text inside the database.

use pgevents_pg::describe;
use tokio_postgres::types::Type;

/// What a rule's text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Filter,
    Query,
    SqlAction,
}

impl Shape {
    /// The statement the worker prepares for `text`.
    pub fn statement(self, text: &str) -> String {
        match self {
            Shape::Filter => format!("SELECT ({text})::boolean"),
            Shape::Query => format!("SELECT q.parameters::jsonb FROM ({text}) AS q"),
            Shape::SqlAction => text.to_owned(),
        }
    }

    /// The types of its parameters.
    pub fn parameters(self) -> &'static [Type] {
        match self {
            Shape::Filter | Shape::Query => &[Type::JSONB],
            Shape::SqlAction => &[Type::JSONB, Type::JSONB],
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Shape::Filter => "filter",
            Shape::Query => "work_item_query (a query over $1 with a jsonb column \"parameters\")",
            Shape::SqlAction => "sql",
        }
    }
}

/// Why text cannot be a rule's statement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// PostgreSQL refuses it (syntax, unknown names, more than one statement, ...).
    #[error("invalid {what}: {reason}; the statement was: {statement}")]
    Refused { what: &'static str, reason: String, statement: String },
    /// It parses, but does not give what the worker reads.
    #[error("invalid {what}: it must return {expected}, not {found}; the statement was: {statement}")]
    Result { what: &'static str, expected: &'static str, found: String, statement: String },
}

/// A failure that says nothing about the text (the connection failed): try again later.
#[derive(Debug, thiserror::Error)]
#[error("cannot check a rule now: {0}")]
pub struct Unchecked(pub String);

/// Parses `text` as `shape` in `client`'s session without running it.
pub async fn check(
    client: &tokio_postgres::Client,
    shape: Shape,
    text: &str,
) -> Result<Result<(), Invalid>, Unchecked> {
    let statement = shape.statement(text);
    let prepared = match client.prepare_typed(&statement, shape.parameters()).await {
        Ok(prepared) => prepared,
        Err(e) if e.as_db_error().is_some() => {
            let what = shape.describe();
            return Ok(Err(Invalid::Refused { what, reason: describe(&e), statement }));
        }
        Err(e) => return Err(Unchecked(describe(&e))),
    };
    let columns: Vec<&Type> = prepared.columns().iter().map(|c| c.type_()).collect();
    let expected = match shape {
        Shape::Filter => Some((Type::BOOL, "one boolean")),
        Shape::Query => Some((Type::JSONB, "one jsonb column")),
        Shape::SqlAction => None,
    };
    Ok(match expected {
        Some((wanted, expected)) if columns.len() != 1 || *columns[0] != wanted => Err(Invalid::Result {
            what: shape.describe(),
            expected,
            found: format!(
                "{} column(s) of type {:?}",
                columns.len(),
                columns.iter().map(|t| t.name()).collect::<Vec<_>>()
            ),
            statement,
        }),
        _ => Ok(()),
    })
}
