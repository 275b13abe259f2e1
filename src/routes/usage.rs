//! Usage and limits: `GET /users/me/usage` and `/users/me/limits` for the caller,
//! `GET /admin/usage` for admins and managers, and each user's own limits under
//! `/admin/users/{user_id}/limits` (admins set them, managers read them).

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{path_user, time_bound, Access};
use crate::auth::{AdminUser, AuthUser, StaffUser};
use crate::db::{UsageGroup, UsageGrouping, UsageQuery, UserLimits};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{optional_integer, ApiJson, ApiPath, ApiQuery};
use crate::openapi::{AuthErrors, BodyErrors, QueryErrors};
use crate::service::usage::{self, BudgetStanding};
use crate::state::AppState;

/// Routes of this file.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(my_usage))
        .routes(routes!(my_limits))
        .routes(routes!(all_usage))
        .routes(routes!(user_limits, set_user_limits))
}

/// Largest messages-per-minute an admin may set.
const MAX_MESSAGES_PER_MINUTE: i64 = 1_000_000;

/// Groups of a user's usage.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MyGrouping {
    /// By calendar day (UTC).
    Day,
    /// By model.
    Model,
    /// By conversation.
    Conversation,
}

/// Groups of everyone's usage.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdminGrouping {
    /// By calendar day (UTC).
    Day,
    /// By model.
    Model,
    /// By user.
    User,
}

/// The period of a usage query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MyUsageQuery {
    /// First day counted (`2026-12-01`; an RFC 3339 time is taken too); default: the first
    /// day of this month (UTC).
    #[param(format = Date)]
    pub from: Option<String>,
    /// Last day counted (`2026-12-31`, the whole day; an RFC 3339 time is the instant before
    /// which calls count); default: the end of this month. Before `from`: nothing.
    #[param(format = Date)]
    pub to: Option<String>,
    /// How to group the sums; absent: totals only.
    #[param(inline)]
    pub group_by: Option<MyGrouping>,
}

/// The period and owner of an admin's usage query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdminUsageQuery {
    /// Only this user's usage: public ID, `me` or username; absent: everyone's (anonymous
    /// chat included).
    pub user_id: Option<String>,
    /// As in `GET /users/me/usage`.
    #[param(format = Date)]
    pub from: Option<String>,
    /// As in `GET /users/me/usage`.
    #[param(format = Date)]
    pub to: Option<String>,
    /// How to group the sums; absent: totals only.
    #[param(inline)]
    pub group_by: Option<AdminGrouping>,
}

/// Sums of LLM calls.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct UsageTotals {
    /// Tokens of the prompts.
    pub prompt_tokens: i64,
    /// Tokens of the answers.
    pub completion_tokens: i64,
    /// Both.
    pub total_tokens: i64,
    /// LLM calls (a reply with tool rounds makes several).
    pub requests: i64,
    /// Tokens whose counts are estimates (the provider reported none).
    pub estimated_tokens: i64,
    /// The share of `total_tokens` that is estimated, 0 to 1.
    pub estimated: f64,
}

impl UsageTotals {
    fn add(&mut self, group: &UsageGroup) {
        self.prompt_tokens += group.prompt_tokens;
        self.completion_tokens += group.completion_tokens;
        self.requests += group.requests;
        self.estimated_tokens += group.estimated_tokens;
        self.total_tokens = self.prompt_tokens + self.completion_tokens;
        self.estimated = match self.total_tokens {
            0 => 0.0,
            total => self.estimated_tokens as f64 / total as f64,
        };
    }
}

/// The sums of one group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageGroupOut {
    /// The group: a day (`2026-12-07`), a model, a conversation's or user's public ID
    /// (`null` for anonymous chat).
    pub key: Option<String>,
    /// Its sums.
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// Usage over a period.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    /// Start of the period (included).
    pub from: DateTime<Utc>,
    /// End of the period (excluded).
    pub to: DateTime<Utc>,
    /// The sums of every call in the period.
    pub totals: UsageTotals,
    /// The sums per group, ordered by key; empty without `group_by`.
    pub groups: Vec<UsageGroupOut>,
}

