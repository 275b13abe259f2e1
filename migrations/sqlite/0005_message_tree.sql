-- Conversations are trees: a message's parent is the message it answers or follows (NULL for
-- the first), and a conversation's active leaf ends the path that linear reads answer and
-- that a new turn continues. Existing conversations become chains, their last message the
-- leaf. No foreign key on either column: a branch is deleted whole in one statement, and a
-- cascade down a long chain would recurse once per message.
ALTER TABLE messages ADD COLUMN parent_id INTEGER;
ALTER TABLE conversations ADD COLUMN current_message_id INTEGER;

UPDATE messages SET parent_id = (
    SELECT MAX(p.id) FROM messages p
    WHERE p.conversation_id = messages.conversation_id AND p.id < messages.id
);
UPDATE conversations SET current_message_id = (
    SELECT MAX(m.id) FROM messages m WHERE m.conversation_id = conversations.id
);

-- A message's children (siblings share a parent); the roots of a conversation.
CREATE INDEX messages_by_parent ON messages (parent_id, id);
CREATE INDEX messages_roots ON messages (conversation_id, id) WHERE parent_id IS NULL;

-- A new message is activity, and the conversation's active leaf.
DROP TRIGGER messages_touch_conversation;
CREATE TRIGGER messages_touch_conversation AFTER INSERT ON messages
BEGIN
    UPDATE conversations SET updated_at = NEW.timestamp, current_message_id = NEW.id
    WHERE id = NEW.conversation_id;
END;
