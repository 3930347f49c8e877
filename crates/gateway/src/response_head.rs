//! Response heads written straight to the socket (event streams and their refusals): a status
//! line and headers, where a header whose value holds a control character is left out rather
//! than written (a CR or LF would end the header and let the rest of the value forge headers or
//! a body), and `X-Content-Type-Options: nosniff` is always present. Also the text rules of the
//! `WWW-Authenticate` challenge (RFC 6750).

/// A response head under construction.
#[derive(Debug)]
pub struct ResponseHead {
    text: String,
}

/// Whether `value` may be written as a header value: visible ASCII, spaces and tabs only.
pub fn is_safe_header_value(value: &str) -> bool {
    value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

impl ResponseHead {
    /// `HTTP/1.1 <status> <reason>` with `nosniff`.
    pub fn new(status: u16) -> ResponseHead {
        let reason =
            axum::http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error");
        let mut head = ResponseHead { text: format!("HTTP/1.1 {status} {reason}\r\n") };
        head.header("X-Content-Type-Options", "nosniff");
        head
    }

    /// Adds a header; one whose name or value is not safe to write is left out (and logged).
    pub fn header(&mut self, name: &str, value: &str) -> &mut ResponseHead {
        let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if name_ok && is_safe_header_value(value) {
            self.text.push_str(name);
            self.text.push_str(": ");
            self.text.push_str(value);
            self.text.push_str("\r\n");
        } else {
            tracing::warn!(header = ?name, "left a header out of a response: its value holds a control character");
        }
        self
    }

    /// The head, ended by its empty line.
    pub fn finish(mut self) -> String {
        self.text.push_str("\r\n");
        self.text
    }
}

/// `text` as an `error_description` of a Bearer challenge: only the characters RFC 6750 allows
/// there (`%x20-21 / %x23-5B / %x5D-7E`: printable ASCII without `"` and `\`), the others
/// replaced by `?`.
pub fn error_description(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_values_are_left_out_and_nosniff_is_always_there() {
        let mut head = ResponseHead::new(401);
        head.header("WWW-Authenticate", "Bearer error=\"invalid_token\"")
            .header("X-Evil", "a\r\nContent-Type: text/html")
            .header("X-Nul", "a\0b")
            .header("Bad Name", "x")
            .header("Retry-After", "5");
        let text = head.finish();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\nX-Content-Type-Options: nosniff\r\n"), "{text}");
        assert!(text.contains("WWW-Authenticate: Bearer error=\"invalid_token\"\r\n"));
        assert!(text.contains("Retry-After: 5\r\n"));
        assert!(
            !text.contains("Evil") && !text.contains("text/html") && !text.contains("Nul") && !text.contains("Bad")
        );
        assert!(text.ends_with("\r\n\r\n"));
        assert_eq!(text.matches("\r\n").count(), 5, "{text:?}");
    }

    #[test]
    fn error_descriptions_keep_only_rfc_6750_characters() {
        assert_eq!(error_description("bad signature"), "bad signature");
        assert_eq!(error_description("a\"b\\c\r\nd\u{e9}"), "a?b?c??d?");
    }
}
