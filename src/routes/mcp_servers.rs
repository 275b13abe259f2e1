//! `/api/v1/mcp-servers`: the MCP servers a user registers, whose tools are offered to the
//! model in their chats; `/api/v1/admin/mcp-servers`: every user's, for admins.
//!
//! A server's `api_key` is write-only: stored to call the server with, never answered and
//! never logged.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{
    check_object, check_optional_text, check_text, page, Listed, DEFAULT_LIMIT, MAX_LIMIT,
};
use crate::auth::{AdminUser, AuthUser};
use crate::config::Secret;
use crate::db::{McpServer, McpServerFilter, McpServerPatch, NewMcpServer, Scope};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{public_key, ApiJson, ApiPath, ApiQuery};
use crate::ids::IdCodec;
use crate::openapi::{AuthErrors, BodyErrors, QueryErrors};
use crate::service::validate::SERVER_URL_PATTERN;
use crate::state::AppState;

/// Routes of this file.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_server, list_servers))
        .routes(routes!(get_server, update_server, delete_server))
        .routes(routes!(all_servers))
}

/// Longest name.
pub const MAX_NAME_CHARS: usize = 255;
/// Longest server URL.
pub const MAX_URL_CHARS: usize = 500;
/// Longest description.
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Longest API key.
pub const MAX_API_KEY_CHARS: usize = 4096;

/// An API key as a request gives it; its `Debug` never shows the value.
#[derive(Debug, Clone)]
pub struct ApiKey(Secret);

impl<'de> Deserialize<'de> for ApiKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|key| Self(Secret::new(key)))
    }
}

/// Reads a field that may be absent (outer `None`: keep the value) or `null` (`Some(None)`:
/// clear it).
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Body of a registration.
#[derive(Debug, Deserialize, ToSchema)]
pub struct McpServerCreate {
    /// Display name (1-255 characters).
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    /// What it offers (up to 2,000 characters).
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// Its `http` or `https` endpoint (1-500 characters), without credentials in it.
    #[schema(min_length = 1, max_length = 500)]
    pub server_url: String,
    /// Whether its tools are offered in chats (default `true`).
    pub is_active: Option<bool>,
    /// Free-form JSON object.
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    /// Sent to the server as a bearer token; write-only, never answered.
    #[schema(value_type = Option<String>, write_only)]
    pub api_key: Option<ApiKey>,
}

/// Body of a change: absent fields are kept; `null` clears `description`, `config` and
/// `api_key`; an empty `api_key` keeps the stored one.
#[derive(Debug, Deserialize, ToSchema)]
pub struct McpServerUpdate {
    /// New display name (1-255 characters).
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    /// New description.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// New `http` or `https` endpoint (1-500 characters).
    #[schema(min_length = 1, max_length = 500)]
    pub server_url: Option<String>,
    /// New active flag.
    pub is_active: Option<bool>,
    /// New configuration, a JSON object.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    pub config: Option<Option<Value>>,
    /// New API key; write-only, never answered.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, write_only)]
    pub api_key: Option<Option<ApiKey>>,
}

/// Filters of an MCP server list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct McpServerListQuery {
    /// Rows to skip (>= 0).
    #[param(minimum = 0)]
    pub skip: Option<i64>,
    /// Rows to return (1..1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Only active servers (default `false`).
    pub active_only: Option<bool>,
}

/// An MCP server as answered by the API; its API key is never part of it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct McpServerOut {
    /// Public ID (10 characters).
    pub id: String,
    /// Owner's public ID.
    pub user_id: String,
    /// Display name.
    pub name: String,
    /// What it offers.
    pub description: Option<String>,
    /// Its endpoint.
    pub server_url: String,
    /// Whether its tools are offered in chats.
    pub is_active: bool,
    /// Free-form JSON object.
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl McpServerOut {
    /// The API shape of a server row.
    pub fn new(server: &McpServer, ids: &IdCodec) -> Self {
        Self {
            id: ids.mcp_server.encode(server.id),
            user_id: ids.user.encode(server.user_id),
            name: server.name.clone(),
            description: server.description.clone(),
            server_url: server.server_url.clone(),
            is_active: server.is_active,
            config: server.config.clone(),
            created_at: server.created_at,
            updated_at: server.updated_at,
        }
    }
}

