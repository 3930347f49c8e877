//! `{{name}}` placeholders in HTTP URLs, headers and body templates.
//!
//! `{{name}}` (or `{{a.b}}` for a nested value) is taken from the run's parameters;
//! `{{event.table_name}}`, `{{event.new.email}}` and the like from the event;
//! `{{secret.NAME}}` from the process's secrets (see [`crate::secrets`]), if the secret is
//! granted to the action's owner (`pgevents.secret_grant`). A string that is
//! a single placeholder becomes the value itself (a number stays a number); inside a longer
//! string the value is written as text. A placeholder without a value is an error, never an
//! empty string.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::secrets::Secrets;

/// Where placeholders find their values.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub parameters: &'a Map<String, Value>,
    pub event: &'a Value,
    pub secrets: &'a Secrets,
    /// The secrets the action's owner may use.
    pub granted: &'a BTreeSet<String>,
    /// The action's owner (for messages).
    pub owner: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("placeholder {{{{{0}}}}} has no value (not in the parameters, or null)")]
    Missing(String),
    #[error("placeholder {{{{secret.{0}}}}} has no value: set PGEVENTS_SECRET_{0} in the environment of the worker and action runner, or put a file {0} in --secrets-dir")]
    MissingSecret(String),
    #[error("unclosed placeholder in {0:?}: expected {{{{name}}}}")]
    Unclosed(String),
    #[error("placeholder {{{{secret.{name}}}}}: the secret is not granted to the action's owner {owner:?}; the schema's owner grants it with INSERT INTO pgevents.secret_grant VALUES ('{name}', '{owner}')")]
    NotGranted { name: String, owner: String },
    #[error("placeholder {{{{{0}}}}} is {1:?} in the URL's path, which would change the path itself")]
    DotSegment(String, String),
}

