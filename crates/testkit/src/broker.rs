//! The local RabbitMQ (127.0.0.1:5672, guest/guest, or `PGEVENTS_TEST_AMQP_URL`) with names
//! unique to each test, and a queue that collects published events.

use std::time::Duration;

use pgevents_amqp::{self as amqp, Brokers, Channel, Connection, Delivery, DeliveryStream, QueueSpec, QueueType};
use pgevents_event::Event;
use rand::RngExt;

/// The broker tests use.
pub fn amqp_url() -> String {
    std::env::var("PGEVENTS_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// `prefix_<random>`: a name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("pgevents_test_{prefix}_{n:016x}")
}

/// An event as it arrived.
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    pub event: Event,
    pub json: serde_json::Value,
    pub body: Vec<u8>,
    pub delivery: Delivery,
}

impl ReceivedEvent {
    pub fn message_id(&self) -> String {
        self.delivery.message_id().unwrap_or_default().to_owned()
    }
}

/// A queue bound to an exchange, collecting events.
pub struct EventQueue {
    pub name: String,
    connection: Connection,
    channel: Channel,
    deliveries: DeliveryStream,
}

impl EventQueue {
    /// Declares the exchange (as the producer would) and a queue bound with `keys`.
    pub async fn bind(exchange: &str, keys: &[&str]) -> EventQueue {
        Self::bind_to(&amqp_url(), exchange, keys).await
    }

    pub async fn bind_to(url: &str, exchange: &str, keys: &[&str]) -> EventQueue {
        Self::open(url, exchange, keys, false, QueueType::Classic).await
    }

    /// A durable queue (it survives a broker restart and keeps what arrives while nobody
    /// consumes), bound to `exchange` and consumed.
    pub async fn durable(url: &str, exchange: &str, keys: &[&str]) -> EventQueue {
        Self::open(url, exchange, keys, true, QueueType::Classic).await
    }

    /// A quorum queue (replicated over a cluster's nodes), bound to `exchange` and consumed.
    pub async fn quorum(url: &str, exchange: &str, keys: &[&str]) -> EventQueue {
        Self::open(url, exchange, keys, true, QueueType::Quorum).await
    }

    async fn open(url: &str, exchange: &str, keys: &[&str], durable: bool, queue_type: QueueType) -> EventQueue {
        let url: Brokers = url.parse().expect("test AMQP URL");
        let connection =
            amqp::connect(&url, "pgevents test collector").await.expect("connect to RabbitMQ for the test");
        let channel = amqp::open_channel(&connection).await.expect("channel");
        amqp::declare_topic_exchange(&channel, exchange).await.expect("declare exchange");
        let name = unique_name("q");
        // A temporary queue is deleted when the test's connection ends, even if the test panics.
        let spec = QueueSpec { name: name.clone(), durable, auto_delete: !durable, queue_type, ..Default::default() };
        amqp::declare_queue(&channel, &spec).await.expect("declare queue");
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        amqp::bind_queue(&channel, &name, exchange, &keys).await.expect("bind");
        let deliveries = amqp::consume(&channel, &name, 1000, amqp::FieldTable::new()).await.expect("consume");
        EventQueue { name, connection, channel, deliveries }
    }

    /// Consumes an existing durable queue again (after a broker restart ended the connection).
    /// (A quorum queue whose leader was on a stopped node answers once a new leader is
    /// elected: this tries for 30 seconds.)
    pub async fn reattach(url: &str, name: &str) -> EventQueue {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match Self::attach(url, name).await {
                Ok(queue) => return queue,
                Err(e) if tokio::time::Instant::now() > deadline => panic!("consume the durable queue again: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// As [`EventQueue::reattach`], `None` while the broker cannot be reached.
    pub async fn try_reattach(url: &str, name: &str) -> Option<EventQueue> {
        Self::attach(url, name).await.ok()
    }

    async fn attach(url: &str, name: &str) -> Result<EventQueue, amqp::AmqpError> {
        let parsed: Brokers = url.parse()?;
        let connection = amqp::connect(&parsed, "pgevents test collector").await?;
        let channel = amqp::open_channel(&connection).await?;
        let deliveries = amqp::consume(&channel, name, 1000, amqp::FieldTable::new()).await?;
        Ok(EventQueue { name: name.to_owned(), connection, channel, deliveries })
    }

    /// The next message as delivered (body not decoded), acknowledged.
    pub async fn next_raw(&mut self, timeout: Duration) -> Option<Delivery> {
        let delivery = tokio::time::timeout(timeout, self.deliveries.next()).await.ok()??;
        amqp::ack(&self.channel, delivery.delivery_tag).await.expect("ack");
        Some(delivery)
    }

    /// The next event, acknowledged; `None` after `timeout` without one.
    pub async fn next(&mut self, timeout: Duration) -> Option<ReceivedEvent> {
        let delivery = self.next_raw(timeout).await?;
        let event = Event::from_slice(&delivery.body)
            .unwrap_or_else(|e| panic!("not an event: {e}: {}", String::from_utf8_lossy(&delivery.body)));
        let json = serde_json::from_slice(&delivery.body).expect("JSON body");
        Some(ReceivedEvent { event, json, body: delivery.body.clone(), delivery })
    }

    /// Takes the next delivery and rejects it with requeue (a consumer that keeps failing);
    /// `false` when none arrived within `timeout`.
    pub async fn nack_next(&mut self, timeout: Duration) -> bool {
        let Ok(Some(delivery)) = tokio::time::timeout(timeout, self.deliveries.next()).await else {
            return false;
        };
        amqp::nack(&self.channel, delivery.delivery_tag, true).await.is_ok()
    }

    /// Binds the queue to `exchange` again (after the exchange was deleted and re-declared).
    pub async fn rebind(&self, exchange: &str, keys: &[&str]) {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        amqp::bind_queue(&self.channel, &self.name, exchange, &keys).await.expect("bind");
    }

    /// Exactly `n` events (panics if fewer arrive within `timeout`).
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<ReceivedEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(e) => out.push(e),
                None => panic!(
                    "expected {n} events within {timeout:?}, got {}: {:#?}",
                    out.len(),
                    out.iter().map(|e| e.json.clone()).collect::<Vec<_>>()
                ),
            }
        }
        out
    }

