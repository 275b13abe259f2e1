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
    ConversationStatus, HistoryMessage, Message, MessageRole, NewMessage, Scope, TurnContext,
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
///
/// A conversation whose previous turn ran here (and whose owner has no tools) starts from
/// that turn's kept context, so nothing waits for the database before the LLM is asked: the
/// context is read alongside the request and the store, and a kept context found stale is
/// asked again from what was read, before any chunk goes out. Only a conversation already
/// found within the caller's scope is kept, and a conversation's owner never changes.
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
    // Without a kept context, the one read before the LLM is asked: the conversation, with
    // the turn's ownership check in the query, its history and whether its owner has tools.
    // It comes before the reply is claimed, so a reply that ends in between is not in the
    // history, as it had not reached the user when they sent this message.
    // Contexts with tools are never kept (see `keep_context`).
    let kept = state.contexts.get(request.scope, request.conversation);
    let (context, predicted) = match kept {
        Some(kept) => (kept, true),
        None => (Arc::new(read_context(state, &request).await?), false),
    };
    if context.conversation.status == ConversationStatus::Ended {
        return Err(ServiceError::Ended);
    }
    let conversation = context.conversation.id;
    state.hub.join(conversation, follower).await;
    let slot = state
        .hub
        .begin_generation(
            conversation,
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
        context,
        predicted,
        slot,
        seq: 0,
        deadline: tokio::time::Instant::now() + state.settings.llm.max_reply,
    };
    state.hub.tasks().spawn(generation.run());
    Ok(turn)
}

/// The conversation (within the request's scope), its newest messages and whether its owner
/// has tools, read for the turn.
async fn read_context(state: &AppState, request: &TurnRequest) -> ServiceResult<TurnContext> {
    state
        .store
        .turn_context(request.scope, request.conversation, HISTORY_WINDOW)
        .await?
        .ok_or(ServiceError::NotFound("Conversation"))
}

/// A reply being generated.
struct Generation {
    state: AppState,
    request: TurnRequest,
    /// The conversation, its newest messages before this turn (oldest first) and whether its
    /// owner has MCP servers to ask for tools.
    context: Arc<TurnContext>,
    /// Whether `context` is the one kept from the previous turn, still to be checked
    /// against a read.
    predicted: bool,
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
        let conversation = self.context.conversation.id;
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
                let owner = self.context.conversation.user_id;
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
                // What is kept no longer matches what is stored.
                self.state.contexts.forget(conversation);
                let failure = match &err {
                    ServiceError::Store(e) => {
                        tracing::error!(error = ?e, "storing a reply failed");
                        Failure::Internal
                    }
                    ServiceError::NotFound(_) => Failure::NotFound,
                    ServiceError::Ended => Failure::Ended,
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
        let started = Instant::now();
        let (user_message, mut prompt, first) = self.open().await?;
        let max_rounds = state.settings.mcp.max_tool_rounds;
        let mut outcome = Outcome::default();
        let mut first = Some(first);
        for round in 0..=max_rounds {
            let answer = match first.take() {
                Some(answer) => answer,
                None => ask(&self.state, &self.slot, prompt.for_round(round, max_rounds)).await,
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
            let messages = &mut prompt.request.messages;
            messages.push(ChatTurn::tool_request(said, calls.clone()));
            for call in calls {
                let result = self.call_tool(&prompt.tools, &call).await;
                outcome.tools.push(result.record);
                messages.push(ChatTurn::tool_result(call.id, result.text));
            }
        }
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
            model: Some(prompt.request.model),
            tokens_used: Some(i64::from(usage.total_tokens)),
            response_time: Some(elapsed_ms),
            message_metadata: Some(metadata),
        };
        let ai_message = state
            .store
            .add_message(self.request.scope, self.context.conversation.id, &reply)
            .await?
            .ok_or(ServiceError::NotFound("Conversation"))?;
        self.keep_context(&user_message, &ai_message);
        let exchange = Exchange {
            user_message,
            ai_message,
            stopped,
            truncated,
        };
        Ok((exchange, failure.map(ServiceError::from)))
    }

