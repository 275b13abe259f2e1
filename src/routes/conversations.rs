//! Conversations: `/api/v1/users/{user_id}/conversations` (a user's), and the original
//! service's paths without the user, `/api/v1/conversations` and
//! `/api/v1/chat/conversations/{conversation_id}/export`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{conversation_key, page, path_user, Access, Listed, DEFAULT_LIMIT, MAX_LIMIT};
use crate::auth::AuthUser;
use crate::db::{
    Conversation, ConversationFilter, ConversationPatch, ConversationStats, ConversationStatus,
    Message, MessageFilter, Page, Scope,
};
use crate::dto::{ConversationOut, Deleted, MessageOut};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::openapi::{AuthErrors, BodyErrors, QueryErrors};
use crate::routes::messages::MessageView;
use crate::service::conversations::{self, CreateConversation};
use crate::state::AppState;

/// Routes of this file.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_conversation, list_conversations))
        .routes(routes!(recent_conversations))
        .routes(routes!(
            get_conversation,
            patch_conversation,
            put_conversation,
            delete_conversation
        ))
        .routes(routes!(reconnect))
        .routes(routes!(validate))
        .routes(routes!(end_conversation))
        .routes(routes!(stats))
        .routes(routes!(export))
        .routes(routes!(create_unnested, list_unnested))
        .routes(routes!(get_unnested, put_unnested, delete_unnested))
        .routes(routes!(export_from_chat))
}

/// Body of a conversation creation.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ConversationCreate {
    /// Title (default "New Conversation"); not blank.
    #[schema(max_length = 255)]
    pub title: Option<String>,
    /// System prompt sent first to the LLM.
    #[schema(max_length = 8000)]
    pub system_message: Option<String>,
    /// Model, one of the allowed models (`OPENAI_ALLOWED_MODELS` and `OPENAI_MODEL`).
    pub model: Option<String>,
    /// Free-form JSON object.
    #[schema(value_type = Option<Object>)]
    pub context_metadata: Option<Value>,
}

/// Body of a conversation creation without the user in the path.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct UnnestedConversationCreate {
    /// Owner: public ID, `me` or username; the caller when absent. Another user's for admins
    /// only.
    pub user_id: Option<String>,
    /// Title (default "New Conversation").
    #[schema(min_length = 1, max_length = 255)]
    pub title: Option<String>,
    /// System prompt sent first to the LLM; also stored as the first message.
    #[schema(max_length = 8000)]
    pub system_message: Option<String>,
    /// Model, one of the allowed models.
    pub model: Option<String>,
    /// Free-form JSON object.
    #[schema(value_type = Option<Object>)]
    pub context_metadata: Option<Value>,
}

/// Whose conversations to list without the user in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OwnerQuery {
    /// Public ID, `me` or username; the caller when absent. Another user's for admins and
    /// managers only.
    pub user_id: Option<String>,
}

/// Body of a conversation change; absent fields are kept.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ConversationUpdate {
    /// New title; not blank.
    #[schema(max_length = 255)]
    pub title: Option<String>,
    /// New state.
    pub status: Option<ConversationStatus>,
    /// New metadata.
    #[schema(value_type = Option<Object>)]
    pub context_metadata: Option<Value>,
}

/// Filters of a conversation list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConversationListQuery {
    /// Rows to skip.
    #[param(minimum = 0)]
    pub skip: Option<i64>,
    /// Rows to return (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// State.
    pub status: Option<ConversationStatus>,
    /// Substring of the title.
    pub search: Option<String>,
}

impl ConversationListQuery {
    /// The filter the query asks for, its page checked.
    pub fn filter(self) -> ApiResult<ConversationFilter> {
        Ok(ConversationFilter {
            page: page(self.skip, self.limit, DEFAULT_LIMIT, MAX_LIMIT)?,
            status: self.status,
            search: self.search.filter(|s| !s.is_empty()),
        })
    }
}

/// Size of the recent list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecentQuery {
    /// Rows to return (default 5).
    #[param(minimum = 1, maximum = 20)]
    pub limit: Option<i64>,
}

/// Export format.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// A JSON document.
    #[default]
    Json,
    /// A Markdown transcript.
    Markdown,
}

