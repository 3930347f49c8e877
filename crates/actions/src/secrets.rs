//! Secrets of HTTP actions, and keeping them (and other credentials) out of every record.
//!
//! `{{secret.NAME}}` in an action's URL, headers or body takes its value from the environment
//! of the worker or action runner (`PGEVENTS_SECRET_NAME`) or from the file `NAME` in
//! `--secrets-dir` (one file per secret, as Docker and Kubernetes mount them). Secrets never
//! live in the database and are never recorded: before an error, a response body or parameters
//! are written to `action_run`, logged or put in a dead-letter header, every secret value in
//! them is replaced by `[secret NAME]`, in every form it can take there (as is, percent-encoded
//! as URLs carry it, JSON-escaped, and base64 as in Basic credentials), and always before the
//! text is cut to its limit. Requests are recorded by their URL template, never the rendered URL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Prefix of the environment variables that hold secrets.
pub const ENV_PREFIX: &str = "PGEVENTS_SECRET_";

/// Values shorter than this are not searched for in texts (a one-letter secret would redact
/// every occurrence of that letter); they still work in templates.
const MIN_REDACTED_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read the secrets directory {dir}: {source}")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("cannot read the secret file {file}: {source}")]
    File { file: PathBuf, source: std::io::Error },
    #[error("the secret file {file} is not UTF-8 text")]
    NotText { file: PathBuf },
}

/// The secrets known to this process, by name.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, Value>,
    /// Every recorded form of every secret worth searching for, longest first, with its name.
    forms: Vec<(String, String)>,
}

/// The forms a secret's value can take in a recorded text.
fn forms(value: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    // As is, and lower-cased as a URL's host would be.
    let mut out = vec![value.to_owned(), value.to_ascii_lowercase()];
    let percent = crate::template::percent_encode(value);
    out.push(percent.to_ascii_lowercase());
    out.push(percent);
    out.push(form_urlencoded::byte_serialize(value.as_bytes()).collect());
    if let Ok(json) = serde_json::to_string(value) {
        out.push(json.trim_matches('"').to_owned());
    }
    // Inside a longer base64 text (user:secret in Basic credentials) the value can start at any
    // of three alignments; the characters that depend on it alone are the same whatever
    // surrounds it.
    for offset in 0..3usize {
        let mut bytes = vec![0u8; offset];
        bytes.extend_from_slice(value.as_bytes());
        let start = if offset == 0 { 0 } else { 4 };
        let end = bytes.len() / 3 * 4;
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(&bytes);
            if let Some(stable) = encoded.get(start..end) {
                out.push(stable.to_owned());
            }
        }
    }
    out.retain(|form| form.len() >= MIN_REDACTED_LEN);
    out.sort();
    out.dedup();
    out
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").field("names", &self.values.keys().collect::<Vec<_>>()).finish()
    }
}

impl Secrets {
    /// Secrets from `PGEVENTS_SECRET_*` variables and, when given, the files of `dir` (a file
    /// wins over a variable of the same name; one trailing newline is dropped).
    pub fn load(env: impl IntoIterator<Item = (String, String)>, dir: Option<&Path>) -> Result<Secrets, SecretsError> {
        let mut values = BTreeMap::new();
        for (key, value) in env {
            if let Some(name) = key.strip_prefix(ENV_PREFIX).filter(|n| !n.is_empty()) {
                values.insert(name.to_owned(), Value::String(value));
            }
        }
        if let Some(dir) = dir {
            let entries = std::fs::read_dir(dir).map_err(|source| SecretsError::Dir { dir: dir.to_owned(), source })?;
            for entry in entries {
                let entry = entry.map_err(|source| SecretsError::Dir { dir: dir.to_owned(), source })?;
                let file = entry.path();
                // Kubernetes mounts keep their data behind dot-directories and symlinks.
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || !file.is_file() {
                    continue;
                }
                let bytes = std::fs::read(&file).map_err(|source| SecretsError::File { file: file.clone(), source })?;
                let mut text = String::from_utf8(bytes).map_err(|_| SecretsError::NotText { file: file.clone() })?;
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                values.insert(name, Value::String(text));
            }
        }
        let mut all: Vec<(String, String)> = values
            .iter()
            .filter_map(|(name, value)| Some((name, value.as_str()?)))
            .filter(|(_, value)| value.len() >= MIN_REDACTED_LEN)
            .flat_map(|(name, value)| forms(value).into_iter().map(move |form| (form, name.clone())))
            .collect();
        all.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(Secrets { values, forms: all })
    }

