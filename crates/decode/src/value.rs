//! One column value: PostgreSQL's text output to a JSON fragment, by kind.
//!
//! Every path writes valid JSON whatever the input: text that does not look as expected for its
//! type (which PostgreSQL should never send) is written as a JSON string rather than rejected.

use base64::Engine as _;

use crate::json::{is_json_number, write_str};
use crate::time::{iso_from_pg_timestamp, rfc3339_from_pg_timestamptz};
use crate::types::{ScalarKind, ValueKind};

/// Options that change how values are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValueOptions {
    /// Write `numeric` values as JSON strings (for consumers that parse numbers as doubles).
    pub numeric_as_string: bool,
}

/// Writes the JSON form of `text`, a value of kind `kind` in PostgreSQL's text output.
pub fn write_value(out: &mut Vec<u8>, kind: ValueKind, text: &str, options: ValueOptions) {
    match kind {
        ValueKind::Scalar(scalar) => write_scalar(out, scalar, text, options),
        ValueKind::Array(elem) => {
            let start = out.len();
            if write_array(out, elem, text, options).is_err() {
                out.truncate(start);
                write_str(out, text);
            }
        }
    }
}

fn is_special_number(text: &str) -> bool {
    matches!(text, "NaN" | "Infinity" | "-Infinity" | "inf" | "-inf" | "nan")
}

/// Writes one non-array value.
pub fn write_scalar(out: &mut Vec<u8>, kind: ScalarKind, text: &str, options: ValueOptions) {
    match kind {
        ScalarKind::Bool => match text {
            "t" | "true" => out.extend_from_slice(b"true"),
            "f" | "false" => out.extend_from_slice(b"false"),
            _ => write_str(out, text),
        },
        ScalarKind::Integer => write_number_or_string(out, text),
        ScalarKind::Float => write_number_or_string(out, text),
        ScalarKind::Numeric => {
            if options.numeric_as_string || is_special_number(text) {
                write_str(out, text);
            } else {
                write_number_or_string(out, text);
            }
        }
        ScalarKind::Json => {
            if text.trim().is_empty() {
                out.extend_from_slice(b"null");
            } else if json_is_plain(text) {
                out.extend_from_slice(text.as_bytes());
            } else {
                // A value ordinary JSON parsers refuse would make the whole event unreadable
                // to them (and so hide the change): sent as its text.
                write_str(out, text);
            }
        }
        ScalarKind::Bytea => write_bytea(out, text),
        ScalarKind::Timestamptz => {
            out.push(b'"');
            if !rfc3339_from_pg_timestamptz(text, out) {
                crate::json::write_str_contents(out, text);
            }
            out.push(b'"');
        }
        ScalarKind::Timestamp => {
            out.push(b'"');
            if !iso_from_pg_timestamp(text, out) {
                crate::json::write_str_contents(out, text);
            }
            out.push(b'"');
        }
        ScalarKind::Text => write_str(out, text),
    }
}

/// Digits before the decimal point beyond which a number overflows a double (about 1.8e308):
/// common JSON parsers refuse such numbers.
const MAX_INTEGER_DIGITS: usize = 308;

/// Nesting beyond which common JSON parsers refuse a document (serde_json stops at 128).
const MAX_JSON_DEPTH: usize = 100;

/// Whether a number (JSON syntax) fits a double.
fn fits_a_double(text: &str) -> bool {
    if text.contains(['e', 'E']) {
        return text.parse::<f64>().is_ok_and(f64::is_finite);
    }
    let digits = text.trim_start_matches('-').trim_start_matches('0');
    digits.find('.').unwrap_or(digits.len()) <= MAX_INTEGER_DIGITS
}

/// Whether common JSON parsers read `json` (PostgreSQL's, so well-formed): nesting at most
/// [`MAX_JSON_DEPTH`], no number beyond a double.
fn json_is_plain(json: &str) -> bool {
    let (mut depth, mut in_string, mut escaped, mut run) = (0usize, false, false, 0usize);
    for byte in json.bytes() {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'0'..=b'9' => {
                run += 1;
                if run > MAX_INTEGER_DIGITS {
                    return false;
                }
                continue;
            }
            b'e' | b'E' if run > 0 => {
                // An exponent: 1e400 overflows as surely as 400 digits.
                return json.parse::<serde_json::Value>().is_ok();
            }
            _ => {}
        }
        run = 0;
    }
    true
}

