//! Publishing to one stream with confirms, on the client's connection itself (not its
//! `Producer`, which keeps a map entry, a boxed callback and a task per message).
//!
//! [`StreamPublisher::send`] gives each message the next publishing id and buffers it;
//! [`StreamPublisher::flush`] sends what is buffered in frames of at most the negotiated frame
//! size; [`StreamPublisher::next_confirm`] says which publishing ids the broker stored (a frame
//! of them at a time), or why not. Ids are consecutive from [`StreamPublisher::last_stored_id`]
//! + 1.
//!
//! A named publisher ([`Dedup::Named`]) is deduplicated by the broker: it drops (and confirms)
//! any message whose id is not above the last it stored for the name, which it says at
//! connect. An unnamed one numbers from 1 on each connection, without deduplication.

use rabbitmq_stream_client::error::ClientError;
use rabbitmq_stream_client::types::{Message, Response, ResponseKind};
use rabbitmq_stream_protocol::codec::Encoder as _;
use tokio::sync::mpsc;

use crate::connect::{leader, StreamConnection};
use crate::{OutgoingStreamMessage, StreamError, StreamUrl};

/// Whether the broker deduplicates the publisher's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dedup {
    Off,
    /// By this producer name.
    Named(String),
}

/// What the broker said.
#[derive(Debug)]
enum StreamConfirm {
    /// These publishing ids are stored.
    Stored(Vec<u64>),
    /// The broker refused a message, or the connection ended.
    Failed(StreamError),
}

/// The only publisher of its connection.
const PUBLISHER_ID: u8 = 1;
/// Bytes of a publish frame besides its messages (size, key, version, publisher id, count),
/// and of each message besides its encoding (publishing id, size).
const FRAME_OVERHEAD: usize = 4 + 2 + 2 + 1 + 4;
const MESSAGE_OVERHEAD: usize = 8 + 4;

/// A publisher on its own connection to the stream's leader.
pub struct StreamPublisher {
    client: StreamConnection,
    stream: String,
    confirms: mpsc::UnboundedReceiver<StreamConfirm>,
    buffer: Vec<Message>,
    buffered_bytes: usize,
    frame_max: usize,
    next_id: u64,
    last_stored_id: u64,
    send_timeout: std::time::Duration,
}

impl StreamPublisher {
    /// Connects to the leader of `stream` (which must exist) and declares the publisher.
    /// Sending a frame may take `send_timeout` at most (then the connection counts as stalled).
    pub async fn connect(
        url: &StreamUrl,
        stream: &str,
        dedup: Dedup,
        connection_name: &str,
        send_timeout: std::time::Duration,
    ) -> Result<StreamPublisher, StreamError> {
        let client = leader(url, stream, connection_name).await?;
        let (tx, confirms) = mpsc::unbounded_channel();
        let handler_stream = stream.to_owned();
        client
            .set_handler(move |item: Option<Result<Response, ClientError>>| {
                let (tx, stream) = (tx.clone(), handler_stream.clone());
                async move {
                    if let Some(confirm) = confirm_of(item, &stream) {
                        let _ = tx.send(confirm);
                    }
                    Ok(())
                }
            })
            .await;
        let name = match &dedup {
            Dedup::Named(name) => Some(name.clone()),
            Dedup::Off => None,
        };
        let declared = client
            .declare_publisher(PUBLISHER_ID, name.clone(), stream)
            .await
            .map_err(|e| StreamError::operation(stream, "declare the publisher", &e))?;
        if !declared.is_ok() {
            return Err(StreamError::refused(stream, "declare the publisher", declared.code()));
        }
        let last_stored_id = match &name {
            Some(name) => client
                .query_publisher_sequence(name, stream)
                .await
                .map_err(|e| StreamError::operation(stream, "ask for the last stored publishing id", &e))?,
            None => 0,
        };
        let frame_max = client.max_frame_size().await.max(4096) as usize;
        Ok(StreamPublisher {
            client,
            stream: stream.to_owned(),
            confirms,
            buffer: Vec::new(),
            buffered_bytes: FRAME_OVERHEAD,
            frame_max,
            next_id: last_stored_id + 1,
            last_stored_id,
            send_timeout,
        })
    }

    /// The publishing id the next message gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The last publishing id the broker stored for this publisher's name (0: none, or no name).
    pub fn last_stored_id(&self) -> u64 {
        self.last_stored_id
    }

    /// Buffers one message (sending the buffer first when it would not fit a frame); returns
    /// its publishing id.
    pub async fn send(&mut self, message: OutgoingStreamMessage) -> Result<u64, StreamError> {
        let id = self.next_id;
        let message = message.into_message(Some(id));
        let size = message.encoded_size() as usize + MESSAGE_OVERHEAD;
        if !self.buffer.is_empty() && self.buffered_bytes + size > self.frame_max {
            self.flush().await?;
        }
        self.buffer.push(message);
        self.buffered_bytes += size;
        self.next_id += 1;
        Ok(id)
    }

    /// Sends what is buffered, in one frame.
    pub async fn flush(&mut self) -> Result<(), StreamError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let messages = std::mem::take(&mut self.buffer);
        self.buffered_bytes = FRAME_OVERHEAD;
        match tokio::time::timeout(self.send_timeout, self.client.publish(PUBLISHER_ID, messages, 1)).await {
            Ok(sent) => sent.map(drop).map_err(|e| StreamError::operation(&self.stream, "publish", &e)),
            Err(_) => Err(StreamError::Closed(format!(
                "a publish frame was not sent within {}s (the connection is stalled)",
                self.send_timeout.as_secs()
            ))),
        }
    }

    /// The next publishing ids the broker stored. Cancel-safe. An error means the connection is
    /// done (or the broker refused a message, with its code's kind).
    pub async fn next_confirm(&mut self) -> Result<Vec<u64>, StreamError> {
        match self.confirms.recv().await {
            Some(StreamConfirm::Stored(ids)) => Ok(ids),
            Some(StreamConfirm::Failed(e)) => Err(e),
            None => Err(StreamError::Closed("the confirm channel ended".into())),
        }
    }

    /// Deletes the publisher and closes the connection (on drop, the connection is dropped).
    pub async fn close(self) {
        let _ = self.client.delete_publisher(PUBLISHER_ID).await;
        let _ = self.client.close().await;
    }
}

/// What a frame from the broker says about this publisher's messages.
fn confirm_of(item: Option<Result<Response, ClientError>>, stream: &str) -> Option<StreamConfirm> {
    match item {
        None => Some(StreamConfirm::Failed(StreamError::Closed("the broker closed the connection".into()))),
        Some(Err(e)) => Some(StreamConfirm::Failed(StreamError::operation(stream, "read from the broker", &e))),
        Some(Ok(response)) => match response.kind() {
            ResponseKind::PublishConfirm(confirm) => Some(StreamConfirm::Stored(confirm.publishing_ids)),
            ResponseKind::PublishError(refusal) => {
                let code = refusal.publishing_errors.first().map(|e| e.error_code.clone())?;
                Some(StreamConfirm::Failed(StreamError::refused(stream, "store a message", &code)))
            }
            // The stream's leader moved or the stream was deleted (the connection's only
            // stream): the broker removed the publisher, and nothing sent since will be confirmed.
            ResponseKind::MetadataUpdate(_) => Some(StreamConfirm::Failed(StreamError::Closed(format!(
                "the metadata of stream {stream:?} changed: its leader moved or it was deleted"
            )))),
            _ => None,
        },
    }
}

impl std::fmt::Debug for StreamPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPublisher").field("stream", &self.stream).field("next_id", &self.next_id).finish()
    }
}