    /// Everything that arrives until `quiet` passes without a new event.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<ReceivedEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next(quiet).await {
            out.push(e);
        }
        out
    }

    /// Deletes the queue and closes the connection.
    pub async fn close(self) {
        let _ = self.channel.queue_delete(amqprs_queue_delete(&self.name)).await;
        let _ = self.channel.close().await;
        let _ = self.connection.close().await;
    }
}

fn amqprs_queue_delete(name: &str) -> pgevents_amqp::QueueDeleteArguments {
    pgevents_amqp::QueueDeleteArguments::new(name)
}

/// Deletes an exchange (test cleanup).
pub async fn delete_exchange(exchange: &str) {
    let Ok(url) = amqp_url().parse::<Brokers>() else {
        return;
    };
    let Ok(connection) = amqp::connect(&url, "pgevents test cleanup").await else {
        return;
    };
    if let Ok(channel) = amqp::open_channel(&connection).await {
        let _ = channel.exchange_delete(pgevents_amqp::ExchangeDeleteArguments::new(exchange)).await;
        let _ = channel.close().await;
    }
    let _ = connection.close().await;
}

/// Deletes a queue (test cleanup, e.g. a history stream).
pub async fn delete_queue(queue: &str) {
    let Ok(url) = amqp_url().parse::<Brokers>() else {
        return;
    };
    let Ok(connection) = amqp::connect(&url, "pgevents test cleanup").await else {
        return;
    };
    if let Ok(channel) = amqp::open_channel(&connection).await {
        let _ = channel.queue_delete(amqprs_queue_delete(queue)).await;
        let _ = channel.close().await;
    }
    let _ = connection.close().await;
}

/// Publishes one message to `exchange` and waits for the broker's confirm (a redelivery or a
/// malformed message, as a test needs it).
pub async fn publish_raw(exchange: &str, routing_key: &str, message_id: &str, body: &[u8]) {
    publish_raw_to(&amqp_url(), exchange, routing_key, message_id, body).await
}

/// [`publish_raw`] on the broker at `url` (a private node).
pub async fn publish_raw_to(url: &str, exchange: &str, routing_key: &str, message_id: &str, body: &[u8]) {
    let message = amqp::OutgoingMessage {
        message_type: None,
        mandatory: None,
        exchange: None,
        routing_key: routing_key.to_owned(),
        message_id: message_id.to_owned(),
        headers: Vec::new(),
        timestamp: 0,
        content_type: "application/json".into(),
        content_encoding: None,
        app_id: "pgevents-test".into(),
        body: body.to_vec(),
    };
    publish_message_to(url, exchange, message).await;
}

/// Publishes `message` to `exchange` and waits for the broker's confirm.
pub async fn publish_message(exchange: &str, message: amqp::OutgoingMessage) {
    publish_message_to(&amqp_url(), exchange, message).await
}

/// [`publish_message`] on the broker at `url` (a private node).
pub async fn publish_message_to(url: &str, exchange: &str, message: amqp::OutgoingMessage) {
    let url: Brokers = url.parse().expect("test broker URL");
    let sender = amqp::ConfirmedSender::to_exchange(url, exchange, "pgevents test publisher", 1);
    sender.send(message).await.expect("publish a test message");
}

/// Channels open on the local broker's connections whose client-provided name contains `name`
/// (`rabbitmqctl list_connections`), summed; `None` when no such connection is open.
pub fn connection_channels(name: &str) -> Option<u32> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "client_properties", "channels"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<u32> = text
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.rsplit(['\t', ' ']).next()?.trim().parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// Declares `name`, a consistent-hash exchange (plugin `rabbitmq_consistent_hash_exchange`)
/// that hashes the header `header`, and feeds it every message of the topic exchange `source`
/// (an exchange-to-exchange binding with `#`). Queues bound to it with a weight (`"1"`) share
/// the messages by the header's value.
pub async fn consistent_hash_exchange(url: &str, name: &str, header: &str, source: &str) {
    use amqprs::channel::{ExchangeBindArguments, ExchangeDeclareArguments};
    let brokers: Brokers = url.parse().expect("test broker URL");
    let connection = amqp::connect(&brokers, "pgevents test setup").await.expect("connect");
    let channel = amqp::open_channel(&connection).await.expect("channel");
    amqp::declare_topic_exchange(&channel, source).await.expect("declare the source exchange");
    let mut args = ExchangeDeclareArguments::new(name, "x-consistent-hash");
    args.durable = true;
    args.arguments = amqp::field_table(&[("hash-header", amqp::FieldValue::from(header))]);
    channel.exchange_declare(args).await.expect("declare the consistent-hash exchange (is the plugin enabled?)");
    channel.exchange_bind(ExchangeBindArguments::new(name, source, "#")).await.expect("bind it to the source");
    let _ = channel.close().await;
    let _ = connection.close().await;
}