fn write_number_or_string(out: &mut Vec<u8>, text: &str) {
    if is_json_number(text) && fits_a_double(text) {
        out.extend_from_slice(text.as_bytes());
    } else {
        write_str(out, text);
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `\x0102ff` (pgoutput) or `0102ff` (wal2json) to base64; other text as a string.
fn write_bytea(out: &mut Vec<u8>, text: &str) {
    let hex = text.strip_prefix("\\x").unwrap_or(text).as_bytes();
    if hex.len().is_multiple_of(2) {
        let mut bytes = Vec::with_capacity(hex.len() / 2);
        let ok = hex.chunks_exact(2).all(|pair| match (hex_value(pair[0]), hex_value(pair[1])) {
            (Some(hi), Some(lo)) => {
                bytes.push(hi << 4 | lo);
                true
            }
            _ => false,
        });
        if ok {
            out.push(b'"');
            let start = out.len();
            let encoded_len = bytes.len().div_ceil(3) * 4;
            out.resize(start + encoded_len, 0);
            let written =
                base64::engine::general_purpose::STANDARD.encode_slice(&bytes, &mut out[start..]).unwrap_or(0);
            out.truncate(start + written);
            out.push(b'"');
            return;
        }
    }
    write_str(out, text);
}

/// Malformed array text; the caller falls back to a string.
struct BadArray;

/// Writes a PostgreSQL array literal (`{1,2}`, `{{"a b",NULL},{c,d}}`, `[0:1]={1,2}`) as nested
/// JSON arrays whose elements are written by `elem`.
fn write_array(out: &mut Vec<u8>, elem: ScalarKind, text: &str, options: ValueOptions) -> Result<(), BadArray> {
    let mut rest = text;
    // Arrays with lower bounds other than 1 print their dimensions first: `[0:2]={...}`.
    if rest.starts_with('[') {
        let eq = rest.find('=').ok_or(BadArray)?;
        rest = &rest[eq + 1..];
    }
    let bytes = rest.as_bytes();
    let mut pos = 0;
    let mut scratch = String::new();
    parse_array(out, elem, rest, bytes, &mut pos, &mut scratch, options)?;
    if pos != bytes.len() {
        return Err(BadArray);
    }
    Ok(())
}

fn parse_array(
    out: &mut Vec<u8>,
    elem: ScalarKind,
    text: &str,
    bytes: &[u8],
    pos: &mut usize,
    scratch: &mut String,
    options: ValueOptions,
) -> Result<(), BadArray> {
    if bytes.get(*pos) != Some(&b'{') {
        return Err(BadArray);
    }
    *pos += 1;
    out.push(b'[');
    if bytes.get(*pos) == Some(&b'}') {
        *pos += 1;
        out.push(b']');
        return Ok(());
    }
    let mut first = true;
    loop {
        if !first {
            out.push(b',');
        }
        first = false;
        match bytes.get(*pos) {
            Some(b'{') => parse_array(out, elem, text, bytes, pos, scratch, options)?,
            Some(b'"') => {
                *pos += 1;
                scratch.clear();
                let mut run = *pos;
                loop {
                    match bytes.get(*pos) {
                        Some(b'"') => break,
                        Some(b'\\') => {
                            scratch.push_str(&text[run..*pos]);
                            *pos += 1;
                            if *pos >= bytes.len() {
                                return Err(BadArray);
                            }
                            run = *pos;
                            *pos += 1;
                        }
                        Some(_) => *pos += 1,
                        None => return Err(BadArray),
                    }
                }
                scratch.push_str(&text[run..*pos]);
                *pos += 1;
                write_scalar(out, elem, scratch, options);
            }
            Some(_) => {
                let start = *pos;
                while !matches!(bytes.get(*pos), Some(b',' | b'}') | None) {
                    *pos += 1;
                }
                let token = &text[start..*pos];
                if token.is_empty() {
                    return Err(BadArray);
                }
                if token.eq_ignore_ascii_case("NULL") {
                    out.extend_from_slice(b"null");
                } else {
                    write_scalar(out, elem, token, options);
                }
            }
            None => return Err(BadArray),
        }
        match bytes.get(*pos) {
            Some(b',') => *pos += 1,
            Some(b'}') => {
                *pos += 1;
                out.push(b']');
                return Ok(());
            }
            _ => return Err(BadArray),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_common_parsers_refuse_are_sent_as_text() {
        use super::*;
        let json = |kind, text: &str| {
            let mut out = Vec::new();
            write_scalar(&mut out, kind, text, ValueOptions::default());
            String::from_utf8(out).unwrap()
        };
        let huge = format!("1{}", "0".repeat(400));
        assert_eq!(json(ScalarKind::Numeric, &huge), format!("\"{huge}\""));
        assert_eq!(json(ScalarKind::Numeric, "123.4500"), "123.4500", "ordinary numbers keep their digits");
        let nested = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(json(ScalarKind::Json, &nested).starts_with("\"[[["));
        assert_eq!(json(ScalarKind::Json, "1e400"), "\"1e400\"");
        assert_eq!(json(ScalarKind::Json, r#"{"a": [1, 2.5e3, "x[["]}"#), r#"{"a": [1, 2.5e3, "x[["]}"#);
        for text in [&json(ScalarKind::Numeric, &huge), &json(ScalarKind::Json, &nested)] {
            assert!(serde_json::from_str::<serde_json::Value>(text).is_ok(), "{text}");
        }
    }

    use super::*;
    use proptest::prelude::*;
    use ScalarKind::*;

    fn json(kind: ValueKind, text: &str) -> String {
        json_with(kind, text, ValueOptions::default())
    }

    fn json_with(kind: ValueKind, text: &str, options: ValueOptions) -> String {
        let mut out = Vec::new();
        write_value(&mut out, kind, text, options);
        let s = String::from_utf8(out).unwrap();
        serde_json::from_str::<serde_json::Value>(&s).unwrap_or_else(|e| panic!("{s} is not JSON: {e}"));
        s
    }

    fn s(k: ScalarKind) -> ValueKind {
        ValueKind::Scalar(k)
    }

    #[test]
    fn scalars() {
        assert_eq!(json(s(Bool), "t"), "true");
        assert_eq!(json(s(Bool), "false"), "false");
        assert_eq!(json(s(Integer), "-42"), "-42");
        assert_eq!(json(s(Float), "1.5e-07"), "1.5e-07");
        assert_eq!(json(s(Float), "NaN"), "\"NaN\"");
        assert_eq!(json(s(Float), "-Infinity"), "\"-Infinity\"");
        assert_eq!(json(s(Numeric), "12.3400"), "12.3400");
        assert_eq!(
            json(s(Numeric), "123456789012345678901234567890.000000001"),
            "123456789012345678901234567890.000000001"
        );
        assert_eq!(json(s(Numeric), "Infinity"), "\"Infinity\"");
        assert_eq!(json_with(s(Numeric), "1.50", ValueOptions { numeric_as_string: true }), "\"1.50\"");
        assert_eq!(json(s(Json), r#"{"k": [1, 2]}"#), r#"{"k": [1, 2]}"#);
        assert_eq!(json(s(Text), "a\"b\n"), r#""a\"b\n""#);
        assert_eq!(json(s(Timestamptz), "2026-11-23 10:00:00.123456+00"), "\"2026-11-23T10:00:00.123456Z\"");
        assert_eq!(json(s(Timestamptz), "infinity"), "\"infinity\"");
        assert_eq!(json(s(Timestamptz), "0001-01-01 00:00:00+00 BC"), "\"0001-01-01 00:00:00+00 BC\"");
        assert_eq!(json(s(Timestamp), "2026-11-23 10:00:00"), "\"2026-11-23T10:00:00\"");
    }

    #[test]
    fn bytea_as_base64() {
        assert_eq!(json(s(Bytea), "\\x0102ff"), "\"AQL/\"");
        assert_eq!(json(s(Bytea), "0102ff"), "\"AQL/\"");
        assert_eq!(json(s(Bytea), "\\x"), "\"\"");
        assert_eq!(json(s(Bytea), "\\001abc"), "\"\\\\001abc\"");
    }

    #[test]
    fn arrays() {
        assert_eq!(json(ValueKind::Array(Integer), "{1,2,NULL}"), "[1,2,null]");
        assert_eq!(
            json(ValueKind::Array(Text), r#"{"x y",NULL,"q\"z","NULL",plain}"#),
            r#"["x y",null,"q\"z","NULL","plain"]"#
        );
        assert_eq!(json(ValueKind::Array(Integer), "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(json(ValueKind::Array(Integer), "{}"), "[]");
        assert_eq!(json(ValueKind::Array(Integer), "[0:1]={7,8}"), "[7,8]");
        assert_eq!(json(ValueKind::Array(Json), r#"{"{\"a\": 1}",NULL}"#), r#"[{"a": 1},null]"#);
        assert_eq!(json(ValueKind::Array(Bool), "{t,f}"), "[true,false]");
        assert_eq!(json(ValueKind::Array(Numeric), "{NaN,1.0}"), r#"["NaN",1.0]"#);
        assert_eq!(json(ValueKind::Array(Text), r#"{"back\\slash"}"#), r#"["back\\slash"]"#);
    }

    #[test]
    fn malformed_arrays_become_strings() {
        for bad in ["{1,2", "{1,,2}", "{\"open}", "1,2", "{1}x", "[0:1]"] {
            assert_eq!(json(ValueKind::Array(Integer), bad), serde_json::to_string(bad).unwrap());
        }
    }

    /// PostgreSQL's array output for text elements: quote when needed, escape `"` and `\`.
    fn pg_text_array(items: &[Option<String>]) -> String {
        let parts: Vec<String> = items
            .iter()
            .map(|item| match item {
                None => "NULL".to_owned(),
                Some(s) => {
                    let needs_quotes = s.is_empty()
                        || s.eq_ignore_ascii_case("NULL")
                        || s.chars().any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\' | ' ' | '\t' | '\n'));
                    if needs_quotes {
                        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
                    } else {
                        s.clone()
                    }
                }
            })
            .collect();
        format!("{{{}}}", parts.join(","))
    }

    proptest! {
        #[test]
        fn text_arrays_round_trip(items in proptest::collection::vec(proptest::option::of(".*"), 0..8)) {
            let text = pg_text_array(&items);
            let parsed: Vec<Option<String>> = serde_json::from_str(&json(ValueKind::Array(Text), &text)).unwrap();
            prop_assert_eq!(parsed, items);
        }

        #[test]
        fn any_text_gives_valid_json_for_any_kind(text in ".*") {
            for kind in [s(Bool), s(Integer), s(Float), s(Numeric), s(Bytea), s(Timestamptz), s(Timestamp), s(Text),
                         ValueKind::Array(Integer), ValueKind::Array(Text), ValueKind::Array(Timestamptz)] {
                json(kind, &text);
            }
        }
    }
}
