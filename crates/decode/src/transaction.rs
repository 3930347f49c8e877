//! Per-transaction state: event numbering (`seq`), and the signals an application sent with
//! its transaction (see [`crate::signal`]): context (`pgevents.context()`), a skip request
//! (`pgevents.skip()`) and outbox messages (`pgevents.outbox()`).
//!
//! Context can arrive anywhere in a transaction, so events are written without their closing
//! brace and finished at commit with [`crate::encode::close_event`] and the outcome's context.

use serde_json::{Map, Value};

use crate::encode::{write_row_event, write_truncate_event, TxFields};
use crate::outbox::{self, MalformedOutbox, OutboxMessage};
use crate::signal::{self, MessageKeys, Refusal, SignalKind};
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

/// Which messages are believed.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// The keys signed messages are verified with.
    pub keys: MessageKeys,
    /// Take unsigned JSON messages as context (and `{"skip": true}`) from anyone who can
    /// connect, as pgevents did before messages were signed.
    pub accept_unsigned: bool,
}

/// A `pgevents` message that was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageIgnored {
    #[error("refused a pgevents message (transaction {xid:?}): {refusal}")]
    Refused { xid: Option<u32>, refusal: Refusal },
    #[error(transparent)]
    Context(#[from] BadContext),
}

/// What a message added to the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Context or a skip request, or a message that is not for pgevents.
    Nothing,
    /// An outbox message, to publish in its place among the transaction's events.
    Outbox(OutboxMessage),
    /// A signed outbox message that cannot be published: to the dead-letter exchange.
    MalformedOutbox(MalformedOutbox),
    /// The signing keys changed: read them again now (see [`SignalKind::Keys`]).
    KeysChanged,
    /// A backfill's watermark (its payload, JSON).
    Watermark(Vec<u8>),
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
    /// Context is copied into every event of its transaction: more than this (all messages of a
    /// transaction together) is ignored.
    max_context_bytes: usize,
    signals: Signals,
}

impl Default for TransactionBuilder {
    /// Signed messages only, and no keys yet.
    fn default() -> TransactionBuilder {
        TransactionBuilder::new(DEFAULT_MAX_CONTEXT_BYTES, Signals::default())
    }
}

#[derive(Debug)]
struct Current {
    begin: TxBegin,
    fields: TxFields,
    seq: u64,
    /// Outbox messages are numbered apart: a message refused in one reading of the WAL and
    /// taken in another (a key read since) must not change the events' ids.
    outbox_seq: u64,
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
    pub fn new(max_context_bytes: usize, signals: Signals) -> TransactionBuilder {
        TransactionBuilder { current: None, max_context_bytes, signals }
    }

