//! Asking RabbitMQ, now and then, whether it blocks a connection: RabbitMQ tells a connection of
//! a resource alarm (`connection.blocked`, then [`Flow`]) only once it publishes. A publisher
//! whose messages travel another way (the stream protocol, which has no such notice, and whose
//! writers RabbitMQ 3.10 does not even stop) keeps its AMQP connection publishing: an empty,
//! transient message that no queue takes (the default exchange, routing key
//! [`FLOW_PROBE_KEY`]), on a channel of its own without confirms.
//!
//! It runs in a task of its own, so that nobody waits on a connection the broker may have
//! stopped reading; it stops asking while the connection is blocked (RabbitMQ says itself when
//! it unblocks), and for good when the broker refuses the publish (no write permission on the
//! default exchange), with one warning.

use std::time::Duration;

use amqprs::channel::BasicPublishArguments;
use amqprs::connection::Connection;
use amqprs::BasicProperties;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::ServerReply;
use crate::{open_channel, Channel, Flow};

/// The routing key of the probe's message: no queue has this name, so the default exchange
/// drops it.
pub const FLOW_PROBE_KEY: &str = "pgevents.flow-probe";

/// The probing task; it ends when dropped.
pub struct FlowProbe(JoinHandle<()>);

impl FlowProbe {
    /// Publishes the probe on `connection` every `every` while `flow` says it runs.
    pub fn start(connection: Connection, flow: watch::Receiver<Flow>, every: Duration) -> FlowProbe {
        FlowProbe(tokio::spawn(run(connection, flow, every)))
    }
}

impl Drop for FlowProbe {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one probe gave.
enum Probed {
    Sent,
    /// Not this time (the connection is busy or gone): the next one tries again.
    NotNow,
    /// The broker refused it: asking again would only close channels.
    Refused(ServerReply),
}

async fn run(connection: Connection, flow: watch::Receiver<Flow>, every: Duration) {
    let mut channel: Option<Channel> = None;
    loop {
        tokio::time::sleep(every).await;
        if *flow.borrow() != Flow::Running {
            continue;
        }
        match probe(&connection, &mut channel, every).await {
            Probed::Sent | Probed::NotNow => {}
            Probed::Refused(reply) => {
                tracing::warn!(%reply, "RabbitMQ refuses the producer's empty messages to the default exchange, which tell it of resource alarms with --publish-to stream: give its user write permission on amq.default, or it keeps writing the stream during an alarm");
                return;
            }
        }
    }
}

async fn probe(connection: &Connection, channel: &mut Option<Channel>, every: Duration) -> Probed {
    // A publish on a channel the broker closed would make it close the connection.
    if let Some(open) = channel.as_ref() {
        match open.closed_by_broker() {
            Some(reply) if reply.code == ServerReply::ACCESS_REFUSED => return Probed::Refused(reply),
            Some(_) => *channel = None,
            None if !open.is_open() => *channel = None,
            None => {}
        }
    }
    if channel.is_none() {
        match tokio::time::timeout(every, open_channel(connection)).await {
            Ok(Ok(opened)) => *channel = Some(opened),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot open the flow probe's channel");
                return Probed::NotNow;
            }
            Err(_) => return Probed::NotNow,
        }
    }
    let Some(open) = channel.as_ref() else { return Probed::NotNow };
    let args = BasicPublishArguments::new("", FLOW_PROBE_KEY);
    match tokio::time::timeout(every, open.basic_publish(BasicProperties::default(), Vec::new(), args)).await {
        Ok(Ok(())) => Probed::Sent,
        Ok(Err(_)) | Err(_) => {
            *channel = None;
            Probed::NotNow
        }
    }
}
