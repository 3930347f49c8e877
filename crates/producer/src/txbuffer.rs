//! The events of the transaction being read, held until its commit.
//!
//! Events (and the transaction's outbox messages, in their place among them) wait for the
//! commit because a context message or a skip request may arrive anywhere in the transaction. Past a memory budget they go to an anonymous temporary file, so
//! a transaction of millions of rows does not grow the producer's memory. File I/O runs on the
//! blocking pool, in chunks.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use pgevents_decode::outbox::{MalformedOutbox, OutboxHeader, OutboxMessage};
use pgevents_decode::TableRef;
use pgevents_event::Action;

/// One event or outbox message of the transaction, at position `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    pub item: Item,
    pub seq: u64,
    /// A row event written up to `seq` (see `pgevents_decode::encode::close_event`), or an
    /// outbox message's body as the application wrote it.
    pub body: Vec<u8>,
}

/// What a pending message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Change {
        table: Arc<TableRef>,
        action: Action,
    },
    Outbox(Arc<OutboxHeader>),
    /// A signed outbox message that cannot be published as written (the reason): the body is
    /// its content, for the dead-letter exchange.
    DeadOutbox(Arc<str>),
}

impl PendingEvent {
    pub fn change(table: Arc<TableRef>, action: Action, seq: u64, body: Vec<u8>) -> PendingEvent {
        PendingEvent { item: Item::Change { table, action }, seq, body }
    }

    pub fn outbox(message: OutboxMessage) -> PendingEvent {
        PendingEvent { item: Item::Outbox(Arc::new(message.header)), seq: message.seq, body: message.body }
    }

    pub fn dead_outbox(message: MalformedOutbox) -> PendingEvent {
        PendingEvent { item: Item::DeadOutbox(Arc::from(message.reason)), seq: message.seq, body: message.content }
    }
}

/// The spill record's table index of an item that is not a row event.
const NO_TABLE: u32 = u32::MAX;
const OUTBOX_CODE: u8 = b'o';
const DEAD_OUTBOX_CODE: u8 = b'x';

const CHUNK: usize = 1 << 20;

/// Events of one transaction: the first ones in memory, the rest in a spill file.
pub struct TxBuffer {
    memory: Vec<PendingEvent>,
    memory_bytes: usize,
    budget: usize,
    spill_dir: Option<PathBuf>,
    spill: Option<Spill>,
}

struct Spill {
    file: Option<File>,
    staged: Vec<u8>,
    tables: Vec<Arc<TableRef>>,
    table_index: HashMap<String, u32>,
    events: u64,
}

fn action_code(action: Action) -> u8 {
    action.code().as_bytes()[0]
}

fn io_err(e: tokio::task::JoinError) -> io::Error {
    io::Error::other(format!("spill file task failed: {e}"))
}

impl Spill {
    fn new(dir: Option<&PathBuf>) -> io::Result<Spill> {
        let file = match dir {
            Some(dir) => tempfile::tempfile_in(dir)?,
            None => tempfile::tempfile()?,
        };
        Ok(Spill {
            file: Some(file),
            staged: Vec::with_capacity(CHUNK + 4096),
            tables: Vec::new(),
            table_index: HashMap::new(),
            events: 0,
        })
    }

    fn table_index(&mut self, table: &Arc<TableRef>) -> u32 {
        match self.table_index.get(&table.qualified) {
            Some(&i) => i,
            None => {
                let i = self.tables.len() as u32;
                self.table_index.insert(table.qualified.clone(), i);
                self.tables.push(table.clone());
                i
            }
        }
    }

    async fn push(&mut self, event: PendingEvent) -> io::Result<()> {
        // Outbox items keep what describes them in front of the body, as a line of JSON.
        let (index, code, head) = match &event.item {
            Item::Change { table, action } => (self.table_index(table), action_code(*action), Vec::new()),
            Item::Outbox(header) => (NO_TABLE, OUTBOX_CODE, line(header.as_ref())?),
            Item::DeadOutbox(reason) => (NO_TABLE, DEAD_OUTBOX_CODE, line(&reason.as_ref())?),
        };
        let len = u32::try_from(head.len() + event.body.len()).map_err(|_| io::Error::other("event over 4 GiB"))?;
        self.staged.extend_from_slice(&index.to_le_bytes());
        self.staged.push(code);
        self.staged.extend_from_slice(&event.seq.to_le_bytes());
        self.staged.extend_from_slice(&len.to_le_bytes());
        self.staged.extend_from_slice(&head);
        self.staged.extend_from_slice(&event.body);
        self.events += 1;
        if self.staged.len() >= CHUNK {
            self.write_staged().await?;
        }
        Ok(())
    }

