//! `pgevents serve` for the gateway tests: start it on the world's exchange, subscribe, sign
//! tokens.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgevents_testkit::{
    amqp_url, delete_queue, free_local_addr, http_get, metric_value, stream_connections_of, stream_url,
    PgEventsProcess, SseClient,
};

use super::{World, WAIT};

/// How the history stream is written and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// The producer's --history-stream (a stream queue bound to the exchange), read over AMQP.
    Amqp,
    /// The producer's --publish-to stream output, read over the stream protocol.
    Stream,
}

impl Over {
    /// The gateway's settings for it.
    pub fn gateway_env(self) -> Vec<(&'static str, String)> {
        match self {
            Over::Amqp => vec![],
            Over::Stream => {
                vec![("PGEVENTS_HISTORY_PROTOCOL", "stream".to_owned()), ("PGEVENTS_STREAM_URL", stream_url())]
            }
        }
    }

    /// The producer's settings to write `stream`.
    pub fn producer_env(self, stream: &str) -> Vec<(&'static str, String)> {
        match self {
            Over::Amqp => vec![("PGEVENTS_HISTORY_STREAM", stream.to_owned())],
            Over::Stream => vec![
                ("PGEVENTS_PUBLISH_TO", "stream".to_owned()),
                ("PGEVENTS_STREAM", stream.to_owned()),
                ("PGEVENTS_STREAM_URL", stream_url()),
            ],
        }
    }

    /// A producer writing `stream`, with `extra` settings.
    pub async fn producer(self, world: &World, stream: &str, extra: &[(&str, &str)]) -> PgEventsProcess {
        let env = self.producer_env(stream);
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        world.producer(&all).await
    }
}

pub struct Gateway {
    pub process: PgEventsProcess,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub stream: String,
    env: Vec<(String, String)>,
}

impl Gateway {
    /// Starts `pgevents serve` for the world's exchange (through `broker_url` if given) and waits
    /// until it reads the history stream.
    pub async fn start(world: &World, stream: &str, broker_url: Option<&str>, extra: &[(&str, &str)]) -> Gateway {
        let (addr, metrics) = (free_local_addr(), free_local_addr());
        let mut env = vec![
            ("RABBITMQ_URL".to_owned(), broker_url.map(str::to_owned).unwrap_or_else(amqp_url)),
            ("RABBITMQ_EXCHANGE".to_owned(), world.exchange.clone()),
            ("PGEVENTS_HISTORY_STREAM".to_owned(), stream.to_owned()),
            ("PGEVENTS_LISTEN".to_owned(), addr.to_string()),
            ("PGEVENTS_METRICS_ADDR".to_owned(), metrics.to_string()),
            ("PGEVENTS_SSE_HEARTBEAT".to_owned(), "1".to_owned()),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        let process = Self::spawn(&env).await;
        Gateway { process, addr, metrics, stream: stream.to_owned(), env }
    }

    /// [`Gateway::start`] reading the history `over` a protocol.
    pub async fn start_over(over: Over, world: &World, stream: &str, extra: &[(&str, &str)]) -> Gateway {
        let env = over.gateway_env();
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        let gateway = Self::start(world, stream, None, &all).await;
        if over == Over::Stream {
            assert!(gateway.stream_connections() >= 1, "the gateway reads over the stream protocol");
        }
        gateway
    }

    /// The gateway's connections to the stream protocol's port.
    pub fn stream_connections(&self) -> usize {
        stream_connections_of(self.process.pid())
    }

    async fn spawn(env: &[(String, String)]) -> PgEventsProcess {
        let mut process = PgEventsProcess::spawn(&["serve"], env);
        process.wait_for_log("reading the history stream", WAIT).await;
        process
    }

    /// Stops the gateway (SIGTERM, exit 0) and starts it again on the same address.
    pub async fn restart(&mut self) {
        self.process.terminate();
        assert_eq!(self.process.wait(WAIT).await, Some(0), "{}", self.process.stderr());
        self.process = Self::spawn(&self.env).await;
    }

    /// Connects a subscriber and checks it is accepted.
    pub async fn subscribe(&self, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let client = SseClient::connect(self.addr, path, headers).await;
        assert_eq!(client.status, 200, "{}", client.body);
        // The subscriber takes its place in the feed right after the response starts.
        tokio::time::sleep(Duration::from_millis(200)).await;
        client
    }

    /// A request that must be refused: its status and body.
    pub async fn refused(&self, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let client = SseClient::connect(self.addr, path, headers).await;
        assert_ne!(client.status, 200, "{path} should be refused");
        client
    }

    /// A counter or gauge of the gateway's /metrics (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = http_get(self.metrics, "/metrics").await.map(|(_, body)| body).unwrap_or_default();
        metric_value(&text, series).unwrap_or(0.0)
    }

    /// Stops the gateway and deletes its stream.
    pub async fn stop(mut self) {
        self.process.terminate();
        let code = self.process.wait(WAIT).await;
        assert_eq!(code, Some(0), "serve should exit 0 on SIGTERM:\n{}", self.process.stderr());
        delete_queue(&self.stream).await;
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An HS256 token over `claims` with `secret`.
pub fn hs256(secret: &[u8], claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret).expect("HS256 key");
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).expect("sign")
}
