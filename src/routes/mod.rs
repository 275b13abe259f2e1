//! HTTP routes, one file per resource, and the helpers they share.

pub mod admin;
pub mod chat;
pub mod conversations;
pub mod dto;
pub mod health;
pub mod messages;
pub mod page;
pub mod users;
pub mod ws;

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::auth::AuthUser;
use crate::db::{Page, User};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Name of the header that carries the total of a list.
pub const TOTAL_COUNT_HEADER: &str = "x-total-count";

/// A page of items answered as a JSON array with the total in `X-Total-Count`.
pub struct Listed<T>(pub Vec<T>, pub i64);

impl<T: Serialize> IntoResponse for Listed<T> {
    fn into_response(self) -> Response {
        let mut response = Json(self.0).into_response();
        response
            .headers_mut()
            .insert(TOTAL_COUNT_HEADER, HeaderValue::from(self.1));
        response
    }
}

/// Default page size of lists.
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest page size of lists.
pub const MAX_LIMIT: i64 = 1000;

/// Validates `skip` (>= 0) and `limit` (1..=`max`, default `default`).
pub fn page(skip: Option<i64>, limit: Option<i64>, default: i64, max: i64) -> ApiResult<Page> {
    let skip = skip.unwrap_or(0);
    if skip < 0 {
        return Err(ApiError::invalid(
            "skip",
            "must be greater than or equal to 0",
        ));
    }
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            &format!("must be between 1 and {max}"),
        ));
    }
    Ok(Page { skip, limit })
}

/// What the caller wants to do with another user's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read: the owner, admins and managers.
    Read,
    /// Create, change or delete: the owner and admins.
    Write,
}

/// Resolves a `{user_id}` path segment (public ID, `me` or username) to a user the caller may
/// act on with this access. Others' IDs are refused before any lookup, so nothing leaks.
pub async fn path_user(
    state: &AppState,
    caller: &AuthUser,
    raw: &str,
    access: Access,
) -> ApiResult<User> {
    let decoded = state.ids.user.decode(raw);
    if raw == "me" || raw == caller.user.username || decoded == Some(caller.user.id) {
        return Ok(caller.user.clone());
    }
    let allowed = caller.is_admin() || (access == Access::Read && caller.is_manager());
    if !allowed {
        return Err(ApiError::forbidden());
    }
    let user = match decoded {
        Some(id) => state.store.user_by_id(id).await?,
        None => state.store.user_by_username(raw).await?,
    };
    user.ok_or_else(|| ApiError::not_found("User"))
}

/// The key of a conversation's public ID; 404 for anything else.
pub fn conversation_key(state: &AppState, raw: &str) -> ApiResult<i64> {
    state
        .ids
        .conversation
        .decode(raw)
        .ok_or_else(|| ApiError::not_found("Conversation"))
}

/// Checks a required text field's length in characters, after trimming.
pub fn check_text(field: &str, value: &str, min: usize, max: usize) -> ApiResult<()> {
    let len = value.trim().chars().count();
    if len < min {
        return Err(if min == 1 {
            ApiError::invalid(field, "must not be empty")
        } else {
            ApiError::invalid(field, &format!("must be at least {min} characters"))
        });
    }
    if value.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            &format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// Checks an optional text field's length in characters.
pub fn check_optional_text(field: &str, value: Option<&str>, max: usize) -> ApiResult<()> {
    match value {
        Some(value) => check_text(field, value, 0, max),
        None => Ok(()),
    }
}

/// Checks that a metadata value is a JSON object.
pub fn check_object(field: &str, value: Option<&serde_json::Value>) -> ApiResult<()> {
    match value {
        Some(v) if !v.is_object() => Err(ApiError::invalid(field, "must be a JSON object")),
        _ => Ok(()),
    }
}
