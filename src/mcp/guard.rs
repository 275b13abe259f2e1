//! The address guard: which MCP server URLs may be reached.
//!
//! Servers are registered by users, so their URLs must not become a way into the service's own
//! host or network: only globally routable addresses ([`super::special_addresses`]) that are
//! not this host's own ([`super::local_addresses`]) are reached, for IPv4, IPv6 and IPv4 inside
//! IPv6 alike. An address literal is checked when the URL is used; a host name is resolved
//! once when a session is opened ([`Guard::pin`]), and the HTTP client's [`GuardedResolver`]
//! hands that checked answer to the connection: no second lookup can answer differently.
//! (A connection that a session opens later is resolved and filtered the same way.)
//! Operators let chosen servers through with `allowed_hosts`.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
};

use futures::future::BoxFuture;
use url::{Host, Url};

use super::{local_addresses::LocalAddresses, special_addresses::not_global_because};

/// Why the guard refused a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GuardError {
    /// Not an `http` or `https` URL with a host.
    #[error("the server address is not an http or https URL")]
    BadUrl,
    /// The host resolves only to addresses the service does not connect to.
    #[error("the server address is not allowed")]
    Restricted,
    /// The host name has no address.
    #[error("the server name could not be resolved")]
    Unresolved,
}

/// Which HTTP client may reach a checked URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Through the resolver that drops restricted addresses.
    Guarded,
    /// Listed in `allowed_hosts`: any address.
    Allowed,
}

/// The host and port of a URL, as the settings name them (`host` or `host:port`, lowercase,
/// IPv6 hosts in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Authority {
    host: String,
    port: u16,
}

impl Authority {
    /// The authority of an `http` or `https` URL (the port defaults to the scheme's).
    pub(crate) fn of(url: &Url) -> Result<Self, GuardError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(GuardError::BadUrl);
        }
        let host = url.host_str().ok_or(GuardError::BadUrl)?;
        let port = url.port_or_known_default().ok_or(GuardError::BadUrl)?;
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether one of these entries (`host` or `host:port`, normalised by [`normalise_hosts`])
    /// names this authority.
    pub(crate) fn is_listed(&self, entries: &[String]) -> bool {
        let with_port = format!("{}:{}", self.host, self.port);
        entries
            .iter()
            .any(|entry| *entry == self.host || *entry == with_port)
    }
}

/// Settings entries in the form [`Authority::is_listed`] compares: trimmed, lowercase, no
/// empty ones.
pub(crate) fn normalise_hosts(entries: &[String]) -> Vec<String> {
    entries
        .iter()
        .map(|entry| entry.trim().to_ascii_lowercase())
        .filter(|entry| !entry.is_empty())
        .collect()
}

/// Turns a host name into IP addresses. The service asks the system's resolver
/// ([`SystemLookup`]); tests give names of their own.
pub trait HostLookup: Send + Sync + 'static {
    /// The addresses of `host`, a name (never an address literal).
    fn lookup(&self, host: &str) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>>;
}

/// The system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

impl HostLookup for SystemLookup {
    fn lookup(&self, host: &str) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|address| address.ip())
                .collect())
        })
    }
}

/// Decides which servers may be reached, and resolves their names for the HTTP clients.
pub(crate) struct Guard {
    allowed_hosts: Vec<String>,
    lookup: Arc<dyn HostLookup>,
    local: LocalAddresses,
    /// The permitted addresses of the names of sessions being opened, by name.
    pins: Mutex<HashMap<String, Pinned>>,
}

/// One name's answer, kept while sessions hold it.
struct Pinned {
    addresses: Arc<[SocketAddr]>,
    holders: usize,
}

impl Guard {
    /// A guard that lets the hosts in `allowed_hosts` through and resolves with `lookup`.
    pub(crate) fn new(allowed_hosts: &[String], lookup: Arc<dyn HostLookup>) -> Self {
        Self {
            allowed_hosts: normalise_hosts(allowed_hosts),
            lookup,
            local: LocalAddresses::default(),
            pins: Mutex::default(),
        }
    }

