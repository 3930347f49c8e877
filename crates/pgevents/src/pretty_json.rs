//! Indents JSON text without parsing it into values, so keys keep their order and numbers keep
//! every digit (a `numeric` with 40 digits is printed as PostgreSQL wrote it).

/// Returns `json` indented by two spaces per level. Text that is not JSON comes out with
/// whitespace rearranged but nothing lost.
pub fn pretty(json: &str) -> String {
    let bytes = json.as_bytes();
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let mut i = 0;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    };
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'"' => {
                // Copy the string as is, escapes included.
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                let end = (i + 1).min(bytes.len());
                out.push_str(&json[start..end]);
                i = end;
                continue;
            }
            b'{' | b'[' => {
                let close = if c == b'{' { b'}' } else { b']' };
                let next = bytes[i + 1..].iter().position(|b| !b.is_ascii_whitespace()).map(|p| i + 1 + p);
                if next.map(|n| bytes[n]) == Some(close) {
                    out.push(c as char);
                    out.push(close as char);
                    i = next.map_or(i + 1, |n| n + 1);
                    continue;
                }
                out.push(c as char);
                depth += 1;
                newline(&mut out, depth);
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c as char);
            }
            b',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            b':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            _ => {
                // A run of number/literal bytes (or any other UTF-8 text outside strings).
                let start = i;
                while i < bytes.len()
                    && !matches!(bytes[i], b'"' | b'{' | b'[' | b'}' | b']' | b',' | b':')
                    && !bytes[i].is_ascii_whitespace()
                {
                    i += 1;
                }
                out.push_str(&json[start..i]);
                continue;
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::pretty;

    #[test]
    fn indents_and_keeps_order_and_digits() {
        let json = r#"{"table_name":"public.t","new":{"z":1,"a":123456789012345678901234567890.000000001,"s":"x, \"y\": {z}"},"old":{},"arr":[1,[]]}"#;
        let expected = r#"{
  "table_name": "public.t",
  "new": {
    "z": 1,
    "a": 123456789012345678901234567890.000000001,
    "s": "x, \"y\": {z}"
  },
  "old": {},
  "arr": [
    1,
    []
  ]
}"#;
        assert_eq!(pretty(json), expected);
    }

    #[test]
    fn the_result_is_the_same_json() {
        let json = r#"{"a":[{"b":null,"c":true},"\\"],"d":-1.5e3,"e":"é 日本"}"#;
        let back: serde_json::Value = serde_json::from_str(&pretty(json)).unwrap();
        assert_eq!(back, serde_json::from_str::<serde_json::Value>(json).unwrap());
    }

    #[test]
    fn garbage_does_not_panic() {
        for text in ["", "{", "]", "\"unterminated", "{\"a\":\\", "not json at all", "{[}]"] {
            let _ = pretty(text);
        }
    }
}
