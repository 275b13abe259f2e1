//! The SQLite backend: readers beside one writer that commits writes in groups (`writer`),
//! search indexing in batches after the writes (`indexer`), SQLite's dialect, and the
//! conversation list read as one JSON row.

mod indexer;
mod writer;

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, Row, Sqlite};

use self::indexer::{Indexer, Readers};
use self::writer::{Lease, Writer};
use super::queries::{conversation_filter_sql, Backend, Dialect, Sql};
use super::rows::from_micros;
use super::search::{owner_token, push_message_filters};
use super::*;
use crate::search::SearchQuery;

/// A [`Store`] over SQLite connections: several readers and one writer.
///
/// The readers are handed out without sqlx's pool: that pool pings a connection when it is
/// taken and again when it comes back, which for SQLite is two more round trips to the
/// connection's thread for every query. Every read is a single autocommit statement, so a
/// reader is ready for the next query as soon as its statement has ended.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Readers; WAL lets them run beside the writer.
    readers: Readers,
    /// The one writer. SQLite takes one write at a time; queueing writes in order beats
    /// letting several connections collide and back off in the busy handler, and lets the
    /// writes that queue together share one transaction and one disk flush.
    writer: Writer,
    /// Indexes the messages queued for search; stops when the last clone of the store goes.
    indexer: Arc<Indexer>,
}

/// How long a query waits for a free reader before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of the database file each connection maps into memory (SQLite's `mmap_size`).
const MMAP_BYTES: u64 = 256 * 1024 * 1024;

impl SqliteStore {
    /// Opens (creating file and folder if needed) the database, with WAL, foreign keys and a
    /// busy timeout, applies the embedded migrations, opens `max_connections` readers and
    /// starts the writer.
    pub async fn connect(
        url: &str,
        synchronous: &str,
        max_connections: u32,
    ) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::from_str(synchronous).map_err(anyhow::Error::msg)?)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            // Readers map the database file instead of copying pages in with a system call
            // each: every commit empties the readers' page caches, so under a steady stream
            // of writes they fetch the same pages again and again. Address space, not memory.
            .pragma("mmap_size", MMAP_BYTES.to_string());
        let filename = options.get_filename();
        if let Some(dir) = filename.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !Path::new(dir).exists() {
                tokio::fs::create_dir_all(dir).await?;
            }
        }
        let mut writer = SqliteConnection::connect_with(&options).await?;
        sqlx::migrate!("migrations/sqlite").run(&mut writer).await?;
        let count = max_connections.max(1) as usize;
        let readers = deadpool::unmanaged::Pool::from_config(&deadpool::unmanaged::PoolConfig {
            max_size: count,
            timeout: Some(ACQUIRE_TIMEOUT),
            runtime: Some(deadpool::Runtime::Tokio1),
        });
        for _ in 0..count {
            let reader = SqliteConnection::connect_with(&options).await?;
            if readers.try_add(reader).is_err() {
                anyhow::bail!("could not add a reader to the pool");
            }
        }
        let writer = Writer::start(writer);
        Ok(Self {
            indexer: Arc::new(Indexer::start(readers.clone(), writer.clone())),
            readers,
            writer,
        })
    }

    /// Indexes every message queued for search now, as a search does before it reads (the
    /// store otherwise indexes them in the background, a moment after they are stored);
    /// answers how many left the queue. For tools that fill a database.
    pub async fn index_queued(&self) -> StoreResult<u64> {
        indexer::catch_up(&self.readers, &self.writer).await
    }

    /// Closes every connection once the writes under way have committed; later queries fail.
    /// For tests of an unreachable database.
    pub async fn close(&self) {
        self.indexer.stop().await;
        self.readers.close();
        self.writer.close().await;
    }
}

/// A reader from `readers`, waiting for one if all are busy.
async fn take_reader(
    readers: &Readers,
) -> StoreResult<deadpool::unmanaged::Object<SqliteConnection>> {
    readers.get().await.map_err(|err| {
        StoreError::from(match err {
            deadpool::unmanaged::PoolError::Timeout => sqlx::Error::PoolTimedOut,
            _ => sqlx::Error::PoolClosed,
        })
    })
}

/// A connection taken for one query: a reader, or the writer lent to one write.
pub enum SqliteConnectionRef {
    /// A reader from the pool.
    Reader(deadpool::unmanaged::Object<SqliteConnection>),
    /// The writer, lent for one write.
    Writer(Lease),
}

impl Deref for SqliteConnectionRef {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        match self {
            Self::Reader(reader) => reader,
            Self::Writer(lease) => lease,
        }
    }
}

impl DerefMut for SqliteConnectionRef {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            Self::Reader(reader) => reader,
            Self::Writer(lease) => lease,
        }
    }
}

impl Backend for SqliteStore {
    type Database = Sqlite;
    type Connection = SqliteConnectionRef;

    /// A reader, waiting for one if all are busy.
    async fn reader(&self) -> StoreResult<SqliteConnectionRef> {
        Ok(SqliteConnectionRef::Reader(
            take_reader(&self.readers).await?,
        ))
    }

    /// The writer, once the writes queued before this one have had it. The write may queue
    /// messages for search: the indexer looks a moment later.
    async fn writer(&self) -> StoreResult<SqliteConnectionRef> {
        let lease = self.writer.lease().await?;
        self.indexer.wake();
        Ok(SqliteConnectionRef::Writer(lease))
    }

    /// Indexes what is queued for search, so a search finds every message stored before it.
    async fn index_for_search(&self) -> StoreResult<()> {
        indexer::catch_up(&self.readers, &self.writer)
            .await
            .map(drop)
    }

