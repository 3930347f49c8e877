//! The HTTP side: `GET /events` (SSE) and `GET /healthz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use pgevents_amqp::{self as amqp, ensure_stream, AmqpError, AmqpUrl, Connection, Retention};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::filter::Filter;
use crate::subscription::{self, Start};

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub amqp_url: AmqpUrl,
    pub exchange: String,
    /// The stream queue holding the history.
    pub stream: String,
    pub retention: Retention,
    /// Interval of the SSE heartbeat comments.
    pub heartbeat: Duration,
    /// Events buffered per subscriber before it is cut off as too slow.
    pub client_buffer: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("cannot listen on {addr}: {source}; choose another --listen address")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

struct Shared {
    config: GatewayConfig,
    connection: Mutex<Option<Connection>>,
    shutdown: CancellationToken,
}

impl Shared {
    /// The broker connection, reconnecting if the last one was lost.
    async fn connection(&self) -> Result<Connection, AmqpError> {
        let mut guard = self.connection.lock().await;
        if let Some(connection) = guard.as_ref().filter(|c| c.is_open()) {
            return Ok(connection.clone());
        }
        let connection = amqp::connect(&self.config.amqp_url, "pgevents serve").await?;
        *guard = Some(connection.clone());
        Ok(connection)
    }
}

fn bad_request(text: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("{text}\n")).into_response()
}

async fn events(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    let Some(consumer_id) = header("x-consumer-id").map(str::to_owned) else {
        return bad_request(
            "the X-Consumer-Id header is required: name the subscriber, e.g. X-Consumer-Id: dashboard-1".into(),
        );
    };
    let filter = match Filter::from_query(&pairs) {
        Ok(filter) => filter,
        Err(e) => return bad_request(e.to_string()),
    };
    let last = header("last-event-id")
        .map(str::to_owned)
        .or_else(|| pairs.iter().find(|(k, _)| k == "last_event_id").map(|(_, v)| v.clone()));
    let start = match last.as_deref().map(str::parse::<i64>) {
        None => Start::Live,
        Some(Ok(id)) if id >= 0 => Start::Offset(id + 1),
        Some(_) => {
            return bad_request(format!(
                "invalid Last-Event-ID {:?}: expected an event id (a number)",
                last.unwrap_or_default()
            ))
        }
    };
    let opened = async {
        let connection = shared.connection().await?;
        let config = &shared.config;
        subscription::open(
            &connection,
            &config.stream,
            start,
            filter,
            config.client_buffer,
            consumer_id.clone(),
            shared.shutdown.clone(),
        )
        .await
    };
    let rx = match opened.await {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open a subscription");
            return (StatusCode::SERVICE_UNAVAILABLE, format!("cannot reach the event history: {e}\n")).into_response();
        }
    };
    tracing::info!(consumer_id = %consumer_id, ?start, "subscriber connected");
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(shared.config.heartbeat).text("heartbeat")).into_response()
}

/// The gateway's routes.
pub fn router(config: GatewayConfig, shutdown: CancellationToken) -> Router {
    let shared = Arc::new(Shared { config, connection: Mutex::new(None), shutdown });
    Router::new().route("/events", get(events)).route("/healthz", get(|| async { "ok\n" })).with_state(shared)
}

/// Prepares the history stream, then serves until `shutdown` (which also ends every
/// subscriber's stream, so the server can stop).
pub async fn serve(config: GatewayConfig, shutdown: CancellationToken) -> Result<(), GatewayError> {
    let connection = amqp::connect(&config.amqp_url, "pgevents serve (setup)").await?;
    let channel = amqp::open_channel(&connection).await?;
    ensure_stream(&channel, &config.stream, &config.exchange, &config.retention).await?;
    let _ = channel.close().await;
    let _ = connection.close().await;
    let addr = config.listen;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), stream = %config.stream, exchange = %config.exchange, "serving /events");
    let app = router(config, shutdown.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|source| GatewayError::Bind { addr, source })
}
