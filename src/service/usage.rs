//! Usage accounting and limits, for every caller of the LLM: [`admit`] a turn before
//! anything of it is stored or asked (message rate, daily and monthly token budgets), and
//! [`record`] each LLM call it made (ledger, running totals, metrics). A chat turn does both
//! in `chat::start` and its generation task, so every kind of turn inherits them; another
//! caller of the provider (an API, titles) calls them the same way.
//!
//! Limits come from the settings (role defaults) unless an admin set the user's own. A budget
//! is checked, not reserved: a turn is admitted while the period's tokens are under the
//! budget, and its tokens are added when its calls are recorded, so a budget can be overdrawn
//! by the replies already running when it was reached.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{ServiceError, ServiceResult};
use crate::chat::llm::Usage;
use crate::config::UsageLimits;
use crate::db::NewUsage;
use crate::limits::{Budget, Check, Period, PeriodKind, Rate, Subject, Verdict};
use crate::metrics::{self, TokenKind};
use crate::state::AppState;

/// Tries of a check that found a running total missing and seeded it.
const SEED_TRIES: usize = 3;

/// The highest role of a caller, which picks the default budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A user.
    User,
    /// A manager.
    Manager,
    /// An admin.
    Admin,
}

impl Role {
    /// The highest of a token's roles.
    pub fn of(roles: &[String]) -> Self {
        if roles.iter().any(|r| r == "admin") {
            Self::Admin
        } else if roles.iter().any(|r| r == "manager") {
            Self::Manager
        } else {
            Self::User
        }
    }
}

/// Who a turn is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    /// A user, by key, with the role that picks their default budgets.
    User {
        /// The user's key.
        id: i64,
        /// Their highest role.
        role: Role,
    },
    /// Anonymous chat from a client address (`None` when unknown: one shared bucket).
    Anonymous {
        /// The client's address.
        address: Option<IpAddr>,
    },
}

impl Account {
    /// The user's key; `None` for anonymous chat.
    pub fn user(&self) -> Option<i64> {
        match self {
            Self::User { id, .. } => Some(*id),
            Self::Anonymous { .. } => None,
        }
    }
}

/// A limit a turn can be refused by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Messages per minute.
    MessagesPerMinute,
    /// Tokens per calendar day (UTC).
    TokensPerDay,
    /// Tokens per calendar month (UTC).
    TokensPerMonth,
}

impl Limit {
    /// Its name in answers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessagesPerMinute => "messages_per_minute",
            Self::TokensPerDay => "tokens_per_day",
            Self::TokensPerMonth => "tokens_per_month",
        }
    }

    fn of(kind: PeriodKind) -> Self {
        match kind {
            PeriodKind::Day => Self::TokensPerDay,
            PeriodKind::Month => Self::TokensPerMonth,
        }
    }
}

/// Why a turn was refused, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.detail())]
pub struct Refusal {
    /// The limit reached.
    pub limit: Limit,
    /// How long until the turn would be admitted.
    pub retry_after: Duration,
}

impl Refusal {
    /// The wait in whole seconds, rounded up (at least 1), as `Retry-After` says it.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        let rounded = secs + u64::from(self.retry_after.subsec_nanos() > 0);
        rounded.max(1)
    }

    /// A plain sentence for the user.
    pub fn detail(&self) -> String {
        let wait = spoken(self.retry_after_secs());
        match self.limit {
            Limit::MessagesPerMinute => {
                format!("Too many messages in a minute; try again in {wait}")
            }
            Limit::TokensPerDay => {
                format!("Your daily token budget is spent; it resets in {wait}")
            }
            Limit::TokensPerMonth => {
                format!("Your monthly token budget is spent; it resets in {wait}")
            }
        }
    }
}

/// A wait as people say it: `45 s`, `12 min`, `16 h 35 min`, `3 d 4 h`.
fn spoken(seconds: u64) -> String {
    let (minutes, hours, days) = (seconds.div_ceil(60), seconds / 3600, seconds / 86_400);
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{minutes} min"),
        3600..86_400 => format!("{hours} h {} min", (seconds % 3600) / 60),
        _ => format!("{days} d {} h", (seconds % 86_400) / 3600),
    }
}

/// A turn that may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission;

/// The limits that apply to a user: their own where an admin set them, else their role's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Effective {
    /// Messages per minute; `None`: unlimited.
    pub messages_per_minute: Option<u32>,
    /// Tokens per day; `None`: unlimited.
    pub tokens_per_day: Option<u64>,
    /// Tokens per month; `None`: unlimited.
    pub tokens_per_month: Option<u64>,
}

