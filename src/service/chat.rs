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

use super::tools::{ToolRecord, ToolResult, TurnTools};
use super::{ServiceError, ServiceResult};
use crate::chat::context::build_context;
use crate::chat::events::{Exchange, Failure, GenerationId, LiveEvent};
use crate::chat::hub::{Delivery, GenerationOwner, GenerationSlot, Member, SharedHub};
use crate::chat::llm::{
    ChatRole, ChatTurn, CompletionRequest, LlmError, LlmEvent, LlmStream, ToolCall, Usage,
};
use crate::config::Secret;
use crate::db::{
    Conversation, ConversationStatus, HistoryMessage, Message, MessageRole, NewMessage, Scope,
    TurnContext,
};
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
    /// The caller's token, for MCP servers allowed to receive it.
    pub user_token: Option<Secret>,
}

/// A started turn.
#[derive(Debug)]
pub struct Turn {
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
    /// A subscription to no conversation yet: [`start`] makes it follow the turn's.
    pub fn for_turn(state: &AppState) -> Self {
        let (member, queue) = state.hub.subscribe();
        Self::new(state, member, queue)
    }

    /// Who receives the events, to pass to [`start`].
    pub fn member(&self) -> &Member {
        &self.member
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

/// Checks the request and starts the turn in the background: the user's message is stored
/// while the LLM is already asked, and no chunk goes out before that message is durable (a
/// failure to store it cancels the request and ends the turn with an error). The turn's
/// events go to the conversation's members; `follower` joins them once the conversation is
/// known to be within the request's scope, before the reply starts, so it sees every event.
pub async fn start(
    state: &AppState,
    request: TurnRequest,
    follower: &Member,
) -> ServiceResult<Turn> {
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
    // The one read before the LLM is asked: the conversation, with the turn's ownership
    // check in the query, its history and whether its owner has tools. It comes before the
    // reply is claimed, so a reply that ends in between is not in the history, as it had not
    // reached the user when they sent this message.
    let TurnContext {
        conversation,
        history,
        has_tools,
    } = state
        .store
        .turn_context(request.scope, request.conversation, HISTORY_WINDOW)
        .await?
        .ok_or(ServiceError::NotFound("Conversation"))?;
    if conversation.status == ConversationStatus::Ended {
        return Err(ServiceError::Ended);
    }
    state.hub.join(conversation.id, follower).await;
    let slot = state
        .hub
        .begin_generation(
            conversation.id,
            request.owner,
            match request.owner {
                GenerationOwner::User(_) => state.settings.limits.max_generations_per_user,
                GenerationOwner::Anonymous => state.settings.limits.anon_max_generations,
            },
            request.generation.clone(),
        )
        .await?;
    let turn = Turn {
        generation: request.generation.clone(),
    };
    let generation = Generation {
        state: state.clone(),
        request,
        conversation,
        history,
        has_tools,
        slot,
        seq: 0,
        deadline: tokio::time::Instant::now() + state.settings.llm.max_reply,
    };
    state.hub.tasks().spawn(generation.run());
    Ok(turn)
}

/// A reply being generated.
struct Generation {
    state: AppState,
    request: TurnRequest,
    conversation: Conversation,
    /// The conversation's newest messages when the turn started, oldest first.
    history: Vec<HistoryMessage>,
    /// Whether the owner has MCP servers to ask for tools.
    has_tools: bool,
    slot: GenerationSlot,
    /// Chunks published so far.
    seq: u64,
    /// When the reply must have ended (`OPENAI_MAX_REPLY_SECONDS`).
    deadline: tokio::time::Instant,
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

/// The text generated so far, over every round, and how the reply ended.
#[derive(Default)]
struct Outcome {
    text: String,
    /// Characters of `text`, against `LLM_MAX_REPLY_CHARS`.
    chars: usize,
    /// What the model said in the current round (sent back with its tool calls).
    round_text: String,
    /// Usage of every finished round, added up.
    usage: Usage,
    /// Usage reported in the current round.
    round_usage: Usage,
    /// The tools called.
    tools: Vec<ToolRecord>,
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
        // Free the claims first, everywhere, so a client that sends again on the answer is
        // not refused.
        let Generation { state, slot, .. } = self;
        slot.release().await;
        state.hub.publish(event, None);
    }

    /// Generates and stores the reply. A reply cut by an LLM failure after some text is
    /// stored marked incomplete, and the failure comes with it.
    async fn generate(&mut self) -> ServiceResult<(Exchange, Option<ServiceError>)> {
        let state = self.state.clone();
        let history = std::mem::take(&mut self.history);
        // The conversation's system message is stored as its first message too; it is sent
        // once, first, by the context builder.
        let system_message = self.conversation.system_message.as_deref();
        let turns: Vec<ChatTurn> = history
            .into_iter()
            .filter(|m| {
                !(m.role == MessageRole::System && Some(m.content.as_str()) == system_message)
            })
            .map(|m| ChatTurn::new(chat_role(m.role), m.content))
            .chain([ChatTurn::new(ChatRole::User, self.request.content.clone())])
            .collect();
        let model = self
            .conversation
            .model
            .clone()
            .unwrap_or_else(|| state.settings.llm.model.clone());
        let mut messages = build_context(
            system_message,
            &turns,
            state.settings.llm.context_token_budget,
        );
        let tools = match self.has_tools {
            true => TurnTools::for_turn(&state, self.conversation.user_id, &self.request).await,
            false => TurnTools::default(),
        };
        let max_rounds = state.settings.mcp.max_tool_rounds;
        let started = Instant::now();
        let mut outcome = Outcome::default();
        let mut user_message = None;
        for round in 0..=max_rounds {
            // The last round offers no tools, so the model has to answer.
            let request = CompletionRequest {
                model: model.clone(),
                messages: messages.clone(),
                tools: match round < max_rounds {
                    true => tools.specs().to_vec(),
                    false => Vec::new(),
                },
            };
            let answer = match user_message {
                None => {
                    let (stored, answer) = self.store_and_ask(request).await?;
                    user_message = Some(stored);
                    answer
                }
                Some(_) => self.ask(request).await,
            };
            let calls = match answer {
                Ok(Some(stream)) => self.read(stream, &mut outcome).await,
                Ok(None) => {
                    outcome.finish = Finish::Stopped;
                    None
                }
                Err(err) => {
                    outcome.finish = Finish::Failed(err);
                    None
                }
            };
            // Tools were not offered in the last round: calls asked for anyway are ignored.
            let Some(calls) = calls.filter(|_| round < max_rounds) else {
                break;
            };
            let said = std::mem::take(&mut outcome.round_text);
            messages.push(ChatTurn::tool_request(said, calls.clone()));
            for call in calls {
                let result = self.call_tool(&tools, &call).await;
                outcome.tools.push(result.record);
                messages.push(ChatTurn::tool_result(call.id, result.text));
            }
        }
        let user_message = user_message.expect("the first round stores the user message");
        metrics::llm_request(started.elapsed());
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
        let usage = outcome.usage;
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
        if !outcome.tools.is_empty() {
            metadata["mcp_tool_used"] = json!(true);
            metadata["tool_calls"] = json!(outcome.tools);
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
            user_message,
            ai_message,
            stopped,
            truncated,
        };
        Ok((exchange, failure.map(ServiceError::from)))
    }

    /// Stores the user's message and asks the LLM at once, so the disk's flush and the
    /// LLM's first token overlap. Nothing of the answer is read before the message is stored;
    /// a failure to store it drops (cancels) the request. `Ok(None)` from the LLM: stopped
    /// before it answered.
    async fn store_and_ask(
        &self,
        request: CompletionRequest,
    ) -> ServiceResult<(Message, Result<Option<LlmStream>, LlmError>)> {
        let new = NewMessage::text(MessageRole::User, self.request.content.clone());
        let store = self
            .state
            .store
            .add_message(self.request.scope, self.conversation.id, &new);
        let cancel = self.slot.cancel.clone();
        let ask = async {
            tokio::select! {
                biased;
                () = cancel.cancelled() => Ok(None),
                stream = self.state.llm.stream(request) => stream.map(Some),
            }
        };
        tokio::pin!(store, ask);
        let mut answer = None;
        let message = loop {
            tokio::select! {
                stored = &mut store => {
                    break stored?.ok_or(ServiceError::NotFound("Conversation"))?;
                }
                asked = &mut ask, if answer.is_none() => answer = Some(asked),
            }
        };
        let answer = match answer {
            Some(answer) => answer,
            None => ask.await,
        };
        Ok((message, answer))
    }

    /// Asks the LLM for a later round; `Ok(None)`: stopped before it answered.
    async fn ask(&self, request: CompletionRequest) -> Result<Option<LlmStream>, LlmError> {
        let cancel = self.slot.cancel.clone();
        tokio::select! {
            biased;
            () = cancel.cancelled() => Ok(None),
            stream = self.state.llm.stream(request) => stream.map(Some),
        }
    }

    /// Reads one round of the reply into `outcome`, publishing chunks, until it ends, fails,
    /// is stopped or reaches a bound: `LLM_MAX_REPLY_CHARS` (the rest is not read),
    /// `OPENAI_STREAM_IDLE_SECONDS` without a chunk, `OPENAI_MAX_REPLY_SECONDS` in all.
    /// Leaving the loop drops the stream, which cancels the upstream request. Returns the tool
    /// calls the model asked for, when the round ended with some.
    async fn read(
        &mut self,
        mut stream: LlmStream,
        outcome: &mut Outcome,
    ) -> Option<Vec<ToolCall>> {
        let limits = self.state.settings.llm.clone();
        let cancel = self.slot.cancel.clone();
        let mut calls = None;
        loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    outcome.finish = Finish::Stopped;
                    return None;
                }
                () = tokio::time::sleep_until(self.deadline) => {
                    outcome.finish = Finish::Failed(LlmError::Timeout);
                    return None;
                }
                item = tokio::time::timeout(limits.stream_idle, stream.next()) => match item {
                    Ok(item) => item,
                    Err(_) => {
                        outcome.finish = Finish::Failed(LlmError::Timeout);
                        return None;
                    }
                },
            };
            match item {
                Some(Ok(LlmEvent::Delta(mut delta))) => {
                    let room = limits.max_reply_chars - outcome.chars;
                    let length = delta.chars().count();
                    let full = length >= room;
                    if length > room {
                        let end = delta
                            .char_indices()
                            .nth(room)
                            .map_or(delta.len(), |(i, _)| i);
                        delta.truncate(end);
                    }
                    outcome.chars += length.min(room);
                    if !delta.is_empty() {
                        outcome.text.push_str(&delta);
                        outcome.round_text.push_str(&delta);
                        self.publish_chunk(delta);
                    }
                    if full {
                        outcome.finish = Finish::Truncated;
                        return None;
                    }
                }
                Some(Ok(LlmEvent::Usage(usage))) => outcome.round_usage = usage,
                Some(Ok(LlmEvent::ToolCalls(asked))) => calls = Some(asked),
                Some(Err(err)) => {
                    outcome.finish = Finish::Failed(err);
                    return None;
                }
                None => break,
            }
        }
        // Every round's tokens count.
        let usage = std::mem::take(&mut outcome.round_usage);
        outcome.usage.prompt_tokens += usage.prompt_tokens;
        outcome.usage.completion_tokens += usage.completion_tokens;
        outcome.usage.total_tokens += usage.total_tokens;
        calls
    }

    /// Calls one tool the model asked for, telling the conversation before and after. A
    /// failing tool never fails the turn: the model is told it failed.
    async fn call_tool(&self, tools: &TurnTools, call: &ToolCall) -> ToolResult {
        let arguments = serde_json::from_str(&call.arguments)
            .unwrap_or_else(|_| serde_json::Value::String(call.arguments.clone()));
        self.state.hub.publish(
            LiveEvent::ToolCall {
                conversation: self.conversation.id,
                generation: self.slot.generation.clone(),
                name: call.name.clone(),
                arguments: Arc::new(arguments.clone()),
            },
            None,
        );
        let result = tools.call(&call.name, arguments).await;
        self.state.hub.publish(
            LiveEvent::ToolResult {
                conversation: self.conversation.id,
                generation: self.slot.generation.clone(),
                name: call.name.clone(),
                ok: result.record.ok,
            },
            None,
        );
        result
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
