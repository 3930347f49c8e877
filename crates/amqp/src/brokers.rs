//! The RabbitMQ nodes a client may connect to: one URL, or several for a cluster.
//!
//! The list is shuffled once, when it is made, so that many clients given the same list spread
//! over the nodes (as the Java client and Spring do). Connecting tries the node in use first,
//! then each other node in turn; the first that answers becomes the node in use, and a change
//! of node is logged and counted (`pgevents_rabbitmq_failovers_total`). Clones share the node in
//! use, so every connection of one component follows a failover together.
//!
//! Waiting between rounds (backoff) is the caller's reconnect supervisor's job
//! (`pgevents_retry::Supervisor`): one call here is one round over the nodes.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::seq::SliceRandom;

use crate::{AmqpError, AmqpUrl, Schemes, AMQP_SCHEMES};

/// Counts changes of the node in use.
pub const FAILOVERS: &str = "pgevents_rabbitmq_failovers_total";

/// Registers the help text of this crate's metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        FAILOVERS,
        "Connections made to another RabbitMQ node than the one in use, because it did not answer"
    );
}

/// A non-empty list of broker URLs and the node in use.
#[derive(Clone)]
pub struct Brokers {
    nodes: Arc<[AmqpUrl]>,
    in_use: Arc<AtomicUsize>,
}

impl Brokers {
    /// The nodes in a random order. Fails on an empty list.
    pub fn new(mut nodes: Vec<AmqpUrl>) -> Result<Brokers, AmqpError> {
        if nodes.is_empty() {
            return Err(AmqpError::InvalidUrl("no RabbitMQ URL was given".to_owned()));
        }
        nodes.shuffle(&mut rand::rng());
        Ok(Brokers::in_order(nodes))
    }

    /// The nodes in the order given (a single node; tests that must know which node comes
    /// first). `nodes` is not empty.
    fn in_order(nodes: Vec<AmqpUrl>) -> Brokers {
        Brokers { nodes: nodes.into(), in_use: Arc::new(AtomicUsize::new(0)) }
    }

    /// Splits a list of URLs (`amqp://a,amqp://b`; a comma counts as a separator only before
    /// `amqp://` or `amqps://`, so passwords may hold commas) and parses each.
    pub fn parse_list(text: &str) -> Result<Vec<AmqpUrl>, AmqpError> {
        split_urls(text, AMQP_SCHEMES).map(str::parse).collect()
    }

    /// The nodes, in the order they are tried from the node in use.
    pub fn nodes(&self) -> impl Iterator<Item = &AmqpUrl> {
        let first = self.in_use();
        (0..self.nodes.len()).map(move |i| &self.nodes[(first + i) % self.nodes.len()])
    }

    /// The node tried first.
    pub fn current(&self) -> &AmqpUrl {
        &self.nodes[self.in_use()]
    }

    fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed) % self.nodes.len()
    }

    /// Tries `open` on each node, from the node in use on; the first success becomes the node in
    /// use. With every node failing: a single node's error as it is; for several, one error
    /// naming each node's, transient when any of them is (a node that refuses for good during a
    /// rolling restart must not stop the retries while others may come back).
    pub(crate) async fn first_answering<T, F>(&self, mut open: impl FnMut(AmqpUrl) -> F) -> Result<T, AmqpError>
    where
        F: std::future::Future<Output = Result<T, AmqpError>>,
    {
        let first = self.in_use();
        let mut errors: Vec<AmqpError> = Vec::new();
        for step in 0..self.nodes.len() {
            let index = (first + step) % self.nodes.len();
            let node = &self.nodes[index];
            match open(node.clone()).await {
                Ok(opened) => {
                    if index != first {
                        self.in_use.store(index, Ordering::Relaxed);
                        metrics::counter!(FAILOVERS).increment(1);
                        tracing::warn!(node = %node, previous = %self.nodes[first], "failed over to another RabbitMQ node");
                    } else if self.nodes.len() > 1 {
                        tracing::info!(node = %node, "connected to RabbitMQ node");
                    }
                    return Ok(opened);
                }
                Err(e) => {
                    if self.nodes.len() > 1 {
                        tracing::warn!(node = %node, error = %e, "RabbitMQ node did not answer; trying the next");
                    }
                    errors.push(e);
                }
            }
        }
        if errors.len() <= 1 {
            return Err(errors.pop().unwrap_or_else(|| AmqpError::InvalidUrl("no RabbitMQ URL was given".to_owned())));
        }
        let transient = errors.iter().any(|e| e.kind().is_transient());
        let kind = if transient { pgevents_retry::ErrorKind::Transient } else { errors[0].kind() };
        let reason = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        Err(AmqpError::Connect { url: self.to_string(), reason: format!("no node answered: {reason}"), kind })
    }
}

