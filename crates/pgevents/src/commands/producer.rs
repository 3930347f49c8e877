//! `pgevents producer`.

use std::sync::Arc;
use std::time::Duration;

use pgevents_decode::{Plugin, ValueOptions};
use pgevents_producer::{
    metrics, Compression, HeaderMode, Oversize, Phase, ProducerConfig, PublishTo, RoutingConfig, SnapshotMode, Stats,
    StreamOutputConfig, TableName,
};
use pgevents_telemetry::Readiness;
use tokio_util::sync::CancellationToken;

use crate::cli::{
    CompressionArg, HeadersArg, OversizeArg, PluginArg, ProducerArgs, PublishToArg, RoutingArgs, SnapshotArg,
    StreamArgs,
};

pub fn config(args: &ProducerArgs) -> anyhow::Result<ProducerConfig> {
    let postgres = args.pg.connect_config("pgevents producer")?;
    let url = args.rabbit.server.parse()?;
    let mut config = ProducerConfig::new(postgres, url);
    config.slot = args
        .slot
        .clone()
        .or_else(|| std::env::var("PGSLOT").ok())
        .or_else(|| std::env::var("PGREPLICATIONSLOT").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "pgevents".to_owned());
    pgevents_replication::check_identifier("slot", &config.slot).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.publication = args.publication.clone();
    config.tables = args
        .tables
        .iter()
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.parse::<TableName>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    config.plugin = match args.plugin {
        PluginArg::Pgoutput => Plugin::PgOutput,
        PluginArg::Wal2json => Plugin::Wal2Json,
    };
    config.exchange = args.rabbit.exchange.clone();
    config.mandatory = args.mandatory;
    config.compression = match args.compression {
        CompressionArg::None => Compression::None,
        CompressionArg::Gzip => Compression::Gzip,
    };
    config.pk_hash_header = match args.pk_hash_header.as_deref().map(str::trim).filter(|h| !h.is_empty()) {
        Some(name) if name.len() > 255 => anyhow::bail!("--pk-hash-header: a header name has at most 255 bytes"),
        Some(name) if pgevents_producer::WRITTEN_HEADERS.contains(&name) => {
            anyhow::bail!(
                "--pk-hash-header: {name:?} is a header pgevents already writes; choose another name (e.g. pk)"
            )
        }
        Some(name) => Some(name.to_owned()),
        None => None,
    };
    config.values = ValueOptions { numeric_as_string: args.numeric_as_string };
    config.max_in_flight = args.max_in_flight.max(1);
    config.max_in_flight_bytes = args.max_in_flight_bytes.max(1);
    config.max_message_bytes = args.max_message_bytes.max(1024);
    config.oversize = match args.oversize {
        OversizeArg::Fail => Oversize::Fail,
        OversizeArg::Stub => Oversize::Stub,
    };
    config.status_interval = Duration::from_secs(args.status_interval_secs.max(1));
    config.tx_memory_budget = args.tx_memory_mb.max(1) << 20;
    config.spill_dir = args.spill_dir.clone();
    config.shutdown_timeout = Duration::from_secs(args.shutdown_timeout_secs);
    config.confirm_timeout = Duration::from_secs(args.confirm_timeout_secs.max(1));
    config.backoff_max = Duration::from_secs(args.backoff_max_secs.max(1)).max(config.backoff_min);
    config.slot_busy_timeout = Duration::from_secs(args.slot_busy_timeout_secs);
    config.lock_holder_timeout = Duration::from_secs(args.lock_holder_timeout_secs.max(1));
    config.heartbeat_sql = args.heartbeat_sql.clone().filter(|sql| !sql.trim().is_empty());
    config.heartbeat_interval = Duration::from_secs(args.heartbeat_interval_secs.max(1));
    config.routing = routing(&args.routing)?;
    config.snapshot = match args.snapshot {
        SnapshotArg::Never => SnapshotMode::Never,
        SnapshotArg::Initial => SnapshotMode::Initial,
        SnapshotArg::Always => SnapshotMode::Always,
    };
    config.snapshot_batch_rows = args.snapshot_batch_rows.max(1);
    config.headers = match args.headers {
        HeadersArg::Full => HeaderMode::Full,
        HeadersArg::Minimal => HeaderMode::Minimal,
        HeadersArg::None => HeaderMode::None,
    };
    match args.allow_skip {
        Some(true) => anyhow::bail!(
            "--allow-skip (PGEVENTS_ALLOW_SKIP) was removed: skip requests are now signed. Grant the roles that may skip \
             EXECUTE ON FUNCTION pgevents.skip() and have them call SELECT pgevents.skip() in the transaction; to keep \
             believing unsigned {{\"skip\": true}} messages from anyone who can connect, use --allow-unsigned-messages"
        ),
        Some(false) => tracing::warn!("--allow-skip (PGEVENTS_ALLOW_SKIP) was removed and is ignored: skip requests are signed now (pgevents.skip())"),
        None => {}
    }
    config.allow_unsigned_messages = args.allow_unsigned_messages;
    config.outbox_exchange = args.outbox_exchange.trim().to_owned();
    config.outbox_dead_letter_exchange = args.outbox_dead_letter_exchange.trim().to_owned();
    config.max_context_bytes = args.max_context_bytes;
    config.backfill_chunk_rows = usize::try_from(args.backfill_chunk_rows).unwrap_or(1000);
    config.backfill_poll = Duration::from_millis(args.backfill_poll_ms);
    config.snapshot_new_tables = args.snapshot_new_tables;
    config.backfill_max_rows_per_s = args.backfill_max_rows_per_s;
    if config.snapshot_new_tables && (config.plugin != Plugin::PgOutput || !config.tables.is_empty()) {
        anyhow::bail!(
            "--snapshot-new-tables follows the publication: it needs --plugin pgoutput and no PGTABLES (the publication then says which tables are streamed)"
        );
    }
    config.history_stream =
        args.history_stream.clone().filter(|s| !s.trim().is_empty()).map(|s| (s, args.retention.retention()));
    config.check_exchanges().map_err(anyhow::Error::msg)?;
    (config.publish_to, config.stream) = stream_output(&args.stream, config.history_stream.as_ref())?;
    if config.stream.is_some() && config.max_message_bytes > pgevents_stream::MAX_MESSAGE_BYTES {
        tracing::info!(
            max_message_bytes = pgevents_stream::MAX_MESSAGE_BYTES,
            "events above 1,000,000 bytes do not fit the stream protocol's 1 MiB frame: --max-message-bytes is lowered to it (--oversize says what happens to larger ones)"
        );
        config.max_message_bytes = pgevents_stream::MAX_MESSAGE_BYTES;
    }
    Ok(config)
}

