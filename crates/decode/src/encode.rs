//! Writes event bodies (the documented JSON format) from decoded changes.
//!
//! A body is written in two steps: [`write_row_event`] / [`write_truncate_event`] write
//! everything up to `seq`, and [`close_event`] adds the transaction's `context` (known only once
//! the whole transaction has been read) and the closing brace.

use pgevents_event::{Action, Lsn};

use crate::json::{write_str, write_u64};
use crate::time::format_unix_micros;
use crate::{RowChange, TableRef, Tuple};

/// The per-transaction fields, rendered once: `,"lsn":"0/16B3748","xid":741,"commit_time":"..."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxFields(Vec<u8>);

impl TxFields {
    pub fn new(commit_lsn: Lsn, xid: u32, commit_time_micros: i64) -> TxFields {
        let mut out = Vec::with_capacity(80);
        out.extend_from_slice(b",\"lsn\":\"");
        out.extend_from_slice(commit_lsn.to_string().as_bytes());
        out.extend_from_slice(b"\",\"xid\":");
        write_u64(&mut out, u64::from(xid));
        out.extend_from_slice(b",\"commit_time\":\"");
        out.extend_from_slice(format_unix_micros(commit_time_micros).as_bytes());
        out.push(b'"');
        TxFields(out)
    }
}

fn write_head(out: &mut Vec<u8>, table: &TableRef, action: Action) {
    out.extend_from_slice(b"{\"table_name\":");
    write_str(out, &table.qualified);
    out.extend_from_slice(b",\"action\":\"");
    out.extend_from_slice(action.code().as_bytes());
    out.push(b'"');
}

fn write_tail(out: &mut Vec<u8>, tx: &TxFields, seq: u64) {
    out.extend_from_slice(&tx.0);
    out.extend_from_slice(b",\"seq\":");
    write_u64(out, seq);
}

/// Writes the `diff` object: every new column on insert, the changed (or not known to be
/// unchanged) columns on update, every old column on delete.
fn write_diff(out: &mut Vec<u8>, change: &RowChange) {
    match change.action {
        Action::Delete => change.old.write_object(out),
        Action::Update => {
            out.push(b'{');
            let mut first = true;
            for i in 0..change.new.len() {
                let key = change.new.key(i);
                let same = change.old.find(key, i).is_some_and(|j| change.old.value(j) == change.new.value(i));
                if !same {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(key);
                    out.push(b':');
                    out.extend_from_slice(change.new.value(i));
                }
            }
            out.push(b'}');
        }
        _ => change.new.write_object(out),
    }
}

/// Writes `id`: the key value, an object for composite keys, null without a key.
fn write_id(out: &mut Vec<u8>, change: &RowChange) {
    let row: &Tuple = if change.action == Action::Delete { &change.old } else { &change.new };
    let keys = change.primary_key.keys_json();
    let value_of = |key: &[u8], hint: usize| row.find(key, hint).map(|i| row.value(i)).unwrap_or(b"null");
    match keys {
        [] => out.extend_from_slice(b"null"),
        [key] => out.extend_from_slice(value_of(key, 0)),
        _ => {
            out.push(b'{');
            for (n, key) in keys.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(key);
                out.push(b':');
                out.extend_from_slice(value_of(key, n));
            }
            out.push(b'}');
        }
    }
}

/// Writes an INSERT/UPDATE/DELETE event, without its closing brace (see [`close_event`]).
pub fn write_row_event(out: &mut Vec<u8>, change: &RowChange, tx: &TxFields, seq: u64) {
    write_head(out, &change.table, change.action);
    out.extend_from_slice(b",\"old\":");
    change.old.write_object(out);
    out.extend_from_slice(b",\"new\":");
    change.new.write_object(out);
    out.extend_from_slice(b",\"diff\":");
    write_diff(out, change);
    out.extend_from_slice(b",\"id\":");
    write_id(out, change);
    write_tail(out, tx, seq);
}

/// Writes a TRUNCATE event for one table, without its closing brace.
pub fn write_truncate_event(out: &mut Vec<u8>, table: &TableRef, tx: &TxFields, seq: u64) {
    write_head(out, table, Action::Truncate);
    out.extend_from_slice(b",\"old\":{},\"new\":{},\"diff\":{},\"id\":null");
    write_tail(out, tx, seq);
}

/// Finishes an event: adds `"context": <context>` when the transaction has one, and `}`.
/// `context` must be a JSON value.
pub fn close_event(out: &mut Vec<u8>, context: Option<&[u8]>) {
    if let Some(context) = context {
        out.extend_from_slice(b",\"context\":");
        out.extend_from_slice(context);
    }
    out.push(b'}');
}
