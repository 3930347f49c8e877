//! Reading back the end of a stream: the broker's `last` offset is the stream's last chunk of
//! messages (offset-tracking chunks never count), so the last message its writer stored is there
//! when that writer is the stream's only one.

use std::time::Duration;

use futures_util::StreamExt;
use rabbitmq_stream_client::types::{Message, OffsetSpecification};

use crate::connect::environment;
use crate::{property, StreamError, StreamUrl};

/// The message of `stream`'s last chunk whose application property `name` is `value`, with its
/// offset; `None` when no message of that chunk has it (none came for `wait`).
pub async fn find_in_last_chunk(
    url: &StreamUrl,
    stream: &str,
    name: &str,
    value: &str,
    connection_name: &str,
    wait: Duration,
) -> Result<Option<(u64, Message)>, StreamError> {
    let environment = environment(url, connection_name).await?;
    let mut consumer = environment
        .consumer()
        .client_provided_name(connection_name)
        .offset(OffsetSpecification::Last)
        .build(stream)
        .await
        .map_err(|e| StreamError::Operation {
            stream: stream.to_owned(),
            operation: "read the last chunk",
            reason: e.to_string(),
            kind: pgevents_retry::ErrorKind::Transient,
        })?;
    let mut found = None;
    while let Ok(Some(delivery)) = tokio::time::timeout(wait, consumer.next()).await {
        let delivery = delivery.map_err(|e| StreamError::Operation {
            stream: stream.to_owned(),
            operation: "read the last chunk",
            reason: e.to_string(),
            kind: pgevents_retry::ErrorKind::Transient,
        })?;
        if property(delivery.message(), name).as_deref() == Some(value) {
            found = Some((delivery.offset(), delivery.message().clone()));
            break;
        }
    }
    let _ = consumer.handle().close().await;
    Ok(found)
}