/// Answer of a deletion.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct McpServerDeleted {
    /// A human message.
    pub message: String,
    /// Public ID of the deleted server.
    pub server_id: String,
}

/// A checked name, trimmed.
fn checked_name(name: &str) -> ApiResult<String> {
    check_text("name", name, 1, MAX_NAME_CHARS)?;
    Ok(name.trim().to_owned())
}

/// A checked server URL: `http` or `https` with a host, and no credentials (they would be
/// answered with the URL; the API key is the place for them).
fn checked_url(url: &str) -> ApiResult<String> {
    check_text("server_url", url, 1, MAX_URL_CHARS)?;
    static PATTERN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(SERVER_URL_PATTERN).expect("a valid pattern")
    });
    if !PATTERN.is_match(url) {
        return Err(ApiError::invalid(
            "server_url",
            "must be an http or https URL: a host, an optional port, a plain path",
        ));
    }
    let parsed =
        url::Url::parse(url).map_err(|_| ApiError::invalid("server_url", "must be a valid URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ApiError::invalid(
            "server_url",
            "must be an http or https URL",
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::invalid("server_url", "must name a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ApiError::invalid(
            "server_url",
            "must not contain credentials; give them as api_key",
        ));
    }
    Ok(url.to_owned())
}

/// A checked description; a blank one is none.
fn checked_description(description: Option<String>) -> ApiResult<Option<String>> {
    check_optional_text("description", description.as_deref(), MAX_DESCRIPTION_CHARS)?;
    Ok(description.filter(|d| !d.trim().is_empty()))
}

/// A checked API key; an empty one is none.
fn checked_key(key: Option<ApiKey>) -> ApiResult<Option<Secret>> {
    let key = key.map(|k| k.0).filter(|k| !k.expose().is_empty());
    check_optional_text(
        "api_key",
        key.as_ref().map(Secret::expose),
        MAX_API_KEY_CHARS,
    )?;
    Ok(key)
}

/// The key of a server's public ID; 404 for anything else.
fn server_key(state: &AppState, raw: &str) -> ApiResult<i64> {
    public_key(&state.ids.mcp_server, raw, "MCP server")
}

/// The servers a caller may reach by ID: their own, or any for admins. Managers read no one
/// else's: a server's configuration is its owner's business.
fn reach(caller: &AuthUser) -> Scope {
    caller.write_scope()
}

fn out(state: &AppState, server: &McpServer) -> Json<McpServerOut> {
    Json(McpServerOut::new(server, &state.ids))
}

/// A page of servers within a scope, as a list answer.
async fn list_page(
    state: &AppState,
    scope: Scope,
    query: McpServerListQuery,
) -> ApiResult<Listed<McpServerOut>> {
    let filter = McpServerFilter {
        active_only: query.active_only.unwrap_or(false),
        page: page(query.skip, query.limit, DEFAULT_LIMIT, MAX_LIMIT)?,
    };
    let (servers, total) = state.store.list_mcp_servers(scope, &filter).await?;
    let items = servers
        .iter()
        .map(|s| McpServerOut::new(s, &state.ids))
        .collect();
    Ok(Listed(items, total))
}

/// Register an MCP server for the caller.
#[utoipa::path(post, path = "/mcp-servers", tag = "mcp-servers", security(("bearer" = [])),
    request_body = McpServerCreate,
    responses((status = 201, body = McpServerOut), AuthErrors, BodyErrors))]
async fn create_server(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(body): ApiJson<McpServerCreate>,
) -> ApiResult<(StatusCode, Json<McpServerOut>)> {
    check_object("config", body.config.as_ref())?;
    let new = NewMcpServer {
        name: checked_name(&body.name)?,
        description: checked_description(body.description)?,
        server_url: checked_url(&body.server_url)?,
        is_active: body.is_active.unwrap_or(true),
        config: body.config,
        api_key: checked_key(body.api_key)?,
    };
    let server = state.store.create_mcp_server(caller.user.id, &new).await?;
    tracing::info!(
        server_id = server.id,
        user_id = caller.user.id,
        "registered MCP server"
    );
    Ok((StatusCode::CREATED, out(&state, &server)))
}

