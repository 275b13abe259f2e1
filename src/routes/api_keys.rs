//! `/api/v1/users/me/api-keys`: a user's personal API keys, for scripts and OpenAI-compatible
//! clients; `/api/v1/admin/users/{user_id}/api-keys`: any user's, for admins.
//!
//! A key is answered once, when it is made; lists show a short prefix to recognise it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{page, path_user, Access, Listed, DEFAULT_LIMIT, MAX_LIMIT};
use crate::auth::{AdminUser, AuthUser};
use crate::db::ApiKey;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{public_key, ApiJson, ApiPath, ApiQuery};
use crate::ids::IdCodec;
use crate::openapi::{AuthErrors, BodyErrors, QueryErrors};
use crate::service::api_keys;
use crate::service::validate::parse_time;
use crate::state::AppState;

/// Routes of this file.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
        .routes(routes!(user_keys))
        .routes(routes!(revoke_user_key))
}

/// Body of a new key.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ApiKeyCreate {
    /// What the key is for (1-100 characters).
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// When it stops working (RFC 3339); never when absent. A time already past makes a key
    /// that is refused from the start.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<String>,
}

/// An API key as lists answer it: never the key itself.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKeyOut {
    /// Public ID (10 characters).
    pub id: String,
    /// Owner's public ID.
    pub user_id: String,
    /// What the key is for.
    pub name: String,
    /// The key's first characters (`cs-` and 8 more), to recognise it.
    pub prefix: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When it stops working; `null`: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used (to the minute); `null`: never.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKeyOut {
    fn new(key: &ApiKey, ids: &IdCodec) -> Self {
        Self {
            id: ids.api_key.encode(key.id),
            user_id: ids.user.encode(key.user_id),
            name: key.name.clone(),
            prefix: key.prefix.clone(),
            created_at: key.created_at,
            expires_at: key.expires_at,
            last_used_at: key.last_used_at,
        }
    }
}

/// A key just made, with the key itself: the only time it is answered.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKeyCreated {
    /// The key's record.
    #[serde(flatten)]
    pub record: ApiKeyOut,
    /// The key (`cs-` and 43 characters): keep it, it is not shown again.
    pub key: String,
}

/// Answer of a revocation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKeyRevoked {
    /// A human message.
    pub message: String,
    /// Public ID of the revoked key.
    pub key_id: String,
}

/// Paging of a key list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApiKeyListQuery {
    /// Rows to skip (>= 0).
    #[param(minimum = 0)]
    pub skip: Option<i64>,
    /// Rows to return (1..1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

fn key_key(state: &AppState, raw: &str) -> ApiResult<i64> {
    public_key(&state.ids.api_key, raw, "API key")
}

async fn list_page(
    state: &AppState,
    owner: i64,
    query: ApiKeyListQuery,
) -> ApiResult<Listed<ApiKeyOut>> {
    let page = page(query.skip, query.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let (keys, total) = api_keys::list(state, owner, page).await?;
    let items = keys.iter().map(|k| ApiKeyOut::new(k, &state.ids)).collect();
    Ok(Listed(items, total))
}

async fn revoke(state: &AppState, owner: i64, raw: String) -> ApiResult<Json<ApiKeyRevoked>> {
    let key = key_key(state, &raw)?;
    api_keys::revoke(state, owner, key).await?;
    Ok(Json(ApiKeyRevoked {
        message: "API key revoked".to_owned(),
        key_id: raw,
    }))
}

/// Make an API key for the caller. It authenticates as the caller with plain user rights (their
/// own data, never an admin's or a manager's), on `/v1` and the REST API. Only a JWT may make
/// keys.
#[utoipa::path(post, path = "/users/me/api-keys", tag = "api-keys", security(("bearer" = [])),
    request_body = ApiKeyCreate,
    responses((status = 201, body = ApiKeyCreated), AuthErrors, BodyErrors))]
async fn create_key(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(body): ApiJson<ApiKeyCreate>,
) -> ApiResult<(StatusCode, Json<ApiKeyCreated>)> {
    if caller.api_key.is_some() {
        return Err(ApiError::Forbidden(
            "API keys cannot make API keys; use a token".to_owned(),
        ));
    }
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|at| parse_time("expires_at", at))
        .transpose()?;
    let created = api_keys::create(&state, caller.user.id, &body.name, expires_at).await?;
    Ok((
        StatusCode::CREATED,
        Json(ApiKeyCreated {
            record: ApiKeyOut::new(&created.key, &state.ids),
            key: created.secret.expose().to_owned(),
        }),
    ))
}

/// The caller's API keys, oldest first, without the keys themselves.
#[utoipa::path(get, path = "/users/me/api-keys", tag = "api-keys", security(("bearer" = [])),
    params(ApiKeyListQuery),
    responses((status = 200, body = [ApiKeyOut],
        headers(("x-total-count" = i64, description = "The caller's keys"))), AuthErrors, QueryErrors))]
async fn list_keys(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(query): ApiQuery<ApiKeyListQuery>,
) -> ApiResult<Listed<ApiKeyOut>> {
    list_page(&state, caller.user.id, query).await
}

/// Revoke one of the caller's API keys: it is refused at once, on every instance.
#[utoipa::path(delete, path = "/users/me/api-keys/{key_id}", tag = "api-keys",
    security(("bearer" = [])), params(("key_id" = String, Path)),
    responses((status = 200, body = ApiKeyRevoked), (status = 404, body = ErrorBody), AuthErrors))]
async fn revoke_key(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(key_id): ApiPath<String>,
) -> ApiResult<Json<ApiKeyRevoked>> {
    revoke(&state, caller.user.id, key_id).await
}

/// A user's API keys, oldest first, without the keys themselves.
#[utoipa::path(get, path = "/admin/users/{user_id}/api-keys", tag = "admin",
    security(("bearer" = [])), params(("user_id" = String, Path), ApiKeyListQuery),
    responses((status = 200, body = [ApiKeyOut],
        headers(("x-total-count" = i64, description = "The user's keys"))),
        (status = 404, body = ErrorBody), AuthErrors, QueryErrors))]
async fn user_keys(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiPath(user_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ApiKeyListQuery>,
) -> ApiResult<Listed<ApiKeyOut>> {
    let user = path_user(&state, &admin, &user_id, Access::Write).await?;
    list_page(&state, user.id, query).await
}

/// Revoke a user's API key.
#[utoipa::path(delete, path = "/admin/users/{user_id}/api-keys/{key_id}", tag = "admin",
    security(("bearer" = [])), params(("user_id" = String, Path), ("key_id" = String, Path)),
    responses((status = 200, body = ApiKeyRevoked), (status = 404, body = ErrorBody), AuthErrors))]
async fn revoke_user_key(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiPath((user_id, key_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<ApiKeyRevoked>> {
    let user = path_user(&state, &admin, &user_id, Access::Write).await?;
    revoke(&state, user.id, key_id).await
}
