//! Rows of the data layer, with integer keys; public IDs are added at the API edge.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::config::Secret;

/// Title of a conversation created without one; a conversation called so (or nothing) may be
/// given a title written by the LLM.
pub const DEFAULT_TITLE: &str = "New Conversation";

/// Which rows a query may touch, by their owner; every conversation, message and MCP server
/// query takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only rows of this user.
    Owner(i64),
    /// Only rows that belong to no user (anonymous WebSocket chats; never an MCP server).
    Anonymous,
    /// Every row (admins, and managers for reads of conversations).
    Anyone,
}

/// Offset pagination.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Rows to skip.
    pub skip: i64,
    /// Rows to return.
    pub limit: i64,
}

/// A user of the service.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// Key.
    pub id: i64,
    /// Unique username, the token's `sub`.
    pub username: String,
    /// Unique email, if known.
    pub email: Option<String>,
    /// Display name.
    pub full_name: Option<String>,
    /// Inactive users are refused.
    pub is_active: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Fields of a new user.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Username.
    pub username: String,
    /// Email.
    pub email: Option<String>,
    /// Display name.
    pub full_name: Option<String>,
}

/// Changes to a user; `None` keeps the value.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// New email.
    pub email: Option<String>,
    /// New username.
    pub username: Option<String>,
    /// New display name.
    pub full_name: Option<String>,
    /// New active flag.
    pub is_active: Option<bool>,
}

/// Filters of the user list.
#[derive(Debug, Clone)]
pub struct UserFilter {
    /// Substring of username, email or full name.
    pub search: Option<String>,
    /// Active flag.
    pub is_active: Option<bool>,
    /// Page.
    pub page: Page,
}

/// Lifecycle state of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConversationStatus {
    /// Accepts messages.
    Active,
    /// Ended; reconnecting makes it active again.
    Ended,
    /// Kept for reference.
    Archived,
}

impl ConversationStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Ended => "ended",
            Self::Archived => "archived",
        }
    }

    /// Parses a stored name.
    pub fn parse(value: &str) -> Option<Self> {
        [Self::Active, Self::Ended, Self::Archived]
            .into_iter()
            .find(|status| status.as_str() == value)
    }
}

/// A conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// Key.
    pub id: i64,
    /// Owner; `None` for anonymous WebSocket chats.
    pub user_id: Option<i64>,
    /// Title.
    pub title: String,
    /// System prompt sent first to the LLM.
    pub system_message: Option<String>,
    /// Model chosen for this conversation.
    pub model: Option<String>,
    /// State.
    pub status: ConversationStatus,
    /// Free-form JSON object.
    pub context_metadata: Option<Value>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last activity (a change or a new message).
    pub updated_at: DateTime<Utc>,
    /// When it was ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// The active leaf: the last message of the path that linear reads answer and that a
    /// new turn continues; `None` while there are no messages.
    pub current_message_id: Option<i64>,
}

/// Fields of a new conversation.
#[derive(Debug, Clone, Default)]
pub struct NewConversation {
    /// Title.
    pub title: String,
    /// System prompt.
    pub system_message: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Free-form JSON object.
    pub context_metadata: Option<Value>,
}

/// Changes to a conversation; `None` keeps the value.
#[derive(Debug, Clone, Default)]
pub struct ConversationPatch {
    /// New title.
    pub title: Option<String>,
    /// New state; `ended` sets `ended_at` once, other states clear it.
    pub status: Option<ConversationStatus>,
    /// New metadata.
    pub context_metadata: Option<Value>,
}

/// Filters of a conversation list.
#[derive(Debug, Clone)]
pub struct ConversationFilter {
    /// State.
    pub status: Option<ConversationStatus>,
    /// Substring of the title.
    pub search: Option<String>,
    /// Page.
    pub page: Page,
}

/// Author of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    /// The person chatting.
    User,
    /// The LLM.
    Assistant,
    /// Instructions.
    System,
}

impl MessageRole {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::System => "system",
        }
    }

    /// Parses a stored name.
    pub fn parse(value: &str) -> Option<Self> {
        [Self::User, Self::Assistant, Self::System]
            .into_iter()
            .find(|role| role.as_str() == value)
    }
}