/// The caller's MCP servers, oldest first.
#[utoipa::path(get, path = "/mcp-servers", tag = "mcp-servers", security(("bearer" = [])),
    params(McpServerListQuery),
    responses((status = 200, body = [McpServerOut],
        headers(("x-total-count" = i64, description = "Servers matching the filters"))), AuthErrors, QueryErrors))]
async fn list_servers(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(query): ApiQuery<McpServerListQuery>,
) -> ApiResult<Listed<McpServerOut>> {
    list_page(&state, Scope::Owner(caller.user.id), query).await
}

/// Every user's MCP servers, oldest first.
#[utoipa::path(get, path = "/admin/mcp-servers", tag = "admin", security(("bearer" = [])),
    params(McpServerListQuery),
    responses((status = 200, body = [McpServerOut],
        headers(("x-total-count" = i64, description = "Servers matching the filters"))), AuthErrors, QueryErrors))]
async fn all_servers(
    State(state): State<AppState>,
    _admin: AdminUser,
    ApiQuery(query): ApiQuery<McpServerListQuery>,
) -> ApiResult<Listed<McpServerOut>> {
    list_page(&state, Scope::Anyone, query).await
}

/// One MCP server: the caller's, or any for admins.
#[utoipa::path(get, path = "/mcp-servers/{server_id}", tag = "mcp-servers",
    security(("bearer" = [])), params(("server_id" = String, Path)),
    responses((status = 200, body = McpServerOut), (status = 404, body = ErrorBody), AuthErrors))]
async fn get_server(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(server_id): ApiPath<String>,
) -> ApiResult<Json<McpServerOut>> {
    let key = server_key(&state, &server_id)?;
    let server = state
        .store
        .mcp_server(reach(&caller), key)
        .await?
        .ok_or_else(|| ApiError::not_found("MCP server"))?;
    Ok(out(&state, &server))
}

/// Change an MCP server: the fields given (PUT does the same, for compatibility).
#[utoipa::path(method(patch, put), path = "/mcp-servers/{server_id}", tag = "mcp-servers",
    security(("bearer" = [])), request_body = McpServerUpdate,
    params(("server_id" = String, Path)),
    responses((status = 200, body = McpServerOut), (status = 404, body = ErrorBody), AuthErrors, BodyErrors))]
async fn update_server(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(server_id): ApiPath<String>,
    ApiJson(body): ApiJson<McpServerUpdate>,
) -> ApiResult<Json<McpServerOut>> {
    if let Some(Some(config)) = &body.config {
        check_object("config", Some(config))?;
    }
    let patch = McpServerPatch {
        name: body.name.as_deref().map(checked_name).transpose()?,
        description: body.description.map(checked_description).transpose()?,
        server_url: body.server_url.as_deref().map(checked_url).transpose()?,
        is_active: body.is_active,
        config: body.config,
        api_key: match body.api_key {
            // An empty key is what a form sends when the write-only field was left alone.
            Some(Some(key)) if key.0.expose().is_empty() => None,
            Some(key) => Some(checked_key(key)?),
            None => None,
        },
    };
    let key = server_key(&state, &server_id)?;
    let server = state
        .store
        .update_mcp_server(reach(&caller), key, &patch)
        .await?
        .ok_or_else(|| ApiError::not_found("MCP server"))?;
    Ok(out(&state, &server))
}

/// Delete an MCP server.
#[utoipa::path(delete, path = "/mcp-servers/{server_id}", tag = "mcp-servers",
    security(("bearer" = [])), params(("server_id" = String, Path)),
    responses((status = 200, body = McpServerDeleted), (status = 404, body = ErrorBody), AuthErrors))]
async fn delete_server(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(server_id): ApiPath<String>,
) -> ApiResult<Json<McpServerDeleted>> {
    let key = server_key(&state, &server_id)?;
    if !state.store.delete_mcp_server(reach(&caller), key).await? {
        return Err(ApiError::not_found("MCP server"));
    }
    tracing::info!(
        server_id = key,
        user_id = caller.user.id,
        "deleted MCP server"
    );
    Ok(Json(McpServerDeleted {
        message: "MCP server deleted successfully".to_owned(),
        server_id,
    }))
}