    /// The length of the longest recorded form of any secret.
    pub fn longest_form(&self) -> usize {
        self.forms.first().map(|(form, _)| form.len()).unwrap_or(0)
    }

    /// The secret `name` (for templates).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// `text` with every form of every secret value replaced by `[secret NAME]` (longest
    /// first, so a secret that contains another is replaced whole).
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (form, name) in &self.forms {
            if out.contains(form.as_str()) {
                out = out.replace(form.as_str(), &format!("[secret {name}]"));
            }
        }
        out
    }
}

/// `url` fit to be recorded or logged: the password of its user info and the values of its
/// query replaced by `***` (tokens travel there). Text that is not a URL is replaced
/// whole.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return "[a URL that could not be parsed]".to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let names: Vec<String> = parsed.query_pairs().map(|(name, _)| name.into_owned()).collect();
        parsed.query_pairs_mut().clear().extend_pairs(names.iter().map(|name| (name.as_str(), "***")));
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn secrets_come_from_the_environment_and_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("API_TOKEN"), "from-file\n").unwrap();
        std::fs::write(dir.path().join(".hidden"), "x").unwrap();
        let secrets = Secrets::load(
            env(&[("PGEVENTS_SECRET_API_TOKEN", "from-env"), ("PGEVENTS_SECRET_HOOK", "h00k-key"), ("OTHER", "no")]),
            Some(dir.path()),
        )
        .unwrap();
        assert_eq!(secrets.get("API_TOKEN"), Some(&Value::from("from-file")));
        assert_eq!(secrets.get("HOOK"), Some(&Value::from("h00k-key")));
        assert_eq!(secrets.names().collect::<Vec<_>>(), ["API_TOKEN", "HOOK"]);
        assert!(!format!("{secrets:?}").contains("from-file"), "Debug shows names only");
        let missing = Secrets::load(Vec::new(), Some(&dir.path().join("nope"))).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }

    #[test]
    fn every_secret_value_is_redacted_longest_first() {
        let secrets = Secrets::load(
            env(&[("PGEVENTS_SECRET_A", "abcd"), ("PGEVENTS_SECRET_B", "abcdef"), ("PGEVENTS_SECRET_C", "x")]),
            None,
        )
        .unwrap();
        assert_eq!(secrets.redact("token abcdef and abcd, x"), "token [secret B] and [secret A], x");
    }

    #[test]
    fn every_recorded_form_of_a_secret_is_redacted() {
        use base64::Engine as _;
        let secret = "123456:ABC/def+g h\"i";
        let secrets = Secrets::load(env(&[("PGEVENTS_SECRET_BOT", secret)]), None).unwrap();
        let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let json = serde_json::to_string(secret).unwrap();
        for text in [
            format!("url /bot{}/send", crate::template::percent_encode(secret)),
            format!("url /bot{}/send", crate::template::percent_encode(secret).to_ascii_lowercase()),
            format!("form q={}", form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()),
            format!("{{\"echo\": {json}}}"),
            format!("Authorization: Basic {}", b64(&format!("user:{secret}"))),
            format!("Authorization: Basic {}", b64(&format!("us:{secret}"))),
            format!("Authorization: Basic {}", b64(&format!("u:{secret}"))),
            format!("x {}", base64::engine::general_purpose::URL_SAFE.encode(format!("ab{secret}"))),
        ] {
            let redacted = secrets.redact(&text);
            assert!(redacted.contains("[secret BOT]"), "{text} -> {redacted}");
            assert!(!redacted.contains("ABC") || text.contains("Basic") || text.starts_with("x "), "{redacted}");
        }
        assert!(secrets.longest_form() >= crate::template::percent_encode(secret).len());
    }

    #[test]
    fn urls_lose_passwords_and_query_values() {
        assert_eq!(
            redact_url("https://user:pw@api.example.com/hook?token=abc&x=1"),
            "https://user:***@api.example.com/hook?token=***&x=***"
        );
        assert_eq!(redact_url("http://api.example.com/a/b"), "http://api.example.com/a/b");
        assert_eq!(redact_url("not a url"), "[a URL that could not be parsed]");
    }
}
