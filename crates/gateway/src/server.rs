//! The HTTP/1.x server. Each connection's request head is read here, within
//! `--header-read-timeout` (a client trickling its headers is dropped, slow-loris): `GET /events`
//! and `GET /sessions/{id}/events` are served by [`crate::subscriber`] on the bare socket; anything else goes to hyper and axum
//! (one request per connection, so that a later `/events` on it never lands there). On shutdown
//! the server waits for open responses to end.
//!
//! hyper keeps two 8 KiB buffers for every connection for its life; serving the streams on the
//! bare socket keeps an idle subscriber at a few KiB (measured: 23 KiB through hyper).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming as Body;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::admission::{Gateway, Refusal, Stream};
use crate::request::{self, Incoming};
use crate::rewind::Rewind;
use crate::subscriber;

/// How long a stopping server waits for open responses.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection needs.
struct Server {
    gateway: Arc<Gateway>,
    app: Router,
    http: http1::Builder,
    header_read_timeout: Duration,
}

/// Serves until `shutdown`.
pub async fn run(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    app: Router,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_read_timeout).keep_alive(false);
    let server = Arc::new(Server { gateway, app, http, header_read_timeout });
    let tasks = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(server.clone().connection(stream, peer));
    }
    // Event streams end with `shutdown`; other connections serve one request and close.
    drop(listener);
    tasks.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait()).await.is_err() {
        tracing::warn!("open connections did not close in time");
    }
}

impl Server {
    async fn connection(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) {
        let kill = CancellationToken::new();
        match request::read(&mut stream, self.header_read_timeout).await {
            Incoming::Request { head, read } if head.method == "GET" => {
                let path = head.path.clone();
                match Stream::at(&path) {
                    Some(which) => subscriber::serve(&self.gateway, stream, head, which, kill).await,
                    None => self.with_hyper(Rewind::new(read, stream), peer).await,
                }
            }
            Incoming::Request { read, .. } => self.with_hyper(Rewind::new(read, stream), peer).await,
            Incoming::Malformed(why) => {
                let refusal = Refusal::new(400, "bad_request", format!("not an HTTP/1.x request: {why}"));
                let _ = subscriber::refuse(&mut stream, &refusal, None).await;
            }
            Incoming::TooLarge => {
                let text = format!("the request head is larger than {} bytes", request::MAX_HEAD_BYTES);
                let _ = subscriber::refuse(&mut stream, &Refusal::new(431, "bad_request", text), None).await;
            }
            Incoming::Gone => tracing::debug!(%peer, "dropped a connection that sent no complete request in time"),
        }
    }

    async fn with_hyper(&self, io: Rewind, peer: SocketAddr) {
        let app = self.app.clone();
        let service = hyper::service::service_fn(move |request: Request<Body>| app.clone().oneshot(request));
        if let Err(e) = self.http.serve_connection(TokioIo::new(io), service).await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}
