//! A delivery's body as its publisher meant it: gunzipped when `content_encoding` is `gzip`,
//! never larger than the caller allows (a small compressed body can expand without bound).

use std::borrow::Cow;
use std::io::Read;

use crate::Delivery;

/// Why a body cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("cannot gunzip the body: {0}")]
    Gunzip(#[source] std::io::Error),
    #[error("the body is larger than {limit} bytes once decompressed")]
    TooLarge { limit: usize },
    #[error("unknown content_encoding {0:?} (pgevents publishes plain JSON or gzip)")]
    UnknownEncoding(String),
}

impl Delivery {
    /// The body, decompressed according to `content_encoding`, at most `max_bytes` long once
    /// decompressed.
    pub fn decoded_body(&self, max_bytes: usize) -> Result<Cow<'_, [u8]>, BodyError> {
        decode_body(&self.body, self.properties.content_encoding().map(String::as_str), max_bytes)
    }
}

/// A body as its publisher meant it, whatever carried it (an AMQP 0-9-1 delivery, a stream
/// message): gunzipped when `encoding` is `gzip`, at most `max_bytes` long once decompressed.
pub fn decode_body<'a>(body: &'a [u8], encoding: Option<&str>, max_bytes: usize) -> Result<Cow<'a, [u8]>, BodyError> {
    match encoding {
        None | Some("") | Some("identity") => Ok(Cow::Borrowed(body)),
        Some("gzip") => gunzip(body, max_bytes).map(Cow::Owned),
        Some(other) => Err(BodyError::UnknownEncoding(other.to_owned())),
    }
}

fn gunzip(body: &[u8], max_bytes: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max_bytes));
    let limit = u64::try_from(max_bytes).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::GzDecoder::new(body).take(limit).read_to_end(&mut out).map_err(BodyError::Gunzip)?;
    if out.len() > max_bytes {
        return Err(BodyError::TooLarge { limit: max_bytes });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use amqprs::BasicProperties;

    use super::*;

    fn delivery(body: Vec<u8>, encoding: Option<&str>) -> Delivery {
        let mut properties = BasicProperties::default();
        if let Some(encoding) = encoding {
            properties.with_content_encoding(encoding);
        }
        Delivery {
            delivery_tag: 1,
            exchange: String::new(),
            routing_key: String::new(),
            redelivered: false,
            properties,
            body,
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn plain_and_gzipped_bodies_read_the_same() {
        let json = br#"{"table_name":"public.users"}"#.to_vec();
        assert_eq!(&*delivery(json.clone(), None).decoded_body(1 << 20).unwrap(), &json[..]);
        assert_eq!(&*delivery(gzip(&json), Some("gzip")).decoded_body(1 << 20).unwrap(), &json[..]);
    }

    #[test]
    fn refuses_bombs_garbage_and_unknown_encodings() {
        let bomb = gzip(&vec![b'0'; 10 << 20]);
        assert!(bomb.len() < 64 << 10);
        let err = delivery(bomb, Some("gzip")).decoded_body(1 << 20).unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit } if limit == 1 << 20), "{err}");
        let err = delivery(b"not gzip".to_vec(), Some("gzip")).decoded_body(1 << 20).unwrap_err();
        assert!(matches!(err, BodyError::Gunzip(_)), "{err}");
        let err = delivery(b"x".to_vec(), Some("br")).decoded_body(1 << 20).unwrap_err();
        assert!(err.to_string().contains("\"br\""), "{err}");
    }
}
