//! The HTTP/1.1 server: accepts connections, gives up on clients that do not send their request
//! headers within `--header-read-timeout` (slow-loris), lets the watchdog drop a stalled
//! subscriber's connection, and on shutdown waits for open responses to end.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::routes::ConnectionKill;

/// How long a stopping server waits for open responses.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest buffer per connection for reading a request and for response data waiting to be
/// written (beyond it the subscriber's stream is not asked for more).
const MAX_BUF_BYTES: usize = 64 << 10;

/// Serves `app` on `listener` until `shutdown`.
pub async fn run(listener: TcpListener, app: Router, header_read_timeout: Duration, shutdown: CancellationToken) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_read_timeout).max_buf_size(MAX_BUF_BYTES);
    let graceful = GracefulShutdown::new();
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
        let kill = CancellationToken::new();
        let service = {
            let (app, kill) = (app.clone(), ConnectionKill(kill.clone()));
            hyper::service::service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(kill.clone());
                app.clone().oneshot(request)
            })
        };
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            tokio::select! {
                result = connection => log_end(peer, result),
                _ = kill.cancelled() => {}
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("open connections did not close in time"),
    }
}

fn log_end(peer: SocketAddr, result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        if e.is_timeout() {
            tracing::debug!(%peer, "closed a connection that did not send its request headers in time");
        } else {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}
