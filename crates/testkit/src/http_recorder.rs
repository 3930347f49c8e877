//! A real HTTP server for action tests: records every request and answers as the test says.
//!
//! HTTP/1.1 with `Connection: close` and a `Content-Length` body: enough for reqwest, and no
//! framework in the way of what is on the wire.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::tls::CertPair;

/// How to answer one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Wait this long before answering (to catch a client mid-request).
    pub delay: Duration,
    /// Further response headers (`location` for a redirect).
    pub headers: Vec<(String, String)>,
    /// The body; `None`: `{"status": <status>}`.
    pub body: Option<String>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply { status, delay: Duration::ZERO, headers: Vec::new(), body: None }
    }

    /// A redirect (`status` 3xx) to `location`.
    pub fn redirect(status: u16, location: &str) -> Reply {
        Reply { headers: vec![("location".into(), location.to_owned())], ..Reply::status(status) }
    }

    /// `status` with `body`.
    pub fn with_body(status: u16, body: &str) -> Reply {
        Reply { body: Some(body.to_owned()), ..Reply::status(status) }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The status sent back; `None` while unanswered or when the client went away first.
    pub answered: Option<u16>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

type Responder = Arc<dyn Fn(usize, &RecordedRequest) -> Reply + Send + Sync>;

/// The server; stops when dropped.
pub struct HttpRecorder {
    pub addr: SocketAddr,
    /// Serves HTTPS (with [`HttpRecorder::start_tls`]).
    tls: bool,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpRecorder {
    /// Answers request number `n` (from 0, in arrival order) with `responder(n, request)`.
    pub async fn start(responder: impl Fn(usize, &RecordedRequest) -> Reply + Send + Sync + 'static) -> HttpRecorder {
        Self::listen(None, Arc::new(responder)).await
    }

    /// The same over HTTPS, with `pair` as the server certificate.
    pub async fn start_tls(
        pair: &CertPair,
        responder: impl Fn(usize, &RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> HttpRecorder {
        Self::listen(Some(crate::tls::server_tls_acceptor(pair)), Arc::new(responder)).await
    }

    async fn listen(tls: Option<tokio_rustls::TlsAcceptor>, responder: Responder) -> HttpRecorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the test HTTP server");
        let addr = listener.local_addr().expect("local address");
        let requests: Arc<Mutex<Vec<RecordedRequest>>> = Arc::default();
        let shared = requests.clone();
        let secure = tls.is_some();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (shared, responder) = (shared.clone(), responder.clone());
                match &tls {
                    None => drop(tokio::spawn(serve(stream, shared, responder))),
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            // A client that does not trust the certificate ends here.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, shared, responder).await;
                            }
                        });
                    }
                }
            }
        });
        HttpRecorder { addr, tls: secure, requests, task }
    }

    /// Answers every request with `status`.
    pub async fn always(status: u16) -> HttpRecorder {
        Self::start(move |_, _| Reply::status(status)).await
    }

    /// `http://127.0.0.1:port`, or `https://localhost:port` for HTTPS.
    pub fn base_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Waits until at least `n` requests arrived; returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<RecordedRequest> {
        crate::wait_for(&format!("{n} HTTP requests"), timeout, || async {
            let requests = self.requests();
            (requests.len() >= n).then_some(requests)
        })
        .await
    }
}

impl Drop for HttpRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S>(stream: S, requests: Arc<Mutex<Vec<RecordedRequest>>>, responder: Responder)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
            return;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).await.is_err() {
        return;
    }
    let request =
        RecordedRequest { method, path, headers, body: String::from_utf8_lossy(&body).into_owned(), answered: None };
    let index = {
        let mut all = requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.push(request.clone());
        all.len() - 1
    };
    let reply = responder(index, &request);
    // Wait, but notice a client that goes away meanwhile (EOF): it gets no answer.
    let mut probe = [0u8; 1];
    tokio::select! {
        _ = tokio::time::sleep(reply.delay) => {}
        read = reader.read(&mut probe) => if matches!(read, Ok(0) | Err(_)) { return },
    }
    let text = reply.body.clone().unwrap_or_else(|| format!("{{\"status\":{}}}", reply.status));
    let extra: String = reply.headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let response = format!(
        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{text}",
        reply.status,
        text.len()
    );
    let mut stream = reader.into_inner();
    if stream.write_all(response.as_bytes()).await.is_ok() && stream.flush().await.is_ok() {
        let mut all = requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(recorded) = all.get_mut(index) {
            recorded.answered = Some(reply.status);
        }
    }
}
