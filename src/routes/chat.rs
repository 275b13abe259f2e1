//! `POST /api/v1/conversations/{conversation_id}/chat`: chat over REST, as JSON or SSE.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::conversation_key;
use super::dto::{ExchangeOut, MessageOut};
use crate::auth::AuthUser;
use crate::chat::events::Exchange;
use crate::chat::hub::GenerationOwner;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath};
use crate::ids::IdCodec;
use crate::service::chat::{self as turn, TurnEvent, TurnRequest};
use crate::state::AppState;

/// Routes of this file.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(chat))
}

/// The user's message.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// Text.
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

/// Send a message and get the LLM's reply; both are stored. With
/// `Accept: text/event-stream` the reply streams as `chunk` events, then `done` (or `error`).
#[utoipa::path(post, path = "/conversations/{conversation_id}/chat", tag = "chat",
    security(("bearer" = [])), request_body = ChatRequest,
    params(("conversation_id" = String, Path)),
    responses((status = 200, description = "The stored exchange, or an SSE stream",
            content((ChatResponse = "application/json"), (String = "text/event-stream"))),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 502, body = ErrorBody)))]
async fn chat(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(conversation_id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ChatRequest>,
) -> ApiResult<Response> {
    let key = conversation_key(&state, &conversation_id)?;
    let request = TurnRequest {
        scope: caller.write_scope(),
        conversation: key,
        content: body.content,
        owner: GenerationOwner::User(caller.user.id),
        origin: None,
    };
    let events = turn::start(&state, request).await?.events;
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_stream {
        return Ok(Sse::new(sse_events(state.ids.clone(), events))
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let exchange = wait_for_reply(events).await?;
    Ok(Json(ChatResponse {
        conversation_id: state.ids.conversation.encode(key),
        user_message: MessageOut::new(&exchange.user_message, &state.ids),
        ai_response: MessageOut::new(&exchange.ai_message, &state.ids),
    })
    .into_response())
}

async fn wait_for_reply(mut events: mpsc::Receiver<TurnEvent>) -> Result<Exchange, ApiError> {
    while let Some(event) = events.recv().await {
        match event {
            TurnEvent::Started | TurnEvent::Delta(_) => {}
            TurnEvent::Done(exchange) | TurnEvent::Stopped(exchange) => return Ok(*exchange),
            TurnEvent::Failed(err) => return Err(err.into()),
        }
    }
    Err(ApiError::Internal(anyhow::anyhow!(
        "reply ended without an answer"
    )))
}

/// The SSE rendering of a turn's events: `chunk`s, then `done` or `error`.
fn sse_events(
    ids: Arc<IdCodec>,
    events: mpsc::Receiver<TurnEvent>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    ReceiverStream::new(events).filter_map(move |event| {
        let event = match event {
            TurnEvent::Started => None,
            TurnEvent::Delta(delta) => Some(
                Event::default()
                    .event("chunk")
                    .data(json!({ "delta": delta }).to_string()),
            ),
            TurnEvent::Done(exchange) | TurnEvent::Stopped(exchange) => Some(
                Event::default().event("done").data(
                    serde_json::to_string(&ExchangeOut::new(&exchange, &ids))
                        .expect("exchanges serialize"),
                ),
            ),
            TurnEvent::Failed(err) => Some(
                Event::default()
                    .event("error")
                    .data(json!({ "error": err.to_string() }).to_string()),
            ),
        };
        std::future::ready(event.map(Ok))
    })
}
