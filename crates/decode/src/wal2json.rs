//! Decoder for the `wal2json` plugin, format version 2 (one JSON object per message), started
//! with `include-xids`, `include-timestamp`, `include-lsn` and `include-type-oids`.
//!
//! wal2json writes numbers and booleans as JSON and everything else as strings; each value is
//! turned back into PostgreSQL's text and mapped by type OID exactly as pgoutput values are, so
//! both plugins give the same events. wal2json 2.5 writes float/numeric NaN and infinities as
//! `null`; that information is lost before it reaches us.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use pgevents_event::{Action, Lsn};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::change::{Decoded, LogicalMessage, RowChange, TxBegin};
use crate::time::parse_iso_timestamptz;
use crate::value::{write_value, ValueOptions};
use crate::{Catalog, DecodeError, TableRef, Tuple};

const PLUGIN: &str = "wal2json";

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    action: Cow<'a, str>,
    xid: Option<u32>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    lsn: Option<Cow<'a, str>>,
    #[serde(borrow)]
    schema: Option<Cow<'a, str>>,
    #[serde(borrow)]
    table: Option<Cow<'a, str>>,
    #[serde(borrow)]
    columns: Option<Vec<Column<'a>>>,
    #[serde(borrow)]
    identity: Option<Vec<Column<'a>>>,
    transactional: Option<bool>,
    #[serde(borrow)]
    prefix: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Column<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    typeoid: Option<u32>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
}

/// Decodes wal2json format-version 2 messages.
#[derive(Debug, Default)]
pub struct Wal2JsonDecoder {
    tables: HashMap<String, Arc<TableRef>>,
    name_buf: String,
    options: ValueOptions,
}

fn malformed(detail: impl Into<String>) -> DecodeError {
    DecodeError::Malformed { plugin: PLUGIN, detail: detail.into() }
}

impl Wal2JsonDecoder {
    pub fn new(options: ValueOptions) -> Self {
        Wal2JsonDecoder { options, ..Default::default() }
    }

    /// Decodes one message (the payload of one XLogData).
    pub fn decode(&mut self, data: &[u8], catalog: &Catalog) -> Result<Decoded, DecodeError> {
        let lossy;
        let record: Record<'_> = match serde_json::from_slice(data) {
            Ok(record) => record,
            // A logical message's content is whatever bytes its sender chose (any role may send
            // one): not UTF-8, it is read with replacement characters (and then refused as
            // unreadable) rather than halt the stream. Row data is never altered this way.
            Err(_) if data.starts_with(br#"{"action":"M""#) && std::str::from_utf8(data).is_err() => {
                lossy = String::from_utf8_lossy(data);
                serde_json::from_str(&lossy).map_err(|e| malformed(format!("not a wal2json v2 record: {e}")))?
            }
            Err(e) => return Err(malformed(format!("not a wal2json v2 record: {e}"))),
        };
        match record.action.as_ref() {
            "B" => {
                let xid = record.xid.ok_or_else(|| malformed("BEGIN without xid (include-xids is off)"))?;
                let lsn = record.lsn.as_deref().ok_or_else(|| malformed("BEGIN without lsn (include-lsn is off)"))?;
                let commit_lsn: Lsn = lsn.parse().map_err(|e| malformed(format!("BEGIN: {e}")))?;
                let ts = record.timestamp.as_deref().ok_or_else(|| malformed("BEGIN without timestamp"))?;
                let commit_time_micros = parse_iso_timestamptz(ts)
                    .ok_or_else(|| malformed(format!("BEGIN: unreadable timestamp {ts:?}")))?;
                Ok(Decoded::Begin(TxBegin { commit_lsn, xid, commit_time_micros }))
            }
            "C" => Ok(Decoded::Commit),
            "I" | "U" | "D" => self.row(&record, catalog),
            "T" => Ok(Decoded::Truncate(vec![self.table(&record)?])),
            "M" => Ok(Decoded::Message(LogicalMessage {
                transactional: record.transactional.unwrap_or(false),
                prefix: record.prefix.as_deref().unwrap_or_default().to_owned(),
                content: record.content.as_deref().unwrap_or_default().as_bytes().to_vec(),
            })),
            other => Err(malformed(format!("unknown action {other:?}"))),
        }
    }

    fn table(&mut self, record: &Record<'_>) -> Result<Arc<TableRef>, DecodeError> {
        let schema = record.schema.as_deref().ok_or_else(|| malformed("change without schema"))?;
        let table = record.table.as_deref().ok_or_else(|| malformed("change without table"))?;
        self.name_buf.clear();
        self.name_buf.push_str(schema);
        self.name_buf.push('.');
        self.name_buf.push_str(table);
        if let Some(found) = self.tables.get(self.name_buf.as_str()) {
            if found.schema == schema && found.name == table {
                return Ok(found.clone());
            }
        }
        let found = Arc::new(TableRef::new(schema, table));
        self.tables.insert(self.name_buf.clone(), found.clone());
        Ok(found)
    }

    fn row(&mut self, record: &Record<'_>, catalog: &Catalog) -> Result<Decoded, DecodeError> {
        let table = self.table(record)?;
        let primary_key = catalog.primary_key(&table)?;
        let options = self.options;
        let action = match record.action.as_ref() {
            "I" => Action::Insert,
            "U" => Action::Update,
            _ => Action::Delete,
        };
        let new = match (&record.columns, action) {
            (Some(cols), Action::Insert | Action::Update) => tuple(cols, catalog, options)?,
            (None, Action::Insert | Action::Update) => {
                return Err(malformed(format!("{} on {} without columns", record.action, table.qualified)))
            }
            _ => Tuple::default(),
        };
        let old = match &record.identity {
            Some(cols) if action != Action::Insert => tuple(cols, catalog, options)?,
            _ => Tuple::default(),
        };
        // wal2json leaves unchanged TOASTed columns out of `columns`; the old row may have them.
        let new = if action == Action::Update { restore_unchanged(new, &old) } else { new };
        Ok(Decoded::Row(RowChange { table, action, old, new, primary_key }))
    }
}

