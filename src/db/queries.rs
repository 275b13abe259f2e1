//! The queries of [`Store`], written once for every database: a [`Backend`] hands out the
//! connections, and its [`Dialect`] says where its SQL differs.

use std::fmt::{Display, Write};
use std::future::Future;
use std::ops::DerefMut;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{
    Arguments, ColumnIndex, Connection, Database, Decode, Encode, Executor, FromRow, IntoArguments,
    Row, Type,
};

use super::rows::*;
use super::*;
use crate::config::Secret;
use crate::search::SearchQuery;

/// Where a store's connections come from. Every `Backend` is a [`Store`].
pub trait Backend: Send + Sync + 'static {
    /// The database.
    type Database: Dialect;
    /// A connection taken for one use; dropping it hands it back.
    type Connection: DerefMut<Target = <Self::Database as Database>::Connection> + Send;

    /// A connection to read with.
    fn reader(&self) -> impl Future<Output = StoreResult<Self::Connection>> + Send;

    /// A connection to write with. Each statement of a write is atomic, not the write: one
    /// that fails after an earlier statement succeeded keeps what that statement did.
    fn writer(&self) -> impl Future<Output = StoreResult<Self::Connection>> + Send;

    /// Makes the statements that a write runs on `connection` from now on hold all or none,
    /// where the writer holds a transaction of its own around every write (SQLite's group
    /// commit, where a write cannot open one): `true` then. `false` (the default): the write
    /// opens a transaction itself.
    fn all_or_nothing(
        _connection: &mut Self::Connection,
    ) -> impl Future<Output = StoreResult<bool>> + Send {
        std::future::ready(Ok(false))
    }

    /// Brings the search index up to every write answered so far, where it is kept up after
    /// the writes (SQLite's queue of messages to index); nothing to do otherwise.
    fn index_for_search(&self) -> impl Future<Output = StoreResult<()>> + Send {
        std::future::ready(Ok(()))
    }

    /// Hands `connection` back after a use that ended in `outcome`, and answers with the
    /// outcome once the use is settled: a backend may drop a connection that the use broke,
    /// or hold a write's answer until the write is durable.
    fn release<T: Send>(
        connection: Self::Connection,
        outcome: StoreResult<T>,
    ) -> impl Future<Output = StoreResult<T>> + Send {
        drop(connection);
        std::future::ready(outcome)
    }
}

/// What differs in the SQL of a database.
pub trait Dialect: Database {
    /// The `LIKE` that ignores case (ASCII case at least), so both databases find the same
    /// rows.
    const LIKE: &'static str;
    /// The users' email as their unique index compares it, matched against `lower(value)`.
    const EMAIL_KEY: &'static str;
    /// The sum of the `tokens_used` of the messages `m`, an integer that saturates rather
    /// than fails when the stored counts overflow.
    const TOTAL_TOKENS: &'static str;
    /// An aggregate over `recent (id, role, content)`: a JSON array of `[id, role, content]`
    /// triples in `id` order, as text (`[]` when there are none).
    const HISTORY_JSON: &'static str;
    /// The clause that locks the rows a `SELECT` reads until the transaction ends, where
    /// writers do not already take turns (empty for SQLite, whose writes are serial).
    const FOR_UPDATE: &'static str;

    /// A page of the conversations within `scope` that `filter` selects, most recently
    /// active first, and their total.
    fn list_conversations(
        connection: &mut Self::Connection,
        scope: Scope,
        filter: &ConversationFilter,
    ) -> impl Future<Output = StoreResult<(Vec<Conversation>, i64)>> + Send;

    /// Writes a query of the owner's conversations (within `filter`) whose title matches
    /// `search`, answering the columns of [`SearchRow`] but its rank (`conversation_id`,
    /// `conversation_title`, `message_id` and `role` null, `timestamp`, `text`).
    fn title_hits(sql: &mut Sql<'_, Self>, search: &SearchQuery, filter: &SearchFilter);

    /// Writes a query of the owner's messages within `filter` that match `search`, answering
    /// the columns of [`SearchRow`] but its rank.
    fn message_hits(sql: &mut Sql<'_, Self>, search: &SearchQuery, filter: &SearchFilter);
}

/// SQL text and the values bound to it, for any database. sqlx's `QueryBuilder` cannot run
/// its query in code generic over the database: it lends its text out for as long as its
/// values live, so it could not be dropped afterwards. Here the text and the values part
/// before the query runs.
pub struct Sql<'a, DB: Database> {
    text: String,
    values: DB::Arguments<'a>,
}

impl<'a, DB: Database> Sql<'a, DB> {
    /// SQL starting with `text`.
    pub(crate) fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            values: Default::default(),
        }
    }

    /// Appends `text`.
    pub(crate) fn push(&mut self, text: impl Display) -> &mut Self {
        write!(self.text, "{text}").expect("writing to a String");
        self
    }

    /// Binds `value` and appends its placeholder (`?` or `$n`, as the database writes them).
    pub(crate) fn push_bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'a + Encode<'a, DB> + Type<DB>,
    {
        // As in sqlx's `QueryBuilder`: the types bound here always encode.
        self.values.add(value).expect("a bound value encodes");
        self.values
            .format_placeholder(&mut self.text)
            .expect("writing to a String");
        self
    }

    /// Appends `, ` and binds `value`: the next item of a list.
    pub(crate) fn push_bind_next<T>(&mut self, value: T) -> &mut Self
    where
        T: 'a + Encode<'a, DB> + Type<DB>,
    {
        self.push(", ").push_bind(value)
    }

    /// The text and the values, for `sqlx::query_with` and its kin.
    pub(crate) fn into_parts(self) -> (String, DB::Arguments<'a>) {
        (self.text, self.values)
    }
}

/// Runs a query on a connection from `$taken` (`self.reader()` or `self.writer()`), then
/// hands the connection back through [`Backend::release`] and waits for its answer: either
/// `$query` (a [`Sql`]) read as rows of the type asked for with `$fetch` (`fetch_one`,
/// `fetch_optional`, `fetch_all`), or the future `$run` made with `$c`, the connection.
macro_rules! run {
    ($taken:expr, $query:expr, $fetch:ident) => {{
        let (sql, values) = $query.into_parts();
        run!($taken, |c| sqlx::query_as_with(&sql, values).$fetch(c))
    }};
    ($taken:expr, |$c:ident| $run:expr) => {{
        let mut connection = $taken.await?;
        let $c = &mut *connection;
        let outcome = $run.await.map_err(StoreError::from);
        Self::release(connection, outcome).await
    }};
}

/// A write of several statements that hold all or none, on a connection from
/// `$store.writer()`: `$body` runs with `$conn`, the connection, under the writer's own
/// savepoint where it holds the transaction, otherwise in a transaction opened here; then the
/// connection is handed back as in `run!`. `$body` uses `?` on sqlx errors.
macro_rules! all_or_nothing {
    ($store:ident, |$conn:ident| $body:expr) => {{
        let mut connection = $store.writer().await?;
        let held = Self::all_or_nothing(&mut connection).await?;
        let outcome = async {
            let c = &mut *connection;
            if held {
                let $conn = &mut *c;
                return Ok::<_, sqlx::Error>($body);
            }
            let mut transaction = c.begin().await?;
            let value = {
                let $conn = &mut *transaction;
                $body
            };
            transaction.commit().await?;
            Ok(value)
        };
        let outcome = outcome.await.map_err(StoreError::from);
        Self::release(connection, outcome).await
    }};
}

