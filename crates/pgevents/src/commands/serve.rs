//! `pgevents serve`: the Server-Sent Events gateway.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use pgevents_gateway::{serve, AuthConfig, Cors, GatewayConfig, Protocol, SessionsConfig, StreamConfig};
use tokio_util::sync::CancellationToken;

use crate::cli::{HistoryProtocolArg, JwtArgs, ServeArgs};

/// Unacknowledged stream deliveries RabbitMQ sends ahead to the gateway's live reader over AMQP.
const HUB_PREFETCH: u16 = 2000;

pub async fn run(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = GatewayConfig {
        listen: args.listen,
        stream: StreamConfig {
            url: args.rabbit.server.parse()?,
            protocol: match args.history_protocol {
                HistoryProtocolArg::Amqp => Protocol::Amqp { exchange: args.rabbit.exchange.clone() },
                HistoryProtocolArg::Stream => Protocol::Stream { url: Box::new(args.stream_connection.url()?) },
            },
            stream: args.history_stream.clone(),
            retention: args.retention.retention(),
            max_body_bytes: args.max_event_bytes.max(1),
            prefetch: HUB_PREFETCH,
            backoff_max: Duration::from_secs(args.backoff_max.max(1)),
        },
        heartbeat: Duration::from_secs(args.heartbeat_secs.max(1)),
        retry: Duration::from_millis(args.sse_retry_ms),
        client_buffer_events: args.client_buffer.max(1),
        client_buffer_bytes: args.client_buffer_bytes.max(1),
        max_clients: args.max_clients.max(1),
        max_replays: args.max_replays.max(1),
        header_read_timeout: Duration::from_secs(args.header_read_timeout.max(1)),
        stall_timeout: Duration::from_secs(args.stall_timeout.max(1)),
        max_query_bytes: args.max_query_bytes,
        max_filters: args.max_filters,
        cors: Cors::from_values(&args.cors_origins)?,
        auth: auth_config(&args.jwt)?,
        sessions: match args.sessions {
            true => Some(SessionsConfig {
                postgres: args.pg.connect_config("pgevents serve")?,
                refresh: Duration::from_secs(args.sessions_refresh_secs.max(1)),
                ttl: Duration::from_secs(args.session_ttl_secs.max(1)),
                lookup_timeout: Duration::from_secs(args.session_lookup_timeout_secs.max(1)),
            }),
            false => None,
        },
        subscriber_columns: args.subscriber_columns.clone(),
        allowed_hosts: args.allowed_hosts.clone(),
    };
    let readiness =
        super::telemetry::start(args.telemetry.metrics_addr, &[], "connecting to RabbitMQ", &shutdown).await?;
    serve(config, readiness, shutdown).await?;
    Ok(())
}

/// Reads the key files named by the JWT options.
fn auth_config(args: &JwtArgs) -> anyhow::Result<AuthConfig> {
    let read = |path: &Path, option: &str| {
        std::fs::read(path).with_context(|| format!("cannot read {option} {}", path.display()))
    };
    Ok(AuthConfig {
        secret: args.jwt_secret_file.as_deref().map(|p| read(p, "--jwt-secret-file")).transpose()?,
        public_key_pem: args.jwt_public_key_file.as_deref().map(|p| read(p, "--jwt-public-key-file")).transpose()?,
        audience: args.jwt_audience.clone(),
        issuer: args.jwt_issuer.clone(),
    })
}
