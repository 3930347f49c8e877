//! Everything `pgevents serve` is configured with, checked once at start.

use std::net::SocketAddr;
use std::time::Duration;

use crate::addressing::BadSubscriberColumn;
use crate::auth::AuthConfig;
use crate::hub::StreamConfig;
use crate::sessions::SessionsConfig;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub stream: StreamConfig,
    /// Interval of the SSE heartbeat comments on idle streams.
    pub heartbeat: Duration,
    /// The `retry:` a browser waits before reconnecting.
    pub retry: Duration,
    /// How far (in events and in bytes) a subscriber may fall behind the live feed before it is
    /// cut off; the gateway keeps that much of the feed in memory, shared by all subscribers.
    pub client_buffer_events: usize,
    pub client_buffer_bytes: usize,
    /// Subscribers at once; beyond, 503 with `Retry-After`.
    pub max_clients: usize,
    /// Replays from the stream at once; the others wait for a slot.
    pub max_replays: usize,
    /// A client must send its request headers within this time (slow-loris).
    pub header_read_timeout: Duration,
    /// A subscriber that takes no data for this long while data waits for it is disconnected.
    pub stall_timeout: Duration,
    pub max_query_bytes: usize,
    pub max_filters: usize,
    pub cors: Cors,
    pub auth: AuthConfig,
    /// `--sessions`: where the sessions live.
    pub sessions: Option<SessionsConfig>,
    /// `--subscriber-column` items (`column` or `table-glob=column`).
    pub subscriber_columns: Vec<String>,
    /// `--allowed-hosts`: host names requests may name without JWT (besides addresses and
    /// `localhost`).
    pub allowed_hosts: Vec<String>,
}

/// Which web origins may read `/events` (`Access-Control-Allow-Origin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// No CORS headers: only pages of the gateway's own origin.
    Off,
    /// `*`: any page (only without authentication).
    Any,
    /// These origins (`https://app.example.com`).
    Origins(Vec<String>),
}

impl Cors {
    /// From `--cors-origin` values: none, `*`, or origins.
    pub fn from_values(values: &[String]) -> Result<Cors, ConfigError> {
        let values: Vec<&str> = values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()).collect();
        if values.is_empty() {
            return Ok(Cors::Off);
        }
        if values.contains(&"*") {
            return if values.len() == 1 { Ok(Cors::Any) } else { Err(ConfigError::CorsMixed) };
        }
        values.iter().map(|v| check_origin(v)).collect::<Result<Vec<_>, _>>().map(Cors::Origins)
    }
}

impl Cors {
    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is allowed.
    pub fn allowed_origin(&self, origin: Option<&str>) -> Option<String> {
        match (self, origin) {
            (Cors::Off, _) | (_, None) => None,
            (Cors::Any, Some(_)) => Some("*".to_owned()),
            (Cors::Origins(list), Some(origin)) => list.iter().find(|o| o.as_str() == origin).cloned(),
        }
    }
}

/// An origin is `scheme://host[:port]`, nothing after it.
fn check_origin(value: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError::Origin(value.to_owned());
    let (scheme, rest) = value.split_once("://").ok_or_else(bad)?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(bad());
    }
    Ok(value.to_owned())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--cors-origin {0:?} is not an origin: use scheme://host[:port], e.g. https://app.example.com")]
    Origin(String),
    #[error("--cors-origin '*' cannot be combined with other origins")]
    CorsMixed,
    #[error("--cors-origin '*' is not allowed with authentication: list the origins of your apps")]
    CorsAnyWithAuth,
    #[error(transparent)]
    SubscriberColumn(#[from] BadSubscriberColumn),
}

impl GatewayConfig {
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.cors == Cors::Any && self.auth.enabled() {
            return Err(ConfigError::CorsAnyWithAuth);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cors_origins() {
        let of = |v: &[&str]| Cors::from_values(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(of(&[]).unwrap(), Cors::Off);
        assert_eq!(of(&["*"]).unwrap(), Cors::Any);
        assert_eq!(
            of(&["https://a.example", "http://127.0.0.1:3000"]).unwrap(),
            Cors::Origins(vec!["https://a.example".into(), "http://127.0.0.1:3000".into()])
        );
        assert!(of(&["https://a.example/app"]).unwrap_err().to_string().contains("scheme://host[:port]"));
        assert!(of(&["a.example"]).is_err());
        assert!(of(&["*", "https://a.example"]).is_err());
        let list = of(&["https://a.example"]).unwrap();
        assert_eq!(list.allowed_origin(Some("https://a.example")).as_deref(), Some("https://a.example"));
        assert_eq!(list.allowed_origin(Some("https://b.example")), None);
        assert_eq!(Cors::Any.allowed_origin(Some("https://b.example")).as_deref(), Some("*"));
        assert_eq!(Cors::Off.allowed_origin(Some("https://a.example")), None);
    }
}
