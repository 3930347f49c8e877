//! Events larger than the broker takes (`--max-message-bytes`), and the `stub` policy: the
//! largest column values of `old`, `new` and `diff` are replaced by `{"omitted_bytes": N}`
//! (N: the bytes of the JSON value left out), largest first, until the event fits. The rest of
//! the event is kept byte for byte (exact numerics, key order). Free of I/O.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// What to do with an event larger than `--max-message-bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Oversize {
    /// Stop publishing (the producer halts with the reason, nothing is confirmed past it).
    #[default]
    Fail,
    /// Publish it with its largest values replaced by `{"omitted_bytes": N}` and an `omitted`
    /// header naming them.
    Stub,
}

/// An event made to fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stubbed {
    pub body: Vec<u8>,
    /// The values left out, as `section.column` (`new.payload`), in the order they were cut.
    pub omitted: Vec<String>,
}

/// Why an event could not be made to fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StubError {
    #[error("the event is not a JSON object: {0}")]
    NotAnEvent(String),
    #[error("without any of its column values the event is still {bytes} bytes (its key or context is that large)")]
    StillTooLarge { bytes: usize },
}

/// The sections whose column values may be left out.
const SECTIONS: [&str; 3] = ["old", "new", "diff"];

/// A JSON object's members in their order, values unparsed.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

fn members(json: &str) -> Result<Members<'_>, StubError> {
    serde_json::from_str(json).map_err(|e| StubError::NotAnEvent(e.to_string()))
}

fn write_object(out: &mut String, members: &[(String, Option<String>, &RawValue)]) {
    out.push('{');
    for (i, (key, replaced, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // A key read from JSON always serializes.
        out.push_str(&serde_json::to_string(key).unwrap_or_default());
        out.push(':');
        out.push_str(replaced.as_deref().unwrap_or(value.get()));
    }
    out.push('}');
}

/// `body` with its largest column values left out until it is at most `limit` bytes.
pub fn stub(body: &[u8], limit: usize) -> Result<Stubbed, StubError> {
    let text = std::str::from_utf8(body).map_err(|e| StubError::NotAnEvent(e.to_string()))?;
    let top = members(text)?;
    // Each section's members, with room for a replacement.
    type Section<'a> = Vec<(String, Option<String>, &'a RawValue)>;
    let mut sections: Vec<(usize, Section<'_>)> = Vec::new();
    for (index, (key, value)) in top.0.iter().enumerate() {
        if SECTIONS.contains(&key.as_str()) && value.get().starts_with('{') {
            let columns = members(value.get())?;
            sections.push((index, columns.0.into_iter().map(|(k, v)| (k, None, v)).collect()));
        }
    }
    // Candidates, largest first: (section, member, bytes).
    let mut candidates: Vec<(usize, usize, usize)> = sections
        .iter()
        .enumerate()
        .flat_map(|(s, (_, columns))| columns.iter().enumerate().map(move |(c, (_, _, v))| (s, c, v.get().len())))
        .collect();
    candidates.sort_by_key(|c| std::cmp::Reverse(c.2));
    let mut size = body.len();
    let mut omitted = Vec::new();
    for (s, c, bytes) in candidates {
        if size <= limit {
            break;
        }
        let replacement = format!("{{\"omitted_bytes\":{bytes}}}");
        if replacement.len() >= bytes {
            continue;
        }
        size = size - bytes + replacement.len();
        let (section_index, columns) = &mut sections[s];
        omitted.push(format!("{}.{}", top.0[*section_index].0, columns[c].0));
        columns[c].1 = Some(replacement);
    }
    if size > limit {
        return Err(StubError::StillTooLarge { bytes: size });
    }
    let mut out = String::with_capacity(size);
    let mut rebuilt: Vec<(String, Option<String>, &RawValue)> = Vec::with_capacity(top.0.len());
    for (index, (key, value)) in top.0.iter().enumerate() {
        let replaced = sections.iter().find(|(i, _)| *i == index).map(|(_, columns)| {
            let mut section = String::new();
            write_object(&mut section, columns);
            section
        });
        rebuilt.push((key.clone(), replaced, value));
    }
    write_object(&mut out, &rebuilt);
    Ok(Stubbed { body: out.into_bytes(), omitted })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &str) -> String {
        format!(
            r#"{{"table_name":"public.t","action":"U","old":{{"id":1,"payload":"{payload}","n":1.50}},"new":{{"id":1,"payload":"{payload}x","n":1.50}},"diff":{{"payload":"{payload}x"}},"id":{{"id":1}},"lsn":"0/1","seq":0}}"#
        )
    }

    #[test]
    fn the_largest_values_go_first_and_the_rest_is_kept_byte_for_byte() {
        let big = "a".repeat(1000);
        let body = event(&big);
        let stubbed = stub(body.as_bytes(), 1500).unwrap();
        let text = String::from_utf8(stubbed.body.clone()).unwrap();
        assert!(text.len() <= 1500, "{}", text.len());
        assert_eq!(stubbed.omitted, ["new.payload", "diff.payload"]);
        assert!(text.contains(r#""new":{"id":1,"payload":{"omitted_bytes":1003},"n":1.50}"#), "{text}");
        assert!(
            text.contains(&format!(r#""old":{{"id":1,"payload":"{big}","n":1.50}}"#)),
            "exact numerics and order kept"
        );
        assert!(text.starts_with(r#"{"table_name":"public.t","action":"U","old""#));
        assert!(text.ends_with(r#""id":{"id":1},"lsn":"0/1","seq":0}"#));
        let value: serde_json::Value = serde_json::from_slice(&stubbed.body).unwrap();
        assert_eq!(value["diff"]["payload"]["omitted_bytes"], 1003);
    }

    #[test]
    fn an_event_that_fits_is_unchanged_and_one_that_cannot_fit_is_an_error() {
        let body = event("small");
        let stubbed = stub(body.as_bytes(), body.len()).unwrap();
        assert_eq!(stubbed.body, body.as_bytes());
        assert!(stubbed.omitted.is_empty());
        assert!(matches!(stub(body.as_bytes(), 50), Err(StubError::StillTooLarge { .. })));
        assert!(matches!(stub(b"[1,2]", 1), Err(StubError::NotAnEvent(_))));
    }

    #[test]
    fn keys_with_escapes_survive() {
        let body =
            r#"{"old":{},"new":{"we\"ird\\key":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","k":1},"diff":{}}"#;
        let stubbed = stub(body.as_bytes(), 80).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&stubbed.body).unwrap();
        assert_eq!(value["new"]["we\"ird\\key"]["omitted_bytes"], 52);
        assert_eq!(stubbed.omitted, ["new.we\"ird\\key"]);
    }
}
