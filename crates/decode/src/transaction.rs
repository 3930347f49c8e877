//! Per-transaction state: event numbering (`seq`), the context an application attached with
//! `pg_logical_emit_message(true, 'pgevents', '{...}')`, and `{"skip": true}`.
//!
//! Context can arrive anywhere in a transaction, so events are written without their closing
//! brace and finished at commit with [`crate::encode::close_event`] and the outcome's context.

use serde_json::{Map, Value};

use crate::encode::{write_row_event, write_truncate_event, TxFields};
use crate::{LogicalMessage, RowChange, TableRef, TxBegin};

/// The prefix of `pg_logical_emit_message` messages that carry transaction context.
pub const CONTEXT_PREFIX: &str = "pgevents";

/// A context message that is not a JSON object; it is ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ignoring pgevents context message of transaction {xid}: {reason}; send a JSON object, e.g. '{{\"uid\": 42}}'")]
pub struct BadContext {
    pub xid: u32,
    pub reason: String,
}

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxOutcome {
    /// `{"skip": true}` was sent: publish none of its events.
    pub skip: bool,
    /// The merged context object, as JSON, if any was sent.
    pub context: Option<Vec<u8>>,
    /// Events written for the transaction.
    pub events: u64,
}

/// Default of the largest context a transaction may attach, in bytes of its messages.
pub const DEFAULT_MAX_CONTEXT_BYTES: usize = 8 << 10;

/// Builds the events of the transaction being read.
#[derive(Debug)]
pub struct TransactionBuilder {
    current: Option<Current>,
    /// Context is copied into every event of its transaction, and any role that can write may
    /// send it: more than this (all messages of a transaction together) is ignored.
    max_context_bytes: usize,
}

impl Default for TransactionBuilder {
    fn default() -> TransactionBuilder {
        TransactionBuilder::new(DEFAULT_MAX_CONTEXT_BYTES)
    }
}

#[derive(Debug)]
struct Current {
    begin: TxBegin,
    fields: TxFields,
    seq: u64,
    context: Option<Map<String, Value>>,
    /// Bytes of the context messages taken so far.
    context_bytes: usize,
    skip: bool,
}

/// A transaction began while another was still open: the stream is inconsistent (the open
/// transaction's events can never be completed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transaction {began} began before transaction {open} committed (commit LSN {open_lsn}); the replication stream is inconsistent")]
pub struct BeginWhileOpen {
    pub open: u32,
    pub open_lsn: pgevents_event::Lsn,
    pub began: u32,
}

impl TransactionBuilder {
    /// A builder that ignores context beyond `max_context_bytes` per transaction.
    pub fn new(max_context_bytes: usize) -> TransactionBuilder {
        TransactionBuilder { current: None, max_context_bytes }
    }

    /// Starts a transaction; one may not be open already.
    pub fn begin(&mut self, begin: TxBegin) -> Result<(), BeginWhileOpen> {
        if let Some(open) = &self.current {
            return Err(BeginWhileOpen { open: open.begin.xid, open_lsn: open.begin.commit_lsn, began: begin.xid });
        }
        self.current = Some(Current {
            begin,
            fields: TxFields::new(begin.commit_lsn, begin.xid, begin.commit_time_micros),
            seq: 0,
            context: None,
            context_bytes: 0,
            skip: false,
        });
        Ok(())
    }

    pub fn in_transaction(&self) -> bool {
        self.current.is_some()
    }

    /// The transaction being read.
    pub fn current(&self) -> Option<TxBegin> {
        self.current.as_ref().map(|c| c.begin)
    }

    fn next(&mut self) -> Option<(&TxFields, u64)> {
        let current = self.current.as_mut()?;
        let seq = current.seq;
        current.seq += 1;
        Some((&current.fields, seq))
    }

