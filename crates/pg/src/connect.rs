//! SQL connections (tokio-postgres) with the settings of [`ConnectConfig`]: its TLS, a name per
//! role in `pg_stat_activity`, and the session settings every pgevents connection uses (UTC,
//! ISO dates, and for pgevents' own sessions a search path of `pg_catalog, pg_temp`).

use tokio_postgres::config::{ChannelBinding as PgChannelBinding, SslMode};
use tokio_postgres::{Client, Connection, Socket};

use crate::tls::client_config;
use crate::{ChannelBinding, ConnectConfig, PgError, SearchPath, TlsConfigError, TlsMode};

/// The tokio-postgres configuration for `settings`; `role` is appended to the application name
/// (`pgevents (catalog)`) so each connection is recognisable in `pg_stat_activity`.
pub(crate) fn sql_config(settings: &ConnectConfig, role: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&settings.host)
        .port(settings.port)
        .user(&settings.user)
        .dbname(&settings.dbname)
        .application_name(format!("{} ({role})", settings.application_name))
        .connect_timeout(settings.connect_timeout)
        .options(match settings.search_path {
            SearchPath::Pinned => "-c TimeZone=UTC -c DateStyle=ISO,MDY -c search_path=pg_catalog,pg_temp",
            SearchPath::RoleDefault => "-c TimeZone=UTC -c DateStyle=ISO,MDY",
        });
    if let Some(password) = &settings.password {
        config.password(password);
    }
    config.ssl_mode(match settings.tls {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Prefer => SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
    });
    // With `Require`, tokio-postgres refuses a server that asks for a cleartext or MD5
    // password, or SCRAM without channel binding.
    config.channel_binding(match settings.channel_binding {
        ChannelBinding::Disable => PgChannelBinding::Disable,
        ChannelBinding::Prefer => PgChannelBinding::Prefer,
        ChannelBinding::Require => PgChannelBinding::Require,
    });
    config
}

/// The TLS connector for `settings` (`None` when TLS is disabled).
pub(crate) fn sql_tls(
    settings: &ConnectConfig,
) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, TlsConfigError> {
    Ok(client_config(settings)?.map(|tls| tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone())))
}

/// Connects. The returned driver must be polled (see [`drive_connection`]) for the client to
/// work; it is a separate value so the caller decides where notifications go.
pub async fn connect(settings: &ConnectConfig, role: &str) -> Result<(Client, Box<dyn ConnectionDriver>), PgError> {
    let config = sql_config(settings, role);
    let context = || format!("cannot connect to PostgreSQL at {} as {:?}", settings.address(), settings.user);
    Ok(match sql_tls(settings)? {
        None => {
            let (client, connection) =
                config.connect(tokio_postgres::NoTls).await.map_err(|e| PgError::new(context(), e))?;
            (client, Box::new(connection))
        }
        Some(tls) => {
            let (client, connection) = config.connect(tls).await.map_err(|e| PgError::new(context(), e))?;
            (client, Box::new(connection))
        }
    })
}

/// Connects, with the connection driven by a task of its own (notifications ignored).
pub async fn connect_driven(settings: &ConnectConfig, role: &str) -> Result<Client, PgError> {
    let (client, driver) = connect(settings, role).await?;
    tokio::spawn(drive_connection(driver, |_, _| {}));
    Ok(client)
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
        tracing::debug!(error = %crate::describe(&e), "SQL connection ended");
    }
}

/// Asks the server to cancel what `client`'s session is running (best effort: a session that is
/// gone needs no cancelling).
pub async fn cancel(client: &Client, settings: &ConnectConfig) {
    let token = client.cancel_token();
    let result = match sql_tls(settings) {
        Ok(None) => token.cancel_query(tokio_postgres::NoTls).await,
        Ok(Some(tls)) => token.cancel_query(tls).await,
        Err(_) => return,
    };
    if let Err(e) = result {
        tracing::debug!(error = %crate::describe(&e), "cannot cancel a query");
    }
}
