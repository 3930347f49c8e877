//! The gateway's metric names (Prometheus, through the `metrics` facade).

/// Gauge: subscribers connected.
pub const CLIENTS: &str = "pgevents_gateway_clients";
/// Counter: events sent to subscribers (one per subscriber and event).
pub const EVENTS_SENT: &str = "pgevents_gateway_events_sent_total";
/// Counter: bytes of event streams handed to connections.
pub const BYTES_SENT: &str = "pgevents_gateway_bytes_sent_total";
/// Counter: subscribers cut off for falling behind the buffered feed.
pub const SLOW_CLIENTS: &str = "pgevents_gateway_slow_clients_total";
/// Counter: subscribers disconnected for reading nothing for `--stall-timeout`.
pub const STALLED: &str = "pgevents_gateway_stalled_clients_total";
/// Counter by `reason` (`max_clients`, `unauthorized`, `forbidden`, `bad_request`, `not_found`,
/// `unavailable`, `misdirected`): requests refused.
pub const REJECTED: &str = "pgevents_gateway_rejected_total";
/// Counter: replays started from the stream.
pub const REPLAYS: &str = "pgevents_gateway_replays_total";
/// Gauge: replays running (at most `--max-replays`).
pub const REPLAYS_ACTIVE: &str = "pgevents_gateway_replays_active";
/// Gauge: subscribers waiting for a replay slot.
pub const REPLAYS_WAITING: &str = "pgevents_gateway_replays_waiting";
/// Counter: replays that asked for events past the stream's retention (a `gap` event was sent).
pub const REPLAY_GAPS: &str = "pgevents_gateway_replay_gaps_total";
/// Counter: reconnections of the hub's stream consumer.
pub const HUB_RECONNECTS: &str = "pgevents_gateway_hub_reconnects_total";
/// Counter: history messages that are not readable events (skipped, logged).
pub const UNREADABLE: &str = "pgevents_gateway_unreadable_messages_total";
/// Gauge: sessions known (`--sessions`).
pub const SESSIONS: &str = "pgevents_gateway_sessions";
/// Counter: sessions removed for not being seen for `--session-ttl`.
pub const SESSIONS_EXPIRED: &str = "pgevents_gateway_sessions_expired_total";
/// Counter: subscriptions not streamed because their session's owner may not read them (any
/// more): refused on reading the sessions.
pub const SUBSCRIPTIONS_REFUSED: &str = "pgevents_gateway_subscriptions_refused_total";
/// Counter: `pgevents_subscriptions` notifications whose payload is not a session's key (any
/// role can notify; they are ignored).
pub const NOTIFICATIONS_IGNORED: &str = "pgevents_gateway_notifications_ignored_total";
/// Gauge: roles holding `max_sessions_per_role` sessions (the database refuses them more).
pub const SESSION_OWNERS_AT_LIMIT: &str = "pgevents_gateway_session_owners_at_limit";
/// Counter: session lookups that did not answer within the time allowed (503).
pub const SESSION_LOOKUPS_TIMED_OUT: &str = "pgevents_gateway_session_lookups_timed_out_total";
