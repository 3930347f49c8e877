//! The benchmark's queue on the local RabbitMQ: a durable queue (classic, quorum or stream)
//! bound to the exchange (as a real consumer's would be), its depth, and its contents' sizes.

use std::time::Duration;

use amqprs::channel::{
    BasicCancelArguments, BasicConsumeArguments, ConsumerMessage, QueueDeclareArguments, QueueDeleteArguments,
    QueuePurgeArguments,
};
use anyhow::{anyhow, Context};
use pgevents_amqp::{self as amqp, Brokers, Channel, Connection, FieldValue, QueueSpec, QueueType};

use crate::args::QueueKind;
use tokio::sync::mpsc::UnboundedReceiver;

/// A durable queue bound with `#` to a topic exchange.
pub struct BenchQueue {
    pub url: String,
    pub exchange: String,
    pub name: String,
    pub kind: QueueKind,
    connection: Connection,
    channel: Channel,
}

impl BenchQueue {
    pub async fn declare(url: &str, exchange: &str, name: &str) -> anyhow::Result<BenchQueue> {
        Self::declare_kind(url, exchange, name, QueueKind::Classic).await
    }

    /// A queue of this type.
    pub async fn declare_kind(url: &str, exchange: &str, name: &str, kind: QueueKind) -> anyhow::Result<BenchQueue> {
        let mut queue = Self::existing(url, exchange, name).await?;
        queue.kind = kind;
        amqp::declare_topic_exchange(&queue.channel, exchange).await?;
        queue.declare_queue().await?;
        Ok(queue)
    }

    async fn declare_queue(&self) -> anyhow::Result<()> {
        let mut spec = QueueSpec { name: self.name.clone(), durable: true, ..Default::default() };
        match self.kind {
            QueueKind::Classic => {}
            QueueKind::Quorum => spec.queue_type = QueueType::Quorum,
            QueueKind::Stream => spec.arguments = amqp::field_table(&[("x-queue-type", FieldValue::from("stream"))]),
        }
        amqp::declare_queue(&self.channel, &spec).await?;
        amqp::bind_queue(&self.channel, &self.name, &self.exchange, &["#".to_owned()]).await?;
        Ok(())
    }

    /// Empties the queue: purged, or for a stream (which cannot be purged) deleted and declared
    /// again.
    pub async fn empty(&self) -> anyhow::Result<()> {
        match self.kind {
            QueueKind::Stream => {
                self.channel
                    .queue_delete(QueueDeleteArguments::new(&self.name))
                    .await
                    .map_err(|e| anyhow!("delete the stream: {e}"))?;
                self.declare_queue().await
            }
            _ => self.purge().await,
        }
    }

    /// A queue someone else declared (e.g. a worker's, with its own arguments), or about to be.
    pub async fn existing(url: &str, exchange: &str, name: &str) -> anyhow::Result<BenchQueue> {
        let parsed: Brokers = url.parse()?;
        let connection = amqp::connect(&parsed, "pgevents bench").await?;
        let channel = amqp::open_channel(&connection).await?;
        Ok(BenchQueue {
            url: url.to_owned(),
            exchange: exchange.to_owned(),
            name: name.to_owned(),
            kind: QueueKind::Classic,
            connection,
            channel,
        })
    }

    /// Messages ready in the queue.
    pub async fn depth(&self) -> anyhow::Result<u64> {
        let mut args = QueueDeclareArguments::new(&self.name);
        args.passive(true);
        let declared = self.channel.queue_declare(args.finish()).await.map_err(|e| anyhow!("queue depth: {e}"))?;
        Ok(declared.map(|(_, count, _)| u64::from(count)).unwrap_or(0))
    }

    /// Waits until the queue holds `n` messages; `false` after `timeout`.
    pub async fn wait_for_depth(&self, n: u64, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.depth().await? >= n {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn purge(&self) -> anyhow::Result<()> {
        self.channel
            .queue_purge(QueuePurgeArguments::new(&self.name))
            .await
            .map_err(|e| anyhow!("purge queue: {e}"))?;
        Ok(())
    }

    /// Starts consuming without acknowledgements (the fastest way to read everything).
    pub async fn consume(&self) -> anyhow::Result<(String, UnboundedReceiver<ConsumerMessage>)> {
        let mut args = BasicConsumeArguments::new(&self.name, "");
        args.manual_ack(false);
        self.channel.basic_consume_rx(args.finish()).await.map_err(|e| anyhow!("consume: {e}"))
    }

    /// Stops a consumer started with [`BenchQueue::consume`].
    pub async fn cancel(&self, tag: &str) {
        let _ = self.channel.basic_cancel(BasicCancelArguments::new(tag)).await;
    }

    /// Consumes every message in the queue; returns (count, total body bytes, the body whose
    /// size is closest to the mean).
    pub async fn drain_sizes(&self, expected: u64) -> anyhow::Result<(u64, u64, Vec<u8>)> {
        if self.kind == QueueKind::Stream {
            // A stream is read, not drained: over the stream protocol, from its first message.
            let records = pgevents_testkit::read_stream(&self.name, Duration::from_secs(3), expected as usize).await;
            let bytes: u64 = records.iter().map(|r| r.body.len() as u64).sum();
            let count = records.len() as u64;
            let mean = bytes.checked_div(count).unwrap_or(0);
            let typical = records
                .into_iter()
                .map(|r| r.body)
                .min_by_key(|b| (b.len() as i64 - mean as i64).unsigned_abs())
                .unwrap_or_default();
            return Ok((count, bytes, typical));
        }
        let (tag, mut rx) = self.consume().await?;
        let mut count = 0u64;
        let mut bytes = 0u64;
        let mut sizes = Vec::with_capacity(expected as usize);
        let mut samples: Vec<Vec<u8>> = Vec::new();
        while count < expected {
            let message = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .context("queue drain stalled")?
                .ok_or_else(|| anyhow!("consumer closed"))?;
            if let Some(body) = message.content {
                count += 1;
                bytes += body.len() as u64;
                sizes.push(body.len());
                if count % 997 == 1 {
                    samples.push(body);
                }
            }
        }
        self.cancel(&tag).await;
        let mean = bytes.checked_div(count).unwrap_or(0);
        let typical =
            samples.into_iter().min_by_key(|b| (b.len() as i64 - mean as i64).unsigned_abs()).unwrap_or_default();
        Ok((count, bytes, typical))
    }

    /// Deletes the queue and closes the connection.
    pub async fn delete(self) {
        let _ = self.channel.queue_delete(QueueDeleteArguments::new(&self.name)).await;
        let _ = self.channel.exchange_delete(amqp::ExchangeDeleteArguments::new(&self.exchange)).await;
        let _ = self.channel.close().await;
        let _ = self.connection.close().await;
    }
}