impl Scope<'_> {
    fn lookup(&self, path: &str) -> Result<&Value, TemplateError> {
        if let Some(name) = path.strip_prefix("secret.") {
            if !self.granted.contains(name) {
                return Err(TemplateError::NotGranted { name: name.to_owned(), owner: self.owner.to_owned() });
            }
            return self.secrets.get(name).ok_or_else(|| TemplateError::MissingSecret(name.to_owned()));
        }
        self.lookup_value(path).ok_or_else(|| TemplateError::Missing(path.to_owned()))
    }

    fn lookup_value(&self, path: &str) -> Option<&Value> {
        let mut parts = path.split('.');
        let first = parts.next()?;
        let mut current = match (first, self.parameters.get(first)) {
            (_, Some(value)) if first != "event" => value,
            ("event", _) => self.event,
            _ => return None,
        };
        for part in parts {
            current = match current {
                Value::Object(map) => map.get(part)?,
                Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        (!current.is_null()).then_some(current)
    }
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Replaces every placeholder in `text`, passing each value's text through `encode` (e.g.
/// percent-encoding for URLs).
pub fn render_string(text: &str, scope: Scope<'_>, encode: impl Fn(&str) -> String) -> Result<String, TemplateError> {
    render_checked(text, scope, |_, value| Ok(encode(value)))
}

/// A URL: values percent-encoded, and a value that is `.` or `..` refused in the path (URL
/// parsers take `%2E%2E` for `..` there, so encoding does not keep it from climbing the path).
pub fn render_url(text: &str, scope: Scope<'_>) -> Result<String, TemplateError> {
    let path_end = text.find(['?', '#']).unwrap_or(text.len());
    render_checked(text, scope, |(name, at), value| {
        if at < path_end && matches!(value, "." | "..") {
            return Err(TemplateError::DotSegment(name.to_owned(), value.to_owned()));
        }
        Ok(percent_encode(value))
    })
}

/// Replaces every placeholder; `encode` gets the placeholder's name and position in `text`.
fn render_checked(
    text: &str,
    scope: Scope<'_>,
    encode: impl Fn((&str, usize), &str) -> Result<String, TemplateError>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let at = text.len() - rest.len() + start;
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| TemplateError::Unclosed(text.to_owned()))?;
        let name = after[..end].trim();
        let value = scope.lookup(name)?;
        out.push_str(&encode((name, at), &as_text(value))?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Renders a JSON template: strings have their placeholders replaced, recursively.
pub fn render_value(template: &Value, scope: Scope<'_>) -> Result<Value, TemplateError> {
    Ok(match template {
        Value::String(s) => {
            let trimmed = s.trim();
            let single = trimmed
                .strip_prefix("{{")
                .and_then(|t| t.strip_suffix("}}"))
                .filter(|inner| !inner.contains("{{") && !inner.contains("}}"));
            match single {
                Some(name) => scope.lookup(name.trim())?.clone(),
                None => Value::String(render_string(s, scope, str::to_owned)?),
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| render_value(v, scope)).collect::<Result<_, _>>()?),
        Value::Object(map) => Value::Object(
            map.iter().map(|(k, v)| Ok((k.clone(), render_value(v, scope)?))).collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

/// RFC 3986's unreserved characters stay as they are; everything else is percent-encoded.
const NOT_UNRESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes everything but RFC 3986's unreserved characters (for URL placeholders).
pub fn percent_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, NOT_UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with<T>(parameters: Value, f: impl FnOnce(Scope<'_>) -> T) -> T {
        let parameters = parameters.as_object().cloned().unwrap_or_default();
        let event = json!({"table_name": "public.users", "new": {"email": "a@example.com"}});
        let secrets = Secrets::load([("PGEVENTS_SECRET_TOKEN".to_owned(), "s3cret".to_owned())], None).unwrap();
        let granted = BTreeSet::from(["TOKEN".to_owned(), "NOPE".to_owned(), "X".to_owned()]);
        f(Scope { parameters: &parameters, event: &event, secrets: &secrets, granted: &granted, owner: "ann" })
    }

    #[test]
    fn single_placeholders_keep_the_value_type() {
        let body = with(json!({"id": 7, "tags": ["a"], "name": "Ann"}), |scope| {
            render_value(
                &json!({"user": "{{id}}", "tags": "{{ tags }}", "greeting": "Hello {{name}}!", "table": "{{event.table_name}}", "fixed": 1}),
                scope,
            )
        });
        assert_eq!(
            body.unwrap(),
            json!({"user": 7, "tags": ["a"], "greeting": "Hello Ann!", "table": "public.users", "fixed": 1})
        );
    }

    #[test]
    fn nested_paths_and_event_fields() {
        let text = with(json!({"user": {"emails": ["x@y"]}}), |scope| {
            render_string("{{user.emails.0}} {{event.new.email}}", scope, str::to_owned)
        });
        assert_eq!(text.unwrap(), "x@y a@example.com");
    }

    #[test]
    fn secrets_fill_placeholders_and_a_missing_one_says_where_to_set_it() {
        let header = with(json!({}), |scope| render_string("Bearer {{secret.TOKEN}}", scope, str::to_owned));
        assert_eq!(header.unwrap(), "Bearer s3cret");
        let err = with(json!({}), |scope| render_value(&json!("{{secret.NOPE}}"), scope)).unwrap_err();
        assert_eq!(err, TemplateError::MissingSecret("NOPE".into()));
        assert!(err.to_string().contains("PGEVENTS_SECRET_NOPE"), "{err}");
        // A parameter named "secret" does not reach secrets, nor the other way round.
        let err =
            with(json!({"secret": {"TOKEN": "param"}}), |scope| render_string("{{secret.X}}", scope, str::to_owned));
        assert!(matches!(err, Err(TemplateError::MissingSecret(_))));
    }

    #[test]
    fn missing_values_are_errors() {
        let err = with(json!({"a": null}), |scope| render_value(&json!("{{a}}"), scope)).unwrap_err();
        assert_eq!(err, TemplateError::Missing("a".into()));
        let err = with(json!({}), |scope| render_string("x {{b", scope, str::to_owned)).unwrap_err();
        assert!(matches!(err, TemplateError::Unclosed(_)));
        assert!(err.to_string().contains("{{name}}"), "{err}");
        assert_eq!(
            TemplateError::Missing("zz".into()).to_string(),
            "placeholder {{zz}} has no value (not in the parameters, or null)"
        );
    }

    #[test]
    fn a_secret_not_granted_to_the_owner_is_refused() {
        let parameters = Map::new();
        let event = Value::Null;
        let secrets = Secrets::load([("PGEVENTS_SECRET_PAY".to_owned(), "pay-key".to_owned())], None).unwrap();
        let granted = BTreeSet::new();
        let scope =
            Scope { parameters: &parameters, event: &event, secrets: &secrets, granted: &granted, owner: "ann" };
        let err = render_string("Bearer {{secret.PAY}}", scope, str::to_owned).unwrap_err();
        assert!(matches!(err, TemplateError::NotGranted { ref name, .. } if name == "PAY"), "{err}");
        assert!(!err.to_string().contains("pay-key"));
    }

    #[test]
    fn dot_segments_from_values_are_refused_in_the_path_only() {
        for value in [".", ".."] {
            let err = with(json!({"id": value}), |scope| render_url("http://h/users/{{id}}/x", scope)).unwrap_err();
            assert!(matches!(err, TemplateError::DotSegment(..)), "{value}: {err}");
            let query = with(json!({"id": value}), |scope| render_url("http://h/users?id={{id}}", scope));
            assert!(query.is_ok(), "{value} in the query is only a value");
        }
        let fine = with(json!({"id": "a..b"}), |scope| render_url("http://h/u/{{id}}", scope)).unwrap();
        assert_eq!(fine, "http://h/u/a..b");
    }

    #[test]
    fn url_values_are_percent_encoded() {
        let url = with(json!({"q": "a b/c&d"}), |scope| render_string("http://h/s?q={{q}}", scope, percent_encode));
        assert_eq!(url.unwrap(), "http://h/s?q=a%20b%2Fc%26d");
    }
}
