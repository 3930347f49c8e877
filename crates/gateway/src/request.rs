//! The head of an HTTP/1.x request, read straight from the socket: within a time limit (a
//! client that trickles its headers is dropped) and a size limit, parsed with `httparse`. The
//! target may be in origin form (`/events?x`) or absolute form (`http://host/events?x`, which
//! servers must accept, RFC 9112 3.2.2); an HTTP/1.1 request must carry exactly one `Host`.

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
            Ok(Parsed::Complete(head)) => return Incoming::Request { head, read },
            Ok(Parsed::Partial) if read.len() > MAX_HEAD_BYTES => return Incoming::TooLarge,
            Ok(Parsed::Partial) => continue,
            Err(BadHead::TooLarge) => return Incoming::TooLarge,
            Err(BadHead::Malformed(why)) => return Incoming::Malformed(why),
        }
    }
}

/// What the bytes so far hold.
#[derive(Debug)]
pub(crate) enum Parsed {
    Complete(Head),
    /// The head is not complete yet.
    Partial,
}

/// Why a head is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BadHead {
    TooLarge,
    Malformed(String),
}

pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed, BadHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(BadHead::TooLarge),
        Err(e) => return Err(BadHead::Malformed(e.to_string())),
    };
    if length > MAX_HEAD_BYTES {
        return Err(BadHead::TooLarge);
    }
    let (path, query) = target(request.path.unwrap_or("/"))?;
    let http10 = request.version == Some(0);
    let hosts = request.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host")).count();
    if !http10 && hosts != 1 {
        return Err(BadHead::Malformed(format!("an HTTP/1.1 request needs exactly one Host header, not {hosts}")));
    }
    Ok(Parsed::Complete(Head {
        method: request.method.unwrap_or("").to_owned(),
        path,
        query,
        http10,
        headers: request
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
            .collect(),
    }))
}

/// The path and the query of a request target in origin form or absolute form.
fn target(target: &str) -> Result<(String, String), BadHead> {
    let origin_form = if target.starts_with('/') {
        target
    } else {
        let uri: axum::http::Uri =
            target.parse().map_err(|_| BadHead::Malformed("the request target is not a URI".to_owned()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(BadHead::Malformed("the request target must be a path or an http(s) URL".to_owned()));
        }
        return Ok((uri.path().to_owned(), uri.query().unwrap_or("").to_owned()));
    };
    let (path, query) = origin_form.split_once('?').unwrap_or((origin_form, ""));
    Ok((path.to_owned(), query.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> Head {
        match parse(bytes) {
            Ok(Parsed::Complete(head)) => head,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_a_head_and_waits_for_the_rest() {
        let head = complete(b"GET /events?table=a&pk=1 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 41\r\n\r\n");
        assert_eq!((head.method.as_str(), head.path.as_str(), head.query.as_str()), ("GET", "/events", "table=a&pk=1"));
        assert_eq!(head.header("last-event-id"), Some("41"));
        assert!(!head.http10);
        assert!(complete(b"GET /events HTTP/1.0\r\n\r\n").http10);
        assert!(matches!(parse(b"GET /events HTTP/1.1\r\nHost: x\r\n"), Ok(Parsed::Partial)), "incomplete");
        assert!(
            matches!(parse(b"\x16\x03\x01 not http\r\n\r\n"), Err(BadHead::Malformed(_))),
            "TLS sent to a plain port"
        );
    }

    #[test]
    fn absolute_form_targets_are_read_as_their_path() {
        let head = complete(b"GET http://gw.example:8080/events?table=a HTTP/1.1\r\nHost: gw.example:8080\r\n\r\n");
        assert_eq!((head.path.as_str(), head.query.as_str()), ("/events", "table=a"));
        assert!(matches!(parse(b"GET ftp://x/events HTTP/1.1\r\nHost: x\r\n\r\n"), Err(BadHead::Malformed(_))));
        assert!(matches!(parse(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n"), Err(BadHead::Malformed(_))));
    }

    #[test]
    fn http_1_1_needs_one_host() {
        let missing = parse(b"GET /events HTTP/1.1\r\n\r\n").unwrap_err();
        assert!(matches!(&missing, BadHead::Malformed(why) if why.contains("Host")), "{missing:?}");
        assert!(parse(b"GET /events HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").is_err());
    }

    #[test]
    fn a_head_over_the_limit_is_refused_even_when_it_arrives_whole() {
        let padding = "x".repeat(MAX_HEAD_BYTES);
        let big = format!("GET /events HTTP/1.1\r\nHost: a\r\nX-Pad: {padding}\r\n\r\n");
        assert_eq!(parse(big.as_bytes()).unwrap_err(), BadHead::TooLarge);
        let fits = format!("GET /events HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n", "x".repeat(MAX_HEAD_BYTES - 100));
        assert!(matches!(parse(fits.as_bytes()), Ok(Parsed::Complete(_))));
    }
}
