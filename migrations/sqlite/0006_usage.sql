-- The usage ledger: one row per LLM call (a reply's rounds, tool rounds, titles). A user's
-- rows go with the user; a conversation's stay when it is deleted (the tokens were spent), so
-- `conversation_id` is not a foreign key. `user_id` is NULL for anonymous chat. Tokens are as
-- the provider reported them, or estimated (`estimated` = 1) where it reported none.
-- `created_at` is in microseconds since the Unix epoch.
CREATE TABLE usage_records (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id            INTEGER REFERENCES users (id) ON DELETE CASCADE,
    conversation_id    INTEGER,
    model              TEXT NOT NULL,
    kind               TEXT NOT NULL,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    estimated          INTEGER NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL
);
CREATE INDEX usage_records_by_user ON usage_records (user_id, created_at);
CREATE INDEX usage_records_by_time ON usage_records (created_at);

-- Limits an admin set for one user; NULL keeps the default of the user's role.
CREATE TABLE user_limits (
    user_id              INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    tokens_per_day       INTEGER,
    tokens_per_month     INTEGER,
    messages_per_minute  INTEGER,
    updated_at           INTEGER NOT NULL
);
