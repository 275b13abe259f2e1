//! HTTP routes, one file per resource, and the helpers they share.

pub mod admin;
pub mod api_keys;
pub mod chat;
pub mod conversations;
pub mod health;
pub mod mcp_servers;
pub mod messages;
pub mod openai;
pub mod page;
pub mod search;
pub mod usage;
pub mod users;

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::auth::AuthUser;
use crate::db::{Page, User};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub use crate::extract::{conversation_key, message_key};
pub use crate::service::validate::{check_object, check_optional_text, check_text};

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

/// A time bound of a query's `field`: an RFC 3339 time, or a date, which stands for its start
/// (UTC), or with `end_of_day` for the start of the next day.
pub fn time_bound(field: &str, value: &str, end_of_day: bool) -> ApiResult<DateTime<Utc>> {
    let invalid = || ApiError::invalid(field, "must be a date (YYYY-MM-DD) or an RFC 3339 time");
    if let Ok(time) = DateTime::parse_from_rfc3339(value) {
        return Ok(time.with_timezone(&Utc));
    }
    let date = NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| invalid())?;
    let date = if end_of_day {
        date.succ_opt()
    } else {
        Some(date)
    };
    Ok(date
        .ok_or_else(invalid)?
        .and_time(Default::default())
        .and_utc())
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
    let allowed = caller.is_admin() || (access == Access::Read && caller.can_read_all());
    if !allowed {
        return Err(ApiError::forbidden());
    }
    let user = match decoded {
        Some(id) => state.store.user_by_id(id).await?,
        // No username holds a NUL, and PostgreSQL refuses one in a query.
        None if raw.contains('\0') => None,
        None => state.store.user_by_username(raw).await?,
    };
    user.ok_or_else(|| ApiError::not_found("User"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_bound_a_query() {
        let start = time_bound("from", "2026-03-01", false).unwrap();
        let end = time_bound("to", "2026-03-01", true).unwrap();
        assert_eq!((end - start).num_days(), 1);
        assert_eq!(
            time_bound("from", "2026-03-01T00:00:00Z", false).unwrap(),
            start
        );
        assert_eq!(
            time_bound("from", "2026-03-01T01:00:00+01:00", false).unwrap(),
            start
        );
        for bad in [
            "yesterday",
            "2026-13-01",
            "",
            "+262143-12-31",
            "2026-03-01\0",
        ] {
            assert!(time_bound("from", bad, false).is_err(), "{bad:?}");
        }
    }
}
