//! `pgevents serve`: the Server-Sent Events gateway.

use std::time::Duration;

use pgevents_gateway::{serve, GatewayConfig};
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;

pub async fn run(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = GatewayConfig {
        listen: args.listen,
        amqp_url: args.rabbit.server.parse()?,
        exchange: args.rabbit.exchange.clone(),
        stream: args.history_stream.clone(),
        retention: args.retention.retention(),
        heartbeat: Duration::from_secs(args.heartbeat_secs.max(1)),
        client_buffer: args.client_buffer.max(1),
    };
    let readiness = super::telemetry::start(args.telemetry.metrics_addr, &[], "starting", &shutdown).await?;
    readiness.set_ready();
    serve(config, shutdown).await?;
    Ok(())
}
