-- Conversations are trees: a message's parent is the message it answers or follows (NULL for
-- the first), and a conversation's active leaf ends the path that linear reads answer and
-- that a new turn continues. Existing conversations become chains, their last message the
-- leaf. No foreign key on either column: a branch is deleted whole in one statement, and a
-- cascade down a long chain would recurse once per message.
ALTER TABLE messages ADD COLUMN parent_id BIGINT;
ALTER TABLE conversations ADD COLUMN current_message_id BIGINT;

UPDATE messages m SET parent_id = chain.previous
FROM (
    SELECT id, LAG(id) OVER (PARTITION BY conversation_id ORDER BY id) AS previous
    FROM messages
) chain
WHERE chain.id = m.id AND chain.previous IS NOT NULL;
UPDATE conversations c SET current_message_id = last.id
FROM (SELECT conversation_id, MAX(id) AS id FROM messages GROUP BY conversation_id) last
WHERE last.conversation_id = c.id;

-- A message's children (siblings share a parent); the roots of a conversation.
CREATE INDEX messages_by_parent ON messages (parent_id, id);
CREATE INDEX messages_roots ON messages (conversation_id, id) WHERE parent_id IS NULL;

-- A new message is activity, and the conversation's active leaf.
CREATE OR REPLACE FUNCTION messages_touch_conversation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE conversations
    SET updated_at = GREATEST(updated_at, NEW.timestamp), current_message_id = NEW.id
    WHERE id = NEW.conversation_id;
    RETURN NULL;
END;
$$;
