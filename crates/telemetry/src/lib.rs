//! Telemetry shared by every long-running pgevents service: a Prometheus recorder for the
//! `metrics` facade, a [`Readiness`] flag that says why a service is not ready, and an HTTP
//! server for `/metrics` (Prometheus text), `/healthz` (alive) and `/readyz` (connected to
//! everything it needs).

mod readiness;
mod server;

pub use readiness::Readiness;
pub use server::{install_recorder, nosniff, router, serve, MetricsHandle, TelemetryError};
