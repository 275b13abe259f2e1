//! Personal API keys: made, listed and revoked by their owner (and by admins), and checked on
//! every request that presents one.
//!
//! A key is `cs-` and 32 random bytes in base64url (43 characters). Only its SHA-256 is
//! stored: with that much entropy a plain hash cannot be reversed, and a key is found by the
//! hash of what a client presents, so no comparison of secrets takes place. A key is read
//! from the database on each use, so a revoked or expired key, or the key of a deactivated
//! user, is refused at once on every instance.
//!
//! A key acts with plain user powers ([`KEY_ROLE`]): its owner's own data and `/v1`, never
//! an admin's or a manager's rights. The service keeps no roles of its own, so it could not
//! follow a demotion by the identity provider; a key made with a token's roles would keep them
//! until revoked.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::validate::check_text;
use super::{ServiceError, ServiceResult};
use crate::config::Secret;
use crate::db::{ApiKey, ApiKeyOwner, NewApiKey, Page};
use crate::state::AppState;

/// What every key starts with.
pub const KEY_PREFIX: &str = "cs-";
/// Characters of a key kept to recognise it in a list (`cs-` and 8 more).
pub const SHOWN_CHARS: usize = 11;
/// Keys a user may hold at once.
pub const MAX_KEYS_PER_USER: i64 = 100;
/// Longest name of a key.
pub const MAX_NAME_CHARS: usize = 100;
/// A key's last use is written at most this often.
pub const LAST_USED_RESOLUTION: Duration = Duration::from_secs(60);
/// The one role a key authenticates with, whatever roles are stored with it (keys made by
/// earlier versions hold those of the token that made them).
pub const KEY_ROLE: &str = "user";

/// A key just made: its record and the secret, which is never available again.
pub struct CreatedKey {
    /// The stored record.
    pub key: ApiKey,
    /// The whole key, answered once.
    pub secret: Secret,
}

/// Whether a bearer credential is an API key (rather than a JWT).
pub fn is_api_key(credential: &str) -> bool {
    credential.starts_with(KEY_PREFIX)
}

/// The stored form of a key: its SHA-256, hex.
pub fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random key.
fn generate() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    format!("{KEY_PREFIX}{encoded}")
}

/// Makes a key for `owner`, which authenticates with [`KEY_ROLE`] only.
pub async fn create(
    state: &AppState,
    owner: i64,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
) -> ServiceResult<CreatedKey> {
    // An expiry in the past makes a key that is refused from the start, as it says.
    check_text("name", name, 1, MAX_NAME_CHARS)?;
    let secret = generate();
    let new = NewApiKey {
        name: name.trim().to_owned(),
        prefix: secret[..SHOWN_CHARS].to_owned(),
        key_hash: key_hash(&secret),
        roles: vec![KEY_ROLE.to_owned()],
        expires_at,
    };
    let key = state
        .store
        .create_api_key(owner, &new, MAX_KEYS_PER_USER)
        .await?
        .ok_or_else(|| {
            ServiceError::invalid(
                "name",
                &format!("a user may hold at most {MAX_KEYS_PER_USER} API keys; revoke one first"),
            )
        })?;
    tracing::info!(key_id = key.id, user_id = owner, "created API key");
    Ok(CreatedKey {
        key,
        secret: Secret::new(secret),
    })
}

/// A page of the keys of `owner`, and their total.
pub async fn list(state: &AppState, owner: i64, page: Page) -> ServiceResult<(Vec<ApiKey>, i64)> {
    Ok(state.store.list_api_keys(owner, page).await?)
}

/// Revokes a key of `owner`; `NotFound` for anyone else's.
pub async fn revoke(state: &AppState, owner: i64, id: i64) -> ServiceResult<()> {
    if !state.store.delete_api_key(owner, id).await? {
        return Err(ServiceError::NotFound("API key"));
    }
    tracing::info!(key_id = id, user_id = owner, "revoked API key");
    Ok(())
}

/// The live key a client presents, with its owner; `None` for an unknown, revoked or
/// expired one. Its last use is recorded, at most once per [`LAST_USED_RESOLUTION`].
pub async fn authenticate(state: &AppState, presented: &str) -> ServiceResult<Option<ApiKeyOwner>> {
    let now = Utc::now();
    let Some(found) = state
        .store
        .api_key_by_hash(&key_hash(presented), now)
        .await?
    else {
        return Ok(None);
    };
    let resolution = chrono::Duration::from_std(LAST_USED_RESOLUTION).unwrap_or_default();
    let since = now - resolution;
    if found.key.last_used_at.is_none_or(|at| at < since) {
        // A failed write costs the record, not the request.
        if let Err(err) = state.store.touch_api_key(found.key.id, now, since).await {
            tracing::warn!(error = %err, key_id = found.key.id, "could not record an API key's use");
        }
    }
    Ok(Some(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_hashed() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(is_api_key(&a));
        assert_eq!(a.len(), KEY_PREFIX.len() + 43);
        assert!(a[3..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(key_hash(&a), key_hash(&a));
        assert_ne!(key_hash(&a), key_hash(&b));
        assert_eq!(key_hash(&a).len(), 64);
        assert!(!is_api_key("eyJhbGciOiJIUzI1NiJ9.e30.x"));
    }
}
