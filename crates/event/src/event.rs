//! The event body as consumers read it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Action, Lsn, MessageId};

/// One change, as published by the producer (the JSON body of an AMQP message).
///
/// `old` is `{}` on insert, `new` is `{}` on delete; `diff` holds every new column on insert,
/// the changed columns on update and every old column on delete; `id` is the primary key value
/// (an object for composite keys, `null` without a key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `schema.table`.
    pub table_name: String,
    pub action: Action,
    #[serde(default)]
    pub old: Map<String, Value>,
    #[serde(default)]
    pub new: Map<String, Value>,
    #[serde(default)]
    pub diff: Map<String, Value>,
    #[serde(default)]
    pub id: Value,
    /// Commit LSN of the transaction, as PostgreSQL prints it.
    pub lsn: String,
    pub xid: u32,
    /// Commit time in RFC 3339, UTC, microseconds.
    pub commit_time: String,
    /// Position of the event in its transaction, from 0.
    pub seq: u64,
    /// What the application attached to its transaction with `pgevents.context('{...}')` (a
    /// signed message; unsigned ones only with the producer's `--allow-unsigned-messages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
}

/// The body is not a pgevents event.
#[derive(Debug, thiserror::Error)]
pub enum EventParseError {
    #[error("event body is not valid event JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("event table_name {0:?} is not of the form schema.table")]
    TableName(String),
    #[error("event lsn is invalid: {0}")]
    Lsn(#[from] crate::InvalidLsn),
}

impl Event {
    /// Parses an event body.
    pub fn from_slice(body: &[u8]) -> Result<Event, EventParseError> {
        let event: Event = serde_json::from_slice(body)?;
        event.schema_and_table()?;
        Ok(event)
    }

    /// The schema and table parts of `table_name`.
    pub fn schema_and_table(&self) -> Result<(&str, &str), EventParseError> {
        self.table_name.split_once('.').ok_or_else(|| EventParseError::TableName(self.table_name.clone()))
    }

    /// The commit LSN as a number.
    pub fn commit_lsn(&self) -> Result<Lsn, EventParseError> {
        Ok(self.lsn.parse()?)
    }

    /// The message id the producer gave this event (`commit_lsn:seq`).
    pub fn message_id(&self) -> Result<MessageId, EventParseError> {
        Ok(MessageId { commit_lsn: self.commit_lsn()?, seq: self.seq })
    }

    /// The routing key the producer used by default.
    pub fn routing_key(&self) -> &str {
        &self.table_name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let body = br#"{"table_name": "public.users", "action": "U",
         "old": {"id": 1, "full_name": "A"}, "new": {"id": 1, "full_name": "B"},
         "diff": {"full_name": "B"}, "id": 1,
         "lsn": "0/16B3748", "xid": 741, "commit_time": "2026-11-23T10:00:00.123456Z", "seq": 0}"#;
        let event = Event::from_slice(body).unwrap();
        assert_eq!(event.action, Action::Update);
        assert_eq!(event.schema_and_table().unwrap(), ("public", "users"));
        assert_eq!(event.diff["full_name"], "B");
        assert_eq!(event.message_id().unwrap().to_string(), "0/16B3748:0");
        assert_eq!(event.context, None);
    }

    #[test]
    fn rejects_bodies_that_are_not_events() {
        assert!(Event::from_slice(b"{}").is_err());
        assert!(Event::from_slice(b"not json").is_err());
        let no_schema = br#"{"table_name":"users","action":"I","lsn":"0/1","xid":1,"commit_time":"x","seq":0}"#;
        assert!(matches!(Event::from_slice(no_schema), Err(EventParseError::TableName(_))));
    }
}
