//! `/api/v1/conversations/{conversation_id}/messages`: stored messages, the active path of
//! the conversation's tree or the whole tree; switching and deleting branches.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{
    check_object, check_optional_text, conversation_key, message_key, page, Listed, DEFAULT_LIMIT,
    MAX_LIMIT,
};
use crate::auth::AuthUser;
use crate::db::{Message, MessageFilter, MessageRole, NewMessage, Scope};
use crate::dto::{ConversationOut, MessageOut};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{optional_integer, ApiJson, ApiPath, ApiQuery};
use crate::openapi::{AuthErrors, BodyErrors, QueryErrors};
use crate::service::branches;
use crate::service::chat::check_content;
use crate::state::AppState;

/// Routes of this file.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_message, list_messages))
        .routes(routes!(delete_branch))
        .routes(routes!(switch_branch))
}

/// Which messages of a conversation's tree a read answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageView {
    /// The active path, root to active leaf: a linear log.
    #[default]
    Path,
    /// Every message of every branch, oldest first.
    Tree,
}

/// Body of a branch switch.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BranchSwitch {
    /// Public ID of a message of the conversation: the newest message below it (itself when
    /// it has none) becomes the active leaf.
    pub message_id: String,
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
    /// `path` (default): the active path, each message with its `sibling_ids` and
    /// `sibling_index`; `tree`: every message, each with its `parent_id`.
    #[param(inline)]
    pub view: Option<MessageView>,
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
    check_content(&state, &body.content)?;
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

/// A conversation's messages, oldest first: the active path (root to active leaf), each
/// with its parent and siblings, or with `view=tree` every message of every branch.
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
    let scope = caller.read_scope();
    let listed = match query.view.unwrap_or_default() {
        MessageView::Path => state.store.list_messages(scope, key, &filter).await?,
        MessageView::Tree => state.store.list_message_tree(scope, key, &filter).await?,
    };
    let (messages, total) = listed.ok_or_else(|| ApiError::not_found("Conversation"))?;
    let items = match query.view.unwrap_or_default() {
        MessageView::Path => with_siblings(&state, scope, key, &messages).await?,
        MessageView::Tree => messages
            .iter()
            .map(|m| MessageOut::new(m, &state.ids))
            .collect(),
    };
    Ok(Listed(items, total))
}

/// The messages with their siblings, read in one query for the whole page.
async fn with_siblings(
    state: &AppState,
    scope: Scope,
    conversation: i64,
    messages: &[Message],
) -> ApiResult<Vec<MessageOut>> {
    let mut parents: Vec<Option<i64>> = messages.iter().map(|m| m.parent_id).collect();
    parents.sort_unstable();
    parents.dedup();
    let children = state.store.children(scope, conversation, &parents).await?;
    Ok(messages
        .iter()
        .map(|message| {
            let siblings: Vec<i64> = children
                .iter()
                .filter(|(_, parent)| *parent == message.parent_id)
                .map(|(id, _)| *id)
                .collect();
            MessageOut::new(message, &state.ids).with_siblings(&siblings, message.id, &state.ids)
        })
        .collect())
}

/// Delete a message and everything below it (its branch). A reply being generated below it
/// is stopped first; when the active leaf was in the branch, the newest message left below
/// the message's parent (or the parent) becomes the active leaf, and the conversation's
/// members get `branch_changed`.
#[utoipa::path(delete, path = "/conversations/{conversation_id}/messages/{message_id}",
    tag = "messages", security(("bearer" = [])),
    params(("conversation_id" = String, Path), ("message_id" = String, Path)),
    responses((status = 204, description = "The branch is deleted"),
        (status = 404, description = "No such conversation or message", body = ErrorBody),
        AuthErrors))]
async fn delete_branch(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((conversation_id, message_id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let key = conversation_key(&state, &conversation_id)?;
    let message = message_key(&state, &message_id)?;
    branches::delete(&state, caller.write_scope(), key, message).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Switch to another branch: the newest message below the one named (itself when it has
/// none) becomes the active leaf, so choosing a sibling shows its branch to its end. The
/// conversation's members get `branch_changed`.
#[utoipa::path(put, path = "/conversations/{conversation_id}/branch", tag = "messages",
    security(("bearer" = [])), request_body = BranchSwitch,
    params(("conversation_id" = String, Path)),
    responses((status = 200, body = ConversationOut),
        (status = 404, description = "No such conversation or message", body = ErrorBody),
        AuthErrors, BodyErrors))]
async fn switch_branch(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(conversation_id): ApiPath<String>,
    ApiJson(body): ApiJson<BranchSwitch>,
) -> ApiResult<Json<ConversationOut>> {
    let key = conversation_key(&state, &conversation_id)?;
    let message = message_key(&state, &body.message_id)?;
    let conversation = branches::switch(&state, caller.write_scope(), key, message).await?;
    Ok(Json(ConversationOut::new(&conversation, &state.ids)))
}
