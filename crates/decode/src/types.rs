//! How a PostgreSQL type's text output maps to JSON.
//!
//! Built-in types are known by OID. Everything else (domains, enums, composites, arrays of those,
//! extension types) is described by rows of `pg_type`, which the producer looks up on demand
//! (see [`crate::CatalogNeed`]) and hands to [`TypeCatalog::insert`].

use std::collections::HashMap;

/// The JSON shape of a scalar (non-array) value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarKind {
    /// `true` / `false`.
    Bool,
    /// A JSON integer, PostgreSQL's digits.
    Integer,
    /// A JSON number; NaN and infinities as strings.
    Float,
    /// An exact JSON number with PostgreSQL's digits (or a string, by option); NaN and infinities
    /// as strings.
    Numeric,
    /// Embedded JSON.
    Json,
    /// Base64 of the bytes.
    Bytea,
    /// RFC 3339 with offset (`Z` for UTC).
    Timestamptz,
    /// ISO 8601 without offset.
    Timestamp,
    /// A JSON string of PostgreSQL's text.
    Text,
}

/// The JSON shape of a column's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Scalar(ScalarKind),
    /// A (possibly multi-dimensional) array of the element kind, as nested JSON arrays.
    Array(ScalarKind),
}

/// The kind of a built-in type, or `None` when the OID needs a catalog look-up.
pub fn builtin_kind(oid: u32) -> Option<ValueKind> {
    use ScalarKind::*;
    let scalar = |k| Some(ValueKind::Scalar(k));
    let array = |k| Some(ValueKind::Array(k));
    match oid {
        16 => scalar(Bool),
        20 | 21 | 23 | 26 | 28 | 29 => scalar(Integer),
        700 | 701 => scalar(Float),
        1700 => scalar(Numeric),
        114 | 3802 => scalar(Json),
        17 => scalar(Bytea),
        1184 => scalar(Timestamptz),
        1114 => scalar(Timestamp),
        // text-like and other types whose text is the best JSON form
        18 | 19 | 22 | 25 | 30 | 142 | 650 | 790 | 829 | 869 | 1042 | 1043 | 1082 | 1083 | 1186 | 1266 | 1560
        | 1562 | 2950 | 3614 | 4072 | 600 | 601 | 602 | 603 | 604 | 628 | 718 | 774 | 3904 | 3906 | 3908 | 3910
        | 3912 | 3926 | 2249 | 705 => scalar(Text),
        1000 => array(Bool),
        1005 | 1007 | 1016 | 1028 | 1011 | 1012 => array(Integer),
        1021 | 1022 => array(Float),
        1231 => array(Numeric),
        199 | 3807 => array(Json),
        1001 => array(Bytea),
        1185 => array(Timestamptz),
        1115 => array(Timestamp),
        1002 | 1003 | 1009 | 1014 | 1015 | 1182 | 1183 | 1187 | 1270 | 2951 | 1041 | 651 | 791 | 143 | 4073 | 1040
        | 1561 | 1563 | 3643 | 3905 | 3907 | 3909 | 3911 | 3913 | 3927 | 1017 | 1018 | 1019 | 1027 | 629 | 719 => {
            array(Text)
        }
        // box[] uses ';' as its delimiter: keep its text
        1020 => scalar(Text),
        _ => None,
    }
}

/// One row of `pg_type`, as much of it as the mapping needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    pub oid: u32,
    /// `typtype`: b base, c composite, d domain, e enum, p pseudo, r range, m multirange.
    pub typtype: u8,
    /// `typcategory`: A array, ...
    pub category: u8,
    /// `typelem`: element type of an array, else 0.
    pub elem: u32,
    /// `typbasetype`: base type of a domain, else 0.
    pub base: u32,
    /// `typdelim`: the array element delimiter.
    pub delim: u8,
}

/// Type knowledge gathered from the catalog for non-built-in OIDs.
#[derive(Debug, Default, Clone)]
pub struct TypeCatalog {
    infos: HashMap<u32, TypeInfo>,
}

impl TypeCatalog {
    /// Records catalog rows. An OID the catalog did not know (a dropped type) should be inserted
    /// with `typtype` 0: it then maps to text.
    pub fn insert(&mut self, infos: impl IntoIterator<Item = TypeInfo>) {
        for info in infos {
            self.infos.insert(info.oid, info);
        }
    }

    /// The kind of a type, or `Err(oid)` naming the first OID whose `pg_type` row is needed.
    pub fn kind(&self, oid: u32) -> Result<ValueKind, u32> {
        if let Some(kind) = builtin_kind(oid) {
            return Ok(kind);
        }
        let info = self.infos.get(&oid).ok_or(oid)?;
        if info.typtype == b'd' && info.base != 0 {
            return self.kind(info.base);
        }
        if info.category == b'A' && info.elem != 0 {
            if info.delim != b',' {
                return Ok(ValueKind::Scalar(ScalarKind::Text));
            }
            return Ok(match self.kind(info.elem)? {
                ValueKind::Scalar(elem) => ValueKind::Array(elem),
                ValueKind::Array(elem) => ValueKind::Array(elem),
            });
        }
        Ok(ValueKind::Scalar(ScalarKind::Text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(oid: u32, typtype: u8, category: u8, elem: u32, base: u32) -> TypeInfo {
        TypeInfo { oid, typtype, category, elem, base, delim: b',' }
    }

    #[test]
    fn builtins_need_no_catalog() {
        let catalog = TypeCatalog::default();
        assert_eq!(catalog.kind(23), Ok(ValueKind::Scalar(ScalarKind::Integer)));
        assert_eq!(catalog.kind(1009), Ok(ValueKind::Array(ScalarKind::Text)));
        assert_eq!(catalog.kind(99_999), Err(99_999));
    }

    #[test]
    fn domains_enums_and_their_arrays() {
        let mut catalog = TypeCatalog::default();
        // domain positive_int over int4, its array, an enum and its array
        catalog.insert([
            info(16_400, b'd', b'N', 0, 23),
            info(16_399, b'b', b'A', 16_400, 0),
            info(16_500, b'e', b'E', 0, 0),
            info(16_499, b'b', b'A', 16_500, 0),
        ]);
        assert_eq!(catalog.kind(16_400), Ok(ValueKind::Scalar(ScalarKind::Integer)));
        assert_eq!(catalog.kind(16_399), Ok(ValueKind::Array(ScalarKind::Integer)));
        assert_eq!(catalog.kind(16_500), Ok(ValueKind::Scalar(ScalarKind::Text)));
        assert_eq!(catalog.kind(16_499), Ok(ValueKind::Array(ScalarKind::Text)));
    }

    #[test]
    fn a_domain_over_an_unknown_type_asks_for_it() {
        let mut catalog = TypeCatalog::default();
        catalog.insert([info(16_600, b'd', b'S', 0, 16_601)]);
        assert_eq!(catalog.kind(16_600), Err(16_601));
    }
}