/// The defaults of a role.
fn role_defaults(settings: &UsageLimits, role: Role) -> Effective {
    let (daily, monthly) = match role {
        Role::User => (
            settings.daily_user.or(settings.daily),
            settings.monthly_user.or(settings.monthly),
        ),
        Role::Manager => (
            settings.daily_manager.or(settings.daily),
            settings.monthly_manager.or(settings.monthly),
        ),
        Role::Admin => (settings.daily_admin, settings.monthly_admin),
    };
    Effective {
        messages_per_minute: Some(settings.messages_per_minute).filter(|n| *n > 0),
        tokens_per_day: daily,
        tokens_per_month: monthly,
    }
}

/// The limits that apply to `user`, whose highest role is `role`.
pub async fn effective(state: &AppState, user: i64, role: Role) -> ServiceResult<Effective> {
    let own = state.store.user_limits(user).await?;
    let defaults = role_defaults(&state.settings.usage, role);
    let tokens = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(Effective {
        messages_per_minute: match own.messages_per_minute {
            Some(n) => u32::try_from(n).ok().filter(|n| *n > 0),
            None => defaults.messages_per_minute,
        },
        tokens_per_day: own.tokens_per_day.map(tokens).or(defaults.tokens_per_day),
        tokens_per_month: own
            .tokens_per_month
            .map(tokens)
            .or(defaults.tokens_per_month),
    })
}

/// Admits a turn of `account`, or refuses it with [`ServiceError::Limited`]: the budgets
/// are checked, then one message of the rate is taken, atomically (across every instance
/// with Redis). Call it before anything of the turn is stored or the LLM is asked.
pub async fn admit(state: &AppState, account: Account) -> ServiceResult<Admission> {
    let now = Utc::now();
    let check = match account {
        Account::User { id, role } => {
            let limits = effective(state, id, role).await?;
            let budget = |kind, limit: Option<u64>| {
                limit.map(|limit| Budget {
                    period: Period::of(kind, now),
                    limit,
                })
            };
            Check {
                subject: Subject::User(id),
                rate: limits
                    .messages_per_minute
                    .map(|per_minute| Rate { per_minute }),
                budgets: [
                    budget(PeriodKind::Day, limits.tokens_per_day),
                    budget(PeriodKind::Month, limits.tokens_per_month),
                ]
                .into_iter()
                .flatten()
                .collect(),
            }
        }
        Account::Anonymous { address } => Check {
            subject: Subject::Address(address.unwrap_or(IpAddr::from([0, 0, 0, 0]))),
            rate: Some(state.settings.usage.anon_messages_per_minute)
                .filter(|n| *n > 0)
                .map(|per_minute| Rate { per_minute }),
            budgets: Vec::new(),
        },
    };
    if check.rate.is_none() && check.budgets.is_empty() {
        return Ok(Admission);
    }
    for _ in 0..SEED_TRIES {
        let refusal = match state.limits.check(&check).await {
            Verdict::Admitted => return Ok(Admission),
            Verdict::Missing(kind) => {
                if let Subject::User(user) = check.subject {
                    let period = Period::of(kind, now);
                    let used = state.store.tokens_since(user, period.start).await?;
                    let used = u64::try_from(used).unwrap_or(0);
                    state.limits.seed(user, &period, used).await;
                }
                continue;
            }
            Verdict::RateLimited(wait) => Refusal {
                limit: Limit::MessagesPerMinute,
                retry_after: wait,
            },
            Verdict::OverBudget(kind, _) => Refusal {
                limit: Limit::of(kind),
                retry_after: (Period::of(kind, now).end - Utc::now())
                    .to_std()
                    .unwrap_or_default(),
            },
        };
        metrics::usage_refused(refusal.limit.as_str());
        return Err(ServiceError::Limited(refusal));
    }
    // The totals keep vanishing (Redis evicting them): the ledger is checked another time.
    tracing::warn!("usage totals could not be kept; a turn was admitted without its budgets");
    Ok(Admission)
}

/// What an LLM call was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// The first call of a reply.
    Reply,
    /// A call of a reply after tool results.
    Tool,
    /// A conversation's title.
    Title,
    /// A call of the OpenAI-compatible API.
    Api,
}

impl CallKind {
    /// Its name in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reply => "reply",
            Self::Tool => "tool",
            Self::Title => "title",
            Self::Api => "api",
        }
    }
}

/// One LLM call, as its usage is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmCall {
    /// The model asked.
    pub model: String,
    /// What it was for.
    pub kind: CallKind,
    /// Its tokens, reported or estimated.
    pub usage: Usage,
}

