//! Consuming: prefetch, manual acknowledgement, and deliveries as plain values.

use amqprs::channel::{BasicAckArguments, BasicConsumeArguments, BasicNackArguments, BasicQosArguments};
use amqprs::{BasicProperties, FieldTable, FieldValue};
use std::borrow::Cow;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::{AmqpError, Channel, OutgoingMessage};

/// One message received from a queue.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub delivery_tag: u64,
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

impl Delivery {
    /// A string header (`action`, `table`, `lsn` on pgevents events).
    pub fn header(&self, name: &str) -> Option<String> {
        let headers = self.properties.headers()?;
        let key = name.try_into().ok()?;
        match headers.get(&key)? {
            FieldValue::S(s) => Some(s.as_ref().clone()),
            FieldValue::l(n) => Some(n.to_string()),
            FieldValue::I(n) => Some(n.to_string()),
            other => Some(other.to_string()),
        }
    }

    /// A numeric header (the offset of a stream queue delivery, `x-stream-offset`).
    pub fn header_i64(&self, name: &str) -> Option<i64> {
        let headers = self.properties.headers()?;
        let key = name.try_into().ok()?;
        match headers.get(&key)? {
            FieldValue::l(n) => Some(*n),
            FieldValue::I(n) => Some(i64::from(*n)),
            FieldValue::i(n) => Some(i64::from(*n)),
            FieldValue::s(n) => Some(i64::from(*n)),
            FieldValue::u(n) => Some(i64::from(*n)),
            FieldValue::b(n) => Some(i64::from(*n)),
            FieldValue::B(n) => Some(i64::from(*n)),
            _ => None,
        }
    }

    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id().map(String::as_str)
    }

    /// A copy of this message for `exchange` (same routing key, body, properties and headers,
    /// headers as strings) with `extra` headers added, replacing any of the same name: what a
    /// consumer publishes to a dead-letter exchange, with the reason.
    pub fn copy_to(&self, exchange: &str, extra: Vec<(Cow<'static, str>, String)>) -> OutgoingMessage {
        let mut headers: Vec<(Cow<'static, str>, String)> = Vec::new();
        if let Some(table) = self.properties.headers() {
            for name in table.as_ref().keys() {
                let name: &String = name.as_ref();
                if extra.iter().all(|(n, _)| n.as_ref() != name.as_str()) {
                    if let Some(value) = self.header(name) {
                        headers.push((Cow::Owned(name.to_owned()), value));
                    }
                }
            }
        }
        headers.extend(extra);
        let text = |value: Option<&String>| value.cloned().map(Cow::Owned);
        OutgoingMessage {
            message_type: self.properties.message_type().cloned(),
            mandatory: None,
            exchange: Some(Arc::from(exchange)),
            routing_key: self.routing_key.clone(),
            message_id: self.message_id().unwrap_or_default().to_owned(),
            headers,
            timestamp: self.properties.timestamp().unwrap_or(0),
            content_type: text(self.properties.content_type()).unwrap_or(Cow::Borrowed("application/octet-stream")),
            content_encoding: text(self.properties.content_encoding()),
            app_id: text(self.properties.app_id()).unwrap_or(Cow::Borrowed("")),
            body: self.body.clone(),
        }
    }
}

/// Deliveries of one consumer, in order. `None` once the channel or connection is gone.
pub struct DeliveryStream {
    rx: mpsc::UnboundedReceiver<amqprs::channel::ConsumerMessage>,
    pub consumer_tag: String,
}

impl DeliveryStream {
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(delivery) = Delivery::from_message(self.rx.recv().await?) {
                return Some(delivery);
            }
        }
    }

    /// The next delivery if one has already arrived (to drain a batch without waiting).
    pub fn try_next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(delivery) = Delivery::from_message(self.rx.try_recv().ok()?) {
                return Some(delivery);
            }
        }
    }
}

impl Delivery {
    fn from_message(message: amqprs::channel::ConsumerMessage) -> Option<Delivery> {
        let (Some(deliver), Some(properties), Some(body)) =
            (message.deliver, message.basic_properties, message.content)
        else {
            return None;
        };
        Some(Delivery {
            delivery_tag: deliver.delivery_tag(),
            exchange: deliver.exchange().clone(),
            routing_key: deliver.routing_key().clone(),
            redelivered: deliver.redelivered(),
            properties,
            body,
        })
    }
}

/// Starts consuming `queue` with manual acknowledgement and at most `prefetch` unacknowledged
/// deliveries (the bound on what the client buffers).
pub async fn consume(
    channel: &Channel,
    queue: &str,
    prefetch: u16,
    arguments: FieldTable,
) -> Result<DeliveryStream, AmqpError> {
    channel
        .basic_qos(BasicQosArguments::new(0, prefetch, false))
        .await
        .map_err(|e| channel.error("set prefetch", &e))?;
    let mut args = BasicConsumeArguments::new(queue, "");
    args.manual_ack(true).arguments(arguments);
    let (consumer_tag, rx) = channel
        .basic_consume_rx(args.finish())
        .await
        .map_err(|e| channel.error(format!("consume queue {queue:?}"), &e))?;
    Ok(DeliveryStream { rx, consumer_tag })
}

/// Acknowledges one delivery.
pub async fn ack(channel: &Channel, delivery_tag: u64) -> Result<(), AmqpError> {
    channel.basic_ack(BasicAckArguments::new(delivery_tag, false)).await.map_err(|e| channel.error("ack", &e))
}

/// Acknowledges every delivery up to and including `delivery_tag` (one frame for a batch).
pub async fn ack_up_to(channel: &Channel, delivery_tag: u64) -> Result<(), AmqpError> {
    channel.basic_ack(BasicAckArguments::new(delivery_tag, true)).await.map_err(|e| channel.error("ack", &e))
}

/// Rejects one delivery, back to the queue (`requeue`) or to its dead-letter exchange.
pub async fn nack(channel: &Channel, delivery_tag: u64, requeue: bool) -> Result<(), AmqpError> {
    channel
        .basic_nack(BasicNackArguments::new(delivery_tag, false, requeue))
        .await
        .map_err(|e| channel.error("nack", &e))
}
