//! JSON text bound as a jsonb parameter as is: exact numerics and no re-encoding.

use bytes::{BufMut, BytesMut};
use postgres_types::{to_sql_checked, IsNull, ToSql, Type};

/// A JSON document (already serialised) to bind as a `jsonb` or `json` parameter.
#[derive(Debug, Clone, Copy)]
pub struct JsonbText<'a>(pub &'a str);

impl ToSql for JsonbText<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            // jsonb's binary format: a version byte, then the text.
            out.put_u8(1);
        }
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}
