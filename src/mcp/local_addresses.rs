//! The addresses of this host's own network interfaces, which a user's server must not be
//! reached at even when they are globally routable (a listener on `0.0.0.0` answers on each).

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::special_addresses::canonical;

/// How long one reading of the interfaces is trusted: interfaces change rarely, and reading
/// them on every connection would be wasted work, but an address added later must not stay
/// unknown for long.
const FRESH_FOR: Duration = Duration::from_secs(5);

/// Where the addresses come from: the interfaces, or a list in tests.
type Source = fn() -> std::io::Result<Vec<IpAddr>>;

/// This host's interface addresses, read again when older than [`FRESH_FOR`].
#[derive(Debug)]
pub(crate) struct LocalAddresses {
    source: Source,
    read: Mutex<Option<(Instant, Arc<[IpAddr]>)>>,
}

impl Default for LocalAddresses {
    fn default() -> Self {
        Self::reading(interface_addresses)
    }
}

impl LocalAddresses {
    /// Addresses read from `source` instead of the interfaces.
    pub(crate) fn reading(source: Source) -> Self {
        Self {
            source,
            read: Mutex::new(None),
        }
    }

    /// Whether `ip` (or the IPv4 address it carries) is one of this host's. When the
    /// interfaces cannot be read, every address counts as local: the guard fails closed.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match self.current() {
            Some(local) => local.contains(&ip) || local.contains(&canonical(ip)),
            None => true,
        }
    }

    fn current(&self) -> Option<Arc<[IpAddr]>> {
        let mut read = self
            .read
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((at, addresses)) = read.as_ref() {
            if at.elapsed() < FRESH_FOR {
                return Some(Arc::clone(addresses));
            }
        }
        match (self.source)() {
            Ok(addresses) => {
                let addresses: Arc<[IpAddr]> = addresses.into_iter().map(canonical).collect();
                *read = Some((Instant::now(), Arc::clone(&addresses)));
                Some(addresses)
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    "could not read this host's addresses: MCP servers are refused until it can"
                );
                None
            }
        }
    }
}

/// Every address of every interface.
fn interface_addresses() -> std::io::Result<Vec<IpAddr>> {
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .map(|interface| interface.ip())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_and_every_interface_address_are_local() {
        let local = LocalAddresses::default();
        let interfaces = interface_addresses().unwrap();
        assert!(local.contains("127.0.0.1".parse().unwrap()));
        assert!(local.contains("::ffff:127.0.0.1".parse().unwrap()));
        for address in &interfaces {
            assert!(local.contains(*address), "{address}");
        }
        let foreign: IpAddr = "203.0.113.77".parse().unwrap();
        assert_eq!(local.contains(foreign), interfaces.contains(&foreign));
    }

    #[test]
    fn an_unreadable_list_makes_every_address_local() {
        let local = LocalAddresses::reading(|| Err(std::io::Error::other("no interfaces")));
        assert!(local.contains("8.8.8.8".parse().unwrap()));
    }
}
