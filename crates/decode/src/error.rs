//! Why a message could not be decoded.

use crate::CatalogNeed;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not an error: the catalog must be consulted, then the same message decoded again.
    #[error("catalog information needed: {0:?}")]
    NeedCatalog(CatalogNeed),
    /// The bytes do not follow the plugin's format.
    #[error("malformed {plugin} message: {detail}")]
    Malformed { plugin: &'static str, detail: String },
    /// A change refers to a relation that was never described (pgoutput `R` message).
    #[error("pgoutput change for relation OID {0} that was never described by a Relation message")]
    UnknownRelation(u32),
    /// A change of this table does not match what is known of the table.
    #[error("change on table {table} cannot be decoded: {detail}")]
    Table { table: String, detail: String },
}

impl From<CatalogNeed> for DecodeError {
    fn from(need: CatalogNeed) -> Self {
        DecodeError::NeedCatalog(need)
    }
}
