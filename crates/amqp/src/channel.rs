//! Channels that remember why the broker closed them: a failed operation then reports the
//! broker's reply code (and so its [`ErrorKind`](pgevents_retry::ErrorKind)) instead of only
//! "channel closed". A publisher's channel also forwards confirms, returns and its closing.

use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use amqprs::callbacks::ChannelCallback;
use amqprs::connection::Connection;
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::confirming_publisher::ConfirmEvent;
use crate::error::{Cause, ServerReply};
use crate::AmqpError;

/// An AMQP channel (derefs to amqprs' channel for everything else).
#[derive(Clone)]
pub struct Channel {
    inner: amqprs::channel::Channel,
    closed_by_broker: Arc<Mutex<Option<ServerReply>>>,
}

impl Deref for Channel {
    type Target = amqprs::channel::Channel;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl Channel {
    /// Why an operation on the channel failed: the broker's reply if it closed the channel,
    /// otherwise the client library's words.
    pub(crate) fn cause(&self, error: &amqprs::error::Error) -> Cause {
        match self.closed_by_broker.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            Some(reply) => Cause::Refused(reply),
            None => Cause::Lost(error.to_string()),
        }
    }

    /// The broker's reply, if it closed the channel.
    pub fn closed_by_broker(&self) -> Option<ServerReply> {
        self.closed_by_broker.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The error of a failed `operation`.
    pub(crate) fn error(&self, operation: impl Into<String>, error: &amqprs::error::Error) -> AmqpError {
        AmqpError::op(operation, self.cause(error))
    }

    /// Closes the channel.
    pub async fn close(self) -> Result<(), AmqpError> {
        let closing = self.inner.clone();
        closing.close().await.map_err(|e| self.error("close channel", &e))
    }
}

/// Opens a channel.
pub async fn open_channel(connection: &Connection) -> Result<Channel, AmqpError> {
    open(connection, None).await
}

/// Opens a channel whose confirms, returns and closing go to `events`.
pub(crate) async fn open_publishing(
    connection: &Connection,
    events: mpsc::UnboundedSender<ConfirmEvent>,
) -> Result<Channel, AmqpError> {
    open(connection, Some(events)).await
}

async fn open(
    connection: &Connection,
    events: Option<mpsc::UnboundedSender<ConfirmEvent>>,
) -> Result<Channel, AmqpError> {
    let inner =
        connection.open_channel(None).await.map_err(|e| AmqpError::op("open channel", Cause::Lost(e.to_string())))?;
    let closed_by_broker = Arc::new(Mutex::new(None));
    inner
        .register_callback(Events { closed_by_broker: closed_by_broker.clone(), events })
        .await
        .map_err(|e| AmqpError::op("register channel callback", Cause::Lost(e.to_string())))?;
    Ok(Channel { inner, closed_by_broker })
}

/// The channel's callback.
struct Events {
    closed_by_broker: Arc<Mutex<Option<ServerReply>>>,
    events: Option<mpsc::UnboundedSender<ConfirmEvent>>,
}

impl Events {
    fn send(&self, event: ConfirmEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }
}

type CallbackResult<T> = Result<T, amqprs::error::Error>;

#[async_trait]
impl ChannelCallback for Events {
    async fn close(&mut self, _channel: &amqprs::channel::Channel, close: CloseChannel) -> CallbackResult<()> {
        let reply = ServerReply { code: close.reply_code(), text: close.reply_text().to_owned() };
        tracing::debug!(%reply, "RabbitMQ closed a channel");
        *self.closed_by_broker.lock().unwrap_or_else(PoisonError::into_inner) = Some(reply.clone());
        self.send(ConfirmEvent::Closed(Cause::Refused(reply)));
        Ok(())
    }
    async fn cancel(&mut self, _channel: &amqprs::channel::Channel, cancel: Cancel) -> CallbackResult<()> {
        tracing::warn!(consumer_tag = %cancel.consumer_tag(), "RabbitMQ cancelled a consumer");
        Ok(())
    }
    async fn flow(&mut self, _channel: &amqprs::channel::Channel, active: bool) -> CallbackResult<bool> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _channel: &amqprs::channel::Channel, ack: Ack) {
        self.send(ConfirmEvent::Ack { tag: ack.delivery_tag(), multiple: ack.mutiple() });
    }
    async fn publish_nack(&mut self, _channel: &amqprs::channel::Channel, nack: Nack) {
        self.send(ConfirmEvent::Nack { tag: nack.delivery_tag(), multiple: nack.multiple() });
    }
    async fn publish_return(
        &mut self,
        _channel: &amqprs::channel::Channel,
        ret: Return,
        properties: BasicProperties,
        _content: Vec<u8>,
    ) {
        self.send(ConfirmEvent::Returned {
            routing_key: ret.routing_key().to_owned(),
            reply_code: ret.reply_code(),
            reply_text: ret.reply_text().to_owned(),
            message_id: properties.message_id().cloned(),
        });
    }
}
