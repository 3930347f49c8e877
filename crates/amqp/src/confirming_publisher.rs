//! Publishing with publisher confirms.
//!
//! [`ConfirmingPublisher`]: `publish` sends one message and returns its sequence number
//! (delivery tag); `next_event` yields what the broker said about earlier messages, in arrival
//! order. Acknowledgements may cover several messages
//! (`multiple`) and may come out of order; the caller tracks them by tag.

use std::borrow::Cow;
use std::time::Duration;

use amqprs::channel::{BasicPublishArguments, ConfirmSelectArguments};
use amqprs::connection::Connection;
use amqprs::{BasicProperties, FieldTable, FieldValue};
use tokio::sync::{mpsc, watch};

use crate::channel::open_publishing;
use crate::error::Cause;
use crate::{check_short_string, connect_with_flow, declare_topic_exchange, AmqpError, Brokers, Channel, Flow};
use crate::{AckWindow, FlowProbe, UnknownTag};

/// One message to publish. An empty string property (or a zero timestamp) is left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// `None` for the publisher's exchange.
    pub exchange: Option<std::sync::Arc<str>>,
    pub routing_key: String,
    pub message_id: String,
    /// String headers (`action`, `table`, `lsn`).
    pub headers: Vec<(Cow<'static, str>, String)>,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
    pub content_type: Cow<'static, str>,
    /// `gzip` when the body is compressed.
    pub content_encoding: Option<Cow<'static, str>>,
    pub app_id: Cow<'static, str>,
    /// The `type` property (outbox messages: their routing key); `None` for events.
    pub message_type: Option<String>,
    /// Whether the broker returns it when no queue takes it; `None`: the publisher's setting.
    pub mandatory: Option<bool>,
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
    /// The channel or connection closed (the broker's reply when it closed the channel); no
    /// further confirms will come.
    Closed(Cause),
}

