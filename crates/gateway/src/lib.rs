//! `pgevents serve`: pushes events to browsers and apps over Server-Sent Events.
//!
//! History lives in a RabbitMQ **stream**: a stream queue bound to the events exchange, read
//! over AMQP, or a stream read over RabbitMQ's stream protocol ([`source`]); its offsets are the
//! SSE event ids. One live reader per gateway process (the [`hub`]) reads the stream and
//! decodes each event once into a shared in-memory [`ring`] that every subscriber's feed reads
//! from its own cursor, so subscribers cost no AMQP channel and RabbitMQ sends each event once.
//! A subscriber with `Last-Event-ID` resumes from the ring when it still holds that id, or
//! replays from the stream (at most `--max-replays` at once) and joins the live feed right after
//! the last replayed offset. JWTs name the subscriber and grant tables and rows, applied to
//! replayed and live events alike. With `--sessions`, `/sessions/{id}/events` streams what a
//! session's subscriptions (rows of `pgevents.subscription`, [`sessions`]) select, in
//! Aquameta's event shapes ([`session_events`]); `--subscriber-column` addresses rows to one
//! subscriber ([`addressing`]). A subscriber that falls behind the ring is cut off (it comes
//! back with `Last-Event-ID`); so is everyone when the broker connection is lost, while the hub
//! reconnects with backoff.

mod addressing;
mod admission;
mod auth;
mod clients;
mod config;
mod feed;
mod filter;
mod frame;
mod hub;
mod metrics;
mod probe;
mod replay;
mod request;
mod response_head;
mod rewind;
mod ring;
mod routes;
mod server;
mod session_events;
mod sessions;
mod source;
mod sse;
mod subscriber;
mod subscription;

use std::net::SocketAddr;
use std::sync::Arc;

use pgevents_telemetry::Readiness;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use addressing::{tables_needing_full_identity, AddressingReviewError};
pub use auth::{AuthConfig, AuthSetupError};
pub use config::{ConfigError, Cors, GatewayConfig};
pub use hub::StreamConfig;
pub use pgevents_amqp::Retention;
pub use sessions::SessionsConfig;
pub use source::{Protocol, SourceError};

use crate::addressing::Addressing;
use crate::admission::{Gateway, RequestLimits};
use crate::auth::Verifier;
use crate::clients::Clients;
use crate::feed::FeedContext;
use crate::ring::{Ring, RingLimits};
use crate::source::Session;

