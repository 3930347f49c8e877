//! Turns a finished event body into the AMQP message the publisher sends: routing key and
//! exchange of its table, message id, headers, timestamp and optional gzip compression. Used
//! for streamed changes and snapshot rows alike, so both look the same on the wire.

use std::io::Write as _;

use flate2::write::GzEncoder;
use pgevents_amqp::OutgoingMessage;
use pgevents_decode::TableRef;
use pgevents_event::{Action, APP_ID, CONTENT_TYPE, HEADER_ACTION, HEADER_LSN, HEADER_TABLE};

use crate::config::Compression;
use crate::routing::Route;

/// What identifies one event on the wire besides its body.
pub struct Envelope<'a> {
    pub table: &'a TableRef,
    pub action: Action,
    pub message_id: String,
    pub lsn_text: &'a str,
    /// Unix microseconds.
    pub commit_time_micros: i64,
}

pub fn build(
    envelope: Envelope<'_>,
    route: &Route,
    body: Vec<u8>,
    compression: Compression,
) -> std::io::Result<OutgoingMessage> {
    let (body, content_encoding) = match compression {
        Compression::None => (body, None),
        Compression::Gzip => (gzip(&body)?, Some("gzip")),
    };
    Ok(OutgoingMessage {
        exchange: route.exchange.clone(),
        routing_key: route.routing_key.clone(),
        message_id: envelope.message_id,
        headers: vec![
            (HEADER_ACTION.into(), envelope.action.code().to_owned()),
            (HEADER_TABLE.into(), envelope.table.qualified.clone()),
            (HEADER_LSN.into(), envelope.lsn_text.to_owned()),
        ],
        timestamp: u64::try_from(envelope.commit_time_micros / 1_000_000).unwrap_or(0),
        content_type: CONTENT_TYPE.into(),
        content_encoding: content_encoding.map(Into::into),
        app_id: APP_ID.into(),
        body,
    })
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 2 + 32), flate2::Compression::fast());
    encoder.write_all(body)?;
    encoder.finish()
}
