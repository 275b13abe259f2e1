//! The PostgreSQL backend, for deployments that run several instances: its connection pool
//! and PostgreSQL's dialect.

use std::time::Duration;

use deadpool::managed::{Metrics, Object, PoolError, RecycleResult};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, FromRow, Postgres};

use super::queries::Sql;
use super::queries::{conversation_filter_sql, page_with_total, Backend, Dialect};
use super::rows::{ConversationRow, CONVERSATION_COLUMNS};
use super::search::push_message_filters;
use super::*;
use crate::search::{SearchQuery, Term};

/// A [`Store`] over a pool of PostgreSQL connections.
///
/// The pool is deadpool's rather than sqlx's: sqlx's pings a connection when it is taken and
/// again when it comes back (two more round trips to the server for every query). Here a
/// connection goes back as it is; one whose query failed because the connection broke is
/// dropped instead (see its `Backend::release`), and one that sat idle is pinged before it is
/// handed out again.
#[derive(Clone)]
pub struct PostgresStore {
    pool: deadpool::managed::Pool<PgConnector>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", &self.pool.status())
            .finish()
    }
}

/// Opens the pool's connections and checks idle ones before reuse.
pub struct PgConnector {
    options: PgConnectOptions,
}

/// Idle time after which a connection is pinged before it is used again: the server may
/// have closed it (restart, idle timeout) in the meantime.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(30);

impl deadpool::managed::Manager for PgConnector {
    type Type = PgConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<PgConnection, sqlx::Error> {
        self.options.connect().await
    }

    async fn recycle(
        &self,
        connection: &mut PgConnection,
        metrics: &Metrics,
    ) -> RecycleResult<sqlx::Error> {
        if metrics.last_used() > IDLE_CHECK_AFTER {
            connection.ping().await?;
        }
        Ok(())
    }
}

/// A connection taken from the pool.
type Pooled = Object<PgConnector>;

/// Whether an error means the connection itself is unusable (rather than the query wrong):
/// transport errors, and the server's own "connection exception" (08) and "operator
/// intervention" (57P: shutdown, terminated backend) codes.
fn is_broken(err: &StoreError) -> bool {
    match err {
        StoreError::Database(
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_),
        ) => true,
        StoreError::Database(sqlx::Error::Database(db)) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

impl PostgresStore {
    /// Connects to the database at `url` and applies the embedded migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let options: PgConnectOptions = url.parse()?;
        // Enough connections for a busy instance while several instances share one server;
        // a request waits a bounded time for a connection instead of hanging.
        let pool = deadpool::managed::Pool::builder(PgConnector { options })
            .max_size(16)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool::Runtime::Tokio1)
            .build()?;
        let store = Self { pool };
        let mut connection = store.writer().await?;
        // sqlx holds an advisory lock while migrating, so instances starting together are safe.
        sqlx::migrate!("migrations/postgres")
            .run(&mut *connection)
            .await?;
        Ok(store)
    }
}

// One pool serves reads and writes alike.
impl Backend for PostgresStore {
    type Database = Postgres;
    type Connection = Pooled;

    /// A connection from the pool, waiting a bounded time when all are busy.
    async fn reader(&self) -> StoreResult<Pooled> {
        self.pool.get().await.map_err(|err| {
            StoreError::from(match err {
                PoolError::Backend(err) => err,
                PoolError::Timeout(_) => sqlx::Error::PoolTimedOut,
                _ => sqlx::Error::PoolClosed,
            })
        })
    }

    async fn writer(&self) -> StoreResult<Pooled> {
        self.reader().await
    }

    /// Drops the connection instead of returning it to the pool when the use broke it.
    async fn release<T: Send>(connection: Pooled, outcome: StoreResult<T>) -> StoreResult<T> {
        if outcome.as_ref().is_err_and(is_broken) {
            drop(Object::take(connection));
        }
        outcome
    }
}