/// The caller's LLM usage: totals and groups over a period (default: this calendar month,
/// UTC). Deleted conversations' usage stays counted.
#[utoipa::path(get, path = "/users/me/usage", tag = "usage", security(("bearer" = [])),
    params(MyUsageQuery),
    responses((status = 200, body = UsageReport), AuthErrors, QueryErrors))]
async fn my_usage(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(query): ApiQuery<MyUsageQuery>,
) -> ApiResult<Json<UsageReport>> {
    let group_by = match query.group_by {
        None => UsageGrouping::None,
        Some(MyGrouping::Day) => UsageGrouping::Day,
        Some(MyGrouping::Model) => UsageGrouping::Model,
        Some(MyGrouping::Conversation) => UsageGrouping::Conversation,
    };
    let (from, to) = (query.from.as_deref(), query.to.as_deref());
    report(&state, Some(caller.user.id), from, to, group_by).await
}

/// Every user's LLM usage (or one user's), for admins and managers.
#[utoipa::path(get, path = "/admin/usage", tag = "usage", security(("bearer" = [])),
    params(AdminUsageQuery),
    responses((status = 200, body = UsageReport),
        (status = 404, description = "No such user", body = ErrorBody), AuthErrors, QueryErrors))]
async fn all_usage(
    State(state): State<AppState>,
    StaffUser(caller): StaffUser,
    ApiQuery(query): ApiQuery<AdminUsageQuery>,
) -> ApiResult<Json<UsageReport>> {
    let user_id = match &query.user_id {
        Some(raw) => Some(path_user(&state, &caller, raw, Access::Read).await?.id),
        None => None,
    };
    let group_by = match query.group_by {
        None => UsageGrouping::None,
        Some(AdminGrouping::Day) => UsageGrouping::Day,
        Some(AdminGrouping::Model) => UsageGrouping::Model,
        Some(AdminGrouping::User) => UsageGrouping::User,
    };
    let (from, to) = (query.from.as_deref(), query.to.as_deref());
    report(&state, user_id, from, to, group_by).await
}

/// The usage of `user_id` (everyone's: `None`) over the period that `from` and `to` name.
async fn report(
    state: &AppState,
    user_id: Option<i64>,
    from: Option<&str>,
    to: Option<&str>,
    group_by: UsageGrouping,
) -> ApiResult<Json<UsageReport>> {
    let (from, to) = period(from, to)?;
    let query = &UsageQuery {
        user_id,
        from,
        to,
        group_by,
    };
    let groups = state.store.usage_report(query).await?;
    let mut totals = UsageTotals::default();
    let groups = match query.group_by {
        UsageGrouping::None => {
            groups.iter().for_each(|g| totals.add(g));
            Vec::new()
        }
        grouping => groups
            .iter()
            .map(|group| {
                totals.add(group);
                let mut sums = UsageTotals::default();
                sums.add(group);
                UsageGroupOut {
                    key: group_key(state, grouping, group),
                    totals: sums,
                }
            })
            .collect(),
    };
    Ok(Json(UsageReport {
        from: query.from,
        to: query.to,
        totals,
        groups,
    }))
}

fn group_key(state: &AppState, grouping: UsageGrouping, group: &UsageGroup) -> Option<String> {
    match grouping {
        UsageGrouping::None => None,
        UsageGrouping::Model => group.text.clone(),
        UsageGrouping::Day => group
            .number
            .and_then(|day| DateTime::from_timestamp(day * 86_400, 0))
            .map(|day| day.format("%Y-%m-%d").to_string()),
        UsageGrouping::Conversation => group.number.map(|c| state.ids.conversation.encode(c)),
        UsageGrouping::User => group.number.map(|u| state.ids.user.encode(u)),
    }
}

