//! AMQP URLs as RabbitMQ's URI specification defines them
//! (`amqp://user:password@host:port/vhost?heartbeat=10`, `amqps://...`), parsed with the `url`
//! crate, with the standard query parameters:
//!
//! | parameter | meaning |
//! | --- | --- |
//! | `heartbeat` | seconds (30 by default; 0 turns heartbeats off) |
//! | `connection_timeout` | milliseconds to open the connection (30000) |
//! | `channel_max`, `frame_max` | the client's limits (the server's by default) |
//! | `auth_mechanism` | `plain` (default), `amqplain` or `external` (the TLS client certificate) |
//! | `cacertfile`, `certfile`, `keyfile` | TLS: CA to trust, client certificate and key (PEM) |
//! | `verify` | `verify_peer` (default) or `verify_none` |
//! | `server_name_indication` | the name to verify and send in TLS (default: the host) |
//!
//! Errors never quote the URL: it holds a password.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::AmqpError;

/// How the client authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMechanism {
    /// User name and password (SASL PLAIN).
    #[default]
    Plain,
    /// User name and password, RabbitMQ's older AMQPLAIN.
    AmqPlain,
    /// The TLS client certificate (SASL EXTERNAL, RabbitMQ's `rabbitmq_auth_mechanism_ssl`).
    External,
}

/// TLS settings of an `amqps://` URL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AmqpTls {
    /// CA certificates to trust (PEM); `None`: the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for servers that ask for one and for EXTERNAL.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// `false` with `verify=verify_none`: encrypted, certificate not checked.
    pub verify: bool,
    /// The name to verify the certificate against and send as SNI; `None`: the host.
    pub server_name: Option<String>,
}

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
    /// How long opening the connection may take (`?connection_timeout=ms`).
    pub connection_timeout: Duration,
    /// 0: the server's.
    pub channel_max: u16,
    /// 0: the server's.
    pub frame_max: u32,
    pub auth: AuthMechanism,
    pub tls_options: AmqpTls,
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
        let vhost = percent_encoding::utf8_percent_encode(&self.vhost, percent_encoding::NON_ALPHANUMERIC);
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(f, "{scheme}://{}:***@{host}:{}/{vhost}", self.user, self.port)
    }
}

fn bad(why: impl fmt::Display) -> AmqpError {
    AmqpError::InvalidUrl(why.to_string())
}

fn decoded(part: &str, what: &str) -> Result<String, AmqpError> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| bad(format!("the {what} is not UTF-8 once decoded")))
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, AmqpError> {
    value.parse().map_err(|_| bad(format!("{name} must be a number")))
}

/// The schemes and default ports of a kind of RabbitMQ URL: AMQP's, or the stream protocol's.
#[derive(Debug, Clone, Copy)]
pub struct Schemes {
    pub plain: &'static str,
    pub tls: &'static str,
    pub plain_port: u16,
    pub tls_port: u16,
}

/// `amqp://` (port 5672) and `amqps://` (5671).
pub const AMQP_SCHEMES: Schemes = Schemes { plain: "amqp", tls: "amqps", plain_port: 5672, tls_port: 5671 };

impl std::str::FromStr for AmqpUrl {
    type Err = AmqpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AmqpUrl::parse_with(s, AMQP_SCHEMES)
    }
}

impl AmqpUrl {
    /// Parses a RabbitMQ URL of `schemes` (user, password, host, port, vhost and the query
    /// parameters above).
    pub fn parse_with(s: &str, schemes: Schemes) -> Result<AmqpUrl, AmqpError> {
        AmqpUrl::parse_url(s, schemes).map_err(|e| match e {
            AmqpError::InvalidUrl(why) => AmqpError::InvalidUrl(format!(
                "{why}; expected {}://user:password@host:{}/vhost (the URL itself is not shown: it holds a password)",
                schemes.plain, schemes.plain_port
            )),
            other => other,
        })
    }

