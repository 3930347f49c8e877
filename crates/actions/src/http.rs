//! HTTP actions: build the request from the action and the run's parameters, send it, and say
//! whether it worked (a 2xx status) or why not.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use pgevents_rules::ActionDef;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde_json::{Map, Value};

use crate::outbound::{redirect_policy, AllowList};
use crate::runner::{Attempt, Record};
use crate::secrets::Secrets;
use crate::template::{render_string, render_url, render_value, Scope};
use crate::Job;
use pgevents_pg::ErrorKind;

/// Longest response body kept in `action_run.result`.
const BODY_LIMIT: usize = 8192;

/// How HTTP actions reach out.
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    /// Where they may go (`--http-allow`).
    pub allow: AllowList,
    /// A PEM file of CA certificates trusted besides the Mozilla roots (`--http-ca-file`).
    pub ca_file: Option<PathBuf>,
    /// Values for `{{secret.NAME}}`.
    pub secrets: Secrets,
    /// The proxy HTTP actions go through (`--http-proxy`); without it the system's proxy
    /// variables (`HTTP_PROXY`, `HTTPS_PROXY`) are ignored: a proxy would reach names that
    /// `--http-allow` never saw resolve.
    pub proxy: Option<String>,
}

/// The HTTP client all HTTP actions share (connection reuse, TLS with the Mozilla roots and
/// `--http-ca-file`, destinations held to `--http-allow`, redirects to the same host only).
#[derive(Debug, Clone)]
pub struct HttpCaller {
    client: reqwest::Client,
    allow: AllowList,
    secrets: Secrets,
}

/// The parts of an HTTP action.
pub(crate) struct HttpAction<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a Map<String, Value>,
    pub body_template: Option<&'a Value>,
}

fn permanent(error: String) -> Attempt {
    Attempt::failed(error, ErrorKind::Permanent)
}

/// Statuses worth retrying among the 4xx; every other 4xx means the request itself is wrong.
fn retryable_client_error(status: u16) -> bool {
    matches!(status, 408 | 409 | 425 | 429)
}

/// The request headers an action may not set: they decide where and how the request goes
/// (`Host` would route it to another virtual host behind an allowed address), not what it says.
const RESERVED_HEADERS: &[&str] =
    &["host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive"];

fn reserved(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    RESERVED_HEADERS.contains(&name.as_str()) || name.starts_with("proxy-")
}

/// How a request is named in records and logs: the action's URL template (the rendered URL may
/// hold secrets and row values, in any encoding) and where it went.
fn shown(template: &str, url: &reqwest::Url) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{template} ({}://{}{port})", url.scheme(), url.host_str().unwrap_or("?"))
}

/// Whether the template's scheme, host or port come from a placeholder (a value there, a
/// secret say, would leave in a DNS query before any check).
fn placeholder_in_origin(template: &str) -> bool {
    if let Some(rest) = template.strip_prefix("{base_url}") {
        // What follows the base URL must start its path, query or fragment: anything else would
        // continue its host or port.
        return !(rest.is_empty() || rest.starts_with(['/', '?', '#']));
    }
    let origin_end = match template.find("://") {
        Some(at) => template[at + 3..].find(['/', '?', '#']).map_or(template.len(), |end| at + 3 + end),
        None => template.len(),
    };
    template[..origin_end].contains("{{")
}

