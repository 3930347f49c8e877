//! Ordinary (non-replication) SQL connections with the same settings as the replication
//! connection: a tokio-postgres configuration, its TLS connector, and readable errors.

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Connection, Socket};

use crate::tls::{client_config, TlsMode};
use crate::{ConnectConfig, ReplicationError};

/// The tokio-postgres configuration for `settings`; `role` is appended to the application name
/// (`pgevents (catalog)`) so each connection is recognisable in `pg_stat_activity`.
pub fn sql_config(settings: &ConnectConfig, role: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&settings.host)
        .port(settings.port)
        .user(&settings.user)
        .dbname(&settings.dbname)
        .application_name(format!("{} ({role})", settings.application_name))
        .connect_timeout(settings.connect_timeout)
        .options("-c TimeZone=UTC -c DateStyle=ISO,MDY");
    if let Some(password) = &settings.password {
        config.password(password);
    }
    config.ssl_mode(match settings.tls {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Prefer => SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyFull { .. } => SslMode::Require,
    });
    config
}

/// The TLS connector for `settings` (`None` when TLS is disabled).
pub fn sql_tls(settings: &ConnectConfig) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, ReplicationError> {
    Ok(client_config(&settings.tls)?.map(|tls| tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone())))
}

/// Connects. The returned driver must be polled (see [`drive_connection`]) for the client to
/// work; it is a separate value so the caller decides where notifications go.
pub async fn sql_connect(
    settings: &ConnectConfig,
    role: &str,
) -> Result<(Client, Box<dyn ConnectionDriver>), SqlConnectError> {
    let config = sql_config(settings, role);
    let context = format!("cannot connect to PostgreSQL at {} as {:?}", settings.address(), settings.user);
    let wrap = |e: tokio_postgres::Error| SqlConnectError::Postgres {
        context: context.clone(),
        message: describe_sql_error(&e),
        transient: sql_error_is_transient(&e),
    };
    Ok(match sql_tls(settings).map_err(SqlConnectError::Tls)? {
        None => {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(wrap)?;
            (client, Box::new(connection))
        }
        Some(tls) => {
            let (client, connection) = config.connect(tls).await.map_err(wrap)?;
            (client, Box::new(connection))
        }
    })
}

/// A tokio-postgres connection of either TLS kind, polled for its messages (notices,
/// notifications) and, once it ends, its error.
pub trait ConnectionDriver: Send {
    fn poll_message(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>>;
}

impl<T> ConnectionDriver for Connection<Socket, T>
where
    T: tokio_postgres::tls::TlsStream + Unpin + Send,
{
    fn poll_message(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>> {
        Connection::poll_message(self, cx)
    }
}

/// Polls a connection until it ends, passing notifications to `on_notification`.
pub async fn drive_connection(mut driver: Box<dyn ConnectionDriver>, mut on_notification: impl FnMut(&str, &str)) {
    let ended = std::future::poll_fn(|cx| loop {
        match driver.poll_message(cx) {
            std::task::Poll::Ready(Some(Ok(tokio_postgres::AsyncMessage::Notification(n)))) => {
                on_notification(n.channel(), n.payload())
            }
            std::task::Poll::Ready(Some(Ok(_))) => {}
            std::task::Poll::Ready(Some(Err(e))) => return std::task::Poll::Ready(Some(e)),
            std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
            std::task::Poll::Pending => return std::task::Poll::Pending,
        }
    })
    .await;
    if let Some(e) = ended {
        tracing::debug!(error = %describe_sql_error(&e), "SQL connection ended");
    }
}

/// A failed SQL connection attempt.
#[derive(Debug, thiserror::Error)]
pub enum SqlConnectError {
    #[error("{context}: {message}")]
    Postgres { context: String, message: String, transient: bool },
    #[error(transparent)]
    Tls(ReplicationError),
}

impl SqlConnectError {
    /// Whether trying again later may succeed (the server is down or restarting).
    pub fn is_transient(&self) -> bool {
        matches!(self, SqlConnectError::Postgres { transient: true, .. })
    }
}

/// The server's message with SQLSTATE, detail and hint, or the client error and its causes.
pub fn describe_sql_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

/// Whether retrying may help: connection problems, server restarts, lack of resources,
/// serialization failures and deadlocks. Errors in the statement itself are not transient.
pub fn sql_error_is_transient(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => matches!(&db.code().code()[..2], "08" | "53" | "57" | "58" | "40"),
        None => true,
    }
}