    async fn write_staged(&mut self) -> io::Result<()> {
        let mut file = self.file.take().ok_or_else(|| io::Error::other("spill file lost"))?;
        let mut data = std::mem::take(&mut self.staged);
        let (file, data) = tokio::task::spawn_blocking(move || {
            let result = file.write_all(&data);
            data.clear();
            result.map(|_| (file, data))
        })
        .await
        .map_err(io_err)??;
        self.file = Some(file);
        self.staged = data;
        Ok(())
    }
}

/// `value` as one line of JSON (JSON text never holds a raw newline).
fn line<T: serde::Serialize + ?Sized>(value: &T) -> io::Result<Vec<u8>> {
    let mut out = serde_json::to_vec(value).map_err(io::Error::other)?;
    out.push(b'\n');
    Ok(out)
}

/// Reads the line [`line`] wrote off the front of `body`.
fn take_line<T: serde::de::DeserializeOwned>(body: &mut Vec<u8>) -> io::Result<T> {
    let end = body.iter().position(|b| *b == b'\n').ok_or_else(|| io::Error::other("bad spill record: no line"))?;
    let value = serde_json::from_slice(&body[..end]).map_err(io::Error::other)?;
    body.drain(..=end);
    Ok(value)
}

/// Reads spilled events back, in order.
struct SpillReader {
    file: Option<File>,
    buf: Vec<u8>,
    pos: usize,
    tables: Vec<Arc<TableRef>>,
    remaining: u64,
}

impl SpillReader {
    /// The next spilled event, or `None` at the end.
    async fn next(&mut self) -> io::Result<Option<PendingEvent>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let header = 4 + 1 + 8 + 4;
        self.fill(header).await?;
        let b = &self.buf[self.pos..];
        let table = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let action = b[4];
        let seq = u64::from_le_bytes(b[5..13].try_into().map_err(|_| io::Error::other("bad spill record"))?);
        let len = u32::from_le_bytes([b[13], b[14], b[15], b[16]]) as usize;
        self.fill(header + len).await?;
        let mut body = self.buf[self.pos + header..self.pos + header + len].to_vec();
        self.pos += header + len;
        self.remaining -= 1;
        let item = match (table as u32, action) {
            (NO_TABLE, OUTBOX_CODE) => Item::Outbox(Arc::new(take_line(&mut body)?)),
            (NO_TABLE, DEAD_OUTBOX_CODE) => Item::DeadOutbox(Arc::from(take_line::<String>(&mut body)?)),
            _ => {
                let table =
                    self.tables.get(table).cloned().ok_or_else(|| io::Error::other("bad spill record table"))?;
                let action = Action::ALL
                    .into_iter()
                    .find(|a| action_code(*a) == action)
                    .ok_or_else(|| io::Error::other("bad spill record action"))?;
                Item::Change { table, action }
            }
        };
        Ok(Some(PendingEvent { item, seq, body }))
    }

    /// Makes sure `n` bytes are buffered from `pos`.
    async fn fill(&mut self, n: usize) -> io::Result<()> {
        if self.buf.len() - self.pos >= n {
            return Ok(());
        }
        self.buf.drain(..self.pos);
        self.pos = 0;
        let want = n.max(CHUNK) - self.buf.len();
        let mut file = self.file.take().ok_or_else(|| io::Error::other("spill file lost"))?;
        let mut buf = std::mem::take(&mut self.buf);
        let (file, buf) = tokio::task::spawn_blocking(move || {
            let start = buf.len();
            buf.resize(start + want, 0);
            let mut filled = 0;
            while filled < want {
                match file.read(&mut buf[start + filled..]) {
                    Ok(0) => break,
                    Ok(k) => filled += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(start + filled);
            Ok((file, buf))
        })
        .await
        .map_err(io_err)??;
        self.file = Some(file);
        self.buf = buf;
        if self.buf.len() < n {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "spill file is shorter than what was written"));
        }
        Ok(())
    }
}

