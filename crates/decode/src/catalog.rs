//! What the decoders need to know from PostgreSQL's catalog, and how they ask for it.
//!
//! Decoders are pure: when a change needs a fact they don't have (the kind of a user-defined
//! type, a table's primary key), decoding fails with [`CatalogNeed`]; the producer looks the fact
//! up with ordinary SQL, records it here and decodes the same bytes again.

use std::collections::HashMap;
use std::sync::Arc;

use crate::json;
use crate::types::{TypeCatalog, TypeInfo, ValueKind};

/// A table, by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableRef {
    pub schema: String,
    pub name: String,
    /// `schema.name`.
    pub qualified: String,
}

impl TableRef {
    pub fn new(schema: &str, name: &str) -> TableRef {
        TableRef { schema: schema.to_owned(), name: name.to_owned(), qualified: format!("{schema}.{name}") }
    }
}

/// The primary key columns of a table, in key order (empty without a primary key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrimaryKey {
    columns: Vec<String>,
    keys_json: Vec<Vec<u8>>,
}

impl PrimaryKey {
    pub fn new(columns: Vec<String>) -> PrimaryKey {
        let keys_json = columns
            .iter()
            .map(|c| {
                let mut key = Vec::with_capacity(c.len() + 2);
                json::write_str(&mut key, c);
                key
            })
            .collect();
        PrimaryKey { columns, keys_json }
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The escaped JSON keys of the columns, quotes included.
    pub fn keys_json(&self) -> &[Vec<u8>] {
        &self.keys_json
    }
}

/// A fact a decoder needs from the catalog before it can decode a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogNeed {
    /// The `pg_type` row of this OID.
    Type(u32),
    /// The primary key of this table.
    PrimaryKey(TableRef),
}

/// Catalog facts gathered so far.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    types: TypeCatalog,
    primary_keys: HashMap<String, Arc<PrimaryKey>>,
}

impl Catalog {
    pub fn insert_types(&mut self, infos: impl IntoIterator<Item = TypeInfo>) {
        self.types.insert(infos);
    }

    pub fn insert_primary_key(&mut self, table: &TableRef, key: PrimaryKey) {
        self.primary_keys.insert(table.qualified.clone(), Arc::new(key));
    }

    /// Forgets a table's primary key (its definition may have changed).
    pub fn forget_primary_key(&mut self, table: &TableRef) {
        self.primary_keys.remove(&table.qualified);
    }

    pub fn type_kind(&self, oid: u32) -> Result<ValueKind, CatalogNeed> {
        self.types.kind(oid).map_err(CatalogNeed::Type)
    }

    pub fn primary_key(&self, table: &TableRef) -> Result<Arc<PrimaryKey>, CatalogNeed> {
        self.primary_keys.get(&table.qualified).cloned().ok_or_else(|| CatalogNeed::PrimaryKey(table.clone()))
    }
}
