//! The stream output measured: `pgevents producer --publish-to stream` catching up on a slot,
//! beside the **stream broker limit**, an independent publisher over the stream protocol
//! (`pgevents-stream`, the client the producer uses) sending the same number of messages of the
//! producer's typical event, with the same properties and deduplication, many in flight, until
//! every one is confirmed; and the commit-to-delivery latency read from the stream.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgevents_stream::{Dedup, OutgoingStreamMessage, StreamPublisher, StreamUrl};
use pgevents_testkit::{free_local_addr, stream_url, PgCluster, PgEventsProcess, StreamRecord};
use tokio::sync::mpsc;

use crate::procstat::{cpu_time, peak_rss_kib, MachineCpu};
use crate::producer_run::{confirmed_all, ProducerRun};

/// Environment of a producer reading `slot` into `stream` (and outbox messages, none here, to
/// the AMQP broker at `amqp_url`).
pub fn producer_env(pg: &PgCluster, amqp_url: &str, slot: &str, stream: &str) -> Vec<(String, String)> {
    let mut env = pg.env();
    env.extend([
        ("RABBITMQ_URL".to_owned(), amqp_url.to_owned()),
        ("PGSLOT".to_owned(), slot.to_owned()),
        ("PGTABLES".to_owned(), "public.bench".to_owned()),
        ("PGEVENTS_PUBLISH_TO".to_owned(), "stream".to_owned()),
        ("PGEVENTS_STREAM".to_owned(), stream.to_owned()),
        ("PGEVENTS_STREAM_URL".to_owned(), stream_url()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ]);
    env
}

/// Starts the producer and waits until it has `expected` events confirmed by the stream (its
/// `pgevents_events_confirmed_total`, read every 50 ms: a reader of the stream would compete for
/// the same two cores).
pub async fn drain(
    binary: &Path,
    env: Vec<(String, String)>,
    expected: u64,
    timeout: Duration,
) -> anyhow::Result<ProducerRun> {
    let metrics = free_local_addr();
    let mut env = env;
    env.push(("PGEVENTS_METRICS_ADDR".to_owned(), metrics.to_string()));
    let started = Instant::now();
    let machine = MachineCpu::now();
    let mut producer = PgEventsProcess::spawn_binary(binary, &["producer"], &env);
    let pid = producer.pid();
    let confirmed = confirmed_all(metrics, expected, timeout).await;
    let elapsed = started.elapsed();
    let machine_busy = machine.zip(MachineCpu::now()).map(|(before, after)| after.busy_since(&before));
    let peak_rss_kib = peak_rss_kib(pid).unwrap_or(0);
    let cpu = cpu_time(pid).unwrap_or_default();
    producer.terminate();
    let code = producer.wait(Duration::from_secs(30)).await;
    if confirmed.is_none() {
        bail!("not all {expected} events were confirmed within {timeout:?}; log:\n{}", producer.stderr());
    }
    if code != Some(0) {
        bail!("the producer exited with {code:?}; log:\n{}", producer.stderr());
    }
    Ok(ProducerRun { elapsed, confirmed, peak_rss_kib, cpu, machine_busy })
}

/// The message the broker limit sends: the producer's event as it sits in the stream.
fn message(record: &StreamRecord, i: u64) -> OutgoingStreamMessage {
    let mut application_properties: Vec<(std::borrow::Cow<'static, str>, String)> =
        record.properties.iter().map(|(k, v)| (k.clone().into(), v.clone())).collect();
    for (name, value) in &mut application_properties {
        if name == "seq" || name == "publishing_id" {
            *value = i.to_string();
        }
    }
    OutgoingStreamMessage {
        body: record.body.clone(),
        message_id: format!("0/{i:X}:0"),
        content_type: Some("application/json".into()),
        content_encoding: None,
        application_properties,
    }
}

/// Publishes `count` copies of `typical` to `stream` (declared if missing) with at most
/// `window` unconfirmed, deduplicated by a name of its own; returns the time until the last
/// confirm.
pub async fn broker_limit(stream: &str, count: u64, typical: &StreamRecord, window: usize) -> anyhow::Result<Duration> {
    let url: StreamUrl = stream_url().parse()?;
    let probe = pgevents_stream::client(&url, "pgevents bench").await?;
    pgevents_stream::ensure_stream(&probe, stream, &pgevents_stream::StreamRetention::default()).await?;
    let _ = probe.close().await;
    let name = Dedup::Named(format!("bench:{stream}"));
    let timeout = Duration::from_secs(60);
    let mut publisher = StreamPublisher::connect(&url, stream, name, "pgevents bench (broker limit)", timeout).await?;
    let started = Instant::now();
    let (mut sent, mut confirmed) = (0u64, 0u64);
    while confirmed < count {
        while sent < count && sent - confirmed < window as u64 {
            sent += 1;
            publisher.send(message(typical, sent)).await?;
        }
        publisher.flush().await?;
        let ids = tokio::time::timeout(timeout, publisher.next_confirm()).await.context("no confirm for 60 s")??;
        confirmed += ids.len() as u64;
    }
    let elapsed = started.elapsed();
    publisher.close().await;
    Ok(elapsed)
}

/// The bodies of the messages `stream` gets from now on, as they arrive.
pub async fn follow(stream: &str) -> anyhow::Result<mpsc::UnboundedReceiver<Vec<u8>>> {
    let url: StreamUrl = stream_url().parse()?;
    // The reader `pgevents serve` and the consumer library read with.
    let mut reader =
        pgevents_stream::StreamReader::open(&url, stream, pgevents_stream::Start::Next, "pgevents bench (latency)")
            .await
            .context("read the stream")?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(record) = reader.next().await {
            if tx.send(record.message.data().unwrap_or_default().to_vec()).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