    /// The keys, to replace them when new ones were read.
    pub fn keys_mut(&mut self) -> &mut MessageKeys {
        &mut self.signals.keys
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
            outbox_seq: 0,
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

    /// Takes a logical message with the `pgevents` prefix into account (others are
    /// [`Taken::Nothing`]). Signed messages are verified; unsigned JSON objects are context only
    /// when [`Signals::accept_unsigned`] says so.
    pub fn message(&mut self, message: &LogicalMessage) -> Result<Taken, MessageIgnored> {
        if message.prefix != CONTEXT_PREFIX {
            return Ok(Taken::Nothing);
        }
        let xid = self.current.as_ref().map(|c| c.begin.xid);
        let refused = |refusal| MessageIgnored::Refused { xid, refusal };
        let Some(current) = self.current.as_ref().filter(|_| message.transactional) else {
            return Err(refused(Refusal::NotTransactional));
        };
        if !signal::looks_signed(&message.content) {
            if !self.signals.accept_unsigned {
                return Err(refused(Refusal::Unsigned));
            }
            self.context(&message.content, true)?;
            return Ok(Taken::Nothing);
        }
        let begin = current.begin;
        let verified = match signal::verify(&message.content, begin.xid, begin.commit_time_micros, &self.signals.keys) {
            Ok(verified) => verified,
            // An outbox message of a transaction that stayed open past its key's retirement: the
            // application's message goes to the dead-letter exchange rather than nowhere.
            Err(Refusal::RetiredKey { kid }) => {
                match signal::verify_signature(&message.content, begin.xid, &self.signals.keys) {
                    Ok(verified) if verified.kind == SignalKind::Outbox => {
                        let content = verified.payload.to_vec();
                        let Some(seq) = self.next_outbox_seq() else { return Ok(Taken::Nothing) };
                        let reason = format!("signed with key {kid}, retired before its transaction committed (a transaction open longer than the rotation's grace)");
                        return Ok(Taken::MalformedOutbox(MalformedOutbox { seq, reason, content }));
                    }
                    _ => return Err(refused(Refusal::RetiredKey { kid })),
                }
            }
            Err(refusal) => return Err(refused(refusal)),
        };
        match verified.kind {
            SignalKind::Context => {
                self.context(verified.payload, false)?;
                Ok(Taken::Nothing)
            }
            SignalKind::Skip => {
                if let Some(current) = self.current.as_mut() {
                    current.skip = true;
                }
                Ok(Taken::Nothing)
            }
            SignalKind::Keys => Ok(Taken::KeysChanged),
            SignalKind::Watermark => Ok(Taken::Watermark(verified.payload.to_vec())),
            SignalKind::Outbox => {
                let payload = verified.payload.to_vec();
                let Some(seq) = self.next_outbox_seq() else { return Ok(Taken::Nothing) };
                Ok(match outbox::parse(&payload) {
                    Ok((header, body)) => Taken::Outbox(OutboxMessage { seq, header, body }),
                    Err(reason) => Taken::MalformedOutbox(MalformedOutbox { seq, reason, content: payload }),
                })
            }
        }
    }

    /// The position of the transaction's next outbox message (`None` outside a transaction).
    fn next_outbox_seq(&mut self) -> Option<u64> {
        let current = self.current.as_mut()?;
        let seq = current.outbox_seq;
        current.outbox_seq += 1;
        Some(seq)
    }

    /// Merges a context object into the transaction's (later keys win). An unsigned
    /// `{"skip": true}` asks to skip the transaction, as before messages were signed.
    fn context(&mut self, content: &[u8], unsigned: bool) -> Result<(), BadContext> {
        let Some(current) = self.current.as_mut() else { return Ok(()) };
        let bad = |reason: String| BadContext { xid: current.begin.xid, reason };
        if current.context_bytes + content.len() > self.max_context_bytes {
            return Err(bad(format!(
                "the transaction's context would be over {} bytes (--max-context-bytes): it is copied into every event",
                self.max_context_bytes
            )));
        }
        current.context_bytes += content.len();
        let value: Value = serde_json::from_slice(content).map_err(|e| bad(format!("not JSON ({e})")))?;
        let Value::Object(object) = value else {
            return Err(bad("not a JSON object".to_owned()));
        };
        if unsigned && object.get("skip") == Some(&Value::Bool(true)) {
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
        let mut builder = TransactionBuilder::new(40, Signals { accept_unsigned: true, ..Signals::default() });
        let begin = TxBegin { xid: 7, commit_lsn: pgevents_event::Lsn(1), commit_time_micros: 0 };
        builder.begin(begin).unwrap();
        let message = |content: &str| LogicalMessage {
            transactional: true,
            prefix: CONTEXT_PREFIX.to_owned(),
            content: content.as_bytes().to_vec(),
        };
        builder.message(&message(r#"{"uid": 42}"#)).unwrap();
        let err = builder.message(&message(&format!(r#"{{"x": "{}"}}"#, "A".repeat(40)))).unwrap_err();
        assert!(err.to_string().contains("--max-context-bytes"), "{err}");
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

    fn signed_builder() -> TransactionBuilder {
        use crate::signal::MessageKey;
        let keys = MessageKeys::new([(5, MessageKey { secret: vec![3; 32], retired_at_micros: None })]);
        TransactionBuilder::new(DEFAULT_MAX_CONTEXT_BYTES, Signals { keys, accept_unsigned: false })
    }

    fn pgevents_message(transactional: bool, content: Vec<u8>) -> LogicalMessage {
        LogicalMessage { transactional, prefix: CONTEXT_PREFIX.to_owned(), content }
    }

    #[test]
    fn signed_context_and_skip_are_taken_unsigned_ones_refused() {
        use crate::signal::{sign, SignalKind};
        let mut tx = signed_builder();
        tx.begin(begin(7, 100)).unwrap();
        let signed = sign(5, &[3; 32], 7, SignalKind::Context, br#"{"uid": 42, "skip": true}"#);
        assert_eq!(tx.message(&pgevents_message(true, signed)), Ok(Taken::Nothing));
        let unsigned = pgevents_message(true, br#"{"uid": 666}"#.to_vec());
        assert_eq!(tx.message(&unsigned), Err(MessageIgnored::Refused { xid: Some(7), refusal: Refusal::Unsigned }));
        let foreign = LogicalMessage { transactional: true, prefix: "other".into(), content: b"x".to_vec() };
        assert_eq!(tx.message(&foreign), Ok(Taken::Nothing), "other prefixes are not ours to judge");
        let outcome = tx.commit().unwrap();
        assert_eq!(outcome.context.as_deref(), Some(br#"{"skip":true,"uid":42}"#.as_slice()));
        assert!(!outcome.skip, "a skip key in a signed context is context, not a skip request");

        tx.begin(begin(8, 200)).unwrap();
        tx.message(&pgevents_message(true, sign(5, &[3; 32], 8, SignalKind::Skip, b""))).unwrap();
        assert!(tx.commit().unwrap().skip);
    }

    #[test]
    fn unsigned_messages_are_context_only_when_accepted() {
        let mut tx =
            TransactionBuilder::new(DEFAULT_MAX_CONTEXT_BYTES, Signals { accept_unsigned: true, ..Signals::default() });
        tx.begin(begin(7, 100)).unwrap();
        tx.message(&pgevents_message(true, br#"{"skip": true}"#.to_vec())).unwrap();
        assert!(tx.commit().unwrap().skip, "the old unsigned skip request, when unsigned messages are accepted");
    }

    #[test]
    fn an_outbox_message_signed_with_a_key_retired_since_is_dead_lettered_not_lost() {
        use crate::signal::{sign, MessageKey, SignalKind};
        let keys = MessageKeys::new([(5, MessageKey { secret: vec![3; 32], retired_at_micros: Some(50) })]);
        let mut tx = TransactionBuilder::new(DEFAULT_MAX_CONTEXT_BYTES, Signals { keys, accept_unsigned: false });
        tx.begin(TxBegin { xid: 7, commit_lsn: Lsn(100), commit_time_micros: 100 }).unwrap();
        let payload = b"{\"routing_key\": \"k\"}\n{}";
        let taken = tx.message(&pgevents_message(true, sign(5, &[3; 32], 7, SignalKind::Outbox, payload))).unwrap();
        let Taken::MalformedOutbox(dead) = taken else { panic!("{taken:?}") };
        assert!(dead.reason.contains("retired"), "{}", dead.reason);
        assert_eq!(dead.content, payload);
        let skip = tx.message(&pgevents_message(true, sign(5, &[3; 32], 7, SignalKind::Skip, b"")));
        assert_eq!(skip, Err(MessageIgnored::Refused { xid: Some(7), refusal: Refusal::RetiredKey { kid: 5 } }));
    }

    #[test]
    fn messages_outside_transactions_are_refused() {
        use crate::signal::{sign, SignalKind};
        let mut tx = signed_builder();
        let signed = sign(5, &[3; 32], 7, SignalKind::Skip, b"");
        let refused = tx.message(&pgevents_message(false, signed.clone()));
        assert_eq!(refused, Err(MessageIgnored::Refused { xid: None, refusal: Refusal::NotTransactional }));
        tx.begin(begin(7, 100)).unwrap();
        let refused = tx.message(&pgevents_message(false, signed));
        assert_eq!(refused, Err(MessageIgnored::Refused { xid: Some(7), refusal: Refusal::NotTransactional }));
    }

    #[test]
    fn outbox_messages_take_their_place_among_the_events() {
        use crate::signal::{sign, SignalKind};
        let mut tx = signed_builder();
        tx.begin(begin(7, 100)).unwrap();
        let table = TableRef::new("public", "t");
        let mut body = Vec::new();
        assert_eq!(tx.truncate(&table, &mut body), Some(0));
        let payload = b"{\"routing_key\": \"orders.placed\"}\n{\"total\": 99.50}";
        let taken = tx.message(&pgevents_message(true, sign(5, &[3; 32], 7, SignalKind::Outbox, payload))).unwrap();
        let Taken::Outbox(outbox) = taken else { panic!("{taken:?}") };
        assert_eq!((outbox.seq, outbox.header.routing_key.as_str()), (0, "orders.placed"), "numbered apart");
        assert_eq!(outbox.body, br#"{"total": 99.50}"#);
        let bad = tx.message(&pgevents_message(true, sign(5, &[3; 32], 7, SignalKind::Outbox, b"{}\n{}"))).unwrap();
        let Taken::MalformedOutbox(bad) = bad else { panic!("{bad:?}") };
        assert_eq!(bad.seq, 1);
        assert!(bad.reason.contains("no routing key"), "{}", bad.reason);
        assert_eq!(tx.truncate(&table, &mut body), Some(1), "the events' positions do not move");
        assert_eq!(tx.commit().unwrap().events, 2);
    }
}
