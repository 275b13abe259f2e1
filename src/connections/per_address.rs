//! The count of open connections per client address that have not carried an authenticated
//! request: anyone can open connections without a token, so without a cap one address could
//! hold every file descriptor of the service. A connection leaves the count when a request on
//! it authenticates ([`mark_authenticated`]) or when it closes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::Extensions;

/// Counts per address, refusing past `max` (0: no limit).
#[derive(Debug)]
pub(crate) struct PerAddress {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            counts: Mutex::default(),
        }
    }

    /// A place for one more connection from `ip`, or `None` when it holds `max` already.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        if self.max == 0 {
            return Some(ConnectionSlot::uncounted());
        }
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(ip).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot(Some(Arc::new(Mutex::new(Some(Counted {
            ip,
            counts: Arc::clone(self),
        }))))))
    }

    fn release(&self, ip: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

/// One connection's place in its address's count, shared by the connection and its requests
/// (a request extension).
#[derive(Debug, Clone, Default)]
pub struct ConnectionSlot(Option<Arc<Mutex<Option<Counted>>>>);

impl ConnectionSlot {
    /// A slot that counts nowhere (exempt peers, no limit).
    pub(crate) fn uncounted() -> Self {
        Self(None)
    }

    /// Whether the connection still counts against its address.
    pub fn is_counted(&self) -> bool {
        self.0.as_ref().is_some_and(|counted| {
            counted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
        })
    }

    fn release(&self) {
        if let Some(counted) = &self.0 {
            counted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
    }
}

/// A counted connection; leaving the count when dropped.
#[derive(Debug)]
struct Counted {
    ip: IpAddr,
    counts: Arc<PerAddress>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.counts.release(self.ip);
    }
}

/// Takes the connection of this request out of its address's count: it has carried an
/// authenticated request. A request that did not come through [`super::serve_connections`]
/// has no slot, and nothing happens.
pub fn mark_authenticated(extensions: &Extensions) {
    if let Some(slot) = extensions.get::<ConnectionSlot>() {
        slot.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_max_until_one_closes_or_authenticates() {
        let per_address = Arc::new(PerAddress::new(2));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "2001:db8::7".parse().unwrap();
        let first = per_address.admit(ip).unwrap();
        let second = per_address.admit(ip).unwrap();
        assert!(per_address.admit(ip).is_none());
        assert!(per_address.admit(other).is_some(), "addresses count apart");

        drop(first);
        let third = per_address.admit(ip).unwrap();
        assert!(per_address.admit(ip).is_none());

        let mut extensions = Extensions::new();
        extensions.insert(second.clone());
        mark_authenticated(&extensions);
        assert!(!second.is_counted());
        assert!(third.is_counted());
        let _fourth = per_address.admit(ip).unwrap();
        assert!(per_address.admit(ip).is_none());
    }

    #[test]
    fn no_limit_counts_nothing() {
        let per_address = Arc::new(PerAddress::new(0));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let slots: Vec<_> = (0..100).map(|_| per_address.admit(ip).unwrap()).collect();
        assert!(slots.iter().all(|slot| !slot.is_counted()));
    }
}