/// Export parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `json` (default) or `markdown`.
    #[param(inline)]
    pub format: Option<ExportFormat>,
    /// `path` (default): the active path; `tree`: every message of every branch, each with
    /// its `parent_id` (JSON only: a Markdown transcript always follows the active path).
    #[param(inline)]
    pub view: Option<MessageView>,
}

/// A conversation with its messages, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationWithMessages {
    /// The conversation.
    #[serde(flatten)]
    pub conversation: ConversationOut,
    /// Its messages, oldest first.
    pub messages: Vec<MessageOut>,
}

/// Answer of the validation route.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationValidation {
    /// Whether the conversation exists and belongs to the user.
    pub valid: bool,
    /// Public ID.
    pub conversation_id: String,
    /// Owner's public ID.
    pub user_id: Option<String>,
    /// Title.
    pub conversation_title: String,
    /// State.
    pub conversation_status: ConversationStatus,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// A human message.
    pub message: String,
}

/// Statistics of a conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationStatsOut {
    /// Public ID.
    pub conversation_id: String,
    /// The aggregates.
    #[serde(flatten)]
    pub stats: ConversationStats,
    /// Same as `total_tokens` (the original's name).
    pub total_tokens_used: i64,
}

/// The path's user and conversation key, checked for this access.
async fn target(
    state: &AppState,
    caller: &AuthUser,
    user_id: &str,
    conversation_id: &str,
    access: Access,
) -> ApiResult<(Scope, i64)> {
    let owner = path_user(state, caller, user_id, access).await?;
    let key = conversation_key(state, conversation_id)?;
    Ok((Scope::Owner(owner.id), key))
}

/// Every message of a conversation's active path, or of its whole tree, oldest first.
async fn all_messages(
    state: &AppState,
    scope: Scope,
    key: i64,
    view: MessageView,
) -> ApiResult<Vec<Message>> {
    let filter = MessageFilter {
        role: None,
        page: Page {
            skip: 0,
            limit: i64::MAX,
        },
    };
    let listed = match view {
        MessageView::Path => state.store.list_messages(scope, key, &filter).await?,
        MessageView::Tree => state.store.list_message_tree(scope, key, &filter).await?,
    };
    let (messages, _) = listed.ok_or_else(|| ApiError::not_found("Conversation"))?;
    Ok(messages)
}

fn out(state: &AppState, conversation: &Conversation) -> Json<ConversationOut> {
    Json(ConversationOut::new(conversation, &state.ids))
}

/// Create a conversation.
#[utoipa::path(post, path = "/users/{user_id}/conversations", tag = "conversations",
    security(("bearer" = [])), request_body = ConversationCreate,
    params(("user_id" = String, Path, description = "Public ID, `me` or username")),
    responses((status = 201, body = ConversationOut),
        (status = 404, description = "No such user", body = ErrorBody), AuthErrors, BodyErrors))]
async fn create_conversation(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<ConversationCreate>,
) -> ApiResult<(StatusCode, Json<ConversationOut>)> {
    let owner = path_user(&state, &caller, &user_id, Access::Write).await?;
    let input = CreateConversation {
        title: body.title,
        system_message: body.system_message,
        model: body.model,
        context_metadata: body.context_metadata,
    };
    let conversation = conversations::create(&state, Some(owner.id), input).await?;
    Ok((StatusCode::CREATED, out(&state, &conversation)))
}

/// List conversations, most recently active first.
#[utoipa::path(get, path = "/users/{user_id}/conversations", tag = "conversations",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "Public ID, `me` or username"),
        ConversationListQuery),
    responses((status = 200, body = [ConversationOut],
        headers(("x-total-count" = i64, description = "Conversations matching the filters"))),
        (status = 404, description = "No such user", body = ErrorBody), AuthErrors, QueryErrors))]
