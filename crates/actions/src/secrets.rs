//! Secrets of HTTP actions, and keeping them (and other credentials) out of every record.
//!
//! `{{secret.NAME}}` in an action's URL, headers or body takes its value from the environment
//! of the worker or action runner (`PGEVENTS_SECRET_NAME`) or from the file `NAME` in
//! `--secrets-dir` (one file per secret, as Docker and Kubernetes mount them). Secrets never
//! live in the database and are never recorded: before an error, a response body or parameters
//! are written to `action_run`, logged or put in a dead-letter header, every secret value in
//! them is replaced by `[secret NAME]`, and URLs lose their password and query values
//! ([`redact_url`]).

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
        Ok(Secrets { values })
    }

    /// The secret `name` (for templates).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// `text` with every secret value replaced by `[secret NAME]` (longest first, so a secret
    /// that contains another is replaced whole).
    pub fn redact(&self, text: &str) -> String {
        let mut secrets: Vec<(&str, &str)> = self
            .values
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.as_str()?)))
            .filter(|(_, value)| value.len() >= MIN_REDACTED_LEN)
            .collect();
        secrets.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
        let mut out = text.to_owned();
        for (name, value) in secrets {
            if out.contains(value) {
                out = out.replace(value, &format!("[secret {name}]"));
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
    fn urls_lose_passwords_and_query_values() {
        assert_eq!(
            redact_url("https://user:pw@api.example.com/hook?token=abc&x=1"),
            "https://user:***@api.example.com/hook?token=***&x=***"
        );
        assert_eq!(redact_url("http://api.example.com/a/b"), "http://api.example.com/a/b");
        assert_eq!(redact_url("not a url"), "[a URL that could not be parsed]");
    }
}
