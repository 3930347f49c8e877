//! `pgevents consumer_debug`: prints every event it receives, in arrival order.

use std::sync::Arc;

use pgevents_consumer::{Consumer, ConsumerConfig, IncomingEvent, Outcome, QueueMode, Registry};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::cli::{ConsumerDebugArgs, OutputFormat};

fn render(format: OutputFormat, incoming: &IncomingEvent) -> String {
    let body = String::from_utf8_lossy(&incoming.body);
    match format {
        OutputFormat::Json => format!("{body}\n"),
        OutputFormat::Pretty => format!("{}\n", crate::pretty_json::pretty(&body)),
        OutputFormat::Line => {
            format!("{} {} {} {}\n", incoming.delivery.routing_key, incoming.event.action, incoming.message_id, body)
        }
    }
}

pub async fn run(args: ConsumerDebugArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let url = args.rabbit.server.parse()?;
    let mut config = ConsumerConfig::new(url, &args.rabbit.exchange);
    config.binding_keys = args.binding_keys.iter().filter(|k| !k.is_empty()).cloned().collect();
    if config.binding_keys.is_empty() {
        config.binding_keys = vec!["#".to_owned()];
    }
    config.queue = match args.queue_name.filter(|q| !q.is_empty()) {
        Some(name) => QueueMode::Durable(name),
        None => QueueMode::Temporary,
    };
    config.queue_type = args.queue_type.into();
    config.prefetch = args.prefetch.max(1);
    config.concurrency = 1;
    config.name = "pgevents consumer_debug".to_owned();
    let stdout = Arc::new(Mutex::new(tokio::io::stdout()));
    let format = args.format;
    let registry = Registry::new().on_all("*", move |incoming: IncomingEvent| {
        let stdout = stdout.clone();
        async move {
            let text = render(format, &incoming);
            let mut out = stdout.lock().await;
            match out.write_all(text.as_bytes()).await.and(out.flush().await) {
                Ok(()) => Outcome::Ok,
                Err(e) => Outcome::Retry(format!("cannot write to stdout: {e}")),
            }
        }
    });
    Consumer::new(config, registry).run(shutdown).await?;
    Ok(())
}
