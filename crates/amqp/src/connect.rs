//! Opening connections and channels, and declaring exchanges, queues and bindings.

use std::sync::Arc;

use amqprs::callbacks::{DefaultChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{Channel, ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::tls::TlsAdaptor;
use amqprs::FieldTable;

use crate::{check_short_string, AmqpError, AmqpUrl};

/// Makes `amqprs` errors readable: access refused, connection refused, and the rest as is.
pub(crate) fn describe(err: &amqprs::error::Error) -> String {
    let text = err.to_string();
    if text.contains("ACCESS_REFUSED") || text.contains("403") {
        format!("{text} (wrong user name or password?)")
    } else if text.contains("reset by peer") || text.contains("end of file") || text.contains("UnexpectedEof") {
        // RabbitMQ drops the socket when a login fails (amqprs does not ask for the error reply)
        format!("{text} (RabbitMQ closed the connection during login: the user name or password is probably wrong, or the user may not use this virtual host)")
    } else if text.contains("NOT_FOUND") && text.contains("vhost") {
        format!("{text} (does the virtual host exist?)")
    } else {
        text
    }
}

fn tls_adaptor(url: &AmqpUrl) -> Result<TlsAdaptor, AmqpError> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| AmqpError::Connect { url: url.to_string(), reason: format!("TLS setup: {e}") })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsAdaptor::new(tokio_rustls::TlsConnector::from(Arc::new(config)), url.host.clone()))
}

/// Opens a connection named `name` (shown in the RabbitMQ management UI).
pub async fn connect(url: &AmqpUrl, name: &str) -> Result<Connection, AmqpError> {
    let mut args = OpenConnectionArguments::new(&url.host, url.port, &url.user, &url.password);
    args.virtual_host(&url.vhost).heartbeat(url.heartbeat).connection_name(name);
    if url.tls {
        args.tls_adaptor(tls_adaptor(url)?);
    }
    let connection = Connection::open(&args.finish())
        .await
        .map_err(|e| AmqpError::Connect { url: url.to_string(), reason: describe(&e) })?;
    connection
        .register_callback(DefaultConnectionCallback)
        .await
        .map_err(|e| AmqpError::op("register connection callback", describe(&e)))?;
    Ok(connection)
}

/// Opens a channel with the default (logging) callback.
pub async fn open_channel(connection: &Connection) -> Result<Channel, AmqpError> {
    let channel = connection.open_channel(None).await.map_err(|e| AmqpError::op("open channel", describe(&e)))?;
    channel
        .register_callback(DefaultChannelCallback)
        .await
        .map_err(|e| AmqpError::op("register channel callback", describe(&e)))?;
    Ok(channel)
}

/// Declares a durable topic exchange (a no-op when it exists with the same settings).
pub async fn declare_topic_exchange(channel: &Channel, exchange: &str) -> Result<(), AmqpError> {
    check_short_string("exchange name", exchange)?;
    if exchange.is_empty() {
        return Err(AmqpError::InvalidName { what: "exchange name", name: String::new(), reason: "must not be empty" });
    }
    channel.exchange_declare(ExchangeDeclareArguments::new(exchange, "topic").durable(true).finish()).await.map_err(
        |e| {
            let mut reason = describe(&e);
            if reason.contains("PRECONDITION_FAILED") {
                reason.push_str(
                    " (the exchange exists with another type or durability: delete it or choose another name)",
                );
            }
            AmqpError::op(format!("declare exchange {exchange:?}"), reason)
        },
    )
}

/// How a queue is declared.
#[derive(Debug, Clone, Default)]
pub struct QueueSpec {
    /// Empty for a server-named queue.
    pub name: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// Declares a queue and returns its name (the server's choice for an empty name).
pub async fn declare_queue(channel: &Channel, spec: &QueueSpec) -> Result<String, AmqpError> {
    check_short_string("queue name", &spec.name)?;
    let mut args = QueueDeclareArguments::new(&spec.name);
    args.durable(spec.durable)
        .exclusive(spec.exclusive)
        .auto_delete(spec.auto_delete)
        .arguments(spec.arguments.clone());
    let declared = channel
        .queue_declare(args.finish())
        .await
        .map_err(|e| AmqpError::op(format!("declare queue {:?}", spec.name), describe(&e)))?;
    Ok(declared.map(|(name, _, _)| name).unwrap_or_else(|| spec.name.clone()))
}

/// How many messages are ready in an existing queue (a passive declare).
pub async fn queue_depth(channel: &Channel, queue: &str) -> Result<u32, AmqpError> {
    let mut args = QueueDeclareArguments::new(queue);
    args.passive(true);
    let declared = channel
        .queue_declare(args.finish())
        .await
        .map_err(|e| AmqpError::op(format!("look up queue {queue:?} (does it exist?)"), describe(&e)))?;
    Ok(declared.map(|(_, ready, _)| ready).unwrap_or(0))
}

/// Binds `queue` to `exchange` with each binding key.
pub async fn bind_queue(channel: &Channel, queue: &str, exchange: &str, keys: &[String]) -> Result<(), AmqpError> {
    for key in keys {
        check_short_string("binding key", key)?;
        channel
            .queue_bind(QueueBindArguments::new(queue, exchange, key))
            .await
            .map_err(|e| AmqpError::op(format!("bind queue {queue:?} to {exchange:?} with {key:?}"), describe(&e)))?;
    }
    Ok(())
}
