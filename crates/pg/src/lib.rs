//! PostgreSQL plumbing, in one place, for every pgevents stage:
//!
//! - [`ConnectConfig`], [`TlsMode`] and [`ChannelBinding`]: where and as whom to connect, with
//!   libpq's meanings of `sslmode` and `channel_binding`; the replication client and the SQL
//!   connections use the same settings.
//! - [`connect`], [`drive_connection`] and [`pool`]: SQL connections (tokio-postgres) and the
//!   pool of the worker stages.
//! - [`PgError`]: a failed SQL operation, with what was being done, the server's message
//!   (SQLSTATE, detail, hint) and an [`ErrorKind`] decided from the SQLSTATE where the error is
//!   made.
//! - [`JsonbText`]: JSON text bound as a `jsonb` parameter without re-encoding.
//! - [`schema`]: the versioned migrations of the `pgevents` schema; every table pgevents keeps
//!   in the database is created through it.

mod connect;
mod error;
mod jsonb;
pub mod listen;
pub mod pgpass;
mod pool;
pub mod schema;
mod settings;
pub mod tls;

pub use connect::{cancel, connect, connect_driven, drive_connection, ConnectionDriver};
pub use error::{describe, PgError};
pub use jsonb::JsonbText;
pub use pgevents_retry::ErrorKind;
pub use pool::{pool, GenericClient, Pool, Pooled};
pub use settings::{ConnectConfig, SearchPath};
pub use tls::{ChannelBinding, ClientCert, TlsConfigError, TlsMode};