/// A published message the broker did not confirm: the publisher's channel is done, and what
/// was not confirmed must be published again on a new one.
#[derive(Debug, thiserror::Error)]
pub enum Unconfirmed {
    #[error("RabbitMQ refused (nacked) a message")]
    Nacked,
    /// A mandatory message could not be routed to any queue.
    #[error("RabbitMQ returned a message for routing key {routing_key:?} ({reply_code} {reply_text}): no queue is bound for it")]
    Returned { routing_key: String, reply_code: u16, reply_text: String },
    #[error("the RabbitMQ channel closed: {0}")]
    Closed(Cause),
    #[error("RabbitMQ has not confirmed {in_flight} published messages for {seconds}s")]
    Timeout { in_flight: u64, seconds: u64 },
    #[error(transparent)]
    UnknownTag(#[from] UnknownTag),
    #[error(transparent)]
    Publish(#[from] AmqpError),
}

impl ConfirmEvent {
    /// The acknowledgement this event is (`tag` and `multiple`), or what went wrong instead.
    pub fn into_ack(self) -> Result<(u64, bool), Unconfirmed> {
        match self {
            ConfirmEvent::Ack { tag, multiple } => Ok((tag, multiple)),
            ConfirmEvent::Nack { .. } => Err(Unconfirmed::Nacked),
            ConfirmEvent::Returned { routing_key, reply_code, reply_text, .. } => {
                Err(Unconfirmed::Returned { routing_key, reply_code, reply_text })
            }
            ConfirmEvent::Closed(cause) => Err(Unconfirmed::Closed(cause)),
        }
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
    flow: watch::Receiver<Flow>,
    next_tag: u64,
    exchange: String,
    mandatory: bool,
}

impl ConfirmingPublisher {
    /// Connects, enables confirms and declares the exchange.
    pub async fn connect(url: &Brokers, settings: &PublisherSettings) -> Result<ConfirmingPublisher, AmqpError> {
        check_short_string("exchange name", &settings.exchange)?;
        let (connection, flow) = connect_with_flow(url, &settings.connection_name).await?;
        let (tx, events) = mpsc::unbounded_channel();
        let channel = open_publishing(&connection, tx.clone()).await?;
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
            .map_err(|e| channel.error("enable publisher confirms", &e))?;
        // Report the end of the connection (network failure, broker shutdown) as an event.
        let watcher = connection.clone();
        tokio::spawn(async move {
            let why = crate::connection::ended(&watcher).await;
            let _ = tx.send(ConfirmEvent::Closed(Cause::Lost(why)));
        });
        Ok(ConfirmingPublisher {
            connection,
            channel,
            events,
            flow,
            next_tag: 1,
            exchange: settings.exchange.clone(),
            mandatory: settings.mandatory,
        })
    }

    /// The delivery tag the next published message will get.
    pub fn next_tag(&self) -> u64 {
        self.next_tag
    }

    /// Publishes `messages` with all of them in flight and waits until the broker confirmed
    /// every one (at most `timeout` without progress).
    pub async fn publish_all(&mut self, messages: Vec<OutgoingMessage>, timeout: Duration) -> Result<(), Unconfirmed> {
        let mut window = AckWindow::after(self.next_tag - 1);
        for message in messages {
            // While the broker blocks the connection, publishing would stall: wait for it.
            let _ = self.flow.clone().wait_for(|flow| *flow == Flow::Running).await;
            window.published(self.publish(message).await?);
        }
        while window.in_flight() > 0 {
            let in_flight = window.in_flight();
            let event = match tokio::time::timeout(timeout, self.next_event()).await {
                Ok(event) => event,
                // Blocked by a resource alarm: no confirms is expected, not a broken connection.
                Err(_) if *self.flow.borrow() != Flow::Running => continue,
                Err(_) => return Err(Unconfirmed::Timeout { in_flight, seconds: timeout.as_secs() }),
            };
            let (tag, multiple) = event.into_ack()?;
            window.ack(tag, multiple)?;
        }
        Ok(())
    }

    /// Closes the channel and the connection.
    pub async fn close(self) {
        let _ = self.channel.close().await;
        let _ = self.connection.close().await;
    }
}

/// A publish that failed because the channel is gone (the broker's reply, if it closed it).
fn channel_closed(channel: &Channel, error: &amqprs::error::Error) -> AmqpError {
    channel.error("publish", error)
}

fn properties(message: &OutgoingMessage) -> BasicProperties {
    let mut headers = FieldTable::new();
    for (name, value) in &message.headers {
        if let Ok(key) = name.as_ref().try_into() {
            headers.insert(key, FieldValue::from(value.as_str()));
        }
    }
    // An empty value (or a zero timestamp) is a property left out.
    let mut props = BasicProperties::default();
    props.with_persistence(true);
    if !message.headers.is_empty() {
        props.with_headers(headers);
    }
    if !message.content_type.is_empty() {
        props.with_content_type(&message.content_type);
    }
    if !message.message_id.is_empty() {
        props.with_message_id(&message.message_id);
    }
    if message.timestamp != 0 {
        props.with_timestamp(message.timestamp);
    }
    if !message.app_id.is_empty() {
        props.with_app_id(&message.app_id);
    }
    if let Some(encoding) = &message.content_encoding {
        props.with_content_encoding(encoding);
    }
    if let Some(message_type) = &message.message_type {
        props.with_message_type(message_type);
    }
    props
}

impl ConfirmingPublisher {
    /// Publishes one message; returns its sequence number (1, 2, ... per channel).
    pub async fn publish(&mut self, message: OutgoingMessage) -> Result<u64, AmqpError> {
        check_short_string("routing key", &message.routing_key)?;
        let exchange = message.exchange.as_deref().unwrap_or(&self.exchange);
        let mut args = BasicPublishArguments::new(exchange, &message.routing_key);
        args.mandatory(message.mandatory.unwrap_or(self.mandatory));
        self.channel
            .basic_publish(properties(&message), message.body, args)
            .await
            .map_err(|e| channel_closed(&self.channel, &e))?;
        let tag = self.next_tag;
        self.next_tag += 1;
        Ok(tag)
    }

    /// The next confirm event. Cancel-safe.
    pub async fn next_event(&mut self) -> ConfirmEvent {
        self.events.recv().await.unwrap_or_else(|| ConfirmEvent::Closed(Cause::Lost("confirm stream ended".into())))
    }

    /// Whether the broker lets this publisher publish (see [`Flow`]).
    pub fn flow(&self) -> watch::Receiver<Flow> {
        self.flow.clone()
    }

    /// Keeps the connection publishing an empty message every `every`, so that RabbitMQ tells
    /// [`ConfirmingPublisher::flow`] of resource alarms even when this publisher has nothing to
    /// publish (see [`FlowProbe`]).
    pub fn start_flow_probe(&self, every: Duration) -> FlowProbe {
        FlowProbe::start(self.connection.clone(), self.flow.clone(), every)
    }
}
