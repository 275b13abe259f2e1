-- Personal API keys: a user's credential for scripts and OpenAI-compatible clients. Only the
-- SHA-256 of a key is kept (the key itself is answered once, at creation); `prefix` is its
-- first characters, to recognise it in a list. `roles` (a JSON array) are those of the token
-- that created it: the key authenticates with them.
CREATE TABLE api_keys (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    roles         TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    last_used_at  INTEGER
);
CREATE INDEX api_keys_by_owner ON api_keys (user_id, id);
