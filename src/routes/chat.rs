//! Chat over REST: `POST /conversations/{id}/chat` (JSON, or SSE), regenerating a reply and
//! editing a message (the same turn beside an earlier message), the SSE stream of the
//! current reply that a client resumes with `Last-Event-ID`, and stopping a reply.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{conversation_key, message_key};
use crate::auth::AuthUser;
use crate::chat::events::{Failure, GenerationId, LiveEvent};
use crate::chat::hub::GenerationOwner;
use crate::dto::{ExchangeOut, MessageOut, SseEvent};
use crate::error::{ApiError, ApiResult, ErrorBody, LimitRefusal};
use crate::extract::{ApiJson, ApiPath};
use crate::openapi::{AuthErrors, BodyErrors};
use crate::service::chat::{self as turn, Subscription, Turn, TurnAction, TurnRequest};
use crate::service::conversations;
use crate::service::reply::Lagged;
use crate::service::usage::{Account, Refusal};
use crate::service::{ServiceError, ServiceResult};
use crate::state::AppState;

/// Routes of this file.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(chat))
        .routes(routes!(regenerate))
        .routes(routes!(edit))
        .routes(routes!(stream))
        .routes(routes!(stop))
}

/// The user's message.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// Text; not blank, at most `MAX_MESSAGE_CHARS` characters.
    pub content: String,
}

/// The edited text of a user message.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EditRequest {
    /// Text; not blank, at most `MAX_MESSAGE_CHARS` characters.
    pub content: String,
}

/// Both stored messages of an exchange.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatResponse {
    /// Conversation's public ID.
    pub conversation_id: String,
    /// The stored user message.
    pub user_message: MessageOut,
    /// The stored assistant reply.
    pub ai_response: MessageOut,
}

/// Whether a reply was stopped.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stopped {
    /// `false` when no reply was being generated.
    pub stopped: bool,
}

/// Send a message and get the LLM's reply; both are stored. With
/// `Accept: text/event-stream` the reply streams as `chunk` events (ids are their `seq`),
/// then `done` (or `error`).
#[utoipa::path(post, path = "/conversations/{conversation_id}/chat", tag = "chat",
    security(("bearer" = [])), request_body = ChatRequest,
    params(("conversation_id" = String, Path)),
    responses((status = 200, description = "The stored exchange, or an SSE stream",
            content((ChatResponse = "application/json"), (SseEvent = "text/event-stream"))),
        (status = 404, description = "No such conversation", body = ErrorBody),
        (status = 409, description = "The conversation has ended, or is already generating a \
            reply", body = ErrorBody),
        (status = 429, description = "The user has `MAX_GENERATIONS_PER_USER` replies in \
            progress (`{detail}`), or a usage limit refused the turn: `Retry-After` (seconds) \
            and a `LimitRefusal` body (with `Accept: text/event-stream`, the same fields as \
            one `error` event); nothing was stored",
            headers(("Retry-After" = u64, description = "Seconds until the turn would be \
                admitted (usage limits only)")),
            content((LimitRefusal = "application/json"), (SseEvent = "text/event-stream"))),
        (status = 502, description = "The LLM provider failed", body = ErrorBody),
        (status = 503, description = "The service stopped before the reply was complete; \
            the part generated is stored marked incomplete", body = ErrorBody),
        AuthErrors, BodyErrors))]