async fn list_conversations(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(user_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ConversationListQuery>,
) -> ApiResult<Listed<ConversationOut>> {
    let filter = query.filter()?;
    let owner = path_user(&state, &caller, &user_id, Access::Read).await?;
    list_page(&state, Scope::Owner(owner.id), &filter).await
}

/// A page of conversations within a scope, as a list answer.
pub async fn list_page(
    state: &AppState,
    scope: Scope,
    filter: &ConversationFilter,
) -> ApiResult<Listed<ConversationOut>> {
    let (conversations, total) = state.store.list_conversations(scope, filter).await?;
    // Encoding an ID is not free, and a page usually has one owner: encode each once.
    let mut owners: Vec<(i64, String)> = Vec::new();
    let items = conversations
        .iter()
        .map(|c| {
            let owner = c
                .user_id
                .map(|id| match owners.iter().find(|(key, _)| *key == id) {
                    Some((_, public)) => public.clone(),
                    None => {
                        let public = state.ids.user.encode(id);
                        owners.push((id, public.clone()));
                        public
                    }
                });
            ConversationOut::with_owner(c, owner, &state.ids)
        })
        .collect();
    Ok(Listed(items, total))
}

/// The most recently active conversations.
#[utoipa::path(get, path = "/users/{user_id}/conversations/recent", tag = "conversations",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "Public ID, `me` or username"), RecentQuery),
    responses((status = 200, body = [ConversationOut],
        headers(("x-total-count" = i64, description = "The user's conversations"))),
        (status = 404, description = "No such user", body = ErrorBody), AuthErrors, QueryErrors))]
async fn recent_conversations(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(user_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<RecentQuery>,
) -> ApiResult<Listed<ConversationOut>> {
    let page = page(None, query.limit, 5, 20)?;
    let owner = path_user(&state, &caller, &user_id, Access::Read).await?;
    let filter = ConversationFilter {
        status: None,
        search: None,
        page,
    };
    list_page(&state, Scope::Owner(owner.id), &filter).await
}

/// One conversation.
#[utoipa::path(get, path = "/users/{user_id}/conversations/{conversation_id}",
    tag = "conversations", security(("bearer" = [])),
    params(("user_id" = String, Path), ("conversation_id" = String, Path)),
    responses((status = 200, body = ConversationOut),
        (status = 404, description = "No such user or conversation", body = ErrorBody),
        AuthErrors))]
async fn get_conversation(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((user_id, conversation_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<ConversationOut>> {
    let (scope, key) = target(&state, &caller, &user_id, &conversation_id, Access::Read).await?;
    Ok(out(&state, &conversations::load(&state, scope, key).await?))
}

/// Applies a checked change to a conversation within a scope.
async fn update_in_scope(
    state: &AppState,
    scope: Scope,
    key: i64,
    body: ConversationUpdate,
) -> ApiResult<Json<ConversationOut>> {
    let patch = ConversationPatch {
        title: body.title.map(|t| t.trim().to_owned()),
        status: body.status,
        context_metadata: body.context_metadata,
    };
    let conversation = conversations::update(state, scope, key, &patch).await?;
    Ok(out(state, &conversation))
}

/// Change a conversation's title, status or metadata.
#[utoipa::path(patch, path = "/users/{user_id}/conversations/{conversation_id}",
    tag = "conversations", security(("bearer" = [])), request_body = ConversationUpdate,
    params(("user_id" = String, Path), ("conversation_id" = String, Path)),
    responses((status = 200, body = ConversationOut),
        (status = 404, description = "No such user or conversation", body = ErrorBody),
        AuthErrors, BodyErrors))]
async fn patch_conversation(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((user_id, conversation_id)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<ConversationUpdate>,
) -> ApiResult<Json<ConversationOut>> {
    conversations::check_fields(body.title.as_deref(), body.context_metadata.as_ref())?;
    let (scope, key) = target(&state, &caller, &user_id, &conversation_id, Access::Write).await?;
    update_in_scope(&state, scope, key, body).await
}

/// Change a conversation (same as PATCH, for compatibility).
#[utoipa::path(put, path = "/users/{user_id}/conversations/{conversation_id}",
    tag = "conversations", security(("bearer" = [])), request_body = ConversationUpdate,
    params(("user_id" = String, Path), ("conversation_id" = String, Path)),
    responses((status = 200, body = ConversationOut),
        (status = 404, description = "No such user or conversation", body = ErrorBody),
        AuthErrors, BodyErrors))]
async fn put_conversation(
    State(state): State<AppState>,
    caller: AuthUser,
    path: ApiPath<(String, String)>,
    body: ApiJson<ConversationUpdate>,
) -> ApiResult<Json<ConversationOut>> {
    patch_conversation(State(state), caller, path, body).await
}

