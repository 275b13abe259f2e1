//! The SQLite backend of [`Store`].

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteRow, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{Connection, FromRow, QueryBuilder, Row, Sqlite};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use super::rows::*;
use super::*;

/// A [`Store`] over SQLite connections: several readers and one writer.
///
/// The connections are handed out without sqlx's pool: that pool pings a connection when it
/// is taken and again when it comes back, which for SQLite is two more round trips to the
/// connection's thread for every query. Every statement here is a single autocommit one, so
/// a connection is ready for the next query as soon as its statement has ended.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Readers; WAL lets them run beside the writer.
    readers: deadpool::unmanaged::Pool<SqliteConnection>,
    /// The one writer. SQLite takes one write at a time; queueing writes here, in order,
    /// beats letting several connections collide and back off in the busy handler. `None`
    /// once closed.
    writer: Arc<Mutex<Option<SqliteConnection>>>,
}

/// How long a query waits for a free reader before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

impl SqliteStore {
    /// Opens (creating file and folder if needed) the database, with WAL, foreign keys and a
    /// busy timeout, applies the embedded migrations, and opens `max_connections` readers.
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
            .busy_timeout(Duration::from_secs(5));
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
        Ok(Self {
            readers,
            writer: Arc::new(Mutex::new(Some(writer))),
        })
    }

    /// Closes every connection; later queries fail. For tests of an unreachable database.
    pub async fn close(&self) {
        self.readers.close();
        if let Some(writer) = self.writer.lock().await.take() {
            let _ = writer.close().await;
        }
    }

    /// A free reader, waiting for one if all are busy.
    async fn reader(&self) -> StoreResult<deadpool::unmanaged::Object<SqliteConnection>> {
        self.readers.get().await.map_err(|err| {
            StoreError::from(match err {
                deadpool::unmanaged::PoolError::Timeout => sqlx::Error::PoolTimedOut,
                _ => sqlx::Error::PoolClosed,
            })
        })
    }

    /// The writer, once the writes queued before this one are done.
    async fn writer(&self) -> StoreResult<MappedMutexGuard<'_, SqliteConnection>> {
        MutexGuard::try_map(self.writer.lock().await, Option::as_mut)
            .map_err(|_| sqlx::Error::PoolClosed.into())
    }
}

/// Rows of a page plus the `total` window column; the total of an empty page past the end
/// is counted separately.
async fn page_with_total<T, F>(
    connection: &mut SqliteConnection,
    mut query: QueryBuilder<'_, Sqlite>,
    page: Page,
    map: F,
    count: impl FnOnce() -> QueryBuilder<'static, Sqlite>,
) -> StoreResult<(Vec<T>, i64)>
where
    F: Fn(&SqliteRow) -> sqlx::Result<T>,
{
    query
        .push(" LIMIT ")
        .push_bind(page.limit)
        .push(" OFFSET ")
        .push_bind(page.skip);
    let rows = query.build().fetch_all(&mut *connection).await?;
    let total = match rows.first() {
        Some(row) => row.try_get("total")?,
        None if page.skip == 0 => 0,
        None => {
            count()
                .build_query_scalar()
                .fetch_one(&mut *connection)
                .await?
        }
    };
    let items = rows.iter().map(map).collect::<sqlx::Result<_>>()?;
    Ok((items, total))
}

fn user_filter_sql(query: &mut QueryBuilder<'_, Sqlite>, filter: &UserFilter) {
    query.push(" WHERE 1 = 1");
    if let Some(search) = &filter.search {
        let pattern = contains_pattern(search);
        query
            .push(" AND (username LIKE ")
            .push_bind(pattern.clone())
            .push(" ESCAPE '\\' OR email LIKE ")
            .push_bind(pattern.clone())
            .push(" ESCAPE '\\' OR full_name LIKE ")
            .push_bind(pattern)
            .push(" ESCAPE '\\')");
    }
    if let Some(active) = filter.is_active {
        query.push(" AND is_active = ").push_bind(active);
    }
}

