//! The AMQP transport: messages to the events exchange (or the one they name) on a channel in
//! confirm mode ([`pgevents_amqp::ConfirmingPublisher`]); the delivery tag is the number.

use std::time::Duration;

use pgevents_amqp::{
    AmqpError, Brokers, Cause, ConfirmEvent, ConfirmingPublisher, FlowProbe, OutgoingMessage, PublisherSettings,
};
use tokio::sync::watch;

use super::{Confirm, Flow, Message, PublishError, Transport};

pub struct ExchangeOutput {
    publisher: ConfirmingPublisher,
    flow: watch::Receiver<Flow>,
}

impl ExchangeOutput {
    /// Connects, enables confirms and declares the exchanges of `settings`.
    pub async fn connect(brokers: &Brokers, settings: &PublisherSettings) -> Result<ExchangeOutput, PublishError> {
        let publisher = ConfirmingPublisher::connect(brokers, settings).await?;
        let flow = forward_flow(publisher.flow());
        Ok(ExchangeOutput { publisher, flow })
    }

    /// Has the connection ask the broker once a second whether it blocks it, for a producer
    /// whose events go to the stream only (see [`FlowProbe`]).
    pub fn start_flow_probe(&self) -> FlowProbe {
        self.publisher.start_flow_probe(FLOW_PROBE_EVERY)
    }
}

/// How often a producer whose events go to the stream only asks RabbitMQ whether it blocks it.
const FLOW_PROBE_EVERY: Duration = Duration::from_secs(1);

/// The broker's flow control of the connection, as the producer's [`Flow`]; the forwarding ends
/// with the connection.
fn forward_flow(mut amqp: watch::Receiver<pgevents_amqp::Flow>) -> watch::Receiver<Flow> {
    let convert = |flow: &pgevents_amqp::Flow| match flow {
        pgevents_amqp::Flow::Running => Flow::Running,
        pgevents_amqp::Flow::Blocked(reason) => Flow::Blocked(reason.clone()),
    };
    let (tx, rx) = watch::channel(convert(&amqp.borrow_and_update()));
    tokio::spawn(async move {
        while amqp.changed().await.is_ok() {
            let flow = convert(&amqp.borrow_and_update());
            if tx.send(flow).is_err() {
                break;
            }
        }
    });
    rx
}

fn outgoing(message: Message) -> OutgoingMessage {
    OutgoingMessage {
        exchange: message.exchange,
        routing_key: message.routing_key,
        message_id: message.message_id,
        headers: message.headers,
        timestamp: message.timestamp,
        content_type: message.content_type,
        content_encoding: message.content_encoding,
        app_id: message.app_id,
        message_type: message.message_type,
        mandatory: message.mandatory,
        body: message.body,
    }
}

/// How long a publish that failed on a closed channel waits for the broker's reason.
const REASON_WAIT: Duration = Duration::from_millis(500);

impl ExchangeOutput {
    /// Why publishing failed: when the channel is closed, the broker's reply closing it (a
    /// refusal with a kind of its own, e.g. a message above `max_message_size`) may arrive just
    /// after the failed publish; without it the failure is a lost channel (transient).
    async fn why(&mut self, error: AmqpError) -> PublishError {
        if !error.kind().is_transient() {
            return error.into();
        }
        let waiting = async {
            loop {
                match self.publisher.next_event().await {
                    ConfirmEvent::Closed(cause @ Cause::Refused(_)) => return Some(cause),
                    ConfirmEvent::Closed(_) => return None,
                    _ => continue,
                }
            }
        };
        match tokio::time::timeout(REASON_WAIT, waiting).await {
            Ok(Some(cause)) => PublishError::Closed(cause),
            _ => error.into(),
        }
    }
}

impl Transport for ExchangeOutput {
    async fn publish(&mut self, message: Message) -> Result<u64, PublishError> {
        match self.publisher.publish(outgoing(message)).await {
            Ok(tag) => Ok(tag),
            Err(e) => Err(self.why(e).await),
        }
    }

    async fn next_confirm(&mut self) -> Result<Confirm, PublishError> {
        match self.publisher.next_event().await {
            ConfirmEvent::Ack { tag, multiple } => Ok(Confirm { seq: tag, multiple }),
            ConfirmEvent::Nack { .. } => Err(PublishError::Nacked),
            ConfirmEvent::Returned { routing_key, reply_code, reply_text, .. } => {
                Err(PublishError::Returned { routing_key, reply_code, reply_text })
            }
            ConfirmEvent::Closed(cause) => Err(PublishError::Closed(cause)),
        }
    }

    fn flow(&self) -> watch::Receiver<Flow> {
        self.flow.clone()
    }

    async fn close(self) {
        self.publisher.close().await;
    }
}