/// Delete a conversation with its messages.
#[utoipa::path(delete, path = "/users/{user_id}/conversations/{conversation_id}",
    tag = "conversations", security(("bearer" = [])),
    params(("user_id" = String, Path), ("conversation_id" = String, Path)),
    responses((status = 200, body = Deleted),
        (status = 404, description = "No such user or conversation", body = ErrorBody),
        AuthErrors))]
async fn delete_conversation(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((user_id, conversation_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<Deleted>> {
    let (scope, key) = target(&state, &caller, &user_id, &conversation_id, Access::Write).await?;
    delete_in_scope(&state, scope, key).await
}

/// Deletes a conversation within a scope and answers the deletion.
pub async fn delete_in_scope(state: &AppState, scope: Scope, key: i64) -> ApiResult<Json<Deleted>> {
    conversations::delete(state, scope, key).await?;
    Ok(Json(Deleted {
        message: "Conversation deleted successfully".to_owned(),
        conversation_id: Some(state.ids.conversation.encode(key)),
        user_id: None,
    }))
}

/// Reopen a conversation: answers it with its messages; an ended one becomes active.
#[utoipa::path(post, path = "/users/{user_id}/conversations/{conversation_id}/reconnect",
    tag = "conversations", security(("bearer" = [])),
    params(("user_id" = String, Path), ("conversation_id" = String, Path)),
    responses((status = 200, body = ConversationWithMessages),
        (status = 404, description = "No such user or conversation", body = ErrorBody),
        AuthErrors))]
async fn reconnect(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((user_id, conversation_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<ConversationWithMessages>> {
    let (scope, key) = target(&state, &caller, &user_id, &conversation_id, Access::Write).await?;
    let mut conversation = conversations::load(&state, scope, key).await?;
    if conversation.status == ConversationStatus::Ended {
        let patch = ConversationPatch {
            status: Some(ConversationStatus::Active),
            ..Default::default()
        };
        conversation = conversations::update(&state, scope, key, &patch).await?;
    }
    let messages = all_messages(&state, scope, key, MessageView::Path).await?;
    Ok(Json(ConversationWithMessages {
        conversation: ConversationOut::new(&conversation, &state.ids),
        messages: messages
            .iter()
            .map(|m| MessageOut::new(m, &state.ids))
            .collect(),
    }))
}

/// Check that a conversation exists and belongs to the user.
#[utoipa::path(get, path = "/users/{user_id}/conversations/{conversation_id}/validate",
    tag = "conversations", security(("bearer" = [])),
    params(("user_id" = String, Path), ("conversation_id" = String, Path)),
    responses((status = 200, body = ConversationValidation),
        (status = 404, description = "No such user or conversation", body = ErrorBody),
        AuthErrors))]
async fn validate(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((user_id, conversation_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<ConversationValidation>> {
    let (scope, key) = target(&state, &caller, &user_id, &conversation_id, Access::Read).await?;
    let conversation = conversations::load(&state, scope, key).await?;
    let message = match conversation.status {
        ConversationStatus::Active => "Conversation is valid and active",
        ConversationStatus::Ended => "Conversation has ended; reconnect to continue it",
        ConversationStatus::Archived => "Conversation is archived",
    };
    Ok(Json(ConversationValidation {
        valid: true,
        conversation_id: state.ids.conversation.encode(conversation.id),
        user_id: conversation.user_id.map(|id| state.ids.user.encode(id)),
        conversation_title: conversation.title,
        conversation_status: conversation.status,
        created_at: conversation.created_at,
        message: message.to_owned(),
    }))
}

/// End a conversation; ending an ended one changes nothing.
#[utoipa::path(post, path = "/users/{user_id}/conversations/{conversation_id}/end",
    tag = "conversations", security(("bearer" = [])),
    params(("user_id" = String, Path), ("conversation_id" = String, Path)),
    responses((status = 200, body = ConversationOut),
        (status = 404, description = "No such user or conversation", body = ErrorBody),
        AuthErrors))]
async fn end_conversation(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((user_id, conversation_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<ConversationOut>> {
    let (scope, key) = target(&state, &caller, &user_id, &conversation_id, Access::Write).await?;
    let conversation = conversations::end(&state, scope, key, None).await?;
    Ok(out(&state, &conversation))
}

/// Message counts per role, tokens, response time and first/last message time.
#[utoipa::path(get, path = "/users/{user_id}/conversations/{conversation_id}/stats",
    tag = "conversations", security(("bearer" = [])),
    params(("user_id" = String, Path), ("conversation_id" = String, Path)),
    responses((status = 200, body = ConversationStatsOut),
        (status = 404, description = "No such user or conversation", body = ErrorBody),
        AuthErrors))]
async fn stats(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((user_id, conversation_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<ConversationStatsOut>> {
    let (scope, key) = target(&state, &caller, &user_id, &conversation_id, Access::Read).await?;
    let stats = state
        .store
        .conversation_stats(scope, key)
        .await?
        .ok_or_else(|| ApiError::not_found("Conversation"))?;
    Ok(Json(ConversationStatsOut {
        conversation_id: state.ids.conversation.encode(key),
        total_tokens_used: stats.total_tokens,
        stats,
    }))
}

/// Download a conversation as JSON or Markdown.
#[utoipa::path(get, path = "/users/{user_id}/conversations/{conversation_id}/export",
    tag = "conversations", security(("bearer" = [])),
    params(("user_id" = String, Path), ("conversation_id" = String, Path), ExportQuery),
    responses((status = 200, description = "The conversation as a file",
        content((ConversationWithMessages = "application/json"), (String = "text/markdown"))),
        (status = 404, description = "No such user or conversation", body = ErrorBody),
        AuthErrors, QueryErrors))]
async fn export(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath((user_id, conversation_id)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> ApiResult<Response> {
    let (scope, key) = target(&state, &caller, &user_id, &conversation_id, Access::Read).await?;
    export_in_scope(&state, scope, key, query).await
}

/// Download a conversation as JSON or Markdown (the original service's path).
#[utoipa::path(get, path = "/chat/conversations/{conversation_id}/export",
    tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = String, Path), ExportQuery),
    responses((status = 200, description = "The conversation as a file",
        content((ConversationWithMessages = "application/json"), (String = "text/markdown"))), (status = 404, body = ErrorBody), AuthErrors, QueryErrors))]
async fn export_from_chat(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(conversation_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> ApiResult<Response> {
    let key = conversation_key(&state, &conversation_id)?;
    export_in_scope(&state, caller.read_scope(), key, query).await
}

/// A conversation within a scope as a download.
async fn export_in_scope(
    state: &AppState,
    scope: Scope,
    key: i64,
    query: ExportQuery,
) -> ApiResult<Response> {
    let format = query.format.unwrap_or_default();
    // A transcript reads as one conversation: it follows the active path whatever the view.
    let view = match format {
        ExportFormat::Json => query.view.unwrap_or_default(),
        ExportFormat::Markdown => MessageView::Path,
    };
    let conversation = conversations::load(state, scope, key).await?;
    let messages = all_messages(state, scope, key, view).await?;
    let public_id = state.ids.conversation.encode(key);
    let (body, content_type, extension) = match format {
        ExportFormat::Json => {
            let document = ConversationWithMessages {
                conversation: ConversationOut::new(&conversation, &state.ids),
                messages: messages
                    .iter()
                    .map(|m| MessageOut::new(m, &state.ids))
                    .collect(),
            };
            let body = serde_json::to_string_pretty(&document)
                .map_err(|e| ApiError::Internal(e.into()))?;
            (body, "application/json", "json")
        }
        ExportFormat::Markdown => (
            markdown(&conversation, &messages),
            "text/markdown; charset=utf-8",
            "md",
        ),
    };
    let disposition = format!("attachment; filename=\"conversation-{public_id}.{extension}\"");
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// The owner a `user_id` parameter names (the caller when absent), checked for this access.
async fn owner_or_caller(
    state: &AppState,
    caller: &AuthUser,
    user_id: Option<&str>,
    access: Access,
) -> ApiResult<i64> {
    match user_id {
        Some(raw) => Ok(path_user(state, caller, raw, access).await?.id),
        None => Ok(caller.user.id),
    }
}

/// Create a conversation (the original service's path); `user_id` names another owner, for
/// admins.
#[utoipa::path(post, path = "/conversations", tag = "conversations",
    security(("bearer" = [])), request_body = UnnestedConversationCreate,
    responses((status = 201, body = ConversationOut), (status = 404, body = ErrorBody), AuthErrors, BodyErrors))]
async fn create_unnested(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(body): ApiJson<UnnestedConversationCreate>,
) -> ApiResult<(StatusCode, Json<ConversationOut>)> {
    let owner = owner_or_caller(&state, &caller, body.user_id.as_deref(), Access::Write).await?;
    let input = CreateConversation {
        title: body.title,
        system_message: body.system_message,
        model: body.model,
        context_metadata: body.context_metadata,
    };
    let conversation = conversations::create(&state, Some(owner), input).await?;
    Ok((StatusCode::CREATED, out(&state, &conversation)))
}

/// List the caller's conversations (or, for admins and managers, `user_id`'s), most recently
/// active first (the original service's path).
#[utoipa::path(get, path = "/conversations", tag = "conversations",
    security(("bearer" = [])), params(OwnerQuery, ConversationListQuery),
    responses((status = 200, body = [ConversationOut],
        headers(("x-total-count" = i64, description = "Conversations matching the filters"))),
        (status = 404, body = ErrorBody), AuthErrors, QueryErrors))]
async fn list_unnested(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(owner): ApiQuery<OwnerQuery>,
    ApiQuery(query): ApiQuery<ConversationListQuery>,
) -> ApiResult<Listed<ConversationOut>> {
    let filter = query.filter()?;
    let owner = owner_or_caller(&state, &caller, owner.user_id.as_deref(), Access::Read).await?;
    list_page(&state, Scope::Owner(owner), &filter).await
}

/// One conversation (the original service's path): the owner's; any for admins and
/// managers.
#[utoipa::path(get, path = "/conversations/{conversation_id}", tag = "conversations",
    security(("bearer" = [])), params(("conversation_id" = String, Path)),
    responses((status = 200, body = ConversationOut),
        (status = 404, body = ErrorBody), AuthErrors))]
