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

use crate::connect::{drop_in_background, leader};
use crate::{StreamError, StreamUrl};

/// Chunks read ahead of the caller, at most (one more may wait to be handed over).
pub const CHUNKS_AHEAD: usize = 2;
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
    client: Client,
    stream: String,
    chunks: mpsc::Receiver<Chunk>,
    /// The chunk being handed out, and the offset of its next message.
    current: std::vec::IntoIter<Message>,
    next_offset: u64,
    /// Messages below this offset are skipped (the broker starts at the chunk holding it).
    from: u64,
    /// An error [`StreamReader::try_next`] met, for [`StreamReader::next`] to report.
    failed: Option<StreamError>,
}

impl StreamReader {
    /// Subscribes to `stream` (which must exist) from `start`.
    pub async fn open(
        url: &StreamUrl,
        stream: &str,
        start: Start,
        connection_name: &str,
    ) -> Result<StreamReader, StreamError> {
        let client = leader(url, stream, connection_name).await?;
        Self::subscribe(client, stream, start).await
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
        let client = leader(url, stream, connection_name).await?;
        let start = match client.query_offset(name.to_owned(), stream).await {
            Ok(stored) => Start::Offset(stored.saturating_add(1)),
            Err(ClientError::RequestError(ResponseCode::OffsetNotFound)) => otherwise,
            Err(e) => {
                drop_in_background(&client);
                return Err(StreamError::operation(stream, "ask for the stored offset", &e));
            }
        };
        Self::subscribe(client, stream, start).await
    }

    async fn subscribe(client: Client, stream: &str, start: Start) -> Result<StreamReader, StreamError> {
        let (tx, chunks) = mpsc::channel(CHUNKS_AHEAD);
        let handler = Handler { tx, client: Arc::new(Mutex::new(Some(client.clone()))), stream: stream.to_owned() };
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
            if let Some(error) = self.failed.take() {
                return Err(error);
            }
            let chunk = self.chunks.recv().await.unwrap_or_else(|| Err(closed()));
            self.start_chunk(chunk?);
        }
    }

    /// The next message if it has already arrived; errors are left to [`StreamReader::next`].
    pub fn try_next(&mut self) -> Option<Record> {
        loop {
            if let Some(record) = self.take_current() {
                return Some(record);
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

fn closed() -> StreamError {
    StreamError::Closed("the broker closed the connection".into())
}

/// The connection ends with the reader: the client's heartbeat task would keep it open.
impl Drop for StreamReader {
    fn drop(&mut self) {
        drop_in_background(&self.client);
    }
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
