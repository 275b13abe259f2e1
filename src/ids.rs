//! Opaque public IDs: a hashids encoder per entity kind over the integer keys.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use harsh::Harsh;

/// Public IDs kept per entity kind. Encoding one costs a few hundred nanoseconds (a page of
/// 20 conversations spent about a tenth of its CPU on it); a kept one is a lookup.
const ENCODED_CAPACITY: usize = 16_384;

/// The salt every install used before salts were generated per database. A database that
/// already has rows but no stored salt keeps it, so the public IDs handed out stay valid.
pub const LEGACY_SALT: &str = "chat-service";

/// The encoder of one entity kind.
#[derive(Debug, Clone)]
pub struct IdKind {
    harsh: Harsh,
    min_length: usize,
    encoded: Arc<quick_cache::sync::Cache<i64, String>>,
}

impl IdKind {
    fn new(salt: &str, kind: &str, min_length: usize) -> Self {
        let harsh = Harsh::builder()
            .salt(format!("{salt}:{kind}"))
            .length(min_length)
            .build()
            .expect("the default alphabet with any salt is valid");
        Self {
            harsh,
            min_length,
            encoded: Arc::new(quick_cache::sync::Cache::new(ENCODED_CAPACITY)),
        }
    }

    /// The public ID of a key.
    pub fn encode(&self, key: i64) -> String {
        if let Some(public_id) = self.encoded.get(&key) {
            return public_id;
        }
        // Keys are positive row ids; a negative one would be a bug upstream.
        let public_id = self.harsh.encode(&[u64::try_from(key).unwrap_or_default()]);
        self.encoded.insert(key, public_id.clone());
        public_id
    }

    /// The key of a public ID, or `None` for anything that is not exactly one of ours.
    pub fn decode(&self, public_id: &str) -> Option<i64> {
        // Longer strings cannot come from keys below 2^63; reject before decoding, and never
        // let arithmetic on hostile input take the request down.
        if public_id.len() < self.min_length
            || public_id.len() > self.min_length + 8
            || !public_id.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return None;
        }
        let decoded = catch_unwind(AssertUnwindSafe(|| self.harsh.decode(public_id))).ok()?;
        match decoded.ok()?.as_slice() {
            [key] => i64::try_from(*key).ok().filter(|k| *k > 0),
            _ => None,
        }
    }
}

/// The encoders of every entity kind, each with its own salt and length.
#[derive(Debug, Clone)]
pub struct IdCodec {
    /// Users: 16 characters.
    pub user: IdKind,
    /// Conversations: 12 characters.
    pub conversation: IdKind,
    /// Messages: 10 characters.
    pub message: IdKind,
    /// MCP servers: 10 characters.
    pub mcp_server: IdKind,
    /// API keys: 10 characters.
    pub api_key: IdKind,
}

impl IdCodec {
    /// Builds the encoders from the configured salt.
    pub fn new(salt: &str) -> Self {
        Self {
            user: IdKind::new(salt, "user", 16),
            conversation: IdKind::new(salt, "conversation", 12),
            message: IdKind::new(salt, "message", 10),
            mcp_server: IdKind::new(salt, "mcp_server", 10),
            api_key: IdKind::new(salt, "api_key", 10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_public_id_is_the_one_encoding_gives() {
        let codec = IdCodec::new("salt");
        let fresh = IdCodec::new("salt");
        for key in [1_i64, 7, 7, 99_999] {
            let kept = codec.message.encode(key);
            assert_eq!(codec.message.encode(key), kept);
            assert_eq!(fresh.message.encode(key), kept);
            assert_eq!(codec.message.decode(&kept), Some(key));
        }
    }

    #[test]
    fn ids_round_trip_with_their_lengths() {
        let codec = IdCodec::new("salt");
        for key in [1_i64, 2, 42, 1_000_000] {
            let user = codec.user.encode(key);
            assert_eq!(user.len(), 16);
            assert_eq!(codec.user.decode(&user), Some(key));
            assert_eq!(codec.conversation.encode(key).len(), 12);
            assert_eq!(codec.message.encode(key).len(), 10);
            let server = codec.mcp_server.encode(key);
            assert_eq!(server.len(), 10);
            assert_eq!(codec.mcp_server.decode(&server), Some(key));
        }
    }

    #[test]
    fn ids_of_another_kind_or_malformed_are_refused() {
        let codec = IdCodec::new("salt");
        let conversation = codec.conversation.encode(7);
        assert_eq!(codec.message.decode(&conversation), None);
        assert_eq!(codec.user.decode(&conversation), None);
        // Same length, another salt: never the same row (a rare foreign ID decodes to some
        // far-off key, which names no row).
        for key in 1..200 {
            assert_ne!(codec.mcp_server.encode(key), codec.message.encode(key));
            assert_ne!(
                codec.mcp_server.decode(&codec.message.encode(key)),
                Some(key)
            );
            assert_ne!(
                codec.message.decode(&codec.mcp_server.encode(key)),
                Some(key)
            );
        }
        for bad in [
            "",
            "me",
            "zzzzzzzzzzzz",
            "../../etc",
            "ZZZZZZZZZZZZZZZZZZZZ",
            "é",
        ] {
            assert_eq!(codec.conversation.decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn salt_changes_every_id() {
        assert_ne!(
            IdCodec::new("a").user.encode(1),
            IdCodec::new("b").user.encode(1)
        );
    }
}