    /// What the LLM is asked first: the context's history (the stored system message is sent
    /// once, first, by the context builder), the user's message, and the owner's tools.
    async fn prompt(&self) -> Prompt {
        let state = &self.state;
        let conversation = &self.context.conversation;
        let system_message = conversation.system_message.as_deref();
        let turns: Vec<ChatTurn> = self
            .context
            .history
            .iter()
            .filter(|m| {
                !(m.role == MessageRole::System && Some(m.content.as_str()) == system_message)
            })
            .map(|m| ChatTurn::new(chat_role(m.role), m.content.clone()))
            .chain([ChatTurn::new(ChatRole::User, self.request.content.clone())])
            .collect();
        let model = conversation
            .model
            .clone()
            .unwrap_or_else(|| state.settings.llm.model.clone());
        let messages = build_context(
            system_message,
            turns,
            state.settings.llm.context_token_budget,
        );
        let tools = match self.context.has_tools {
            true => TurnTools::for_turn(state, conversation.user_id, &self.request).await,
            false => TurnTools::default(),
        };
        Prompt {
            request: CompletionRequest {
                model,
                messages,
                tools: tools.specs().to_vec(),
            },
            tools,
        }
    }

    /// Stores the user's message and asks the LLM at once, so the disk's flush and the
    /// LLM's first token overlap; a predicted context is read meanwhile. Nothing of the
    /// answer is read before the message is stored and the context is known to be right: a
    /// stale one drops (cancels) the request and asks again from what was read, and a failure
    /// to store drops it and ends the turn.
    async fn open(&mut self) -> ServiceResult<(Message, Prompt, Answer)> {
        let max_rounds = self.state.settings.mcp.max_tool_rounds;
        let mut prompt = self.prompt().await;
        let mut first = Box::pin(ask(
            &self.state,
            &self.slot,
            prompt.for_round(0, max_rounds),
        ));
        let (stored, read, answer) = {
            let (scope, conversation) = (self.request.scope, self.context.conversation.id);
            let new = NewMessage::text(MessageRole::User, self.request.content.clone());
            let store = self.state.store.add_turn_message(scope, conversation, &new);
            let check = async {
                match self.predicted {
                    true => Some(read_context(&self.state, &self.request).await),
                    false => None,
                }
            };
            let settled = async { tokio::join!(store, check) };
            tokio::pin!(settled);
            let mut answer = None;
            loop {
                tokio::select! {
                    (stored, read) = &mut settled => break (stored, read, answer),
                    asked = &mut first, if answer.is_none() => answer = Some(asked),
                }
            }
        };
        let Some(message) = stored? else {
            return Err(self.not_stored().await);
        };
        if let Some(read) = read {
            let read = without_message(read?, message.id);
            if !asks_the_same(&self.context, &read) {
                tracing::debug!("the kept context was stale; asking again");
                drop((first, answer));
                self.context = Arc::new(read.context);
                let mut prompt = self.prompt().await;
                let answer = ask(&self.state, &self.slot, prompt.for_round(0, max_rounds)).await;
                return Ok((message, prompt, answer));
            }
        }
        let answer = match answer {
            Some(answer) => answer,
            None => first.as_mut().await,
        };
        drop(first);
        Ok((message, prompt, answer))
    }

    /// Why the user's message found no conversation to go into.
    async fn not_stored(&self) -> ServiceError {
        let conversation = self
            .state
            .store
            .conversation(self.request.scope, self.context.conversation.id)
            .await;
        match conversation {
            Ok(Some(c)) if c.status == ConversationStatus::Ended => ServiceError::Ended,
            Ok(_) => ServiceError::NotFound("Conversation"),
            Err(err) => err.into(),
        }
    }