impl From<AmqpUrl> for Brokers {
    fn from(url: AmqpUrl) -> Brokers {
        Brokers::in_order(vec![url])
    }
}

impl FromStr for Brokers {
    type Err = AmqpError;

    fn from_str(text: &str) -> Result<Brokers, AmqpError> {
        Brokers::new(Brokers::parse_list(text)?)
    }
}

/// The list with passwords hidden.
impl fmt::Display for Brokers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, node) in self.nodes.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{node}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Brokers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Brokers [{self}], in use: {}", self.current())
    }
}

/// The URLs of a comma-separated list of `schemes`' URLs: a comma separates only where the next
/// URL's scheme starts (a password or a file name may hold a comma).
pub fn split_urls(text: &str, schemes: Schemes) -> impl Iterator<Item = &str> {
    let (plain, tls) = (format!("{}://", schemes.plain), format!("{}://", schemes.tls));
    let mut starts = vec![0];
    for (at, _) in text.match_indices(',') {
        let rest = text[at + 1..].trim_start();
        if rest.starts_with(&plain) || rest.starts_with(&tls) {
            starts.push(at + 1);
        }
    }
    let ends: Vec<usize> = starts.iter().skip(1).map(|s| s - 1).chain([text.len()]).collect();
    starts.into_iter().zip(ends).map(move |(s, e)| text[s..e].trim()).filter(|url| !url.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_splits_only_before_a_scheme() {
        let urls = Brokers::parse_list("amqp://u:p,w@a:5672/%2f, amqps://u:p@b/v,amqp://c").unwrap();
        let shown: Vec<String> = urls.iter().map(|u| format!("{}:{} {}", u.host, u.port, u.password)).collect();
        assert_eq!(shown, ["a:5672 p,w", "b:5671 p", "c:5672 guest"]);
        assert!(Brokers::parse_list("").unwrap().is_empty());
        assert!("".parse::<Brokers>().is_err(), "an empty list is an error");
        assert!(Brokers::parse_list("amqp://a,http://b").is_err(), "a comma not before a scheme stays in the URL");
    }

    #[test]
    fn shuffles_spread_the_first_node() {
        let urls = Brokers::parse_list("amqp://a,amqp://b,amqp://c").unwrap();
        let firsts: std::collections::HashSet<String> =
            (0..200).map(|_| Brokers::new(urls.clone()).unwrap().current().host.clone()).collect();
        assert_eq!(firsts.len(), 3, "{firsts:?}");
    }

    #[tokio::test]
    async fn the_first_node_that_answers_becomes_the_node_in_use() {
        let brokers = Brokers::in_order(Brokers::parse_list("amqp://a,amqp://b,amqp://c").unwrap());
        let tried = std::sync::Mutex::new(Vec::new());
        let opened = brokers
            .first_answering(|node| {
                tried.lock().unwrap().push(node.host.clone());
                async move {
                    if node.host == "c" {
                        Ok(node.host)
                    } else {
                        Err(AmqpError::InvalidUrl(format!("{} down", node.host)))
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(opened, "c");
        assert_eq!(*tried.lock().unwrap(), ["a", "b", "c"]);
        assert_eq!(brokers.clone().current().host, "c", "clones share the node in use");
        let hosts: Vec<&str> = brokers.nodes().map(|n| n.host.as_str()).collect();
        assert_eq!(hosts, ["c", "a", "b"]);

        // Every node fails: one error naming each, transient as soon as one node's error is.
        let failed = brokers.first_answering(|node| async move {
            Err::<(), _>(if node.host == "b" {
                AmqpError::Closed("b restarting".into())
            } else {
                AmqpError::InvalidUrl(format!("{} refuses", node.host))
            })
        });
        let error = failed.await.unwrap_err();
        assert!(error.kind().is_transient(), "{error}");
        let text = error.to_string();
        assert!(text.contains("c refuses") && text.contains("b restarting") && text.contains("a refuses"), "{text}");
        assert!(!text.contains(":guest@"), "no password: {text}");
    }
}
