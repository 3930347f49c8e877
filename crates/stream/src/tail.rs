//! Finding a writer's last message at the end of a stream: the broker's `last` offset is the
//! stream's last chunk of messages (offset-tracking chunks never count); when the message looked
//! for is not there (another writer wrote after it: snapshot rows, another producer), the stream
//! is read backwards, from ever further before that chunk, up to a bound.

use std::time::Duration;

use futures_util::StreamExt;
use pgevents_retry::ErrorKind;
use rabbitmq_stream_client::types::{Message, OffsetSpecification};
use rabbitmq_stream_client::Environment;

use crate::connect::environment;
use crate::{StreamError, StreamUrl};

/// How far back the search goes: at most this many messages before the last chunk.
pub const MAX_SCAN: u64 = 4_000_000;
/// Messages read before the last chunk on the first step back (then twice as many each step).
const FIRST_STEP: u64 = 10_000;

/// The last message of `stream` for which `wanted` holds, with its offset; `None` when the stream
/// is empty or no message within [`MAX_SCAN`] of its end is wanted. `wait`: how long a read may
/// go without a message before its range counts as read.
pub async fn find_last(
    url: &StreamUrl,
    stream: &str,
    wanted: impl Fn(&Message) -> bool,
    connection_name: &str,
    wait: Duration,
) -> Result<Option<(u64, Message)>, StreamError> {
    let environment = environment(url, connection_name).await?;
    // The last chunk: everything from its first offset on.
    let (found, first) =
        read_range(&environment, stream, OffsetSpecification::Last, None, &wanted, connection_name, wait).await?;
    if found.is_some() {
        return Ok(found);
    }
    let Some(last_chunk) = first else {
        return Ok(None);
    };
    let (mut end, mut step) = (last_chunk, FIRST_STEP);
    while end > 0 && last_chunk - end < MAX_SCAN {
        let from = end.saturating_sub(step);
        let range = OffsetSpecification::Offset(from);
        let (found, _) = read_range(&environment, stream, range, Some(end), &wanted, connection_name, wait).await?;
        if found.is_some() {
            return Ok(found);
        }
        end = from;
        step = step.saturating_mul(2);
    }
    Ok(None)
}

/// Reads from `start` up to (not including) offset `until` (or until nothing comes for `wait`);
/// returns the last wanted message and the first offset read.
async fn read_range(
    environment: &Environment,
    stream: &str,
    start: OffsetSpecification,
    until: Option<u64>,
    wanted: &impl Fn(&Message) -> bool,
    connection_name: &str,
    wait: Duration,
) -> Result<(Option<(u64, Message)>, Option<u64>), StreamError> {
    let failed = |e: String| StreamError::Operation {
        stream: stream.to_owned(),
        operation: "read the stream back",
        reason: e,
        kind: ErrorKind::Transient,
    };
    let mut consumer = environment
        .consumer()
        .client_provided_name(connection_name)
        .offset(start)
        .build(stream)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let (mut found, mut first) = (None, None);
    let outcome = loop {
        let delivery = match tokio::time::timeout(wait, consumer.next()).await {
            Ok(Some(Ok(delivery))) => delivery,
            Ok(Some(Err(e))) => break Err(failed(e.to_string())),
            Ok(None) | Err(_) => break Ok(()),
        };
        let offset = delivery.offset();
        if until.is_some_and(|until| offset >= until) {
            break Ok(());
        }
        first.get_or_insert(offset);
        if wanted(delivery.message()) {
            found = Some((offset, delivery.message().clone()));
        }
    };
    let _ = consumer.handle().close().await;
    outcome.map(|()| (found, first))
}
