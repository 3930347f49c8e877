//! Turns a finished event body into the message the publisher sends: routing key and
//! exchange of its table, message id, headers, timestamp and optional gzip compression. Used
//! for streamed changes and snapshot rows alike, so both look the same on the wire. Outbox
//! messages are built here too ([`outbox`], [`dead_outbox`]).

use std::io::Write as _;

use flate2::write::GzEncoder;
use pgevents_decode::outbox::OutboxHeader;
use pgevents_decode::TableRef;
use pgevents_event::{
    Action, APP_ID, CONTENT_TYPE, HEADER_ACTION, HEADER_LSN, HEADER_OMITTED, HEADER_OUTBOX, HEADER_TABLE,
};

use crate::config::{Compression, HeaderMode, ProducerConfig};
use crate::error::ProducerError;
use crate::metrics::EVENTS_STUBBED;
use crate::oversize::{self, Oversize};
use crate::publish::{Kind, Message, Position};
use crate::routing::Route;

/// What identifies one event on the wire besides its body.
#[derive(Clone)]
pub struct Envelope<'a> {
    pub table: &'a TableRef,
    pub action: Action,
    pub message_id: String,
    pub lsn_text: &'a str,
    /// Unix microseconds.
    pub commit_time_micros: i64,
    /// Its place in the WAL (`None` for snapshot rows).
    pub position: Option<Position>,
}

/// The headers every event carries (`omitted` only when stubbed): `--pk-hash-header` may not
/// take one of their names.
pub const WRITTEN_HEADERS: [&str; 4] = [HEADER_ACTION, HEADER_TABLE, HEADER_LSN, HEADER_OMITTED];

/// A header of the message besides the standard ones (`--pk-hash-header`).
pub type ExtraHeader = Option<(String, String)>;

pub fn build(
    envelope: Envelope<'_>,
    route: &Route,
    body: Vec<u8>,
    compression: Compression,
    extra: &ExtraHeader,
    mode: HeaderMode,
) -> std::io::Result<Message> {
    let (body, content_encoding) = match compression {
        Compression::None => (body, None),
        Compression::Gzip => (gzip(&body)?, Some("gzip")),
    };
    let mut headers = match mode {
        HeaderMode::Full => vec![
            (HEADER_ACTION.into(), envelope.action.code().to_owned()),
            (HEADER_TABLE.into(), envelope.table.qualified.clone()),
            (HEADER_LSN.into(), envelope.lsn_text.to_owned()),
        ],
        HeaderMode::Minimal | HeaderMode::None => Vec::new(),
    };
    // Asked for by name (--pk-hash-header): carried whatever the mode.
    headers.extend(extra.iter().map(|(name, value)| (name.clone().into(), value.clone())));
    let full = mode == HeaderMode::Full;
    let identified = mode != HeaderMode::None;
    Ok(Message {
        kind: Kind::Event { position: envelope.position, action: envelope.action },
        exchange: route.exchange.clone(),
        routing_key: route.routing_key.clone(),
        message_id: if identified { envelope.message_id } else { String::new() },
        headers,
        timestamp: if full { u64::try_from(envelope.commit_time_micros / 1_000_000).unwrap_or(0) } else { 0 },
        content_type: if identified { CONTENT_TYPE.into() } else { "".into() },
        content_encoding: content_encoding.map(Into::into),
        app_id: if full { APP_ID.into() } else { "".into() },
        message_type: None,
        mandatory: None,
        body,
    })
}

/// Dead-lettered outbox messages carry why in this header.
pub const HEADER_REASON: &str = "reason";

/// Where a transaction's outbox message sits: its commit and default message id.
pub struct OutboxPlace<'a> {
    /// `<commit LSN>:outbox:<n>`; used when the application gave none.
    pub default_id: String,
    pub lsn_text: &'a str,
    pub commit_time_micros: i64,
}

/// An outbox message as the application wrote it: its routing key, message id and headers, the
/// body untouched (never compressed), `type` its routing key; to `--outbox-exchange`.
pub fn outbox(header: &OutboxHeader, body: Vec<u8>, place: OutboxPlace<'_>, exchange: &std::sync::Arc<str>) -> Message {
    let mut headers: Vec<_> = header.headers.iter().map(|(name, value)| (name.clone().into(), value.clone())).collect();
    headers.push((HEADER_OUTBOX.into(), "true".to_owned()));
    headers.push((HEADER_LSN.into(), place.lsn_text.to_owned()));
    Message {
        kind: Kind::Outbox,
        exchange: Some(exchange.clone()),
        routing_key: header.routing_key.clone(),
        message_id: header.message_id.clone().unwrap_or(place.default_id),
        headers,
        timestamp: u64::try_from(place.commit_time_micros / 1_000_000).unwrap_or(0),
        content_type: CONTENT_TYPE.into(),
        content_encoding: None,
        app_id: APP_ID.into(),
        message_type: Some(header.routing_key.clone()),
        // An application routing key no queue takes must not stall the events behind it.
        mandatory: Some(false),
        body,
    }
}