/// The URL: `{base_url}` replaced, placeholders filled in and percent-encoded.
fn url(action: &ActionDef, template: &str, base_url: Option<&str>, scope: Scope<'_>) -> Result<reqwest::Url, String> {
    if placeholder_in_origin(template) {
        return Err(format!(
            "URL {template:?}: a placeholder may not choose the scheme, host or port, only the path, query or fragment"
        ));
    }
    let with_base = match template.strip_prefix("{base_url}") {
        Some(rest) => match base_url {
            Some(base) => format!("{}{rest}", base.trim_end_matches('/')),
            None => {
                return Err(format!(
                    "action {:?} uses {{base_url}} but no base_url is set: run INSERT INTO pgevents.setting VALUES ('base_url', 'https://api.example.com') or pass --base-url",
                    action.name
                ))
            }
        },
        None => template.to_owned(),
    };
    let rendered = render_url(&with_base, scope).map_err(|e| format!("URL {template:?}: {e}"))?;
    // The template, not the rendered URL, goes into errors: values may be secrets.
    let url = reqwest::Url::parse(&rendered).map_err(|e| format!("invalid URL from {template:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("invalid URL from {template:?}: only http and https are supported"));
    }
    Ok(url)
}

fn headers(job: &Job, configured: &Map<String, Value>, scope: Scope<'_>) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    let mut put = |name: &str, value: &str| -> Result<(), String> {
        let header =
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("invalid header name {name:?}: {e}"))?;
        // The value never goes into the error: it may be a token.
        let mut value =
            HeaderValue::from_str(value).map_err(|e| format!("invalid value for header {name:?} (not shown): {e}"))?;
        value.set_sensitive(true);
        headers.insert(header, value);
        Ok(())
    };
    put(CONTENT_TYPE.as_str(), "application/json")?;
    put("Idempotency-Key", &job.idempotency_key)?;
    put("X-Pgevents-Work-Item", &job.work_item)?;
    put("X-Pgevents-Table", &job.event.table_name)?;
    put("X-Pgevents-Action", job.event.action.code())?;
    put("X-Pgevents-Lsn", &job.event.lsn)?;
    put("X-Pgevents-Commit-Time", &job.event.commit_time)?;
    put("X-Pgevents-Message-Id", &job.event.message_id)?;
    for (name, value) in configured {
        if reserved(name) {
            return Err(format!(
                "header {name:?} cannot be set by an action: it decides where the request goes, not what it says"
            ));
        }
        let text = match value {
            Value::String(s) => render_string(s, scope, str::to_owned).map_err(|e| format!("header {name:?}: {e}"))?,
            other => other.to_string(),
        };
        put(name, &text)?;
    }
    Ok(headers)
}