/// Records LLM calls made for `user` (`None`: anonymous) in `conversation`: in the ledger,
/// the running totals of the user's budgets and the token metrics. A failure to record is
/// logged, never the caller's: the reply was made.
pub async fn record(
    state: &AppState,
    user: Option<i64>,
    conversation: Option<i64>,
    calls: &[LlmCall],
) {
    if calls.is_empty() {
        return;
    }
    let now = Utc::now();
    let rows: Vec<NewUsage> = calls
        .iter()
        .map(|call| NewUsage {
            user_id: user,
            conversation_id: conversation,
            model: call.model.clone(),
            kind: call.kind.as_str(),
            prompt_tokens: i64::from(call.usage.prompt_tokens),
            completion_tokens: i64::from(call.usage.completion_tokens),
            estimated: call.usage.estimated,
            created_at: now,
        })
        .collect();
    for call in calls {
        metrics::llm_tokens(
            &call.model,
            TokenKind::Prompt,
            u64::from(call.usage.prompt_tokens),
        );
        metrics::llm_tokens(
            &call.model,
            TokenKind::Completion,
            u64::from(call.usage.completion_tokens),
        );
    }
    if let Err(err) = state.store.record_usage(&rows).await {
        tracing::error!(error = ?err, "could not record LLM usage");
        return;
    }
    let Some(user) = user else {
        return;
    };
    let tokens: u64 = calls
        .iter()
        .map(|c| u64::from(c.usage.prompt_tokens) + u64::from(c.usage.completion_tokens))
        .sum();
    if tokens > 0 {
        let periods = [
            Period::of(PeriodKind::Day, now),
            Period::of(PeriodKind::Month, now),
        ];
        state.limits.add(user, &periods, tokens).await;
    }
}

/// One budget's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetStanding {
    /// Tokens allowed in the period; `None`: unlimited.
    pub limit: Option<u64>,
    /// Tokens used in the period.
    pub used: u64,
    /// When the period ends.
    pub resets_at: DateTime<Utc>,
}

/// A user's limits and what they used of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Messages per minute; `None`: unlimited.
    pub messages_per_minute: Option<u32>,
    /// Today's tokens.
    pub tokens_per_day: BudgetStanding,
    /// This month's tokens.
    pub tokens_per_month: BudgetStanding,
}

/// `user`'s limits and what they used of them, from the ledger.
pub async fn standing(state: &AppState, user: i64, role: Role) -> ServiceResult<Standing> {
    let limits = effective(state, user, role).await?;
    let now = Utc::now();
    let budget = |kind, limit| {
        let period = Period::of(kind, now);
        async move {
            let used = state.store.tokens_since(user, period.start).await?;
            Ok::<_, ServiceError>(BudgetStanding {
                limit,
                used: u64::try_from(used).unwrap_or(0),
                resets_at: period.end,
            })
        }
    };
    let day = budget(PeriodKind::Day, limits.tokens_per_day).await?;
    let month = budget(PeriodKind::Month, limits.tokens_per_month).await?;
    Ok(Standing {
        messages_per_minute: limits.messages_per_minute,
        tokens_per_day: day,
        tokens_per_month: month,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_rounded_up_and_spoken() {
        let refusal = |limit, retry_after| Refusal { limit, retry_after };
        let rate = refusal(Limit::MessagesPerMinute, Duration::from_millis(29_001));
        assert_eq!(rate.retry_after_secs(), 30);
        assert_eq!(
            rate.detail(),
            "Too many messages in a minute; try again in 30 s"
        );
        let instant = refusal(Limit::MessagesPerMinute, Duration::ZERO);
        assert_eq!(instant.retry_after_secs(), 1);
        let day = refusal(Limit::TokensPerDay, Duration::from_secs(59_692));
        assert_eq!(
            day.detail(),
            "Your daily token budget is spent; it resets in 16 h 34 min"
        );
        let month = refusal(
            Limit::TokensPerMonth,
            Duration::from_secs(3 * 86_400 + 7200),
        );
        assert!(
            month.detail().ends_with("resets in 3 d 2 h"),
            "{}",
            month.detail()
        );
        assert_eq!(spoken(61), "2 min");
    }

    #[test]
    fn roles_pick_their_budgets_and_admins_are_unlimited_unless_set() {
        let mut settings = crate::config::Settings::default().usage;
        settings.daily = Some(100);
        settings.monthly_manager = Some(5000);
        let user = role_defaults(&settings, Role::User);
        assert_eq!(
            (user.tokens_per_day, user.tokens_per_month),
            (Some(100), None)
        );
        let manager = role_defaults(&settings, Role::Manager);
        assert_eq!(
            (manager.tokens_per_day, manager.tokens_per_month),
            (Some(100), Some(5000))
        );
        let admin = role_defaults(&settings, Role::Admin);
        assert_eq!((admin.tokens_per_day, admin.tokens_per_month), (None, None));
        assert_eq!(admin.messages_per_minute, Some(30));
        settings.messages_per_minute = 0;
        assert_eq!(
            role_defaults(&settings, Role::User).messages_per_minute,
            None
        );
        assert_eq!(Role::of(&["user".into(), "admin".into()]), Role::Admin);
        assert_eq!(Role::of(&[]), Role::User);
    }
}
