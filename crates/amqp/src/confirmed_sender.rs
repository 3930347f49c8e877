//! Publishing one message at a time and waiting for the broker to confirm it, from many tasks.
//!
//! [`ConfirmedSender`] owns a [`ConfirmingPublisher`] in a background task; `send` returns once
//! RabbitMQ has confirmed the message (or says why not). Messages are mandatory: one no queue
//! is bound for is an error, never a silent drop. After a connection failure every message in
//! flight fails (the caller retries) and the next `send` reconnects.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Cause, ServerReply};
use crate::{AmqpError, Brokers, ConfirmEvent, ConfirmingPublisher, OutgoingMessage, PublisherSettings};

type Reply = oneshot::Sender<Result<(), AmqpError>>;

/// A handle to the publishing task; cheap to clone.
#[derive(Clone)]
pub struct ConfirmedSender {
    requests: mpsc::Sender<(OutgoingMessage, Reply)>,
}

impl ConfirmedSender {
    /// Starts the publishing task; it connects on the first message. At most `in_flight`
    /// messages wait for confirms at once.
    pub fn start(url: Brokers, mut settings: PublisherSettings, in_flight: usize) -> ConfirmedSender {
        settings.mandatory = true;
        let (requests, rx) = mpsc::channel(in_flight.max(1));
        tokio::spawn(run(url, Arc::new(settings), rx, in_flight.max(1)));
        ConfirmedSender { requests }
    }

    /// [`ConfirmedSender::start`] for one durable topic exchange (declared if missing).
    pub fn to_exchange(url: Brokers, exchange: &str, connection_name: &str, in_flight: usize) -> ConfirmedSender {
        let settings = PublisherSettings {
            exchange: exchange.to_owned(),
            mandatory: true,
            declare_exchange: true,
            other_exchanges: Vec::new(),
            connection_name: connection_name.to_owned(),
        };
        Self::start(url, settings, in_flight)
    }

    /// Publishes `message` and waits until RabbitMQ has it safely.
    pub async fn send(&self, message: OutgoingMessage) -> Result<(), AmqpError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((message, reply))
            .await
            .map_err(|_| AmqpError::Closed("the publishing task has stopped".into()))?;
        answer.await.unwrap_or_else(|_| Err(AmqpError::Closed("the publishing task has stopped".into())))
    }
}

struct InFlight {
    message_id: String,
    reply: Reply,
}

async fn run(
    url: Brokers,
    settings: Arc<PublisherSettings>,
    mut requests: mpsc::Receiver<(OutgoingMessage, Reply)>,
    limit: usize,
) {
    let mut publisher: Option<ConfirmingPublisher> = None;
    let mut pending: HashMap<u64, InFlight> = HashMap::new();
    let mut returned: HashMap<String, ServerReply> = HashMap::new();
    loop {
        tokio::select! {
            request = requests.recv(), if pending.len() < limit => {
                let Some((message, reply)) = request else { break };
                if publisher.is_none() {
                    match ConfirmingPublisher::connect(&url, &settings).await {
                        Ok(connected) => publisher = Some(connected),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            continue;
                        }
                    }
                }
                let Some(connected) = publisher.as_mut() else { continue };
                let message_id = message.message_id.clone();
                match connected.publish(message).await {
                    Ok(tag) => {
                        pending.insert(tag, InFlight { message_id, reply });
                    }
                    Err(e) => {
                        let cause = match &e {
                            AmqpError::Operation { cause, .. } => cause.clone(),
                            other => Cause::Lost(other.to_string()),
                        };
                        let _ = reply.send(Err(e));
                        fail_all(&mut pending, &cause);
                        publisher = None;
                    }
                }
            }
            event = next_event(&mut publisher), if publisher.is_some() => match event {
                ConfirmEvent::Ack { tag, multiple } | ConfirmEvent::Nack { tag, multiple } => {
                    let acked = matches!(event, ConfirmEvent::Ack { .. });
                    let tags: Vec<u64> = if multiple {
                        pending.keys().copied().filter(|t| *t <= tag).collect()
                    } else {
                        vec![tag]
                    };
                    for t in tags {
                        let Some(done) = pending.remove(&t) else { continue };
                        let result = match returned.remove(&done.message_id) {
                            Some(reply) => Err(AmqpError::op("publish (no queue is bound for the message)", Cause::Refused(reply))),
                            None if acked => Ok(()),
                            None => Err(AmqpError::op("publish", Cause::Nacked)),
                        };
                        let _ = done.reply.send(result);
                    }
                }
                ConfirmEvent::Returned { reply_code, reply_text, message_id, .. } => {
                    if let Some(id) = message_id {
                        returned.insert(id, ServerReply { code: reply_code, text: reply_text });
                    }
                }
                ConfirmEvent::Closed(cause) => {
                    tracing::warn!(reason = %cause, "publishing connection lost; reconnecting on the next message");
                    fail_all(&mut pending, &cause);
                    returned.clear();
                    if let Some(old) = publisher.take() {
                        old.close().await;
                    }
                }
            },
        }
    }
    if let Some(publisher) = publisher {
        publisher.close().await;
    }
}

async fn next_event(publisher: &mut Option<ConfirmingPublisher>) -> ConfirmEvent {
    match publisher {
        Some(publisher) => publisher.next_event().await,
        None => std::future::pending().await,
    }
}

fn fail_all(pending: &mut HashMap<u64, InFlight>, cause: &Cause) {
    for (_, in_flight) in pending.drain() {
        let _ = in_flight.reply.send(Err(AmqpError::op("publish", cause.clone())));
    }
}
