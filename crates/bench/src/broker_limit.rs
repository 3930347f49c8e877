//! The broker limit: the fastest publishers with confirms we can write, sending `n` messages of
//! the producer's mean size with many in flight, timed until the last confirm.
//!
//! Both send what the producer sends (persistent, message id, three headers) to the same
//! exchange and queue; amqprs through the same publisher and confirm tracker as the producer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use pgevents_amqp::{AckWindow, ConfirmEvent, ConfirmingPublisher, OutgoingMessage, PublisherSettings};
use pgevents_event::{APP_ID, CONTENT_TYPE};

use crate::broker::BenchQueue;

const ROUTING_KEY: &str = "public.bench";

fn message(body: &[u8], i: u64) -> OutgoingMessage {
    OutgoingMessage {
        message_type: None,
        mandatory: None,
        exchange: None,
        routing_key: ROUTING_KEY.to_owned(),
        message_id: format!("0/{i:X}:0"),
        headers: vec![
            ("action".into(), "I".to_owned()),
            ("table".into(), ROUTING_KEY.to_owned()),
            ("lsn".into(), format!("0/{i:X}")),
        ],
        timestamp: 0,
        content_type: CONTENT_TYPE.into(),
        content_encoding: None,
        app_id: APP_ID.into(),
        body: body.to_vec(),
    }
}

/// amqprs, through `pgevents_amqp::ConfirmingPublisher`.
pub async fn amqprs(queue: &BenchQueue, n: u64, body: &[u8], window: usize) -> anyhow::Result<Duration> {
    let settings = PublisherSettings {
        exchange: queue.exchange.clone(),
        mandatory: false,
        other_exchanges: Vec::new(),
        declare_exchange: false,
        connection_name: "pgevents bench (amqprs)".to_owned(),
    };
    let mut publisher = ConfirmingPublisher::connect(&queue.url.parse()?, &settings).await?;
    let mut tracker = AckWindow::default();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < n || tracker.in_flight() > 0 {
        if sent < n && tracker.in_flight() < window as u64 {
            sent += 1;
            let tag = publisher.publish(message(body, sent)).await?;
            tracker.published(tag);
            continue;
        }
        match publisher.next_event().await {
            ConfirmEvent::Ack { tag, multiple } => {
                tracker.ack(tag, multiple)?;
            }
            other => bail!("amqprs publisher: {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    publisher.close().await;
    Ok(elapsed)
}

/// The broker's own latency floor: amqprs publishing `rate` messages per second for `seconds`
/// (the same messages as the producer's), each timed from publish to its confirm. Returns the
/// sorted latencies in microseconds.
pub async fn amqprs_confirm_latency(
    queue: &BenchQueue,
    rate: u64,
    seconds: u64,
    body: &[u8],
) -> anyhow::Result<Vec<u64>> {
    let settings = PublisherSettings {
        exchange: queue.exchange.clone(),
        mandatory: false,
        other_exchanges: Vec::new(),
        declare_exchange: false,
        connection_name: "pgevents bench (broker latency)".to_owned(),
    };
    let mut publisher = ConfirmingPublisher::connect(&queue.url.parse()?, &settings).await?;
    let total = rate * seconds;
    let tick = Duration::from_millis(10);
    let per_tick = (rate as f64 * tick.as_secs_f64()).max(1.0);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent_at: VecDeque<Instant> = VecDeque::new();
    let first_tag = publisher.next_tag();
    let mut confirmed_through = first_tag - 1;
    let mut latencies = Vec::with_capacity(total as usize);
    let (mut sent, mut owed) = (0u64, 0f64);
    while latencies.len() < total as usize {
        tokio::select! {
            _ = ticker.tick(), if sent < total => {
                owed += per_tick;
                while owed >= 1.0 && sent < total {
                    sent += 1;
                    owed -= 1.0;
                    publisher.publish(message(body, sent)).await?;
                    sent_at.push_back(Instant::now());
                }
            }
            event = publisher.next_event() => match event {
                ConfirmEvent::Ack { tag, multiple } => {
                    // Confirms come in order on one channel: everything up to `tag` is in.
                    let upto = if multiple { tag } else { tag.max(confirmed_through + 1) };
                    while confirmed_through < upto {
                        confirmed_through += 1;
                        if let Some(at) = sent_at.pop_front() {
                            latencies.push(at.elapsed().as_micros() as u64);
                        }
                    }
                }
                other => bail!("amqprs publisher: {other:?}"),
            },
        }
    }
    publisher.close().await;
    latencies.sort_unstable();
    Ok(latencies)
}

/// lapin, used directly.
pub async fn lapin(queue: &BenchQueue, n: u64, body: &[u8], window: usize) -> anyhow::Result<Duration> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::{AMQPValue, FieldTable, ShortString};
    use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

    let connection = Connection::connect(&queue.url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(window);
    let check = |confirmation: Confirmation| match confirmation {
        Confirmation::Ack(_) => Ok(()),
        other => Err(anyhow!("lapin publisher: {other:?}")),
    };
    for i in 1..=n {
        if pending.len() >= window {
            if let Some(confirm) = pending.pop_front() {
                check(confirm.await?)?;
            }
        }
        let mut headers = FieldTable::default();
        headers.insert("action".into(), AMQPValue::LongString("I".into()));
        headers.insert("table".into(), AMQPValue::LongString(ROUTING_KEY.into()));
        headers.insert("lsn".into(), AMQPValue::LongString(format!("0/{i:X}").into()));
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from(CONTENT_TYPE))
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(format!("0/{i:X}:0")))
            .with_app_id(ShortString::from(APP_ID))
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                queue.exchange.as_str().into(),
                ROUTING_KEY.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?;
        pending.push_back(confirm);
    }
    for confirm in pending {
        check(confirm.await?)?;
    }
    let elapsed = started.elapsed();
    let _ = connection.close(200, "done".into()).await;
    Ok(elapsed)
}
