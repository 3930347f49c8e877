//! Whether a request for `/events` or `/sessions/{id}/events` may subscribe, and as what.
//! Checked in this order: query length (414), token (401); for `/events` the consumer id and
//! filters (400) and grants (403), for a session that it exists (404) and is the token subject's
//! (403); then `Last-Event-ID` (400) and a free place (503 with `Retry-After`). Every refusal
//! says why and is counted by reason.

use std::sync::Arc;

use pgevents_telemetry::Readiness;
use tokio_util::sync::CancellationToken;

use crate::addressing::Addressing;
use crate::auth::{Grant, Unauthorized, Verifier};
use crate::clients::Clients;
use crate::config::Cors;
use crate::feed::{Feed, FeedContext, Resume};
use crate::filter::{Filter, ACCESS_TOKEN, CONSUMER_ID, LAST_EVENT_ID};
use crate::metrics;
use crate::request::Head;
use crate::response_head::error_description;
use crate::sessions::Sessions;
use crate::subscription::{Selector, Subscription};

/// Seconds a client refused for lack of room is told to wait.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Limits on what a request may ask.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_query_bytes: usize,
    pub max_filters: usize,
}

/// What every request shares.
pub struct Gateway {
    pub feeds: Arc<FeedContext>,
    pub clients: Arc<Clients>,
    pub verifier: Option<Verifier>,
    pub limits: RequestLimits,
    pub readiness: Readiness,
    pub cors: Cors,
    /// `--sessions`: sessions and their subscriptions.
    pub sessions: Option<Arc<Sessions>>,
    /// `--subscriber-column`.
    pub addressing: Arc<Addressing>,
    /// `--allowed-hosts`: besides IP addresses and `localhost`, the host names a request may
    /// name when the gateway runs without JWT.
    pub allowed_hosts: Vec<String>,
}

/// Whether `host` (a `Host` header: a name or an address, with or without a port) may be served
/// without authentication. A browser lets any site it loads talk to a host name that site's DNS
/// answers with 127.0.0.1 (DNS rebinding): without a token, the page then reads the gateway. An
/// address, `localhost`, or a name the operator listed cannot be rebound that way.
pub(crate) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        // An IPv6 address: nothing but a port may follow it.
        Some(rest) => match rest.split_once(']') {
            Some((address, port))
                if port.is_empty() || port.strip_prefix(':').is_some_and(|p| p.chars().all(|c| c.is_ascii_digit())) =>
            {
                address
            }
            _ => return false,
        },
        None => host
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(&name))
}

/// A refused request.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub text: String,
    /// Extra response headers (`WWW-Authenticate`, `Retry-After`).
    pub headers: Vec<(&'static str, String)>,
}

impl Refusal {
    /// A refusal, counted in the rejection metric by `reason`.
    pub fn new(status: u16, reason: &'static str, text: impl Into<String>) -> Refusal {
        ::metrics::counter!(metrics::REJECTED, "reason" => reason).increment(1);
        Refusal { status, text: text.into(), headers: Vec::new() }
    }

    /// The 401 for `error` (for the fuzz targets).
    #[cfg(feature = "fuzzing")]
    pub fn unauthorized_for_fuzzing(error: Unauthorized) -> Refusal {
        Refusal::unauthorized(error)
    }

    fn unauthorized(error: Unauthorized) -> Refusal {
        let text = error.to_string();
        let challenge = match &error {
            Unauthorized::Missing => "Bearer realm=\"pgevents\"".to_owned(),
            Unauthorized::Invalid(why) => {
                format!("Bearer error=\"invalid_token\", error_description=\"{}\"", error_description(why))
            }
        };
        let mut refusal = Refusal::new(401, "unauthorized", text);
        refusal.headers.push(("WWW-Authenticate", challenge));
        refusal
    }
}

/// The streams a request can ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stream<'a> {
    /// `/events`.
    Events,
    /// `/sessions/{id}/events`.
    Session(&'a str),
}