impl HttpCaller {
    pub fn new(settings: HttpSettings) -> Result<HttpCaller, String> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("pgevents/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .redirect(redirect_policy());
        if settings.allow.is_restricted() {
            builder = builder.dns_resolver(settings.allow.resolver());
        }
        if let Some(file) = &settings.ca_file {
            let pem = std::fs::read(file).map_err(|e| format!("cannot read --http-ca-file {}: {e}", file.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("--http-ca-file {} holds no PEM certificate: {e}", file.display()))?;
            if certificates.is_empty() {
                return Err(format!("--http-ca-file {} holds no PEM certificate", file.display()));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        builder = match &settings.proxy {
            Some(proxy) => builder.proxy(
                reqwest::Proxy::all(proxy.as_str())
                    .map_err(|e| format!("invalid --http-proxy: {}", e.without_url()))?,
            ),
            None => builder.no_proxy(),
        };
        let client = builder.build().map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(HttpCaller { client, allow: settings.allow, secrets: settings.secrets })
    }

    /// The secrets templates use (and records are cleaned of).
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// One attempt. `granted` are the secrets the action's owner may use.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn call(
        &self,
        action: &ActionDef,
        http: &HttpAction<'_>,
        job: &Job,
        parameters: &Map<String, Value>,
        event: &Value,
        base_url: Option<&str>,
        granted: &BTreeSet<String>,
    ) -> Attempt {
        let owner = action.owner.as_deref().unwrap_or_default();
        let scope = Scope { parameters, event, secrets: &self.secrets, granted, owner };
        let url = match url(action, http.url, base_url, scope) {
            Ok(url) => url,
            Err(e) => return permanent(e),
        };
        let shown = shown(http.url, &url);
        if let Err(refused) = self.allow.check(&url).await {
            return permanent(format!("refused to call {shown}: {refused}"));
        }
        let method = match reqwest::Method::from_bytes(http.method.as_bytes()) {
            Ok(method) => method,
            Err(_) => return permanent(format!("invalid HTTP method {:?}", http.method)),
        };
        let headers = match headers(job, http.headers, scope) {
            Ok(headers) => headers,
            Err(e) => return permanent(e),
        };
        let body = match http.body_template {
            Some(template) => match render_value(template, scope) {
                Ok(body) => Some(body),
                Err(e) => return permanent(format!("body template: {e}")),
            },
            None if method == reqwest::Method::GET => None,
            None => Some(Value::Object(parameters.clone())),
        };
        let mut request = self.client.request(method, url).headers(headers).timeout(action.timeout);
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = match request.send().await {
            Ok(response) => response,
            // A refused redirect is the server's answer, not a passing failure.
            Err(e) if e.is_redirect() => return permanent(format!("{shown}: {}", describe(e, action.timeout))),
            Err(e) => {
                return Attempt::failed(format!("{shown}: {}", describe(e, action.timeout)), ErrorKind::Transient)
            }
        };
        let status = response.status();
        // Read past the limit by the longest form of a secret, so that one across the limit is
        // still found whole when the record is cleaned, and cut only after that.
        let text = read_prefix(response, BODY_LIMIT + self.secrets.longest_form()).await;
        let code = Some(i32::from(status.as_u16()));
        if status.is_success() {
            return Attempt::Succeeded { response_code: code, result: Some(text), record: Record::ToWrite };
        }
        let kind = if status.is_client_error() && !retryable_client_error(status.as_u16()) {
            ErrorKind::Permanent
        } else {
            ErrorKind::Transient
        };
        Attempt::Failed { error: format!("HTTP status {status}"), kind, response_code: code, result: Some(text) }
    }
}

/// The first `limit` bytes of the body (a large response is not read to its end).
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> String {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]),
            Ok(None) => break,
            Err(e) => return format!("(cannot read the response body: {e})"),
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// What went wrong, without the URL (the caller adds it, redacted).
fn describe(e: reqwest::Error, timeout: Duration) -> String {
    let e = e.without_url();
    let what = if e.is_timeout() {
        format!("no response within {} ms", timeout.as_millis())
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut text = format!("{what}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgevents_rules::ActionKind;
    use serde_json::json;

    fn action() -> ActionDef {
        ActionDef {
            name: "mail".into(),
            kind: ActionKind::Sql { statement: String::new() },
            owner: Some("ann".into()),
            problem: None,
            static_parameters: Map::new(),
            timeout: Duration::from_secs(1),
            max_attempts: 1,
            backoff: Duration::ZERO,
            backoff_max: Duration::ZERO,
        }
    }

    #[test]
    fn base_url_and_placeholders_make_the_url() {
        let parameters = json!({"id": "a/b"}).as_object().cloned().unwrap();
        let event = json!({});
        let secrets = Secrets::default();
        let granted = BTreeSet::new();
        let scope =
            Scope { parameters: &parameters, event: &event, secrets: &secrets, granted: &granted, owner: "ann" };
        let made = url(&action(), "{base_url}/users/{{id}}", Some("http://api.test:8080/"), scope).unwrap();
        assert_eq!(made.as_str(), "http://api.test:8080/users/a%2Fb");
        let err = url(&action(), "{base_url}/x", None, scope).unwrap_err();
        assert!(err.contains("no base_url is set"), "{err}");
        assert!(url(&action(), "http://exa mple/", None, scope).unwrap_err().contains("invalid URL"));
        assert!(url(&action(), "{base_url}/x", Some("ftp://h"), scope).unwrap_err().contains("only http"));
    }

    #[tokio::test]
    async fn only_the_start_of_a_large_body_is_read() {
        let big = http::Response::new(vec![b'x'; BODY_LIMIT * 4]);
        assert_eq!(read_prefix(reqwest::Response::from(big), BODY_LIMIT).await.len(), BODY_LIMIT);
        let small = http::Response::new("ok".to_owned());
        assert_eq!(read_prefix(reqwest::Response::from(small), BODY_LIMIT).await, "ok");
    }

    #[test]
    fn records_name_the_template_and_the_origin_never_the_rendered_url() {
        let url = reqwest::Url::parse("https://api.example.com:8443/bot123%3AABC/send?chat=1").unwrap();
        let text = shown("{base_url}/bot{{secret.TOKEN}}/send?chat={{chat}}", &url);
        assert_eq!(text, "{base_url}/bot{{secret.TOKEN}}/send?chat={{chat}} (https://api.example.com:8443)");
        assert!(!text.contains("ABC"));
    }

    #[test]
    fn placeholders_may_not_choose_where_the_request_goes() {
        for template in [
            "https://{{secret.KEY}}.evil.example/x",
            "https://api.example.com:{{port}}/x",
            "{{scheme}}://api.example.com/",
            "https://user:{{secret.P}}@api.example.com/",
            "https://{{host}}",
        ] {
            assert!(placeholder_in_origin(template), "{template}");
        }
        for template in [
            "https://api.example.com/{{id}}",
            "{base_url}/{{id}}",
            "https://api.example.com?x={{x}}",
            "https://h#{{f}}",
        ] {
            assert!(!placeholder_in_origin(template), "{template}");
        }
    }

    #[test]
    fn routing_headers_are_reserved() {
        for name in ["Host", "host", "Content-Length", "Transfer-Encoding", "Proxy-Authorization", "Connection"] {
            assert!(reserved(name), "{name}");
        }
        assert!(!reserved("Authorization") && !reserved("X-Api-Key"));
    }

    #[test]
    fn which_statuses_are_worth_retrying() {
        assert!(retryable_client_error(429));
        assert!(retryable_client_error(408));
        assert!(!retryable_client_error(400));
        assert!(!retryable_client_error(404));
    }
}