    /// Keeps the context the next turn starts from: this one's, with the exchange.
    fn keep_context(&self, user_message: &Message, reply: &Message) {
        if self.context.has_tools {
            // Listing the tools reads the database anyway; nothing is predicted, and a context
            // kept before the owner had tools is stale.
            self.state.contexts.forget(self.context.conversation.id);
            return;
        }
        let mut next = TurnContext::clone(&self.context);
        next.history
            .extend([user_message, reply].map(|m| HistoryMessage {
                id: m.id,
                role: m.role,
                content: m.content.clone(),
            }));
        let excess = next.history.len().saturating_sub(HISTORY_WINDOW as usize);
        next.history.drain(..excess);
        self.state.contexts.put(next);
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
                conversation: self.context.conversation.id,
                generation: self.slot.generation.clone(),
                name: call.name.clone(),
                arguments: Arc::new(arguments.clone()),
            },
            None,
        );
        let result = tools.call(&call.name, arguments).await;
        self.state.hub.publish(
            LiveEvent::ToolResult {
                conversation: self.context.conversation.id,
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
                conversation: self.context.conversation.id,
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

/// What the LLM answered: its stream, `Ok(None)` when the reply was stopped before it
/// answered, or its failure.
type Answer = Result<Option<LlmStream>, LlmError>;

/// Asks the LLM unless, or until, the reply is stopped.
async fn ask(state: &AppState, slot: &GenerationSlot, request: &CompletionRequest) -> Answer {
    let cancel = slot.cancel.clone();
    tokio::select! {
        biased;
        () = cancel.cancelled() => Ok(None),
        stream = state.llm.stream(request) => stream.map(Some),
    }
}

/// What the LLM is asked in each round.
struct Prompt {
    /// The model, the conversation so far with this turn's tool calls and results, and the
    /// tools offered.
    request: CompletionRequest,
    /// The tools to call.
    tools: TurnTools,
}

impl Prompt {
    /// The request of a round; the last round offers no tools, so the model has to answer.
    fn for_round(&mut self, round: usize, max_rounds: usize) -> &CompletionRequest {
        if round >= max_rounds {
            self.request.tools.clear();
        }
        &self.request
    }
}

/// A context read while the turn's own message was being stored.
struct ReadContext {
    context: TurnContext,
    /// Whether the read saw the turn's own message (now taken out of its history).
    saw_own: bool,
}

/// Takes the turn's own message out of a context read alongside its store.
fn without_message(mut context: TurnContext, own: i64) -> ReadContext {
    let before = context.history.len();
    context.history.retain(|m| m.id != own);
    ReadContext {
        saw_own: context.history.len() < before,
        context,
    }
}

/// Whether a turn asked from `kept` asked what it would have from `read`: the same model,
/// system message and tools, and the same messages, but for old ones that the turn's own
/// message pushed out of the read's window.
fn asks_the_same(kept: &TurnContext, read: &ReadContext) -> bool {
    let (kept_history, read_history) = (&kept.history, &read.context.history);
    let pushed_out = kept_history.len().checked_sub(read_history.len());
    kept.conversation.model == read.context.conversation.model
        && kept.conversation.system_message == read.context.conversation.system_message
        && kept.has_tools == read.context.has_tools
        && pushed_out.is_some_and(|n| n <= usize::from(read.saw_own))
        && kept_history.ends_with(read_history)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Conversation;

    fn context(ids: &[i64]) -> TurnContext {
        TurnContext {
            conversation: Conversation::for_tests(1, Some(1)),
            history: ids
                .iter()
                .map(|&id| HistoryMessage {
                    id,
                    role: MessageRole::User,
                    content: format!("m{id}"),
                })
                .collect(),
            has_tools: false,
        }
    }

    fn read(ids: &[i64], own: i64) -> ReadContext {
        without_message(context(ids), own)
    }

    #[test]
    fn a_kept_context_is_right_when_the_read_agrees() {
        let kept = context(&[1, 2, 3]);
        // The read did not see the turn's own message (9), or saw it.
        assert!(asks_the_same(&kept, &read(&[1, 2, 3], 9)));
        assert!(asks_the_same(&kept, &read(&[1, 2, 3, 9], 9)));
        // At the window's edge the own message pushed the oldest one out of the read.
        assert!(asks_the_same(&kept, &read(&[2, 3, 9], 9)));
    }

    #[test]
    fn a_kept_context_is_stale_when_anything_asked_differs() {
        let kept = context(&[1, 2, 3]);
        // A message stored elsewhere, before or after the kept ones.
        assert!(!asks_the_same(&kept, &read(&[1, 2, 3, 4], 9)));
        assert!(!asks_the_same(&kept, &read(&[1, 2, 3, 4, 9], 9)));
        // Messages gone, or pushed out without the own message to push them.
        assert!(!asks_the_same(&kept, &read(&[2, 3], 9)));
        assert!(!asks_the_same(&kept, &read(&[], 9)));
        // The same keys with another text.
        let mut changed = read(&[1, 2, 3], 9);
        changed.context.history[1].content = "edited".to_owned();
        assert!(!asks_the_same(&kept, &changed));
        // The conversation's model, system message or the owner's tools.
        let mut other = read(&[1, 2, 3], 9);
        other.context.conversation.model = Some("other".to_owned());
        assert!(!asks_the_same(&kept, &other));
        let mut other = read(&[1, 2, 3], 9);
        other.context.conversation.system_message = Some("be brief".to_owned());
        assert!(!asks_the_same(&kept, &other));
        let mut other = read(&[1, 2, 3], 9);
        other.context.has_tools = true;
        assert!(!asks_the_same(&kept, &other));
    }
}
