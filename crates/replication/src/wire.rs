//! Backend message framing: reads `tag, length, body` frames from a buffered stream and parses
//! the handful of message types the replication protocol uses (including CopyBothResponse `W`,
//! which postgres-protocol does not know).

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{ReplicationError, ServerError};

/// The largest frame accepted; PostgreSQL's own limit for a message is 1 GB.
const MAX_FRAME: usize = 1 << 30;

/// A message from the server.
#[derive(Debug)]
pub(crate) enum Backend {
    Authentication {
        code: u32,
        data: Bytes,
    },
    ParameterStatus {
        name: String,
        value: String,
    },
    ReadyForQuery,
    RowDescription,
    DataRow {
        values: Vec<Option<String>>,
    },
    CommandComplete,
    EmptyQuery,
    Error(ServerError),
    Notice(ServerError),
    CopyBoth,
    CopyOut,
    CopyData(Bytes),
    CopyDone,
    /// BackendKeyData and anything else the client does not use.
    Other,
}

/// Reads frames into a reusable buffer.
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R) -> Self {
        FrameReader { io, buf: BytesMut::with_capacity(64 * 1024) }
    }

    /// Reads the next message. `Err(Io(UnexpectedEof))` when the server closes the connection.
    pub(crate) async fn next(&mut self) -> Result<Backend, ReplicationError> {
        loop {
            if let Some(message) = self.parse_buffered()? {
                return Ok(message);
            }
            if self.buf.capacity() - self.buf.len() < 8 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(ReplicationError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }

    fn parse_buffered(&mut self) -> Result<Option<Backend>, ReplicationError> {
        next_frame(&mut self.buf)
    }

    pub(crate) fn io_mut(&mut self) -> &mut R {
        &mut self.io
    }

    pub(crate) fn into_inner(self) -> (R, BytesMut) {
        (self.io, self.buf)
    }

    pub(crate) fn from_parts(io: R, buf: BytesMut) -> Self {
        FrameReader { io, buf }
    }
}

/// The next whole message in `buf` (removed from it), `Ok(None)` while it is incomplete.
pub(crate) fn next_frame(buf: &mut BytesMut) -> Result<Option<Backend>, ReplicationError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=MAX_FRAME).contains(&len) {
        return Err(ReplicationError::Protocol(format!("invalid frame length {len} for message {:?}", tag as char)));
    }
    if buf.len() < 1 + len {
        buf.reserve(1 + len - buf.len());
        return Ok(None);
    }
    buf.advance(5);
    let body = buf.split_to(len - 4).freeze();
    parse(tag, body).map(Some)
}

fn protocol(what: &str) -> ReplicationError {
    ReplicationError::Protocol(format!("malformed {what} message"))
}

fn cstr(body: &mut Bytes, what: &str) -> Result<String, ReplicationError> {
    let end = body.iter().position(|&b| b == 0).ok_or_else(|| protocol(what))?;
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    body.advance(end + 1);
    Ok(s)
}

fn fields(mut body: Bytes) -> Result<ServerError, ReplicationError> {
    let mut e = ServerError::default();
    while body.has_remaining() {
        let kind = body.get_u8();
        if kind == 0 {
            break;
        }
        let value = cstr(&mut body, "error")?;
        match kind {
            b'V' => e.severity = value,
            b'S' if e.severity.is_empty() => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    Ok(e)
}

fn parse(tag: u8, mut body: Bytes) -> Result<Backend, ReplicationError> {
    Ok(match tag {
        b'd' => Backend::CopyData(body),
        b'R' => {
            if body.len() < 4 {
                return Err(protocol("authentication"));
            }
            let code = body.get_u32();
            Backend::Authentication { code, data: body }
        }
        b'S' => {
            let name = cstr(&mut body, "parameter status")?;
            let value = cstr(&mut body, "parameter status")?;
            Backend::ParameterStatus { name, value }
        }
        b'Z' => Backend::ReadyForQuery,
        b'T' => Backend::RowDescription,
        b'D' => {
            if body.len() < 2 {
                return Err(protocol("data row"));
            }
            let n = body.get_u16();
            let mut values = Vec::with_capacity(n as usize);
            for _ in 0..n {
                if body.len() < 4 {
                    return Err(protocol("data row"));
                }
                let len = body.get_i32();
                if len < 0 {
                    values.push(None);
                } else {
                    let len = len as usize;
                    if body.len() < len {
                        return Err(protocol("data row"));
                    }
                    values.push(Some(String::from_utf8_lossy(&body.split_to(len)).into_owned()));
                }
            }
            Backend::DataRow { values }
        }
        b'C' => Backend::CommandComplete,
        b'I' => Backend::EmptyQuery,
        b'E' => Backend::Error(fields(body)?),
        b'N' => Backend::Notice(fields(body)?),
        b'W' => Backend::CopyBoth,
        b'H' => Backend::CopyOut,
        b'c' => Backend::CopyDone,
        _ => Backend::Other,
    })
}