    fn parse_url(s: &str, schemes: Schemes) -> Result<AmqpUrl, AmqpError> {
        let parsed = url::Url::parse(s.trim()).map_err(|e| bad(format!("not a URL ({e})")))?;
        let tls = match parsed.scheme() {
            scheme if scheme == schemes.plain => false,
            scheme if scheme == schemes.tls => true,
            _ => return Err(bad(format!("the scheme must be {}:// or {}://", schemes.plain, schemes.tls))),
        };
        let host = match parsed.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Domain(name)) if !name.is_empty() => decoded(name, "host")?,
            _ => "localhost".to_owned(),
        };
        let (user, password) = if parsed.username().is_empty() && parsed.password().is_none() {
            ("guest".to_owned(), "guest".to_owned())
        } else {
            (decoded(parsed.username(), "user name")?, decoded(parsed.password().unwrap_or(""), "password")?)
        };
        // The vhost is the whole path after the first slash ("/" when there is none).
        let vhost = match parsed.path().strip_prefix('/') {
            None | Some("") => "/".to_owned(),
            Some(path) if path.contains('/') => return Err(bad("the vhost must be one path segment (write / as %2f)")),
            Some(path) => decoded(path, "vhost")?,
        };
        let mut url = AmqpUrl {
            tls,
            host,
            port: parsed.port().unwrap_or(if tls { schemes.tls_port } else { schemes.plain_port }),
            user,
            password,
            vhost,
            heartbeat: 30,
            connection_timeout: Duration::from_secs(30),
            channel_max: 0,
            frame_max: 0,
            auth: AuthMechanism::Plain,
            tls_options: AmqpTls { verify: true, ..AmqpTls::default() },
        };
        for (name, value) in parsed.query_pairs() {
            url.set(&name, &value)?;
        }
        Ok(url)
    }

    /// Applies one query parameter.
    fn set(&mut self, name: &str, value: &str) -> Result<(), AmqpError> {
        let path = || Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty());
        match name {
            "heartbeat" => self.heartbeat = number(name, value)?,
            "connection_timeout" => self.connection_timeout = Duration::from_millis(number(name, value)?),
            "channel_max" => self.channel_max = number(name, value)?,
            "frame_max" => {
                self.frame_max = number(name, value)?;
                if self.frame_max != 0 && self.frame_max < 4096 {
                    return Err(bad("frame_max must be 0 or at least 4096 (AMQP's minimum)"));
                }
            }
            "auth_mechanism" => {
                self.auth = match value.to_ascii_lowercase().as_str() {
                    "plain" => AuthMechanism::Plain,
                    "amqplain" => AuthMechanism::AmqPlain,
                    "external" => AuthMechanism::External,
                    _ => return Err(bad("auth_mechanism must be plain, amqplain or external")),
                }
            }
            "cacertfile" => self.tls_options.ca_file = path(),
            "certfile" => self.tls_options.cert_file = path(),
            "keyfile" => self.tls_options.key_file = path(),
            "verify" => {
                self.tls_options.verify = match value {
                    "verify_peer" => true,
                    "verify_none" => false,
                    _ => return Err(bad("verify must be verify_peer or verify_none")),
                }
            }
            "server_name_indication" => {
                self.tls_options.server_name = Some(value.to_owned()).filter(|v| !v.is_empty() && v != "disable")
            }
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
        Ok(())
    }

    /// The TLS client settings of the URL (`amqps://`).
    pub fn client_tls(&self) -> pgevents_tls::ClientTls {
        let options = &self.tls_options;
        let client_cert = match (&options.cert_file, &options.key_file) {
            (Some(cert_file), Some(key_file)) => {
                Some(pgevents_tls::ClientCert { cert_file: cert_file.clone(), key_file: key_file.clone() })
            }
            _ => None,
        };
        pgevents_tls::ClientTls {
            verify: if options.verify { pgevents_tls::Verify::Full } else { pgevents_tls::Verify::None },
            ca_file: options.ca_file.clone(),
            client_cert,
        }
    }

    /// Checks that the settings fit together, once options (`--rabbitmq-cert-file`, ...) were
    /// applied; connecting checks it too.
    pub fn check(&self) -> Result<(), AmqpError> {
        let options = &self.tls_options;
        let tls_files = options.ca_file.is_some() || options.cert_file.is_some() || options.key_file.is_some();
        if tls_files && !self.tls {
            return Err(bad("TLS files were given for a URL without TLS: use amqps:// (rabbitmq-stream+tls:// for the stream protocol)"));
        }
        if options.cert_file.is_some() != options.key_file.is_some() {
            return Err(bad("a client certificate needs both a certificate file and a key file"));
        }
        if self.auth == AuthMechanism::External && options.cert_file.is_none() {
            return Err(bad("auth_mechanism=external authenticates with the TLS client certificate: give one (--rabbitmq-cert-file and --rabbitmq-key-file)"));
        }
        Ok(())
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
        assert_eq!(u.to_string(), "amqp://guest:***@[::1]:5673/%2F");
    }

    #[test]
    fn keeps_the_standard_query_parameters() {
        let u: AmqpUrl = "amqps://u:p@h/v?heartbeat=5&connection_timeout=2500&channel_max=64&frame_max=131072&auth_mechanism=EXTERNAL&cacertfile=%2Fca.pem&certfile=/c.pem&keyfile=/k.pem&verify=verify_none&server_name_indication=mq.internal"
            .parse()
            .unwrap();
        assert_eq!(
            (u.heartbeat, u.connection_timeout, u.channel_max, u.frame_max),
            (5, Duration::from_millis(2500), 64, 131072)
        );
        assert_eq!(u.auth, AuthMechanism::External);
        assert_eq!(
            u.tls_options,
            AmqpTls {
                ca_file: Some("/ca.pem".into()),
                cert_file: Some("/c.pem".into()),
                key_file: Some("/k.pem".into()),
                verify: false,
                server_name: Some("mq.internal".into()),
            }
        );
    }

    #[test]
    fn hides_the_password() {
        let u: AmqpUrl = "amqp://app:secret@h:1/v".parse().unwrap();
        assert!(!u.to_string().contains("secret"));
        assert!(!format!("{u:?}").contains("secret"));
    }

    #[test]
    fn rejects_garbage_with_a_hint_and_never_echoes_the_password() {
        for bad in [
            "localhost:5672",
            "http://x",
            "amqp://u:s3cret@h:notaport/",
            "amqp://u:s3cret@h/v?heartbeat=s3cret",
            "amqp://u:s3cret@h/a/b",
            "amqp://u:s3cret@h/v?certfile=/c.pem&keyfile=/k.pem",
            "amqps://u:s3cret@h/v?auth_mechanism=external",
            "amqps://u:s3cret@h/v?certfile=/c.pem",
            "amqp://u:s3cret@h/v?frame_max=100",
        ] {
            let (err, parsed) = match bad.parse::<AmqpUrl>() {
                Ok(url) => (url.check().unwrap_err().to_string(), true),
                Err(e) => (e.to_string(), false),
            };
            // Settings that do not fit together say so; a URL that does not parse shows the form.
            assert!(parsed || err.contains("expected amqp://"), "{bad}: {err}");
            assert!(!err.contains("s3cr"), "{bad}: {err}");
        }
        let err = "amqp://u:p@h/v?nope=1".parse::<AmqpUrl>().unwrap_err().to_string();
        assert!(err.contains("unknown query parameter \"nope\""), "{err}");
    }
}
