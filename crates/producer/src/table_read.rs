//! Reading a table's rows as the producer publishes them: its columns and key (looked up once),
//! the batch statement (in key order, the last key bound as text and cast only to PostgreSQL's
//! own types, every value read through its type's output function), and a row as an `R` change.
//! Used by the snapshot; nothing here publishes.

use std::sync::Arc;

use pgevents_decode::value::write_value;
use pgevents_decode::{Catalog, CatalogNeed, PrimaryKey, RowChange, TableRef, Tuple, ValueKind, ValueOptions};
use pgevents_event::Action;

use crate::database::{quote_ident, Database};
use crate::error::{pg_error, ProducerError};
use crate::routing::Route;

/// A table's columns as they are read.
pub struct Columns {
    pub names: Vec<String>,
    /// The types as SQL spells them (to cast the bound key values).
    pub types: Vec<String>,
    /// Whether every key column is of a type PostgreSQL itself defines (see [`Paging`]).
    pub builtin_keys: bool,
    pub kinds: Vec<ValueKind>,
    /// Positions of the primary key columns in `names`, in key order.
    pub key_positions: Vec<usize>,
    pub primary_key: Arc<PrimaryKey>,
}

/// The types and keys of the tables read, looked up once.
#[derive(Default)]
pub struct TableCatalog {
    catalog: Catalog,
}

impl TableCatalog {
    async fn kind(&mut self, db: &Database, oid: u32) -> Result<ValueKind, ProducerError> {
        for _ in 0..16 {
            match self.catalog.type_kind(oid) {
                Ok(kind) => return Ok(kind),
                Err(CatalogNeed::Type(missing)) => {
                    let infos = db.types(&[missing]).await?;
                    self.catalog.insert_types(infos);
                }
                Err(CatalogNeed::PrimaryKey(_)) => break,
            }
        }
        Err(ProducerError::Protocol(format!("cannot resolve the type of OID {oid}")))
    }

    /// The columns of `table` as `reader` (in the transaction it reads in) sees them; types and
    /// keys are looked up on `db`.
    pub async fn columns(
        &mut self,
        db: &Database,
        reader: &Database,
        table: &TableRef,
    ) -> Result<Columns, ProducerError> {
        let infos = reader.columns(table).await?;
        let mut kinds = Vec::with_capacity(infos.len());
        for info in &infos {
            kinds.push(self.kind(db, info.type_oid).await?);
        }
        let oids: Vec<u32> = infos.iter().map(|c| c.type_oid).collect();
        let (names, types): (Vec<String>, Vec<String>) = infos.into_iter().map(|c| (c.name, c.type_sql)).unzip();
        let primary_key = db.primary_key(table).await?;
        let key_positions =
            primary_key.columns().iter().filter_map(|k| names.iter().position(|n| n == k)).collect::<Vec<_>>();
        let builtin_keys = key_positions.iter().all(|&i| oids[i] < FIRST_NORMAL_OID);
        Ok(Columns { names, types, builtin_keys, kinds, key_positions, primary_key: Arc::new(primary_key) })
    }
}

/// A row read (every column as PostgreSQL's text, `None` for NULL) as an `R` change, with the
/// columns `route` keeps.
pub fn row_change(
    table: &Arc<TableRef>,
    columns: &Columns,
    route: &Route,
    values: &[Option<String>],
    options: ValueOptions,
) -> RowChange {
    let mut new = Tuple::with_capacity(columns.names.len(), 256);
    for ((name, kind), value) in columns.names.iter().zip(&columns.kinds).zip(values) {
        if !route.keeps_column(name) {
            continue;
        }
        new.push_named(name, |out| match value {
            Some(text) => write_value(out, *kind, text, options),
            None => out.extend_from_slice(b"null"),
        });
    }
    RowChange {
        table: table.clone(),
        action: Action::Read,
        old: Tuple::default(),
        new,
        primary_key: columns.primary_key.clone(),
    }
}

/// OIDs below this are PostgreSQL's own objects, made by initdb (`FirstNormalObjectId`).
const FIRST_NORMAL_OID: u32 = 16384;

/// How a table is read: in key order, a batch at a time, or (without a usable primary key) in
/// one pass. Paging binds the last key's values as text and casts them to the key's types:
/// only for types PostgreSQL defines, since the owner of a type may attach any function to a
/// cast from text (`CREATE CAST`), which would then run with the producer's rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    Keyed,
    Whole,
}

