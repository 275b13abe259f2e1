//! The PostgreSQL backend of [`Store`], for deployments that run several instances.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use deadpool::managed::{Metrics, Object, PoolError, RecycleResult};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgRow};
use sqlx::types::Json;
use sqlx::{ConnectOptions, Connection, FromRow, Postgres, QueryBuilder, Row};

use super::rows::*;
use super::*;

/// A [`Store`] over a pool of PostgreSQL connections.
///
/// The pool is deadpool's rather than sqlx's: sqlx's pings a connection when it is taken and
/// again when it comes back (two more round trips to the server for every query). Here a
/// connection goes back as it is; one whose query failed because the connection broke is dropped instead (see
/// [`checked`]), and one that sat idle is pinged before it is handed out again.
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
fn is_broken(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// Passes a query's outcome on, dropping the connection instead of returning it to the pool
/// when the query broke it.
fn checked<T>(connection: Pooled, outcome: sqlx::Result<T>) -> sqlx::Result<T> {
    if outcome.as_ref().is_err_and(is_broken) {
        drop(Object::take(connection));
    }
    outcome
}

/// Runs one query on a pooled connection: `pooled!(self, |c| query.fetch_one(c))`, through
/// [`checked`].
macro_rules! pooled {
    ($store:expr, |$c:ident| $query:expr) => {{
        let mut connection = $store.connection().await?;
        let $c = &mut *connection;
        let outcome = $query.await;
        checked(connection, outcome)
    }};
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
        let mut connection = store.connection().await?;
        // sqlx holds an advisory lock while migrating, so instances starting together are safe.
        sqlx::migrate!("migrations/postgres")
            .run(&mut *connection)
            .await?;
        Ok(store)
    }

    /// A connection from the pool, waiting a bounded time when all are busy.
    async fn connection(&self) -> StoreResult<Pooled> {
        self.pool.get().await.map_err(|err| {
            StoreError::from(match err {
                PoolError::Backend(err) => err,
                PoolError::Timeout(_) => sqlx::Error::PoolTimedOut,
                _ => sqlx::Error::PoolClosed,
            })
        })
    }

    /// Inserts a provisioned user unless the username exists; the email is left out when
    /// another account already has it.
    async fn insert_provisioned(
        &self,
        username: &str,
        email: Option<&str>,
    ) -> StoreResult<Option<User>> {
        let insert = format!(
            "INSERT INTO users (username, email, created_at, updated_at) \
             VALUES ($1, (SELECT $2 WHERE NOT EXISTS \
             (SELECT 1 FROM users WHERE lower(email) = lower($2))), $3, $3) \
             ON CONFLICT (username) DO NOTHING RETURNING {USER_COLUMNS}"
        );
        let created: Option<UserRow> = pooled!(self, |c| sqlx::query_as(&insert)
            .bind(username)
            .bind(email)
            .bind(to_micros(Utc::now()))
            .fetch_optional(c))
        .map_err(conflict_or)?;
        Ok(created.map(|r| r.0))
    }
}

/// Rows of a page plus the `total` window column; the total of an empty page past the end
/// is counted separately.
async fn page_with_total<T, F>(
    store: &PostgresStore,
    mut query: QueryBuilder<'_, Postgres>,
    page: Page,
    map: F,
    count: impl FnOnce() -> QueryBuilder<'static, Postgres>,
) -> StoreResult<(Vec<T>, i64)>
where
    F: Fn(&PgRow) -> sqlx::Result<T>,
{
    query
        .push(" LIMIT ")
        .push_bind(page.limit)
        .push(" OFFSET ")
        .push_bind(page.skip);
    let rows = pooled!(store, |c| query.build().fetch_all(c))?;
    let total = match rows.first() {
        Some(row) => row.try_get("total")?,
        None if page.skip == 0 => 0,
        None => {
            let mut count = count();
            pooled!(store, |c| count.build_query_scalar().fetch_one(c))?
        }
    };
    let items = rows.iter().map(map).collect::<sqlx::Result<_>>()?;
    Ok((items, total))
}

