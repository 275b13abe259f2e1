//! Rows of the usage ledger and of users' limits.

use chrono::{DateTime, Utc};

/// One LLM call to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUsage {
    /// Who it was made for; `None` for anonymous chat.
    pub user_id: Option<i64>,
    /// The conversation it was made in, if any.
    pub conversation_id: Option<i64>,
    /// The model asked.
    pub model: String,
    /// What the call was: `reply`, `tool` (a round after tool results), `title`, ...
    pub kind: &'static str,
    /// Tokens of the prompt.
    pub prompt_tokens: i64,
    /// Tokens of the answer.
    pub completion_tokens: i64,
    /// Whether the counts are estimates (the provider reported none).
    pub estimated: bool,
    /// When the call was made.
    pub created_at: DateTime<Utc>,
}

/// How usage is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGrouping {
    /// One group of everything.
    None,
    /// By calendar day (UTC).
    Day,
    /// By model.
    Model,
    /// By conversation.
    Conversation,
    /// By user.
    User,
}

/// Which usage to add up.
#[derive(Debug, Clone, Copy)]
pub struct UsageQuery {
    /// Only this user's calls; `None`: everyone's (anonymous ones included).
    pub user_id: Option<i64>,
    /// From this time on.
    pub from: DateTime<Utc>,
    /// Before this time.
    pub to: DateTime<Utc>,
    /// How to group the sums.
    pub group_by: UsageGrouping,
}

/// What one group of the usage adds up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageGroup {
    /// The group: a day (days since the Unix epoch), a conversation or user key; `None` for
    /// the single group, or for anonymous calls grouped by user.
    pub number: Option<i64>,
    /// The model, when grouped by model.
    pub text: Option<String>,
    /// Tokens of the prompts.
    pub prompt_tokens: i64,
    /// Tokens of the answers.
    pub completion_tokens: i64,
    /// Calls.
    pub requests: i64,
    /// Tokens (prompt and answer) of the calls whose counts are estimates.
    pub estimated_tokens: i64,
}

/// The limits an admin set for one user; `None` keeps the default of the user's role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserLimits {
    /// Tokens per calendar day (UTC).
    pub tokens_per_day: Option<i64>,
    /// Tokens per calendar month (UTC).
    pub tokens_per_month: Option<i64>,
    /// Messages per minute.
    pub messages_per_minute: Option<i64>,
}
