//! One chat turn: check the request, store the user's message, stream the LLM's answer in a
//! background task, store it. The turn publishes typed [`LiveEvent`]s through the hub
//! (started, chunks numbered from 1, done or stopped, failed) to every member following the
//! conversation, wherever it is connected; adapters render them (WebSocket frames, SSE
//! events, a JSON answer). The task never waits for a consumer: a reply is generated and
//! stored at the LLM's pace even if every client has gone.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use super::{ServiceError, ServiceResult};
use crate::chat::context::build_context;
use crate::chat::events::{Exchange, Failure, GenerationId, LiveEvent};
use crate::chat::hub::{Delivery, GenerationOwner, GenerationSlot, Member, SharedHub};
use crate::chat::llm::{ChatRole, ChatTurn, CompletionRequest, LlmError, LlmEvent, Usage};
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
    /// The reply's id, chosen by the caller so it can recognise its reply's events.
    pub generation: GenerationId,
}

/// A started turn.
#[derive(Debug)]
pub struct Turn {
    /// The stored user message.
    pub user_message: Message,
    /// The reply's id.
    pub generation: GenerationId,
}

/// A consumer of a conversation's live events that is not a WebSocket connection (an SSE
/// stream, a REST call waiting for its reply). Leaves the conversation when dropped.
pub struct Subscription {
    hub: SharedHub,
    member: Member,
    queue: mpsc::Receiver<Delivery>,
    pending: VecDeque<LiveEvent>,
}

impl Subscription {
    /// Follows a conversation's events from now on.
    pub async fn follow(state: &AppState, conversation: i64) -> Self {
        let (member, queue) = state.hub.subscribe();
        state.hub.join(conversation, &member).await;
        Self::new(state, member, queue)
    }

    /// Follows a conversation and replays its latest reply after `after_seq`; `None` when
    /// there is no reply to resume.
    pub async fn resume(state: &AppState, conversation: i64, after_seq: u64) -> Option<Self> {
        let (member, queue) = state.hub.subscribe();
        let resumed = state.hub.resume(conversation, &member, after_seq).await;
        let subscription = Self::new(state, member, queue);
        resumed.map(|_| subscription)
    }

    fn new(state: &AppState, member: Member, queue: mpsc::Receiver<Delivery>) -> Self {
        Self {
            hub: state.hub.clone(),
            member,
            queue,
            pending: VecDeque::new(),
        }
    }

    /// The next event; `None` when the subscription fell too far behind (it missed events).
    pub async fn next(&mut self) -> Option<LiveEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            let delivery = tokio::select! {
                biased;
                delivery = self.queue.recv() => delivery?,
                () = self.member.lagged().cancelled() => return None,
            };
            match delivery {
                Delivery::Event(event) => return Some(event),
                Delivery::Replay(events) => self.pending.extend(events),
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.disconnect(self.member.id);
    }
}

/// Checks the request, stores the user's message, and starts the reply in the background.
/// Its events go to the conversation's members: join before calling this to see them all.
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
    let slot = state
        .hub
        .begin_generation(
            conversation.id,
            request.owner,
            state.settings.limits.max_generations_per_user,
            request.generation.clone(),
        )
        .await?;
    let user_message = state
        .store
        .add_message(
            request.scope,
            conversation.id,
            &NewMessage::text(MessageRole::User, request.content.clone()),
        )
        .await?
        .ok_or(ServiceError::NotFound("Conversation"))?;
    let turn = Turn {
        user_message: user_message.clone(),
        generation: request.generation.clone(),
    };
    let generation = Generation {
        state: state.clone(),
        request,
        conversation,
        user_message,
        slot,
        seq: 0,
    };
    state.hub.tasks().spawn(generation.run());
    Ok(turn)
}

/// A reply being generated.
struct Generation {
    state: AppState,
    request: TurnRequest,
    conversation: Conversation,
    user_message: Message,
    slot: GenerationSlot,
    /// Chunks published so far.
    seq: u64,
}

/// How a reply's stream ended.
#[derive(Debug, Default)]
enum Finish {
    /// The LLM finished it.
    #[default]
    Complete,
    /// Someone stopped it.
    Stopped,
    /// It reached `LLM_MAX_REPLY_CHARS`.
    Truncated,
    /// The LLM failed, or a time bound passed, after the stream started.
    Failed(LlmError),
}

/// The text generated so far and how the stream ended.
#[derive(Default)]
struct Outcome {
    text: String,
    usage: Option<Usage>,
    finish: Finish,
}