/// A signed outbox message that cannot be published as written, to `--outbox-dead-letter-exchange`
/// with the reason; its content is cut to `max_bytes`.
pub fn dead_outbox(
    reason: &str,
    mut content: Vec<u8>,
    place: OutboxPlace<'_>,
    exchange: &std::sync::Arc<str>,
    max_bytes: usize,
) -> Message {
    let mut headers = vec![
        (HEADER_REASON.into(), reason.to_owned()),
        (HEADER_OUTBOX.into(), "true".to_owned()),
        (HEADER_LSN.into(), place.lsn_text.to_owned()),
    ];
    if content.len() > max_bytes {
        headers
            .push((HEADER_OMITTED.into(), format!("{} bytes after the first {max_bytes}", content.len() - max_bytes)));
        content.truncate(max_bytes);
    }
    Message {
        kind: Kind::Outbox,
        exchange: Some(exchange.clone()),
        routing_key: "malformed".to_owned(),
        message_id: place.default_id,
        headers,
        timestamp: u64::try_from(place.commit_time_micros / 1_000_000).unwrap_or(0),
        content_type: "application/octet-stream".into(),
        content_encoding: None,
        app_id: APP_ID.into(),
        message_type: None,
        mandatory: Some(false),
        body: content,
    }
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 2 + 32), flate2::Compression::fast());
    encoder.write_all(body)?;
    encoder.finish()
}

/// [`build`], held to `--max-message-bytes`: a larger event is an error (`--oversize fail`) or
/// published with its largest values left out and an `omitted` header (`--oversize stub`).
pub fn build_within_limit(
    envelope: Envelope<'_>,
    route: &Route,
    body: Vec<u8>,
    config: &ProducerConfig,
) -> Result<Message, ProducerError> {
    let extra = config.pk_hash_header.as_ref().map(|name| (name.clone(), row_key(&envelope.table.qualified, &body)));
    let message = build(envelope.clone(), route, body, config.compression, &extra, config.headers)?;
    let limit = config.max_message_bytes;
    if message.body.len() <= limit {
        return Ok(message);
    }
    let oversize = |why: Option<String>| ProducerError::Oversize {
        table: envelope.table.qualified.clone(),
        message_id: envelope.message_id.clone(),
        bytes: message.body.len(),
        limit,
        why,
    };
    if config.oversize == Oversize::Fail {
        return Err(oversize(None));
    }
    let stubbed = oversize::stub(&plain_body(&message)?, limit).map_err(|e| oversize(Some(e.to_string())))?;
    let mut smaller = build(envelope.clone(), route, stubbed.body, config.compression, &extra, config.headers)?;
    if smaller.body.len() > limit {
        return Err(oversize(Some(format!("still {} bytes with its values left out", smaller.body.len()))));
    }
    let table = &envelope.table.qualified;
    tracing::warn!(%table, message_id = %envelope.message_id, bytes = message.body.len(), limit, omitted = ?stubbed.omitted, "an event above --max-message-bytes is published with its largest values left out (--oversize stub)");
    metrics::counter!(EVENTS_STUBBED, "table" => table.clone()).increment(1);
    smaller.headers.push((HEADER_OMITTED.into(), stubbed.omitted.join(",")));
    Ok(smaller)
}

/// The digest of `schema.table:<the event's id as JSON>`: the same for every event of one row,
/// and 32 hex characters whatever the key (a key of any size fits in a header frame). (The body
/// is the producer's own JSON; should its `id` be unreadable, the table alone keeps the events
/// of the table together.)
fn row_key(table: &str, body: &[u8]) -> String {
    use sha2::Digest as _;
    #[derive(serde::Deserialize)]
    struct Key<'a> {
        #[serde(borrow)]
        id: Option<&'a serde_json::value::RawValue>,
    }
    let mut digest = sha2::Sha256::new();
    digest.update(table.as_bytes());
    if let Ok(Key { id: Some(id) }) = serde_json::from_slice::<Key<'_>>(body) {
        digest.update(b":");
        digest.update(id.get().as_bytes());
    }
    digest.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The body of `message` as the event was written (decompressed when gzipped).
pub fn plain_body(message: &Message) -> std::io::Result<Vec<u8>> {
    if message.content_encoding.is_none() {
        return Ok(message.body.clone());
    }
    let mut plain = Vec::with_capacity(message.body.len() * 4);
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&message.body[..]), &mut plain)?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::row_key;

    #[test]
    fn the_row_key_is_a_digest_of_the_table_and_the_id() {
        let body = br#"{"table_name":"public.t","action":"U","new":{"id":7,"a":"x"},"id":{"id":7},"lsn":"0/1"}"#;
        let other = br#"{"table_name":"public.t","action":"D","old":{"id":7},"id":{"id":7},"lsn":"0/2"}"#;
        let key = row_key("public.t", body);
        assert_eq!(key.len(), 32);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(key, row_key("public.t", other), "every event of the row");
        assert_ne!(key, row_key("public.u", body), "another table");
        assert_ne!(key, row_key("public.t", br#"{"id":{"id":8}}"#), "another row");
        assert_eq!(row_key("public.t", b"not json"), row_key("public.t", br#"{"table_name":"public.t"}"#));
    }
}
