//! The transports the producer publishes through, made by one factory ([`Outputs::connect`])
//! from the settings: the AMQP exchange alone, the stream alone, or both (`--publish-to`).
//!
//! With a stream, a message may go to one transport or to two: row events to every configured
//! output, outbox messages to their exchange only. [`Split`] numbers messages itself and confirms
//! one when every transport it went to has confirmed it, so the LSN moves only once both hold it.

use pgevents_amqp::FlowProbe;
use pgevents_event::Lsn;
use std::collections::VecDeque;
use tokio::sync::watch;

use super::exchange::ExchangeOutput;
use super::numbers::Numbers;
use super::stream::StreamOutput;
use super::{Confirm, Flow, Kind, Message, PublishError, Transport};
use crate::config::{ProducerConfig, PublishTo};

/// What the outputs publish for: the session's streamed changes, resuming from the slot's
/// position `start`, deduplicated in the stream under the publisher's `name` (see
/// [`super::stream::producer_name`]), the database's WAL ending at `wal_end`; or the snapshot's
/// rows (which have no place in the WAL to deduplicate by).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Changes { start: Lsn, wal_end: Lsn, name: String },
    Snapshot,
}

impl Role {
    /// What the role's connections are called (in the management UI, with the slot).
    pub(super) fn connection(&self) -> &'static str {
        match self {
            Role::Changes { .. } => "producer",
            Role::Snapshot => "producer snapshot",
        }
    }
}

/// The producer's transports.
pub enum Outputs {
    /// The AMQP exchange only: its numbers are the outputs' numbers.
    Exchange(ExchangeOutput),
    /// The stream, with the exchange for the events too or for outbox messages only.
    Split(Box<Split>),
}

impl Outputs {
    /// Connects what `--publish-to` asks for.
    pub async fn connect(config: &ProducerConfig, role: Role) -> Result<Outputs, PublishError> {
        let exchange = ExchangeOutput::connect(&config.amqp_url, &config.publisher_settings(role.connection())).await?;
        let Some(stream) = &config.stream else {
            return Ok(Outputs::Exchange(exchange));
        };
        let stream = match StreamOutput::connect(stream, &config.slot, &role, config.confirm_timeout).await {
            Ok(stream) => stream,
            Err(e) => {
                exchange.close().await;
                return Err(e);
            }
        };
        Ok(Outputs::Split(Box::new(Split::new(exchange, stream, config.publish_to == PublishTo::Both))))
    }
}

impl Transport for Outputs {
    async fn publish(&mut self, message: Message) -> Result<u64, PublishError> {
        match self {
            Outputs::Exchange(exchange) => exchange.publish(message).await,
            Outputs::Split(split) => split.publish(message).await,
        }
    }

    async fn flush(&mut self) -> Result<(), PublishError> {
        match self {
            Outputs::Exchange(_) => Ok(()),
            Outputs::Split(split) => split.stream.flush().await,
        }
    }

    async fn next_confirm(&mut self) -> Result<Confirm, PublishError> {
        match self {
            Outputs::Exchange(exchange) => exchange.next_confirm().await,
            Outputs::Split(split) => split.next_confirm().await,
        }
    }

    fn flow(&self) -> watch::Receiver<Flow> {
        match self {
            Outputs::Exchange(exchange) => exchange.flow(),
            // One broker: a resource alarm blocks the stream's writers as it blocks the
            // exchange's, but only AMQP says so.
            Outputs::Split(split) => split.exchange.flow(),
        }
    }

    async fn close(self) {
        match self {
            Outputs::Exchange(exchange) => exchange.close().await,
            Outputs::Split(split) => {
                let Split { exchange, stream, .. } = *split;
                exchange.close().await;
                stream.close().await;
            }
        }
    }
}

const TO_EXCHANGE: u8 = 1;
const TO_STREAM: u8 = 2;

/// `transport` confirmed message `seq` (`waiting[0]` is message `first`).
fn settle(waiting: &mut VecDeque<u8>, first: u64, seq: u64, transport: u8) {
    let Some(index) = seq.checked_sub(first).and_then(|i| usize::try_from(i).ok()) else { return };
    if let Some(waiting) = waiting.get_mut(index) {
        *waiting &= !transport;
    }
}

/// The stream and the exchange, each message confirmed once every transport it went to has.
pub struct Split {
    exchange: ExchangeOutput,
    stream: StreamOutput,
    /// Whether row events go to the exchange as well as to the stream.
    events_to_exchange: bool,
    /// The number of `waiting[0]`; the next message gets `first + waiting.len()`.
    first: u64,
    /// Per message from `first` on, the transports that have not confirmed it yet.
    waiting: VecDeque<u8>,
    exchange_numbers: Numbers,
    stream_numbers: Numbers,
    /// With the events on the stream only, the exchange's connection asks the broker whether it
    /// blocks it (RabbitMQ tells nothing over the stream protocol); it stops with the outputs.
    _flow_probe: Option<FlowProbe>,
}

impl Split {
    fn new(exchange: ExchangeOutput, stream: StreamOutput, events_to_exchange: bool) -> Split {
        let _flow_probe = (!events_to_exchange).then(|| exchange.start_flow_probe());
        Split {
            _flow_probe,
            exchange,
            stream,
            events_to_exchange,
            first: 1,
            waiting: VecDeque::new(),
            exchange_numbers: Numbers::default(),
            stream_numbers: Numbers::default(),
        }
    }

    async fn publish(&mut self, message: Message) -> Result<u64, PublishError> {
        let seq = self.first + self.waiting.len() as u64;
        let targets = match message.kind {
            Kind::Outbox => TO_EXCHANGE,
            Kind::Event { .. } if self.events_to_exchange => TO_EXCHANGE | TO_STREAM,
            Kind::Event { .. } => TO_STREAM,
        };
        if targets == TO_EXCHANGE {
            let tag = self.exchange.publish(message).await?;
            self.exchange_numbers.push(tag, seq);
        } else {
            if targets & TO_EXCHANGE != 0 {
                let tag = self.exchange.publish(message.clone()).await?;
                self.exchange_numbers.push(tag, seq);
            }
            let number = self.stream.publish(message).await?;
            self.stream_numbers.push(number, seq);
        }
        self.waiting.push_back(targets);
        Ok(seq)
    }

    async fn next_confirm(&mut self) -> Result<Confirm, PublishError> {
        loop {
            let (confirm, transport) = tokio::select! {
                confirm = self.exchange.next_confirm() => (confirm?, TO_EXCHANGE),
                confirm = self.stream.next_confirm() => (confirm?, TO_STREAM),
            };
            let numbers = if transport == TO_EXCHANGE { &mut self.exchange_numbers } else { &mut self.stream_numbers };
            let (first, waiting) = (self.first, &mut self.waiting);
            numbers.confirmed(confirm, |seq| settle(waiting, first, seq, transport))?;
            if let Some(settled) = self.pop_settled() {
                return Ok(settled);
            }
        }
    }

    /// The confirm, at once, of the run of settled messages at the front, if any (a message
    /// settled behind an unsettled one waits for it: the LSN moves only past a settled prefix
    /// anyway).
    fn pop_settled(&mut self) -> Option<Confirm> {
        let mut last = None;
        while self.waiting.front() == Some(&0) {
            self.waiting.pop_front();
            last = Some(self.first);
            self.first += 1;
        }
        last.map(|seq| Confirm { seq, multiple: true })
    }
}
