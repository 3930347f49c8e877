//! Connecting over the stream protocol (TLS with pgevents' own settings: roots, verification,
//! client certificate), and declaring a stream with its retention.

use std::collections::HashMap;
use std::time::Duration;

use pgevents_retry::ErrorKind;
use rabbitmq_stream_client::types::ResponseCode;
use rabbitmq_stream_client::{Client, ClientOptions, Environment, TlsConfiguration};

use crate::error::client_kind;
use crate::{StreamError, StreamUrl};

/// Retention of a stream, as for the AMQP history stream.
pub use pgevents_amqp::Retention as StreamRetention;

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening a connection to one node of a list may take: a node that does not answer at
/// all (a host that is gone, a firewall dropping packets) must leave the others time within the
/// callers' own limits (30 s). A node that answers does within milliseconds.
const NODE_OF_LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS settings of a connection to `host`.
fn tls(url: &StreamUrl, host: &str) -> Result<TlsConfiguration, StreamError> {
    if !url.0.tls {
        return Ok(TlsConfiguration::Disabled);
    }
    let config_error = |reason: String| StreamError::Connect { url: url.to_string(), reason, kind: ErrorKind::Config };
    pgevents_tls::server_name(host).map_err(|e| config_error(format!("{host}: {e}")))?;
    let config = url.0.client_tls().config().map_err(|e| config_error(e.to_string()))?;
    Ok(TlsConfiguration::Custom(config))
}

fn options(url: &StreamUrl, (host, port): (&str, u16), name: &str) -> Result<ClientOptions, StreamError> {
    url.check()?;
    Ok(ClientOptions::builder()
        .host(host)
        .port(port)
        .user(&url.0.user)
        .password(&url.0.password)
        .v_host(&url.0.vhost)
        .heartbeat(u32::from(url.0.heartbeat))
        .tls(tls(url, host)?)
        .client_provided_name(name.to_owned())
        .build())
}

fn connect_failed(url: &StreamUrl, reason: String, kind: ErrorKind) -> StreamError {
    StreamError::Connect { url: url.to_string(), reason, kind }
}

/// A connection over the stream protocol, closed when dropped (the client's heartbeat task would
/// otherwise keep it, and what it declared on the broker, alive): whatever ends early, an error
/// or a caller that stops waiting, leaves no connection behind.
pub struct StreamConnection(Client);

impl std::ops::Deref for StreamConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.0
    }
}

impl Drop for StreamConnection {
    fn drop(&mut self) {
        drop_in_background(&self.0);
    }
}

/// One connection to the first node of `url` that answers, in the order given (named `name` in
/// the management UI).
pub async fn client(url: &StreamUrl, name: &str) -> Result<StreamConnection, StreamError> {
    locate(url, name).await.map(|(client, _)| client)
}

/// [`client`], and the node (host and port) it connected to. A node that cannot be reached is
/// passed over for the next; any other failure (credentials, TLS) would be the same on every
/// node and ends the search.
async fn locate<'u>(url: &'u StreamUrl, name: &str) -> Result<(StreamConnection, (&'u str, u16)), StreamError> {
    let nodes = url.nodes_to_try();
    let timeout = if nodes.len() > 1 { NODE_OF_LIST_TIMEOUT } else { CONNECT_TIMEOUT };
    let mut unreachable = Vec::new();
    for (index, node) in nodes {
        match client_at(url, node, name, timeout).await {
            Ok(client) => {
                if !unreachable.is_empty() {
                    tracing::info!(node = %format!("{}:{}", node.0, node.1), passed_over = unreachable.len(), "connected to the next node of the stream URL");
                }
                url.answered(index);
                return Ok((client, node));
            }
            Err(StreamError::Connect { reason, kind: ErrorKind::Transient, .. }) => {
                unreachable.push(format!("{}:{}: {reason}", node.0, node.1));
            }
            Err(e) => return Err(e),
        }
    }
    Err(connect_failed(url, format!("no node answered ({})", unreachable.join("; ")), ErrorKind::Transient))
}

/// One connection with the settings of `url` to `node` (host and port).
/// Opening it may take `timeout`.
async fn client_at(
    url: &StreamUrl,
    node: (&str, u16),
    name: &str,
    timeout: Duration,
) -> Result<StreamConnection, StreamError> {
    let options = options(url, node, name)?;
    // Connecting runs in a task of its own, to its end: a caller that stops waiting mid-handshake
    // (a subscriber who hung up) would otherwise leave a connection the client's own tasks keep
    // open. A connection nobody waits for any more is closed.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let url_for_task = url.clone();
    tokio::spawn(async move {
        let connected = connecting(&url_for_task, timeout, Client::connect(options)).await;
        if let Err(Ok(orphan)) = tx.send(connected) {
            let _ = orphan.force_drop_connection().await;
        }
    });
    match rx.await {
        Ok(connected) => connected.map(StreamConnection),
        Err(_) => Err(connect_failed(url, "the connecting task ended".into(), ErrorKind::Transient)),
    }
}

/// `connect` within `timeout`, its failure classified.
async fn connecting<T>(
    url: &StreamUrl,
    timeout: Duration,
    connect: impl std::future::Future<Output = Result<T, rabbitmq_stream_client::error::ClientError>>,
) -> Result<T, StreamError> {
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(connected)) => Ok(connected),
        Ok(Err(e)) => Err(connect_failed(url, e.to_string(), client_kind(&e))),
        Err(_) => {
            Err(connect_failed(url, format!("no connection within {}s", timeout.as_secs()), ErrorKind::Transient))
        }
    }
}

