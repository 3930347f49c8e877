//! Where the history stream begins and ends, found by reading it briefly with a reader of its
//! own: the first offset still held (for gaps past retention) and the newest offset (so that,
//! at start, subscribers that are up to date join the live feed without a replay).

use std::time::Duration;

use crate::source::{Access, From, Reader, SourceError};

/// How long to wait for the first message (an empty stream sends none).
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);
/// The end of the last chunk: no further message for this long.
const QUIET: Duration = Duration::from_millis(200);
const PREFETCH: u16 = 1000;
/// Messages read between acknowledgements (an AMQP reader gets more only as it acknowledges).
const ACK_EVERY: u32 = PREFETCH as u32 / 2;

/// The offset of the oldest message the stream still holds; `None` when it is empty.
pub async fn first_offset(access: &Access, stream: &str) -> Result<Option<i64>, SourceError> {
    read(access, stream, From::First).await
}

/// The offset of the newest message; `None` when the stream is empty.
pub async fn newest_offset(access: &Access, stream: &str) -> Result<Option<i64>, SourceError> {
    read(access, stream, From::LastChunk).await
}

/// Reads one message from `First`, or the whole last chunk (RabbitMQ's `last` starts at its
/// beginning) to its newest offset.
async fn read(access: &Access, stream: &str, from: From) -> Result<Option<i64>, SourceError> {
    let mut reader = Reader::open(access, stream, from, PREFETCH).await?;
    let mut found: Option<i64> = None;
    let mut read: u32 = 0;
    let outcome = loop {
        let wait = if found.is_none() { FIRST_MESSAGE_TIMEOUT } else { QUIET };
        let message = match tokio::time::timeout(wait, reader.next()).await {
            Ok(Ok(message)) => message,
            Ok(Err(e)) => break Err(e),
            Err(_) => break Ok(()),
        };
        if let Some(offset) = message.offset() {
            found = Some(found.map_or(offset, |f| f.max(offset)));
        }
        if from == From::First {
            break Ok(());
        }
        read += 1;
        if read.is_multiple_of(ACK_EVERY) {
            if let Err(e) = reader.acknowledge().await {
                break Err(e);
            }
        }
    };
    reader.close().await;
    outcome.map(|()| found)
}
