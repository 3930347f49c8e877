//! The streaming phase: WAL data and keepalives from the server, standby status updates to it.
//!
//! The two directions are independent halves so that status updates (which keep the server from
//! timing the connection out and tell it what may be discarded) go out even while the reader is
//! held back by a slow downstream.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgevents_event::Lsn;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};

use crate::client::Io;
use crate::wire::{Backend, FrameReader};
use crate::ReplicationError;

/// A message of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalMessage {
    /// One output plugin message; `wal_start` is the LSN the message belongs to (for a commit,
    /// the end of the transaction).
    XLogData { wal_start: Lsn, wal_end: Lsn, data: Bytes },
    /// The server's position; `reply_requested` asks for a status update now.
    Keepalive { wal_end: Lsn, reply_requested: bool },
    /// The server ended the stream (after our CopyDone, or on its own).
    End,
}

/// Reads the server's side of the stream.
pub struct ReplicationReader {
    frames: FrameReader<ReadHalf<Box<dyn Io>>>,
}

fn short(what: &str) -> ReplicationError {
    ReplicationError::Protocol(format!("truncated {what} message"))
}

impl ReplicationReader {
    pub(crate) fn new(frames: FrameReader<ReadHalf<Box<dyn Io>>>) -> Self {
        ReplicationReader { frames }
    }

    /// The next WAL message. Errors reported by the server (slot dropped, server shutting down)
    /// come back as `ReplicationError::Server`.
    pub async fn next(&mut self) -> Result<WalMessage, ReplicationError> {
        loop {
            match self.frames.next().await? {
                Backend::CopyData(data) => return wal_message(data),
                Backend::CopyDone => return Ok(WalMessage::End),
                Backend::Error(e) => return Err(ReplicationError::Server(e)),
                Backend::Notice(n) => tracing::info!(notice = %n, "PostgreSQL notice"),
                _ => {}
            }
        }
    }
}

/// One CopyData message of the replication stream: WAL data (`w`) or a keepalive (`k`).
pub(crate) fn wal_message(mut data: Bytes) -> Result<WalMessage, ReplicationError> {
    if data.is_empty() {
        return Err(short("CopyData"));
    }
    match data.get_u8() {
        b'w' => {
            if data.len() < 24 {
                return Err(short("XLogData"));
            }
            let wal_start = Lsn(data.get_u64());
            let wal_end = Lsn(data.get_u64());
            let _server_time = data.get_i64();
            Ok(WalMessage::XLogData { wal_start, wal_end, data })
        }
        b'k' => {
            if data.len() < 17 {
                return Err(short("keepalive"));
            }
            let wal_end = Lsn(data.get_u64());
            let _server_time = data.get_i64();
            let reply_requested = data.get_u8() == 1;
            Ok(WalMessage::Keepalive { wal_end, reply_requested })
        }
        other => Err(ReplicationError::Protocol(format!("unknown replication message {:?}", other as char))),
    }
}

/// Microseconds since 2000-01-01, PostgreSQL's epoch.
fn pg_now() -> i64 {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    unix - 946_684_800_000_000
}

/// Sends standby status updates and ends the stream.
pub struct StatusSender {
    io: WriteHalf<Box<dyn Io>>,
    buf: BytesMut,
}

impl StatusSender {
    pub(crate) fn new(io: WriteHalf<Box<dyn Io>>) -> Self {
        StatusSender { io, buf: BytesMut::with_capacity(64) }
    }

    /// Standby status update: `received` is what has been read, `flushed` what is safely
    /// delivered (PostgreSQL may discard WAL before it and will not resend it), `reply` asks the
    /// server to answer with a keepalive (a liveness probe).
    pub async fn send_status(&mut self, received: Lsn, flushed: Lsn, reply: bool) -> Result<(), ReplicationError> {
        self.buf.clear();
        // CopyData framing written by hand: 'd', length, then the 'r' message.
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(received.0.max(flushed.0));
        body.put_u64(flushed.0);
        body.put_u64(flushed.0);
        body.put_i64(pg_now());
        body.put_u8(u8::from(reply));
        self.buf.put_u8(b'd');
        self.buf.put_u32(4 + body.len() as u32);
        self.buf.put_slice(&body);
        self.io.write_all(&self.buf).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Tells the server the client is done streaming (CopyDone); it answers with CopyDone,
    /// which the reader reports as [`WalMessage::End`].
    pub async fn finish(&mut self) -> Result<(), ReplicationError> {
        self.buf.clear();
        frontend::copy_done(&mut self.buf);
        self.io.write_all(&self.buf).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Closes the session (Terminate) and the socket.
    pub async fn terminate(mut self) {
        self.buf.clear();
        frontend::terminate(&mut self.buf);
        let _ = self.io.write_all(&self.buf).await;
        let _ = self.io.shutdown().await;
    }
}
