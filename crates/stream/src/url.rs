//! Stream protocol URLs: `rabbitmq-stream://user:password@host:5552/vhost` and
//! `rabbitmq-stream+tls://...` (port 5551), with the TLS query parameters of AMQP URLs
//! (`cacertfile`, `certfile`, `keyfile`, `verify`) and `heartbeat`. Parsed by the AMQP URL
//! parser with the stream protocol's schemes and ports. Errors and `Display` never show the
//! password.
//!
//! A cluster's nodes may be listed, comma-separated, as for `--rabbitmq-url`: URLs that differ
//! in their host and port only. A first connection goes to the first node that answers, in the
//! order given; the stream's leader and replicas are then found through it.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pgevents_amqp::{AmqpUrl, AuthMechanism, Schemes};

use crate::StreamError;

const STREAM_SCHEMES: Schemes =
    Schemes { plain: "rabbitmq-stream", tls: "rabbitmq-stream+tls", plain_port: 5552, tls_port: 5551 };

/// A parsed stream protocol URL: the settings and first node, the cluster's other nodes (host
/// and port) when listed, and the node that answered last (shared by the URL's clones), where the
/// next first connection starts.
#[derive(Clone)]
pub struct StreamUrl(pub(crate) AmqpUrl, Vec<(String, u16)>, Arc<AtomicUsize>);

impl PartialEq for StreamUrl {
    fn eq(&self, other: &StreamUrl) -> bool {
        self.0 == other.0 && self.1 == other.1
    }
}

impl Eq for StreamUrl {}

impl std::str::FromStr for StreamUrl {
    type Err = StreamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut urls = pgevents_amqp::split_urls(s, STREAM_SCHEMES);
        let first = parse_one(urls.next().unwrap_or_default())?;
        let mut others = Vec::new();
        for (n, text) in urls.enumerate() {
            let mut other = parse_one(text).map_err(|e| match e {
                StreamError::InvalidUrl(why) => StreamError::InvalidUrl(format!("URL {} of the list: {why}", n + 2)),
                other => other,
            })?;
            let node = (std::mem::take(&mut other.host), other.port);
            other.host.clone_from(&first.host);
            other.port = first.port;
            if other != first {
                return Err(StreamError::InvalidUrl(format!(
                    "URL {} of the list differs from the first in more than its host and port: the nodes of a \
                     cluster take the same user, password, vhost, scheme and parameters",
                    n + 2
                )));
            }
            others.push(node);
        }
        Ok(StreamUrl(first, others, Arc::default()))
    }
}

/// One node's URL.
fn parse_one(s: &str) -> Result<AmqpUrl, StreamError> {
    let url = AmqpUrl::parse_with(s, STREAM_SCHEMES).map_err(|e| StreamError::InvalidUrl(e.to_string()))?;
    let unsupported = if url.auth != AuthMechanism::Plain {
        Some("auth_mechanism")
    } else if url.channel_max != 0 || url.frame_max != 0 {
        Some("channel_max and frame_max")
    } else if url.tls_options.server_name.is_some() {
        Some("server_name_indication")
    } else {
        None
    };
    if let Some(parameter) = unsupported {
        return Err(StreamError::InvalidUrl(format!(
            "{parameter} is an AMQP parameter the stream protocol client does not take \
             (rabbitmq-stream:// URLs take heartbeat, cacertfile, certfile, keyfile and verify)"
        )));
    }
    Ok(url)
}

impl StreamUrl {
    /// The nodes (host and port), in the order given.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, u16)> {
        std::iter::once((self.0.host.as_str(), self.0.port))
            .chain(self.1.iter().map(|(host, port)| (host.as_str(), *port)))
    }

    /// The nodes in the order a first connection tries them: from the one that answered last,
    /// then on in the order given, round.
    pub(crate) fn nodes_to_try(&self) -> Vec<(usize, (&str, u16))> {
        let nodes: Vec<(&str, u16)> = self.nodes().collect();
        let start = self.2.load(Ordering::Relaxed) % nodes.len();
        (0..nodes.len()).map(|i| (start + i) % nodes.len()).map(|i| (i, nodes[i])).collect()
    }

    /// Node number `index` answered: the next first connection starts there.
    pub(crate) fn answered(&self, index: usize) {
        self.2.store(index, Ordering::Relaxed);
    }

    pub fn host(&self) -> &str {
        &self.0.host
    }

    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// Replaces the password (`--stream-password-file`).
    pub fn set_password(&mut self, password: &str) {
        self.0.password = password.to_owned();
    }

    /// The TLS files (`--stream-ca-file`, ...), where given.
    pub fn set_tls_files(
        &mut self,
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) {
        let options = &mut self.0.tls_options;
        for (option, value) in
            [(&mut options.ca_file, ca), (&mut options.cert_file, cert), (&mut options.key_file, key)]
        {
            if let Some(path) = value {
                *option = Some(path.to_owned());
            }
        }
    }

    /// Checks that the settings fit together (TLS files need `rabbitmq-stream+tls://`).
    pub fn check(&self) -> Result<(), StreamError> {
        self.0.check().map_err(|e| StreamError::InvalidUrl(e.to_string()))
    }
}

