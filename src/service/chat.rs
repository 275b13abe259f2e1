//! One chat turn: check the request, read the conversation, claim the reply, store the
//! user's message while the LLM is asked, stream the answer in a background task, store it.
//! A turn continues a path of the conversation's tree: a new message follows the active
//! leaf, a regenerated reply goes beside an earlier one (no new user message), an edited
//! message beside the original; the LLM sees exactly the path from the root to the parent.
//! The turn's typed [`LiveEvent`]s (started, chunks numbered from 1, done or stopped,
//! failed) come back to the caller on its own [`ReplyStream`], and go through the hub to the
//! conversation's other members, wherever they are connected; adapters render them
//! (WebSocket frames, SSE events, a JSON answer). The task never waits for a consumer: a
//! reply is generated and stored at the LLM's pace even if every client has gone.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use futures::StreamExt;
use serde_json::json;

use super::reply::{self, ReplySender, ReplyStream};
use super::titles;
use super::tools::{ToolRecord, ToolResult, TurnTools};
use super::usage::{self, Account, CallKind, LlmCall};
use super::validate::check_text;
use super::{ServiceError, ServiceResult};
use crate::chat::context::build_context;
use crate::chat::events::{
    new_generation_id, Exchange, Failure, GenerationId, LiveEvent, TurnKind,
};
use crate::chat::hub::{
    ConnectionId, Deliveries, Delivery, GenerationOwner, GenerationSlot, Hub, Member, MEMBER_QUEUE,
};
use crate::chat::llm::tokens::estimate_usage;
use crate::chat::llm::{
    ChatRole, ChatTurn, CompletionRequest, LlmError, LlmEvent, LlmStream, Purpose, ToolCall, Usage,
};
use crate::config::Secret;
use crate::db::{
    ConversationStatus, Message, MessageRef, MessageRole, NewMessage, PathEnd, Scope, TurnContext,
};
use crate::metrics;
use crate::state::AppState;

/// How many of the newest messages of the turn's path are read to build the context before
/// trimming.
const HISTORY_WINDOW: i64 = 200;

/// Where a turn goes in the conversation's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnAction {
    /// A new user message below the active leaf, and a reply to it.
    Send,
    /// A new reply beside this assistant reply (`None`: the newest on the active path),
    /// answering the same message; no user message is stored.
    Regenerate(Option<i64>),
    /// A new user message beside this user message, and a reply to it.
    Edit(i64),
}

impl TurnAction {
    /// The kind of answer the turn gives.
    pub fn kind(self) -> TurnKind {
        match self {
            Self::Send => TurnKind::Send,
            Self::Regenerate(_) => TurnKind::Regenerate,
            Self::Edit(_) => TurnKind::Edit,
        }
    }
}

/// What to reply to.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    /// The caller's scope; the conversation must be within it.
    pub scope: Scope,
    /// Conversation key.
    pub conversation: i64,
    /// Where the turn goes.
    pub action: TurnAction,
    /// The user's message (empty for a regenerated reply).
    pub content: String,
    /// Who the generation counts against.
    pub owner: GenerationOwner,
    /// Who the turn's messages and tokens count against (rate limit, budgets, ledger).
    pub account: Account,
    /// The caller's token, for MCP servers allowed to receive it.
    pub user_token: Option<Secret>,
}

/// A started turn: its reply's id and the caller's own stream of it.
pub struct Turn {
    /// Conversation key.
    pub conversation: i64,
    /// The reply's id.
    pub generation: GenerationId,
    /// The reply's events, for the caller alone.
    pub events: ReplyStream,
}

/// A consumer of a conversation's live events that is not a WebSocket connection (an SSE
/// stream of a resumed reply). Leaves the conversation when dropped.
pub struct Subscription {
    hub: Hub,
    member: Member,
    queue: Deliveries,
    pending: VecDeque<LiveEvent>,
}

impl Subscription {
    /// Follows a conversation and replays its latest reply after `after_seq`; `None` when
    /// there is no reply to resume.
    pub async fn resume(state: &AppState, conversation: i64, after_seq: u64) -> Option<Self> {
        let (member, queue) = state.hub.live.connect(false);
        let resumed = state
            .hub
            .live
            .resume(conversation, &member, after_seq)
            .await;
        let subscription = Self::new(state, member, queue);
        resumed.map(|_| subscription)
    }

