//! Where HTTP actions may go: `--http-allow` host names (`api.example.com`, `*.example.com`)
//! and networks (`203.0.113.0/24`, `10.1.2.3`), checked before each request and again when
//! the connection is made (by the client's DNS resolver, so an answer that changes between the
//! two cannot slip through), and redirects only to the same origin (scheme, host and port), so
//! headers an action sets (credentials) never follow a request elsewhere. With a list, a name
//! that does not resolve here is refused (a proxy could still reach it). Without `--http-allow`
//! any destination is allowed (and `pgevents check` warns).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// A host name, lower case.
    Host(String),
    /// `*.example.com`: `.example.com`, lower case (any subdomain, not the name itself).
    Suffix(String),
    Net(IpNet),
}

/// The destinations HTTP actions may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// `None`: anywhere.
    rules: Option<Arc<Vec<Rule>>>,
}

impl AllowList {
    /// Any destination.
    pub fn any() -> AllowList {
        AllowList::default()
    }

    /// From `--http-allow` items; an empty list allows any destination.
    pub fn parse(items: &[String]) -> Result<AllowList, String> {
        let mut rules = Vec::new();
        for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
            let rule = if let Ok(net) = item.parse::<IpNet>() {
                Rule::Net(net)
            } else if let Ok(ip) = item.parse::<IpAddr>() {
                Rule::Net(IpNet::from(ip))
            } else if let Some(domain) = item.strip_prefix("*.") {
                Rule::Suffix(format!(".{}", valid_host(domain, item)?))
            } else {
                Rule::Host(valid_host(item, item)?)
            };
            rules.push(rule);
        }
        Ok(AllowList { rules: (!rules.is_empty()).then(|| Arc::new(rules)) })
    }

    /// Whether a list was given.
    pub fn is_restricted(&self) -> bool {
        self.rules.is_some()
    }

    fn rules(&self) -> &[Rule] {
        self.rules.as_deref().map(Vec::as_slice).unwrap_or_default()
    }

    /// Whether the host name itself is allowed (then any address it resolves to is).
    fn name_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        !self.is_restricted()
            || self.rules().iter().any(|rule| match rule {
                Rule::Host(name) => *name == host,
                Rule::Suffix(suffix) => host.ends_with(suffix.as_str()),
                Rule::Net(_) => false,
            })
    }

    fn has_networks(&self) -> bool {
        self.rules().iter().any(|rule| matches!(rule, Rule::Net(_)))
    }

    fn address_allowed(&self, ip: IpAddr) -> bool {
        !self.is_restricted() || self.rules().iter().any(|rule| matches!(rule, Rule::Net(net) if net.contains(&ip)))
    }

    /// Checks the destination of `url` before a request: `Err` says why it is refused.
    pub async fn check(&self, url: &Url) -> Result<(), String> {
        if !self.is_restricted() {
            return Ok(());
        }
        match url.host() {
            Some(url::Host::Domain(name)) if self.name_allowed(name) => Ok(()),
            // Without networks in the list only names can be allowed: a name that is not is
            // refused without asking DNS about it.
            Some(url::Host::Domain(name)) if !self.has_networks() => {
                Err(format!("{name} is not allowed by --http-allow"))
            }
            Some(url::Host::Domain(name)) => {
                let port = url.port_or_known_default().unwrap_or(0);
                // A name that does not resolve here is refused: only what resolves can be checked.
                let addresses: Vec<IpAddr> = match tokio::net::lookup_host((name, port)).await {
                    Ok(addresses) => addresses.map(|a| a.ip()).collect(),
                    Err(_) => Vec::new(),
                };
                if addresses.is_empty() {
                    return Err(format!("{name} does not resolve here, so --http-allow cannot check where it leads"));
                }
                match addresses.into_iter().find(|ip| !self.address_allowed(*ip)) {
                    Some(ip) => Err(format!("{name} resolves to {ip}, which --http-allow does not allow")),
                    None => Ok(()),
                }
            }
            Some(url::Host::Ipv4(ip)) if self.address_allowed(IpAddr::V4(ip)) => Ok(()),
            Some(url::Host::Ipv6(ip)) if self.address_allowed(IpAddr::V6(ip)) => Ok(()),
            Some(host) => Err(format!("{host} is not allowed by --http-allow")),
            None => Err("the URL has no host".to_owned()),
        }
    }

    /// The resolver for the HTTP client: only allowed addresses come out of it.
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { allow: self.clone() })
    }
}

fn valid_host(host: &str, item: &str) -> Result<String, String> {
    match url::Host::parse(host) {
        Ok(url::Host::Domain(name)) => Ok(name.to_ascii_lowercase()),
        _ => Err(format!("invalid --http-allow item {item:?}: expected a host name, *.domain, an IP address or a network (10.0.0.0/8)")),
    }
}

