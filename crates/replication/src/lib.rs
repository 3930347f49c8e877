//! A small client for PostgreSQL's logical replication protocol.
//!
//! [`ReplicationClient::connect`] opens a `replication=database` session (TCP or Unix socket,
//! TLS with libpq's `sslmode` meanings, cleartext/MD5/SCRAM-SHA-256 authentication), runs
//! replication commands (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`) and starts streaming with
//! `START_REPLICATION ... LOGICAL`, passing any plugin options. Streaming yields a
//! [`ReplicationReader`] (XLogData and keepalives) and a [`StatusSender`] (standby status
//! updates). It knows nothing of events or brokers.

//!
//! Connection settings and TLS are [`pgevents_pg`]'s, shared with the SQL connections.

mod client;
mod error;
mod stream;
mod wire;

pub use client::{check_identifier, CreatedSlot, ReplicationClient, SlotSnapshot, SystemInfo, SESSION_SETTINGS};
pub use error::{ReplicationError, ServerError};
pub use stream::{ReplicationReader, StatusSender, WalMessage};

/// Entry points for the fuzz targets (`fuzz/`): the parsing the client does on bytes from the
/// server, without a connection.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    /// Splits `bytes` into backend messages as the client does, and reads each CopyData as a
    /// replication message; stops at the first error or an incomplete message.
    pub fn server_bytes(bytes: &[u8]) -> usize {
        let mut buf = bytes::BytesMut::from(bytes);
        let mut messages = 0;
        while let Ok(Some(frame)) = crate::wire::next_frame(&mut buf) {
            messages += 1;
            if let crate::wire::Backend::CopyData(data) = frame {
                let _ = crate::stream::wal_message(data);
            }
        }
        messages
    }
}
