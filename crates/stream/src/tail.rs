//! Finding a writer's last message at the end of a stream: the broker's `last` offset is the
//! stream's last chunk of messages (offset-tracking chunks never count); when the message looked
//! for is not there (another writer wrote after it: snapshot rows, another producer), the stream
//! is read backwards, from ever further before that chunk, up to a bound.

use std::time::Duration;

use rabbitmq_stream_client::types::Message;

use crate::reader::{Start, StreamReader};
use crate::{StreamError, StreamUrl};

/// How far back the search goes: at most this many messages before the last chunk.
pub const MAX_SCAN: u64 = 4_000_000;
/// Messages read before the last chunk on the first step back (then twice as many each step).
const FIRST_STEP: u64 = 10_000;

/// The last message of `stream` for which `wanted` holds, with its offset; `None` when the stream
/// is empty or no message within [`MAX_SCAN`] of its end is wanted. `wait`: how long a read may
/// go without a message before its range counts as read (an empty stream sends none).
pub async fn find_last(
    url: &StreamUrl,
    stream: &str,
    wanted: impl Fn(&Message) -> bool,
    connection_name: &str,
    wait: Duration,
) -> Result<Option<(u64, Message)>, StreamError> {
    // The last chunk: everything from its first offset on.
    let (found, first) = read_range(url, stream, Start::LastChunk, None, &wanted, connection_name, wait).await?;
    if found.is_some() {
        return Ok(found);
    }
    let Some(last_chunk) = first else {
        return Ok(None);
    };
    let (mut end, mut step) = (last_chunk, FIRST_STEP);
    while end > 0 && last_chunk - end < MAX_SCAN {
        let from = end.saturating_sub(step);
        let (found, _) =
            read_range(url, stream, Start::Offset(from), Some(end), &wanted, connection_name, wait).await?;
        if found.is_some() {
            return Ok(found);
        }
        end = from;
        step = step.saturating_mul(2);
    }
    Ok(None)
}

/// Reads from `start` up to (not including) offset `until`, or without `until` to the end of the
/// first chunk (the last one, from [`Start::LastChunk`]), or until nothing comes for `wait`;
/// returns the last wanted message and the first offset read.
async fn read_range(
    url: &StreamUrl,
    stream: &str,
    start: Start,
    until: Option<u64>,
    wanted: &impl Fn(&Message) -> bool,
    connection_name: &str,
    wait: Duration,
) -> Result<(Option<(u64, Message)>, Option<u64>), StreamError> {
    let mut reader = StreamReader::open(url, stream, start, connection_name).await?;
    let (mut found, mut first) = (None, None);
    loop {
        let record = match tokio::time::timeout(wait, reader.next()).await {
            Ok(record) => record?,
            Err(_) => break,
        };
        if until.is_some_and(|until| record.offset >= until) {
            break;
        }
        first.get_or_insert(record.offset);
        let last_of_chunk = reader.chunk_done();
        if wanted(&record.message) {
            found = Some((record.offset, record.message));
        }
        if until.is_none() && last_of_chunk {
            break;
        }
    }
    Ok((found, first))
}
