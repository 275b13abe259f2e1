-- Messages are indexed for search in batches, a moment after they are stored. FTS5 writes
-- what it holds in memory to disk as a new index segment whenever a savepoint begins, and an
-- insert made by a trigger runs under one: indexing each message from its insert trigger
-- wrote (and then merged) a segment per message. A new message now only queues its key; the
-- service indexes the queue with one statement per batch, and a search indexes what is queued
-- before it reads.
--
-- A message is in the index exactly when it is not queued and its conversation has an owner.
-- The triggers keep that true: a queued message that is deleted leaves the queue, and only a
-- message that is not queued is taken out of the index (FTS5 must be given the values it
-- indexed, and taking out a row it never held corrupts it). Every message stored before this
-- migration is indexed already, so the queue starts empty.
CREATE TABLE messages_search_queue (id INTEGER PRIMARY KEY);

DROP TRIGGER messages_search_insert;
DROP TRIGGER messages_search_delete;
DROP TRIGGER messages_search_update;
DROP TRIGGER conversations_search_update;
DROP TRIGGER conversations_search_delete;

-- Anonymous messages are queued too: the indexing skips them, which is cheaper than looking
-- their conversation up here.
CREATE TRIGGER messages_search_insert AFTER INSERT ON messages
BEGIN
    INSERT INTO messages_search_queue (id) VALUES (NEW.id);
END;

-- A message deleted with its conversation (ON DELETE CASCADE) is taken out of the index by the
-- conversation's trigger, which runs before the conversation row goes; the message's own
-- trigger then finds no conversation and only takes it out of the queue.
CREATE TRIGGER messages_search_delete AFTER DELETE ON messages
BEGIN
    INSERT INTO messages_search (messages_search, rowid, content, owner)
    SELECT 'delete', OLD.id, OLD.content, 'u' || user_id FROM conversations
    WHERE id = OLD.conversation_id AND user_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM messages_search_queue WHERE id = OLD.id);
    DELETE FROM messages_search_queue WHERE id = OLD.id;
END;

CREATE TRIGGER messages_search_update AFTER UPDATE OF content, conversation_id ON messages
BEGIN
    INSERT INTO messages_search (messages_search, rowid, content, owner)
    SELECT 'delete', OLD.id, OLD.content, 'u' || user_id FROM conversations
    WHERE id = OLD.conversation_id AND user_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM messages_search_queue WHERE id = OLD.id);
    INSERT OR IGNORE INTO messages_search_queue (id) VALUES (NEW.id);
END;

CREATE TRIGGER conversations_search_update AFTER UPDATE OF title, user_id ON conversations
WHEN OLD.title IS NOT NEW.title OR OLD.user_id IS NOT NEW.user_id
BEGIN
    INSERT INTO conversations_search (conversations_search, rowid, title, owner)
    SELECT 'delete', OLD.id, OLD.title, 'u' || OLD.user_id WHERE OLD.user_id IS NOT NULL;
    INSERT INTO conversations_search (rowid, title, owner)
    SELECT NEW.id, NEW.title, 'u' || NEW.user_id WHERE NEW.user_id IS NOT NULL;
    -- A new owner: the messages move with the conversation, queued again under it.
    INSERT INTO messages_search (messages_search, rowid, content, owner)
    SELECT 'delete', id, content, 'u' || OLD.user_id FROM messages
    WHERE conversation_id = OLD.id AND OLD.user_id IS NOT NULL
      AND OLD.user_id IS NOT NEW.user_id
      AND id NOT IN (SELECT id FROM messages_search_queue);
    INSERT OR IGNORE INTO messages_search_queue (id)
    SELECT id FROM messages
    WHERE conversation_id = NEW.id AND NEW.user_id IS NOT NULL
      AND OLD.user_id IS NOT NEW.user_id;
END;

CREATE TRIGGER conversations_search_delete BEFORE DELETE ON conversations
WHEN OLD.user_id IS NOT NULL
BEGIN
    INSERT INTO messages_search (messages_search, rowid, content, owner)
    SELECT 'delete', id, content, 'u' || OLD.user_id FROM messages
    WHERE conversation_id = OLD.id
      AND id NOT IN (SELECT id FROM messages_search_queue);
    INSERT INTO conversations_search (conversations_search, rowid, title, owner)
    VALUES ('delete', OLD.id, OLD.title, 'u' || OLD.user_id);
END;
