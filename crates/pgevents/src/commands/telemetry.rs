//! `--metrics-addr` for every long-running subcommand: installs the Prometheus recorder and
//! serves `/metrics`, `/healthz` and `/readyz` until shutdown.

use std::net::SocketAddr;

use pgevents_telemetry::{install_recorder, router, serve, Readiness};
use tokio_util::sync::CancellationToken;

/// Starts the metrics server when an address is given. The returned readiness starts as not
/// ready for `starting`; without an address it is still returned (and simply not served).
pub async fn start(
    addr: Option<SocketAddr>,
    histograms: &[(&str, &[f64])],
    starting: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Readiness> {
    let readiness = Readiness::new(starting);
    if let Some(addr) = addr {
        let handle = install_recorder(histograms)?;
        pgevents_amqp::describe_metrics();
        serve(addr, router(handle, readiness.clone()), shutdown.clone()).await?;
    }
    Ok(readiness)
}