fn conversation_filter_sql(
    query: &mut QueryBuilder<'_, Sqlite>,
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
            .push(" AND title LIKE ")
            .push_bind(contains_pattern(search))
            .push(" ESCAPE '\\'");
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
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.reader().await?)
            .await?;
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
        let now = to_micros(Utc::now());
        // The email may already belong to another account; provisioning must not fail on it.
        let insert = format!(
            "INSERT INTO users (username, email, created_at, updated_at) \
             VALUES (?, (SELECT ?2 WHERE NOT EXISTS (SELECT 1 FROM users WHERE email = ?2)), ?3, ?3) \
             ON CONFLICT (username) DO NOTHING RETURNING {USER_COLUMNS}"
        );
        let created: Option<UserRow> = sqlx::query_as(&insert)
            .bind(username)
            .bind(email)
            .bind(now)
            .fetch_optional(&mut *self.writer().await?)
            .await?;
        match created {
            Some(UserRow(user)) => Ok((user, true)),
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
        let now = to_micros(Utc::now());
        let sql = format!(
            "INSERT INTO users (username, email, full_name, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?) RETURNING {USER_COLUMNS}"
        );
        let UserRow(user) = sqlx::query_as(&sql)
            .bind(&new.username)
            .bind(&new.email)
            .bind(&new.full_name)
            .bind(now)
            .bind(now)
            .fetch_one(&mut *self.writer().await?)
            .await
            .map_err(conflict_or)?;
        Ok(user)
    }

    async fn user_by_id(&self, id: i64) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?");
        let row: Option<UserRow> = sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        Ok(row.map(|r| r.0))
    }

    async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?");
        let row: Option<UserRow> = sqlx::query_as(&sql)
            .bind(username)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
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
            &mut *self.reader().await?,
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
            "UPDATE users SET username = COALESCE(?, username), email = COALESCE(?, email), \
             full_name = COALESCE(?, full_name), is_active = COALESCE(?, is_active), \
             updated_at = ? WHERE id = ? RETURNING {USER_COLUMNS}"
        );
        let row: Option<UserRow> = sqlx::query_as(&sql)
            .bind(&patch.username)
            .bind(&patch.email)
            .bind(&patch.full_name)
            .bind(patch.is_active)
            .bind(to_micros(Utc::now()))
            .bind(id)
            .fetch_optional(&mut *self.writer().await?)
            .await
            .map_err(conflict_or)?;
        Ok(row.map(|r| r.0))
    }

    async fn delete_user(&self, id: i64) -> StoreResult<bool> {
        let result = sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn create_conversation(
        &self,
        owner: Option<i64>,
        new: &NewConversation,
    ) -> StoreResult<Conversation> {
        let now = to_micros(Utc::now());
        let sql = format!(
            "INSERT INTO conversations (user_id, title, system_message, model, \
             context_metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
             RETURNING {CONVERSATION_COLUMNS}"
        );
        let ConversationRow(conversation) = sqlx::query_as(&sql)
            .bind(owner)
            .bind(&new.title)
            .bind(&new.system_message)
            .bind(&new.model)
            .bind(new.context_metadata.as_ref().map(Json))
            .bind(now)
            .bind(now)
            .fetch_one(&mut *self.writer().await?)
            .await?;
        Ok(conversation)
    }

    async fn conversation(&self, scope: Scope, id: i64) -> StoreResult<Option<Conversation>> {
        let mut query = QueryBuilder::new(format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = "
        ));
        query.push_bind(id);
        push_scope(&mut query, scope);
        let row: Option<ConversationRow> = query
            .build_query_as()
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        Ok(row.map(|r| r.0))
    }

    async fn list_conversations(
        &self,
        scope: Scope,
        filter: &ConversationFilter,
    ) -> StoreResult<(Vec<Conversation>, i64)> {
        // The page comes back as one row holding a JSON array: the SQLite driver hands rows
        // over one by one between threads, and on this hot path that costs more than the
        // query itself.
        let mut query = QueryBuilder::new("SELECT (SELECT COUNT(*)");
        conversation_filter_sql(&mut query, scope, filter);
        query.push(
            ") AS total, (SELECT json_group_array(json_array(id, user_id, title, \
             system_message, model, status, context_metadata, created_at, updated_at, ended_at) \
             ORDER BY updated_at DESC, id DESC) FROM (SELECT *",
        );
        conversation_filter_sql(&mut query, scope, filter);
        query
            .push(" ORDER BY updated_at DESC, id DESC LIMIT ")
            .push_bind(filter.page.limit)
            .push(" OFFSET ")
            .push_bind(filter.page.skip)
            .push(")) AS page");
        let row = query.build().fetch_one(&mut *self.reader().await?).await?;
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
        let row: Option<ConversationRow> = query
            .build_query_as()
            .fetch_optional(&mut *self.writer().await?)
            .await?;
        Ok(row.map(|r| r.0))
    }

    async fn delete_conversation(&self, scope: Scope, id: i64) -> StoreResult<bool> {
        let mut query = QueryBuilder::new("DELETE FROM conversations WHERE id = ");
        query.push_bind(id);
        push_scope(&mut query, scope);
        let result = query.build().execute(&mut *self.writer().await?).await?;
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
        let row: Option<MessageRow> = query
            .build_query_as()
            .fetch_optional(&mut *self.writer().await?)
            .await?;
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
        let message_filter = |query: &mut QueryBuilder<'_, Sqlite>| {
            query
                .push(" FROM messages WHERE conversation_id = ")
                .push_bind(conversation_id);
            if let Some(role) = filter.role {
                query.push(" AND role = ").push_bind(role.as_str());
            }
        };
        let mut query = QueryBuilder::new(format!(
            "SELECT {MESSAGE_COLUMNS}, COUNT(*) OVER () AS total"
        ));
        message_filter(&mut query);
        query.push(" ORDER BY id");
        let role = filter.role;
        let page = page_with_total(
            &mut *self.reader().await?,
            query,
            filter.page,
            |row| MessageRow::from_row(row).map(|r| r.0),
            move || {
                let mut count =
                    QueryBuilder::new("SELECT COUNT(*) FROM messages WHERE conversation_id = ");
                count.push_bind(conversation_id);
                if let Some(role) = role {
                    count.push(" AND role = ").push_bind(role.as_str());
                }
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
            .push(") ORDER BY id");
        let rows: Vec<MessageRow> = query
            .build_query_as()
            .fetch_all(&mut *self.reader().await?)
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn conversation_stats(
        &self,
        scope: Scope,
        conversation_id: i64,
    ) -> StoreResult<Option<ConversationStats>> {
        // TOTAL, not SUM: SUM raises an error when stored token counts overflow an integer;
        // the cast saturates instead.
        let mut query = QueryBuilder::new(
            "SELECT COUNT(m.id) AS total_messages, \
             COALESCE(SUM(m.role = 'user'), 0) AS user_messages, \
             COALESCE(SUM(m.role = 'assistant'), 0) AS assistant_messages, \
             COALESCE(SUM(m.role = 'system'), 0) AS system_messages, \
             CAST(TOTAL(m.tokens_used) AS INTEGER) AS total_tokens, \
             AVG(m.response_time) AS average_response_time, \
             MIN(m.timestamp) AS first_message_at, MAX(m.timestamp) AS last_message_at \
             FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id \
             WHERE c.id = ",
        );
        query.push_bind(conversation_id);
        push_scope(&mut query, scope);
        query.push(" GROUP BY c.id");
        let row = query
            .build()
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(stats_from_row(&row)?))
    }
}
