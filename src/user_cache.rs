//! A short-lived cache of user rows by username, so that an authenticated request costs no
//! query of its own. Changes made through this instance invalidate an entry at once; other
//! instances sharing the database see a change within the time to live.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::db::User;

/// Entries kept at most; past that the cache starts over (cheap, and rare).
const CAPACITY: usize = 50_000;

/// Users by username, each kept for a fixed time.
pub struct UserCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (User, Instant)>>,
}

impl UserCache {
    /// A cache whose entries live `ttl`; zero turns it off.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (User, Instant)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached row of `username`, if still fresh.
    pub fn get(&self, username: &str) -> Option<User> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries();
        let (user, stored) = entries.get(username)?;
        (stored.elapsed() < self.ttl).then(|| user.clone())
    }

    /// Remembers a row.
    pub fn insert(&self, user: &User) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries();
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(user.username.clone(), (user.clone(), Instant::now()));
    }

    /// Forgets a username after its row changed or went away.
    pub fn forget(&self, username: &str) {
        self.entries().remove(username);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> User {
        User {
            id: 1,
            username: name.to_owned(),
            email: None,
            full_name: None,
            is_active: true,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn entries_expire_and_can_be_forgotten() {
        let cache = UserCache::new(Duration::from_millis(50));
        cache.insert(&user("ann"));
        assert!(cache.get("ann").is_some());
        cache.forget("ann");
        assert!(cache.get("ann").is_none());
        cache.insert(&user("ann"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get("ann").is_none());
    }

    #[test]
    fn a_zero_time_to_live_turns_it_off() {
        let cache = UserCache::new(Duration::ZERO);
        cache.insert(&user("ann"));
        assert!(cache.get("ann").is_none());
    }
}
