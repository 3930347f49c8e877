//! Reading one stream over the stream protocol, on a connection of its own to the stream's
//! leader: the messages in offset order with their offsets, from where the caller starts (the
//! first message held, the last chunk, the next one written, or an offset), and the offsets a
//! named reader stores on the broker (server-side offset tracking).
//!
//! Memory is bounded: the broker sends a chunk (one batch it wrote, a frame at most) only for a
//! credit, and the reader grants the next credit once the chunk is handed over, into a channel
//! of [`CHUNKS_AHEAD`] chunks. One chunk at a time on the wire also keeps them in order: the
//! client library hands each frame to its handler in a task of its own.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pgevents_amqp::{decode_body, BodyError};
use rabbitmq_stream_client::error::ClientError;
use rabbitmq_stream_client::types::{Message, OffsetSpecification, Response, ResponseCode, ResponseKind};
use rabbitmq_stream_client::Client;
use tokio::sync::mpsc;

use crate::connect::{leader, StreamConnection};
use crate::{StreamError, StreamUrl};

/// Chunks read ahead of the caller, at most (one more may wait to be handed over).
pub const CHUNKS_AHEAD: usize = 2;
/// How long connecting and subscribing may take.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The only subscription of the connection.
const SUBSCRIPTION: u8 = 1;

/// Where reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest message the stream still holds.
    First,
    /// The stream's last chunk (its first message on).
    LastChunk,
    /// The next message written.
    Next,
    /// This offset (or the first held, if retention removed it; the next written, if beyond).
    Offset(u64),
}

impl Start {
    fn specification(self) -> OffsetSpecification {
        match self {
            Start::First => OffsetSpecification::First,
            Start::LastChunk => OffsetSpecification::Last,
            Start::Next => OffsetSpecification::Next,
            Start::Offset(offset) => OffsetSpecification::Offset(offset),
        }
    }
}

/// One message with its offset.
#[derive(Debug, Clone)]
pub struct Record {
    pub offset: u64,
    pub message: Message,
}

impl Record {
    /// The body as its publisher meant it (gunzipped when its content encoding says so), at
    /// most `max_bytes` long once decompressed; `None` without a data section.
    pub fn body(&self, max_bytes: usize) -> Option<Result<Cow<'_, [u8]>, BodyError>> {
        let data = self.message.data()?;
        let encoding = self.message.properties().and_then(|p| p.content_encoding.as_deref()).map(String::as_str);
        Some(decode_body(data, encoding, max_bytes))
    }
}

type Chunk = Result<(u64, Vec<Message>), StreamError>;

/// A subscription to one stream.
pub struct StreamReader {
    client: StreamConnection,
    stream: String,
    chunks: mpsc::Receiver<Chunk>,
    /// The chunk being handed out, and the offset of its next message.
    current: std::vec::IntoIter<Message>,
    next_offset: u64,
    /// Messages below this offset are skipped (the broker starts at the chunk holding it).
    from: u64,
    /// An error [`StreamReader::try_next`] met, for [`StreamReader::next`] to report.
    failed: Option<StreamError>,
    /// An error was reported: the subscription is over.
    ended: bool,
}

impl StreamReader {
    /// Subscribes to `stream` (which must exist) from `start`.
    pub async fn open(
        url: &StreamUrl,
        stream: &str,
        start: Start,
        connection_name: &str,
    ) -> Result<StreamReader, StreamError> {
        Self::open_as(url, stream, None, start, connection_name).await
    }

    /// Subscribes as the reader `name`: right after the offset it stored last, or from
    /// `otherwise` when it has stored none.
    pub async fn open_tracked(
        url: &StreamUrl,
        stream: &str,
        name: &str,
        otherwise: Start,
        connection_name: &str,
    ) -> Result<StreamReader, StreamError> {
        Self::open_as(url, stream, Some(name), otherwise, connection_name).await
    }

    /// Connects to the stream's leader and subscribes: from where the reader `name` stopped
    /// when it has stored an offset, from `start` otherwise.
    async fn open_as(
        url: &StreamUrl,
        stream: &str,
        name: Option<&str>,
        start: Start,
        connection_name: &str,
    ) -> Result<StreamReader, StreamError> {
        within(stream, async {
            let client = leader(url, stream, connection_name).await?;
            let start = match name {
                Some(name) => match client.query_offset(name.to_owned(), stream).await {
                    Ok(stored) => Start::Offset(stored.saturating_add(1)),
                    Err(ClientError::RequestError(ResponseCode::OffsetNotFound)) => start,
                    Err(e) => return Err(StreamError::operation(stream, "ask for the stored offset", &e)),
                },
                None => start,
            };
            Self::subscribe(client, stream, start).await
        })
        .await
    }

    async fn subscribe(client: StreamConnection, stream: &str, start: Start) -> Result<StreamReader, StreamError> {
        let (tx, chunks) = mpsc::channel(CHUNKS_AHEAD);
        let handler = Handler { tx, client: Arc::new(Mutex::new(Some((*client).clone()))), stream: stream.to_owned() };
        client
            .set_handler(move |item: Option<Result<Response, ClientError>>| {
                let handler = handler.clone();
                async move {
                    handler.handle(item).await;
                    Ok(())
                }
            })
            .await;
        let reader = StreamReader {
            client,
            stream: stream.to_owned(),
            chunks,
            current: Vec::new().into_iter(),
            next_offset: 0,
            from: match start {
                Start::Offset(offset) => offset,
                _ => 0,
            },
            failed: None,
            ended: false,
        };
        let subscribed = reader
            .client
            .subscribe(SUBSCRIPTION, stream, start.specification(), 1, HashMap::new())
            .await
            .map_err(|e| StreamError::operation(stream, "subscribe", &e))?;
        if !subscribed.is_ok() {
            return Err(StreamError::refused(stream, "subscribe", subscribed.code()));
        }
        Ok(reader)
    }

