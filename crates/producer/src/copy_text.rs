//! COPY ... TO STDOUT text format: one row per line, columns separated by tabs, `\N` for NULL,
//! backslash escapes for the rest (see the PostgreSQL docs of COPY, "Text Format").

/// Splits one line (without its newline) into column values; `None` is NULL.
pub fn parse_row(line: &[u8]) -> Vec<Option<String>> {
    line.split(|&b| b == b'\t').map(parse_field).collect()
}

fn parse_field(field: &[u8]) -> Option<String> {
    if field == b"\\N" {
        return None;
    }
    if !field.contains(&b'\\') {
        return Some(String::from_utf8_lossy(field).into_owned());
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        i += 1;
        if b != b'\\' || i == field.len() {
            out.push(b);
            continue;
        }
        let e = field[i];
        i += 1;
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut value = u32::from(e - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(value as u8);
            }
            b'x' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match field.get(i).copied().and_then(hex) {
                    Some(first) => {
                        i += 1;
                        let mut value = first;
                        if let Some(second) = field.get(i).copied().and_then(hex) {
                            value = value * 16 + second;
                            i += 1;
                        }
                        out.push(value as u8);
                    }
                    None => out.push(b'x'),
                }
            }
            other => out.push(other),
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Quotes a value as an SQL string literal (standard_conforming_strings on).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nulls_tabs_and_escapes() {
        assert_eq!(parse_row(b"1\t\\N\tplain"), vec![Some("1".into()), None, Some("plain".into())]);
        assert_eq!(parse_row(b"a\\tb\\nc\\\\d"), vec![Some("a\tb\nc\\d".into())]);
        assert_eq!(parse_row(b"\\101\\x42\\r"), vec![Some("AB\r".into())]);
        assert_eq!(parse_row(b""), vec![Some(String::new())]);
        assert_eq!(parse_row(b"\\N"), vec![None]);
        assert_eq!(parse_row("é\tü".as_bytes()), vec![Some("é".into()), Some("ü".into())]);
    }

    #[test]
    fn quotes_literals() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "'a\\b'");
    }
}
