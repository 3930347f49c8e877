//! Publishing with publisher confirms.
//!
//! [`Publisher`] is the small interface the producer pipelines against: `publish` sends one
//! message and returns its sequence number (delivery tag); `next_event` yields what the broker
//! said about earlier messages, in arrival order. Acknowledgements may cover several messages
//! (`multiple`) and may come out of order; the caller tracks them by tag.

use std::future::Future;

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{BasicPublishArguments, Channel, ConfirmSelectArguments};
use amqprs::connection::Connection;
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, FieldTable, FieldValue, Nack, Return};
use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::connect::{connect, describe};
use crate::{check_short_string, declare_topic_exchange, AmqpError, AmqpUrl};

/// One message to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// `None` for the publisher's exchange.
    pub exchange: Option<std::sync::Arc<str>>,
    pub routing_key: String,
    pub message_id: String,
    /// String headers (`action`, `table`, `lsn`).
    pub headers: Vec<(&'static str, String)>,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
    pub content_type: &'static str,
    /// `gzip` when the body is compressed.
    pub content_encoding: Option<&'static str>,
    pub app_id: &'static str,
    pub body: Vec<u8>,
}

/// What the broker said about published messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmEvent {
    /// The message with this tag (and every earlier one when `multiple`) is safely stored.
    Ack { tag: u64, multiple: bool },
    /// The broker could not take the message(s).
    Nack { tag: u64, multiple: bool },
    /// A mandatory message could not be routed to any queue.
    Returned { routing_key: String, reply_code: u16, reply_text: String, message_id: Option<String> },
    /// The channel or connection closed; no further confirms will come.
    Closed(String),
}

/// Publishes messages with confirms.
pub trait Publisher: Send {
    /// Publishes one message; returns its sequence number (1, 2, ... per channel).
    fn publish(&mut self, message: OutgoingMessage) -> impl Future<Output = Result<u64, AmqpError>> + Send;
    /// The next confirm event. Cancel-safe.
    fn next_event(&mut self) -> impl Future<Output = ConfirmEvent> + Send;
}

/// Forwards the channel's confirm callbacks into a queue. The queue is unbounded, but holds at
/// most one entry per message in flight, which the caller bounds.
struct ConfirmForwarder(mpsc::UnboundedSender<ConfirmEvent>);

type CallbackResult<T> = Result<T, amqprs::error::Error>;

#[async_trait]
impl ChannelCallback for ConfirmForwarder {
    async fn close(&mut self, _channel: &Channel, close: CloseChannel) -> CallbackResult<()> {
        let _ = self.0.send(ConfirmEvent::Closed(format!("channel closed by the broker: {close}")));
        Ok(())
    }
    async fn cancel(&mut self, _channel: &Channel, _cancel: Cancel) -> CallbackResult<()> {
        Ok(())
    }
    async fn flow(&mut self, _channel: &Channel, active: bool) -> CallbackResult<bool> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _channel: &Channel, ack: Ack) {
        let _ = self.0.send(ConfirmEvent::Ack { tag: ack.delivery_tag(), multiple: ack.mutiple() });
    }
    async fn publish_nack(&mut self, _channel: &Channel, nack: Nack) {
        let _ = self.0.send(ConfirmEvent::Nack { tag: nack.delivery_tag(), multiple: nack.multiple() });
    }
    async fn publish_return(
        &mut self,
        _channel: &Channel,
        ret: Return,
        properties: BasicProperties,
        _content: Vec<u8>,
    ) {
        let _ = self.0.send(ConfirmEvent::Returned {
            routing_key: ret.routing_key().to_owned(),
            reply_code: ret.reply_code(),
            reply_text: ret.reply_text().to_owned(),
            message_id: properties.message_id().cloned(),
        });
    }
}

/// Settings of a [`ConfirmingPublisher`].
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    pub exchange: String,
    /// Ask the broker to return messages no queue is bound for (instead of dropping them).
    pub mandatory: bool,
    /// Declare the exchange (durable topic) if missing.
    pub declare_exchange: bool,
    /// Further exchanges that messages may name, declared (when `declare_exchange`) at connect.
    pub other_exchanges: Vec<String>,
    pub connection_name: String,
}

