//! `/api/v1/conversations/{conversation_id}/messages`: stored messages.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{
    check_object, check_optional_text, check_text, conversation_key, page, Listed, DEFAULT_LIMIT,
    MAX_LIMIT,
};
use crate::auth::AuthUser;
use crate::db::{MessageFilter, MessageRole, NewMessage};
use crate::dto::MessageOut;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{optional_integer, ApiJson, ApiPath, ApiQuery};
use crate::openapi::{AuthErrors, BodyErrors, QueryErrors};
use crate::state::AppState;

/// Routes of this file.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_message, list_messages))
}

/// Body of a stored message.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MessageCreate {
    /// Author.
    pub role: MessageRole,
    /// Text; not blank, at most `MAX_MESSAGE_CHARS` characters.
    pub content: String,
    /// Model that wrote it.
    #[schema(max_length = 100)]
    pub model: Option<String>,
    /// Tokens used.
    #[schema(minimum = 0)]
    #[serde(default, deserialize_with = "optional_integer")]
    pub tokens_used: Option<i64>,
    /// Response time in milliseconds.
    #[schema(minimum = 0)]
    pub response_time: Option<f64>,
    /// Free-form JSON object.
    #[schema(value_type = Option<Object>)]
    pub message_metadata: Option<Value>,
}

/// Filters of a message list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessageListQuery {
    /// Rows to skip.
    #[param(minimum = 0)]
    pub skip: Option<i64>,
    /// Rows to return (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Author.
    pub role: Option<MessageRole>,
}

/// Store a message (no LLM call).
#[utoipa::path(post, path = "/conversations/{conversation_id}/messages", tag = "messages",
    security(("bearer" = [])), request_body = MessageCreate,
    params(("conversation_id" = String, Path)),
    responses((status = 201, body = MessageOut),
        (status = 404, description = "No such conversation", body = ErrorBody),
        AuthErrors, BodyErrors))]
async fn create_message(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(conversation_id): ApiPath<String>,
    ApiJson(body): ApiJson<MessageCreate>,
) -> ApiResult<(StatusCode, Json<MessageOut>)> {
    check_text(
        "content",
        &body.content,
        1,
        state.settings.limits.max_message_chars,
    )?;
    check_optional_text("model", body.model.as_deref(), 100)?;
    check_object("message_metadata", body.message_metadata.as_ref())?;
    if body.tokens_used.is_some_and(|t| t < 0) {
        return Err(ApiError::invalid(
            "tokens_used",
            "must be greater than or equal to 0",
        ));
    }
    if body
        .response_time
        .is_some_and(|t| !(t >= 0.0 && t.is_finite()))
    {
        return Err(ApiError::invalid(
            "response_time",
            "must be greater than or equal to 0",
        ));
    }
    let key = conversation_key(&state, &conversation_id)?;
    let new = NewMessage {
        role: body.role,
        content: body.content,
        model: body.model,
        tokens_used: body.tokens_used,
        response_time: body.response_time,
        message_metadata: body.message_metadata,
    };
    let message = state
        .store
        .add_message(caller.write_scope(), key, &new)
        .await?
        .ok_or_else(|| ApiError::not_found("Conversation"))?;
    state.analytics.message(&message, Some(caller.user.id));
    Ok((
        StatusCode::CREATED,
        Json(MessageOut::new(&message, &state.ids)),
    ))
}

/// A conversation's messages, oldest first.
#[utoipa::path(get, path = "/conversations/{conversation_id}/messages", tag = "messages",
    security(("bearer" = [])), params(("conversation_id" = String, Path), MessageListQuery),
    responses((status = 200, body = [MessageOut],
        headers(("x-total-count" = i64, description = "Messages matching the filters"))),
        (status = 404, description = "No such conversation", body = ErrorBody),
        AuthErrors, QueryErrors))]
async fn list_messages(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(conversation_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<MessageListQuery>,
) -> ApiResult<Listed<MessageOut>> {
    let filter = MessageFilter {
        role: query.role,
        page: page(query.skip, query.limit, DEFAULT_LIMIT, MAX_LIMIT)?,
    };
    let key = conversation_key(&state, &conversation_id)?;
    let (messages, total) = state
        .store
        .list_messages(caller.read_scope(), key, &filter)
        .await?
        .ok_or_else(|| ApiError::not_found("Conversation"))?;
    let items = messages
        .iter()
        .map(|m| MessageOut::new(m, &state.ids))
        .collect();
    Ok(Listed(items, total))
}
