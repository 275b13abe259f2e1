-- Full-text search over messages and conversation titles (FTS5, external content).
-- Each index holds the text and its owner's token ('u' and the user's key), so a search for
-- one user intersects the owner's postings with the words' inside the index. The content
-- comes from views over the tables, which add the owner; anonymous conversations (no owner)
-- are not indexed, since no search can reach them.
CREATE VIEW messages_search_source AS
SELECT m.id AS id, m.content AS content, 'u' || c.user_id AS owner
FROM messages m JOIN conversations c ON c.id = m.conversation_id
WHERE c.user_id IS NOT NULL;

-- No column sizes (columnsize = 0): only bm25() reads them, and the service ranks hits
-- itself; without them a message costs the index one b-tree write less.
CREATE VIRTUAL TABLE messages_search USING fts5 (
    content, owner,
    content = 'messages_search_source', content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2', columnsize = 0
);

CREATE VIEW conversations_search_source AS
SELECT id, title, 'u' || user_id AS owner FROM conversations WHERE user_id IS NOT NULL;

CREATE VIRTUAL TABLE conversations_search USING fts5 (
    title, owner,
    content = 'conversations_search_source', content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2', columnsize = 0
);

-- An external-content index forgets a row only when given the values it indexed: the
-- triggers pass them. A message deleted with its conversation (ON DELETE CASCADE) is removed
-- by the conversation's trigger, which runs before the conversation row goes; the message's
-- own trigger then finds no conversation and does nothing.
CREATE TRIGGER messages_search_insert AFTER INSERT ON messages
BEGIN
    INSERT INTO messages_search (rowid, content, owner)
    SELECT NEW.id, NEW.content, 'u' || user_id FROM conversations
    WHERE id = NEW.conversation_id AND user_id IS NOT NULL;
END;

CREATE TRIGGER messages_search_delete AFTER DELETE ON messages
BEGIN
    INSERT INTO messages_search (messages_search, rowid, content, owner)
    SELECT 'delete', OLD.id, OLD.content, 'u' || user_id FROM conversations
    WHERE id = OLD.conversation_id AND user_id IS NOT NULL;
END;

CREATE TRIGGER messages_search_update AFTER UPDATE OF content, conversation_id ON messages
BEGIN
    INSERT INTO messages_search (messages_search, rowid, content, owner)
    SELECT 'delete', OLD.id, OLD.content, 'u' || user_id FROM conversations
    WHERE id = OLD.conversation_id AND user_id IS NOT NULL;
    INSERT INTO messages_search (rowid, content, owner)
    SELECT NEW.id, NEW.content, 'u' || user_id FROM conversations
    WHERE id = NEW.conversation_id AND user_id IS NOT NULL;
END;

CREATE TRIGGER conversations_search_insert AFTER INSERT ON conversations
WHEN NEW.user_id IS NOT NULL
BEGIN
    INSERT INTO conversations_search (rowid, title, owner)
    VALUES (NEW.id, NEW.title, 'u' || NEW.user_id);
END;

CREATE TRIGGER conversations_search_update AFTER UPDATE OF title, user_id ON conversations
WHEN OLD.title IS NOT NEW.title OR OLD.user_id IS NOT NEW.user_id
BEGIN
    INSERT INTO conversations_search (conversations_search, rowid, title, owner)
    SELECT 'delete', OLD.id, OLD.title, 'u' || OLD.user_id WHERE OLD.user_id IS NOT NULL;
    INSERT INTO conversations_search (rowid, title, owner)
    SELECT NEW.id, NEW.title, 'u' || NEW.user_id WHERE NEW.user_id IS NOT NULL;
    -- A new owner: the messages move with the conversation.
    INSERT INTO messages_search (messages_search, rowid, content, owner)
    SELECT 'delete', id, content, 'u' || OLD.user_id FROM messages
    WHERE conversation_id = OLD.id AND OLD.user_id IS NOT NULL
      AND OLD.user_id IS NOT NEW.user_id;
    INSERT INTO messages_search (rowid, content, owner)
    SELECT id, content, 'u' || NEW.user_id FROM messages
    WHERE conversation_id = NEW.id AND NEW.user_id IS NOT NULL
      AND OLD.user_id IS NOT NEW.user_id;
END;

CREATE TRIGGER conversations_search_delete BEFORE DELETE ON conversations
WHEN OLD.user_id IS NOT NULL
BEGIN
    INSERT INTO messages_search (messages_search, rowid, content, owner)
    SELECT 'delete', id, content, 'u' || OLD.user_id FROM messages
    WHERE conversation_id = OLD.id;
    INSERT INTO conversations_search (conversations_search, rowid, title, owner)
    VALUES ('delete', OLD.id, OLD.title, 'u' || OLD.user_id);
END;

-- The messages and titles stored before this migration.
INSERT INTO messages_search (messages_search) VALUES ('rebuild');
INSERT INTO conversations_search (conversations_search) VALUES ('rebuild');
