//! One chat turn: check the request, store the user's message, stream the LLM's answer in a
//! background task, store it, and tell the conversation's other connections.
//!
//! The turn emits typed [`TurnEvent`]s; adapters render them (WebSocket frames, SSE events,
//! a JSON answer). The task does not depend on its consumer: a reply is stored even if the
//! client has gone.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use super::{ServiceError, ServiceResult};
use crate::chat::context::build_context;
use crate::chat::events::{Exchange, LiveEvent};
use crate::chat::hub::{ConnectionId, GenerationOwner, GenerationSlot};
use crate::chat::llm::{ChatRole, ChatTurn, CompletionRequest, LlmEvent, Usage};
use crate::db::{Conversation, ConversationStatus, Message, MessageRole, NewMessage, Scope};
use crate::metrics::{self, TokenKind};
use crate::state::AppState;

/// How many of the newest messages are read to build the context before trimming.
const HISTORY_WINDOW: i64 = 200;

/// What to reply to.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    /// The caller's scope; the conversation must be within it.
    pub scope: Scope,
    /// Conversation key.
    pub conversation: i64,
    /// The user's message.
    pub content: String,
    /// Who the generation counts against.
    pub owner: GenerationOwner,
    /// The connection that asked (excluded from the broadcast); `None` for REST.
    pub origin: Option<ConnectionId>,
}

/// What a turn's consumer receives, in order: `Started`, deltas, then one of `Done`,
/// `Stopped` or `Failed`.
#[derive(Debug)]
pub enum TurnEvent {
    /// The user's message is stored and the reply is being generated.
    Started,
    /// A piece of the reply.
    Delta(String),
    /// The reply is stored.
    Done(Box<Exchange>),
    /// The reply was stopped; what was generated is stored.
    Stopped(Box<Exchange>),
    /// The reply failed; the user's message stays stored.
    Failed(ServiceError),
}

/// A started turn: the stored user message and the reply's events.
pub struct Turn {
    /// The stored user message.
    pub user_message: Message,
    /// The reply's events.
    pub events: mpsc::Receiver<TurnEvent>,
}

/// Checks the request, stores the user's message, and starts the reply in the background.
pub async fn start(state: &AppState, request: TurnRequest) -> ServiceResult<Turn> {
    let max = state.settings.limits.max_message_chars;
    if request.content.trim().is_empty() {
        return Err(ServiceError::invalid("content", "must not be empty"));
    }
    if request.content.chars().count() > max {
        return Err(ServiceError::invalid(
            "content",
            &format!("must be at most {max} characters"),
        ));
    }
    // The one read of the conversation, with the turn's ownership check in the query.
    let conversation =
        super::conversations::load(state, request.scope, request.conversation).await?;
    if conversation.status == ConversationStatus::Ended {
        return Err(ServiceError::Ended);
    }
    let slot = state.hub.begin_generation(
        conversation.id,
        request.owner,
        state.settings.limits.max_generations_per_user,
    )?;
    let user_message = state
        .store
        .add_message(
            request.scope,
            conversation.id,
            &NewMessage::text(MessageRole::User, request.content.clone()),
        )
        .await?
        .ok_or(ServiceError::NotFound("Conversation"))?;
    let (events, receiver) = mpsc::channel(64);
    let _ = events.try_send(TurnEvent::Started);
    let generation = Generation {
        state: state.clone(),
        request,
        conversation,
        user_message: user_message.clone(),
        slot,
        events,
    };
    state.hub.tasks().spawn(generation.run());
    Ok(Turn {
        user_message,
        events: receiver,
    })
}

/// A reply being generated.
struct Generation {
    state: AppState,
    request: TurnRequest,
    conversation: Conversation,
    user_message: Message,
    slot: GenerationSlot,
    events: mpsc::Sender<TurnEvent>,
}

/// The text generated so far and how the stream ended.
#[derive(Default)]
struct Outcome {
    text: String,
    usage: Option<Usage>,
    stopped: bool,
}

