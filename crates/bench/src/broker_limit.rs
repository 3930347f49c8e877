//! The broker limit: the fastest publishers with confirms we can write, sending `n` messages of
//! the producer's mean size with many in flight, timed until the last confirm.
//!
//! Both send what the producer sends (persistent, message id, three headers) to the same
//! exchange and queue; amqprs through the same publisher and confirm tracker as the producer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use pgevents_amqp::{ConfirmEvent, ConfirmingPublisher, OutgoingMessage, Publisher, PublisherSettings};
use pgevents_event::{Lsn, APP_ID, CONTENT_TYPE};
use pgevents_producer::confirm::ConfirmTracker;

use crate::broker::BenchQueue;

const ROUTING_KEY: &str = "public.bench";

fn message(body: &[u8], i: u64) -> OutgoingMessage {
    OutgoingMessage {
        exchange: None,
        routing_key: ROUTING_KEY.to_owned(),
        message_id: format!("0/{i:X}:0"),
        headers: vec![("action", "I".to_owned()), ("table", ROUTING_KEY.to_owned()), ("lsn", format!("0/{i:X}"))],
        timestamp: 0,
        content_type: CONTENT_TYPE,
        content_encoding: None,
        app_id: APP_ID,
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
    let mut tracker = ConfirmTracker::new(Lsn::ZERO);
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