impl Paging {
    pub fn of(columns: &Columns) -> Paging {
        let keyed = !columns.key_positions.is_empty()
            && columns.key_positions.len() == columns.primary_key.columns().len()
            && columns.builtin_keys;
        if keyed {
            Paging::Keyed
        } else {
            Paging::Whole
        }
    }
}

/// The statement of one batch and the key values it binds.
pub struct BatchQuery {
    pub sql: String,
    pub keys: Vec<String>,
}

/// One batch: the rows after `last_key` in key order (its values bound as text and cast to the
/// key columns' types), or the whole table; every column as PostgreSQL's text output, read
/// through `concat()`, which calls the type's output function, never a cast (the owner of a type
/// may make its cast to text run any function).
pub fn batch_query(
    table: &TableRef,
    columns: &Columns,
    paging: Paging,
    last_key: Option<&[String]>,
    batch_rows: usize,
) -> BatchQuery {
    batch_query_where(table, columns, paging, last_key, batch_rows, None)
}

/// [`batch_query`] keeping only the rows for which `row_filter` (an SQL function of pgevents'
/// own, called with the row `t`) holds.
pub fn batch_query_where(
    table: &TableRef,
    columns: &Columns,
    paging: Paging,
    last_key: Option<&[String]>,
    batch_rows: usize,
    row_filter: Option<&'static str>,
) -> BatchQuery {
    // The table is aliased `t` and its columns qualified, so that ORDER BY sorts the columns,
    // not the text outputs of the same names.
    let select: Vec<String> = columns
        .names
        .iter()
        .map(|n| {
            let column = format!("t.{}", quote_ident(n));
            format!("CASE WHEN pg_catalog.num_nulls({column}) = 1 THEN NULL ELSE pg_catalog.concat({column}) END")
        })
        .collect();
    let from = format!("{}.{} AS t", quote_ident(&table.schema), quote_ident(&table.name));
    let filter = row_filter.map(|f| format!("{f}(t)"));
    if paging == Paging::Whole {
        let filter = filter.map(|f| format!(" WHERE {f}")).unwrap_or_default();
        return BatchQuery { sql: format!("SELECT {} FROM {from}{filter}", select.join(", ")), keys: Vec::new() };
    }
    let key_list: Vec<String> =
        columns.key_positions.iter().map(|&i| format!("t.{}", quote_ident(&columns.names[i]))).collect();
    let key_list = key_list.join(", ");
    let (after, keys) = match last_key {
        Some(values) => {
            let placeholders: Vec<String> = columns
                .key_positions
                .iter()
                .enumerate()
                .map(|(n, &i)| format!("${}::text::{}", n + 1, columns.types[i]))
                .collect();
            (format!(" WHERE ({key_list}) > ({})", placeholders.join(", ")), values.to_vec())
        }
        None => (String::new(), Vec::new()),
    };
    let after = match (after.is_empty(), filter) {
        (_, None) => after,
        (true, Some(f)) => format!(" WHERE {f}"),
        (false, Some(f)) => format!("{after} AND {f}"),
    };
    BatchQuery {
        sql: format!("SELECT {} FROM {from}{after} ORDER BY {key_list} LIMIT {batch_rows}", select.join(", ")),
        keys,
    }
}

/// The rows of a batch statement, each as its columns' text (`None` for NULL), in order.
pub async fn rows<'a>(
    client: &'a tokio_postgres::Client,
    query: &'a BatchQuery,
    table: &'a TableRef,
) -> Result<impl futures_util::Stream<Item = Result<Vec<Option<String>>, ProducerError>> + 'a, ProducerError> {
    use futures_util::StreamExt as _;
    let keys: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        query.keys.iter().map(|k| k as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
    let stream = client.query_raw(&query.sql, keys).await.map_err(|e| read_error(table, e))?;
    Ok(stream.map(move |row| {
        let row = row.map_err(|e| read_error(table, e))?;
        (0..row.len())
            .map(|i| row.try_get::<_, Option<String>>(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| read_error(table, e))
    }))
}

pub fn read_error(table: &TableRef, e: tokio_postgres::Error) -> ProducerError {
    pg_error(format!("snapshot: read table {}", table.qualified), e)
}
