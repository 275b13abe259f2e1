-- A reply being generated, from the moment its user message is stored until the reply is
-- stored (in the same transaction): what another instance, or this one after a restart,
-- needs to finish the reply's record when the instance generating it stopped first.
-- `generation` is the reply's id; `started_at` is in microseconds since the Unix epoch.
CREATE TABLE pending_replies (
    generation       TEXT PRIMARY KEY,
    conversation_id  BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_message_id  BIGINT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    started_at       BIGINT NOT NULL
);
CREATE INDEX pending_replies_by_start ON pending_replies (started_at, generation);