fn tuple(cols: &[Column<'_>], catalog: &Catalog, options: ValueOptions) -> Result<Tuple, DecodeError> {
    let mut tuple = Tuple::with_capacity(cols.len(), cols.len() * 24);
    for col in cols {
        let oid = col.typeoid.ok_or_else(|| malformed("column without typeoid (include-type-oids is off)"))?;
        let kind = catalog.type_kind(oid)?;
        match col.value.map(RawValue::get) {
            None | Some("null") => tuple.push_named(&col.name, |out| out.extend_from_slice(b"null")),
            Some(raw) if raw.starts_with('"') => {
                let text: Cow<'_, str> =
                    serde_json::from_str(raw).map_err(|e| malformed(format!("column {}: {e}", col.name)))?;
                tuple.push_named(&col.name, |out| write_value(out, kind, &text, options));
            }
            Some(raw) => tuple.push_named(&col.name, |out| write_value(out, kind, raw, options)),
        }
    }
    Ok(tuple)
}

/// Puts back, in the old row's column order, the columns that the old row has and the new row
/// lacks (unchanged TOASTed values under REPLICA IDENTITY FULL).
fn restore_unchanged(new: Tuple, old: &Tuple) -> Tuple {
    let missing = (0..old.len()).any(|j| new.find(old.key(j), j).is_none());
    if !missing {
        return new;
    }
    let mut merged = Tuple::with_capacity(old.len().max(new.len()), 0);
    let mut used = vec![false; new.len()];
    for j in 0..old.len() {
        match new.find(old.key(j), j) {
            Some(i) => {
                used[i] = true;
                merged.push_from(&new, i);
            }
            None => merged.push_from(old, j),
        }
    }
    for (i, was_used) in used.iter().enumerate() {
        if !was_used {
            merged.push_from(&new, i);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_that_is_not_utf8_is_read_lossily_not_a_halt() {
        let mut data = br#"{"action":"M","transactional":true,"prefix":"pgevents","content":""#.to_vec();
        data.extend_from_slice(b"\xff\xfe\"}");
        match Wal2JsonDecoder::default().decode(&data, &Catalog::default()) {
            Ok(Decoded::Message(m)) => assert_eq!(m.content, "\u{fffd}\u{fffd}".as_bytes()),
            other => panic!("{other:?}"),
        }
        let row = b"{\"action\":\"I\",\"schema\":\"\xff\",\"table\":\"t\",\"columns\":[]}";
        assert!(Wal2JsonDecoder::default().decode(row, &Catalog::default()).is_err(), "row data is never altered");
    }
}