impl Dialect for Postgres {
    // ILIKE because SQLite's LIKE ignores case, and both backends must find the same rows.
    const LIKE: &'static str = "ILIKE";
    // Emails are unique by lower(email), like SQLite's NOCASE column.
    const EMAIL_KEY: &'static str = "lower(email)";
    // SUM over BIGINT is NUMERIC in PostgreSQL; the cast keeps the column an i64.
    const TOTAL_TOKENS: &'static str =
        "LEAST(COALESCE(SUM(m.tokens_used), 0), 9223372036854775807)::BIGINT";
    const HISTORY_JSON: &'static str =
        "COALESCE(json_agg(json_build_array(id, role, content) ORDER BY id), '[]'::json)::text";
    const FOR_UPDATE: &'static str = " FOR UPDATE";

    async fn list_conversations(
        connection: &mut PgConnection,
        scope: Scope,
        filter: &ConversationFilter,
    ) -> StoreResult<(Vec<Conversation>, i64)> {
        page_with_total::<Postgres, _>(
            connection,
            CONVERSATION_COLUMNS,
            |query| conversation_filter_sql(query, scope, filter),
            " ORDER BY updated_at DESC, id DESC",
            filter.page,
            |row| ConversationRow::from_row(row).map(|r| r.0),
        )
        .await
    }

    fn title_hits(sql: &mut Sql<'_, Postgres>, search: &SearchQuery, filter: &SearchFilter) {
        sql.push(
            "SELECT c.id AS conversation_id, c.title AS conversation_title, \
             NULL::BIGINT AS message_id, NULL::TEXT AS role, c.updated_at AS timestamp, \
             c.title AS text FROM conversations c \
             WHERE to_tsvector('chat_search', c.title) @@ ",
        );
        push_tsquery(sql, search);
        sql.push(" AND c.user_id = ").push_bind(filter.owner);
        if let Some(conversation) = filter.conversation_id {
            sql.push(" AND c.id = ").push_bind(conversation);
        }
    }

    fn message_hits(sql: &mut Sql<'_, Postgres>, search: &SearchQuery, filter: &SearchFilter) {
        sql.push(
            "SELECT m.conversation_id AS conversation_id, c.title AS conversation_title, \
             m.id AS message_id, m.role AS role, m.timestamp AS timestamp, m.content AS text \
             FROM messages m JOIN conversations c ON c.id = m.conversation_id \
             WHERE m.search @@ ",
        );
        push_tsquery(sql, search);
        sql.push(" AND c.user_id = ").push_bind(filter.owner);
        push_message_filters(sql, filter);
    }
}

/// The `tsquery` of `search`, built with functions that read their argument as plain text
/// (`plainto_tsquery`, `phraseto_tsquery`): what a user typed never meets PostgreSQL's query
/// syntax. Only a prefix needs `to_tsquery`, given quoted words of letters and digits alone.
fn push_tsquery(sql: &mut Sql<'_, Postgres>, search: &SearchQuery) {
    sql.push("(");
    for (index, term) in search.include.iter().enumerate() {
        if index > 0 {
            sql.push(" && ");
        }
        push_term(sql, term);
    }
    for term in &search.exclude {
        sql.push(" && (!! ");
        push_term(sql, term);
        sql.push(")");
    }
    sql.push(")");
}

/// One term as a `tsquery` in the `chat_search` configuration.
fn push_term(sql: &mut Sql<'_, Postgres>, term: &Term) {
    if term.prefix {
        let words: Vec<String> = term.words.iter().map(|w| format!("'{w}'")).collect();
        sql.push("to_tsquery('chat_search', ")
            .push_bind(format!("{}:*", words.join(" <-> ")))
            .push(")");
    } else if term.words.len() == 1 {
        sql.push("plainto_tsquery('chat_search', ")
            .push_bind(term.words[0].clone())
            .push(")");
    } else {
        sql.push("phraseto_tsquery('chat_search', ")
            .push_bind(term.words.join(" "))
            .push(")");
    }
}