    /// Resolves the name of a server whose session is about to be opened: refuses it when no
    /// permitted address is left, and otherwise keeps the permitted addresses as the answer
    /// the guarded client's connections get until the returned pin is dropped. One lookup,
    /// whose checked answer is what is connected to.
    pub(crate) async fn pin(self: &Arc<Self>, host: &str) -> Result<HostPin, GuardError> {
        let host = host.to_ascii_lowercase();
        let addresses: Arc<[SocketAddr]> = self.resolve(&host, Route::Guarded).await?.into();
        let mut pins = self.pins.lock().unwrap_or_else(PoisonError::into_inner);
        let pinned = pins.entry(host.clone()).or_insert_with(|| Pinned {
            addresses: Arc::clone(&addresses),
            holders: 0,
        });
        pinned.addresses = addresses;
        pinned.holders += 1;
        Ok(HostPin {
            guard: Arc::clone(self),
            host,
        })
    }

    fn pinned(&self, host: &str) -> Option<Arc<[SocketAddr]>> {
        let pins = self.pins.lock().unwrap_or_else(PoisonError::into_inner);
        pins.get(&host.to_ascii_lowercase())
            .map(|pinned| Arc::clone(&pinned.addresses))
    }

    /// Checks a URL before it is used: which client may reach it, or why it may not be
    /// reached. A host name is not resolved here: see [`Guard::pin`].
    pub(crate) fn check(&self, url: &Url) -> Result<Route, GuardError> {
        let authority = Authority::of(url)?;
        if authority.is_listed(&self.allowed_hosts) {
            return Ok(Route::Allowed);
        }
        let literal = match url.host().ok_or(GuardError::BadUrl)? {
            Host::Ipv4(ip) => IpAddr::V4(ip),
            Host::Ipv6(ip) => IpAddr::V6(ip),
            Host::Domain(_) => return Ok(Route::Guarded),
        };
        // An address literal is never resolved, so this check is the one that counts.
        if self.permits(literal) {
            Ok(Route::Guarded)
        } else {
            Err(GuardError::Restricted)
        }
    }

    /// Whether a user's server may be reached at this address: globally routable and not one
    /// of this host's own.
    pub(crate) fn permits(&self, ip: IpAddr) -> bool {
        let refused = not_global_because(ip)
            .or_else(|| self.local.contains(ip).then_some("an address of this host"));
        if let Some(reason) = refused {
            tracing::debug!(%ip, reason, "MCP server address refused");
        }
        refused.is_none()
    }

    /// The addresses of a host name that `route` may connect to.
    async fn resolve(&self, host: &str, route: Route) -> Result<Vec<SocketAddr>, GuardError> {
        let resolved = self
            .lookup
            .lookup(host)
            .await
            .map_err(|_| GuardError::Unresolved)?;
        if resolved.is_empty() {
            return Err(GuardError::Unresolved);
        }
        let kept: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|ip| route == Route::Allowed || self.permits(*ip))
            .map(|ip| SocketAddr::new(ip, 0))
            .collect();
        if kept.is_empty() {
            Err(GuardError::Restricted)
        } else {
            Ok(kept)
        }
    }
}

/// A name's answer kept for a session being opened ([`Guard::pin`]); released when dropped.
pub(crate) struct HostPin {
    guard: Arc<Guard>,
    host: String,
}

impl Drop for HostPin {
    fn drop(&mut self) {
        let mut pins = self
            .guard
            .pins
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(pinned) = pins.get_mut(&self.host) {
            pinned.holders -= 1;
            if pinned.holders == 0 {
                pins.remove(&self.host);
            }
        }
    }
}

/// The DNS resolver of an HTTP client. For [`Route::Guarded`] it answers with the addresses
/// pinned for a session being opened, or else (a connection opened later in a session)
/// resolves the name and keeps only the permitted addresses; either way the client connects
/// only to checked addresses.
#[derive(Clone)]
pub(crate) struct GuardedResolver {
    guard: Arc<Guard>,
    route: Route,
}

