-- MCP servers that users register; their tools are offered to the model in the owner's chats.
-- `api_key` is write-only: the API never answers it.
CREATE TABLE mcp_servers (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    description  TEXT,
    server_url   TEXT NOT NULL,
    is_active    INTEGER NOT NULL DEFAULT 1,
    config       TEXT,
    api_key      TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX mcp_servers_by_owner ON mcp_servers (user_id, id);
