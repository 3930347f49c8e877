//! Thin helpers over the `amqprs` RabbitMQ client, shared by the producer and the consumers:
//! URL parsing, connecting (TLS included), channels that remember the broker's reply when it
//! closes them, declaring topology, consuming with manual acknowledgement, and publishing with
//! confirms: [`ConfirmingPublisher`] (a channel in confirm mode: publish, and the broker's
//! confirm events as they come; the producer tracks them against LSNs) and [`ConfirmedSender`]
//! (one message at a time, awaited, from many tasks).
//!
//! Every error has an [`ErrorKind`], decided where it is made. [`Brokers`] is the list of nodes
//! (one, or a cluster's): a connection goes to the first that answers. Reconnecting is the
//! caller's job (`pgevents_retry::Supervisor`): an error here means "this connection is done".

mod ack_window;
mod body;
mod brokers;
mod channel;
mod confirmed_sender;
mod confirming_publisher;
mod connection;
mod consume;
mod error;
mod flow_probe;
mod stream;
mod topology;
mod url;

pub use ack_window::{AckWindow, UnknownTag};
pub use amqprs::channel::{ExchangeDeleteArguments, QueueDeleteArguments};
pub use amqprs::connection::Connection;
pub use amqprs::{BasicProperties, FieldTable, FieldValue};
pub use body::{decode_body, BodyError};
pub use brokers::{describe_metrics, split_urls, Brokers, FAILOVERS};
pub use channel::{open_channel, Channel};
pub use confirmed_sender::ConfirmedSender;
pub use confirming_publisher::{ConfirmEvent, ConfirmingPublisher, OutgoingMessage, PublisherSettings, Unconfirmed};
pub use connection::{connect, connect_with_flow, ended, Flow};
pub use consume::{ack, ack_up_to, consume, nack, Delivery, DeliveryStream};
pub(crate) use error::check_short_string;
pub use error::{AmqpError, Cause, ServerReply};
pub use flow_probe::{FlowProbe, FLOW_PROBE_KEY};
pub use pgevents_retry::ErrorKind;
pub use stream::{ensure_stream, Retention};
pub use topology::{
    bind_queue, declare_queue, declare_topic_exchange, exchange_exists, queue_depth, QueueSpec, QueueType,
};
pub use url::{AmqpTls, AmqpUrl, AuthMechanism, Schemes, AMQP_SCHEMES};

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