async fn chat(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(conversation_id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ChatRequest>,
) -> ApiResult<Response> {
    let key = conversation_key(&state, &conversation_id)?;
    let turn = start(&state, &caller, key, TurnAction::Send, body.content).await;
    answer(state, &headers, &conversation_id, turn, key).await
}

/// Generate a new reply beside an assistant reply, answering the same message; it becomes
/// the active leaf, and the earlier reply stays as its sibling. Answers like `/chat` (JSON,
/// or SSE with `Accept: text/event-stream`); `user_message` is the message answered.
#[utoipa::path(post,
    path = "/conversations/{conversation_id}/messages/{message_id}/regenerate", tag = "chat",
    security(("bearer" = [])),
    params(("conversation_id" = String, Path),
        ("message_id" = String, Path, description = "An assistant reply of the conversation")),
    responses((status = 200, description = "The new reply with the message it answers, or an \
            SSE stream", content((ChatResponse = "application/json"),
            (SseEvent = "text/event-stream"))),
        (status = 404, description = "No such conversation or message", body = ErrorBody),
        (status = 409, description = "The conversation has ended, or is already generating a \
            reply", body = ErrorBody),
        (status = 422, description = "The message is not an assistant reply", body = ErrorBody),
        (status = 429, description = "The user has `MAX_GENERATIONS_PER_USER` replies in \
            progress (`{detail}`), or a usage limit refused the turn: `Retry-After` and a \
            `LimitRefusal` body (or one `error` event); nothing was stored",
            headers(("Retry-After" = u64, description = "Seconds until the turn would be \
                admitted (usage limits only)")),
            content((LimitRefusal = "application/json"), (SseEvent = "text/event-stream"))),
        (status = 502, description = "The LLM provider failed", body = ErrorBody),
        (status = 503, description = "The service stopped before the reply was complete",
            body = ErrorBody),
        AuthErrors))]
async fn regenerate(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((conversation_id, message_id)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let key = conversation_key(&state, &conversation_id)?;
    let action = TurnAction::Regenerate(Some(message_key(&state, &message_id)?));
    let turn = start(&state, &caller, key, action, String::new()).await;
    answer(state, &headers, &conversation_id, turn, key).await
}

/// Store an edited user message beside the original (which stays, with its branch) and
/// generate a reply to it; the reply becomes the active leaf. Answers like `/chat`.
#[utoipa::path(post,
    path = "/conversations/{conversation_id}/messages/{message_id}/edit", tag = "chat",
    security(("bearer" = [])), request_body = EditRequest,
    params(("conversation_id" = String, Path),
        ("message_id" = String, Path, description = "A user message of the conversation")),
    responses((status = 200, description = "The edited message and its reply, or an SSE \
            stream", content((ChatResponse = "application/json"),
            (SseEvent = "text/event-stream"))),
        (status = 404, description = "No such conversation or message", body = ErrorBody),
        (status = 409, description = "The conversation has ended, or is already generating a \
            reply", body = ErrorBody),
        (status = 429, description = "The user has `MAX_GENERATIONS_PER_USER` replies in \
            progress (`{detail}`), or a usage limit refused the turn: `Retry-After` and a \
            `LimitRefusal` body (or one `error` event); nothing was stored",
            headers(("Retry-After" = u64, description = "Seconds until the turn would be \
                admitted (usage limits only)")),
            content((LimitRefusal = "application/json"), (SseEvent = "text/event-stream"))),
        (status = 502, description = "The LLM provider failed", body = ErrorBody),
        (status = 503, description = "The service stopped before the reply was complete",
            body = ErrorBody),
        AuthErrors, BodyErrors))]
