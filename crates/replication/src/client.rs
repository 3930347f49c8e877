//! Connecting (TCP or Unix socket, TLS, startup, password/MD5/SCRAM authentication), simple
//! queries and the replication commands that precede streaming.

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use pgevents_event::Lsn;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::stream::{ReplicationReader, StatusSender};
use crate::wire::{Backend, FrameReader};
use crate::ReplicationError;
use pgevents_pg::tls::{client_config, server_name, tls_server_end_point};
use pgevents_pg::{ChannelBinding as BindingMode, ConnectConfig, TlsMode};

/// A byte stream to the server: TCP, TLS over TCP, or a Unix socket.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Session settings that make the plugins' text output predictable (ISO dates in UTC, exact
/// floats, hex bytea), and names looked up in pg_catalog first, never in a schema others write.
pub const SESSION_SETTINGS: [(&str, &str); 7] = [
    ("search_path", "pg_catalog, pg_temp"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("IntervalStyle", "postgres"),
];

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    pub dbname: Option<String>,
}

/// What to do with the snapshot of a slot being created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotSnapshot {
    /// No snapshot.
    NoExport,
    /// Export it (named in [`CreatedSlot::snapshot_name`]) until the next command on this
    /// connection, for an initial copy with `SET TRANSACTION SNAPSHOT`.
    Export,
}

/// What `CREATE_REPLICATION_SLOT` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Streaming from the slot starts here.
    pub consistent_point: Lsn,
    pub snapshot_name: Option<String>,
}

/// A connection in replication mode (`replication=database`), before streaming starts.
pub struct ReplicationClient {
    frames: FrameReader<Box<dyn Io>>,
    out: BytesMut,
    parameters: HashMap<String, String>,
}

/// Where a SASL (SCRAM) exchange stands.
enum Sasl {
    NotStarted,
    /// The client has sent its first message; `bound`: with channel binding.
    Started {
        state: Box<ScramSha256>,
        bound: bool,
    },
    /// The server's final message was verified: it knows the password (and, bound, sits at the
    /// end of this very TLS session).
    Verified {
        bound: bool,
    },
}

/// An open connection, and the channel binding data of its TLS session (the server
/// certificate's `tls-server-end-point` hash) when there is one.
struct Socket {
    io: Box<dyn Io>,
    end_point: Option<Vec<u8>>,
}

impl Socket {
    fn plain(io: impl Io) -> Socket {
        Socket { io: Box::new(io), end_point: None }
    }
}

async fn open_socket(config: &ConnectConfig) -> Result<Socket, ReplicationError> {
    let addr = config.address();
    let connect_error = |source| ReplicationError::Connect { addr: addr.clone(), source };
    if config.host.starts_with('/') {
        return Ok(Socket::plain(UnixStream::connect(&addr).await.map_err(connect_error)?));
    }
    let tcp = TcpStream::connect((config.host.as_str(), config.port)).await.map_err(connect_error)?;
    tcp.set_nodelay(true).map_err(connect_error)?;
    let keepalive =
        socket2::TcpKeepalive::new().with_time(Duration::from_secs(30)).with_interval(Duration::from_secs(10));
    socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive).map_err(connect_error)?;
    let Some(tls) = client_config(config)? else {
        return Ok(Socket::plain(tcp));
    };
    // SSLRequest: the server answers one byte, S (go ahead) or N (no TLS here).
    let mut tcp = tcp;
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    match tcp.read_u8().await? {
        b'S' => {
            let connector = tokio_rustls::TlsConnector::from(tls);
            let stream = connector
                .connect(server_name(&config.host)?, tcp)
                .await
                .map_err(|source| ReplicationError::Tls { addr: addr.clone(), source })?;
            let end_point = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|c| tls_server_end_point(c));
            Ok(Socket { io: Box::new(stream), end_point })
        }
        b'N' if config.tls == TlsMode::Prefer => Ok(Socket::plain(tcp)),
        b'N' => Err(ReplicationError::TlsRefused { addr }),
        other => Err(ReplicationError::Protocol(format!("unexpected answer {other:#x} to SSLRequest"))),
    }
}

impl ReplicationClient {
    /// Connects, negotiates TLS, authenticates and waits until the server is ready.
    pub async fn connect(config: &ConnectConfig) -> Result<ReplicationClient, ReplicationError> {
        let seconds = config.connect_timeout.as_secs();
        tokio::time::timeout(config.connect_timeout, Self::connect_inner(config))
            .await
            .map_err(|_| ReplicationError::ConnectTimeout { addr: config.address(), seconds })?
    }