/// A publisher on its own connection and channel in confirm mode.
pub struct ConfirmingPublisher {
    connection: Connection,
    channel: Channel,
    events: mpsc::UnboundedReceiver<ConfirmEvent>,
    next_tag: u64,
    exchange: String,
    mandatory: bool,
}

impl ConfirmingPublisher {
    /// Connects, enables confirms and declares the exchange.
    pub async fn connect(url: &AmqpUrl, settings: &PublisherSettings) -> Result<ConfirmingPublisher, AmqpError> {
        check_short_string("exchange name", &settings.exchange)?;
        let connection = connect(url, &settings.connection_name).await?;
        let channel = connection.open_channel(None).await.map_err(|e| AmqpError::op("open channel", describe(&e)))?;
        let (tx, events) = mpsc::unbounded_channel();
        channel
            .register_callback(ConfirmForwarder(tx.clone()))
            .await
            .map_err(|e| AmqpError::op("register channel callback", describe(&e)))?;
        for exchange in &settings.other_exchanges {
            check_short_string("exchange name", exchange)?;
        }
        if settings.declare_exchange {
            declare_topic_exchange(&channel, &settings.exchange).await?;
            for exchange in &settings.other_exchanges {
                declare_topic_exchange(&channel, exchange).await?;
            }
        }
        channel
            .confirm_select(ConfirmSelectArguments::default())
            .await
            .map_err(|e| AmqpError::op("enable publisher confirms", describe(&e)))?;
        // Report the end of the connection (network failure, broker shutdown) as an event.
        let watcher = connection.clone();
        tokio::spawn(async move {
            let network_failure = watcher.listen_network_io_failure().await;
            let why = if network_failure { "network failure" } else { "connection closed" };
            let _ = tx.send(ConfirmEvent::Closed(format!("RabbitMQ connection ended ({why})")));
        });
        Ok(ConfirmingPublisher {
            connection,
            channel,
            events,
            next_tag: 1,
            exchange: settings.exchange.clone(),
            mandatory: settings.mandatory,
        })
    }

    /// The delivery tag the next published message will get.
    pub fn next_tag(&self) -> u64 {
        self.next_tag
    }

    /// Closes the channel and the connection.
    pub async fn close(self) {
        let _ = self.channel.close().await;
        let _ = self.connection.close().await;
    }
}

fn properties(message: &OutgoingMessage) -> BasicProperties {
    let mut headers = FieldTable::new();
    for (name, value) in &message.headers {
        if let Ok(key) = (*name).try_into() {
            headers.insert(key, FieldValue::from(value.as_str()));
        }
    }
    let mut props = BasicProperties::default();
    props
        .with_content_type(message.content_type)
        .with_persistence(true)
        .with_message_id(&message.message_id)
        .with_timestamp(message.timestamp)
        .with_app_id(message.app_id)
        .with_headers(headers);
    if let Some(encoding) = message.content_encoding {
        props.with_content_encoding(encoding);
    }
    props
}

impl Publisher for ConfirmingPublisher {
    async fn publish(&mut self, message: OutgoingMessage) -> Result<u64, AmqpError> {
        check_short_string("routing key", &message.routing_key)?;
        let exchange = message.exchange.as_deref().unwrap_or(&self.exchange);
        let mut args = BasicPublishArguments::new(exchange, &message.routing_key);
        args.mandatory(self.mandatory);
        self.channel
            .basic_publish(properties(&message), message.body, args)
            .await
            .map_err(|e| AmqpError::Closed(describe(&e)))?;
        let tag = self.next_tag;
        self.next_tag += 1;
        Ok(tag)
    }

    async fn next_event(&mut self) -> ConfirmEvent {
        self.events.recv().await.unwrap_or_else(|| ConfirmEvent::Closed("confirm stream ended".into()))
    }
}
