//! The branches of a conversation's tree: switching the active leaf to another branch and
//! deleting a branch, each within the caller's scope. Members of the conversation, on any
//! instance, are told when its active leaf moves.

use super::{ServiceError, ServiceResult};
use crate::chat::events::LiveEvent;
use crate::db::{Conversation, Scope};
use crate::state::AppState;

/// Makes the newest message below `message` (itself when it has none) the conversation's
/// active leaf, so choosing a sibling shows its branch to its end; tells the members.
pub async fn switch(
    state: &AppState,
    scope: Scope,
    conversation: i64,
    message: i64,
) -> ServiceResult<Conversation> {
    let switched = state
        .store
        .switch_branch(scope, conversation, message)
        .await?;
    let Some(switched) = switched else {
        return Err(not_found(state, scope, conversation).await);
    };
    announce(state, &switched);
    Ok(switched)
}

/// Deletes `message` and everything below it. A reply still being generated below it is
/// stopped first (its record goes with the branch, so nothing of it is stored); when the
/// active leaf was in the branch it moves, and the members are told.
pub async fn delete(
    state: &AppState,
    scope: Scope,
    conversation: i64,
    message: i64,
) -> ServiceResult<()> {
    let generating = state
        .store
        .replies_below(scope, conversation, message)
        .await?;
    if !generating.is_empty() {
        // One reply at a time per conversation: stopping the conversation's stops it.
        state.hub.generations.stop(conversation).await;
    }
    let deleted = state
        .store
        .delete_branch(scope, conversation, message)
        .await?;
    let Some(deleted) = deleted else {
        return Err(not_found(state, scope, conversation).await);
    };
    if deleted.leaf_moved {
        announce(state, &deleted.conversation);
    }
    Ok(())
}

/// Tells every member of the conversation (the caller's own connections too: a REST call
/// has none of its own) where its active leaf is now.
fn announce(state: &AppState, conversation: &Conversation) {
    state.hub.live.publish(
        LiveEvent::BranchChanged {
            conversation: conversation.id,
            current: conversation.current_message_id,
        },
        None,
    );
}

/// What was not found: the conversation, or the message in it.
async fn not_found(state: &AppState, scope: Scope, conversation: i64) -> ServiceError {
    match state.store.conversation(scope, conversation).await {
        Ok(Some(_)) => ServiceError::NotFound("Message"),
        Ok(None) => ServiceError::NotFound("Conversation"),
        Err(err) => err.into(),
    }
}