impl fmt::Debug for StreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// The URL (each node's) with the password hidden, for logs and errors.
impl fmt::Display for StreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = &self.0;
        let scheme = if url.tls { STREAM_SCHEMES.tls } else { STREAM_SCHEMES.plain };
        let vhost = url::form_urlencoded::byte_serialize(url.vhost.as_bytes()).collect::<String>();
        for (n, (host, port)) in self.nodes().enumerate() {
            let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
            let separator = if n == 0 { "" } else { "," };
            write!(f, "{separator}{scheme}://{}:***@{host}:{port}/{vhost}", url.user)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stream_urls_with_their_ports() {
        let url: StreamUrl = "rabbitmq-stream://app:s%40cret@mq:5552/prod".parse().unwrap();
        assert_eq!(
            (url.0.host.as_str(), url.0.port, url.0.password.as_str(), url.0.vhost.as_str()),
            ("mq", 5552, "s@cret", "prod")
        );
        assert_eq!(url.to_string(), "rabbitmq-stream://app:***@mq:5552/prod");
        let url: StreamUrl = "rabbitmq-stream+tls://mq/%2f".parse().unwrap();
        assert_eq!((url.0.tls, url.0.port, url.0.vhost.as_str()), (true, 5551, "/"));
        assert_eq!(url.to_string(), "rabbitmq-stream+tls://guest:***@mq:5551/%2F");
        let url: StreamUrl = "rabbitmq-stream://localhost".parse().unwrap();
        assert_eq!((url.0.port, url.0.vhost.as_str()), (5552, "/"));
        for bad in [
            "amqp://localhost",
            "rabbitmq-stream://h/?auth_mechanism=external",
            "rabbitmq-stream://u:hunter2@h/?nope=1",
        ] {
            let err = bad.parse::<StreamUrl>().unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("rabbitmq-stream"), "{bad}: {err}");
        }
        let mut url: StreamUrl = "rabbitmq-stream://h".parse().unwrap();
        url.set_tls_files(Some(std::path::Path::new("/ca.pem")), None, None);
        assert!(url.check().unwrap_err().to_string().contains("rabbitmq-stream+tls://"));
    }

    #[test]
    fn a_cluster_lists_its_nodes_with_the_same_settings() {
        let url: StreamUrl = "rabbitmq-stream://app:pw@a:5552/prod, rabbitmq-stream://app:pw@b:6000/prod,rabbitmq-stream://app:pw@[::1]/prod"
            .parse()
            .unwrap();
        assert_eq!(url.nodes().collect::<Vec<_>>(), [("a", 5552), ("b", 6000), ("::1", 5552)]);
        assert_eq!(
            url.to_string(),
            "rabbitmq-stream://app:***@a:5552/prod,rabbitmq-stream://app:***@b:6000/prod,rabbitmq-stream://app:***@[::1]:5552/prod"
        );
        assert_eq!("rabbitmq-stream://a".parse::<StreamUrl>().unwrap().nodes().count(), 1);
        for differing in [
            "rabbitmq-stream://app:pw@a/prod,rabbitmq-stream://app:other@b/prod",
            "rabbitmq-stream://app:pw@a/prod,rabbitmq-stream://app:pw@b/test",
            "rabbitmq-stream://app:pw@a/prod,rabbitmq-stream+tls://app:pw@b/prod",
            "rabbitmq-stream://app:pw@a/prod,rabbitmq-stream://app:pw@b/prod?heartbeat=5",
        ] {
            let err = differing.parse::<StreamUrl>().unwrap_err().to_string();
            assert!(err.contains("URL 2 of the list differs"), "{differing}: {err}");
            assert!(!err.contains("pw") && !err.contains("other"), "{err}");
        }
        let err =
            "rabbitmq-stream://a,rabbitmq-stream://u:hunter2@b/?nope=1".parse::<StreamUrl>().unwrap_err().to_string();
        assert!(err.contains("URL 2 of the list"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        // A comma separates URLs only where a stream URL's scheme follows it.
        let url: StreamUrl = "rabbitmq-stream://app:p,w@a/%2f, rabbitmq-stream://app:p,w@b/%2f"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url.0.password, "p,w");
        assert_eq!(url.nodes().count(), 2);
    }

    #[test]
    fn a_first_connection_starts_at_the_node_that_answered_last() {
        let url: StreamUrl = "rabbitmq-stream://a,rabbitmq-stream://b,rabbitmq-stream://c".parse().unwrap();
        let order =
            |url: &StreamUrl| url.nodes_to_try().into_iter().map(|(_, (host, _))| host.to_owned()).collect::<Vec<_>>();
        assert_eq!(order(&url), ["a", "b", "c"]);
        url.clone().answered(1);
        assert_eq!(order(&url), ["b", "c", "a"], "clones share it");
    }
}
