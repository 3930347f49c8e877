//! What a decoder produces from one plugin message.

use std::sync::Arc;

use pgevents_event::{Action, Lsn};

use crate::{PrimaryKey, TableRef, Tuple};

/// The start of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxBegin {
    /// LSN of the commit record (the same for every event of the transaction).
    pub commit_lsn: Lsn,
    pub xid: u32,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_micros: i64,
}

/// An INSERT, UPDATE or DELETE of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    pub table: Arc<TableRef>,
    pub action: Action,
    /// Empty on insert; the replica identity columns (DEFAULT) or the whole row (FULL) otherwise.
    pub old: Tuple,
    /// Empty on delete.
    pub new: Tuple,
    pub primary_key: Arc<PrimaryKey>,
}

/// A message written with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    pub transactional: bool,
    pub prefix: String,
    pub content: Vec<u8>,
}

/// One decoded plugin message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Begin(TxBegin),
    /// The end of the transaction; its end LSN is the XLogData position of this message.
    Commit,
    Row(RowChange),
    /// A TRUNCATE of these tables.
    Truncate(Vec<Arc<TableRef>>),
    Message(LogicalMessage),
    /// A table's description arrived (first use or schema change).
    Relation(Arc<TableRef>),
    /// Nothing for pgevents (origin, type messages).
    Ignored,
}
