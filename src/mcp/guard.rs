//! The address guard: which MCP server URLs may be reached.
//!
//! Servers are registered by users, so their URLs must not become a way into the service's own
//! network (loopback, private and link-local ranges, cloud metadata endpoints). A URL is checked
//! when it is used, and the HTTP client that reaches hostnames resolves them through
//! [`GuardedResolver`], which drops the same addresses at connect time: a DNS answer that changes
//! between the check and the connection cannot pass. Operators let chosen servers through with
//! `allowed_hosts`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

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

/// Checks a URL before it is used: which client may reach it, or why it may not be reached.
///
/// Host names are resolved here to refuse early with a clear reason; the guarded client
/// resolves and filters again when it connects.
pub(crate) async fn check(url: &Url, allowed_hosts: &[String]) -> Result<Route, GuardError> {
    let authority = Authority::of(url)?;
    if authority.is_listed(allowed_hosts) {
        return Ok(Route::Allowed);
    }
    match url.host().ok_or(GuardError::BadUrl)? {
        // An address literal is never resolved, so this check is the one that counts.
        Host::Ipv4(ip) if is_restricted(IpAddr::V4(ip)) => Err(GuardError::Restricted),
        Host::Ipv6(ip) if is_restricted(IpAddr::V6(ip)) => Err(GuardError::Restricted),
        Host::Ipv4(_) | Host::Ipv6(_) => Ok(Route::Guarded),
        Host::Domain(name) => public_addresses(name).await.map(|_| Route::Guarded),
    }
}

/// The addresses of a host name that the service may connect to.
async fn public_addresses(host: &str) -> Result<Vec<SocketAddr>, GuardError> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|_| GuardError::Unresolved)?
        .collect();
    if resolved.is_empty() {
        return Err(GuardError::Unresolved);
    }
    let public: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|address| !is_restricted(address.ip()))
        .collect();
    if public.is_empty() {
        Err(GuardError::Restricted)
    } else {
        Ok(public)
    }
}

/// The DNS resolver of the guarded HTTP client: only addresses that pass [`is_restricted`]
/// are connected to.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GuardedResolver;

impl reqwest13::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest13::dns::Name) -> reqwest13::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses = public_addresses(&host).await?;
            Ok(Box::new(addresses.into_iter()) as reqwest13::dns::Addrs)
        })
    }
}

/// Whether an address is one a user's server must not be reached at: loopback, private
/// (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7), link-local (169.254/16 with the
/// metadata endpoint 169.254.169.254, fe80::/10), unspecified, broadcast or multicast; IPv6
/// forms that carry an IPv4 address are judged by that address.
pub(crate) fn is_restricted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_restricted_v4(ip),
        IpAddr::V6(ip) => match embedded_v4(ip) {
            Some(v4) => is_restricted_v4(v4),
            None => is_restricted_v6(ip),
        },
    }
}

fn is_restricted_v4(ip: Ipv4Addr) -> bool {
    let [first, second, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        // 0.0.0.0/8 reaches the local host on some systems.
        || first == 0
        // 100.64.0.0/10, shared address space, where some clouds put their metadata service.
        || (first == 100 && second & 0xc0 == 64)
}

fn is_restricted_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7, unique local (with the metadata endpoint fd00:ec2::254).
        || first & 0xfe00 == 0xfc00
        // fe80::/10 link-local and the deprecated fec0::/10 site-local.
        || first & 0xffc0 == 0xfe80
        || first & 0xffc0 == 0xfec0
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`)
/// address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let segments = ip.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = segments[6].to_be_bytes();
        let [c, d] = segments[7].to_be_bytes();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest13::dns::Resolve;

    fn restricted(address: &str) -> bool {
        is_restricted(address.parse().unwrap())
    }

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_restricted() {
        for address in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(restricted(address), "{address} should be restricted");
        }
    }

    #[test]
    fn public_addresses_are_not_restricted() {
        for address in [
            "8.8.8.8",
            "172.32.0.1",
            "192.169.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!restricted(address), "{address} should be allowed");
        }
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

    #[tokio::test]
    async fn the_check_refuses_loopback_unless_allowed() {
        let literal = Url::parse("http://127.0.0.1:9/mcp").unwrap();
        assert_eq!(check(&literal, &[]).await, Err(GuardError::Restricted));
        assert_eq!(
            check(&literal, &["127.0.0.1:9".to_owned()]).await,
            Ok(Route::Allowed)
        );
        let name = Url::parse("http://localhost:9/mcp").unwrap();
        assert_eq!(check(&name, &[]).await, Err(GuardError::Restricted));
        let mapped = Url::parse("http://[::ffff:169.254.169.254]/").unwrap();
        assert_eq!(check(&mapped, &[]).await, Err(GuardError::Restricted));
    }

    #[tokio::test]
    async fn the_resolver_drops_restricted_addresses() {
        let name: reqwest13::dns::Name = "localhost".parse().unwrap();
        let resolved = GuardedResolver.resolve(name).await;
        let error = resolved.err().expect("localhost must not resolve");
        assert_eq!(
            error.downcast_ref::<GuardError>(),
            Some(&GuardError::Restricted)
        );
    }
}
