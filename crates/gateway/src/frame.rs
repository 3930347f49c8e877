//! One message of the history stream, decoded once for every subscriber: the event, its primary
//! key as `pk=` compares it (values in key order), and its SSE frame, formatted once and shared.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use pgevents_event::{Action, Event};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::metrics;
use crate::sse;

/// The header in which RabbitMQ gives an AMQP stream consumer a message's offset (the SSE event
/// id).
pub const STREAM_OFFSET: &str = "x-stream-offset";

/// One stream message.
#[derive(Debug)]
pub struct Frame {
    /// Its offset in the stream: the SSE event id.
    pub offset: i64,
    pub content: Content,
}

#[derive(Debug)]
pub enum Content {
    Event(Box<EventFrame>),
    /// A message subscribers cannot read (logged and counted once, when decoded); it keeps its
    /// place so that offsets stay in order.
    Unreadable,
}

/// A decoded event.
#[derive(Debug)]
pub struct EventFrame {
    pub event: Event,
    /// The primary key as text: the value, or a composite key's values joined with commas in
    /// key order; `None` without a key.
    pub pk: Option<String>,
    /// The row event as SSE bytes: `id`, `event` (insert, update, ...) and `data` (the body).
    pub sse: Bytes,
}

impl Frame {
    /// The frame of the message at `offset` with `body` (decompressed, or why it cannot be);
    /// `table` names it in the log when it is not a readable event.
    pub fn new(offset: i64, body: Result<Cow<'_, [u8]>, String>, table: &str) -> Frame {
        let content = match body.and_then(|body| EventFrame::from_body(&body, offset)) {
            Ok(frame) => Content::Event(Box::new(frame)),
            Err(why) => {
                tracing::warn!(offset, table = ?table, error = ?why, "skipping a history message that is not a readable pgevents event");
                ::metrics::counter!(metrics::UNREADABLE).increment(1);
                Content::Unreadable
            }
        };
        Frame { offset, content }
    }

    /// Bytes a subscriber is sent for this frame at row granularity (what buffers count).
    pub fn size(&self) -> usize {
        match &self.content {
            Content::Event(e) => e.sse.len(),
            Content::Unreadable => 0,
        }
    }

    pub fn event(&self) -> Option<&EventFrame> {
        match &self.content {
            Content::Event(e) => Some(e),
            Content::Unreadable => None,
        }
    }
}

impl EventFrame {
    /// An event body (decompressed) at `offset`.
    pub fn from_body(body: &[u8], offset: i64) -> Result<EventFrame, String> {
        let event = Event::from_slice(body).map_err(|e| e.to_string())?;
        let pk = key_text(body, &event.id);
        let sse = sse::event(Some(offset), event_name(event.action), body);
        Ok(EventFrame { event, pk, sse })
    }
}

/// The SSE event name of a row event.
pub fn event_name(action: Action) -> &'static str {
    match action {
        Action::Insert => "insert",
        Action::Update => "update",
        Action::Delete => "delete",
        Action::Truncate => "truncate",
        Action::Read => "read",
    }
}

/// A value as `pk=` and row grants compare it: strings as they are, anything else as JSON.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The key as text. A composite key's values are read from the body itself, because the
/// parsed object sorts its keys by name while `pk=1,x` lists them in key order.
fn key_text(body: &[u8], id: &Value) -> Option<String> {
    match id {
        Value::Null => None,
        Value::Object(parts) if parts.len() > 1 => match serde_json::from_slice::<KeyInBodyOrder>(body) {
            Ok(KeyInBodyOrder { id: OrderedValues(values) }) => Some(values.join(",")),
            Err(_) => Some(parts.values().map(value_text).collect::<Vec<_>>().join(",")),
        },
        Value::Object(parts) => parts.values().next().map(value_text),
        other => Some(value_text(other)),
    }
}

#[derive(Deserialize)]
struct KeyInBodyOrder {
    id: OrderedValues,
}

/// The values of a JSON object as text, in the order they appear.
struct OrderedValues(Vec<String>);

impl<'de> Deserialize<'de> for OrderedValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = OrderedValues;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedValues, A::Error> {
                let mut values = Vec::new();
                while let Some((_, value)) = map.next_entry::<serde::de::IgnoredAny, Value>()? {
                    values.push(value_text(&value));
                }
                Ok(OrderedValues(values))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_composite_key_reads_in_key_order_not_name_order() {
        let body = br#"{"table_name":"public.pairs","action":"I","id":{"z":1,"a":"x"},"lsn":"0/1","xid":1,"commit_time":"t","seq":0}"#;
        let id = json!({"z": 1, "a": "x"});
        assert_eq!(key_text(body, &id).as_deref(), Some("1,x"));
        assert_eq!(key_text(b"{}", &json!(42)).as_deref(), Some("42"));
        assert_eq!(key_text(b"{}", &json!("k")).as_deref(), Some("k"));
        assert_eq!(key_text(b"{}", &json!({"only": 5})).as_deref(), Some("5"));
        assert_eq!(key_text(b"{}", &Value::Null), None);
    }
}
