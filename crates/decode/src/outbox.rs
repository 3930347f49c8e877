//! The payload of an outbox message (`pgevents.outbox(routing_key, payload, message_id, headers)`):
//! one line of JSON with where and how to publish, a newline, then the body exactly as
//! PostgreSQL wrote the `jsonb` (numbers keep their digits; nothing is parsed into floats).

use serde::{Deserialize, Serialize};

/// AMQP short strings (routing key, message id, header names) hold at most this many bytes.
pub const MAX_SHORT_STRING: usize = 255;
/// At most this many headers per outbox message.
pub const MAX_HEADERS: usize = 64;
/// Header names the producer writes itself, or RabbitMQ acts on, that an outbox message may not
/// set (compared without case; `x-...` names too).
pub const RESERVED_HEADERS: [&str; 7] = [
    pgevents_event::HEADER_ACTION,
    pgevents_event::HEADER_TABLE,
    pgevents_event::HEADER_LSN,
    pgevents_event::HEADER_OMITTED,
    pgevents_event::HEADER_OUTBOX,
    "cc",
    "bcc",
];
/// The headers of one outbox message hold at most this many bytes (names and values): they
/// travel in one AMQP frame.
pub const MAX_HEADER_BYTES: usize = 16 << 10;

/// Where and how an outbox message is published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxHeader {
    pub routing_key: String,
    /// `None`: `<commit LSN>:outbox:<n>`, the n-th outbox message of its transaction.
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// One outbox message of a transaction: `seq` numbers the transaction's outbox messages (apart
/// from its events, whose ids therefore never depend on them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub seq: u64,
    pub header: OutboxHeader,
    pub body: Vec<u8>,
}

/// A signed outbox message that cannot be published as it is: it goes to the dead-letter
/// exchange with the reason, in its place among the transaction's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedOutbox {
    pub seq: u64,
    pub reason: String,
    pub content: Vec<u8>,
}

/// The envelope as the SQL function writes it (headers as a JSON object).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    routing_key: Option<String>,
    message_id: Option<String>,
    headers: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Reads a verified outbox payload.
pub fn parse(payload: &[u8]) -> Result<(OutboxHeader, Vec<u8>), String> {
    let split = payload.iter().position(|b| *b == b'\n').ok_or("no newline between the envelope and the body")?;
    let (envelope, body) = (&payload[..split], &payload[split + 1..]);
    let written: Written = serde_json::from_slice(envelope).map_err(|e| format!("unreadable envelope: {e}"))?;
    let routing_key = written.routing_key.ok_or("no routing key")?;
    short("routing key", &routing_key)?;
    if let Some(id) = &written.message_id {
        short("message id", id)?;
    }
    let mut headers = Vec::new();
    for (name, value) in written.headers.unwrap_or_default() {
        short("header name", &name)?;
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-") {
            return Err(format!("header {name:?} is written by pgevents or acted on by RabbitMQ"));
        }
        let value = match value {
            serde_json::Value::String(s) => s,
            other => return Err(format!("header {name:?} is {other}, not a string")),
        };
        headers.push((name, value));
    }
    if headers.len() > MAX_HEADERS {
        return Err(format!("{} headers, more than {MAX_HEADERS}", headers.len()));
    }
    let header_bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(format!("the headers hold {header_bytes} bytes, more than {MAX_HEADER_BYTES}"));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    Ok((OutboxHeader { routing_key, message_id: written.message_id, headers }, body.to_vec()))
}

fn short(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_SHORT_STRING {
        return Err(format!("the {what} must have 1 to {MAX_SHORT_STRING} bytes, not {}", value.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_kept_byte_for_byte() {
        let payload = b"{\"headers\": {\"tenant\": \"t1\"}, \"message_id\": \"order-42\", \"routing_key\": \"orders.placed\"}\n{\"total\": 99.50, \"big\": 123456789012345678901234567890}";
        let (header, body) = parse(payload).unwrap();
        assert_eq!(header.routing_key, "orders.placed");
        assert_eq!(header.message_id.as_deref(), Some("order-42"));
        assert_eq!(header.headers, vec![("tenant".to_owned(), "t1".to_owned())]);
        assert_eq!(body, br#"{"total": 99.50, "big": 123456789012345678901234567890}"#);
    }

    #[test]
    fn what_cannot_be_published_says_why() {
        let long = "k".repeat(256);
        for (payload, why) in [
            ("{\"routing_key\": \"a\"}".to_owned(), "no newline"),
            ("{\"message_id\": \"x\"}\n{}".to_owned(), "no routing key"),
            (format!("{{\"routing_key\": \"{long}\"}}\n{{}}"), "routing key must have"),
            ("{\"routing_key\": \"a\", \"headers\": {\"n\": 1}}\n{}".to_owned(), "not a string"),
            ("{\"routing_key\": \"a\", \"headers\": {\"outbox\": \"x\"}}\n{}".to_owned(), "written by pgevents"),
            ("{\"routing_key\": \"a\", \"headers\": {\"CC\": \"x\"}}\n{}".to_owned(), "acted on by RabbitMQ"),
            ("{\"routing_key\": \"a\", \"headers\": {\"X-Match\": \"x\"}}\n{}".to_owned(), "acted on by RabbitMQ"),
            (
                format!("{{\"routing_key\": \"a\", \"headers\": {{\"h\": \"{}\"}}}}\n{{}}", "v".repeat(17_000)),
                "more than 16384",
            ),
            ("{\"routing_key\": \"a\"}\n{".to_owned(), "not JSON"),
            ("{\"routing_key\": \"a\", \"exchange\": \"x\"}\n{}".to_owned(), "unreadable envelope"),
        ] {
            let err = parse(payload.as_bytes()).unwrap_err();
            assert!(err.contains(why), "{payload}: {err}");
        }
    }
}
