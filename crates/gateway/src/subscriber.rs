//! One subscriber's connection, served without a general HTTP stack (a subscriber costs a few
//! KiB, see the README): the response head, then the feed's chunks written to the socket as the
//! socket takes them, until the feed ends, the client leaves, or the watchdog drops it. HTTP/1.1
//! responses are chunked, HTTP/1.0 ones end with the connection; either way the connection
//! closes after the stream.

use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::admission::{self, Gateway, Refusal, Stream};
use crate::metrics;
use crate::request::Head;
use crate::response_head::ResponseHead;

/// How long a refusal may take to write.
const WRITE_REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Chunked,
    /// The body ends when the connection closes (HTTP/1.0).
    Close,
}

/// Serves `GET /events` or `GET /sessions/{id}/events` (`which`) on `stream`.
pub async fn serve(gateway: &Gateway, mut stream: TcpStream, head: Head, which: Stream<'_>, kill: CancellationToken) {
    let origin = gateway.cors.allowed_origin(head.header("origin"));
    let mut feed = match admission::admit(gateway, &head, which, kill.clone()).await {
        Ok(feed) => feed,
        Err(refusal) => {
            let _ = tokio::time::timeout(WRITE_REFUSAL_TIMEOUT, refuse(&mut stream, &refusal, origin.as_deref())).await;
            return;
        }
    };
    let framing = if head.http10 { Framing::Close } else { Framing::Chunked };
    drop(head);
    if stream.write_all(response_head(framing, origin.as_deref()).as_bytes()).await.is_err() {
        return;
    }
    // A client sends nothing after its request; reading tells when it goes away.
    let mut probe = [0u8; 64];
    loop {
        let chunk = {
            let next = feed.next_chunk();
            tokio::pin!(next);
            loop {
                tokio::select! {
                    chunk = &mut next => break chunk,
                    read = stream.read(&mut probe) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => continue,
                    },
                    _ = kill.cancelled() => return,
                }
            }
        };
        let Some(chunk) = chunk else { break };
        ::metrics::counter!(metrics::BYTES_SENT).increment(chunk.len() as u64);
        feed.activity().writing();
        tokio::select! {
            written = write_chunk(&mut stream, framing, chunk) => if written.is_err() { return },
            _ = kill.cancelled() => return,
        }
        feed.activity().written();
    }
    if framing == Framing::Chunked {
        let _ = stream.write_all(b"0\r\n\r\n").await;
    }
    let _ = stream.shutdown().await;
}

fn response_head(framing: Framing, origin: Option<&str>) -> String {
    let mut head = ResponseHead::new(200);
    head.header("Content-Type", "text/event-stream")
        .header("Cache-Control", "no-cache")
        .header("X-Accel-Buffering", "no")
        .header("Connection", "close");
    if let Some(origin) = origin {
        head.header("Access-Control-Allow-Origin", origin).header("Vary", "Origin");
    }
    if framing == Framing::Chunked {
        head.header("Transfer-Encoding", "chunked");
    }
    head.finish()
}

async fn write_chunk(stream: &mut TcpStream, framing: Framing, chunk: Bytes) -> std::io::Result<()> {
    match framing {
        Framing::Close => stream.write_all(&chunk).await,
        Framing::Chunked => {
            let size = format!("{:x}\r\n", chunk.len());
            let mut framed = Buf::chain(Buf::chain(size.as_bytes(), chunk), &b"\r\n"[..]);
            stream.write_all_buf(&mut framed).await
        }
    }
}

/// Writes a refusal (or any short plain-text answer) and closes the connection.
pub async fn refuse(stream: &mut TcpStream, refusal: &Refusal, origin: Option<&str>) -> std::io::Result<()> {
    let body = format!("{}\n", refusal.text);
    let mut head = ResponseHead::new(refusal.status);
    head.header("Content-Type", "text/plain; charset=utf-8")
        .header("Content-Length", &body.len().to_string())
        .header("Connection", "close");
    for (name, value) in &refusal.headers {
        head.header(name, value);
    }
    if let Some(origin) = origin {
        head.header("Access-Control-Allow-Origin", origin).header("Vary", "Origin");
    }
    stream.write_all(head.finish().as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_for_both_framings() {
        let chunked = response_head(Framing::Chunked, Some("https://app.example"));
        assert!(chunked.contains("Transfer-Encoding: chunked\r\n"));
        assert!(chunked.contains("Access-Control-Allow-Origin: https://app.example\r\nVary: Origin\r\n"));
        assert!(chunked.ends_with("\r\n\r\n"));
        assert!(chunked.contains("X-Content-Type-Options: nosniff\r\n"));
        let close = response_head(Framing::Close, None);
        assert!(!close.contains("Transfer-Encoding") && !close.contains("Access-Control"));
    }
}