    fn new(state: &AppState, member: Member, queue: Deliveries) -> Self {
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
            let delivery = poll_fn(|cx| {
                if self.queue.poll_failed(cx).is_ready() {
                    return Poll::Ready(None);
                }
                self.queue.poll_recv(cx)
            })
            .await?;
            match delivery {
                Delivery::Event(event) => return Some(Arc::unwrap_or_clone(event)),
                Delivery::Replay(events) => self.pending.extend(events),
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.live.disconnect(self.member.id);
    }
}

/// Checks the request, reads the conversation (within the request's scope, with its
/// history and whether its owner has tools), claims its reply and starts the turn in the
/// background. The reply's events come back on the turn's own stream; the conversation's
/// other members get them through the hub. `follower` (a WebSocket connection) then follows
/// the conversation, for what others do on it, and is left out of this reply's broadcast.
pub async fn start(
    state: &AppState,
    request: TurnRequest,
    follower: Option<&Member>,
) -> ServiceResult<Turn> {
    launch(state, request, follower, None).await
}

/// Starts a turn that asks the LLM `prompt` as given (a client of the OpenAI-compatible API
/// sends the whole context itself): no stored history is added, the owner's MCP tools are not
/// offered, and the tool calls the model asks for (of the client's own tools) are stored with
/// the reply for the client to make. The turn is otherwise the same: `request.content` (the
/// prompt's last user message) is stored, then the reply, within the same bounds.
pub async fn start_with_prompt(
    state: &AppState,
    request: TurnRequest,
    prompt: CompletionRequest,
) -> ServiceResult<Turn> {
    launch(state, request, None, Some(prompt)).await
}

async fn launch(
    state: &AppState,
    request: TurnRequest,
    follower: Option<&Member>,
    given: Option<CompletionRequest>,
) -> ServiceResult<Turn> {
    // A regenerated reply stores no user message: there is no content to check.
    if !matches!(request.action, TurnAction::Regenerate(_)) {
        check_content(state, &request.content)?;
    }
    // The read comes before the reply is claimed, so a reply that ends in between is not
    // in the history, as it had not reached the user when they sent this message.
    // A given prompt is the whole context: no history to read.
    let history = if given.is_some() { 0 } else { HISTORY_WINDOW };
    let context = read_context(state, &request, history).await?;
    if context.conversation.status == ConversationStatus::Ended {
        return Err(ServiceError::Ended);
    }
    // Every kind of turn is admitted here, before anything of it is stored or asked; a call
    // of the OpenAI-compatible API (a given prompt) was admitted before its conversation was
    // made.
    if given.is_none() {
        usage::admit(state, request.account).await?;
    }
    let conversation = context.conversation.id;
    if let Some(follower) = follower {
        state.hub.live.join(conversation, follower).await;
    }
    let limit = match request.owner {
        GenerationOwner::User(_) => state.settings.limits.max_generations_per_user,
        GenerationOwner::Anonymous => state.settings.limits.anon_max_generations,
    };
    let generation = new_generation_id();
    let slot = state
        .hub
        .generations
        .begin(conversation, request.owner, limit, generation.clone())
        .await?;
    let (caller, events) = reply::channel(MEMBER_QUEUE);
    let task = Generation {
        state: state.clone(),
        request,
        context,
        slot,
        caller,
        except: follower.map(|f| f.id),
        seq: 0,
        deadline: tokio::time::Instant::now() + state.settings.llm.max_reply,
        given,
    };
    state.hub.tasks.spawn(task.run());
    Ok(Turn {
        conversation,
        generation,
        events,
    })
}

/// Checks a user's message before a turn stores it: not blank, at most `MAX_MESSAGE_CHARS`.
pub fn check_content(state: &AppState, content: &str) -> ServiceResult<()> {
    check_text(
        "content",
        content,
        1,
        state.settings.limits.max_message_chars,
    )
}

/// The conversation (within the request's scope), the newest messages of the path the turn
/// continues and whether its owner has tools, read for the turn. A regenerated or edited
/// message is read first: it must be of the conversation and of the right role. `history`
/// messages at most are read.
async fn read_context(
    state: &AppState,
    request: &TurnRequest,
    history: i64,
) -> ServiceResult<TurnContext> {
    let end = match request.action {
        TurnAction::Send => PathEnd::Active,
        TurnAction::Regenerate(which) => {
            let which = which.map_or(MessageRef::LastReply, MessageRef::Id);
            let reply = find_message(state, request, which).await?;
            if reply.role != MessageRole::Assistant {
                return Err(ServiceError::invalid(
                    "message_id",
                    "must name an assistant reply",
                ));
            }
            let Some(parent) = reply.parent_id else {
                return Err(ServiceError::invalid(
                    "message_id",
                    "names a reply that answers no message",
                ));
            };
            PathEnd::Message(Some(parent))
        }
        TurnAction::Edit(id) => {
            let message = find_message(state, request, MessageRef::Id(id)).await?;
            if message.role != MessageRole::User {
                return Err(ServiceError::invalid(
                    "message_id",
                    "must name a user message",
                ));
            }
            PathEnd::Message(message.parent_id)
        }
    };
    state
        .store
        .turn_context_at(request.scope, request.conversation, end, history)
        .await?
        .ok_or(ServiceError::NotFound("Conversation"))
}

/// A message of the request's conversation, within its scope.
async fn find_message(
    state: &AppState,
    request: &TurnRequest,
    which: MessageRef,
) -> ServiceResult<Message> {
    state
        .store
        .find_message(request.scope, request.conversation, which)
        .await?
        .ok_or(ServiceError::NotFound("Message"))
}

/// A reply being generated.
struct Generation {
    state: AppState,
    request: TurnRequest,
    /// The conversation, its newest messages before this turn (oldest first) and whether its
    /// owner has MCP servers to ask for tools.
    context: TurnContext,
    slot: GenerationSlot,
    /// The caller's own stream.
    caller: ReplySender,
    /// The caller's connection, which gets the reply on its own stream, not as a broadcast.
    except: Option<ConnectionId>,
    /// Chunks published so far.
    seq: u64,
    /// When the reply must have ended (`OPENAI_MAX_REPLY_SECONDS`).
    deadline: tokio::time::Instant,
    /// The prompt a client gave whole (see [`start_with_prompt`]).
    given: Option<CompletionRequest>,
}

/// How a reply's stream ended.
#[derive(Debug, Default)]
enum Finish {
    /// The LLM finished it.
    #[default]
    Complete,
    /// Someone stopped it.
    Stopped,
    /// It reached `LLM_MAX_REPLY_CHARS`, or the provider cut it at a bound of its own.
    Truncated,
    /// The LLM failed, or a time bound passed, after the stream started.
    Failed(LlmError),
    /// The service had to exit before the reply could finish.
    Interrupted,
}

/// The text generated so far, over every round, and how the reply ended.
#[derive(Default)]
struct Outcome {
    text: String,
    /// Characters of `text`, against `LLM_MAX_REPLY_CHARS`.
    chars: usize,
    /// What the model said in the current round (sent back with its tool calls).
    round_text: String,
    /// Usage of every round, added up.
    usage: Usage,
    /// Usage reported in the current round.
    round_usage: Option<Usage>,
    /// Each round's call, for the usage ledger.
    calls: Vec<LlmCall>,
    /// The tools called.
    tools: Vec<ToolRecord>,
    /// Calls of a client's own tools, which the client makes (a given prompt's).
    client_calls: Vec<ToolCall>,
    /// Why the model stopped, as the provider said.
    finish_reason: Option<String>,
    finish: Finish,
}

impl Outcome {
    /// Ends a round that had a stream: its usage as the provider reported it, or, for a
    /// round cut before the report, estimated from the request and the text it gave. Every
    /// round's tokens count.
    fn close_round(&mut self, request: &CompletionRequest, round: usize) {
        let usage = self
            .round_usage
            .take()
            .unwrap_or_else(|| estimate_usage(&request.messages, self.round_text.chars().count()));
        self.usage.prompt_tokens = self.usage.prompt_tokens.saturating_add(usage.prompt_tokens);
        self.usage.completion_tokens = self
            .usage
            .completion_tokens
            .saturating_add(usage.completion_tokens);
        self.usage.total_tokens = self.usage.total_tokens.saturating_add(usage.total_tokens);
        self.usage.estimated |= usage.estimated;
        self.calls.push(LlmCall {
            model: request.model.clone(),
            kind: match round {
                0 => CallKind::Reply,
                _ => CallKind::Tool,
            },
            usage,
        });
    }
}

impl Generation {
    async fn run(mut self) {
        let _in_flight = metrics::llm_generation_started();
        let conversation = self.context.conversation.id;
        let generation = self.slot.generation.clone();
        self.emit(LiveEvent::ReplyStarted {
            conversation,
            generation: generation.clone(),
        });
        let event = match self.generate().await {
            Ok((exchange, failure)) => {
                // One event per exchange, for the reply, as the platform counts them.
                let owner = self.context.conversation.user_id;
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
                            failure: match err {
                                ServiceError::Interrupted => Failure::Interrupted,
                                _ => Failure::Llm,
                            },
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
                    ServiceError::Ended => Failure::Ended,
                    ServiceError::Interrupted => Failure::Interrupted,
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
        let Generation {
            state,
            context,
            slot,
            caller,
            except,
            ..
        } = self;
        if let LiveEvent::ReplyFailed { partial: None, .. } = &event {
            // Nothing of the reply was stored: nothing is left to finish.
            if let Err(err) = state.store.forget_reply(&slot.generation).await {
                tracing::warn!(error = %err, "could not forget a failed reply's record");
            }
        }
        let titled = match &event {
            LiveEvent::ReplyDone { exchange, .. }
                if titles::wanted(&state.settings.titles, &context) =>
            {
                Some(exchange.clone())
            }
            _ => None,
        };
        slot.release().await;
        state.hub.live.publish(event.clone(), except);
        caller.end(event);
        // After the answer, so the title never delays it.
        if let Some(exchange) = titled {
            titles::spawn(&state, &context.conversation, &exchange);
        }
    }

    /// Sends a progress event to the caller and the conversation's other members.
    fn emit(&mut self, event: LiveEvent) {
        self.caller.progress(&event);
        self.state.hub.live.publish(event, self.except);
    }

    /// Generates and stores the reply. A reply cut by an LLM failure after some text is
    /// stored marked incomplete, and the failure comes with it.
    async fn generate(&mut self) -> ServiceResult<(Exchange, Option<ServiceError>)> {
        let state = self.state.clone();
        let started = Instant::now();
        let (user_message, mut prompt, first) = self.open().await?;
        let max_rounds = state.settings.mcp.max_tool_rounds;
        let given = self.given.is_some();
        let mut outcome = Outcome::default();
        let mut first = Some(first);
        for round in 0..=max_rounds {
            let answer = match first.take() {
                Some(answer) => answer,
                None => ask(&self.state, &self.slot, prompt.for_round(round, max_rounds)).await,
            };
            let calls = match answer {
                Ok(Some(stream)) => {
                    let calls = self.read(stream, &mut outcome).await;
                    outcome.close_round(&prompt.request, round);
                    calls
                }
                Ok(None) => {
                    outcome.finish = match self.state.hub.interrupt.is_cancelled() {
                        true => Finish::Interrupted,
                        false => Finish::Stopped,
                    };
                    None
                }
                Err(err) => {
                    outcome.finish = Finish::Failed(err);
                    None
                }
            };
            if given {
                // The client's own tools: their calls go back to it, to make.
                outcome.client_calls = calls.unwrap_or_default();
                break;
            }
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
        // Every call made is recorded, whatever became of the reply.
        let mut calls = std::mem::take(&mut outcome.calls);
        if self.given.is_some() {
            for call in calls.iter_mut().filter(|c| c.kind == CallKind::Reply) {
                call.kind = CallKind::Api;
            }
        }
        let (payer, conversation) = (self.request.account.user(), self.context.conversation.id);
        let record = usage::record(&state, payer, Some(conversation), &calls);
        let stopped = matches!(outcome.finish, Finish::Stopped);
        let truncated = matches!(outcome.finish, Finish::Truncated);
        let failure = match outcome.finish {
            Finish::Failed(err) if outcome.text.is_empty() => {
                metrics::llm_error(err.code());
                record.await;
                return Err(err.into());
            }
            Finish::Failed(err) => {
                metrics::llm_error(err.code());
                Some(err.into())
            }
            Finish::Interrupted => {
                metrics::llm_error("interrupted");
                if outcome.text.is_empty() {
                    record.await;
                    return Err(ServiceError::Interrupted);
                }
                Some(ServiceError::Interrupted)
            }
            Finish::Stopped => {
                metrics::llm_error("stopped");
                None
            }
            Finish::Complete | Finish::Truncated => None,
        };
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let usage = outcome.usage;
        let mut metadata = json!({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "stopped": stopped,
            "provider": state.llm.name(),
        });
        if truncated {
            metadata["truncated"] = json!(true);
        }
        if usage.estimated {
            metadata["usage_estimated"] = json!(true);
        }
        if !outcome.tools.is_empty() {
            metadata["mcp_tool_used"] = json!(true);
            metadata["tool_calls"] = json!(outcome.tools);
        }
        if !outcome.client_calls.is_empty() {
            metadata["tool_calls"] = wire_tool_calls(&outcome.client_calls);
        }
        if let Some(reason) = &outcome.finish_reason {
            metadata["finish_reason"] = json!(reason);
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
        let scope = self.request.scope;
        let finish = state
            .store
            .finish_reply(scope, conversation, &self.slot.generation, &reply);
        // Both are writes: with SQLite's group commit they may share one flush.
        let ((), stored) = tokio::join!(record, finish);
        let ai_message = stored?.ok_or(ServiceError::NotFound("Conversation"))?;
        let exchange = Exchange {
            user_message,
            ai_message,
            stopped,
            truncated,
            kind: self.request.action.kind(),
        };
        Ok((exchange, failure))
    }

    /// What the LLM is asked first: the context's history (the stored system message is sent
    /// once, first, by the context builder), the user's message (none when a reply is
    /// regenerated: the history ends with what it answers), and the owner's tools.
    async fn prompt(&self) -> Prompt {
        if let Some(given) = &self.given {
            return Prompt {
                request: given.clone(),
                tools: TurnTools::default(),
                client_tools: true,
            };
        }
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
            .chain(
                self.user_message()
                    .map(|m| ChatTurn::new(ChatRole::User, m.content)),
            )
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
            true => {
                let token = self.request.user_token.as_ref();
                TurnTools::for_turn(state, conversation.user_id, token).await
            }
            false => TurnTools::default(),
        };
        Prompt {
            request: CompletionRequest {
                model,
                messages,
                tools: tools.specs().to_vec(),
                max_tokens: None,
                purpose: Purpose::Reply,
                options: Default::default(),
            },
            tools,
            client_tools: false,
        }
    }

    /// Stores the user's message and asks the LLM at once, so the disk's flush and the
    /// LLM's first token overlap. Nothing of the answer is read before the message is
    /// stored: a failure to store it drops (cancels) the request and ends the turn.
    async fn open(&self) -> ServiceResult<(Message, Prompt, Answer)> {
        let max_rounds = self.state.settings.mcp.max_tool_rounds;
        let mut prompt = self.prompt().await;
        let (message, answer) = {
            let first = ask(&self.state, &self.slot, prompt.for_round(0, max_rounds));
            let (scope, conversation) = (self.request.scope, self.context.conversation.id);
            let new = self.user_message();
            let generation = &self.slot.generation;
            let parent = self.context.parent;
            let store =
                self.state
                    .store
                    .begin_reply(scope, conversation, parent, new.as_ref(), generation);
            tokio::pin!(first, store);
            let mut answer = None;
            let stored = loop {
                tokio::select! {
                    stored = &mut store => break stored,
                    asked = &mut first, if answer.is_none() => answer = Some(asked),
                }
            };
            let Some(message) = stored? else {
                return Err(self.not_stored().await);
            };
            let answer = match answer {
                Some(answer) => answer,
                None => first.await,
            };
            (message, answer)
        };
        Ok((message, prompt, answer))
    }

    /// The user message the turn stores; `None` when it regenerates a reply.
    fn user_message(&self) -> Option<NewMessage> {
        match self.request.action {
            TurnAction::Regenerate(_) => None,
            TurnAction::Send | TurnAction::Edit(_) => Some(NewMessage::text(
                MessageRole::User,
                self.request.content.clone(),
            )),
        }
    }

    /// Why the user's message found no place to go into: the conversation is gone or ended,
    /// or the message the turn follows was deleted with its branch.
    async fn not_stored(&self) -> ServiceError {
        let conversation = self
            .state
            .store
            .conversation(self.request.scope, self.context.conversation.id)
            .await;
        match conversation {
            Ok(Some(c)) if c.status == ConversationStatus::Ended => ServiceError::Ended,
            Ok(Some(_)) => ServiceError::NotFound("Message"),
            Ok(None) => ServiceError::NotFound("Conversation"),
            Err(err) => err.into(),
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
        let interrupt = self.state.hub.interrupt.clone();
        let mut calls = None;
        loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    outcome.finish = Finish::Stopped;
                    return None;
                }
                () = interrupt.cancelled() => {
                    outcome.finish = Finish::Interrupted;
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
                Some(Ok(LlmEvent::Usage(usage))) => outcome.round_usage = Some(usage),
                Some(Ok(LlmEvent::ToolCalls(asked))) => calls = Some(asked),
                Some(Ok(LlmEvent::Finished(reason))) => outcome.finish_reason = Some(reason),
                Some(Ok(LlmEvent::Truncated)) => {
                    outcome.finish = Finish::Truncated;
                    return None;
                }
                Some(Err(err)) => {
                    outcome.finish = Finish::Failed(err);
                    return None;
                }
                None => break,
            }
        }
        calls
    }

    /// Calls one tool the model asked for, telling the conversation before and after. A
    /// failing tool never fails the turn: the model is told it failed.
    async fn call_tool(&mut self, tools: &TurnTools, call: &ToolCall) -> ToolResult {
        let arguments = serde_json::from_str(&call.arguments)
            .unwrap_or_else(|_| serde_json::Value::String(call.arguments.clone()));
        self.emit(LiveEvent::ToolCall {
            conversation: self.context.conversation.id,
            generation: self.slot.generation.clone(),
            name: call.name.clone(),
            arguments: Arc::new(arguments.clone()),
        });
        let result = tools.call(&call.name, arguments).await;
        self.emit(LiveEvent::ToolResult {
            conversation: self.context.conversation.id,
            generation: self.slot.generation.clone(),
            name: call.name.clone(),
            ok: result.record.ok,
        });
        result
    }

    fn publish_chunk(&mut self, delta: String) {
        self.seq += 1;
        self.emit(LiveEvent::ReplyChunk {
            conversation: self.context.conversation.id,
            generation: self.slot.generation.clone(),
            seq: self.seq,
            delta: delta.into(),
        });
    }
}

/// Tool calls in OpenAI's wire form, as a reply's metadata keeps them.
pub fn wire_tool_calls(calls: &[ToolCall]) -> serde_json::Value {
    calls
        .iter()
        .map(|call| {
            json!({
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            })
        })
        .collect()
}

fn chat_role(role: MessageRole) -> ChatRole {
    match role {
        MessageRole::User => ChatRole::User,
        MessageRole::Assistant => ChatRole::Assistant,
        MessageRole::System => ChatRole::System,
    }
}

/// What the LLM answered: its stream, `Ok(None)` when the reply was stopped (or
/// interrupted) before it answered, or its failure.
type Answer = Result<Option<LlmStream>, LlmError>;

/// Asks the LLM unless, or until, the reply is stopped or the service interrupts it.
async fn ask(state: &AppState, slot: &GenerationSlot, request: &CompletionRequest) -> Answer {
    let cancel = slot.cancel.clone();
    tokio::select! {
        biased;
        () = cancel.cancelled() => Ok(None),
        () = state.hub.interrupt.cancelled() => Ok(None),
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
    /// The tools offered are a client's own (a given prompt's): offered in every round.
    client_tools: bool,
}

impl Prompt {
    /// The request of a round; the last round offers no tools, so the model has to answer.
    fn for_round(&mut self, round: usize, max_rounds: usize) -> &CompletionRequest {
        if round >= max_rounds && !self.client_tools {
            self.request.tools.clear();
        }
        &self.request
    }
}
