//! RabbitMQ streams over the stream protocol, for the tests: the local broker's URL, reading a
//! stream from its first message, deleting it.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use rabbitmq_stream_client::types::{Message, OffsetSpecification, SimpleValue};

/// The local broker's stream protocol URL.
pub fn stream_url() -> String {
    std::env::var("PGEVENTS_TEST_STREAM_URL")
        .unwrap_or_else(|_| "rabbitmq-stream://guest:guest@127.0.0.1:5552/%2f".into())
}

/// One message read from a stream.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    pub offset: u64,
    pub properties: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl StreamRecord {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    fn of(offset: u64, message: &Message) -> StreamRecord {
        let mut properties = HashMap::new();
        if let Some(application) = message.application_properties() {
            for (name, value) in application.iter() {
                let text = match value {
                    SimpleValue::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                properties.insert(name.clone(), text);
            }
        }
        StreamRecord { offset, properties, body: message.data().unwrap_or_default().to_vec() }
    }
}

async fn environment() -> rabbitmq_stream_client::Environment {
    environment_at(&stream_url()).await
}

async fn environment_at(url: &str) -> rabbitmq_stream_client::Environment {
    let url: pgevents_stream::StreamUrl = url.parse().expect("stream URL");
    pgevents_stream::environment(&url, "pgevents test").await.expect("connect to the stream protocol")
}

/// Reads `stream` from its first message until `quiet` passes without one (or `limit` messages).
pub async fn read_stream(stream: &str, quiet: Duration, limit: usize) -> Vec<StreamRecord> {
    read_stream_at(&stream_url(), stream, quiet, limit).await
}

/// [`read_stream`] through the broker at `url` (a node of a cluster).
pub async fn read_stream_at(url: &str, stream: &str, quiet: Duration, limit: usize) -> Vec<StreamRecord> {
    let environment = environment_at(url).await;
    let mut consumer = environment.consumer().offset(OffsetSpecification::First).build(stream).await.expect("consume");
    let mut records = Vec::new();
    while records.len() < limit {
        match tokio::time::timeout(quiet, consumer.next()).await {
            Ok(Some(Ok(delivery))) => records.push(StreamRecord::of(delivery.offset(), delivery.message())),
            Ok(Some(Err(e))) => panic!("reading stream {stream}: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    let _ = consumer.handle().close().await;
    records
}

/// Deletes a stream (if it exists).
pub async fn delete_stream(stream: &str) {
    let _ = environment().await.delete_stream(stream).await;
}

/// A process's open connections to the stream protocol's port (`ss`; asking RabbitMQ with
/// `rabbitmqctl list_stream_connections` would crash 3.10's handler of a connection that is still
/// in its handshake, another test's).
pub fn stream_connections_of(pid: u32) -> usize {
    connections_to(pid, 5552)
}

/// A process's open TCP connections to local `port` (`ss`).
pub fn connections_to(pid: u32, port: u16) -> usize {
    let filter = format!("( dport = :{port} )");
    let out = std::process::Command::new("ss").args(["-Htnp", "state", "established", &filter]).output().expect("ss");
    String::from_utf8_lossy(&out.stdout).lines().filter(|line| line.contains(&format!("pid={pid},"))).count()
}
