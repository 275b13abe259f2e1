//! Conversation use cases shared by REST and WebSocket: create, load, end and delete, each
//! within the caller's scope (the scope is a condition of the query itself).

use serde_json::Value;

use super::validate::{check_object, check_optional_text, check_text};
use super::{ServiceError, ServiceResult};
use crate::chat::events::LiveEvent;
use crate::chat::hub::ConnectionId;
use crate::db::{
    Conversation, ConversationPatch, ConversationStatus, MessageRole, NewConversation, NewMessage,
    Scope,
};
use crate::state::AppState;

pub use crate::db::DEFAULT_TITLE;
/// Longest title.
pub const MAX_TITLE_CHARS: usize = 255;
/// Longest system message.
pub const MAX_SYSTEM_MESSAGE_CHARS: usize = 8000;

/// What a new conversation is made of, as the client gave it.
#[derive(Debug, Default)]
pub struct CreateConversation {
    /// Title (default [`DEFAULT_TITLE`]).
    pub title: Option<String>,
    /// System prompt sent first to the LLM.
    pub system_message: Option<String>,
    /// Model, one of the allowed models.
    pub model: Option<String>,
    /// Free-form JSON object.
    pub context_metadata: Option<Value>,
}

/// Checks the fields shared by creation and change.
pub fn check_fields(title: Option<&str>, metadata: Option<&Value>) -> ServiceResult<()> {
    if let Some(title) = title {
        check_text("title", title, 1, MAX_TITLE_CHARS)?;
    }
    check_object("context_metadata", metadata)
}

/// Validates the fields into what is stored; the model must be allowed.
fn validate(state: &AppState, input: CreateConversation) -> ServiceResult<NewConversation> {
    check_fields(input.title.as_deref(), input.context_metadata.as_ref())?;
    check_optional_text(
        "system_message",
        input.system_message.as_deref(),
        MAX_SYSTEM_MESSAGE_CHARS,
    )?;
    if let Some(model) = &input.model {
        if !state.settings.llm.allowed_models.contains(model) {
            return Err(ServiceError::invalid(
                "model",
                "is not one of the allowed models",
            ));
        }
    }
    Ok(NewConversation {
        title: input
            .title
            .map(|t| t.trim().to_owned())
            .unwrap_or_else(|| DEFAULT_TITLE.to_owned()),
        system_message: input.system_message.filter(|s| !s.trim().is_empty()),
        model: input.model,
        context_metadata: input.context_metadata,
    })
}

/// Creates a conversation for `owner` (`None`: anonymous) and records the analytics event.
/// A system message is also stored as the conversation's first message (role `system`), as
/// the original service does, in the same transaction.
pub async fn create(
    state: &AppState,
    owner: Option<i64>,
    input: CreateConversation,
) -> ServiceResult<Conversation> {
    let new = validate(state, input)?;
    let conversation = match &new.system_message {
        Some(system) => {
            let first = NewMessage::text(MessageRole::System, system.clone());
            let (conversation, _) = state
                .store
                .create_conversation_with_message(owner, &new, &first)
                .await?;
            conversation
        }
        None => state.store.create_conversation(owner, &new).await?,
    };
    state.analytics.conversation_created(&conversation);
    Ok(conversation)
}

/// A conversation within the scope.
pub async fn load(state: &AppState, scope: Scope, key: i64) -> ServiceResult<Conversation> {
    state
        .store
        .conversation(scope, key)
        .await?
        .ok_or(ServiceError::NotFound("Conversation"))
}

/// Changes a conversation within the scope.
pub async fn update(
    state: &AppState,
    scope: Scope,
    key: i64,
    patch: &ConversationPatch,
) -> ServiceResult<Conversation> {
    state
        .store
        .update_conversation(scope, key, patch)
        .await?
        .ok_or(ServiceError::NotFound("Conversation"))
}

/// Ends a conversation within the scope and tells its live connections (but `origin`, which
/// gets the answer). Idempotent: ending an ended one changes nothing and tells no one.
pub async fn end(
    state: &AppState,
    scope: Scope,
    key: i64,
    origin: Option<ConnectionId>,
) -> ServiceResult<Conversation> {
    let current = load(state, scope, key).await?;
    if current.status == ConversationStatus::Ended {
        return Ok(current);
    }
    let patch = ConversationPatch {
        status: Some(ConversationStatus::Ended),
        ..Default::default()
    };
    let conversation = update(state, scope, key, &patch).await?;
    state.analytics.conversation_ended(&conversation);
    state
        .hub
        .live
        .publish(LiveEvent::ended(&conversation), origin);
    Ok(conversation)
}

/// Deletes a conversation with its messages within the scope.
pub async fn delete(state: &AppState, scope: Scope, key: i64) -> ServiceResult<()> {
    // Read first: the analytics event names the owner, which an admin's path does not give.
    let conversation = load(state, scope, key).await?;
    if !state.store.delete_conversation(scope, key).await? {
        return Err(ServiceError::NotFound("Conversation"));
    }
    state.analytics.conversation_deleted(&conversation);
    Ok(())
}