    /// A savepoint of the write's own inside the batch's transaction.
    async fn all_or_nothing(connection: &mut SqliteConnectionRef) -> StoreResult<bool> {
        match connection {
            SqliteConnectionRef::Writer(lease) => lease.all_or_nothing().await.map(|()| true),
            SqliteConnectionRef::Reader(_) => Ok(false),
        }
    }

    /// A write is kept and answered once its transaction is durable, or undone when it failed.
    async fn release<T: Send>(
        connection: SqliteConnectionRef,
        outcome: StoreResult<T>,
    ) -> StoreResult<T> {
        match connection {
            SqliteConnectionRef::Reader(_) => outcome,
            SqliteConnectionRef::Writer(lease) => lease.settle(outcome).await,
        }
    }
}

impl Dialect for Sqlite {
    const LIKE: &'static str = "LIKE";
    // The column compares without case (NOCASE), and so does its unique index.
    const EMAIL_KEY: &'static str = "email";
    // TOTAL, not SUM: SUM raises an error when the sum overflows an integer; the cast
    // saturates instead.
    const TOTAL_TOKENS: &'static str = "CAST(TOTAL(m.tokens_used) AS INTEGER)";
    const HISTORY_JSON: &'static str =
        "json_group_array(json_array(id, role, content) ORDER BY id)";
    const FOR_UPDATE: &'static str = "";

    // The page comes back as one row holding a JSON array: the SQLite driver hands rows
    // over one by one between threads, and on this hot path that costs more than the
    // query itself.
    async fn list_conversations(
        connection: &mut SqliteConnection,
        scope: Scope,
        filter: &ConversationFilter,
    ) -> StoreResult<(Vec<Conversation>, i64)> {
        let mut query = Sql::<Sqlite>::new("SELECT (SELECT COUNT(*)");
        conversation_filter_sql(&mut query, scope, filter);
        query.push(
            ") AS total, (SELECT json_group_array(json_array(id, user_id, title, \
             system_message, model, status, context_metadata, created_at, updated_at, ended_at, \
             current_message_id) \
             ORDER BY updated_at DESC, id DESC) FROM (SELECT *",
        );
        conversation_filter_sql(&mut query, scope, filter);
        query
            .push(" ORDER BY updated_at DESC, id DESC LIMIT ")
            .push_bind(filter.page.limit)
            .push(" OFFSET ")
            .push_bind(filter.page.skip)
            .push(")) AS page");
        let (sql, values) = query.into_parts();
        let row = sqlx::query_with(&sql, values).fetch_one(connection).await?;
        let total: i64 = row.try_get("total")?;
        let page: String = row.try_get("page")?;
        let items: Vec<ConversationJson> =
            serde_json::from_str(&page).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let conversations = items
            .into_iter()
            .map(ConversationJson::into_conversation)
            .collect::<sqlx::Result<_>>()?;
        Ok((conversations, total))
    }

    // The FTS5 tables index the owner beside the text: a search for one user intersects the
    // owner's postings with the words' in the index, instead of filtering every match of a
    // common word. The owner test on `conversations` stays, as the rule. No `bm25()`: it
    // would walk the whole posting list of each word to weigh it (see `search::rank`).
    fn title_hits(sql: &mut Sql<'_, Sqlite>, search: &SearchQuery, filter: &SearchFilter) {
        sql.push(
            "SELECT c.id AS conversation_id, c.title AS conversation_title, \
             NULL AS message_id, NULL AS role, c.updated_at AS timestamp, c.title AS text \
             FROM conversations_search \
             CROSS JOIN conversations c ON c.id = conversations_search.rowid \
             WHERE conversations_search MATCH ",
        )
        .push_bind(search.fts5("title", &owner_token(filter.owner)))
        .push(" AND c.user_id = ")
        .push_bind(filter.owner);
        if let Some(conversation) = filter.conversation_id {
            sql.push(" AND c.id = ").push_bind(conversation);
        }
    }

    // CROSS JOIN keeps the index first: looking a match up per message of the owner would
    // run the MATCH once per message.
    fn message_hits(sql: &mut Sql<'_, Sqlite>, search: &SearchQuery, filter: &SearchFilter) {
        sql.push(
            "SELECT m.conversation_id AS conversation_id, c.title AS conversation_title, \
             m.id AS message_id, m.role AS role, m.timestamp AS timestamp, m.content AS text \
             FROM (SELECT rowid AS id FROM messages_search WHERE messages_search MATCH ",
        )
        .push_bind(search.fts5("content", &owner_token(filter.owner)))
        .push(
            ") f CROSS JOIN messages m ON m.id = f.id \
             CROSS JOIN conversations c ON c.id = m.conversation_id WHERE c.user_id = ",
        )
        .push_bind(filter.owner);
        push_message_filters(sql, filter);
    }
}

/// A conversation as one element of a JSON page, in `list_conversations`' column order.
#[derive(serde::Deserialize)]
struct ConversationJson(
    i64,
    Option<i64>,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
);

impl ConversationJson {
    fn into_conversation(self) -> sqlx::Result<Conversation> {
        let Self(
            id,
            user_id,
            title,
            system_message,
            model,
            status,
            metadata,
            created,
            updated,
            ended,
            current,
        ) = self;
        let decode = |message: String| sqlx::Error::Decode(message.into());
        Ok(Conversation {
            id,
            user_id,
            title,
            system_message,
            model,
            status: ConversationStatus::parse(&status)
                .ok_or_else(|| decode(format!("unknown conversation status {status}")))?,
            context_metadata: metadata
                .map(|m| serde_json::from_str(&m))
                .transpose()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            created_at: from_micros(created),
            updated_at: from_micros(updated),
            ended_at: ended.map(from_micros),
            current_message_id: current,
        })
    }
}
