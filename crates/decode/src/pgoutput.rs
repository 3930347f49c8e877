//! Decoder for PostgreSQL's built-in `pgoutput` plugin (protocol version 1, text values,
//! `messages` option), as documented in "Logical Replication Message Formats".

use std::collections::HashMap;
use std::sync::Arc;

use pgevents_event::{Action, Lsn};

use crate::change::{Decoded, LogicalMessage, RowChange, TxBegin};
use crate::cursor::{Cursor, Read};
use crate::time::PG_EPOCH_OFFSET_MICROS;
use crate::value::{write_value, ValueOptions};
use crate::{json, Catalog, DecodeError, PrimaryKey, TableRef, Tuple};

const PLUGIN: &str = "pgoutput";

#[derive(Debug)]
struct RelColumn {
    key_json: Vec<u8>,
    type_oid: u32,
    /// Part of the replica identity (flag 1).
    identity: bool,
}

#[derive(Debug)]
struct Relation {
    table: Arc<TableRef>,
    columns: Vec<RelColumn>,
    primary_key: Option<Arc<PrimaryKey>>,
}

/// Decodes pgoutput messages, keeping the relation descriptions it has been sent.
#[derive(Debug, Default)]
pub struct PgOutputDecoder {
    relations: HashMap<u32, Relation>,
    options: ValueOptions,
}

/// Which old image an UPDATE or DELETE carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OldImage {
    /// `K`: the replica identity columns (other columns are sent as null).
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

impl PgOutputDecoder {
    pub fn new(options: ValueOptions) -> Self {
        PgOutputDecoder { relations: HashMap::new(), options }
    }

    /// Decodes one message (the payload of one XLogData).
    pub fn decode(&mut self, data: &[u8], catalog: &Catalog) -> Result<Decoded, DecodeError> {
        let mut cur = Cursor::new(data, PLUGIN);
        match cur.u8()? {
            b'B' => {
                let final_lsn = cur.u64()?;
                let commit_ts = cur.i64()?;
                let xid = cur.u32()?;
                Ok(Decoded::Begin(TxBegin {
                    commit_lsn: Lsn(final_lsn),
                    xid,
                    commit_time_micros: commit_ts.saturating_add(PG_EPOCH_OFFSET_MICROS),
                }))
            }
            b'C' => Ok(Decoded::Commit),
            b'R' => self.relation(&mut cur),
            b'I' => {
                let rel = self.relation_for(cur.u32()?)?;
                expect_tag(&mut cur, b'N')?;
                let new = read_tuple(&mut cur, rel, catalog, self.options, None)?;
                self.row(rel, Action::Insert, Tuple::default(), new, catalog)
            }
            b'U' => {
                let rel = self.relation_for(cur.u32()?)?;
                let mut old = None;
                let mut tag = cur.u8()?;
                if tag == b'K' || tag == b'O' {
                    let image = if tag == b'K' { OldImage::Key } else { OldImage::Full };
                    old = Some(read_tuple(&mut cur, rel, catalog, self.options, Some(image))?);
                    tag = cur.u8()?;
                }
                if tag != b'N' {
                    return Err(cur.malformed(format!("UPDATE: expected new tuple 'N', found {:?}", tag as char)));
                }
                let mut new = read_tuple(&mut cur, rel, catalog, self.options, None)?;
                // Without an old image (key unchanged), the key columns of the new row are the old key.
                let old = match old {
                    Some(old) => old,
                    None => identity_from(rel, &new),
                };
                new.fill_unchanged_from(&old);
                self.row(rel, Action::Update, old, new, catalog)
            }
            b'D' => {
                let rel = self.relation_for(cur.u32()?)?;
                let image = match cur.u8()? {
                    b'K' => OldImage::Key,
                    b'O' => OldImage::Full,
                    other => {
                        return Err(cur.malformed(format!("DELETE: expected 'K' or 'O', found {:?}", other as char)))
                    }
                };
                let old = read_tuple(&mut cur, rel, catalog, self.options, Some(image))?;
                self.row(rel, Action::Delete, old, Tuple::default(), catalog)
            }
            b'T' => {
                let count = cur.u32()?;
                let _options = cur.u8()?;
                let mut tables = Vec::with_capacity(count.min(1024) as usize);
                for _ in 0..count {
                    tables.push(self.relation_for(cur.u32()?)?.table.clone());
                }
                Ok(Decoded::Truncate(tables))
            }
            b'M' => {
                let flags = cur.u8()?;
                let _lsn = cur.u64()?;
                let prefix = cur.cstr_lossy()?;
                let len = cur.u32()? as usize;
                let content = cur.bytes(len)?.to_vec();
                Ok(Decoded::Message(LogicalMessage { transactional: flags & 1 == 1, prefix, content }))
            }
            b'O' | b'Y' => Ok(Decoded::Ignored),
            other => Err(cur.malformed(format!("unknown message type {:?}", other as char))),
        }
    }