/// A message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Key.
    pub id: i64,
    /// Conversation key.
    pub conversation_id: i64,
    /// The message it answers or follows; `None` for a first message.
    #[serde(default)]
    pub parent_id: Option<i64>,
    /// Author.
    pub role: MessageRole,
    /// Text.
    pub content: String,
    /// Creation time.
    pub timestamp: DateTime<Utc>,
    /// Model that wrote it (assistant messages).
    pub model: Option<String>,
    /// Tokens used (assistant messages).
    pub tokens_used: Option<i64>,
    /// Time to produce the reply in milliseconds (assistant messages).
    pub response_time: Option<f64>,
    /// Free-form JSON object.
    pub message_metadata: Option<Value>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// What a chat turn needs of a stored message: who said what.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryMessage {
    /// Key; later messages have larger ones.
    pub id: i64,
    /// Author.
    pub role: MessageRole,
    /// Text.
    pub content: String,
}

/// What a chat turn reads of its conversation, in one query.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnContext {
    /// The conversation.
    pub conversation: Conversation,
    /// The keys, roles and texts of the newest messages of the path that ends at
    /// [`parent`](Self::parent), oldest first.
    pub history: Vec<HistoryMessage>,
    /// Whether its owner has active MCP servers, whose tools the model is offered.
    pub has_tools: bool,
    /// The message the turn follows, where the history ends; `None`: the turn starts a root.
    pub parent: Option<i64>,
}

/// Where a path of a conversation ends (it starts at a root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEnd {
    /// At the conversation's active leaf.
    Active,
    /// At this message; `None`: the empty path above a root.
    Message(Option<i64>),
}

/// A message of a conversation, as a request names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRef {
    /// By key.
    Id(i64),
    /// The newest assistant reply on the active path.
    LastReply,
}

/// What deleting a branch did.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletedBranch {
    /// How many messages were deleted.
    pub deleted: u64,
    /// The conversation afterwards.
    pub conversation: Conversation,
    /// Whether its active leaf moved (it was in the branch).
    pub leaf_moved: bool,
}

/// A reply whose user message is stored and whose own record is not yet: being generated,
/// or left unfinished by an instance that stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingReply {
    /// The reply's generation id.
    pub generation: String,
    /// The conversation's owner (`None`: anonymous).
    pub owner: Option<i64>,
    /// When the user message was stored.
    pub started_at: DateTime<Utc>,
    /// The user message the reply answers (its conversation is the reply's).
    pub user_message: Message,
}

/// Where a walk over the pending replies stands: the last one seen, in the order of
/// [`PendingReply::started_at`] then generation id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PendingCursor {
    /// `started_at` of the last reply seen, in microseconds.
    pub started_at: i64,
    /// Its generation id.
    pub generation: String,
}

impl PendingCursor {
    /// The position of a reply.
    pub fn of(reply: &PendingReply) -> Self {
        Self {
            started_at: reply.started_at.timestamp_micros(),
            generation: reply.generation.clone(),
        }
    }
}

/// Fields of a new message.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Author.
    pub role: MessageRole,
    /// Text.
    pub content: String,
    /// Model.
    pub model: Option<String>,
    /// Tokens used.
    pub tokens_used: Option<i64>,
    /// Response time in milliseconds.
    pub response_time: Option<f64>,
    /// Free-form JSON object.
    pub message_metadata: Option<Value>,
}

impl NewMessage {
    /// A plain message with no LLM details.
    pub fn text(role: MessageRole, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            model: None,
            tokens_used: None,
            response_time: None,
            message_metadata: None,
        }
    }
}

/// Filters of a message list.
#[derive(Debug, Clone)]
pub struct MessageFilter {
    /// Author.
    pub role: Option<MessageRole>,
    /// Page.
    pub page: Page,
}

/// Aggregates over a conversation's messages.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ConversationStats {
    /// All messages.
    pub total_messages: i64,
    /// Messages by the user.
    pub user_messages: i64,
    /// Messages by the assistant.
    pub assistant_messages: i64,
    /// System messages.
    pub system_messages: i64,
    /// Sum of `tokens_used`.
    pub total_tokens: i64,
    /// Mean `response_time` of the messages that have one, in milliseconds.
    pub average_response_time: Option<f64>,
    /// Time of the first message.
    pub first_message_at: Option<DateTime<Utc>>,
    /// Time of the last message.
    pub last_message_at: Option<DateTime<Utc>>,
}

