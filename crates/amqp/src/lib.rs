//! Thin helpers over the `amqprs` RabbitMQ client, shared by the producer and the consumers:
//! URL parsing, connecting (TLS included), declaring topology, publishing with confirms
//! ([`Publisher`]) and consuming with manual acknowledgement.
//!
//! Reconnection is the caller's job: every error here means "this connection is done".

mod body;
mod confirmed;
mod connect;
mod consume;
mod error;
mod publisher;
mod stream;
mod url;

pub use amqprs::channel::{Channel, ExchangeDeleteArguments, QueueDeleteArguments};
pub use amqprs::connection::Connection;
pub use amqprs::{BasicProperties, FieldTable, FieldValue};
pub use body::BodyError;
pub use confirmed::ConfirmedSender;
pub use connect::{bind_queue, connect, declare_queue, declare_topic_exchange, open_channel, queue_depth, QueueSpec};
pub use consume::{ack, ack_up_to, consume, nack, Delivery, DeliveryStream};
pub use error::{check_short_string, AmqpError};
pub use publisher::{ConfirmEvent, ConfirmingPublisher, OutgoingMessage, Publisher, PublisherSettings};
pub use stream::{ensure_stream, Retention};
pub use url::AmqpUrl;

/// A field table from string pairs (queue and consumer arguments).
pub fn field_table(pairs: &[(&str, FieldValue)]) -> FieldTable {
    let mut table = FieldTable::new();
    for (name, value) in pairs {
        if let Ok(key) = (*name).try_into() {
            table.insert(key, value.clone());
        }
    }
    table
}
