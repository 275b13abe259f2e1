-- Full-text search over messages and conversation titles. The `chat_search` configuration is
-- `simple` (no stemming, no stop words: every word is found as typed) with `unaccent` first,
-- so `cafe` finds `Café`, as SQLite's `unicode61 remove_diacritics 2` does. `unaccent` is a
-- contrib extension (in PostgreSQL's official images and Debian's postgresql package), and a
-- trusted one: the database's owner may create it.
CREATE EXTENSION IF NOT EXISTS unaccent;

CREATE TEXT SEARCH CONFIGURATION chat_search (COPY = simple);
ALTER TEXT SEARCH CONFIGURATION chat_search
    ALTER MAPPING FOR asciiword, asciihword, hword_asciipart, word, hword, hword_part,
        numword, numhword, hword_numpart
    WITH unaccent, simple;

-- Stored, so a match is checked and ranked without parsing the text again. Adding it
-- computes it for the messages stored before this migration.
ALTER TABLE messages
    ADD COLUMN search tsvector GENERATED ALWAYS AS (to_tsvector('chat_search', content)) STORED;
CREATE INDEX messages_search ON messages USING GIN (search);

-- Titles are few per user and short: an expression index is enough.
CREATE INDEX conversations_search ON conversations
    USING GIN (to_tsvector('chat_search', title));
