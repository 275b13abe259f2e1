//! The data layer: the `Store` trait that handlers call, its models and errors. The queries
//! are written once (`queries`); a file per database holds its connections and dialect.

pub mod health;
pub mod models;
pub mod postgres;
mod queries;
mod rows;
mod search;
pub mod sqlite;
mod usage;

use async_trait::async_trait;

pub use models::*;
pub use usage::*;

/// Errors of the data layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique value is taken; carries the field name.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// Anything the database said.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// Everything the service stores. Every conversation, message and MCP server query takes a
/// [`Scope`] (or the owner) and filters on it in SQL, so an access check cannot be forgotten by
/// a caller.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A round trip to the database.
    async fn ping(&self) -> StoreResult<()>;

    /// The salt of the public IDs kept in the database. The first call stores one: `fresh`
    /// in a database without users or conversations, `legacy` in one that has some (their
    /// public IDs were handed out with it). When several instances start at once on one
    /// database, they all read the salt that was stored first.
    async fn hashid_salt(&self, fresh: &str, legacy: &str) -> StoreResult<String>;

    /// The user with this username, created from the token on first sight.
    /// Returns whether the row was created now.
    async fn provision_user(
        &self,
        username: &str,
        email: Option<&str>,
    ) -> StoreResult<(User, bool)>;
    /// Creates a user; `Conflict` on a taken username or email.
    async fn create_user(&self, new: &NewUser) -> StoreResult<User>;
    /// A user by key.
    async fn user_by_id(&self, id: i64) -> StoreResult<Option<User>>;
    /// A user by username.
    async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>>;
    /// A page of users and the total matching the filter.
    async fn list_users(&self, filter: &UserFilter) -> StoreResult<(Vec<User>, i64)>;
    /// Applies a patch; `None` when the user does not exist.
    async fn update_user(&self, id: i64, patch: &UserPatch) -> StoreResult<Option<User>>;
    /// Deletes a user with all their conversations and messages.
    async fn delete_user(&self, id: i64) -> StoreResult<bool>;

    /// Creates a conversation owned by `owner` (`None`: anonymous).
    async fn create_conversation(
        &self,
        owner: Option<i64>,
        new: &NewConversation,
    ) -> StoreResult<Conversation>;
    /// Creates a conversation owned by `owner` (`None`: anonymous) with its first message, both
    /// or neither.
    async fn create_conversation_with_message(
        &self,
        owner: Option<i64>,
        new: &NewConversation,
        first: &NewMessage,
    ) -> StoreResult<(Conversation, Message)>;
    /// A conversation within the scope.
    async fn conversation(&self, scope: Scope, id: i64) -> StoreResult<Option<Conversation>>;
    /// A page of conversations within the scope, most recently active first, and the total.
    async fn list_conversations(
        &self,
        scope: Scope,
        filter: &ConversationFilter,
    ) -> StoreResult<(Vec<Conversation>, i64)>;
    /// Applies a patch within the scope.
    async fn update_conversation(
        &self,
        scope: Scope,
        id: i64,
        patch: &ConversationPatch,
    ) -> StoreResult<Option<Conversation>>;
    /// Gives a conversation within the scope the title `title` if it is still called
    /// [`DEFAULT_TITLE`] or nothing: a title set before (or in the meantime) is kept. `None`
    /// when the conversation is out of scope or has a title of its own.
    async fn title_if_untitled(
        &self,
        scope: Scope,
        id: i64,
        title: &str,
    ) -> StoreResult<Option<Conversation>>;
    /// Deletes a conversation and its messages within the scope.
    async fn delete_conversation(&self, scope: Scope, id: i64) -> StoreResult<bool>;
    /// Stores a message in a conversation within the scope; `None` when out of scope.
    async fn add_message(
        &self,
        scope: Scope,
        conversation_id: i64,
        new: &NewMessage,
    ) -> StoreResult<Option<Message>>;

    /// Begins the reply `generation` of a chat turn in a conversation within the scope that
    /// has not ended: stores `user_message` (if any) as a child of `parent`, with the record
    /// of the reply that answers it (both or neither), so the reply's record can be finished
    /// even if the instance generating it stops. Without a user message (a regenerated reply)
    /// the reply answers `parent` itself. Answers the message the reply answers; `None` when
    /// the conversation is out of scope or ended, or `parent` is not one of its messages.
    async fn begin_reply(
        &self,
        scope: Scope,
        conversation_id: i64,
        parent: Option<i64>,
        user_message: Option<&NewMessage>,
        generation: &str,
    ) -> StoreResult<Option<Message>>;

    /// Stores the reply `generation`, as a child of the message it answers, and forgets its
    /// pending record, both or neither. `None` when the conversation is out of scope or gone,
    /// or when the record was finished already (by another instance that found this one
    /// stopped) or deleted with its branch: then nothing is stored.
    async fn finish_reply(
        &self,
        scope: Scope,
        conversation_id: i64,
        generation: &str,
        reply: &NewMessage,
    ) -> StoreResult<Option<Message>>;
    /// Forgets the pending record of a reply that ended with nothing to store.
    async fn forget_reply(&self, generation: &str) -> StoreResult<()>;
    /// Up to `limit` pending replies begun before `started_before`, after `after` in the
    /// order of their start then generation id.
    async fn pending_replies(
        &self,
        started_before: chrono::DateTime<chrono::Utc>,
        after: Option<&PendingCursor>,
        limit: i64,
    ) -> StoreResult<Vec<PendingReply>>;
    /// A page of the messages of a conversation's active path (root to active leaf), oldest
    /// first, and the total; `None` when the conversation is out of scope.
    async fn list_messages(
        &self,
        scope: Scope,
        conversation_id: i64,
        filter: &MessageFilter,
    ) -> StoreResult<Option<(Vec<Message>, i64)>>;
    /// A page of every message of a conversation, every branch, oldest first, and the total;
    /// `None` when the conversation is out of scope.
    async fn list_message_tree(
        &self,
        scope: Scope,
        conversation_id: i64,
        filter: &MessageFilter,
    ) -> StoreResult<Option<(Vec<Message>, i64)>>;
    /// The keys and parents of the messages of a conversation within the scope whose parent
    /// is one of `parents` (`None`: the roots), oldest first: the siblings of messages.
    async fn children(
        &self,
        scope: Scope,
        conversation_id: i64,
        parents: &[Option<i64>],
    ) -> StoreResult<Vec<(i64, Option<i64>)>>;
    /// A message of a conversation within the scope.
    async fn find_message(
        &self,
        scope: Scope,
        conversation_id: i64,
        which: MessageRef,
    ) -> StoreResult<Option<Message>>;
    /// A conversation within the scope with the keys, roles and texts of the newest
    /// `history_limit` messages of its path that ends at `end`, and whether its owner has
    /// tools: all a chat turn reads before it asks the LLM; `None` when the conversation is
    /// out of scope.
    async fn turn_context_at(
        &self,
        scope: Scope,
        conversation_id: i64,
        end: PathEnd,
        history_limit: i64,
    ) -> StoreResult<Option<TurnContext>>;
    /// [`turn_context_at`](Self::turn_context_at) the active leaf: a new message's turn.
    async fn turn_context(
        &self,
        scope: Scope,
        conversation_id: i64,
        history_limit: i64,
    ) -> StoreResult<Option<TurnContext>> {
        self.turn_context_at(scope, conversation_id, PathEnd::Active, history_limit)
            .await
    }
    /// Makes the newest message below `message_id` (itself when it has none) the active leaf
    /// of a conversation within the scope; `None` when either is unknown or out of scope.
    async fn switch_branch(
        &self,
        scope: Scope,
        conversation_id: i64,
        message_id: i64,
    ) -> StoreResult<Option<Conversation>>;
    /// The generation ids of the replies begun below `message_id` (it included) in a
    /// conversation within the scope whose records are still pending.
    async fn replies_below(
        &self,
        scope: Scope,
        conversation_id: i64,
        message_id: i64,
    ) -> StoreResult<Vec<String>>;
    /// Deletes a message and everything below it in a conversation within the scope; an
    /// active leaf among them moves to the newest message left below the message's parent
    /// (the parent itself when none is left; for a root, the newest message left). `None`
    /// when the message or conversation is unknown or out of scope.
    async fn delete_branch(
        &self,
        scope: Scope,
        conversation_id: i64,
        message_id: i64,
    ) -> StoreResult<Option<DeletedBranch>>;
    /// Aggregates over a conversation's messages; `None` when out of scope.
    async fn conversation_stats(
        &self,
        scope: Scope,
        conversation_id: i64,
    ) -> StoreResult<Option<ConversationStats>>;

    /// A page of the hits of a full-text search over the titles and messages of
    /// `filter.owner`'s conversations, best first (title hits before message hits), and
    /// their total.
    async fn search(
        &self,
        query: &crate::search::SearchQuery,
        filter: &SearchFilter,
    ) -> StoreResult<(Vec<SearchRow>, i64)>;

    /// Registers an MCP server owned by `owner`.
    async fn create_mcp_server(&self, owner: i64, new: &NewMcpServer) -> StoreResult<McpServer>;
    /// An MCP server within the scope.
    async fn mcp_server(&self, scope: Scope, id: i64) -> StoreResult<Option<McpServer>>;
    /// A page of the MCP servers within the scope, oldest first, and the total.
    async fn list_mcp_servers(
        &self,
        scope: Scope,
        filter: &McpServerFilter,
    ) -> StoreResult<(Vec<McpServer>, i64)>;
    /// Applies a patch within the scope; `None` when out of scope.
    async fn update_mcp_server(
        &self,
        scope: Scope,
        id: i64,
        patch: &McpServerPatch,
    ) -> StoreResult<Option<McpServer>>;
    /// Deletes an MCP server within the scope.
    async fn delete_mcp_server(&self, scope: Scope, id: i64) -> StoreResult<bool>;
    /// The active MCP servers of `owner`, oldest first, with the API keys to call them with.
    /// The only read of the keys: they go to the servers, never into an answer or a log.
    async fn active_mcp_servers_with_keys(&self, owner: i64) -> StoreResult<Vec<McpServerWithKey>>;

    /// Stores a new API key of `owner`, unless they have `max_keys` already: `None` then.
    async fn create_api_key(
        &self,
        owner: i64,
        new: &NewApiKey,
        max_keys: i64,
    ) -> StoreResult<Option<ApiKey>>;
    /// A page of the API keys of `owner`, oldest first, and the total.
    async fn list_api_keys(&self, owner: i64, page: Page) -> StoreResult<(Vec<ApiKey>, i64)>;
    /// Deletes (revokes) an API key of `owner`.
    async fn delete_api_key(&self, owner: i64, id: i64) -> StoreResult<bool>;
    /// The key whose SHA-256 is `key_hash`, with its owner, unless it has expired by `now`.
    async fn api_key_by_hash(
        &self,
        key_hash: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Option<ApiKeyOwner>>;
    /// Sets a key's last use to `now`, unless it was set after `since` already (so a key
    /// used all the time costs a write per interval, not per request).
    async fn touch_api_key(
        &self,
        id: i64,
        now: chrono::DateTime<chrono::Utc>,
        since: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()>;
    /// Records LLM calls in the usage ledger, all or none.
    async fn record_usage(&self, calls: &[NewUsage]) -> StoreResult<()>;
    /// The tokens (prompt and answer) of `user`'s calls made from `since` on.
    async fn tokens_since(
        &self,
        user: i64,
        since: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<i64>;
    /// The usage that `query` selects, in groups ordered by their key.
    async fn usage_report(&self, query: &UsageQuery) -> StoreResult<Vec<UsageGroup>>;
    /// The limits an admin set for `user` (all `None` when none).
    async fn user_limits(&self, user: i64) -> StoreResult<UserLimits>;
    /// Sets `user`'s limits (`None`: the role's default) and answers them.
    async fn set_user_limits(&self, user: i64, limits: &UserLimits) -> StoreResult<UserLimits>;
}