/// Resolves host names and keeps the addresses `--http-allow` allows (all of them for an
/// allowed name); none left is an error.
#[derive(Debug)]
pub struct GuardedResolver {
    allow: AllowList,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let named = allow.name_allowed(&host);
            let kept: Vec<SocketAddr> =
                resolved.into_iter().filter(|a| named || allow.address_allowed(a.ip())).collect();
            if kept.is_empty() {
                return Err(format!("{host} resolves to no address --http-allow allows").into());
            }
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// Follows up to 10 redirects within the same origin; one to another scheme, host or port is
/// an error (a request with credentials must not be sent elsewhere).
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let previous = attempt.previous();
        let Some(first) = previous.first() else { return attempt.follow() };
        if previous.len() > MAX_REDIRECTS {
            let error = format!("more than {MAX_REDIRECTS} redirects");
            return attempt.error(error);
        }
        match redirect_refusal(first, attempt.url()) {
            Some(error) => attempt.error(error),
            None => attempt.follow(),
        }
    })
}

/// Why a redirect from a request to `first` may not go to `next`.
fn redirect_refusal(first: &Url, next: &Url) -> Option<String> {
    if next.scheme() != first.scheme() {
        return Some(format!("a redirect from {} to {} was refused", first.scheme(), next.scheme()));
    }
    if next.host_str() != first.host_str() {
        return Some(format!("a redirect to another host ({}) was refused", next.host_str().unwrap_or("none")));
    }
    if next.port_or_known_default() != first.port_or_known_default() {
        return Some(format!(
            "a redirect to another port ({}) was refused",
            next.port_or_known_default().map(|p| p.to_string()).unwrap_or_default()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> AllowList {
        AllowList::parse(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[tokio::test]
    async fn names_suffixes_and_networks() {
        let allow = list(&["api.example.com", "*.hooks.example.com", "127.0.0.0/8", "::1"]);
        assert!(allow.is_restricted());
        for ok in [
            "https://API.example.com/x",
            "https://a.hooks.example.com/",
            "http://127.0.0.5:8080/",
            "http://[::1]/",
            "http://localhost/",
        ] {
            assert_eq!(allow.check(&Url::parse(ok).unwrap()).await, Ok(()), "{ok}");
        }
        for refused in ["http://10.0.0.1/", "http://[::2]/"] {
            let err = allow.check(&Url::parse(refused).unwrap()).await.unwrap_err();
            assert!(err.contains("--http-allow"), "{refused}: {err}");
        }
        // A name that matches no name rule must resolve to allowed addresses only.
        let err = list(&["10.0.0.0/8"]).check(&Url::parse("http://localhost:8080/").unwrap()).await.unwrap_err();
        assert!(
            err.starts_with("localhost resolves to ") && err.ends_with("which --http-allow does not allow"),
            "{err}"
        );
        assert!(allow.name_allowed("x.hooks.example.com.") && !allow.name_allowed("hooks.example.com"));
        assert!(!allow.name_allowed("example.org.hooks.example.com.evil"));
        assert!(!AllowList::parse(&[]).unwrap().is_restricted());
        assert_eq!(AllowList::any().check(&Url::parse("http://10.0.0.1/").unwrap()).await, Ok(()));
        let bad = AllowList::parse(&["http://x/".to_owned()]).unwrap_err();
        assert!(bad.contains("invalid --http-allow item"), "{bad}");
    }

    #[tokio::test]
    async fn names_outside_a_list_of_names_are_refused_without_resolving() {
        let err = list(&["api.example.com"]).check(&Url::parse("http://localhost:8080/").unwrap()).await.unwrap_err();
        assert_eq!(err, "localhost is not allowed by --http-allow");
    }

    #[tokio::test]
    async fn names_that_do_not_resolve_are_refused_with_a_list() {
        let allow = list(&["10.0.0.0/8"]);
        let err = allow.check(&Url::parse("http://no-such-name.invalid/").unwrap()).await.unwrap_err();
        assert!(err.contains("does not resolve"), "{err}");
        assert_eq!(AllowList::any().check(&Url::parse("http://no-such-name.invalid/").unwrap()).await, Ok(()));
    }

    #[test]
    fn redirects_stay_on_the_same_origin() {
        let from = Url::parse("https://api.example.com/a").unwrap();
        let to = |u: &str| redirect_refusal(&from, &Url::parse(u).unwrap());
        assert_eq!(to("https://api.example.com/b"), None);
        assert_eq!(to("https://api.example.com:443/b"), None, "the default port is the same port");
        assert!(to("https://api.example.com:8443/b").unwrap().contains("another port"));
        assert!(to("https://evil.example.com/b").unwrap().contains("another host"));
        assert!(to("http://api.example.com/b").unwrap().contains("from https to http"));
    }

    #[tokio::test]
    async fn the_resolver_keeps_only_allowed_addresses() {
        let resolver = list(&["127.0.0.0/8"]).resolver();
        let addrs: Vec<SocketAddr> = resolver.resolve("localhost".parse().unwrap()).await.unwrap().collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback() && a.is_ipv4()), "{addrs:?}");
        let refused = list(&["10.0.0.0/8"]).resolver().resolve("localhost".parse().unwrap()).await;
        assert!(refused.is_err());
    }
}