/// `--publish-to` and the stream it writes to.
fn stream_output(
    args: &StreamArgs,
    history: Option<&(String, pgevents_amqp::Retention)>,
) -> anyhow::Result<(PublishTo, Option<StreamOutputConfig>)> {
    let publish_to = match args.publish_to {
        PublishToArg::Exchange => PublishTo::Exchange,
        PublishToArg::Stream => PublishTo::Stream,
        PublishToArg::Both => PublishTo::Both,
    };
    let stream = args.stream.as_deref().map(str::trim).filter(|s| !s.is_empty());
    match (publish_to, stream) {
        (PublishTo::Exchange, None) => Ok((publish_to, None)),
        (PublishTo::Exchange, Some(_)) => {
            anyhow::bail!(
                "--stream is set but --publish-to is exchange: use --publish-to stream (or both) to write events to it"
            )
        }
        (_, None) => anyhow::bail!("--publish-to stream and both need --stream, the name of the stream to write to"),
        (_, Some(name)) => {
            if history.is_some_and(|(history, _)| history == name) {
                anyhow::bail!(
                    "--stream {name:?} is also --history-stream, which RabbitMQ fills from the exchange: a stream written twice is not exactly once; choose another name"
                );
            }
            let retention = pgevents_amqp::Retention {
                max_age: args.stream_max_age.clone(),
                max_bytes: args.stream_max_bytes,
                ..pgevents_amqp::Retention::default()
            };
            Ok((
                publish_to,
                Some(StreamOutputConfig { url: args.connection.url()?, stream: name.to_owned(), retention }),
            ))
        }
    }
}

fn routing(args: &RoutingArgs) -> anyhow::Result<RoutingConfig> {
    let globs = |list: &[String]| -> Vec<String> {
        list.iter().map(|g| g.trim()).filter(|g| !g.is_empty()).map(str::to_owned).collect()
    };
    let mut routing = RoutingConfig::default();
    routing.set_template(&args.routing_key_template).map_err(anyhow::Error::msg)?;
    routing.set_exchange_map(&args.exchange_map).map_err(anyhow::Error::msg)?;
    routing.include_tables = globs(&args.include_tables);
    routing.exclude_tables = globs(&args.exclude_tables);
    routing.exclude_columns = globs(&args.exclude_columns);
    Ok(routing)
}

pub async fn run(args: ProducerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = config(&args)?;
    let stats = Arc::new(Stats::default());
    let histograms: [(&str, &[f64]); 1] = [(metrics::COMMIT_TO_CONFIRM, metrics::COMMIT_TO_CONFIRM_BUCKETS)];
    let readiness =
        super::telemetry::start(args.telemetry.metrics_addr, &histograms, Phase::Connecting.describe(), &shutdown)
            .await?;
    metrics::describe();
    let watcher = tokio::spawn(report_readiness(stats.clone(), readiness));
    let result = pgevents_producer::run(config, stats, shutdown).await;
    watcher.abort();
    result?;
    Ok(())
}

/// Keeps `/readyz` in step with the producer's phase: ready while streaming, otherwise 503
/// with the phase and its reason.
async fn report_readiness(stats: Arc<Stats>, readiness: Readiness) {
    let mut last = None;
    loop {
        let status = stats.status();
        if last.as_ref() != Some(&status) {
            match status.0 {
                Phase::Streaming => readiness.set_ready(),
                _ => readiness.set_not_ready(stats.not_ready_reason()),
            }
            last = Some(status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