/// An MCP server a user registered. The API key is not part of it: only
/// [`Store::active_mcp_servers_with_keys`](super::Store::active_mcp_servers_with_keys) reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct McpServer {
    /// Key.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// Display name.
    pub name: String,
    /// What it offers.
    pub description: Option<String>,
    /// Its `http` or `https` endpoint.
    pub server_url: String,
    /// Whether its tools are offered in chats.
    pub is_active: bool,
    /// Free-form JSON object.
    pub config: Option<Value>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// An MCP server with the API key to call it with.
#[derive(Debug, Clone, PartialEq)]
pub struct McpServerWithKey {
    /// The server.
    pub server: McpServer,
    /// Sent as a bearer token when set; `Debug` never shows it.
    pub api_key: Option<Secret>,
}

/// Fields of a new MCP server.
#[derive(Debug, Clone)]
pub struct NewMcpServer {
    /// Display name.
    pub name: String,
    /// What it offers.
    pub description: Option<String>,
    /// Its endpoint.
    pub server_url: String,
    /// Whether its tools are offered in chats.
    pub is_active: bool,
    /// Free-form JSON object.
    pub config: Option<Value>,
    /// API key.
    pub api_key: Option<Secret>,
}

/// Changes to an MCP server: `None` keeps a value; `Some(None)` clears an optional one.
#[derive(Debug, Clone, Default)]
pub struct McpServerPatch {
    /// New name.
    pub name: Option<String>,
    /// New description, or none.
    pub description: Option<Option<String>>,
    /// New endpoint.
    pub server_url: Option<String>,
    /// New active flag.
    pub is_active: Option<bool>,
    /// New configuration, or none.
    pub config: Option<Option<Value>>,
    /// New API key, or none.
    pub api_key: Option<Option<Secret>>,
}

/// Filters of an MCP server list.
#[derive(Debug, Clone)]
pub struct McpServerFilter {
    /// Only active servers.
    pub active_only: bool,
    /// Page.
    pub page: Page,
}

/// A personal API key, without its secret (only a hash of it is stored).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    /// Key.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// Display name.
    pub name: String,
    /// The key's first characters, to recognise it.
    pub prefix: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used, to the minute.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Fields of a new API key.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// Display name.
    pub name: String,
    /// The key's first characters.
    pub prefix: String,
    /// The SHA-256 of the key, hex.
    pub key_hash: String,
    /// The roles stored with it (`user`; earlier versions stored the creating token's). They
    /// are not read back: a key authenticates with `user` only.
    pub roles: Vec<String>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A live API key with its owner, as authentication reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyOwner {
    /// The key.
    pub key: ApiKey,
    /// Its owner.
    pub user: User,
}

/// What a search looks at besides its query; every hit is of one owner's conversations.
#[derive(Debug, Clone, Copy)]
pub struct SearchFilter {
    /// The owner whose messages and titles are searched.
    pub owner: i64,
    /// Only this conversation.
    pub conversation_id: Option<i64>,
    /// Only messages of this author (no title hits).
    pub role: Option<MessageRole>,
    /// Only messages from this time on, in microseconds since the epoch (no title hits).
    pub from: Option<i64>,
    /// Only messages before this time, in microseconds since the epoch (no title hits).
    pub to: Option<i64>,
    /// Page over the title hits, then the message hits.
    pub page: Page,
}

impl SearchFilter {
    /// Whether conversation titles are searched too: only when nothing but the conversation
    /// narrows the search, since a title has no author or time of its own.
    pub fn with_titles(&self) -> bool {
        self.role.is_none() && self.from.is_none() && self.to.is_none()
    }
}

/// A search hit: a message, or a conversation whose title matched.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRow {
    /// Conversation key.
    pub conversation_id: i64,
    /// The conversation's title.
    pub conversation_title: String,
    /// Message key; `None` for a title hit.
    pub message_id: Option<i64>,
    /// The message's author; `None` for a title hit.
    pub role: Option<MessageRole>,
    /// The message's time, or the conversation's last activity for a title hit.
    pub timestamp: DateTime<Utc>,
    /// The text that matched: the message's content or the title.
    pub text: String,
    /// Relevance within one search; higher is better.
    pub rank: f64,
}