/// Maps a unique-constraint violation to `Conflict` on the field it names; both backends
/// name the `users` constraints after their column.
fn conflict_or(err: impl Into<StoreError>) -> StoreError {
    let err = err.into();
    if let StoreError::Database(sqlx::Error::Database(db)) = &err {
        if db.is_unique_violation() {
            // PostgreSQL reports the constraint by name; SQLite only in its message.
            let name = db.constraint().unwrap_or_else(|| db.message());
            let field = if name.contains("email") {
                "email"
            } else {
                "username"
            };
            return StoreError::Conflict(field);
        }
    }
    err
}

/// `LIKE` pattern matching `text` anywhere, with wildcards in `text` taken literally
/// (used with `ESCAPE '\'`).
fn contains_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

impl<DB: Database> Sql<'_, DB>
where
    for<'v> i64: Encode<'v, DB> + Type<DB>,
{
    /// Adds the scope condition on the `user_id` column of the conversation in the query.
    fn push_scope(&mut self, scope: Scope) {
        match scope {
            Scope::Owner(user_id) => {
                self.push(" AND user_id = ").push_bind(user_id);
            }
            Scope::Anonymous => {
                self.push(" AND user_id IS NULL");
            }
            Scope::Anyone => {}
        }
    }
}

/// Where a new message goes in its conversation's tree.
#[derive(Debug, Clone, Copy)]
enum Parent<'g> {
    /// Below the active leaf (a message stored without a turn, as linear clients do).
    Leaf,
    /// Below this message of the conversation (`None`: a root).
    Of(Option<i64>),
    /// Below the message that the reply with this generation id answers.
    Answered(&'g str),
}

/// The columns of a new message: its conversation and parent, then those `push_message_values`
/// fills.
const MESSAGE_INSERT: &str = "INSERT INTO messages (conversation_id, parent_id, role, content, \
     timestamp, model, tokens_used, response_time, message_metadata, updated_at)";

/// The conversations within the scope that the filter selects: `FROM` and `WHERE`.
pub(crate) fn conversation_filter_sql<DB>(
    query: &mut Sql<'_, DB>,
    scope: Scope,
    filter: &ConversationFilter,
) where
    DB: Dialect,
    for<'a> i64: Encode<'a, DB> + Type<DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> String: Encode<'a, DB> + Type<DB>,
{
    query.push(" FROM conversations WHERE 1 = 1");
    query.push_scope(scope);
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(search) = &filter.search {
        query
            .push(format!(" AND title {} ", DB::LIKE))
            .push_bind(contains_pattern(search))
            .push(" ESCAPE '\\'");
    }
}

// The pieces the queries share, as methods of the SQL they write; the bounds name what
// they bind, for whichever database runs them.
impl<'a, DB> Sql<'a, DB>
where
    DB: Dialect,
    for<'v> i64: Encode<'v, DB> + Type<DB>,
    for<'v> bool: Encode<'v, DB> + Type<DB>,
    for<'v> &'v str: Encode<'v, DB> + Type<DB>,
    for<'v> String: Encode<'v, DB> + Type<DB>,
    for<'v> Option<i64>: Encode<'v, DB> + Type<DB>,
    for<'v> Option<f64>: Encode<'v, DB> + Type<DB>,
    for<'v> Option<&'v str>: Encode<'v, DB> + Type<DB>,
    for<'v> Option<Json<&'v Value>>: Encode<'v, DB> + Type<DB>,
{
    /// The insert of a new conversation, answering its row.
    fn insert_conversation(owner: Option<i64>, new: &'a NewConversation, now: i64) -> Self {
        let mut query = Sql::new(
            "INSERT INTO conversations (user_id, title, system_message, model, \
             context_metadata, created_at, updated_at) VALUES (",
        );
        query
            .push_bind(owner)
            .push_bind_next(new.title.as_str())
            .push_bind_next(new.system_message.as_deref())
            .push_bind_next(new.model.as_deref())
            .push_bind_next(new.context_metadata.as_ref().map(Json))
            .push_bind_next(now)
            .push_bind_next(now)
            .push(format!(") RETURNING {CONVERSATION_COLUMNS}"));
        query
    }

    /// The values of a new message's columns after its conversation and parent (placeholders,
    /// or columns of the `SELECT` that follows).
    fn push_message_values(&mut self, new: &'a NewMessage, now: i64) {
        self.push_bind_next(new.role.as_str())
            .push_bind_next(new.content.as_str())
            .push_bind_next(now)
            .push_bind_next(new.model.as_deref())
            .push_bind_next(new.tokens_used)
            .push_bind_next(new.response_time)
            .push_bind_next(new.message_metadata.as_ref().map(Json))
            .push_bind_next(now);
    }

    /// The insert of a message into a conversation selected within the scope (and, with
    /// `open_only`, not ended) below `parent`, so nothing is written out of it; answers the
    /// stored row. Where the parent is read from a row, the row is locked, so concurrent
    /// inserts below the active leaf form a chain rather than siblings.
    fn message_insert(
        scope: Scope,
        conversation_id: i64,
        parent: Parent<'a>,
        new: &'a NewMessage,
        open_only: bool,
    ) -> Self {
        let mut query = Sql::new(format!("{MESSAGE_INSERT} SELECT c.id"));
        match parent {
            Parent::Leaf => query.push(", c.current_message_id"),
            Parent::Of(id) => query.push_bind_next(id),
            Parent::Answered(_) => query.push(", p.user_message_id"),
        };
        query.push_message_values(new, to_micros(Utc::now()));
        query.push(" FROM conversations c");
        if let Parent::Answered(generation) = parent {
            query
                .push(" JOIN pending_replies p ON p.conversation_id = c.id AND p.generation = ")
                .push_bind(generation);
        }
        query.push(" WHERE c.id = ").push_bind(conversation_id);
        query.push_scope(scope);
        if open_only {
            query
                .push(" AND c.status <> ")
                .push_bind(ConversationStatus::Ended.as_str());
        }
        match parent {
            Parent::Of(Some(id)) => {
                query
                    .push(" AND EXISTS (SELECT 1 FROM messages pm WHERE pm.id = ")
                    .push_bind(id)
                    .push(" AND pm.conversation_id = c.id)");
            }
            Parent::Leaf | Parent::Answered(_) => {
                query.push(DB::FOR_UPDATE);
            }
            Parent::Of(None) => {}
        }
        query.push(format!(" RETURNING {MESSAGE_COLUMNS}"));
        query
    }

    /// `WITH RECURSIVE ancestry (id, parent_id, depth) AS (...)`: the newest `depth` messages of
    /// the path of a conversation that ends at `end`, climbing from it towards the root. A
    /// parent is always older than its child, so a damaged link cannot loop.
    fn push_ancestry(&mut self, conversation_id: i64, end: PathEnd, depth: i64) {
        self.push(
            "WITH RECURSIVE ancestry (id, parent_id, depth) AS (SELECT id, parent_id, 1 \
                 FROM messages WHERE conversation_id = ",
        )
        .push_bind(conversation_id)
        .push(" AND id = ");
        match end {
            PathEnd::Active => {
                self.push("(SELECT current_message_id FROM conversations WHERE id = ")
                    .push_bind(conversation_id)
                    .push(")");
            }
            PathEnd::Message(id) => {
                self.push_bind(id);
            }
        }
        self.push(
            " UNION ALL SELECT m.id, m.parent_id, a.depth + 1 FROM messages m \
                 JOIN ancestry a ON m.id = a.parent_id AND m.id < a.id WHERE a.depth < ",
        )
        .push_bind(depth)
        .push(") ");
    }

    /// `WITH RECURSIVE below (id) AS (...)`: a message of a conversation and every message
    /// below it. A child is always newer than its parent, so a damaged link cannot loop.
    fn push_below(&mut self, conversation_id: i64, message_id: i64) {
        self.push("WITH RECURSIVE below (id) AS (SELECT id FROM messages WHERE id = ")
            .push_bind(message_id)
            .push(" AND conversation_id = ")
            .push_bind(conversation_id)
            .push(
                " UNION ALL SELECT m.id FROM messages m JOIN below b ON m.parent_id = b.id \
                 AND m.id > b.id) ",
            );
    }

    /// `WITH RECURSIVE below ... UPDATE conversations SET current_message_id = ... WHERE id = ?`:
    /// makes the newest message below `message_id` (itself when it has none) the active leaf;
    /// the caller finishes the statement.
    fn push_leaf_below(&mut self, conversation_id: i64, message_id: i64) {
        self.push_below(conversation_id, message_id);
        self.push(
            "UPDATE conversations SET current_message_id = (SELECT MAX(id) FROM below) \
                 WHERE id = ",
        )
        .push_bind(conversation_id);
    }

    /// `(SELECT id FROM conversations WHERE id = ? <scope>)`: the conversation's key when it is
    /// within the scope.
    fn push_scoped_conversation(&mut self, conversation_id: i64, scope: Scope) {
        self.push("(SELECT id FROM conversations WHERE id = ")
            .push_bind(conversation_id);
        self.push_scope(scope);
        self.push(")");
    }

    /// The removal of a reply's pending record, answering its generation id when it was there.
    fn forget_pending(generation: &'a str) -> Self {
        let mut query = Sql::new("DELETE FROM pending_replies WHERE generation = ");
        query.push_bind(generation).push(" RETURNING generation");
        query
    }

    /// The users that the filter selects: `FROM` and `WHERE`.
    fn push_user_filter(&mut self, filter: &UserFilter) {
        self.push(" FROM users WHERE 1 = 1");
        if let Some(search) = &filter.search {
            let pattern = contains_pattern(search);
            let like = DB::LIKE;
            self.push(format!(" AND (username {like} "))
                .push_bind(pattern.clone())
                .push(format!(" ESCAPE '\\' OR email {like} "))
                .push_bind(pattern.clone())
                .push(format!(" ESCAPE '\\' OR full_name {like} "))
                .push_bind(pattern)
                .push(" ESCAPE '\\')");
        }
        if let Some(active) = filter.is_active {
            self.push(" AND is_active = ").push_bind(active);
        }
    }

    /// A conversation's messages that the role selects: `FROM` and `WHERE`.
    fn push_message_filter(&mut self, conversation_id: i64, role: Option<MessageRole>) {
        self.push(" FROM messages WHERE conversation_id = ")
            .push_bind(conversation_id);
        if let Some(role) = role {
            self.push(" AND role = ").push_bind(role.as_str());
        }
    }

    /// The MCP servers within the scope that the filter selects: `FROM` and `WHERE`.
    fn push_mcp_server_filter(&mut self, scope: Scope, active_only: bool) {
        self.push(" FROM mcp_servers WHERE 1 = 1");
        self.push_scope(scope);
        if active_only {
            self.push(" AND is_active = ").push_bind(true);
        }
    }
}

