//! The Server-Sent Events wire format: events (`id:`, `event:`, `data:` lines), comments and the
//! `retry:` field, as bytes ready to write.

use bytes::{BufMut, Bytes, BytesMut};

/// One event. `data` may span lines: each becomes its own `data:` line, as the format requires.
pub fn event(id: Option<i64>, name: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + name.len() + 40);
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.to_string().as_bytes());
        out.put_u8(b'\n');
    }
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_u8(b'\n');
    // A line ends at LF, CRLF or a lone CR (the format's three line ends): each gets its own
    // `data:` line, so a CR inside the data (JSON whitespace from a json column) cannot end it.
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        for part in line.split(|b| *b == b'\r') {
            out.put_slice(b"data: ");
            out.put_slice(part);
            out.put_u8(b'\n');
        }
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// A comment line: ignored by clients, keeps proxies and the connection alive.
pub fn comment(text: &str) -> Bytes {
    Bytes::from(format!(": {text}\n\n"))
}

/// The first bytes of every stream: how long a browser waits before reconnecting.
pub fn preamble(retry_ms: u64) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n: connected\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_events_with_one_data_line_per_line() {
        assert_eq!(&event(Some(7), "insert", br#"{"a":1}"#)[..], b"id: 7\nevent: insert\ndata: {\"a\":1}\n\n");
        assert_eq!(&event(None, "gap", b"a\r\nb")[..], b"event: gap\ndata: a\ndata: b\n\n");
        assert_eq!(
            &event(None, "x", b"{\"a\":\r\r1}")[..],
            b"event: x\ndata: {\"a\":\ndata: \ndata: 1}\n\n",
            "a lone CR ends a line too"
        );
        assert_eq!(&preamble(2000)[..], b"retry: 2000\n: connected\n\n");
        assert_eq!(&comment("heartbeat")[..], b": heartbeat\n\n");
    }
}