impl GuardedResolver {
    /// The resolver of the client that takes `route`.
    pub(crate) fn new(guard: Arc<Guard>, route: Route) -> Self {
        Self { guard, route }
    }
}

impl reqwest13::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest13::dns::Name) -> reqwest13::dns::Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let pinned = match resolver.route {
                Route::Guarded => resolver.guard.pinned(name.as_str()),
                Route::Allowed => None,
            };
            let addresses = match pinned {
                Some(addresses) => addresses.to_vec(),
                None => {
                    resolver
                        .guard
                        .resolve(name.as_str(), resolver.route)
                        .await?
                }
            };
            Ok(Box::new(addresses.into_iter()) as reqwest13::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use reqwest13::dns::Resolve;

    use super::*;

    /// Names of the tests' own, and the addresses they stand for.
    struct Names(HashMap<&'static str, Vec<IpAddr>>);

    impl HostLookup for Names {
        fn lookup(&self, host: &str) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
            let found = self.0.get(host).cloned();
            Box::pin(async move {
                found.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
            })
        }
    }

    fn names(entries: &[(&'static str, &[&str])]) -> Arc<dyn HostLookup> {
        Arc::new(Names(
            entries
                .iter()
                .map(|(name, addresses)| {
                    (
                        *name,
                        addresses.iter().map(|a| a.parse().unwrap()).collect(),
                    )
                })
                .collect(),
        ))
    }

    fn guard(allowed: &[&str]) -> Guard {
        let allowed: Vec<String> = allowed.iter().map(ToString::to_string).collect();
        Guard::new(&allowed, Arc::new(SystemLookup))
    }

    fn check(guard: &Guard, url: &str) -> Result<Route, GuardError> {
        guard.check(&Url::parse(url).unwrap())
    }

    #[test]
    fn entries_match_a_host_or_a_host_and_port() {
        let url = Url::parse("http://MCP.Example.com:8080/mcp").unwrap();
        let authority = Authority::of(&url).unwrap();
        let listed = |entries: &[&str]| {
            let entries: Vec<String> = entries.iter().map(ToString::to_string).collect();
            authority.is_listed(&normalise_hosts(&entries))
        };
        assert!(listed(&["mcp.example.com"]));
        assert!(listed(&[" mcp.example.com:8080 "]));
        assert!(!listed(&["mcp.example.com:80"]));
        assert!(!listed(&["example.com"]));

        let default_port = Authority::of(&Url::parse("https://a.example/").unwrap()).unwrap();
        assert!(default_port.is_listed(&["a.example:443".to_owned()]));
        let ipv6 = Authority::of(&Url::parse("http://[::1]:9000/").unwrap()).unwrap();
        assert!(ipv6.is_listed(&["[::1]:9000".to_owned()]));
    }

    #[test]
    fn only_http_and_https_urls_are_checked() {
        for url in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "unix:/tmp/socket",
        ] {
            let url = Url::parse(url).unwrap();
            assert_eq!(Authority::of(&url), Err(GuardError::BadUrl), "{url}");
        }
    }

    #[test]
    fn address_literals_are_checked_before_use_unless_allowed() {
        let guard = guard(&["127.0.0.1:9", "[2001:db8::1]"]);
        for refused in [
            "http://127.0.0.1:8/mcp",
            "http://192.0.2.1/mcp",
            "http://198.18.0.1/mcp",
            "http://240.0.0.1/mcp",
            "http://[::1]/mcp",
            "http://[fd00::2]/mcp",
            "http://[2001:db8::2]/mcp",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:192.0.2.1]/",
            "http://[64:ff9b::c000:201]/",
        ] {
            assert_eq!(
                check(&guard, refused),
                Err(GuardError::Restricted),
                "{refused}"
            );
        }
        for (url, route) in [
            ("http://127.0.0.1:9/mcp", Route::Allowed),
            ("http://[2001:db8::1]:8443/mcp", Route::Allowed),
            ("http://8.8.8.8/mcp", Route::Guarded),
            ("https://[2606:4700::1111]/mcp", Route::Guarded),
            // A name is resolved once, when the guarded client connects.
            ("http://localhost:9/mcp", Route::Guarded),
        ] {
            assert_eq!(check(&guard, url), Ok(route), "{url}");
        }
    }

    #[test]
    fn this_hosts_own_addresses_are_refused_even_when_global() {
        let guard = Guard {
            local: LocalAddresses::reading(|| Ok(vec!["8.8.8.8".parse().unwrap()])),
            ..guard(&[])
        };
        assert!(!guard.permits("8.8.8.8".parse().unwrap()));
        assert!(!guard.permits("::ffff:8.8.8.8".parse().unwrap()));
        assert!(guard.permits("8.8.4.4".parse().unwrap()));
        assert_eq!(
            check(&guard, "http://8.8.8.8/mcp"),
            Err(GuardError::Restricted)
        );
    }

    #[tokio::test]
    async fn the_resolver_keeps_only_permitted_addresses() {
        let guard = Arc::new(Guard::new(
            &[],
            names(&[
                (
                    "mixed.test",
                    &["127.0.0.1", "8.8.8.8", "::1", "2606:4700::1111"],
                ),
                ("inside.test", &["10.0.0.1", "fd00::2", "::ffff:192.0.2.2"]),
            ]),
        ));
        let resolve = |route: Route, name: &'static str| {
            let resolver = GuardedResolver::new(Arc::clone(&guard), route);
            async move {
                resolver
                    .resolve(name.parse().unwrap())
                    .await
                    .map(|addresses| addresses.map(|a| a.ip().to_string()).collect::<Vec<_>>())
                    .map_err(|error| *error.downcast::<GuardError>().unwrap())
            }
        };

        assert_eq!(
            resolve(Route::Guarded, "mixed.test").await,
            Ok(vec!["8.8.8.8".to_owned(), "2606:4700::1111".to_owned()])
        );
        assert_eq!(
            resolve(Route::Guarded, "inside.test").await,
            Err(GuardError::Restricted)
        );
        assert_eq!(
            resolve(Route::Guarded, "unknown.test").await,
            Err(GuardError::Unresolved)
        );
        assert_eq!(
            resolve(Route::Allowed, "inside.test").await.unwrap().len(),
            3
        );
    }

    #[tokio::test]
    async fn a_pinned_answer_is_what_connections_get_until_released() {
        let guard = Arc::new(Guard::new(
            &[],
            names(&[
                ("mixed.test", &["10.0.0.1", "8.8.8.8"]),
                ("inside.test", &["127.0.0.1"]),
            ]),
        ));
        assert_eq!(
            guard.pin("inside.test").await.err(),
            Some(GuardError::Restricted)
        );
        assert_eq!(
            guard.pin("nowhere.test").await.err(),
            Some(GuardError::Unresolved)
        );
        let pin = guard.pin("Mixed.Test").await.unwrap();
        let second = guard.pin("mixed.test").await.unwrap();
        let resolver = GuardedResolver::new(Arc::clone(&guard), Route::Guarded);
        let resolved: Vec<SocketAddr> = resolver
            .resolve("mixed.test".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(resolved, ["8.8.8.8:0".parse().unwrap()]);
        drop(pin);
        assert!(guard.pinned("mixed.test").is_some(), "still held");
        drop(second);
        assert!(guard.pinned("mixed.test").is_none());
    }

    #[tokio::test]
    async fn the_system_resolver_refuses_localhost() {
        let resolver = GuardedResolver::new(Arc::new(guard(&[])), Route::Guarded);
        let error = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost must not resolve");
        assert_eq!(
            error.downcast_ref::<GuardError>(),
            Some(&GuardError::Restricted)
        );
    }
}
