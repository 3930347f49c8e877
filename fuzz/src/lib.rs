//! What the decoder targets share: splitting the input into messages and decoding them as the
//! producer's reader does (catalog look-ups answered, transactions assembled, events encoded).

use pgevents_decode::encode::close_event;
use pgevents_decode::{
    Catalog, CatalogNeed, DecodeError, Decoded, Decoder, Plugin, PrimaryKey, TransactionBuilder, TypeInfo, ValueOptions,
};

/// The input as messages: each is a big-endian u16 length and that many bytes.
pub fn messages(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 2);
        let (message, rest) = data[2..].split_at(len);
        data = rest;
        Some(message)
    })
}

/// Decodes every message with `plugin` as the reader does; must never panic.
pub fn decode_stream(plugin: Plugin, data: &[u8]) {
    let options = ValueOptions { numeric_as_string: data.first().is_some_and(|b| b & 1 == 1) };
    let mut decoder = Decoder::new(plugin, options);
    let mut catalog = Catalog::default();
    let mut tx = TransactionBuilder::default();
    for message in messages(data) {
        let mut decoded = None;
        for _ in 0..8 {
            match decoder.decode(message, &catalog) {
                Ok(d) => {
                    decoded = Some(d);
                    break;
                }
                // Answer look-ups as the database would, with a plain text type and a one-column key.
                Err(DecodeError::NeedCatalog(CatalogNeed::Type(oid))) => catalog.insert_types([TypeInfo {
                    oid,
                    typtype: b'b',
                    category: if oid % 7 == 0 { b'A' } else { b'S' },
                    elem: if oid % 7 == 0 { 25 } else { 0 },
                    base: 0,
                    delim: b',',
                }]),
                Err(DecodeError::NeedCatalog(CatalogNeed::PrimaryKey(table))) => {
                    catalog.insert_primary_key(&table, PrimaryKey::new(vec!["id".into()]));
                    decoder.catalog_updated(&catalog);
                }
                Err(_) => break,
            }
        }
        let Some(decoded) = decoded else { continue };
        let mut body = Vec::new();
        match decoded {
            Decoded::Begin(begin) => {
                let _ = tx.begin(begin);
            }
            Decoded::Row(change) => {
                if tx.row(&change, &mut body).is_some() {
                    close_event(&mut body, None);
                }
            }
            Decoded::Truncate(tables) => {
                for table in &tables {
                    let _ = tx.truncate(table, &mut body);
                }
            }
            Decoded::Message(message) => {
                let _ = tx.message(&message);
            }
            Decoded::Relation(table) => catalog.forget_primary_key(&table),
            Decoded::Commit => {
                if let Some(outcome) = tx.commit() {
                    let mut event = Vec::from(&b"{\"x\":1"[..]);
                    close_event(&mut event, outcome.context.as_deref());
                }
            }
            Decoded::Ignored => {}
        }
    }
}
