//! Opening connections (TLS included), with a failure classified where it happens, and the
//! broker's flow control as a [`Flow`] watch: RabbitMQ blocks the publishing connections
//! while a memory or disk alarm is in effect (`connection.blocked`, with the reason) and
//! unblocks them when it clears.

use amqprs::callbacks::ConnectionCallback;
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::security::SecurityCredentials;
use amqprs::tls::TlsAdaptor;
use amqprs::Close;
use async_trait::async_trait;
use pgevents_retry::ErrorKind;
use std::future::Future;

use tokio::sync::watch;

use crate::error::ServerReply;
use crate::url::AuthMechanism;
use crate::{AmqpError, AmqpUrl, Brokers};

/// Whether the broker lets a connection publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    Running,
    /// Blocked by a resource alarm, with the broker's reason (`low on memory`, `low on disk`).
    /// Publishing now would stall; confirms for what was published still come.
    Blocked(String),
}

/// Opens a connection named `name` (shown in the RabbitMQ management UI) to the first of
/// `brokers` that answers, from the node in use on.
pub async fn connect(brokers: &Brokers, name: &str) -> Result<Connection, AmqpError> {
    Ok(connect_with_flow(brokers, name).await?.0)
}

/// [`connect`], with the connection's [`Flow`] as the broker reports it.
pub async fn connect_with_flow(
    brokers: &Brokers,
    name: &str,
) -> Result<(Connection, watch::Receiver<Flow>), AmqpError> {
    brokers
        .first_answering(|url| async move {
            let connection = open(&url, name).await?;
            let (flow, watching) = watch::channel(Flow::Running);
            connection.register_callback(FlowCallback { flow }).await.map_err(|e| open_failed(&url, &e))?;
            Ok((connection, watching))
        })
        .await
}

/// Waits until `connection` has ended (the broker closed it or shut down, the network failed, or
/// it was closed here) and says how. It starts listening before it looks, so an end that came
/// before the call is not missed.
pub async fn ended(connection: &Connection) -> String {
    let listening = connection.listen_network_io_failure();
    tokio::pin!(listening);
    // The first poll subscribes to the connection's end; if it is still open then, the end is
    // announced after it (amqprs marks the connection closed before announcing it).
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(listening.as_mut().poll(cx))).await;
    let network_failure = match first {
        std::task::Poll::Ready(network_failure) => network_failure,
        std::task::Poll::Pending if !connection.is_open() => false,
        std::task::Poll::Pending => listening.await,
    };
    let why = if network_failure { "network failure" } else { "connection closed" };
    format!("RabbitMQ connection ended ({why})")
}

/// Keeps a connection's [`Flow`] up to date.
struct FlowCallback {
    flow: watch::Sender<Flow>,
}

#[async_trait]
impl ConnectionCallback for FlowCallback {
    async fn close(&mut self, _connection: &Connection, close: Close) -> Result<(), amqprs::error::Error> {
        tracing::info!(code = close.reply_code(), reason = %close.reply_text(), "RabbitMQ closed the connection");
        Ok(())
    }

    async fn blocked(&mut self, _connection: &Connection, reason: String) {
        tracing::warn!(%reason, "RabbitMQ blocked the connection (a resource alarm); publishing pauses until it clears");
        self.flow.send_replace(Flow::Blocked(reason));
    }

    async fn unblocked(&mut self, _connection: &Connection) {
        tracing::info!("RabbitMQ unblocked the connection");
        self.flow.send_replace(Flow::Running);
    }

    async fn secret_updated(&mut self, _connection: &Connection) {}
}

async fn open(url: &AmqpUrl, name: &str) -> Result<Connection, AmqpError> {
    url.check()?;
    let mut args = OpenConnectionArguments::new(&url.host, url.port, &url.user, &url.password);
    args.virtual_host(&url.vhost)
        .heartbeat(url.heartbeat)
        .channel_max(url.channel_max)
        .frame_max(url.frame_max)
        .connection_name(name);
    match url.auth {
        AuthMechanism::Plain => {}
        AuthMechanism::AmqPlain => {
            args.credentials(SecurityCredentials::new_amqplain(&url.user, &url.password));
        }
        AuthMechanism::External => {
            args.credentials(SecurityCredentials::new_external());
        }
    }
    if url.tls {
        args.tls_adaptor(tls_adaptor(url)?);
    }
    let ms = url.connection_timeout.as_millis();
    match tokio::time::timeout(url.connection_timeout, Connection::open(&args.finish())).await {
        Ok(opened) => opened.map_err(|e| open_failed(url, &e)),
        Err(_) => Err(AmqpError::Connect {
            url: url.to_string(),
            reason: format!("no connection within {ms} ms (connection_timeout)"),
            kind: ErrorKind::Transient,
        }),
    }
}

fn tls_adaptor(url: &AmqpUrl) -> Result<TlsAdaptor, AmqpError> {
    let options = &url.tls_options;
    let config = url.client_tls().config().map_err(|e| AmqpError::Connect {
        url: url.to_string(),
        reason: e.to_string(),
        kind: ErrorKind::Config,
    })?;
    let server_name = options.server_name.clone().unwrap_or_else(|| url.host.clone());
    Ok(TlsAdaptor::new(tokio_rustls::TlsConnector::from(config), server_name))
}

/// A failed connection attempt. The broker's refusal (`connection.close` during the handshake)
/// reaches us only inside amqprs' message (`reply_code: 403`): its code is read from there,
/// here and nowhere else.
fn open_failed(url: &AmqpUrl, error: &amqprs::error::Error) -> AmqpError {
    use amqprs::error::Error;
    let text = error.to_string();
    let reply = match error {
        Error::ConnectionOpenError(message) => reply_code_in(message),
        _ => None,
    };
    let kind = match (error, reply) {
        (Error::UriError(_), _) => ErrorKind::Config,
        (_, Some(code)) => ServerReply { code, text: String::new() }.kind(),
        _ => ErrorKind::Transient,
    };
    let hint = match (error, reply) {
        (_, Some(ServerReply::ACCESS_REFUSED)) => " (wrong user name or password?)",
        (_, Some(ServerReply::NOT_ALLOWED)) => " (may the user use this virtual host, and does it exist?)",
        // RabbitMQ drops the socket when a login fails (amqprs does not ask for the reason).
        (Error::NetworkError(_), None) if text.contains("reset by peer") || text.contains("end of file") => {
            " (RabbitMQ closed the connection during login: the user name or password is probably wrong, or the user may not use this virtual host)"
        }
        _ => "",
    };
    AmqpError::Connect { url: url.to_string(), reason: format!("{text}{hint}"), kind }
}

/// The `reply_code` of a `connection.close` frame printed in an amqprs message.
fn reply_code_in(message: &str) -> Option<u16> {
    let rest = &message[message.find("reply_code: ")? + "reply_code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_reply_code_of_a_refused_login() {
        let message = "failed to open connection, reason: Close(MethodHeader { class_id: 10, method_id: 50 }, Close { reply_code: 403, reply_text: ShortStr(\"ACCESS_REFUSED - Login was refused\"), class_id: 0, method_id: 0 })";
        assert_eq!(reply_code_in(message), Some(403));
        assert_eq!(reply_code_in("failed to register channel resource"), None);
    }
}