    /// Writes the (unclosed) event of a row change into `out`; returns its `seq`, or `None`
    /// outside a transaction (the change is then ignored).
    pub fn row(&mut self, change: &RowChange, out: &mut Vec<u8>) -> Option<u64> {
        let (fields, seq) = self.next()?;
        write_row_event(out, change, fields, seq);
        Some(seq)
    }

    /// Writes the (unclosed) TRUNCATE event of one table.
    pub fn truncate(&mut self, table: &TableRef, out: &mut Vec<u8>) -> Option<u64> {
        let (fields, seq) = self.next()?;
        write_truncate_event(out, table, fields, seq);
        Some(seq)
    }

    /// Takes a logical message into account: transactional messages with the `pgevents` prefix
    /// are merged into the transaction's context (later keys win).
    pub fn message(&mut self, message: &LogicalMessage) -> Result<(), BadContext> {
        let Some(current) = self.current.as_mut() else {
            return Ok(());
        };
        if !message.transactional || message.prefix != CONTEXT_PREFIX {
            return Ok(());
        }
        let bad = |reason: String| BadContext { xid: current.begin.xid, reason };
        if current.context_bytes + message.content.len() > self.max_context_bytes {
            return Err(bad(format!(
                "the transaction's context would be over {} bytes (--max-context-bytes): it is copied into every event",
                self.max_context_bytes
            )));
        }
        current.context_bytes += message.content.len();
        let value: Value = serde_json::from_slice(&message.content).map_err(|e| bad(format!("not JSON ({e})")))?;
        let Value::Object(object) = value else {
            return Err(bad("not a JSON object".to_owned()));
        };
        if object.get("skip") == Some(&Value::Bool(true)) {
            current.skip = true;
        }
        current.context.get_or_insert_with(Map::new).extend(object);
        Ok(())
    }

    /// Ends the transaction.
    pub fn commit(&mut self) -> Option<TxOutcome> {
        let current = self.current.take()?;
        let context = current.context.map(|c| serde_json::to_vec(&c).unwrap_or_else(|_| b"{}".to_vec()));
        Some(TxOutcome { skip: current.skip, context, events: current.seq })
    }

    /// Forgets a transaction that will not be finished (the stream broke).
    pub fn abandon(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn context_is_bounded_per_transaction() {
        use super::*;
        let mut builder = TransactionBuilder::new(40);
        let begin = TxBegin { xid: 7, commit_lsn: pgevents_event::Lsn(1), commit_time_micros: 0 };
        builder.begin(begin).unwrap();
        let message = |content: &str| LogicalMessage {
            transactional: true,
            prefix: CONTEXT_PREFIX.to_owned(),
            content: content.as_bytes().to_vec(),
        };
        builder.message(&message(r#"{"uid": 42}"#)).unwrap();
        let err = builder.message(&message(&format!(r#"{{"x": "{}"}}"#, "A".repeat(40)))).unwrap_err();
        assert!(err.reason.contains("--max-context-bytes"), "{err}");
        let outcome = builder.commit().unwrap();
        assert_eq!(outcome.context.as_deref(), Some(br#"{"uid":42}"#.as_slice()), "the first one stays");
    }

    use pgevents_event::Lsn;

    use super::*;

    fn begin(xid: u32, lsn: u64) -> TxBegin {
        TxBegin { xid, commit_lsn: Lsn(lsn), commit_time_micros: 0 }
    }

    #[test]
    fn a_begin_while_a_transaction_is_open_is_an_error_not_a_silent_restart() {
        let mut tx = TransactionBuilder::default();
        tx.begin(begin(7, 100)).unwrap();
        let err = tx.begin(begin(8, 200)).unwrap_err();
        assert_eq!(err, BeginWhileOpen { open: 7, open_lsn: Lsn(100), began: 8 });
        assert_eq!(tx.current().map(|b| b.xid), Some(7), "the open transaction is kept, not replaced");
        tx.commit();
        tx.begin(begin(8, 200)).unwrap();
    }
}