impl<'a> Stream<'a> {
    /// The stream at `path`, if it is one.
    pub fn at(path: &'a str) -> Option<Stream<'a>> {
        if path == "/events" {
            return Some(Stream::Events);
        }
        let id = path.strip_prefix("/sessions/")?.strip_suffix("/events")?;
        (!id.is_empty() && !id.contains('/')).then_some(Stream::Session(id))
    }
}

/// The query string's parameters.
struct Query(Vec<(String, String)>);

impl Query {
    fn param(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
    }
}

/// Admits a subscriber for `head`, or says why not. `kill` drops its connection.
pub async fn admit(
    gateway: &Gateway,
    head: &Head,
    stream: Stream<'_>,
    kill: CancellationToken,
) -> Result<Feed, Refusal> {
    let limits = gateway.limits;
    if head.query.len() > limits.max_query_bytes {
        return Err(Refusal::new(
            414,
            "bad_request",
            format!(
                "the query string is {} bytes; at most {} are accepted (--max-query-bytes)",
                head.query.len(),
                limits.max_query_bytes
            ),
        ));
    }
    let query =
        Query(form_urlencoded::parse(head.query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect());
    let grant = match &gateway.verifier {
        None if !host_allowed(head.header("host").unwrap_or("localhost"), &gateway.allowed_hosts) => {
            return Err(Refusal::new(
                421,
                "misdirected",
                "this gateway serves without authentication only requests for its address, localhost, or --allowed-hosts",
            ))
        }
        None => None,
        Some(verifier) => {
            let bearer = head.header("authorization").and_then(bearer_token);
            Some(verifier.verify(bearer.or_else(|| query.param(ACCESS_TOKEN))).map_err(Refusal::unauthorized)?)
        }
    };
    let (consumer_id, label, selector) = match stream {
        Stream::Events => events_selector(gateway, head, &query, grant.as_ref())?,
        Stream::Session(id) => session_selector(gateway, &query, grant.as_ref(), id).await?,
    };
    let resume = last_event_id(head.header("last-event-id").or_else(|| query.param(LAST_EVENT_ID)))
        .map_err(|text| Refusal::new(400, "bad_request", text))?;
    let Some(admission) = gateway.clients.admit(&label, kill) else {
        let mut refusal = Refusal::new(
            503,
            "max_clients",
            format!(
                "the gateway has its maximum of {} subscribers (--max-clients); try again later",
                gateway.clients.max()
            ),
        );
        refusal.headers.push(("Retry-After", RETRY_AFTER_SECS.to_string()));
        return Err(refusal);
    };
    tracing::info!(subscriber = %label, ?resume, "subscriber connected");
    let subscription = Subscription { consumer_id, label, selector, grant, addressing: gateway.addressing.clone() };
    Ok(Feed::new(gateway.feeds.clone(), subscription, admission, resume))
}

/// The `Authorization` header's Bearer token (the scheme in any case, RFC 7235).
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Longest consumer id a client may give.
const MAX_CONSUMER_ID_BYTES: usize = 200;

/// Who the subscriber is, and the text that names it in logs (never a secret such as a session
/// id; always printable). With a token, the identity is the token's `sub` only.
type Identity = (String, String, Selector);

/// `/events`: the subscriber is the token's `sub`, or (without authentication) names itself;
/// its filter stays within the token's grants.
fn events_selector(gateway: &Gateway, head: &Head, query: &Query, grant: Option<&Grant>) -> Result<Identity, Refusal> {
    let consumer_id = match grant {
        Some(grant) => match grant.subject.as_deref() {
            Some(sub) => sub.to_owned(),
            // Rows addressed to a subscriber need to know who it is, from the token alone.
            None if gateway.addressing.is_active() => {
                return Err(Refusal::unauthorized(Unauthorized::Invalid(
                    "the sub claim is missing: --subscriber-column addresses rows to the token's subject".into(),
                )))
            }
            None => String::new(),
        },
        None => {
            let named = query.param(CONSUMER_ID).or_else(|| head.header("x-consumer-id"));
            let Some(named) = named else {
                return Err(Refusal::new(
                    400,
                    "bad_request",
                    "name the subscriber: ?consumer_id=dashboard-1 or the X-Consumer-Id header (or a token with sub)",
                ));
            };
            if named.len() > MAX_CONSUMER_ID_BYTES || named.chars().any(char::is_control) {
                return Err(Refusal::new(
                    400,
                    "bad_request",
                    format!("the consumer id must be at most {MAX_CONSUMER_ID_BYTES} bytes without control characters"),
                ));
            }
            named.to_owned()
        }
    };
    let filter =
        Filter::from_query(&query.0, gateway.limits.max_filters).map_err(|e| Refusal::new(400, "bad_request", e.0))?;
    if let Some(grant) = grant {
        grant.authorize(&filter.tables).map_err(|e| Refusal::new(403, "forbidden", e.0))?;
    }
    let label = match (&grant, consumer_id.is_empty()) {
        (Some(_), true) => "a token without sub".to_owned(),
        _ => format!("{consumer_id:?}"),
    };
    Ok((consumer_id, label, Selector::Query(filter)))
}

/// `/sessions/{id}/events`: the session must exist and, with authentication, be the token
/// subject's; its subscriptions are the filter. Only a well-formed id is looked up (by the
/// table's key), and only one that is not known yet costs a query.
async fn session_selector(
    gateway: &Gateway,
    query: &Query,
    grant: Option<&Grant>,
    id: &str,
) -> Result<Identity, Refusal> {
    let Some(sessions) = &gateway.sessions else {
        return Err(Refusal::new(404, "not_found", "sessions are off: start pgevents serve with --sessions"));
    };
    if let Some((other, _)) = query.0.iter().find(|(k, _)| !matches!(k.as_str(), ACCESS_TOKEN | LAST_EVENT_ID)) {
        return Err(Refusal::new(
            400,
            "bad_request",
            format!("unknown query parameter {other:?} for a session: its subscriptions choose the events; use access_token or last_event_id"),
        ));
    }
    let subject = match grant {
        Some(grant) => match grant.subject.as_deref() {
            Some(sub) => Some(sub),
            None => {
                return Err(Refusal::unauthorized(Unauthorized::Invalid(
                    "the sub claim is missing: a session is read with its owner's token".into(),
                )))
            }
        },
        None => None,
    };
    let not_found =
        || Refusal::new(404, "not_found", "no such session: create one with SELECT pgevents.session_create()");
    let Ok(id) = uuid::Uuid::try_parse(id) else { return Err(not_found()) };
    let unavailable = || {
        let mut refusal = Refusal::new(503, "unavailable", "cannot read the session from the database; try again");
        refusal.headers.push(("Retry-After", RETRY_AFTER_SECS.to_string()));
        refusal
    };
    // A session not known yet costs one query by key, through a pool of two connections; a
    // lookup that waits longer (the database slow, or flooded with lookups) is refused.
    let session = match tokio::time::timeout(sessions.lookup_timeout, sessions.get(id)).await {
        Ok(Ok(Some(session))) => session,
        Ok(Ok(None)) => return Err(not_found()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read a session");
            return Err(unavailable());
        }
        Err(_) => {
            ::metrics::counter!(metrics::SESSION_LOOKUPS_TIMED_OUT).increment(1);
            return Err(unavailable());
        }
    };
    if let Some(subject) = subject {
        if subject != session.owner {
            return Err(Refusal::new(
                403,
                "forbidden",
                "the session belongs to another role: the token's sub must be its owner",
            ));
        }
    }
    let label = format!("session {}", session.notify_key);
    let reader = session.reader();
    Ok((session.id.clone(), label, Selector::Session { session, _reader: reader }))
}

/// `Last-Event-ID` (header or `?last_event_id=`): an event id this gateway handed out.
pub(crate) fn last_event_id(value: Option<&str>) -> Result<Resume, String> {
    let Some(value) = value else { return Ok(Resume::Live) };
    match value.parse::<i64>() {
        Ok(id) if (0..i64::MAX).contains(&id) => Ok(Resume::After(id)),
        _ => Err(format!(
            "invalid Last-Event-ID {value:?}: expected an event id this gateway sent (a number from 0 to {})",
            i64::MAX - 1
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_token_only_addresses_localhost_and_listed_names_are_served() {
        let allowed = vec!["events.internal".to_owned()];
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:80",
            "10.1.2.3",
            "events.internal:443",
            "events.internal.",
        ] {
            assert!(host_allowed(host, &allowed), "{host}");
        }
        for host in [
            "rebind.attacker.example:8080",
            "attacker.example",
            "events.internal.attacker.example",
            "",
            "[::1]x.attacker.example",
        ] {
            assert!(!host_allowed(host, &allowed), "{host}");
        }
    }

    #[test]
    fn bearer_tokens_in_any_case() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("BEARER\tabc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn reads_event_ids_and_refuses_the_rest() {
        assert_eq!(last_event_id(None), Ok(Resume::Live));
        assert_eq!(last_event_id(Some("41")), Ok(Resume::After(41)));
        assert_eq!(last_event_id(Some("0")), Ok(Resume::After(0)));
        for bad in ["-1", "x", "99999999999999999999", "9223372036854775807", "1.5"] {
            assert!(last_event_id(Some(bad)).unwrap_err().contains("invalid Last-Event-ID"), "{bad}");
        }
    }
}
