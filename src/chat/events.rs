//! What happens live on a conversation, as typed values: the hub carries them to the
//! conversation's connections and only the WebSocket adapter renders them as frames.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::db::{Conversation, ConversationStatus, Message};

/// Both messages of a completed exchange.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The user's message.
    pub user_message: Message,
    /// The assistant's reply (partial when stopped).
    pub ai_message: Message,
    /// Whether the reply was stopped before it completed.
    pub stopped: bool,
}

/// An event on a conversation for the connections that follow it.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// A reply was stored with the message it answers.
    Exchange(Arc<Exchange>),
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
}