impl TxBuffer {
    /// A buffer keeping up to `budget` bytes of event bodies in memory; beyond that, events go to
    /// a temporary file in `spill_dir` (the system's temporary directory if `None`).
    pub fn new(budget: usize, spill_dir: Option<PathBuf>) -> Self {
        TxBuffer { memory: Vec::new(), memory_bytes: 0, budget, spill_dir, spill: None }
    }

    pub async fn push(&mut self, event: PendingEvent) -> io::Result<()> {
        if self.spill.is_none() && self.memory_bytes + event.body.len() <= self.budget {
            self.memory_bytes += event.body.len();
            self.memory.push(event);
            return Ok(());
        }
        if self.spill.is_none() {
            self.spill = Some(Spill::new(self.spill_dir.as_ref())?);
        }
        match self.spill.as_mut() {
            Some(spill) => spill.push(event).await,
            None => Err(io::Error::other("spill file missing")),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.spill.is_none()
    }

    /// Whether events went to disk.
    #[cfg(test)]
    fn spilled(&self) -> bool {
        self.spill.is_some()
    }

    /// Hands the events over in order (memory first, then the spill file) and empties the buffer.
    pub async fn take(&mut self) -> io::Result<TxEvents> {
        self.memory_bytes = 0;
        let memory = std::mem::take(&mut self.memory).into_iter();
        let Some(mut spill) = self.spill.take() else {
            return Ok(TxEvents { memory, spill: None });
        };
        spill.write_staged().await?;
        let mut file = spill.file.take().ok_or_else(|| io::Error::other("spill file lost"))?;
        let file = tokio::task::spawn_blocking(move || file.seek(SeekFrom::Start(0)).map(|_| file))
            .await
            .map_err(io_err)??;
        let reader =
            SpillReader { file: Some(file), buf: Vec::new(), pos: 0, tables: spill.tables, remaining: spill.events };
        Ok(TxEvents { memory, spill: Some(reader) })
    }
}

/// A transaction's events, taken from the buffer: those held in memory, then those spilled.
pub struct TxEvents {
    memory: std::vec::IntoIter<PendingEvent>,
    spill: Option<SpillReader>,
}

impl TxEvents {
    /// The next event in order, or `None` at the end.
    pub async fn next(&mut self) -> io::Result<Option<PendingEvent>> {
        if let Some(event) = self.memory.next() {
            return Ok(Some(event));
        }
        match self.spill.as_mut() {
            Some(spill) => spill.next().await,
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64, table: &Arc<TableRef>) -> PendingEvent {
        let body = format!("{{\"n\":{i}").into_bytes().repeat((i % 5 + 1) as usize);
        match i % 101 {
            7 => PendingEvent::outbox(OutboxMessage {
                seq: i,
                header: OutboxHeader {
                    routing_key: format!("orders.{i}"),
                    message_id: i.is_multiple_of(2).then(|| format!("id-{i}")),
                    headers: vec![("tenant".into(), "t\n1".into())],
                },
                body,
            }),
            8 => PendingEvent::dead_outbox(MalformedOutbox { seq: i, reason: format!("bad\n{i}"), content: body }),
            _ => PendingEvent::change(table.clone(), Action::Insert, i, body),
        }
    }

    #[tokio::test]
    async fn keeps_order_across_memory_and_disk() {
        let a = Arc::new(TableRef::new("public", "a"));
        let b = Arc::new(TableRef::new("public", "b"));
        let mut buffer = TxBuffer::new(1000, None);
        let expected: Vec<PendingEvent> = (0..50_000).map(|i| event(i, if i % 3 == 0 { &a } else { &b })).collect();
        for e in &expected {
            buffer.push(e.clone()).await.unwrap();
        }
        assert!(buffer.spilled());
        let mut events = buffer.take().await.unwrap();
        assert!(events.spill.is_some());
        let mut got = Vec::new();
        while let Some(e) = events.next().await.unwrap() {
            got.push(e);
        }
        assert_eq!(got.len(), expected.len());
        assert!(got == expected);
        assert!(buffer.is_empty());
    }

    #[tokio::test]
    async fn small_transactions_stay_in_memory() {
        let a = Arc::new(TableRef::new("public", "a"));
        let mut buffer = TxBuffer::new(1 << 20, None);
        buffer.push(event(0, &a)).await.unwrap();
        assert!(!buffer.spilled());
        let events = buffer.take().await.unwrap();
        assert_eq!(events.memory.len(), 1);
        assert!(events.spill.is_none());
    }
}
