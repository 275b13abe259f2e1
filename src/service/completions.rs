//! One call of the OpenAI-compatible API (`POST /v1/chat/completions`): the client's request
//! goes to the LLM as given, and is kept as an exchange (its last user message and the reply)
//! in a conversation of the caller's, named or new. The reply is a chat turn like any other
//! (`service::chat`): stored even if the client leaves, bounded in size and time, seen live by
//! the conversation's other members.

use super::chat::{self, TurnAction, TurnRequest};
use super::conversations::{self, CreateConversation, DEFAULT_TITLE, MAX_TITLE_CHARS};
use super::reply::ReplyStream;
use super::usage::{self, Account, Role};
use super::ServiceResult;
use crate::chat::events::GenerationId;
use crate::chat::hub::GenerationOwner;
use crate::chat::llm::CompletionRequest;
use crate::db::Scope;
use crate::state::AppState;

/// A call, as the adapter read it.
#[derive(Debug, Clone)]
pub struct CompletionCall {
    /// The caller.
    pub owner: i64,
    /// The caller's highest role, which picks their default budgets.
    pub role: Role,
    /// The conversation to keep the exchange in (the caller's), or `None` for a new one.
    pub conversation: Option<i64>,
    /// What the LLM is asked, as the client gave it.
    pub prompt: CompletionRequest,
    /// The prompt's last user message: stored as the exchange's question.
    pub question: String,
    /// The first system message, the new conversation's.
    pub system_message: Option<String>,
    /// The first user message, the new conversation's title.
    pub first_question: String,
}

/// A started call: where it is kept and its reply's events.
pub struct Started {
    /// The conversation that keeps the exchange.
    pub conversation: i64,
    /// The reply's id.
    pub generation: GenerationId,
    /// The reply's events (chunks, then its end); `Err(Lagged)` once in place of chunks the
    /// client was too slow to take. The reply goes on, and is stored and counted, whether or
    /// not they are read.
    pub events: ReplyStream,
}

/// Starts a call. The message rate and token budgets of `usage::admit` refuse a call
/// before anything is stored (not even its new conversation), with `ServiceError::Limited`,
/// which the adapter answers as OpenAI's 429 with `Retry-After`; the turn started with a
/// given prompt is not admitted again, and the generation limits (`MAX_GENERATIONS_PER_USER`,
/// one reply at a time per conversation) hold in the turn itself. Its LLM calls go into the
/// usage ledger with the turn's (kind `api`), whether or not the client is still there.
pub async fn start(state: &AppState, call: CompletionCall) -> ServiceResult<Started> {
    let account = Account::User {
        id: call.owner,
        role: call.role,
    };
    usage::admit(state, account).await?;
    // Checked before a conversation is made for it, so a refused call leaves nothing behind.
    chat::check_content(state, &call.question)?;
    let scope = Scope::Owner(call.owner);
    let conversation = match call.conversation {
        // The turn reads it within the caller's scope: another user's is not found there.
        Some(id) => id,
        None => {
            let input = CreateConversation {
                title: Some(title(&call.first_question)),
                system_message: call.system_message.clone(),
                model: Some(call.prompt.model.clone()),
                context_metadata: None,
            };
            conversations::create(state, Some(call.owner), input)
                .await?
                .id
        }
    };
    let request = TurnRequest {
        scope,
        conversation,
        action: TurnAction::Send,
        content: call.question.clone(),
        owner: GenerationOwner::User(call.owner),
        account,
        user_token: None,
    };
    let turn = match chat::start_with_prompt(state, request, call.prompt.clone()).await {
        Ok(turn) => turn,
        Err(err) => {
            // A conversation made for a call that could not start (a generation limit) would
            // be an empty one in the user's list.
            if call.conversation.is_none() {
                if let Err(cleanup) = state.store.delete_conversation(scope, conversation).await {
                    tracing::warn!(error = %cleanup, "could not remove a call's new conversation");
                }
            }
            return Err(err);
        }
    };
    Ok(Started {
        conversation,
        generation: turn.generation,
        events: turn.events,
    })
}

/// A conversation's title from its first user message: whitespace folded, cut to 80
/// characters.
pub fn title(first_question: &str) -> String {
    const TITLE_CHARS: usize = 80;
    let folded = first_question
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if folded.is_empty() {
        return DEFAULT_TITLE.to_owned();
    }
    let limit = TITLE_CHARS.min(MAX_TITLE_CHARS);
    match folded.char_indices().nth(limit) {
        Some((end, _)) => format!("{}…", folded[..end].trim_end()),
        None => folded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_fold_whitespace_and_are_cut() {
        assert_eq!(title("  Hello\n  world "), "Hello world");
        assert_eq!(title(" \n "), DEFAULT_TITLE);
        let long = "word ".repeat(40);
        let cut = title(&long);
        assert!(cut.ends_with('…'));
        assert!(cut.chars().count() <= 81);
    }
}
