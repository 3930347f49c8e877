//! A small client for PostgreSQL's logical replication protocol.
//!
//! [`ReplicationClient::connect`] opens a `replication=database` session (TCP or Unix socket,
//! TLS with libpq's `sslmode` meanings, cleartext/MD5/SCRAM-SHA-256 authentication), runs
//! replication commands (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`) and starts streaming with
//! `START_REPLICATION ... LOGICAL`, passing any plugin options. Streaming yields a
//! [`ReplicationReader`] (XLogData and keepalives) and a [`StatusSender`] (standby status
//! updates). It knows nothing of events or brokers.

mod client;
mod error;
mod sql;
mod stream;
pub mod tls;
mod wire;

pub use client::{check_identifier, ConnectConfig, CreatedSlot, ReplicationClient, SlotSnapshot, SystemInfo};
pub use error::{ReplicationError, ServerError};
pub use sql::{
    describe_sql_error, drive_connection, sql_config, sql_connect, sql_error_is_transient, sql_tls, ConnectionDriver,
    SqlConnectError,
};
pub use stream::{ReplicationReader, StatusSender, WalMessage};
pub use tls::TlsMode;
