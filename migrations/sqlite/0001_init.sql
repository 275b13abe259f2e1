-- Times are microseconds since the Unix epoch (UTC): compact, and ordered as numbers.
CREATE TABLE users (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    username    TEXT NOT NULL UNIQUE,
    email       TEXT UNIQUE COLLATE NOCASE,
    full_name   TEXT,
    is_active   INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE conversations (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id           INTEGER REFERENCES users (id) ON DELETE CASCADE,
    title             TEXT NOT NULL,
    system_message    TEXT,
    model             TEXT,
    status            TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'ended', 'archived')),
    context_metadata  TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    ended_at          INTEGER
);
CREATE INDEX conversations_by_owner_activity ON conversations (user_id, updated_at DESC, id DESC);
CREATE INDEX conversations_by_activity ON conversations (updated_at DESC, id DESC);

CREATE TABLE messages (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id   INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role              TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content           TEXT NOT NULL,
    timestamp         INTEGER NOT NULL,
    model             TEXT,
    tokens_used       INTEGER,
    response_time     REAL,
    message_metadata  TEXT,
    updated_at        INTEGER NOT NULL
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);

-- A new message is activity: the conversation moves to the top of "most recently active".
CREATE TRIGGER messages_touch_conversation AFTER INSERT ON messages
BEGIN
    UPDATE conversations SET updated_at = NEW.timestamp WHERE id = NEW.conversation_id;
END;
