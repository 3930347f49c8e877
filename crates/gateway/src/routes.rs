//! The HTTP side: `GET /events` (the SSE stream), `/` (a live tail page for trying the gateway
//! out), `/healthz` and `/readyz`. A request to `/events` is checked in this order: query
//! length, token (401), consumer id and filters (400), grants (403), `Last-Event-ID` (400),
//! then a free place (503 with `Retry-After`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use pgevents_telemetry::Readiness;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::{Grant, Unauthorized, Verifier};
use crate::clients::Clients;
use crate::config::Cors;
use crate::feed::{Feed, FeedContext, Resume};
use crate::filter::{Filter, ACCESS_TOKEN, CONSUMER_ID, LAST_EVENT_ID};
use crate::metrics;
use crate::subscription::Subscription;

/// Seconds a client refused for lack of room is told to wait.
const RETRY_AFTER_SECS: u64 = 5;

/// Drops the connection a request came on (set by the server for every connection).
#[derive(Clone)]
pub struct ConnectionKill(pub CancellationToken);

/// Limits on what a request may ask.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_query_bytes: usize,
    pub max_filters: usize,
}

pub struct Gateway {
    pub feeds: Arc<FeedContext>,
    pub clients: Arc<Clients>,
    pub verifier: Option<Verifier>,
    pub limits: RequestLimits,
    pub readiness: Readiness,
}

/// The gateway's routes.
pub fn router(gateway: Arc<Gateway>, cors: &Cors) -> Router {
    let events = Router::new().route("/events", get(events));
    let events = match cors_layer(cors) {
        Some(layer) => events.layer(layer),
        None => events,
    };
    Router::new()
        .route("/", get(page))
        .route("/pgevents-tail.js", get(script))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(events)
        .with_state(gateway)
}

fn cors_layer(cors: &Cors) -> Option<CorsLayer> {
    let origins = match cors {
        Cors::Off => return None,
        Cors::Any => AllowOrigin::any(),
        Cors::Origins(list) => AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok())),
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET])
            .allow_headers([
                header::AUTHORIZATION,
                header::CACHE_CONTROL,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("x-consumer-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

async fn readyz(State(gateway): State<Arc<Gateway>>) -> Response {
    match gateway.readiness.status() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response(),
    }
}

async fn page() -> Response {
    html(include_str!("page/index.html"), "text/html; charset=utf-8")
}

async fn script() -> Response {
    html(include_str!("page/tail.js"), "text/javascript; charset=utf-8")
}

fn html(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// A refused request: the status, a line of explanation, counted by reason.
fn refuse(status: StatusCode, reason: &'static str, text: String) -> Response {
    ::metrics::counter!(metrics::REJECTED, "reason" => reason).increment(1);
    let mut response = (status, format!("{text}\n")).into_response();
    let headers = response.headers_mut();
    match status {
        StatusCode::UNAUTHORIZED => {
            let challenge = match text.strip_prefix("invalid token: ") {
                Some(why) => format!("Bearer error=\"invalid_token\", error_description=\"{}\"", why.replace('"', "'")),
                None => "Bearer realm=\"pgevents\"".to_owned(),
            };
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        _ => {}
    }
    response
}

async fn events(
    State(gateway): State<Arc<Gateway>>,
    kill: Option<Extension<ConnectionKill>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let query = uri.query().unwrap_or("");
    if query.len() > gateway.limits.max_query_bytes {
        return refuse(
            StatusCode::URI_TOO_LONG,
            "bad_request",
            format!(
                "the query string is {} bytes; at most {} are accepted (--max-query-bytes)",
                query.len(),
                gateway.limits.max_query_bytes
            ),
        );
    }
    let pairs = match Query::<Vec<(String, String)>>::try_from_uri(&uri) {
        Ok(Query(pairs)) => pairs,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "bad_request", format!("unreadable query string: {e}")),
    };
    let param = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty());
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());

    let grant = match &gateway.verifier {
        None => None,
        Some(verifier) => {
            let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::trim));
            match verifier.verify(bearer.or_else(|| param(ACCESS_TOKEN))) {
                Ok(grant) => Some(grant),
                Err(e) => return unauthorized(e),
            }
        }
    };
    let consumer_id = grant
        .as_ref()
        .and_then(|g| g.subject.clone())
        .or_else(|| param(CONSUMER_ID).or_else(|| header("x-consumer-id")).map(str::to_owned));
    let Some(consumer_id) = consumer_id else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "name the subscriber: ?consumer_id=dashboard-1 or the X-Consumer-Id header (or a token with sub)".into(),
        );
    };
    let filter = match Filter::from_query(&pairs, gateway.limits.max_filters) {
        Ok(filter) => filter,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    if let Some(Err(e)) = grant.as_ref().map(|g: &Grant| g.authorize(&filter.tables)) {
        return refuse(StatusCode::FORBIDDEN, "forbidden", e.to_string());
    }
    let resume = match last_event_id(header("last-event-id").or_else(|| param(LAST_EVENT_ID))) {
        Ok(resume) => resume,
        Err(text) => return refuse(StatusCode::BAD_REQUEST, "bad_request", text),
    };
    let kill = kill.map(|Extension(k)| k.0).unwrap_or_default();
    let Some(admission) = gateway.clients.admit(&consumer_id, kill) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "max_clients",
            format!(
                "the gateway has its maximum of {} subscribers (--max-clients); try again later",
                gateway.clients.max()
            ),
        );
    };
    tracing::info!(consumer_id = %consumer_id, ?resume, "subscriber connected");
    let subscription = Subscription { consumer_id, filter, grant };
    let feed = Feed::new(gateway.feeds.clone(), subscription, admission, resume);
    let mut response = Response::new(Body::from_stream(feed.into_body()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
    response
}

fn unauthorized(error: Unauthorized) -> Response {
    refuse(StatusCode::UNAUTHORIZED, "unauthorized", error.to_string())
}

/// `Last-Event-ID` (header or `?last_event_id=`): an event id this gateway handed out.
fn last_event_id(value: Option<&str>) -> Result<Resume, String> {
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
    fn reads_event_ids_and_refuses_the_rest() {
        assert_eq!(last_event_id(None), Ok(Resume::Live));
        assert_eq!(last_event_id(Some("41")), Ok(Resume::After(41)));
        assert_eq!(last_event_id(Some("0")), Ok(Resume::After(0)));
        for bad in ["-1", "x", "99999999999999999999", "9223372036854775807", "1.5"] {
            assert!(last_event_id(Some(bad)).unwrap_err().contains("invalid Last-Event-ID"), "{bad}");
        }
    }
}