/// Entry points for the fuzz targets (`fuzz/`): what the gateway does with bytes from a client
/// and from the history stream, without sockets.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use crate::filter::Filter;
    use crate::frame::EventFrame;

    /// Checks `token` as the gateway does (HS256) and builds the refusal a client would get: the
    /// reason must be printable ASCII, and the response head must hold only the lines the
    /// gateway writes, whatever the token holds (a reason used to quote the token's header).
    pub fn token(token: &[u8]) {
        let config = crate::auth::AuthConfig {
            secret: Some(b"fuzz secret of 32 bytes or more!".to_vec()),
            ..Default::default()
        };
        let Ok(verifier) = crate::auth::Verifier::new(&config) else { return };
        let text = String::from_utf8_lossy(token);
        if let Err(e) = verifier.verify(Some(&text)) {
            let reason = e.to_string();
            assert!(
                reason.bytes().all(|b| (b' '..=b'~').contains(&b)),
                "a reason that is not printable ASCII: {reason:?}"
            );
            let refusal = crate::admission::Refusal::unauthorized_for_fuzzing(e);
            assert_single_lines(&refusal.headers);
        }
    }

    /// A request for a session's stream: the target (origin or absolute form), the session id
    /// (only a uuid is looked up), `Last-Event-ID`, the bearer token, and a response head that
    /// echoes every request header value (only safe ones may be written).
    pub fn session_request(head: &[u8]) {
        let Ok(crate::request::Parsed::Complete(head)) = crate::request::parse(head) else { return };
        if let Some(crate::admission::Stream::Session(id)) = crate::admission::Stream::at(&head.path) {
            if let Ok(uuid) = uuid::Uuid::try_parse(id) {
                assert!(!uuid.to_string().contains(['\r', '\n']));
            }
        }
        let _ = crate::admission::last_event_id(head.header("last-event-id"));
        let _ = head.header("authorization").and_then(crate::admission::bearer_token);
        let echoed: Vec<(&'static str, String)> =
            head.headers.iter().map(|(_, value)| ("X-Echo", value.clone())).collect();
        assert_single_lines(&echoed);
    }

    /// A head built from these headers has one line per written header, none split.
    fn assert_single_lines(headers: &[(&'static str, String)]) {
        let mut response = crate::response_head::ResponseHead::new(401);
        for (name, value) in headers {
            response.header(name, value);
        }
        let text = response.finish();
        let written = headers.iter().filter(|(_, v)| crate::response_head::is_safe_header_value(v)).count();
        assert_eq!(text.matches("\r\n").count(), written + 3, "{text:?}");
        assert!(!text.contains('\0'));
    }

    /// Parses a request head as the gateway does, turns its query into a filter and its
    /// `Last-Event-ID` into a resume point, decodes `body` as a history event and, when the
    /// filter takes it, renders what the subscriber would be sent.
    pub fn request_and_event(head: &[u8], body: &[u8]) {
        let Ok(crate::request::Parsed::Complete(head)) = crate::request::parse(head) else { return };
        let _ = crate::admission::last_event_id(head.header("last-event-id"));
        let pairs: Vec<(String, String)> =
            form_urlencoded::parse(head.query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let Ok(filter) = Filter::from_query(&pairs, 64) else { return };
        let Ok(frame) = EventFrame::from_body(body, 7) else { return };
        if filter.matches(&frame) {
            let _ = filter.render(&frame, 7);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot listen on {addr}: {source}; choose another --listen address")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("--sessions: {0} (run pgevents rules install to create the session tables)")]
    Sessions(#[from] pgevents_pg::PgError),
}

/// Checks the settings and the stream, then serves until `shutdown` (which also ends every
/// subscriber's stream, so the server can stop). `readiness` follows the hub's connection.
pub async fn serve(
    config: GatewayConfig,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    config.check()?;
    let addressing = Arc::new(Addressing::parse(&config.subscriber_columns).map_err(ConfigError::from)?);
    let verifier = config.auth.enabled().then(|| Verifier::new(&config.auth)).transpose()?;
    let sessions = match &config.sessions {
        Some(sessions) => Some(sessions::Sessions::start(sessions, shutdown.clone()).await?),
        None => None,
    };
    prepare_stream(&config.stream).await?;
    let addr = config.listen;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })?;
    warn_if_open(&listener, verifier.is_some());

    let ring = Arc::new(Ring::new(RingLimits {
        max_events: config.client_buffer_events,
        max_bytes: config.client_buffer_bytes,
    }));
    let (link, hub) = hub::start(config.stream.clone(), ring.clone(), readiness.clone(), shutdown.clone());
    let clients = Clients::new(config.max_clients, config.stall_timeout);
    let watchdog = tokio::spawn(clients.clone().watch(shutdown.clone()));
    let feeds = Arc::new(FeedContext {
        ring,
        link,
        replay_slots: Arc::new(Semaphore::new(config.max_replays.max(1))),
        stream: config.stream.stream.clone(),
        max_body_bytes: config.stream.max_body_bytes,
        heartbeat: config.heartbeat,
        retry: config.retry,
        shutdown: shutdown.clone(),
    });
    let limits = RequestLimits { max_query_bytes: config.max_query_bytes, max_filters: config.max_filters };
    let gateway = Arc::new(Gateway {
        feeds,
        clients,
        verifier,
        limits,
        readiness,
        cors: config.cors.clone(),
        sessions,
        addressing,
        allowed_hosts: config
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect(),
    });
    let app = routes::router(gateway.clone());
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), stream = %config.stream.stream, protocol = ?config.stream.protocol, "serving /events");

    server::run(listener, gateway, app, config.header_read_timeout, shutdown).await;
    let _ = hub.await;
    let _ = watchdog.await;
    Ok(())
}

/// Declares the history stream (and binds it, over AMQP), so bad broker settings fail at start.
async fn prepare_stream(stream: &StreamConfig) -> Result<(), SourceError> {
    let session =
        Session::connect(&stream.url, &stream.protocol, &stream.stream, &stream.retention, "pgevents serve (setup)")
            .await?;
    session.close().await;
    Ok(())
}

fn warn_if_open(listener: &tokio::net::TcpListener, authenticated: bool) {
    let loopback = listener.local_addr().map(|a| a.ip().is_loopback()).unwrap_or(true);
    if !loopback && !authenticated {
        tracing::warn!("listening on a non-loopback address without authentication: anyone who reaches it reads every event; set --jwt-secret-file or --jwt-public-key-file");
    }
}
