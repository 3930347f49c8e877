//! Declaring exchanges, queues and bindings, and looking a queue up.

use amqprs::channel::{ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments};
use amqprs::FieldTable;

use crate::error::{Cause, ServerReply};
use crate::{check_short_string, AmqpError, Channel};

/// Declares a durable topic exchange (a no-op when it exists with the same settings).
pub async fn declare_topic_exchange(channel: &Channel, exchange: &str) -> Result<(), AmqpError> {
    check_short_string("exchange name", exchange)?;
    if exchange.is_empty() {
        return Err(AmqpError::InvalidName { what: "exchange name", name: String::new(), reason: "must not be empty" });
    }
    channel.exchange_declare(ExchangeDeclareArguments::new(exchange, "topic").durable(true).finish()).await.map_err(
        |e| {
            let operation = format!("declare exchange {exchange:?}");
            match channel.cause(&e) {
                Cause::Refused(reply) if reply.code == ServerReply::PRECONDITION_FAILED => AmqpError::op(
                    format!(
                        "{operation} (it exists with another type or durability: delete it or choose another name)"
                    ),
                    Cause::Refused(reply),
                ),
                cause => AmqpError::op(operation, cause),
            }
        },
    )
}

/// Whether the exchange exists (of any type). The look-up is a passive declare on a channel of
/// its own, since the broker closes the channel it refuses one on.
pub async fn exchange_exists(connection: &amqprs::connection::Connection, exchange: &str) -> Result<bool, AmqpError> {
    check_short_string("exchange name", exchange)?;
    let probe = crate::open_channel(connection).await?;
    let mut args = ExchangeDeclareArguments::new(exchange, "topic");
    args.passive = true;
    match probe.exchange_declare(args).await {
        Ok(()) => {
            let _ = probe.close().await;
            Ok(true)
        }
        Err(e) => match probe.cause(&e) {
            Cause::Refused(reply) if reply.code == ServerReply::NOT_FOUND => Ok(false),
            cause => Err(AmqpError::op(format!("look up exchange {exchange:?}"), cause)),
        },
    }
}

/// The kind of a durable queue the project declares (`--queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// One node holds the queue (RabbitMQ's default): for a single broker.
    #[default]
    Classic,
    /// Replicated over a cluster by Raft (`x-queue-type: quorum`): survives the loss of a
    /// minority of nodes, and counts deliveries (`x-delivery-count`). For clusters.
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// How a queue is declared.
#[derive(Debug, Clone, Default)]
pub struct QueueSpec {
    /// Empty for a server-named queue.
    pub name: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    /// `Quorum` adds `x-queue-type: quorum` (the queue must be durable, shared and kept);
    /// `Classic` adds nothing, so queues declared before this option still match.
    pub queue_type: QueueType,
    pub arguments: FieldTable,
}

/// Declares a queue and returns its name (the server's choice for an empty name).
pub async fn declare_queue(channel: &Channel, spec: &QueueSpec) -> Result<String, AmqpError> {
    check_short_string("queue name", &spec.name)?;
    let mut arguments = spec.arguments.clone();
    if spec.queue_type == QueueType::Quorum {
        if !spec.durable || spec.exclusive || spec.auto_delete || spec.name.is_empty() {
            return Err(AmqpError::InvalidName {
                what: "queue",
                name: spec.name.clone(),
                reason: "a quorum queue must be named, durable, not exclusive and not auto-delete",
            });
        }
        if let Ok(key) = "x-queue-type".try_into() {
            arguments.insert(key, amqprs::FieldValue::from("quorum"));
        }
    }
    let mut args = QueueDeclareArguments::new(&spec.name);
    args.durable(spec.durable).exclusive(spec.exclusive).auto_delete(spec.auto_delete).arguments(arguments);
    let declared = channel.queue_declare(args.finish()).await.map_err(|e| {
        let operation = format!("declare queue {:?}", spec.name);
        match channel.cause(&e) {
            Cause::Refused(reply) if reply.code == ServerReply::PRECONDITION_FAILED => AmqpError::op(
                format!(
                    "{operation} as a {} queue (it exists with other arguments, e.g. another queue type: a queue's type cannot change; drain and delete it, or choose another name)",
                    spec.queue_type.as_str()
                ),
                Cause::Refused(reply),
            ),
            cause => AmqpError::op(operation, cause),
        }
    })?;
    Ok(declared.map(|(name, _, _)| name).unwrap_or_else(|| spec.name.clone()))
}

/// How many messages are ready in an existing queue (a passive declare).
pub async fn queue_depth(channel: &Channel, queue: &str) -> Result<u32, AmqpError> {
    let mut args = QueueDeclareArguments::new(queue);
    args.passive(true);
    let declared = channel
        .queue_declare(args.finish())
        .await
        .map_err(|e| channel.error(format!("look up queue {queue:?} (does it exist?)"), &e))?;
    Ok(declared.map(|(_, ready, _)| ready).unwrap_or(0))
}

/// Binds `queue` to `exchange` with each binding key.
pub async fn bind_queue(channel: &Channel, queue: &str, exchange: &str, keys: &[String]) -> Result<(), AmqpError> {
    for key in keys {
        check_short_string("binding key", key)?;
        channel
            .queue_bind(QueueBindArguments::new(queue, exchange, key))
            .await
            .map_err(|e| channel.error(format!("bind queue {queue:?} to {exchange:?} with {key:?}"), &e))?;
    }
    Ok(())
}