    async fn connect_inner(config: &ConnectConfig) -> Result<ReplicationClient, ReplicationError> {
        let Socket { io, end_point } = open_socket(config).await?;
        let mut client =
            ReplicationClient { frames: FrameReader::new(io), out: BytesMut::new(), parameters: HashMap::new() };
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &config.user),
            ("database", &config.dbname),
            ("replication", "database"),
            ("application_name", &config.application_name),
        ];
        params.extend(SESSION_SETTINGS);
        frontend::startup_message(params, &mut client.out)?;
        client.flush().await?;
        client.authenticate(config, end_point).await?;
        loop {
            match client.frames.next().await? {
                Backend::ParameterStatus { name, value } => {
                    client.parameters.insert(name, value);
                }
                Backend::ReadyForQuery => return Ok(client),
                Backend::Error(e) => return Err(ReplicationError::Server(e)),
                Backend::Notice(n) => tracing::info!(notice = %n, "PostgreSQL notice"),
                _ => {}
            }
        }
    }

    async fn flush(&mut self) -> Result<(), ReplicationError> {
        let io = self.frames.io_mut();
        io.write_all(&self.out).await?;
        io.flush().await?;
        self.out.clear();
        Ok(())
    }

    /// Answers the server's authentication requests. With `channel_binding=require`, only SCRAM
    /// bound to the TLS session (SCRAM-SHA-256-PLUS) is accepted: a request for a cleartext or
    /// MD5 password, plain SCRAM, or no authentication at all is refused.
    async fn authenticate(
        &mut self,
        config: &ConnectConfig,
        end_point: Option<Vec<u8>>,
    ) -> Result<(), ReplicationError> {
        let required = config.channel_binding == BindingMode::Require;
        let refuse = |what: &str| {
            Err(ReplicationError::ChannelBindingRequired { what: what.to_owned(), addr: config.address() })
        };
        let password = || {
            config
                .password
                .as_deref()
                .map(str::as_bytes)
                .ok_or_else(|| ReplicationError::PasswordRequired { user: config.user.clone() })
        };
        let mut exchange = Sasl::NotStarted;
        loop {
            let (code, data) = match self.frames.next().await? {
                Backend::Authentication { code, data } => (code, data),
                Backend::Error(e) => return Err(ReplicationError::Server(e)),
                Backend::Notice(_) => continue,
                other => return Err(ReplicationError::Protocol(format!("expected authentication, got {other:?}"))),
            };
            match code {
                // The server says the client is in. After SCRAM, only once the server has proved
                // it knows the password (its final message verified): a server that skips that
                // is not the one the client meant to reach.
                0 => {
                    return match exchange {
                        Sasl::Started { .. } => Err(ReplicationError::Protocol(
                            "the server ended SCRAM authentication before proving it knows the password (no verified server-final-message): refused, it may be an impostor".into(),
                        )),
                        Sasl::Verified { bound: true } => Ok(()),
                        _ if required => refuse("authenticated the client without channel binding"),
                        _ => Ok(()),
                    }
                }
                3 if required => return refuse("asked for a cleartext password"),
                5 if required => return refuse("asked for an MD5 password"),
                3 => frontend::password_message(password()?, &mut self.out)?,
                5 => {
                    let salt: [u8; 4] = data
                        .get(..4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| ReplicationError::Protocol("MD5 request without salt".into()))?;
                    let hash = md5_hash(config.user.as_bytes(), password()?, salt);
                    frontend::password_message(hash.as_bytes(), &mut self.out)?;
                }
                10 if !matches!(exchange, Sasl::NotStarted) => {
                    return Err(ReplicationError::Protocol("the server started SASL authentication twice".into()))
                }
                10 => {
                    let offers = |name: &str| data.split(|&b| b == 0).any(|m| m == name.as_bytes());
                    let usable = end_point.clone().filter(|_| config.channel_binding != BindingMode::Disable);
                    let (mechanism, binding, bound) = match usable {
                        Some(hash) if offers(SCRAM_SHA_256_PLUS) => {
                            (SCRAM_SHA_256_PLUS, ChannelBinding::tls_server_end_point(hash), true)
                        }
                        _ if required => return refuse("does not offer SCRAM-SHA-256-PLUS over this connection"),
                        // TLS that could bind, but the server did not offer it ('y').
                        Some(_) if offers(SCRAM_SHA_256) => (SCRAM_SHA_256, ChannelBinding::unrequested(), false),
                        None if offers(SCRAM_SHA_256) => (SCRAM_SHA_256, ChannelBinding::unsupported(), false),
                        _ => return Err(ReplicationError::UnsupportedAuth(code)),
                    };
                    let state = ScramSha256::new(password()?, binding);
                    frontend::sasl_initial_response(mechanism, state.message(), &mut self.out)?;
                    exchange = Sasl::Started { state: Box::new(state), bound };
                }
                11 => {
                    let Sasl::Started { state, .. } = &mut exchange else {
                        return Err(ReplicationError::Protocol("SASL continue outside an exchange".into()));
                    };
                    state.update(&data).map_err(|e| ReplicationError::Protocol(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(state.message(), &mut self.out)?;
                }
                12 => {
                    let Sasl::Started { mut state, bound } = std::mem::replace(&mut exchange, Sasl::NotStarted) else {
                        return Err(ReplicationError::Protocol("SASL final outside an exchange".into()));
                    };
                    state.finish(&data).map_err(|e| ReplicationError::Protocol(format!("SCRAM: {e}")))?;
                    exchange = Sasl::Verified { bound };
                    continue;
                }
                other => return Err(ReplicationError::UnsupportedAuth(other)),
            }
            self.flush().await?;
        }
    }

    /// A parameter the server reported at startup (`server_version`, `server_encoding`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server's major version times 10000, e.g. 150020 for 15.20.
    pub fn server_version_num(&self) -> Option<u32> {
        let version = self.parameter("server_version")?;
        let numeric: String = version.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        let mut parts = numeric.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next().flatten().unwrap_or(0);
        Some(if major >= 10 { major * 10_000 + minor } else { major * 10_000 + minor * 100 })
    }

    /// Runs one command with the simple query protocol and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        frontend::query(sql, &mut self.out)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.frames.next().await? {
                Backend::DataRow { values } => rows.push(values),
                Backend::Error(e) => error = Some(e),
                Backend::Notice(n) => tracing::info!(notice = %n, "PostgreSQL notice"),
                Backend::ReadyForQuery => break,
                Backend::CopyBoth | Backend::CopyOut => {
                    return Err(ReplicationError::Protocol(format!("{sql:?} unexpectedly started a COPY")));
                }
                _ => {}
            }
        }
        match error {
            Some(e) => Err(ReplicationError::Server(e)),
            None => Ok(rows),
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows.first().ok_or_else(|| ReplicationError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let field = |i: usize| row.get(i).cloned().flatten();
        let xlogpos = field(2)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ReplicationError::Protocol("IDENTIFY_SYSTEM: bad xlogpos".into()))?;
        Ok(SystemInfo {
            system_id: field(0).unwrap_or_default(),
            timeline: field(1).and_then(|s| s.parse().ok()).unwrap_or(0),
            xlogpos,
            dbname: field(3),
        })
    }

    /// `CREATE_REPLICATION_SLOT name LOGICAL plugin`.
    pub async fn create_logical_slot(
        &mut self,
        slot: &str,
        plugin: &str,
        snapshot: SlotSnapshot,
    ) -> Result<CreatedSlot, ReplicationError> {
        check_identifier("slot", slot)?;
        check_identifier("plugin", plugin)?;
        let snapshot_clause = match snapshot {
            SlotSnapshot::NoExport => "NOEXPORT_SNAPSHOT",
            SlotSnapshot::Export => "EXPORT_SNAPSHOT",
        };
        let rows = self
            .simple_query(&format!("CREATE_REPLICATION_SLOT \"{slot}\" LOGICAL \"{plugin}\" {snapshot_clause}"))
            .await?;
        let row =
            rows.first().ok_or_else(|| ReplicationError::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
        let consistent_point = row
            .get(1)
            .cloned()
            .flatten()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ReplicationError::Protocol("CREATE_REPLICATION_SLOT: bad consistent_point".into()))?;
        Ok(CreatedSlot { consistent_point, snapshot_name: row.get(2).cloned().flatten() })
    }

    /// `START_REPLICATION SLOT name LOGICAL start (options)`: from here on the connection
    /// streams; it is split into a reader of WAL messages and a sender of status updates.
    pub async fn start_logical_replication(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(String, String)],
    ) -> Result<(ReplicationReader, StatusSender), ReplicationError> {
        check_identifier("slot", slot)?;
        let mut sql = format!("START_REPLICATION SLOT \"{slot}\" LOGICAL {start}");
        if !options.is_empty() {
            let rendered: Vec<String> = options
                .iter()
                .map(|(k, v)| format!("\"{}\" '{}'", k.replace('"', "\"\""), v.replace('\'', "''")))
                .collect();
            sql.push_str(&format!(" ({})", rendered.join(", ")));
        }
        frontend::query(&sql, &mut self.out)?;
        self.flush().await?;
        loop {
            match self.frames.next().await? {
                Backend::CopyBoth => break,
                Backend::Error(e) => {
                    // The server follows an error with ReadyForQuery; the connection is dropped anyway.
                    return Err(ReplicationError::Server(e));
                }
                Backend::Notice(n) => tracing::info!(notice = %n, "PostgreSQL notice"),
                _ => {}
            }
        }
        let (io, buf) = self.frames.into_inner();
        let (read, write) = tokio::io::split(io);
        Ok((ReplicationReader::new(FrameReader::from_parts(read, buf)), StatusSender::new(write)))
    }

    /// Ends the session politely.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.out);
        let _ = self.flush().await;
    }
}

/// Slot and plugin names are restricted to `[a-z0-9_]` by PostgreSQL; anything else is refused
/// here so that it can never alter a replication command.
pub fn check_identifier(what: &str, name: &str) -> Result<(), ReplicationError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ReplicationError::InvalidName { what: what.to_owned(), name: name.to_owned() })
    }
}