    /// The next message, waiting for it. Cancel-safe. An error means the subscription is done
    /// (the connection was lost, the stream deleted or its leader moved).
    pub async fn next(&mut self) -> Result<Record, StreamError> {
        loop {
            if let Some(record) = self.take_current() {
                return Ok(record);
            }
            if self.ended {
                return Err(closed());
            }
            if let Some(error) = self.failed.take() {
                self.ended = true;
                return Err(error);
            }
            match self.chunks.recv().await.unwrap_or_else(|| Err(closed())) {
                Ok(chunk) => self.start_chunk(chunk),
                Err(error) => {
                    // The end of the connection may overtake its last chunks (the client hands
                    // each frame over in a task of its own): none is taken after it.
                    self.ended = true;
                    return Err(error);
                }
            }
        }
    }

    /// The next message if it has already arrived; errors are left to [`StreamReader::next`].
    pub fn try_next(&mut self) -> Option<Record> {
        loop {
            if let Some(record) = self.take_current() {
                return Some(record);
            }
            if self.ended || self.failed.is_some() {
                return None;
            }
            match self.chunks.try_recv() {
                Ok(Ok(chunk)) => self.start_chunk(chunk),
                Ok(Err(e)) => {
                    self.failed = Some(e);
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Stores `offset` as the last one the reader `name` has handled (the broker keeps it in
    /// the stream; a later [`StreamReader::open_tracked`] starts after it).
    pub async fn store_offset(&self, name: &str, offset: u64) -> Result<(), StreamError> {
        self.client
            .store_offset(name, &self.stream, offset)
            .await
            .map_err(|e| StreamError::operation(&self.stream, "store the offset", &e))
    }

    /// Whether the message [`StreamReader::next`] returned last was the last of its chunk (a
    /// batch the broker wrote at once: reading from [`Start::LastChunk`], the end of the stream
    /// as it was when reading began).
    pub fn chunk_done(&self) -> bool {
        self.current.as_slice().is_empty()
    }

    fn take_current(&mut self) -> Option<Record> {
        for message in self.current.by_ref() {
            let offset = self.next_offset;
            self.next_offset += 1;
            if offset >= self.from {
                return Some(Record { offset, message });
            }
        }
        None
    }

    fn start_chunk(&mut self, (first, messages): (u64, Vec<Message>)) {
        self.next_offset = first;
        self.current = messages.into_iter();
    }
}

/// `open` within [`OPEN_TIMEOUT`] (a broker that stopped answering would hold it forever).
async fn within<T>(
    stream: &str,
    open: impl std::future::Future<Output = Result<T, StreamError>>,
) -> Result<T, StreamError> {
    tokio::time::timeout(OPEN_TIMEOUT, open).await.unwrap_or_else(|_| {
        Err(StreamError::Operation {
            stream: stream.to_owned(),
            operation: "subscribe",
            reason: format!("no answer within {}s", OPEN_TIMEOUT.as_secs()),
            kind: pgevents_retry::ErrorKind::Transient,
        })
    })
}

fn closed() -> StreamError {
    StreamError::Closed("the broker closed the connection".into())
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader").field("stream", &self.stream).field("next_offset", &self.next_offset).finish()
    }
}

/// Hands each chunk over, then grants the credit for the next. It holds the connection only
/// while the connection lives (a client holding its own handler would never be freed).
#[derive(Clone)]
struct Handler {
    tx: mpsc::Sender<Chunk>,
    client: Arc<Mutex<Option<Client>>>,
    stream: String,
}

impl Handler {
    fn client(&self) -> Option<Client> {
        self.client.lock().ok().and_then(|c| c.clone())
    }

    fn forget_client(&self) {
        if let Ok(mut client) = self.client.lock() {
            client.take();
        }
    }

    async fn fail(&self, error: StreamError) {
        self.forget_client();
        let _ = self.tx.send(Err(error)).await;
    }
}

impl Handler {
    async fn handle(&self, item: Option<Result<Response, ClientError>>) {
        let response = match item {
            None => return self.fail(closed()).await,
            Some(Err(e)) => return self.fail(StreamError::operation(&self.stream, "read", &e)).await,
            Some(Ok(response)) => response,
        };
        match response.kind() {
            ResponseKind::Deliver(deliver) => {
                if self.tx.send(Ok((deliver.chunk_first_offset, deliver.messages))).await.is_err() {
                    self.forget_client(); // the reader is gone
                    return;
                }
                if let Some(client) = self.client() {
                    if let Err(e) = client.credit(SUBSCRIPTION, 1).await {
                        self.fail(StreamError::operation(&self.stream, "ask for the next chunk", &e)).await;
                    }
                }
            }
            ResponseKind::MetadataUpdate(_) => {
                let why =
                    format!("the metadata of stream {:?} changed: its leader moved or it was deleted", self.stream);
                self.fail(StreamError::Closed(why)).await;
            }
            _ => {}
        }
    }
}