/// The period of a query: `from` and `to` as days or instants; this month by default.
fn period(from: Option<&str>, to: Option<&str>) -> ApiResult<(DateTime<Utc>, DateTime<Utc>)> {
    let today = Utc::now().date_naive();
    let first = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap_or(today);
    let next = first.checked_add_months(Months::new(1)).unwrap_or(first);
    let midnight = |date: NaiveDate| date.and_time(Default::default()).and_utc();
    let from = match from {
        None => midnight(first),
        Some(text) => time_bound("from", text, false)?,
    };
    let to = match to {
        None => midnight(next),
        Some(text) => time_bound("to", text, true)?,
    };
    // A period that ends before it starts holds nothing.
    Ok((from, to.max(from)))
}

/// A message-rate limit.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RateOut {
    /// Messages per minute, in bursts of as many; `null`: unlimited.
    pub limit: Option<u32>,
}

/// A token budget and what is used of it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BudgetOut {
    /// Tokens allowed in the period; `null`: unlimited.
    pub limit: Option<u64>,
    /// Tokens used in the period.
    pub used: u64,
    /// Tokens left; `null`: unlimited. Replies running when it reached 0 may take it below
    /// (answered as 0).
    pub remaining: Option<u64>,
    /// When the period ends and the budget starts again (UTC midnight).
    pub resets_at: DateTime<Utc>,
}

impl From<BudgetStanding> for BudgetOut {
    fn from(standing: BudgetStanding) -> Self {
        Self {
            limit: standing.limit,
            used: standing.used,
            remaining: standing.limit.map(|l| l.saturating_sub(standing.used)),
            resets_at: standing.resets_at,
        }
    }
}

/// The caller's limits and their standing.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StandingOut {
    /// Messages per minute.
    pub messages_per_minute: RateOut,
    /// Tokens of this calendar day (UTC).
    pub tokens_per_day: BudgetOut,
    /// Tokens of this calendar month (UTC).
    pub tokens_per_month: BudgetOut,
}

/// The caller's limits: each one, what is used and left, and when it resets.
#[utoipa::path(get, path = "/users/me/limits", tag = "usage", security(("bearer" = [])),
    responses((status = 200, body = StandingOut), AuthErrors))]
async fn my_limits(
    State(state): State<AppState>,
    caller: AuthUser,
) -> ApiResult<Json<StandingOut>> {
    let standing = usage::standing(&state, caller.user.id, caller.role()).await?;
    Ok(Json(StandingOut {
        messages_per_minute: RateOut {
            limit: standing.messages_per_minute,
        },
        tokens_per_day: standing.tokens_per_day.into(),
        tokens_per_month: standing.tokens_per_month.into(),
    }))
}

/// A user's own limits; `null` is the default of their role.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LimitsOut {
    /// The user's public ID.
    pub user_id: String,
    /// Tokens per calendar day (UTC).
    pub tokens_per_day: Option<i64>,
    /// Tokens per calendar month (UTC).
    pub tokens_per_month: Option<i64>,
    /// Messages per minute.
    pub messages_per_minute: Option<i64>,
}

/// A change of a user's limits: absent fields are kept, `null` goes back to the role's
/// default. Read from a JSON object field by field (`None`: absent, `Some(None)`: `null`), so
/// that no other shape of body is taken for one.
#[derive(Debug, ToSchema)]
pub struct LimitsUpdate {
    /// Tokens per calendar day (UTC), >= 0.
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub tokens_per_day: Option<Option<i64>>,
    /// Tokens per calendar month (UTC), >= 0.
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub tokens_per_month: Option<Option<i64>>,
    /// Messages per minute, 1 to 1,000,000.
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1000000)]
    pub messages_per_minute: Option<Option<i64>>,
}

