//! `/api/v1/admin`: every user's data, for admins.

use axum::extract::State;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::conversations::{delete_in_scope, list_page, ConversationListQuery};
use super::users::delete_user_row;
use super::{conversation_key, Listed};
use crate::auth::AdminUser;
use crate::db::Scope;
use crate::dto::{ConversationOut, Deleted};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::openapi::{AuthErrors, QueryErrors};
use crate::state::AppState;

/// Routes of this file.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(all_conversations))
        .routes(routes!(delete_any_conversation))
        .routes(routes!(delete_user_by_username))
}

/// Every user's conversations, most recently active first.
#[utoipa::path(get, path = "/admin/conversations", tag = "admin", security(("bearer" = [])),
    params(ConversationListQuery),
    responses((status = 200, body = [ConversationOut],
        headers(("x-total-count" = i64, description = "Conversations matching the filters"))),
        AuthErrors, QueryErrors))]
async fn all_conversations(
    State(state): State<AppState>,
    _admin: AdminUser,
    ApiQuery(query): ApiQuery<ConversationListQuery>,
) -> ApiResult<Listed<ConversationOut>> {
    list_page(&state, Scope::Anyone, &query.filter()?).await
}

/// Delete any conversation.
#[utoipa::path(delete, path = "/admin/conversations/{conversation_id}", tag = "admin",
    security(("bearer" = [])), params(("conversation_id" = String, Path)),
    responses((status = 200, body = Deleted),
        (status = 404, description = "No such conversation", body = ErrorBody), AuthErrors))]
async fn delete_any_conversation(
    State(state): State<AppState>,
    _admin: AdminUser,
    ApiPath(conversation_id): ApiPath<String>,
) -> ApiResult<Json<Deleted>> {
    let key = conversation_key(&state, &conversation_id)?;
    delete_in_scope(&state, Scope::Anyone, key).await
}

/// Delete a user by username, with all their data.
#[utoipa::path(delete, path = "/admin/users/{username}", tag = "admin",
    security(("bearer" = [])), params(("username" = String, Path)),
    responses((status = 200, body = Deleted),
        (status = 404, description = "No such user", body = ErrorBody), AuthErrors))]
async fn delete_user_by_username(
    State(state): State<AppState>,
    _admin: AdminUser,
    ApiPath(username): ApiPath<String>,
) -> ApiResult<Json<Deleted>> {
    let user = state
        .store
        .user_by_username(&username)
        .await?
        .ok_or_else(|| ApiError::not_found("User"))?;
    delete_user_row(&state, &user).await
}
