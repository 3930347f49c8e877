//! The Prometheus recorder and the HTTP endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::Readiness;

/// Renders the metrics recorded so far.
pub type MetricsHandle = PrometheusHandle;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot set up metrics: {0}")]
    Recorder(String),
    #[error("cannot listen on {addr} for metrics and health checks: {source}; choose another --metrics-addr")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Installs the process-wide Prometheus recorder. `histograms` gives bucket bounds (in the
/// metric's unit) for histograms by full name; others are rendered as summaries.
pub fn install_recorder(histograms: &[(&str, &[f64])]) -> Result<MetricsHandle, TelemetryError> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in histograms {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
            .map_err(|e| TelemetryError::Recorder(e.to_string()))?;
    }
    let handle = builder.install_recorder().map_err(|e| TelemetryError::Recorder(e.to_string()))?;
    // Without the exporter's own listener, histogram buffers are drained by upkeep.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// `/metrics`, `/healthz` and `/readyz`; services add their own routes to it.
pub fn router(metrics: MetricsHandle, readiness: Readiness) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = metrics.render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let status = readiness.status();
                async move {
                    match status {
                        Ok(()) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
                        Err(reason) => {
                            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response()
                        }
                    }
                }
            }),
        )
}

/// Adds `X-Content-Type-Options: nosniff` to every response of `router`: a browser then never
/// reads a text answer (which may quote a request) as HTML or script.
pub fn nosniff(router: Router) -> Router {
    router.layer(axum::middleware::map_response(|mut response: axum::response::Response| async move {
        response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, axum::http::HeaderValue::from_static("nosniff"));
        response
    }))
}

/// Binds `addr` (failing at once with a clear error when it cannot) and serves `router` (with
/// [`nosniff`]) until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, TelemetryError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| TelemetryError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %local, "serving /metrics, /healthz and /readyz");
    Ok(tokio::spawn(async move {
        let result = axum::serve(listener, nosniff(router)).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || metrics::counter!("pgevents_test_total").increment(3));
        let readiness = Readiness::new("connecting to PostgreSQL");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let shutdown = CancellationToken::new();
        let server = serve(addr, router(handle, readiness.clone()), shutdown.clone()).await.unwrap();

        let health = get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.to_ascii_lowercase().contains("x-content-type-options: nosniff"), "{health}");
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503") && not_ready.contains("connecting to PostgreSQL"), "{not_ready}");
        readiness.set_ready();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("pgevents_test_total 3"), "{metrics}");

        let taken = serve(addr, Router::new(), CancellationToken::new()).await;
        assert!(matches!(taken, Err(TelemetryError::Bind { .. })));
        shutdown.cancel();
        server.await.unwrap();
    }
}