async fn edit(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((conversation_id, message_id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<EditRequest>,
) -> ApiResult<Response> {
    let key = conversation_key(&state, &conversation_id)?;
    let action = TurnAction::Edit(message_key(&state, &message_id)?);
    let turn = start(&state, &caller, key, action, body.content).await;
    answer(state, &headers, &conversation_id, turn, key).await
}

/// Starts the caller's turn on a conversation.
async fn start(
    state: &AppState,
    caller: &AuthUser,
    key: i64,
    action: TurnAction,
    content: String,
) -> ServiceResult<Turn> {
    let request = TurnRequest {
        scope: caller.write_scope(),
        conversation: key,
        action,
        content,
        owner: GenerationOwner::User(caller.user.id),
        account: Account::User {
            id: caller.user.id,
            role: caller.role(),
        },
        user_token: caller.user_token(),
    };
    turn::start(state, request, None).await
}

/// A turn's answer: its events as SSE when the client accepts them, otherwise the stored
/// exchange as JSON once the reply ends. A turn refused by a usage limit streams as an
/// `error` event to a client that asked for a stream; any other refusal is an error.
async fn answer(
    state: AppState,
    headers: &HeaderMap,
    conversation_id: &str,
    turn: ServiceResult<Turn>,
    key: i64,
) -> ApiResult<Response> {
    let turn = match turn {
        Ok(turn) => turn,
        Err(ServiceError::Limited(refusal)) if wants_stream(headers) => {
            return Ok(refused_stream(&refusal, conversation_id))
        }
        Err(err) => return Err(err.into()),
    };
    if wants_stream(headers) {
        let events = futures::stream::unfold(turn.events, |mut events| async move {
            let event = events.next().await?;
            Some((event, events))
        });
        let events = sse_events(state, events, turn.generation);
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    match turn.events.end().await {
        Some(LiveEvent::ReplyDone { exchange, .. }) => Ok(Json(ChatResponse {
            conversation_id: state.ids.conversation.encode(key),
            user_message: MessageOut::new(&exchange.user_message, &state.ids),
            ai_response: MessageOut::new(&exchange.ai_message, &state.ids),
        })
        .into_response()),
        Some(LiveEvent::ReplyFailed { failure, error, .. }) => Err(match failure {
            Failure::Llm => ApiError::BadGateway(error.to_string()),
            Failure::NotFound => ApiError::not_found("Conversation"),
            Failure::Ended => ApiError::Conflict(error.to_string()),
            Failure::Internal => ApiError::Internal(anyhow::anyhow!("storing a reply failed")),
            Failure::Interrupted => ApiError::Unavailable(error.to_string()),
        }),
        _ => Err(ApiError::Internal(anyhow::anyhow!(
            "reply ended without an answer"
        ))),
    }
}

/// Stream the reply being generated (or ended within the resume window) as server-sent
/// events: `start`, `chunk`s with their `seq` as event id, then `done` or `error`. With
/// `Last-Event-ID`, only the chunks after it. 204 when there is no such reply.
#[utoipa::path(get, path = "/conversations/{conversation_id}/stream", tag = "chat",
    security(("bearer" = [])),
    params(("conversation_id" = String, Path),
        ("Last-Event-ID" = Option<String>, Header,
            description = "The `seq` of the last chunk received; anything but a number \
                replays from the start")),
    responses((status = 200, description = "The reply as an SSE stream",
            content_type = "text/event-stream", body = SseEvent),
        (status = 204, description = "No reply is being generated or ended recently"),
        (status = 404, description = "No such conversation", body = ErrorBody), AuthErrors))]
async fn stream(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(conversation_id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let key = conversation_key(&state, &conversation_id)?;
    conversations::load(&state, caller.read_scope(), key).await?;
    let after_seq = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let Some(mut subscription) = Subscription::resume(&state, key, after_seq).await else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    // The replay starts with the reply's start event, which names it.
    let Some(first) = subscription.next().await else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let Some(generation) = first.generation().cloned() else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let start = render(&state, &first);
    let rest = futures::stream::unfold(subscription, |mut subscription| async move {
        let event = subscription.next().await.ok_or(Lagged);
        Some((event, subscription))
    });
    let rest = sse_events(state, rest, generation);
    let events = futures::stream::iter(start.map(Ok)).chain(rest);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Stop the reply being generated for a conversation, on whichever instance it runs.
#[utoipa::path(post, path = "/conversations/{conversation_id}/stop", tag = "chat",
    security(("bearer" = [])),
    params(("conversation_id" = String, Path)),
    responses((status = 200, body = Stopped),
        (status = 404, description = "No such conversation", body = ErrorBody), AuthErrors))]
async fn stop(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(conversation_id): ApiPath<String>,
) -> ApiResult<Json<Stopped>> {
    let key = conversation_key(&state, &conversation_id)?;
    conversations::load(&state, caller.write_scope(), key).await?;
    let stopped = state.hub.generations.stop(key).await;
    Ok(Json(Stopped { stopped }))
}

/// A turn refused by a usage limit, for a client that asked for a stream: 429 with
/// `Retry-After`, and the refusal as one `error` event.
fn refused_stream(refusal: &Refusal, conversation_id: &str) -> Response {
    let event = Event::default().event("error").data(
        json!({
            "error": refusal.detail(),
            "detail": refusal.detail(),
            "limit": refusal.limit.as_str(),
            "retry_after": refusal.retry_after_secs(),
            "conversation_id": conversation_id,
        })
        .to_string(),
    );
    let events = futures::stream::iter([Ok::<_, Infallible>(event)]);
    let mut response = Sse::new(events).into_response();
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    response.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from(refusal.retry_after_secs()),
    );
    response
}

fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// The SSE event of a reply's event; `None` for what a stream does not show.
fn render(state: &AppState, event: &LiveEvent) -> Option<Event> {
    let event = match event {
        LiveEvent::ReplyStarted { generation, .. } => Event::default()
            .event("start")
            .data(json!({ "generation_id": generation.as_ref() }).to_string()),
        LiveEvent::ReplyChunk { seq, delta, .. } => Event::default()
            .event("chunk")
            .id(seq.to_string())
            .data(json!({ "delta": delta.as_ref() }).to_string()),
        LiveEvent::ReplyDone { exchange, .. } => Event::default().event("done").data(
            serde_json::to_string(&ExchangeOut::new(exchange, &state.ids))
                .expect("exchanges serialize"),
        ),
        LiveEvent::ReplyFailed { error, partial, .. } => {
            let message_id = partial
                .as_ref()
                .map(|p| state.ids.message.encode(p.ai_message.id));
            Event::default()
                .event("error")
                .data(json!({ "error": error.as_ref(), "message_id": message_id }).to_string())
        }
        LiveEvent::ToolCall {
            name, arguments, ..
        } => Event::default()
            .event("tool_call")
            .data(json!({ "name": name, "arguments": arguments.as_ref() }).to_string()),
        LiveEvent::ToolResult { name, ok, .. } => Event::default()
            .event("tool_result")
            .data(json!({ "name": name, "ok": ok }).to_string()),
        LiveEvent::Retitled { .. } | LiveEvent::BranchChanged { .. } | LiveEvent::Ended { .. } => {
            return None
        }
    };
    Some(event)
}

/// A reply's events as SSE events, until its end. A subscriber too slow to keep up gets an
/// `error` event and may resume from the last id it got.
fn sse_events(
    state: AppState,
    events: impl Stream<Item = Result<LiveEvent, Lagged>> + Send + 'static,
    generation: GenerationId,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let events = events
        .filter(move |event| {
            let keep = match event {
                Ok(event) => {
                    event.generation() == Some(&generation)
                        && !matches!(event, LiveEvent::ReplyStarted { .. })
                }
                Err(Lagged) => true,
            };
            std::future::ready(keep)
        })
        .map(move |event| match event {
            Ok(event) => (render(&state, &event), event.ends_reply()),
            Err(Lagged) => {
                let lagged = Event::default().event("error").data(
                    json!({ "error": "Too slow to keep up; resume from the last event id" })
                        .to_string(),
                );
                (Some(lagged), true)
            }
        });
    // Up to and including the end (or the lag).
    futures::stream::unfold((Box::pin(events), false), |(mut events, done)| async move {
        if done {
            return None;
        }
        let (event, ended) = events.next().await?;
        Some((event, (events, ended)))
    })
    .filter_map(|event| std::future::ready(event.map(Ok)))
}