impl LimitsUpdate {
    /// The change a body's fields ask for, each within `min..=max` or `null`; unknown keys are
    /// ignored.
    fn read(body: &Map<String, Value>) -> ApiResult<Self> {
        let field = |name: &str, min: i64, max: i64| -> ApiResult<Option<Option<i64>>> {
            let wrong = || {
                ApiError::invalid(
                    name,
                    &format!("must be an integer from {min} to {max}, or null"),
                )
            };
            let Some(value) = body.get(name) else {
                return Ok(None);
            };
            match optional_integer(value) {
                Ok(None) => Ok(Some(None)),
                Ok(Some(n)) if (min..=max).contains(&n) => Ok(Some(Some(n))),
                _ => Err(wrong()),
            }
        };
        Ok(Self {
            tokens_per_day: field("tokens_per_day", 0, i64::MAX)?,
            tokens_per_month: field("tokens_per_month", 0, i64::MAX)?,
            messages_per_minute: field("messages_per_minute", 1, MAX_MESSAGES_PER_MINUTE)?,
        })
    }
}

fn limits_out(state: &AppState, user: i64, limits: UserLimits) -> LimitsOut {
    LimitsOut {
        user_id: state.ids.user.encode(user),
        tokens_per_day: limits.tokens_per_day,
        tokens_per_month: limits.tokens_per_month,
        messages_per_minute: limits.messages_per_minute,
    }
}

/// A user's own limits (`null`: their role's default), for admins and managers.
#[utoipa::path(get, path = "/admin/users/{user_id}/limits", tag = "usage",
    security(("bearer" = [])), params(("user_id" = String, Path)),
    responses((status = 200, body = LimitsOut),
        (status = 404, description = "No such user", body = ErrorBody), AuthErrors))]
async fn user_limits(
    State(state): State<AppState>,
    StaffUser(caller): StaffUser,
    ApiPath(user_id): ApiPath<String>,
) -> ApiResult<Json<LimitsOut>> {
    let user = path_user(&state, &caller, &user_id, Access::Read).await?;
    let limits = state.store.user_limits(user.id).await?;
    Ok(Json(limits_out(&state, user.id, limits)))
}

/// Set a user's own limits, for admins; they apply from the user's next message.
#[utoipa::path(put, path = "/admin/users/{user_id}/limits", tag = "usage",
    security(("bearer" = [])), params(("user_id" = String, Path)), request_body = LimitsUpdate,
    responses((status = 200, body = LimitsOut),
        (status = 404, description = "No such user", body = ErrorBody), AuthErrors, BodyErrors))]
async fn set_user_limits(
    State(state): State<AppState>,
    AdminUser(caller): AdminUser,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> ApiResult<Json<LimitsOut>> {
    let user = path_user(&state, &caller, &user_id, Access::Write).await?;
    let change = LimitsUpdate::read(&body)?;
    let current = state.store.user_limits(user.id).await?;
    let limits = UserLimits {
        tokens_per_day: change.tokens_per_day.unwrap_or(current.tokens_per_day),
        tokens_per_month: change.tokens_per_month.unwrap_or(current.tokens_per_month),
        messages_per_minute: change
            .messages_per_minute
            .unwrap_or(current.messages_per_minute),
    };
    let limits = state.store.set_user_limits(user.id, &limits).await?;
    Ok(Json(limits_out(&state, user.id, limits)))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_period_takes_days_and_instants() {
        let (from, to) = period(Some("2026-12-01"), Some("2026-12-07")).unwrap();
        assert_eq!(from, Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
        assert_eq!(to, Utc.with_ymd_and_hms(2026, 12, 8, 0, 0, 0).unwrap());
        let (from, _) = period(Some("2026-12-01T10:00:00+02:00"), None).unwrap();
        assert_eq!(from, Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap());
        assert!(period(Some("yesterday"), None).is_err());
        for text in ["2026-12-01T10:00:00Z", "2026-12-01T10:00:00.5+02:00"] {
            assert!(period(Some(text), None).is_ok(), "{text}");
        }
        // Backwards: an empty period.
        let (from, to) = period(Some("2026-12-03"), Some("2026-12-01")).unwrap();
        assert_eq!(from, to);
    }
}