impl Generation {
    async fn run(mut self) {
        let _in_flight = metrics::llm_generation_started();
        let conversation = self.conversation.id;
        let generation = self.slot.generation.clone();
        self.state.hub.publish(
            LiveEvent::ReplyStarted {
                conversation,
                generation: generation.clone(),
            },
            None,
        );
        let event = match self.generate().await {
            Ok((exchange, failure)) => {
                let owner = self.conversation.user_id;
                self.state.analytics.message(&exchange.user_message, owner);
                self.state.analytics.message(&exchange.ai_message, owner);
                let exchange = Arc::new(exchange);
                match failure {
                    None => LiveEvent::ReplyDone {
                        conversation,
                        generation,
                        exchange,
                    },
                    Some(err) => {
                        tracing::warn!(error = %err, "reply cut short; the partial reply is stored");
                        LiveEvent::ReplyFailed {
                            conversation,
                            generation,
                            failure: Failure::Llm,
                            error: err.to_string().into(),
                            partial: Some(exchange),
                        }
                    }
                }
            }
            Err(err) => {
                let failure = match &err {
                    ServiceError::Store(e) => {
                        tracing::error!(error = ?e, "storing a reply failed");
                        Failure::Internal
                    }
                    ServiceError::NotFound(_) => Failure::NotFound,
                    other => {
                        tracing::warn!(error = %other, "reply failed");
                        Failure::Llm
                    }
                };
                LiveEvent::ReplyFailed {
                    conversation,
                    generation,
                    failure,
                    error: err.to_string().into(),
                    partial: None,
                }
            }
        };
        // Free the claims first, so a client that sends again on the answer is not refused.
        let state = self.state.clone();
        drop(self);
        state.hub.publish(event, None);
    }

    /// Generates and stores the reply. A reply cut by an LLM failure after some text is
    /// stored marked incomplete, and the failure comes with it.
    async fn generate(&mut self) -> ServiceResult<(Exchange, Option<ServiceError>)> {
        let state = self.state.clone();
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
        let stopped = matches!(outcome.finish, Finish::Stopped);
        let truncated = matches!(outcome.finish, Finish::Truncated);
        let failure = match outcome.finish {
            Finish::Failed(err) if outcome.text.is_empty() => {
                metrics::llm_error(err.code());
                return Err(err.into());
            }
            Finish::Failed(err) => {
                metrics::llm_error(err.code());
                Some(err)
            }
            Finish::Stopped => {
                metrics::llm_error("stopped");
                None
            }
            Finish::Complete | Finish::Truncated => None,
        };
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let usage = outcome.usage.unwrap_or_default();
        metrics::llm_tokens(TokenKind::Prompt, u64::from(usage.prompt_tokens));
        metrics::llm_tokens(TokenKind::Completion, u64::from(usage.completion_tokens));
        let mut metadata = json!({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "stopped": stopped,
            "provider": state.llm.name(),
        });
        if truncated {
            metadata["truncated"] = json!(true);
        }
        if let Some(err) = &failure {
            metadata["incomplete"] = json!(true);
            metadata["error"] = json!(err.to_string());
        }
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
        let exchange = Exchange {
            user_message: self.user_message.clone(),
            ai_message,
            stopped,
            truncated,
        };
        Ok((exchange, failure.map(ServiceError::from)))
    }

    /// Streams the reply, publishing chunks, until it ends, fails, is stopped or reaches a
    /// bound: `LLM_MAX_REPLY_CHARS` (the rest is not read), `OPENAI_STREAM_IDLE_SECONDS`
    /// without a chunk, `OPENAI_MAX_REPLY_SECONDS` in all. Leaving the loop drops the stream,
    /// which cancels the upstream request.
    async fn stream(&mut self, request: CompletionRequest) -> ServiceResult<Outcome> {
        let limits = self.state.settings.llm.clone();
        let mut outcome = Outcome::default();
        let cancel = self.slot.cancel.clone();
        let deadline = tokio::time::Instant::now() + limits.max_reply;
        // Stopping before the first token cancels the request itself.
        let mut stream = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                outcome.finish = Finish::Stopped;
                return Ok(outcome);
            }
            stream = self.state.llm.stream(request) => stream?,
        };
        let mut chars = 0;
        loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    outcome.finish = Finish::Stopped;
                    break;
                }
                () = tokio::time::sleep_until(deadline) => {
                    outcome.finish = Finish::Failed(LlmError::Timeout);
                    break;
                }
                item = tokio::time::timeout(limits.stream_idle, stream.next()) => match item {
                    Ok(item) => item,
                    Err(_) => {
                        outcome.finish = Finish::Failed(LlmError::Timeout);
                        break;
                    }
                },
            };
            match item {
                Some(Ok(LlmEvent::Delta(mut delta))) => {
                    let room = limits.max_reply_chars - chars;
                    let length = delta.chars().count();
                    let full = length >= room;
                    if length > room {
                        let end = delta
                            .char_indices()
                            .nth(room)
                            .map_or(delta.len(), |(i, _)| i);
                        delta.truncate(end);
                    }
                    chars += length.min(room);
                    if !delta.is_empty() {
                        outcome.text.push_str(&delta);
                        self.publish_chunk(delta);
                    }
                    if full {
                        outcome.finish = Finish::Truncated;
                        break;
                    }
                }
                Some(Ok(LlmEvent::Usage(usage))) => outcome.usage = Some(usage),
                Some(Err(err)) => {
                    outcome.finish = Finish::Failed(err);
                    break;
                }
                None => break,
            }
        }
        Ok(outcome)
    }

    fn publish_chunk(&mut self, delta: String) {
        self.seq += 1;
        self.state.hub.publish(
            LiveEvent::ReplyChunk {
                conversation: self.conversation.id,
                generation: self.slot.generation.clone(),
                seq: self.seq,
                delta: delta.into(),
            },
            None,
        );
    }
}

fn chat_role(role: MessageRole) -> ChatRole {
    match role {
        MessageRole::User => ChatRole::User,
        MessageRole::Assistant => ChatRole::Assistant,
        MessageRole::System => ChatRole::System,
    }
}
