//! The JSON shapes of users, conversations, messages and exchanges, with public IDs, as
//! every adapter (REST, SSE, WebSocket) answers them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::chat::events::Exchange;
use crate::db::{Conversation, ConversationStatus, Message, MessageRole, User};
use crate::ids::IdCodec;

/// A user as answered by the API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserOut {
    /// Public ID (16 characters).
    pub id: String,
    /// Username.
    pub username: String,
    /// Email.
    pub email: Option<String>,
    /// Display name.
    pub full_name: Option<String>,
    /// Whether the user may sign in.
    pub is_active: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl UserOut {
    /// The API shape of a user row.
    pub fn new(user: &User, ids: &IdCodec) -> Self {
        Self {
            id: ids.user.encode(user.id),
            username: user.username.clone(),
            email: user.email.clone(),
            full_name: user.full_name.clone(),
            is_active: user.is_active,
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

/// A conversation as answered by the API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConversationOut {
    /// Public ID (12 characters).
    pub id: String,
    /// Owner's public ID; `null` for anonymous chats.
    pub user_id: Option<String>,
    /// Title.
    pub title: String,
    /// System prompt.
    pub system_message: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// State.
    pub status: ConversationStatus,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last activity.
    pub updated_at: DateTime<Utc>,
    /// When it was ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Free-form JSON object.
    #[schema(value_type = Option<Object>)]
    pub context_metadata: Option<Value>,
    /// Public ID of the active leaf: the last message of the path that the message list
    /// answers and that a new message continues; `null` while there are no messages.
    pub current_message_id: Option<String>,
}

impl ConversationOut {
    /// The API shape of a conversation row.
    pub fn new(conversation: &Conversation, ids: &IdCodec) -> Self {
        let owner = conversation.user_id.map(|id| ids.user.encode(id));
        Self::with_owner(conversation, owner, ids)
    }

    /// The API shape of a conversation row whose owner's public ID is already known.
    pub fn with_owner(conversation: &Conversation, owner: Option<String>, ids: &IdCodec) -> Self {
        Self {
            id: ids.conversation.encode(conversation.id),
            user_id: owner,
            title: conversation.title.clone(),
            system_message: conversation.system_message.clone(),
            model: conversation.model.clone(),
            status: conversation.status,
            created_at: conversation.created_at,
            updated_at: conversation.updated_at,
            ended_at: conversation.ended_at,
            context_metadata: conversation.context_metadata.clone(),
            current_message_id: conversation
                .current_message_id
                .map(|id| ids.message.encode(id)),
        }
    }
}

/// A message as answered by the API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MessageOut {
    /// Public ID (10 characters).
    pub id: String,
    /// Conversation's public ID.
    pub conversation_id: String,
    /// Public ID of the message it answers or follows; `null` for a first message.
    pub parent_id: Option<String>,
    /// Public IDs of the messages with the same parent, itself included, oldest first (the
    /// message list's active path only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sibling_ids: Option<Vec<String>>,
    /// Its position among `sibling_ids`, from 0 (the message list's active path only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sibling_index: Option<usize>,
    /// Author.
    pub role: MessageRole,
    /// Text.
    pub content: String,
    /// Creation time (the original name).
    pub timestamp: DateTime<Utc>,
    /// Creation time, same value as `timestamp`.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Model that wrote it.
    pub model: Option<String>,
    /// Tokens used.
    pub tokens_used: Option<i64>,
    /// Time to produce the reply, in milliseconds.
    pub response_time: Option<f64>,
    /// Free-form JSON object.
    #[schema(value_type = Option<Object>)]
    pub message_metadata: Option<Value>,
}

impl MessageOut {
    /// The API shape of a message row.
    pub fn new(message: &Message, ids: &IdCodec) -> Self {
        Self {
            id: ids.message.encode(message.id),
            conversation_id: ids.conversation.encode(message.conversation_id),
            parent_id: message.parent_id.map(|id| ids.message.encode(id)),
            sibling_ids: None,
            sibling_index: None,
            role: message.role,
            content: message.content.clone(),
            timestamp: message.timestamp,
            created_at: message.timestamp,
            updated_at: message.updated_at,
            model: message.model.clone(),
            tokens_used: message.tokens_used,
            response_time: message.response_time,
            message_metadata: message.message_metadata.clone(),
        }
    }

    /// The message with its siblings' keys (itself among them), oldest first.
    pub fn with_siblings(mut self, siblings: &[i64], message: i64, ids: &IdCodec) -> Self {
        self.sibling_index = siblings.iter().position(|id| *id == message);
        self.sibling_ids = Some(siblings.iter().map(|id| ids.message.encode(*id)).collect());
        self
    }
}

/// Answer of a delete.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Deleted {
    /// A human message.
    pub message: String,
    /// Public ID of what was deleted (conversations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// Public ID of what was deleted (users).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// The user's side of an exchange, as WebSocket answers and SSE `done` events give it.
#[derive(Debug, Clone, Serialize)]
pub struct ExchangeUserOut {
    /// Public ID.
    pub id: String,
    /// Public ID of the message it follows; `null` for a first message.
    pub parent_id: Option<String>,
    /// Text.
    pub content: String,
    /// Creation time.
    pub timestamp: DateTime<Utc>,
}

/// The assistant's side of an exchange.
#[derive(Debug, Clone, Serialize)]
pub struct ExchangeReplyOut {
    /// Public ID.
    pub id: String,
    /// Public ID of the message it answers.
    pub parent_id: Option<String>,
    /// Text (partial when stopped).
    pub content: String,
    /// Creation time.
    pub timestamp: DateTime<Utc>,
    /// Tokens used.
    pub tokens_used: Option<i64>,
    /// Time to produce the reply in milliseconds.
    pub response_time: Option<f64>,
    /// Model that wrote it.
    pub model: Option<String>,
    /// Whether the reply was stopped before it completed.
    pub stopped: bool,
    /// Whether the reply was cut at the service's size limit.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// A completed exchange: the data of a `send_message` answer, its broadcast and the SSE
/// `done` event.
#[derive(Debug, Clone, Serialize)]
pub struct ExchangeOut {
    /// Conversation's public ID.
    pub conversation_id: String,
    /// The stored user message.
    pub user_message: ExchangeUserOut,
    /// The stored reply.
    pub ai_response: ExchangeReplyOut,
}

impl ExchangeOut {
    /// The shape of an exchange.
    pub fn new(exchange: &Exchange, ids: &IdCodec) -> Self {
        let user = &exchange.user_message;
        let ai = &exchange.ai_message;
        Self {
            conversation_id: ids.conversation.encode(user.conversation_id),
            user_message: ExchangeUserOut {
                id: ids.message.encode(user.id),
                parent_id: user.parent_id.map(|id| ids.message.encode(id)),
                content: user.content.clone(),
                timestamp: user.timestamp,
            },
            ai_response: ExchangeReplyOut {
                id: ids.message.encode(ai.id),
                parent_id: ai.parent_id.map(|id| ids.message.encode(id)),
                content: ai.content.clone(),
                timestamp: ai.timestamp,
                tokens_used: ai.tokens_used,
                response_time: ai.response_time,
                model: ai.model.clone(),
                stopped: exchange.stopped,
                truncated: exchange.truncated,
            },
        }
    }
}

/// One server-sent event of a reply, as a client's event-stream parser reads it. The
/// event-stream answers are sequences of these; they are documented, never built.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SseEvent {
    /// What the event tells.
    #[schema(inline)]
    pub event: SseEventKind,
    /// A JSON object: `{generation_id}` (`start`), `{delta}` (`chunk`), the exchange as a
    /// WebSocket `send_message` answer carries it (`done`), `{error, message_id}` (`error`),
    /// `{name, arguments}` (`tool_call`) or `{name, ok}` (`tool_result`).
    pub data: String,
    /// The `seq` of the last chunk so far: what `Last-Event-ID` takes to resume.
    #[schema(pattern = "^[0-9]+$")]
    pub id: Option<String>,
}

/// The kinds of server-sent events of a reply.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SseEventKind {
    /// The reply began (resumed streams only); names its generation.
    Start,
    /// A piece of the reply.
    Chunk,
    /// The reply was stored.
    Done,
    /// The reply failed, or the client fell behind and must resume.
    Error,
    /// The reply calls a tool: `{name, arguments}`.
    #[serde(rename = "tool_call")]
    ToolCall,
    /// A tool the reply called answered (or failed): `{name, ok}`.
    #[serde(rename = "tool_result")]
    ToolResult,
}
