//! The event history: a RabbitMQ stream queue bound to the events exchange with `#`, whose
//! offsets are the ids the SSE gateway hands out.

use amqprs::{FieldTable, FieldValue};

use crate::topology::{bind_queue, declare_queue, declare_topic_exchange, QueueSpec};
use crate::{AmqpError, Channel};

/// Retention of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// `x-max-age`, e.g. `7D`, `12h` (RabbitMQ's units: Y, M, D, h, m, s).
    pub max_age: String,
    /// `x-max-length-bytes`.
    pub max_bytes: u64,
    /// `x-stream-max-segment-size-bytes` (RabbitMQ's default, 500 MB, when `None`). Retention
    /// removes whole segments, so it only applies at this granularity.
    pub segment_bytes: Option<u64>,
    /// `x-initial-cluster-size`: on how many nodes of a cluster the stream is replicated when
    /// it is created (`None`: the broker decides, all nodes up to its limit). Only read at
    /// creation: an existing stream keeps its replicas.
    pub replicas: Option<u16>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_age: "7D".into(), max_bytes: 10 << 30, segment_bytes: None, replicas: None }
    }
}

/// Declares the stream queue (durable, `x-queue-type: stream`) and binds it to every event of
/// `exchange`. Idempotent; declaring it again with other retention settings fails with
/// PRECONDITION_FAILED, which the error says.
pub async fn ensure_stream(
    channel: &Channel,
    stream: &str,
    exchange: &str,
    retention: &Retention,
) -> Result<(), AmqpError> {
    let mut arguments = FieldTable::new();
    let mut put = |key: &str, value: FieldValue| {
        if let Ok(key) = key.try_into() {
            arguments.insert(key, value);
        }
    };
    put("x-queue-type", FieldValue::from("stream"));
    put("x-max-age", FieldValue::from(retention.max_age.as_str()));
    put("x-max-length-bytes", FieldValue::l(i64::try_from(retention.max_bytes).unwrap_or(i64::MAX)));
    if let Some(bytes) = retention.segment_bytes {
        put("x-stream-max-segment-size-bytes", FieldValue::l(i64::try_from(bytes).unwrap_or(i64::MAX)));
    }
    if let Some(replicas) = retention.replicas {
        put("x-initial-cluster-size", FieldValue::l(i64::from(replicas)));
    }
    declare_topic_exchange(channel, exchange).await?;
    let spec = QueueSpec { name: stream.to_owned(), durable: true, arguments, ..QueueSpec::default() };
    declare_queue(channel, &spec).await?;
    bind_queue(channel, stream, exchange, &["#".to_owned()]).await
}