    fn relation(&mut self, cur: &mut Cursor<'_>) -> Result<Decoded, DecodeError> {
        let relid = cur.u32()?;
        let namespace = match cur.cstr()? {
            "" => "pg_catalog",
            ns => ns,
        };
        let name = cur.cstr()?;
        let _replica_identity = cur.u8()?;
        let ncols = cur.i16()?;
        let ncols = usize::try_from(ncols).map_err(|_| cur.malformed("negative column count"))?;
        let mut columns = Vec::with_capacity(ncols);
        for _ in 0..ncols {
            let flags = cur.u8()?;
            let col_name = cur.cstr()?;
            let type_oid = cur.u32()?;
            let _typmod = cur.i32()?;
            let mut key_json = Vec::with_capacity(col_name.len() + 2);
            json::write_str(&mut key_json, col_name);
            columns.push(RelColumn { key_json, type_oid, identity: flags & 1 == 1 });
        }
        let table = Arc::new(TableRef::new(namespace, name));
        self.relations.insert(relid, Relation { table: table.clone(), columns, primary_key: None });
        Ok(Decoded::Relation(table))
    }

    fn relation_for(&self, relid: u32) -> Result<&Relation, DecodeError> {
        self.relations.get(&relid).ok_or(DecodeError::UnknownRelation(relid))
    }

    fn row(
        &self,
        rel: &Relation,
        action: Action,
        old: Tuple,
        new: Tuple,
        catalog: &Catalog,
    ) -> Result<Decoded, DecodeError> {
        let primary_key = match &rel.primary_key {
            Some(pk) => pk.clone(),
            None => catalog.primary_key(&rel.table)?,
        };
        Ok(Decoded::Row(RowChange { table: rel.table.clone(), action, old, new, primary_key }))
    }

    /// Remembers primary keys the catalog now knows, so later changes skip the map look-up.
    pub fn cache_primary_keys(&mut self, catalog: &Catalog) {
        for rel in self.relations.values_mut() {
            if rel.primary_key.is_none() {
                rel.primary_key = catalog.primary_key(&rel.table).ok();
            }
        }
    }
}

fn expect_tag(cur: &mut Cursor<'_>, want: u8) -> Read<()> {
    let tag = cur.u8()?;
    if tag != want {
        return Err(cur.malformed(format!("expected {:?}, found {:?}", want as char, tag as char)));
    }
    Ok(())
}

/// The replica identity columns of `new` (for an UPDATE that did not change the key).
fn identity_from(rel: &Relation, new: &Tuple) -> Tuple {
    let mut old = Tuple::default();
    for (i, col) in rel.columns.iter().enumerate() {
        if col.identity && i < new.len() && !new.is_unchanged(i) {
            old.push_from(new, i);
        }
    }
    old
}

fn read_tuple(
    cur: &mut Cursor<'_>,
    rel: &Relation,
    catalog: &Catalog,
    options: ValueOptions,
    image: Option<OldImage>,
) -> Result<Tuple, DecodeError> {
    let ncols = cur.i16()?;
    if usize::try_from(ncols).ok() != Some(rel.columns.len()) {
        return Err(DecodeError::Table {
            table: rel.table.qualified.clone(),
            detail: format!("the row has {ncols} columns but the table was described with {}", rel.columns.len()),
        });
    }
    let mut tuple = Tuple::with_capacity(rel.columns.len(), cur.remaining().min(1 << 20) + rel.columns.len() * 12);
    for col in &rel.columns {
        let kind_byte = cur.u8()?;
        // A key image carries only the identity columns; the others are sent as nulls.
        let keep = image != Some(OldImage::Key) || col.identity;
        match kind_byte {
            b'n' => {
                if keep {
                    tuple.push_with(&col.key_json, |out| out.extend_from_slice(b"null"));
                }
            }
            b'u' => {
                if keep {
                    tuple.push_unchanged(&col.key_json);
                }
            }
            b't' => {
                let len = usize::try_from(cur.i32()?).map_err(|_| cur.malformed("negative value length"))?;
                let raw = cur.bytes(len)?;
                if keep {
                    let kind = catalog.type_kind(col.type_oid)?;
                    // Invalid UTF-8 is only possible in a non-UTF-8 database; it is replaced.
                    let text = String::from_utf8_lossy(raw);
                    tuple.push_with(&col.key_json, |out| write_value(out, kind, &text, options));
                }
            }
            b'b' => {
                return Err(cur.malformed("binary column values were not requested"));
            }
            other => return Err(cur.malformed(format!("unknown column kind {:?}", other as char))),
        }
    }
    Ok(tuple)
}
