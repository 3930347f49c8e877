//! Pure decoders for PostgreSQL logical decoding output.
//!
//! [`Decoder`] turns the payload of one XLogData message (from `pgoutput` or `wal2json`) into a
//! [`Decoded`] value; [`encode`] turns changes into event bodies. Nothing here does I/O: facts
//! from the catalog are asked for with [`DecodeError::NeedCatalog`] and supplied through
//! [`Catalog`]. The type mapping (PostgreSQL text to JSON) is in [`value`].

mod catalog;
mod change;
mod cursor;
pub mod encode;
mod error;
pub mod json;
pub mod outbox;
mod pgoutput;
pub mod signal;
pub mod time;
mod transaction;
mod tuple;
pub mod types;
pub mod value;
mod wal2json;

pub use catalog::{Catalog, CatalogNeed, PrimaryKey, TableRef};
pub use change::{Decoded, LogicalMessage, RowChange, TxBegin};
pub use error::DecodeError;
pub use pgoutput::PgOutputDecoder;
pub use transaction::{
    BadContext, BeginWhileOpen, MessageIgnored, Signals, Taken, TransactionBuilder, TxOutcome, CONTEXT_PREFIX,
    DEFAULT_MAX_CONTEXT_BYTES,
};
pub use tuple::Tuple;
pub use types::{ScalarKind, TypeInfo, ValueKind};
pub use value::ValueOptions;
pub use wal2json::Wal2JsonDecoder;

/// The output plugins pgevents reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    PgOutput,
    Wal2Json,
}

impl Plugin {
    /// The plugin's name as PostgreSQL knows it.
    pub fn name(self) -> &'static str {
        match self {
            Plugin::PgOutput => "pgoutput",
            Plugin::Wal2Json => "wal2json",
        }
    }
}

/// A decoder for either plugin.
#[derive(Debug)]
pub enum Decoder {
    PgOutput(PgOutputDecoder),
    Wal2Json(Wal2JsonDecoder),
}

impl Decoder {
    pub fn new(plugin: Plugin, options: ValueOptions) -> Decoder {
        match plugin {
            Plugin::PgOutput => Decoder::PgOutput(PgOutputDecoder::new(options)),
            Plugin::Wal2Json => Decoder::Wal2Json(Wal2JsonDecoder::new(options)),
        }
    }

    /// Decodes the payload of one XLogData message.
    pub fn decode(&mut self, data: &[u8], catalog: &Catalog) -> Result<Decoded, DecodeError> {
        match self {
            Decoder::PgOutput(d) => d.decode(data, catalog),
            Decoder::Wal2Json(d) => d.decode(data, catalog),
        }
    }

    /// Lets the decoder cache catalog facts it asked for.
    pub fn catalog_updated(&mut self, catalog: &Catalog) {
        if let Decoder::PgOutput(d) = self {
            d.cache_primary_keys(catalog);
        }
    }
}
