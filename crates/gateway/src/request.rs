//! The head of an HTTP/1.x request, read straight from the socket: within a time limit (a
//! client that trickles its headers is dropped) and a size limit, parsed with `httparse`.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD_BYTES: usize = 16 << 10;
const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    pub method: String,
    pub path: String,
    /// The query string without `?` (still percent-encoded).
    pub query: String,
    /// HTTP/1.0 (the response is then delimited by closing the connection).
    pub http10: bool,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// A header's value, trimmed; `None` when absent or empty.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
    }
}

/// What came in on a new connection.
#[derive(Debug)]
pub enum Incoming {
    /// A complete head; `read` holds every byte read so far (the head and whatever followed).
    Request { head: Head, read: Vec<u8> },
    /// Not a request this server can parse; the connection is answered 400 and closed.
    Malformed(String),
    /// The head is larger than [`MAX_HEAD_BYTES`]: answered 431.
    TooLarge,
    /// Closed before a complete head, or too slow to send it: dropped.
    Gone,
}

/// Reads a request head within `timeout`.
pub async fn read(stream: &mut TcpStream, timeout: Duration) -> Incoming {
    match tokio::time::timeout(timeout, read_head(stream)).await {
        Ok(incoming) => incoming,
        Err(_) => Incoming::Gone,
    }
}

async fn read_head(stream: &mut TcpStream) -> Incoming {
    let mut read = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Incoming::Gone,
            Ok(n) => n,
        };
        read.extend_from_slice(&chunk[..n]);
        match parse(&read) {
            Ok(Some(head)) => return Incoming::Request { head, read },
            Ok(None) if read.len() > MAX_HEAD_BYTES => return Incoming::TooLarge,
            Ok(None) => continue,
            Err(httparse::Error::TooManyHeaders) => return Incoming::TooLarge,
            Err(e) => return Incoming::Malformed(e.to_string()),
        }
    }
}

/// `Ok(None)` while the head is incomplete.
pub(crate) fn parse(bytes: &[u8]) -> Result<Option<Head>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    if request.parse(bytes)?.is_partial() {
        return Ok(None);
    }
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Some(Head {
        method: request.method.unwrap_or("").to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        http10: request.version == Some(0),
        headers: request
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head_and_waits_for_the_rest() {
        let head =
            parse(b"GET /events?table=a&pk=1 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 41\r\n\r\n").unwrap().unwrap();
        assert_eq!((head.method.as_str(), head.path.as_str(), head.query.as_str()), ("GET", "/events", "table=a&pk=1"));
        assert_eq!(head.header("last-event-id"), Some("41"));
        assert!(!head.http10);
        assert!(parse(b"GET /events HTTP/1.0\r\n\r\n").unwrap().unwrap().http10);
        assert!(parse(b"GET /events HTTP/1.1\r\nHost: x\r\n").unwrap().is_none(), "incomplete");
        assert!(parse(b"\x16\x03\x01 not http\r\n\r\n").is_err(), "TLS sent to a plain port");
    }
}
