-- Nothing changes on PostgreSQL: its search column is computed as each message is stored,
-- at no measurable cost to the write rate. On SQLite this version queues new messages for
-- search indexing in batches (`migrations/sqlite/0009_search_queue.sql`); the two folders
-- keep the same versions.
SELECT 1;
