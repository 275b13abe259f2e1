//! `/api/v1/users`: profiles, managed by admins.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{
    check_optional_text, check_text, page, path_user, Access, Listed, DEFAULT_LIMIT, MAX_LIMIT,
};
use crate::auth::{AdminUser, AuthUser, StaffUser};
use crate::db::{NewUser, StoreError, User, UserFilter, UserPatch};
use crate::dto::{Deleted, UserOut};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::openapi::{AuthErrors, BodyErrors, QueryErrors};
use crate::service::users;
use crate::state::AppState;

/// Routes of this file.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_user, list_users))
        .routes(routes!(me))
        .routes(routes!(get_user, update_user, delete_user))
}

/// Body of a user creation.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UserCreate {
    /// Unique email.
    #[schema(max_length = 254)]
    pub email: String,
    /// Unique username: no surrounding spaces, no control characters.
    #[schema(min_length = 3, max_length = 100)]
    pub username: String,
    /// Display name.
    #[schema(max_length = 255)]
    pub full_name: Option<String>,
}

/// Body of a user update; absent fields are kept.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UserUpdate {
    /// New unique email.
    #[schema(max_length = 254)]
    pub email: Option<String>,
    /// New unique username: no surrounding spaces, no control characters.
    #[schema(min_length = 3, max_length = 100)]
    pub username: Option<String>,
    /// New display name.
    #[schema(max_length = 255)]
    pub full_name: Option<String>,
    /// New active flag.
    pub is_active: Option<bool>,
}

/// Filters of the user list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserListQuery {
    /// Rows to skip.
    #[param(minimum = 0)]
    pub skip: Option<i64>,
    /// Rows to return (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Substring of username, email or full name.
    pub search: Option<String>,
    /// Active flag.
    pub is_active: Option<bool>,
}

fn check_username(username: &str) -> ApiResult<()> {
    check_text("username", username, 3, 100)?;
    if username.trim() != username || username.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "username",
            "must not have surrounding spaces or control characters",
        ));
    }
    Ok(())
}

fn check_email(email: &str) -> ApiResult<()> {
    let valid = email.chars().count() <= 254
        && !email.contains(char::is_whitespace)
        && matches!(email.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.contains('@') && domain.contains('.')
                && !domain.starts_with('.') && !domain.ends_with('.'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid("email", "must be a valid email address"))
    }
}

fn conflict(err: StoreError) -> ApiError {
    match err {
        StoreError::Conflict(field) => {
            ApiError::Conflict(format!("A user with this {field} already exists"))
        }
        StoreError::Database(err) => err.into(),
    }
}

/// Create a user (admin).
#[utoipa::path(post, path = "/users", tag = "users", request_body = UserCreate,
    security(("bearer" = [])),
    responses((status = 201, body = UserOut),
        (status = 409, description = "The username or email is taken", body = ErrorBody),
        AuthErrors, BodyErrors))]
async fn create_user(
    State(state): State<AppState>,
    _admin: AdminUser,
    ApiJson(body): ApiJson<UserCreate>,
) -> ApiResult<(StatusCode, Json<UserOut>)> {
    check_username(&body.username)?;
    check_email(&body.email)?;
    check_optional_text("full_name", body.full_name.as_deref(), 255)?;
    let user = state
        .store
        .create_user(&NewUser {
            username: body.username,
            email: Some(body.email),
            full_name: body.full_name,
        })
        .await
        .map_err(conflict)?;
    Ok((StatusCode::CREATED, Json(UserOut::new(&user, &state.ids))))
}

/// List users (admin, manager).
#[utoipa::path(get, path = "/users", tag = "users", params(UserListQuery),
    security(("bearer" = [])),
    responses((status = 200, body = [UserOut],
        headers(("x-total-count" = i64, description = "Users matching the filters"))),
        AuthErrors, QueryErrors))]
async fn list_users(
    State(state): State<AppState>,
    _staff: StaffUser,
    ApiQuery(query): ApiQuery<UserListQuery>,
) -> ApiResult<Listed<UserOut>> {
    let filter = UserFilter {
        search: query.search.filter(|s| !s.is_empty()),
        is_active: query.is_active,
        page: page(query.skip, query.limit, DEFAULT_LIMIT, MAX_LIMIT)?,
    };
    let (users, total) = state.store.list_users(&filter).await?;
    let items = users.iter().map(|u| UserOut::new(u, &state.ids)).collect();
    Ok(Listed(items, total))
}

/// The caller's own profile.
#[utoipa::path(get, path = "/users/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = UserOut), AuthErrors))]
async fn me(State(state): State<AppState>, caller: AuthUser) -> Json<UserOut> {
    Json(UserOut::new(&caller.user, &state.ids))
}

/// One profile (own, admin, manager).
#[utoipa::path(get, path = "/users/{user_id}", tag = "users", security(("bearer" = [])),
    params(("user_id" = String, Path, description = "Public ID, `me` or username")),
    responses((status = 200, body = UserOut),
        (status = 404, description = "No such user", body = ErrorBody), AuthErrors))]
async fn get_user(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(user_id): ApiPath<String>,
) -> ApiResult<Json<UserOut>> {
    let user = path_user(&state, &caller, &user_id, Access::Read).await?;
    Ok(Json(UserOut::new(&user, &state.ids)))
}

/// Update a user (admin).
#[utoipa::path(patch, path = "/users/{user_id}", tag = "users", request_body = UserUpdate,
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "Public ID, `me` or username")),
    responses((status = 200, body = UserOut),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "The username or email is taken", body = ErrorBody),
        AuthErrors, BodyErrors))]
async fn update_user(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<UserUpdate>,
) -> ApiResult<Json<UserOut>> {
    if let Some(username) = &body.username {
        check_username(username)?;
    }
    if let Some(email) = &body.email {
        check_email(email)?;
    }
    check_optional_text("full_name", body.full_name.as_deref(), 255)?;
    let target = path_user(&state, &admin, &user_id, Access::Write).await?;
    let patch = UserPatch {
        email: body.email,
        username: body.username,
        full_name: body.full_name,
        is_active: body.is_active,
    };
    let user = users::update(&state, &target, &patch)
        .await
        .map_err(conflict)?
        .ok_or_else(|| ApiError::not_found("User"))?;
    Ok(Json(UserOut::new(&user, &state.ids)))
}

/// Delete a user with all their conversations and messages (admin).
#[utoipa::path(delete, path = "/users/{user_id}", tag = "users", security(("bearer" = [])),
    params(("user_id" = String, Path, description = "Public ID, `me` or username")),
    responses((status = 200, body = Deleted),
        (status = 404, description = "No such user", body = ErrorBody), AuthErrors))]
async fn delete_user(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiPath(user_id): ApiPath<String>,
) -> ApiResult<Json<Deleted>> {
    let target = path_user(&state, &admin, &user_id, Access::Write).await?;
    delete_user_row(&state, &target).await
}

/// Deletes a user row (cascading) and answers the deletion.
pub async fn delete_user_row(state: &AppState, user: &User) -> ApiResult<Json<Deleted>> {
    if !users::delete(state, user).await? {
        return Err(ApiError::not_found("User"));
    }
    Ok(Json(Deleted {
        message: "User deleted successfully".to_owned(),
        conversation_id: None,
        user_id: Some(state.ids.user.encode(user.id)),
    }))
}
