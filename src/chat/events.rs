//! What happens live on a conversation, as typed values: a reply's start, chunks and end,
//! and a conversation's end. The hub carries them to the conversation's connections (and to
//! other instances, serialized); only the adapters render them as frames or SSE events.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::db::{Conversation, ConversationStatus, Message};

/// Identity of one reply being generated: opaque, unique across instances.
pub type GenerationId = Arc<str>;

/// A new generation id.
pub fn new_generation_id() -> GenerationId {
    uuid::Uuid::new_v4().simple().to_string().into()
}

/// What a chat turn did: the type of the answer its caller gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnKind {
    /// A new message below the active leaf, and its reply.
    #[default]
    Send,
    /// A new reply beside an earlier one.
    Regenerate,
    /// An edited message beside the original, and its reply.
    Edit,
}

/// Both messages of a completed exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exchange {
    /// The user's message (the one a regenerated reply answers).
    pub user_message: Message,
    /// The assistant's reply (partial when stopped).
    pub ai_message: Message,
    /// Whether the reply was stopped before it completed.
    pub stopped: bool,
    /// Whether the reply was cut at the size limit.
    #[serde(default)]
    pub truncated: bool,
    /// What the turn did.
    #[serde(default)]
    pub kind: TurnKind,
}

/// What kind of failure ended a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The LLM failed or did not answer.
    Llm,
    /// The conversation disappeared while the reply was generated.
    NotFound,
    /// The conversation had been ended (found when the user's message was stored).
    Ended,
    /// Anything else (the database); the message is generic.
    Internal,
    /// The service, or the instance generating the reply, stopped before the reply could
    /// finish; the part generated before is stored marked incomplete.
    Interrupted,
}

/// An event on a conversation for the connections that follow it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LiveEvent {
    /// A reply began.
    ReplyStarted {
        /// Conversation key.
        conversation: i64,
        /// The reply.
        generation: GenerationId,
    },
    /// A piece of the reply; `seq` counts from 1 within the reply.
    ReplyChunk {
        /// Conversation key.
        conversation: i64,
        /// The reply.
        generation: GenerationId,
        /// Position within the reply.
        seq: u64,
        /// The text.
        delta: Arc<str>,
    },
    /// The reply is stored (completed, or stopped: see [`Exchange::stopped`]).
    ReplyDone {
        /// Conversation key.
        conversation: i64,
        /// The reply.
        generation: GenerationId,
        /// Both stored messages.
        exchange: Arc<Exchange>,
    },
    /// The reply failed; the message is safe to show.
    ReplyFailed {
        /// Conversation key.
        conversation: i64,
        /// The reply.
        generation: GenerationId,
        /// What kind of failure it was.
        failure: Failure,
        /// Why, in plain language.
        error: Arc<str>,
        /// The part of the reply that was generated before the failure, stored marked
        /// incomplete.
        #[serde(default)]
        partial: Option<Arc<Exchange>>,
    },
    /// The reply calls a tool.
    ToolCall {
        /// Conversation key.
        conversation: i64,
        /// The reply.
        generation: GenerationId,
        /// The tool.
        name: String,
        /// Its arguments.
        arguments: Arc<serde_json::Value>,
    },
    /// A tool the reply called answered (or failed).
    ToolResult {
        /// Conversation key.
        conversation: i64,
        /// The reply.
        generation: GenerationId,
        /// The tool.
        name: String,
        /// Whether it answered.
        ok: bool,
    },
    /// The conversation was given a new title (written by the LLM after its first reply).
    Retitled {
        /// Conversation key.
        conversation: i64,
        /// The title now.
        title: Arc<str>,
    },
    /// The conversation's active leaf moved to another branch.
    BranchChanged {
        /// Conversation key.
        conversation: i64,
        /// The active leaf now.
        current: Option<i64>,
    },
    /// The conversation was ended.
    Ended {
        /// Conversation key.
        conversation: i64,
        /// Its status now.
        status: ConversationStatus,
        /// When it ended.
        ended_at: Option<DateTime<Utc>>,
    },
}

impl LiveEvent {
    /// The event of a conversation that was just ended.
    pub fn ended(conversation: &Conversation) -> Self {
        Self::Ended {
            conversation: conversation.id,
            status: conversation.status,
            ended_at: conversation.ended_at,
        }
    }

    /// The conversation the event is about.
    pub fn conversation(&self) -> i64 {
        match self {
            Self::ReplyStarted { conversation, .. }
            | Self::ReplyChunk { conversation, .. }
            | Self::ReplyDone { conversation, .. }
            | Self::ReplyFailed { conversation, .. }
            | Self::ToolCall { conversation, .. }
            | Self::ToolResult { conversation, .. }
            | Self::Retitled { conversation, .. }
            | Self::BranchChanged { conversation, .. }
            | Self::Ended { conversation, .. } => *conversation,
        }
    }

    /// The reply the event belongs to, if any.
    pub fn generation(&self) -> Option<&GenerationId> {
        match self {
            Self::ReplyStarted { generation, .. }
            | Self::ReplyChunk { generation, .. }
            | Self::ReplyDone { generation, .. }
            | Self::ReplyFailed { generation, .. }
            | Self::ToolCall { generation, .. }
            | Self::ToolResult { generation, .. } => Some(generation),
            Self::Retitled { .. } | Self::BranchChanged { .. } | Self::Ended { .. } => None,
        }
    }

    /// Whether the event ends its reply.
    pub fn ends_reply(&self) -> bool {
        matches!(self, Self::ReplyDone { .. } | Self::ReplyFailed { .. })
    }
}
