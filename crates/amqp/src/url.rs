//! AMQP URLs (`amqp://user:pass@host:port/vhost`, `amqps://...`), as RabbitMQ documents them.

use std::fmt;

use crate::AmqpError;

/// A parsed broker URL.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// Heartbeat in seconds (`?heartbeat=N`), 30 by default.
    pub heartbeat: u16,
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Prints the URL with the password hidden, for logs and error messages.
impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let vhost = if self.vhost == "/" { "%2f".to_owned() } else { self.vhost.clone() };
        write!(f, "{scheme}://{}:***@{}:{}/{vhost}", self.user, self.host, self.port)
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(|| format!("incomplete escape in {s:?}"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("invalid escape %{hex} in {s:?}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

impl std::str::FromStr for AmqpUrl {
    type Err = AmqpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| AmqpError::InvalidUrl(format!("{why}; expected amqp://user:password@host:5672/vhost"));
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme".into()))?;
        let tls = match scheme {
            "amqp" => false,
            "amqps" => true,
            other => return Err(bad(format!("unknown scheme {other:?}"))),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = authority.rsplit_once('@').unwrap_or(("guest:guest", authority));
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unterminated IPv6 address".into()))?;
            (host.to_owned(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (hostport.to_owned(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad(format!("invalid port {p:?}")))?,
            None if tls => 5671,
            None => 5672,
        };
        let mut heartbeat = 30;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            if let Some(v) = pair.strip_prefix("heartbeat=") {
                heartbeat = v.parse().map_err(|_| bad(format!("invalid heartbeat {v:?}")))?;
            }
        }
        Ok(AmqpUrl {
            tls,
            host: if host.is_empty() { "localhost".to_owned() } else { percent_decode(&host).map_err(bad)? },
            port,
            user: percent_decode(user).map_err(bad)?,
            password: percent_decode(password).map_err(bad)?,
            vhost: if path.is_empty() { "/".to_owned() } else { percent_decode(path).map_err(bad)? },
            heartbeat,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let u: AmqpUrl = "amqp://guest:guest@localhost:5672/%2f".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.user.as_str(), u.password.as_str(), u.vhost.as_str()),
            ("localhost", 5672, "guest", "guest", "/")
        );
        let u: AmqpUrl = "amqps://app:p%40ss@mq.example.com/prod?heartbeat=10".parse().unwrap();
        assert!(u.tls);
        assert_eq!((u.port, u.password.as_str(), u.vhost.as_str(), u.heartbeat), (5671, "p@ss", "prod", 10));
        let u: AmqpUrl = "amqp://[::1]:5673".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.vhost.as_str()), ("::1", 5673, "/"));
    }

    #[test]
    fn hides_the_password() {
        let u: AmqpUrl = "amqp://app:secret@h:1/v".parse().unwrap();
        assert!(!u.to_string().contains("secret"));
        assert!(!format!("{u:?}").contains("secret"));
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        for bad in ["localhost:5672", "http://x", "amqp://h:notaport/", "amqp://h/%zz"] {
            let err = bad.parse::<AmqpUrl>().unwrap_err().to_string();
            assert!(err.contains("expected amqp://"), "{err}");
        }
    }
}