impl Generation {
    async fn run(self) {
        let _in_flight = metrics::llm_generation_started();
        let event = match self.generate().await {
            Ok(exchange) => {
                let owner = self.conversation.user_id;
                self.state.analytics.message(&exchange.user_message, owner);
                self.state.analytics.message(&exchange.ai_message, owner);
                let exchange = Arc::new(exchange);
                self.state.hub.broadcast(
                    self.conversation.id,
                    self.request.origin,
                    LiveEvent::Exchange(exchange.clone()),
                );
                let exchange = Box::new(Arc::unwrap_or_clone(exchange));
                if exchange.stopped {
                    TurnEvent::Stopped(exchange)
                } else {
                    TurnEvent::Done(exchange)
                }
            }
            Err(err) => {
                match &err {
                    ServiceError::Store(e) => tracing::error!(error = ?e, "storing a reply failed"),
                    other => tracing::warn!(error = %other, "reply failed"),
                }
                TurnEvent::Failed(err)
            }
        };
        // Free the slots first, so a client that sends again on the answer is not refused.
        drop(self.slot);
        // The consumer may have gone; the reply is stored either way.
        let _ = self.events.send(event).await;
    }

    async fn generate(&self) -> ServiceResult<Exchange> {
        let state = &self.state;
        // Ownership was checked when the turn started; the history is read by key.
        let history = state
            .store
            .recent_messages(Scope::Anyone, self.conversation.id, HISTORY_WINDOW)
            .await?;
        let turns: Vec<ChatTurn> = history
            .iter()
            .map(|m| ChatTurn::new(chat_role(m.role), m.content.clone()))
            .collect();
        let model = self
            .conversation
            .model
            .clone()
            .unwrap_or_else(|| state.settings.llm.model.clone());
        let request = CompletionRequest {
            model: model.clone(),
            messages: build_context(
                self.conversation.system_message.as_deref(),
                &turns,
                state.settings.llm.context_token_budget,
            ),
        };
        let started = Instant::now();
        let outcome = self.stream(request).await;
        metrics::llm_request(started.elapsed());
        let outcome = outcome.inspect_err(|err| {
            if let ServiceError::Llm(llm) = err {
                metrics::llm_error(llm.code());
            }
        })?;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let usage = outcome.usage.unwrap_or_default();
        metrics::llm_tokens(TokenKind::Prompt, u64::from(usage.prompt_tokens));
        metrics::llm_tokens(TokenKind::Completion, u64::from(usage.completion_tokens));
        if outcome.stopped {
            metrics::llm_error("stopped");
        }
        let metadata = json!({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "stopped": outcome.stopped,
            "provider": state.llm.name(),
        });
        let reply = NewMessage {
            role: MessageRole::Assistant,
            content: outcome.text,
            model: Some(model),
            tokens_used: Some(i64::from(usage.total_tokens)),
            response_time: Some(elapsed_ms),
            message_metadata: Some(metadata),
        };
        let ai_message = state
            .store
            .add_message(self.request.scope, self.conversation.id, &reply)
            .await?
            .ok_or(ServiceError::NotFound("Conversation"))?;
        Ok(Exchange {
            user_message: self.user_message.clone(),
            ai_message,
            stopped: outcome.stopped,
        })
    }

    /// Streams the reply, forwarding deltas, until it ends, fails or is stopped.
    async fn stream(&self, request: CompletionRequest) -> ServiceResult<Outcome> {
        let mut outcome = Outcome::default();
        let cancel = &self.slot.cancel;
        // Stopping before the first token cancels the request itself.
        let mut stream = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                outcome.stopped = true;
                return Ok(outcome);
            }
            stream = self.state.llm.stream(request) => stream?,
        };
        loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    outcome.stopped = true;
                    break;
                }
                item = stream.next() => item,
            };
            match item {
                Some(Ok(LlmEvent::Delta(delta))) => {
                    outcome.text.push_str(&delta);
                    let _ = self.events.send(TurnEvent::Delta(delta)).await;
                }
                Some(Ok(LlmEvent::Usage(usage))) => outcome.usage = Some(usage),
                Some(Err(err)) => return Err(err.into()),
                None => break,
            }
        }
        Ok(outcome)
    }
}

fn chat_role(role: MessageRole) -> ChatRole {
    match role {
        MessageRole::User => ChatRole::User,
        MessageRole::Assistant => ChatRole::Assistant,
        MessageRole::System => ChatRole::System,
    }
}