async fn get_unnested(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(conversation_id): ApiPath<String>,
) -> ApiResult<Json<ConversationOut>> {
    let key = conversation_key(&state, &conversation_id)?;
    Ok(out(
        &state,
        &conversations::load(&state, caller.read_scope(), key).await?,
    ))
}

/// Change a conversation's title, status or metadata (the original service's path): the
/// owner's; any for admins.
#[utoipa::path(put, path = "/conversations/{conversation_id}", tag = "conversations",
    security(("bearer" = [])), request_body = ConversationUpdate,
    params(("conversation_id" = String, Path)),
    responses((status = 200, body = ConversationOut),
        (status = 404, body = ErrorBody), AuthErrors, BodyErrors))]
async fn put_unnested(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(conversation_id): ApiPath<String>,
    ApiJson(body): ApiJson<ConversationUpdate>,
) -> ApiResult<Json<ConversationOut>> {
    conversations::check_fields(body.title.as_deref(), body.context_metadata.as_ref())?;
    let key = conversation_key(&state, &conversation_id)?;
    update_in_scope(&state, caller.write_scope(), key, body).await
}

/// Delete a conversation with its messages (the original service's path): the owner's; any
/// for admins.
#[utoipa::path(delete, path = "/conversations/{conversation_id}", tag = "conversations",
    security(("bearer" = [])), params(("conversation_id" = String, Path)),
    responses((status = 200, body = Deleted),
        (status = 404, body = ErrorBody), AuthErrors))]
async fn delete_unnested(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(conversation_id): ApiPath<String>,
) -> ApiResult<Json<Deleted>> {
    let key = conversation_key(&state, &conversation_id)?;
    delete_in_scope(&state, caller.write_scope(), key).await
}

/// A Markdown transcript of a conversation.
fn markdown(conversation: &Conversation, messages: &[Message]) -> String {
    let mut text = format!(
        "# {}\n\n- Status: {}\n- Created: {}\n",
        conversation.title,
        conversation.status.as_str(),
        conversation.created_at.to_rfc3339()
    );
    if let Some(system) = &conversation.system_message {
        text.push_str(&format!("- System message: {system}\n"));
    }
    for message in messages {
        text.push_str(&format!(
            "\n## {} ({})\n\n{}\n",
            message.role.as_str(),
            message.timestamp.to_rfc3339(),
            message.content
        ));
    }
    text
}
