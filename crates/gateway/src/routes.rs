//! Everything but the event streams, served by axum: `/` (a live tail page for trying the gateway
//! out), `/healthz`, `/readyz`, and CORS preflights for `/events` (whose `GET` is served by
//! [`crate::subscriber`]); every response says `nosniff`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::admission::Gateway;
use crate::config::Cors;

/// The routes hyper serves.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let events = Router::new().route("/events", any(only_get)).route("/sessions/{id}/events", any(only_get));
    let events = match cors_layer(&gateway.cors) {
        Some(layer) => events.layer(layer),
        None => events,
    };
    let router = Router::new()
        .route("/", get(page))
        .route("/pgevents-tail.js", get(script))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(events)
        .with_state(gateway);
    pgevents_telemetry::nosniff(router)
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

async fn only_get() -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET")], "event streams take GET\n").into_response()
}

async fn readyz(State(gateway): State<Arc<Gateway>>) -> Response {
    match gateway.readiness.status() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response(),
    }
}

async fn page() -> Response {
    static_file(include_str!("page/index.html"), "text/html; charset=utf-8")
}

async fn script() -> Response {
    static_file(include_str!("page/tail.js"), "text/javascript; charset=utf-8")
}

fn static_file(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'; style-src 'self' 'unsafe-inline'"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