/// The client library's environment (producers and consumers connect to a stream's leader or a
/// replica from it), checked by one connection.
pub async fn environment(url: &StreamUrl, name: &str) -> Result<Environment, StreamError> {
    let built = Environment::builder()
        .host(url.host())
        .port(url.port())
        .username(&url.0.user)
        .password(&url.0.password)
        .virtual_host(&url.0.vhost)
        .heartbeat(u32::from(url.0.heartbeat))
        .tls(tls(url, url.host())?)
        .client_provided_name(name);
    url.check()?;
    connecting(url, CONNECT_TIMEOUT, built.build()).await
}

/// Declares `stream` with `retention` if it is missing; an existing stream keeps its settings
/// (the broker refuses a declaration whose settings differ, so an existing stream is left alone:
/// the gateway and the producer may both declare it, with their own options).
pub async fn ensure_stream(client: &Client, stream: &str, retention: &StreamRetention) -> Result<(), StreamError> {
    if exists(client, stream).await? {
        return Ok(());
    }
    let mut arguments = HashMap::from([
        ("max-age".to_owned(), retention.max_age.clone()),
        ("max-length-bytes".to_owned(), retention.max_bytes.to_string()),
    ]);
    if let Some(bytes) = retention.segment_bytes {
        arguments.insert("stream-max-segment-size-bytes".to_owned(), bytes.to_string());
    }
    if let Some(replicas) = retention.replicas {
        arguments.insert("initial-cluster-size".to_owned(), replicas.to_string());
    }
    let response = client
        .create_stream(stream, arguments)
        .await
        .map_err(|e| StreamError::operation(stream, "declare the stream", &e))?;
    match response.code() {
        ResponseCode::Ok | ResponseCode::StreamAlreadyExists => Ok(()),
        // Declared meanwhile by someone else, with other settings.
        ResponseCode::PreconditionFailed if exists(client, stream).await? => Ok(()),
        code => Err(StreamError::refused(stream, "declare the stream", code)),
    }
}

/// Whether `stream` exists.
async fn exists(client: &Client, stream: &str) -> Result<bool, StreamError> {
    let mut metadata = client
        .metadata(vec![stream.to_owned()])
        .await
        .map_err(|e| StreamError::operation(stream, "look the stream up", &e))?;
    match metadata.remove(stream).map(|found| found.response_code) {
        Some(ResponseCode::Ok) => Ok(true),
        Some(ResponseCode::StreamDoesNotExist) | None => Ok(false),
        Some(code) => Err(StreamError::refused(stream, "look the stream up", &code)),
    }
}

/// A connection to the leader of `stream`: the node of `url` when it leads, or the leader the
/// broker names (its advertised host and port).
pub(crate) async fn leader(
    url: &StreamUrl,
    stream: &str,
    connection_name: &str,
) -> Result<StreamConnection, StreamError> {
    let (client, (host, port)) = locate(url, connection_name).await?;
    let here = (host.to_owned(), port);
    let mut metadata: HashMap<_, _> = client
        .metadata(vec![stream.to_owned()])
        .await
        .map_err(|e| StreamError::operation(stream, "look up the stream's leader", &e))?;
    let Some(found) = metadata.remove(stream) else {
        return Err(StreamError::refused(stream, "look up the stream's leader", &ResponseCode::StreamDoesNotExist));
    };
    if found.response_code != ResponseCode::Ok {
        return Err(StreamError::refused(stream, "look up the stream's leader", &found.response_code));
    }
    let port = u16::try_from(found.leader.port).unwrap_or(here.1);
    // Where the node reached says it is (its advertised host and port), else where it was reached:
    // nodes of one host differ in their port only.
    let properties = client.connection_properties().await;
    let advertised = properties
        .get("advertised_host")
        .zip(properties.get("advertised_port").and_then(|p| p.parse::<u16>().ok()))
        .map(|(host, port)| (host.clone(), port));
    if advertised.unwrap_or(here) == (found.leader.host.clone(), port) {
        return Ok(client);
    }
    drop(client);
    client_at(url, (&found.leader.host, port), connection_name, CONNECT_TIMEOUT).await.map_err(|e| match e {
        StreamError::Connect { url, reason, kind } => StreamError::Connect {
            url,
            reason: format!("{reason} (the stream's leader as the broker advertises it: {}:{port})", found.leader.host),
            kind,
        },
        other => other,
    })
}

/// Closes a connection in the background (from a `Drop`).
fn drop_in_background(client: &Client) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let client = client.clone();
        runtime.spawn(async move {
            let _ = client.force_drop_connection().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two nodes where nothing listens: both are tried, in order, and the error names each with
    /// its reason, as a transient failure (the caller retries), never the password.
    #[tokio::test]
    async fn every_node_is_tried_before_giving_up() {
        let closed = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
        let (a, b) = (closed().unwrap(), closed().unwrap());
        let url: StreamUrl =
            format!("rabbitmq-stream://app:hunter2@127.0.0.1:{a}/%2f,rabbitmq-stream://app:hunter2@127.0.0.1:{b}/%2f")
                .parse()
                .unwrap();
        let err = client(&url, "pgevents test").await.err().expect("nothing listens");
        assert_eq!(err.kind(), ErrorKind::Transient);
        let text = err.to_string();
        let (first, second) = (format!("127.0.0.1:{a}: "), format!("127.0.0.1:{b}: "));
        assert!(text.contains("no node answered"), "{text}");
        assert!(text.find(&first).is_some_and(|i| text.find(&second).is_some_and(|j| i < j)), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