// ILIKE because SQLite's LIKE ignores case, and both backends must find the same rows.
fn user_filter_sql(query: &mut QueryBuilder<'_, Postgres>, filter: &UserFilter) {
    query.push(" WHERE 1 = 1");
    if let Some(search) = &filter.search {
        let pattern = contains_pattern(search);
        query
            .push(" AND (username ILIKE ")
            .push_bind(pattern.clone())
            .push(" ESCAPE '\\' OR email ILIKE ")
            .push_bind(pattern.clone())
            .push(" ESCAPE '\\' OR full_name ILIKE ")
            .push_bind(pattern)
            .push(" ESCAPE '\\')");
    }
    if let Some(active) = filter.is_active {
        query.push(" AND is_active = ").push_bind(active);
    }
}

fn conversation_filter_sql(
    query: &mut QueryBuilder<'_, Postgres>,
    scope: Scope,
    filter: &ConversationFilter,
) {
    query.push(" FROM conversations WHERE 1 = 1");
    push_scope(query, scope);
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(search) = &filter.search {
        query
            .push(" AND title ILIKE ")
            .push_bind(contains_pattern(search))
            .push(" ESCAPE '\\'");
    }
}

fn message_filter_sql(
    query: &mut QueryBuilder<'_, Postgres>,
    conversation_id: i64,
    role: Option<MessageRole>,
) {
    query
        .push(" FROM messages WHERE conversation_id = ")
        .push_bind(conversation_id);
    if let Some(role) = role {
        query.push(" AND role = ").push_bind(role.as_str());
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        pooled!(self, |c| sqlx::query("SELECT 1").execute(c))?;
        Ok(())
    }

    async fn provision_user(
        &self,
        username: &str,
        email: Option<&str>,
    ) -> StoreResult<(User, bool)> {
        if let Some(user) = self.user_by_username(username).await? {
            return Ok((user, false));
        }
        // Provisioning must not fail on an email that is taken, even by a concurrent insert
        // that the NOT EXISTS above could not see yet: then the user is created without it.
        let created = match self.insert_provisioned(username, email).await {
            Err(StoreError::Conflict("email")) => self.insert_provisioned(username, None).await,
            other => other,
        }?;
        match created {
            Some(user) => Ok((user, true)),
            // Another request provisioned it between the two statements.
            None => {
                let user = self
                    .user_by_username(username)
                    .await?
                    .ok_or(sqlx::Error::RowNotFound)?;
                Ok((user, false))
            }
        }
    }

    async fn create_user(&self, new: &NewUser) -> StoreResult<User> {
        let sql = format!(
            "INSERT INTO users (username, email, full_name, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) RETURNING {USER_COLUMNS}"
        );
        let UserRow(user) = pooled!(self, |c| sqlx::query_as(&sql)
            .bind(&new.username)
            .bind(&new.email)
            .bind(&new.full_name)
            .bind(to_micros(Utc::now()))
            .fetch_one(c))
        .map_err(conflict_or)?;
        Ok(user)
    }

    async fn user_by_id(&self, id: i64) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row: Option<UserRow> =
            pooled!(self, |c| sqlx::query_as(&sql).bind(id).fetch_optional(c))?;
        Ok(row.map(|r| r.0))
    }

    async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
        let row: Option<UserRow> = pooled!(self, |c| sqlx::query_as(&sql)
            .bind(username)
            .fetch_optional(c))?;
        Ok(row.map(|r| r.0))
    }

    async fn list_users(&self, filter: &UserFilter) -> StoreResult<(Vec<User>, i64)> {
        let mut query = QueryBuilder::new(format!(
            "SELECT {USER_COLUMNS}, COUNT(*) OVER () AS total FROM users"
        ));
        user_filter_sql(&mut query, filter);
        query.push(" ORDER BY id");
        let count_filter = filter.clone();
        page_with_total(
            self,
            query,
            filter.page,
            |row| UserRow::from_row(row).map(|r| r.0),
            move || {
                let mut count = QueryBuilder::new("SELECT COUNT(*) FROM users");
                user_filter_sql(&mut count, &count_filter);
                count
            },
        )
        .await
    }

    async fn update_user(&self, id: i64, patch: &UserPatch) -> StoreResult<Option<User>> {
        let sql = format!(
            "UPDATE users SET username = COALESCE($1, username), email = COALESCE($2, email), \
             full_name = COALESCE($3, full_name), is_active = COALESCE($4, is_active), \
             updated_at = $5 WHERE id = $6 RETURNING {USER_COLUMNS}"
        );
        let row: Option<UserRow> = pooled!(self, |c| sqlx::query_as(&sql)
            .bind(&patch.username)
            .bind(&patch.email)
            .bind(&patch.full_name)
            .bind(patch.is_active)
            .bind(to_micros(Utc::now()))
            .bind(id)
            .fetch_optional(c))
        .map_err(conflict_or)?;
        Ok(row.map(|r| r.0))
    }

    async fn delete_user(&self, id: i64) -> StoreResult<bool> {
        let result = pooled!(self, |c| sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(c))?;
        Ok(result.rows_affected() > 0)
    }

    async fn create_conversation(
        &self,
        owner: Option<i64>,
        new: &NewConversation,
    ) -> StoreResult<Conversation> {
        let sql = format!(
            "INSERT INTO conversations (user_id, title, system_message, model, \
             context_metadata, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
             RETURNING {CONVERSATION_COLUMNS}"
        );
        let ConversationRow(conversation) = pooled!(self, |c| sqlx::query_as(&sql)
            .bind(owner)
            .bind(&new.title)
            .bind(&new.system_message)
            .bind(&new.model)
            .bind(new.context_metadata.as_ref().map(Json))
            .bind(to_micros(Utc::now()))
            .fetch_one(c))?;
        Ok(conversation)
    }

    async fn conversation(&self, scope: Scope, id: i64) -> StoreResult<Option<Conversation>> {
        let mut query = QueryBuilder::new(format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = "
        ));
        query.push_bind(id);
        push_scope(&mut query, scope);
        let row: Option<ConversationRow> =
            pooled!(self, |c| query.build_query_as().fetch_optional(c))?;
        Ok(row.map(|r| r.0))
    }

    async fn list_conversations(
        &self,
        scope: Scope,
        filter: &ConversationFilter,
    ) -> StoreResult<(Vec<Conversation>, i64)> {
        let mut query = QueryBuilder::new(format!(
            "SELECT {CONVERSATION_COLUMNS}, COUNT(*) OVER () AS total"
        ));
        conversation_filter_sql(&mut query, scope, filter);
        query.push(" ORDER BY updated_at DESC, id DESC");
        let count_filter = filter.clone();
        page_with_total(
            self,
            query,
            filter.page,
            |row| ConversationRow::from_row(row).map(|r| r.0),
            move || {
                let mut count = QueryBuilder::new("SELECT COUNT(*)");
                conversation_filter_sql(&mut count, scope, &count_filter);
                count
            },
        )
        .await
    }

    async fn update_conversation(
        &self,
        scope: Scope,
        id: i64,
        patch: &ConversationPatch,
    ) -> StoreResult<Option<Conversation>> {
        let now = to_micros(Utc::now());
        let status = patch.status.map(ConversationStatus::as_str);
        let mut query = QueryBuilder::new("UPDATE conversations SET title = COALESCE(");
        query
            .push_bind(&patch.title)
            .push(", title), context_metadata = COALESCE(")
            .push_bind(patch.context_metadata.as_ref().map(Json))
            .push(", context_metadata), status = COALESCE(")
            .push_bind(status)
            .push(", status), ended_at = CASE WHEN ")
            .push_bind(status)
            .push(" IS NULL THEN ended_at WHEN ")
            .push_bind(status)
            .push(" = 'ended' THEN COALESCE(ended_at, ")
            .push_bind(now)
            .push(") ELSE NULL END, updated_at = ")
            .push_bind(now)
            .push(" WHERE id = ")
            .push_bind(id);
        push_scope(&mut query, scope);
        query.push(format!(" RETURNING {CONVERSATION_COLUMNS}"));
        let row: Option<ConversationRow> =
            pooled!(self, |c| query.build_query_as().fetch_optional(c))?;
        Ok(row.map(|r| r.0))
    }

    async fn delete_conversation(&self, scope: Scope, id: i64) -> StoreResult<bool> {
        let mut query = QueryBuilder::new("DELETE FROM conversations WHERE id = ");
        query.push_bind(id);
        push_scope(&mut query, scope);
        let result = pooled!(self, |c| query.build().execute(c))?;
        Ok(result.rows_affected() > 0)
    }

    async fn add_message(
        &self,
        scope: Scope,
        conversation_id: i64,
        new: &NewMessage,
    ) -> StoreResult<Option<Message>> {
        let now = to_micros(Utc::now());
        // The conversation is selected within the scope, so nothing is written out of it.
        let mut query = QueryBuilder::new(
            "INSERT INTO messages (conversation_id, role, content, timestamp, model, \
             tokens_used, response_time, message_metadata, updated_at) SELECT c.id, ",
        );
        {
            let mut values = query.separated(", ");
            values.push_bind(new.role.as_str());
            values.push_bind(&new.content);
            values.push_bind(now);
            values.push_bind(&new.model);
            values.push_bind(new.tokens_used);
            values.push_bind(new.response_time);
            values.push_bind(new.message_metadata.as_ref().map(Json));
            values.push_bind(now);
        }
        query
            .push(" FROM conversations c WHERE c.id = ")
            .push_bind(conversation_id);
        push_scope(&mut query, scope);
        query.push(format!(" RETURNING {MESSAGE_COLUMNS}"));
        let row: Option<MessageRow> = pooled!(self, |c| query.build_query_as().fetch_optional(c))?;
        Ok(row.map(|r| r.0))
    }

    async fn list_messages(
        &self,
        scope: Scope,
        conversation_id: i64,
        filter: &MessageFilter,
    ) -> StoreResult<Option<(Vec<Message>, i64)>> {
        if self.conversation(scope, conversation_id).await?.is_none() {
            return Ok(None);
        }
        let mut query = QueryBuilder::new(format!(
            "SELECT {MESSAGE_COLUMNS}, COUNT(*) OVER () AS total"
        ));
        message_filter_sql(&mut query, conversation_id, filter.role);
        query.push(" ORDER BY id");
        let role = filter.role;
        let page = page_with_total(
            self,
            query,
            filter.page,
            |row| MessageRow::from_row(row).map(|r| r.0),
            move || {
                let mut count = QueryBuilder::new("SELECT COUNT(*)");
                message_filter_sql(&mut count, conversation_id, role);
                count
            },
        )
        .await?;
        Ok(Some(page))
    }

    async fn recent_messages(
        &self,
        scope: Scope,
        conversation_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<Message>> {
        let mut query = QueryBuilder::new(format!(
            "SELECT {MESSAGE_COLUMNS} FROM (SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE conversation_id IN (SELECT id FROM conversations WHERE id = "
        ));
        query.push_bind(conversation_id);
        push_scope(&mut query, scope);
        query
            .push(") ORDER BY id DESC LIMIT ")
            .push_bind(limit)
            .push(") AS recent ORDER BY id");
        let rows: Vec<MessageRow> = pooled!(self, |c| query.build_query_as().fetch_all(c))?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn conversation_stats(
        &self,
        scope: Scope,
        conversation_id: i64,
    ) -> StoreResult<Option<ConversationStats>> {
        // SUM over BIGINT is NUMERIC in PostgreSQL; the cast keeps the column an i64.
        let mut query = QueryBuilder::new(
            "SELECT COUNT(m.id) AS total_messages, \
             COUNT(m.id) FILTER (WHERE m.role = 'user') AS user_messages, \
             COUNT(m.id) FILTER (WHERE m.role = 'assistant') AS assistant_messages, \
             COUNT(m.id) FILTER (WHERE m.role = 'system') AS system_messages, \
             LEAST(COALESCE(SUM(m.tokens_used), 0), 9223372036854775807)::BIGINT AS total_tokens, \
             AVG(m.response_time) AS average_response_time, \
             MIN(m.timestamp) AS first_message_at, MAX(m.timestamp) AS last_message_at \
             FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id \
             WHERE c.id = ",
        );
        query.push_bind(conversation_id);
        push_scope(&mut query, scope);
        query.push(" GROUP BY c.id");
        let row = pooled!(self, |c| query.build().fetch_optional(c))?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(stats_from_row(&row)?))
    }
}
