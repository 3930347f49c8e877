//! A Server-Sent Events client for the gateway tests: HTTP/1.0 (the body is the raw event
//! stream, closed by the server), parsed into events.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One received event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseMessage {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {}", self.data))
    }
}

/// An open `GET` on an SSE endpoint.
pub struct SseClient {
    pub status: u16,
    /// Response headers (names in lower case).
    pub headers: Vec<(String, String)>,
    /// The body when the status is not 200.
    pub body: String,
    reader: BufReader<TcpStream>,
    /// Heartbeat comments seen.
    pub comments: usize,
}

impl SseClient {
    /// Sends `GET path` with these headers and reads the status line and headers.
    pub async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut stream = TcpStream::connect(addr).await.expect("connect to the gateway");
        let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("send the request");
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("status line");
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut response_headers = Vec::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" || line == "\n" {
                break;
            }
            if let Some((name, value)) = line.trim_end().split_once(':') {
                response_headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let mut client = SseClient { status, headers: response_headers, body: String::new(), reader, comments: 0 };
        if status != 200 {
            let mut body = String::new();
            while client.reader.read_line(&mut body).await.unwrap_or(0) > 0 {}
            client.body = body;
        }
        client
    }

    /// A response header by name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The next event, `None` after `timeout` or when the server closed the stream.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseMessage> {
        tokio::time::timeout(timeout, self.read_event()).await.ok().flatten()
    }

    /// Whether the server has closed the stream (reading events until it does, up to `timeout`).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.read_event()).await {
                Ok(None) => return true,
                Ok(Some(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    async fn read_event(&mut self) -> Option<SseMessage> {
        let mut message = SseMessage::default();
        let mut data: Vec<String> = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            let text = line.trim_end_matches(['\r', '\n']);
            if text.is_empty() {
                if data.is_empty() && message.event.is_empty() {
                    continue;
                }
                message.data = data.join("\n");
                return Some(message);
            }
            if text.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) =
                text.split_once(':').map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v))).unwrap_or((text, ""));
            match field {
                "id" => message.id = Some(value.to_owned()),
                "event" => message.event = value.to_owned(),
                "data" => data.push(value.to_owned()),
                _ => {}
            }
        }
    }
}