/// A page of `columns` of the rows that `from` selects (it adds `FROM` and `WHERE`) in
/// `order`, and their total: the page's `total` window column, or for an empty page past
/// the end a count of its own.
pub(crate) async fn page_with_total<DB, T>(
    connection: &mut DB::Connection,
    columns: &str,
    from: impl Fn(&mut Sql<'_, DB>),
    order: &str,
    page: Page,
    map: impl Fn(&DB::Row) -> sqlx::Result<T>,
) -> StoreResult<(Vec<T>, i64)>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'s> &'s str: ColumnIndex<DB::Row>,
{
    let mut query = Sql::new(format!("SELECT {columns}, COUNT(*) OVER () AS total"));
    from(&mut query);
    query
        .push(order)
        .push(" LIMIT ")
        .push_bind(page.limit)
        .push(" OFFSET ")
        .push_bind(page.skip);
    let (sql, values) = query.into_parts();
    let rows = sqlx::query_with(&sql, values)
        .fetch_all(&mut *connection)
        .await?;
    let total = match rows.first() {
        Some(row) => row.try_get("total")?,
        None if page.skip == 0 => 0,
        None => {
            let mut count = Sql::new("SELECT COUNT(*) AS total");
            from(&mut count);
            let (sql, values) = count.into_parts();
            let row = sqlx::query_with(&sql, values)
                .fetch_one(&mut *connection)
                .await?;
            row.try_get("total")?
        }
    };
    let items = rows.iter().map(map).collect::<sqlx::Result<_>>()?;
    Ok((items, total))
}

// The bounds name what the queries bind and read, for whichever database runs them.
#[async_trait]
impl<B, DB> Store for B
where
    B: Backend<Database = DB>,
    DB: Dialect + sqlx::database::HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'s> &'s str: ColumnIndex<DB::Row>,
    for<'a> bool: Encode<'a, DB> + Type<DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> String: Encode<'a, DB> + Type<DB>,
    for<'a> Option<i64>: Encode<'a, DB> + Type<DB>,
    for<'a> Option<f64>: Encode<'a, DB> + Type<DB>,
    for<'a> Option<bool>: Encode<'a, DB> + Type<DB>,
    for<'a> Option<&'a str>: Encode<'a, DB> + Type<DB>,
    for<'a> Option<Json<&'a Value>>: Encode<'a, DB> + Type<DB>,
    for<'r> UserRow: FromRow<'r, DB::Row>,
    for<'r> ConversationRow: FromRow<'r, DB::Row>,
    for<'r> TurnContextRow: FromRow<'r, DB::Row>,
    for<'r> MessageRow: FromRow<'r, DB::Row>,
    for<'r> StatsRow: FromRow<'r, DB::Row>,
    for<'r> McpServerRow: FromRow<'r, DB::Row>,
    for<'r> PendingReplyRow: FromRow<'r, DB::Row>,
    for<'r> McpServerWithKeyRow: FromRow<'r, DB::Row>,
    for<'r> ApiKeyRow: FromRow<'r, DB::Row>,
    for<'r> ApiKeyOwnerRow: FromRow<'r, DB::Row>,
    for<'r> SearchHitRow: FromRow<'r, DB::Row>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'r> (i64, Option<i64>): FromRow<'r, DB::Row>,
    for<'r> (Option<i64>, Option<i64>): FromRow<'r, DB::Row>,
    for<'r> UsageGroupRow: FromRow<'r, DB::Row>,
    for<'r> (Option<i64>, Option<i64>, Option<i64>): FromRow<'r, DB::Row>,
{
    async fn ping(&self) -> StoreResult<()> {
        run!(self.reader(), |c| sqlx::query("SELECT 1").execute(c))?;
        Ok(())
    }

    async fn hashid_salt(&self, fresh: &str, legacy: &str) -> StoreResult<String> {
        // The choice and the insert are one statement, and a salt already stored stays.
        let mut insert = Sql::new(
            "INSERT INTO service_settings (key, value) SELECT 'hashid_salt', CASE WHEN \
             EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM conversations) THEN ",
        );
        insert
            .push_bind(legacy)
            .push(" ELSE ")
            .push_bind(fresh)
            .push(" END ON CONFLICT (key) DO NOTHING");
        let (sql, values) = insert.into_parts();
        run!(self.writer(), |c| sqlx::query_with(&sql, values).execute(c))?;
        let read = Sql::<DB>::new("SELECT value FROM service_settings WHERE key = 'hashid_salt'");
        let (salt,): (String,) = run!(self.reader(), read, fetch_one)?;
        Ok(salt)
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
        // The email is left out when another account already has it.
        let insert = |email| {
            let mut query =
                Sql::new("INSERT INTO users (username, email, created_at, updated_at) VALUES (");
            query
                .push_bind(username)
                .push(", (SELECT ")
                .push_bind(email)
                .push(" WHERE NOT EXISTS (SELECT 1 FROM users WHERE ")
                .push(DB::EMAIL_KEY)
                .push(" = lower(")
                .push_bind(email)
                .push("))), ")
                .push_bind(now)
                .push_bind_next(now)
                .push(format!(
                    ") ON CONFLICT (username) DO NOTHING RETURNING {USER_COLUMNS}"
                ));
            query.into_parts()
        };
        // Both are built out here: their text must outlive the values' lifetime that the
        // closure fixes.
        let (sql, values) = insert(email);
        let (retry_sql, retry_values) = insert(None);
        // Provisioning must not fail on an email that is taken, even by a concurrent insert
        // that the NOT EXISTS could not see yet: then the user is created without it.
        let created: Option<UserRow> = run!(self.writer(), |c| async {
            let first = sqlx::query_as_with(&sql, values).fetch_optional(&mut *c);
            match first.await.map_err(conflict_or) {
                Err(StoreError::Conflict("email")) => {
                    let retry = sqlx::query_as_with(&retry_sql, retry_values);
                    retry.fetch_optional(&mut *c).await.map_err(conflict_or)
                }
                other => other,
            }
        })?;
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
        let mut query = Sql::new(
            "INSERT INTO users (username, email, full_name, created_at, updated_at) VALUES (",
        );
        query
            .push_bind(new.username.as_str())
            .push_bind_next(new.email.as_deref())
            .push_bind_next(new.full_name.as_deref())
            .push_bind_next(now)
            .push_bind_next(now)
            .push(format!(") RETURNING {USER_COLUMNS}"));
        let UserRow(user) = run!(self.writer(), query, fetch_one).map_err(conflict_or)?;
        Ok(user)
    }

    async fn user_by_id(&self, id: i64) -> StoreResult<Option<User>> {
        let mut query = Sql::new(format!("SELECT {USER_COLUMNS} FROM users WHERE id = "));
        query.push_bind(id);
        let row: Option<UserRow> = run!(self.reader(), query, fetch_optional)?;
        Ok(row.map(|r| r.0))
    }

    async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        let mut query = Sql::new(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = "
        ));
        query.push_bind(username);
        let row: Option<UserRow> = run!(self.reader(), query, fetch_optional)?;
        Ok(row.map(|r| r.0))
    }

    async fn list_users(&self, filter: &UserFilter) -> StoreResult<(Vec<User>, i64)> {
        run!(self.reader(), |c| page_with_total::<DB, _>(
            c,
            USER_COLUMNS,
            |query| query.push_user_filter(filter),
            " ORDER BY id",
            filter.page,
            |row| UserRow::from_row(row).map(|r| r.0),
        ))
    }

    async fn update_user(&self, id: i64, patch: &UserPatch) -> StoreResult<Option<User>> {
        let mut query = Sql::new("UPDATE users SET username = COALESCE(");
        query
            .push_bind(patch.username.as_deref())
            .push(", username), email = COALESCE(")
            .push_bind(patch.email.as_deref())
            .push(", email), full_name = COALESCE(")
            .push_bind(patch.full_name.as_deref())
            .push(", full_name), is_active = COALESCE(")
            .push_bind(patch.is_active)
            .push(", is_active), updated_at = ")
            .push_bind(to_micros(Utc::now()))
            .push(" WHERE id = ")
            .push_bind(id)
            .push(format!(" RETURNING {USER_COLUMNS}"));
        let row: Option<UserRow> =
            run!(self.writer(), query, fetch_optional).map_err(conflict_or)?;
        Ok(row.map(|r| r.0))
    }

    async fn delete_user(&self, id: i64) -> StoreResult<bool> {
        let mut query = Sql::new("DELETE FROM users WHERE id = ");
        query.push_bind(id).push(" RETURNING id");
        let deleted: Option<(i64,)> = run!(self.writer(), query, fetch_optional)?;
        Ok(deleted.is_some())
    }

    async fn create_conversation(
        &self,
        owner: Option<i64>,
        new: &NewConversation,
    ) -> StoreResult<Conversation> {
        let query = Sql::insert_conversation(owner, new, to_micros(Utc::now()));
        let ConversationRow(conversation) = run!(self.writer(), query, fetch_one)?;
        Ok(conversation)
    }

    async fn create_conversation_with_message(
        &self,
        owner: Option<i64>,
        new: &NewConversation,
        first: &NewMessage,
    ) -> StoreResult<(Conversation, Message)> {
        // One time for both, so the message's trigger leaves the conversation as inserted.
        let now = to_micros(Utc::now());
        let (sql, values) = Sql::insert_conversation(owner, new, now).into_parts();
        all_or_nothing!(self, |connection| {
            let ConversationRow(mut conversation) = sqlx::query_as_with(&sql, values)
                .fetch_one(&mut *connection)
                .await?;
            let mut message = Sql::new(format!("{MESSAGE_INSERT} VALUES ("));
            message
                .push_bind(conversation.id)
                .push_bind_next(None::<i64>);
            message.push_message_values(first, now);
            message.push(format!(") RETURNING {MESSAGE_COLUMNS}"));
            let (message_sql, message_values) = message.into_parts();
            let MessageRow(message) = sqlx::query_as_with(&message_sql, message_values)
                .fetch_one(&mut *connection)
                .await?;
            // The message's trigger made it the active leaf.
            conversation.current_message_id = Some(message.id);
            (conversation, message)
        })
    }

    async fn conversation(&self, scope: Scope, id: i64) -> StoreResult<Option<Conversation>> {
        let mut query = Sql::new(format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = "
        ));
        query.push_bind(id);
        query.push_scope(scope);
        let row: Option<ConversationRow> = run!(self.reader(), query, fetch_optional)?;
        Ok(row.map(|r| r.0))
    }

    async fn list_conversations(
        &self,
        scope: Scope,
        filter: &ConversationFilter,
    ) -> StoreResult<(Vec<Conversation>, i64)> {
        run!(self.reader(), |c| DB::list_conversations(c, scope, filter))
    }

    async fn update_conversation(
        &self,
        scope: Scope,
        id: i64,
        patch: &ConversationPatch,
    ) -> StoreResult<Option<Conversation>> {
        let now = to_micros(Utc::now());
        let status = patch.status.map(ConversationStatus::as_str);
        let mut query = Sql::new("UPDATE conversations SET title = COALESCE(");
        query
            .push_bind(patch.title.as_deref())
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
        query.push_scope(scope);
        query.push(format!(" RETURNING {CONVERSATION_COLUMNS}"));
        let row: Option<ConversationRow> = run!(self.writer(), query, fetch_optional)?;
        Ok(row.map(|r| r.0))
    }

    async fn title_if_untitled(
        &self,
        scope: Scope,
        id: i64,
        title: &str,
    ) -> StoreResult<Option<Conversation>> {
        let now = to_micros(Utc::now());
        // The condition is in the statement itself, so a rename that lands while the title is
        // written wins whatever the order.
        let mut query = Sql::new("UPDATE conversations SET title = ");
        query
            .push_bind(title)
            .push(", updated_at = ")
            .push_bind(now)
            .push(" WHERE id = ")
            .push_bind(id)
            .push(" AND (title = ")
            .push_bind(DEFAULT_TITLE)
            .push(" OR title = '')");
        query.push_scope(scope);
        query.push(format!(" RETURNING {CONVERSATION_COLUMNS}"));
        let row: Option<ConversationRow> = run!(self.writer(), query, fetch_optional)?;
        Ok(row.map(|r| r.0))
    }

    async fn delete_conversation(&self, scope: Scope, id: i64) -> StoreResult<bool> {
        let mut query = Sql::new("DELETE FROM conversations WHERE id = ");
        query.push_bind(id);
        query.push_scope(scope);
        query.push(" RETURNING id");
        let deleted: Option<(i64,)> = run!(self.writer(), query, fetch_optional)?;
        Ok(deleted.is_some())
    }

    async fn add_message(
        &self,
        scope: Scope,
        conversation_id: i64,
        new: &NewMessage,
    ) -> StoreResult<Option<Message>> {
        let query = Sql::message_insert(scope, conversation_id, Parent::Leaf, new, false);
        let row: Option<MessageRow> = run!(self.writer(), query, fetch_optional)?;
        Ok(row.map(|r| r.0))
    }

    async fn begin_reply(
        &self,
        scope: Scope,
        conversation_id: i64,
        parent: Option<i64>,
        user_message: Option<&NewMessage>,
        generation: &str,
    ) -> StoreResult<Option<Message>> {
        // The message the reply answers: the user's, stored now, or the parent itself.
        let answered = match user_message {
            Some(new) => Sql::message_insert(scope, conversation_id, Parent::Of(parent), new, true),
            None => {
                let Some(parent) = parent else {
                    return Ok(None);
                };
                let mut query = Sql::new(format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = "
                ));
                query
                    .push_bind(parent)
                    .push(" AND conversation_id = (SELECT id FROM conversations WHERE id = ");
                query.push_bind(conversation_id);
                query.push_scope(scope);
                query
                    .push(" AND status <> ")
                    .push_bind(ConversationStatus::Ended.as_str())
                    .push(")");
                query
            }
        };
        let (sql, values) = answered.into_parts();
        all_or_nothing!(self, |connection| {
            let row: Option<MessageRow> = sqlx::query_as_with(&sql, values)
                .fetch_optional(&mut *connection)
                .await?;
            if let Some(MessageRow(message)) = &row {
                let mut pending = Sql::<DB>::new(
                    "INSERT INTO pending_replies (generation, conversation_id, \
                     user_message_id, started_at) VALUES (",
                );
                pending
                    .push_bind(generation)
                    .push_bind_next(conversation_id)
                    .push_bind_next(message.id)
                    .push_bind_next(to_micros(Utc::now()))
                    .push(")");
                let (pending_sql, pending_values) = pending.into_parts();
                sqlx::query_with(&pending_sql, pending_values)
                    .execute(&mut *connection)
                    .await?;
            }
            row.map(|r| r.0)
        })
    }

    async fn finish_reply(
        &self,
        scope: Scope,
        conversation_id: i64,
        generation: &str,
        reply: &NewMessage,
    ) -> StoreResult<Option<Message>> {
        let answered = Parent::Answered(generation);
        let (sql, values) =
            Sql::message_insert(scope, conversation_id, answered, reply, false).into_parts();
        let (forget_sql, forget_values) = Sql::<DB>::forget_pending(generation).into_parts();
        all_or_nothing!(self, |connection| {
            // Whoever stores the reply while its pending record is there (read locked)
            // removes the record: the instance that generated it, or one that found that
            // instance stopped, never both.
            let stored: Option<MessageRow> = sqlx::query_as_with(&sql, values)
                .fetch_optional(&mut *connection)
                .await?;
            if stored.is_some() {
                sqlx::query_with(&forget_sql, forget_values)
                    .execute(&mut *connection)
                    .await?;
            }
            stored.map(|r| r.0)
        })
    }

    async fn forget_reply(&self, generation: &str) -> StoreResult<()> {
        let (sql, values) = Sql::<DB>::forget_pending(generation).into_parts();
        run!(self.writer(), |c| sqlx::query_with(&sql, values).execute(c))?;
        Ok(())
    }

    async fn pending_replies(
        &self,
        started_before: chrono::DateTime<Utc>,
        after: Option<&PendingCursor>,
        limit: i64,
    ) -> StoreResult<Vec<PendingReply>> {
        let columns: Vec<String> = MESSAGE_COLUMNS
            .split(',')
            .map(|column| format!("m.{}", column.trim()))
            .collect();
        let mut query = Sql::new(format!(
            "SELECT {}, p.generation AS pending_generation, p.started_at AS \
             pending_started_at, c.user_id AS pending_owner FROM pending_replies p \
             JOIN messages m ON m.id = p.user_message_id \
             JOIN conversations c ON c.id = p.conversation_id WHERE p.started_at < ",
            columns.join(", ")
        ));
        query.push_bind(to_micros(started_before));
        if let Some(after) = after {
            query
                .push(" AND (p.started_at > ")
                .push_bind(after.started_at)
                .push(" OR (p.started_at = ")
                .push_bind(after.started_at)
                .push(" AND p.generation > ")
                .push_bind(after.generation.as_str())
                .push("))");
        }
        query
            .push(" ORDER BY p.started_at, p.generation LIMIT ")
            .push_bind(limit);
        let rows: Vec<PendingReplyRow> = run!(self.reader(), query, fetch_all)?;
        Ok(rows.into_iter().map(|r| r.0).collect())
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
        let page = run!(self.reader(), |c| page_with_total::<DB, _>(
            c,
            MESSAGE_COLUMNS,
            |query| {
                query.push_message_filter(conversation_id, filter.role);
                query.push(" AND id IN (");
                query.push_ancestry(conversation_id, PathEnd::Active, i64::MAX);
                query.push("SELECT id FROM ancestry)");
            },
            " ORDER BY id",
            filter.page,
            |row| MessageRow::from_row(row).map(|r| r.0),
        ))?;
        Ok(Some(page))
    }

    async fn list_message_tree(
        &self,
        scope: Scope,
        conversation_id: i64,
        filter: &MessageFilter,
    ) -> StoreResult<Option<(Vec<Message>, i64)>> {
        if self.conversation(scope, conversation_id).await?.is_none() {
            return Ok(None);
        }
        let page = run!(self.reader(), |c| page_with_total::<DB, _>(
            c,
            MESSAGE_COLUMNS,
            |query| query.push_message_filter(conversation_id, filter.role),
            " ORDER BY id",
            filter.page,
            |row| MessageRow::from_row(row).map(|r| r.0),
        ))?;
        Ok(Some(page))
    }

    async fn children(
        &self,
        scope: Scope,
        conversation_id: i64,
        parents: &[Option<i64>],
    ) -> StoreResult<Vec<(i64, Option<i64>)>> {
        let keys: Vec<i64> = parents.iter().flatten().copied().collect();
        let roots = parents.iter().any(Option::is_none);
        if keys.is_empty() && !roots {
            return Ok(Vec::new());
        }
        let mut query = Sql::new("SELECT id, parent_id FROM messages WHERE conversation_id = ");
        query.push_scoped_conversation(conversation_id, scope);
        query.push(" AND (");
        if roots {
            query.push("parent_id IS NULL");
        }
        if !keys.is_empty() {
            query.push(if roots {
                " OR parent_id IN ("
            } else {
                "parent_id IN ("
            });
            for (n, key) in keys.into_iter().enumerate() {
                if n > 0 {
                    query.push(", ");
                }
                query.push_bind(key);
            }
            query.push(")");
        }
        query.push(") ORDER BY id");
        run!(self.reader(), query, fetch_all)
    }

    async fn find_message(
        &self,
        scope: Scope,
        conversation_id: i64,
        which: MessageRef,
    ) -> StoreResult<Option<Message>> {
        let mut query = Sql::new("");
        if which == MessageRef::LastReply {
            query.push_ancestry(conversation_id, PathEnd::Active, i64::MAX);
        }
        query.push(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = "
        ));
        query.push_scoped_conversation(conversation_id, scope);
        match which {
            MessageRef::Id(id) => {
                query.push(" AND id = ").push_bind(id);
            }
            MessageRef::LastReply => {
                query
                    .push(" AND role = ")
                    .push_bind(MessageRole::Assistant.as_str())
                    .push(" AND id IN (SELECT id FROM ancestry) ORDER BY id DESC LIMIT 1");
            }
        }
        let row: Option<MessageRow> = run!(self.reader(), query, fetch_optional)?;
        Ok(row.map(|r| r.0))
    }

    async fn turn_context_at(
        &self,
        scope: Scope,
        conversation_id: i64,
        end: PathEnd,
        history_limit: i64,
    ) -> StoreResult<Option<TurnContext>> {
        // One query, so a turn waits for one read before it asks the LLM.
        let mut query = Sql::new(format!(
            "SELECT {CONVERSATION_COLUMNS}, (SELECT {} FROM (",
            DB::HISTORY_JSON
        ));
        query.push_ancestry(conversation_id, end, history_limit);
        query.push(
            "SELECT m.id, m.role, m.content FROM ancestry JOIN messages m ON m.id = ancestry.id\
             ) AS recent) AS history, EXISTS (SELECT 1 FROM mcp_servers \
             WHERE mcp_servers.user_id = conversations.user_id AND is_active = ",
        );
        query.push_bind(true);
        query.push(") AS has_tools FROM conversations WHERE id = ");
        query.push_bind(conversation_id);
        query.push_scope(scope);
        let row: Option<TurnContextRow> = run!(self.reader(), query, fetch_optional)?;
        Ok(row.map(|TurnContextRow(mut context)| {
            context.parent = match end {
                PathEnd::Active => context.conversation.current_message_id,
                PathEnd::Message(id) => id,
            };
            context
        }))
    }

    async fn switch_branch(
        &self,
        scope: Scope,
        conversation_id: i64,
        message_id: i64,
    ) -> StoreResult<Option<Conversation>> {
        let mut query = Sql::new("");
        query.push_leaf_below(conversation_id, message_id);
        query.push_scope(scope);
        query.push(format!(
            " AND EXISTS (SELECT 1 FROM below) RETURNING {CONVERSATION_COLUMNS}"
        ));
        let row: Option<ConversationRow> = run!(self.writer(), query, fetch_optional)?;
        Ok(row.map(|r| r.0))
    }

    async fn replies_below(
        &self,
        scope: Scope,
        conversation_id: i64,
        message_id: i64,
    ) -> StoreResult<Vec<String>> {
        let mut query = Sql::new("");
        query.push_below(conversation_id, message_id);
        query.push("SELECT generation FROM pending_replies WHERE conversation_id = ");
        query.push_scoped_conversation(conversation_id, scope);
        query.push(" AND user_message_id IN (SELECT id FROM below) ORDER BY generation");
        let rows: Vec<(String,)> = run!(self.reader(), query, fetch_all)?;
        Ok(rows.into_iter().map(|(generation,)| generation).collect())
    }

    async fn delete_branch(
        &self,
        scope: Scope,
        conversation_id: i64,
        message_id: i64,
    ) -> StoreResult<Option<DeletedBranch>> {
        let mut target = Sql::<DB>::new(
            "SELECT m.parent_id, c.current_message_id FROM messages m \
             JOIN conversations c ON c.id = m.conversation_id WHERE m.id = ",
        );
        target
            .push_bind(message_id)
            .push(" AND c.id = ")
            .push_bind(conversation_id);
        target.push_scope(scope);
        target.push(DB::FOR_UPDATE);
        let (target_sql, target_values) = target.into_parts();
        let mut delete = Sql::<DB>::new("");
        delete.push_below(conversation_id, message_id);
        delete.push("DELETE FROM messages WHERE id IN (SELECT id FROM below) RETURNING id");
        let (delete_sql, delete_values) = delete.into_parts();
        all_or_nothing!(self, |connection| {
            // Read (and locked) first: the parent is where the active leaf may go.
            let found: Option<(Option<i64>, Option<i64>)> =
                sqlx::query_as_with(&target_sql, target_values)
                    .fetch_optional(&mut *connection)
                    .await?;
            match found {
                None => None,
                Some((parent, current)) => {
                    let deleted: Vec<(i64,)> = sqlx::query_as_with(&delete_sql, delete_values)
                        .fetch_all(&mut *connection)
                        .await?;
                    let leaf_moved = current.is_some_and(|c| deleted.iter().any(|(id,)| *id == c));
                    let mut after = Sql::<DB>::new("");
                    match (leaf_moved, parent) {
                        (false, _) => {
                            after.push(format!(
                                "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = "
                            ));
                            after.push_bind(conversation_id);
                        }
                        (true, Some(parent)) => {
                            after.push_leaf_below(conversation_id, parent);
                            after.push(format!(" RETURNING {CONVERSATION_COLUMNS}"));
                        }
                        (true, None) => {
                            after.push(
                                "UPDATE conversations SET current_message_id = \
                                 (SELECT MAX(id) FROM messages WHERE conversation_id = ",
                            );
                            after.push_bind(conversation_id).push(") WHERE id = ");
                            after.push_bind(conversation_id);
                            after.push(format!(" RETURNING {CONVERSATION_COLUMNS}"));
                        }
                    }
                    let (after_sql, after_values) = after.into_parts();
                    let ConversationRow(conversation) =
                        sqlx::query_as_with(&after_sql, after_values)
                            .fetch_one(&mut *connection)
                            .await?;
                    Some(DeletedBranch {
                        deleted: deleted.len() as u64,
                        conversation,
                        leaf_moved,
                    })
                }
            }
        })
    }

    async fn conversation_stats(
        &self,
        scope: Scope,
        conversation_id: i64,
    ) -> StoreResult<Option<ConversationStats>> {
        let mut query = Sql::new(format!(
            "SELECT COUNT(m.id) AS total_messages, \
             COUNT(m.id) FILTER (WHERE m.role = 'user') AS user_messages, \
             COUNT(m.id) FILTER (WHERE m.role = 'assistant') AS assistant_messages, \
             COUNT(m.id) FILTER (WHERE m.role = 'system') AS system_messages, \
             {} AS total_tokens, AVG(m.response_time) AS average_response_time, \
             MIN(m.timestamp) AS first_message_at, MAX(m.timestamp) AS last_message_at \
             FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id \
             WHERE c.id = ",
            DB::TOTAL_TOKENS
        ));
        query.push_bind(conversation_id);
        query.push_scope(scope);
        query.push(" GROUP BY c.id");
        let row: Option<StatsRow> = run!(self.reader(), query, fetch_optional)?;
        Ok(row.map(|r| r.0))
    }

    async fn search(
        &self,
        query: &SearchQuery,
        filter: &SearchFilter,
    ) -> StoreResult<(Vec<SearchRow>, i64)> {
        self.index_for_search().await?;
        run!(self.reader(), |c| super::search::search::<DB>(
            c, query, filter
        ))
    }

    async fn create_mcp_server(&self, owner: i64, new: &NewMcpServer) -> StoreResult<McpServer> {
        let now = to_micros(Utc::now());
        let mut query = Sql::new(
            "INSERT INTO mcp_servers (user_id, name, description, server_url, is_active, \
             config, api_key, created_at, updated_at) VALUES (",
        );
        query
            .push_bind(owner)
            .push_bind_next(new.name.as_str())
            .push_bind_next(new.description.as_deref())
            .push_bind_next(new.server_url.as_str())
            .push_bind_next(new.is_active)
            .push_bind_next(new.config.as_ref().map(Json))
            .push_bind_next(new.api_key.as_ref().map(Secret::expose))
            .push_bind_next(now)
            .push_bind_next(now)
            .push(format!(") RETURNING {MCP_SERVER_COLUMNS}"));
        let McpServerRow(server) = run!(self.writer(), query, fetch_one)?;
        Ok(server)
    }

    async fn mcp_server(&self, scope: Scope, id: i64) -> StoreResult<Option<McpServer>> {
        let mut query = Sql::new(format!(
            "SELECT {MCP_SERVER_COLUMNS} FROM mcp_servers WHERE id = "
        ));
        query.push_bind(id);
        query.push_scope(scope);
        let row: Option<McpServerRow> = run!(self.reader(), query, fetch_optional)?;
        Ok(row.map(|r| r.0))
    }

    async fn list_mcp_servers(
        &self,
        scope: Scope,
        filter: &McpServerFilter,
    ) -> StoreResult<(Vec<McpServer>, i64)> {
        run!(self.reader(), |c| page_with_total::<DB, _>(
            c,
            MCP_SERVER_COLUMNS,
            |query| query.push_mcp_server_filter(scope, filter.active_only),
            " ORDER BY id",
            filter.page,
            |row| McpServerRow::from_row(row).map(|r| r.0),
        ))
    }

    async fn update_mcp_server(
        &self,
        scope: Scope,
        id: i64,
        patch: &McpServerPatch,
    ) -> StoreResult<Option<McpServer>> {
        // Only the fields the patch names are set, so a value can also be set to NULL.
        let mut query = Sql::new("UPDATE mcp_servers SET updated_at = ");
        query.push_bind(to_micros(Utc::now()));
        if let Some(name) = &patch.name {
            query.push(", name = ").push_bind(name.as_str());
        }
        if let Some(description) = &patch.description {
            query
                .push(", description = ")
                .push_bind(description.as_deref());
        }
        if let Some(server_url) = &patch.server_url {
            query.push(", server_url = ").push_bind(server_url.as_str());
        }
        if let Some(is_active) = patch.is_active {
            query.push(", is_active = ").push_bind(is_active);
        }
        if let Some(config) = &patch.config {
            query
                .push(", config = ")
                .push_bind(config.as_ref().map(Json));
        }
        if let Some(api_key) = &patch.api_key {
            query
                .push(", api_key = ")
                .push_bind(api_key.as_ref().map(Secret::expose));
        }
        query.push(" WHERE id = ").push_bind(id);
        query.push_scope(scope);
        query.push(format!(" RETURNING {MCP_SERVER_COLUMNS}"));
        let row: Option<McpServerRow> = run!(self.writer(), query, fetch_optional)?;
        Ok(row.map(|r| r.0))
    }

    async fn delete_mcp_server(&self, scope: Scope, id: i64) -> StoreResult<bool> {
        let mut query = Sql::new("DELETE FROM mcp_servers WHERE id = ");
        query.push_bind(id);
        query.push_scope(scope);
        query.push(" RETURNING id");
        let deleted: Option<(i64,)> = run!(self.writer(), query, fetch_optional)?;
        Ok(deleted.is_some())
    }

    async fn active_mcp_servers_with_keys(&self, owner: i64) -> StoreResult<Vec<McpServerWithKey>> {
        let mut query = Sql::new(format!("SELECT {MCP_SERVER_COLUMNS}, api_key"));
        query.push_mcp_server_filter(Scope::Owner(owner), true);
        query.push(" ORDER BY id");
        let rows: Vec<McpServerWithKeyRow> = run!(self.reader(), query, fetch_all)?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn create_api_key(
        &self,
        owner: i64,
        new: &NewApiKey,
        max_keys: i64,
    ) -> StoreResult<Option<ApiKey>> {
        let roles = serde_json::to_string(&new.roles).map_err(|e| sqlx::Error::Encode(e.into()))?;
        // The count and the insert are one statement; two creations at once may both pass
        // it, which only lets a user go one key over.
        let mut query = Sql::new(
            "INSERT INTO api_keys (user_id, name, prefix, key_hash, roles, created_at, \
             expires_at) SELECT ",
        );
        query
            .push_bind(owner)
            .push_bind_next(new.name.as_str())
            .push_bind_next(new.prefix.as_str())
            .push_bind_next(new.key_hash.as_str())
            .push_bind_next(roles)
            .push_bind_next(to_micros(Utc::now()))
            .push_bind_next(new.expires_at.map(to_micros))
            .push(" WHERE (SELECT COUNT(*) FROM api_keys WHERE user_id = ")
            .push_bind(owner)
            .push(") < ")
            .push_bind(max_keys)
            .push(format!(" RETURNING {API_KEY_COLUMNS}"));
        let row: Option<ApiKeyRow> = run!(self.writer(), query, fetch_optional)?;
        Ok(row.map(|r| r.0))
    }

    async fn list_api_keys(&self, owner: i64, page: Page) -> StoreResult<(Vec<ApiKey>, i64)> {
        run!(self.reader(), |c| page_with_total::<DB, _>(
            c,
            API_KEY_COLUMNS,
            |query| {
                query
                    .push(" FROM api_keys WHERE user_id = ")
                    .push_bind(owner);
            },
            " ORDER BY id",
            page,
            |row| ApiKeyRow::from_row(row).map(|r| r.0),
        ))
    }

    async fn delete_api_key(&self, owner: i64, id: i64) -> StoreResult<bool> {
        let mut query = Sql::new("DELETE FROM api_keys WHERE id = ");
        query
            .push_bind(id)
            .push(" AND user_id = ")
            .push_bind(owner)
            .push(" RETURNING id");
        let deleted: Option<(i64,)> = run!(self.writer(), query, fetch_optional)?;
        Ok(deleted.is_some())
    }

    async fn api_key_by_hash(
        &self,
        key_hash: &str,
        now: chrono::DateTime<Utc>,
    ) -> StoreResult<Option<ApiKeyOwner>> {
        let mut query = Sql::new(format!(
            "SELECT {API_KEY_OWNER_COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.key_hash = "
        ));
        query
            .push_bind(key_hash)
            .push(" AND (k.expires_at IS NULL OR k.expires_at > ")
            .push_bind(to_micros(now))
            .push(")");
        let row: Option<ApiKeyOwnerRow> = run!(self.reader(), query, fetch_optional)?;
        Ok(row.map(|r| r.0))
    }

    async fn touch_api_key(
        &self,
        id: i64,
        now: chrono::DateTime<Utc>,
        since: chrono::DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut query = Sql::new("UPDATE api_keys SET last_used_at = ");
        query
            .push_bind(to_micros(now))
            .push(" WHERE id = ")
            .push_bind(id)
            .push(" AND (last_used_at IS NULL OR last_used_at < ")
            .push_bind(to_micros(since))
            .push(")");
        let (sql, values) = query.into_parts();
        run!(self.writer(), |c| sqlx::query_with(&sql, values).execute(c))?;
        Ok(())
    }

    async fn record_usage(&self, calls: &[NewUsage]) -> StoreResult<()> {
        if calls.is_empty() {
            return Ok(());
        }
        // One statement, so the calls of a turn are recorded all or none.
        let mut query = Sql::new(
            "INSERT INTO usage_records (user_id, conversation_id, model, kind, prompt_tokens, \
             completion_tokens, estimated, created_at) VALUES ",
        );
        for (i, call) in calls.iter().enumerate() {
            query.push(if i == 0 { "(" } else { ", (" });
            query
                .push_bind(call.user_id)
                .push_bind_next(call.conversation_id)
                .push_bind_next(call.model.as_str())
                .push_bind_next(call.kind)
                .push_bind_next(call.prompt_tokens)
                .push_bind_next(call.completion_tokens)
                .push_bind_next(call.estimated)
                .push_bind_next(to_micros(call.created_at))
                .push(")");
        }
        let (sql, values) = query.into_parts();
        run!(self.writer(), |c| sqlx::query_with(&sql, values).execute(c))?;
        Ok(())
    }

    async fn tokens_since(&self, user: i64, since: chrono::DateTime<Utc>) -> StoreResult<i64> {
        let mut query = Sql::new(
            "SELECT CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) \
             FROM usage_records WHERE user_id = ",
        );
        query
            .push_bind(user)
            .push(" AND created_at >= ")
            .push_bind(to_micros(since));
        let (tokens,): (i64,) = run!(self.reader(), query, fetch_one)?;
        Ok(tokens)
    }

    async fn usage_report(&self, query: &UsageQuery) -> StoreResult<Vec<UsageGroup>> {
        let (number, text) = match query.group_by {
            UsageGrouping::None => ("CAST(NULL AS BIGINT)", "CAST(NULL AS TEXT)"),
            UsageGrouping::Day => ("created_at / 86400000000", "CAST(NULL AS TEXT)"),
            UsageGrouping::Model => ("CAST(NULL AS BIGINT)", "model"),
            UsageGrouping::Conversation => ("conversation_id", "CAST(NULL AS TEXT)"),
            UsageGrouping::User => ("user_id", "CAST(NULL AS TEXT)"),
        };
        let mut sql = Sql::new(format!(
            "SELECT {number} AS number, {text} AS text, \
             CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
             CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens, \
             COUNT(*) AS requests, CAST(COALESCE(SUM(CASE WHEN estimated THEN \
             prompt_tokens + completion_tokens ELSE 0 END), 0) AS BIGINT) AS estimated_tokens \
             FROM usage_records WHERE created_at >= "
        ));
        sql.push_bind(to_micros(query.from))
            .push(" AND created_at < ")
            .push_bind(to_micros(query.to));
        if let Some(user) = query.user_id {
            sql.push(" AND user_id = ").push_bind(user);
        }
        if query.group_by != UsageGrouping::None {
            sql.push(" GROUP BY 1, 2 ORDER BY 1, 2");
        }
        let rows: Vec<UsageGroupRow> = run!(self.reader(), sql, fetch_all)?;
        // Without groups the one row of an empty selection counts nothing.
        Ok(rows
            .into_iter()
            .map(|r| r.0)
            .filter(|g| g.requests > 0)
            .collect())
    }

    async fn user_limits(&self, user: i64) -> StoreResult<UserLimits> {
        let mut query = Sql::new(
            "SELECT tokens_per_day, tokens_per_month, messages_per_minute FROM user_limits \
             WHERE user_id = ",
        );
        query.push_bind(user);
        let row: Option<(Option<i64>, Option<i64>, Option<i64>)> =
            run!(self.reader(), query, fetch_optional)?;
        Ok(row.map(limits_of).unwrap_or_default())
    }

    async fn set_user_limits(&self, user: i64, limits: &UserLimits) -> StoreResult<UserLimits> {
        let mut query = Sql::new(
            "INSERT INTO user_limits (user_id, tokens_per_day, tokens_per_month, \
             messages_per_minute, updated_at) VALUES (",
        );
        query
            .push_bind(user)
            .push_bind_next(limits.tokens_per_day)
            .push_bind_next(limits.tokens_per_month)
            .push_bind_next(limits.messages_per_minute)
            .push_bind_next(to_micros(Utc::now()))
            .push(
                ") ON CONFLICT (user_id) DO UPDATE SET tokens_per_day = excluded.tokens_per_day, \
                 tokens_per_month = excluded.tokens_per_month, \
                 messages_per_minute = excluded.messages_per_minute, \
                 updated_at = excluded.updated_at \
                 RETURNING tokens_per_day, tokens_per_month, messages_per_minute",
            );
        let row: (Option<i64>, Option<i64>, Option<i64>) = run!(self.writer(), query, fetch_one)?;
        Ok(limits_of(row))
    }
}

/// Limits from their columns.
fn limits_of(
    (tokens_per_day, tokens_per_month, messages_per_minute): (
        Option<i64>,
        Option<i64>,
        Option<i64>,
    ),
) -> UserLimits {
    UserLimits {
        tokens_per_day,
        tokens_per_month,
        messages_per_minute,
    }
}
