//! Row mapping shared by the backends: both store times as microseconds since the epoch and
//! JSON as documents, so one generic mapping reads a row of either database.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, FromRow, Row, Type};

use super::models::*;
use super::usage::UsageGroup;
use crate::config::Secret;

/// Columns of a conversation row, in the order `ConversationRow` reads them.
pub(crate) const CONVERSATION_COLUMNS: &str = "id, user_id, title, system_message, model, \
     status, context_metadata, created_at, updated_at, ended_at, current_message_id";
/// Columns of a message row, in the order `MessageRow` reads them.
pub(crate) const MESSAGE_COLUMNS: &str = "id, conversation_id, parent_id, role, content, \
     timestamp, model, tokens_used, response_time, message_metadata, updated_at";
/// Columns of a user row.
pub(crate) const USER_COLUMNS: &str =
    "id, username, email, full_name, is_active, created_at, updated_at";
/// Columns of an MCP server row, its API key left out.
pub(crate) const MCP_SERVER_COLUMNS: &str = "id, user_id, name, description, server_url, \
     is_active, config, created_at, updated_at";

/// Columns of an API key row, its hash left out.
pub(crate) const API_KEY_COLUMNS: &str =
    "id, user_id, name, prefix, created_at, expires_at, last_used_at";
/// Columns of an API key (`k`) joined with its owner (`u`), as `ApiKeyOwnerRow` reads them.
pub(crate) const API_KEY_OWNER_COLUMNS: &str = "k.id, k.user_id, k.name, k.prefix, \
     k.created_at, k.expires_at, k.last_used_at, u.id AS u_id, u.username AS u_username, \
     u.email AS u_email, u.full_name AS u_full_name, u.is_active AS u_is_active, \
     u.created_at AS u_created_at, u.updated_at AS u_updated_at";

/// Microseconds since the epoch, the stored form of a time.
pub(crate) fn to_micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

/// The time a stored number of microseconds stands for.
pub(crate) fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// A `users` row.
pub(crate) struct UserRow(pub(crate) User);

/// A `conversations` row.
pub(crate) struct ConversationRow(pub(crate) Conversation);

/// A `messages` row.
pub(crate) struct MessageRow(pub(crate) Message);

// The bounds name every column type read below, for whichever database the row comes from.
impl<'r, R> FromRow<'r, R> for UserRow
where
    R: Row,
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        Ok(Self(User {
            id: row.try_get("id")?,
            username: row.try_get("username")?,
            email: row.try_get("email")?,
            full_name: row.try_get("full_name")?,
            is_active: row.try_get("is_active")?,
            created_at: from_micros(row.try_get("created_at")?),
            updated_at: from_micros(row.try_get("updated_at")?),
        }))
    }
}

impl<'r, R> FromRow<'r, R> for ConversationRow
where
    R: Row,
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Json<Value>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        let status: String = row.try_get("status")?;
        let metadata: Option<Json<Value>> = row.try_get("context_metadata")?;
        Ok(Self(Conversation {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            title: row.try_get("title")?,
            system_message: row.try_get("system_message")?,
            model: row.try_get("model")?,
            status: ConversationStatus::parse(&status).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown conversation status {status}").into())
            })?,
            context_metadata: metadata.map(|m| m.0),
            created_at: from_micros(row.try_get("created_at")?),
            updated_at: from_micros(row.try_get("updated_at")?),
            ended_at: row.try_get::<Option<i64>, _>("ended_at")?.map(from_micros),
            current_message_id: row.try_get("current_message_id")?,
        }))
    }
}

impl<'r, R> FromRow<'r, R> for MessageRow
where
    R: Row,
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    f64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Json<Value>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        let role: String = row.try_get("role")?;
        let metadata: Option<Json<Value>> = row.try_get("message_metadata")?;
        Ok(Self(Message {
            id: row.try_get("id")?,
            conversation_id: row.try_get("conversation_id")?,
            parent_id: row.try_get("parent_id")?,
            role: parse_role(&role)?,
            content: row.try_get("content")?,
            timestamp: from_micros(row.try_get("timestamp")?),
            model: row.try_get("model")?,
            tokens_used: row.try_get("tokens_used")?,
            response_time: row.try_get("response_time")?,
            message_metadata: metadata.map(|m| m.0),
            updated_at: from_micros(row.try_get("updated_at")?),
        }))
    }
}

/// A conversation with its history (a JSON array of `[role, content]`) and `has_tools`.
pub(crate) struct TurnContextRow(pub(crate) TurnContext);

impl<'r, R> FromRow<'r, R> for TurnContextRow
where
    R: Row,
    &'r str: ColumnIndex<R>,
    ConversationRow: FromRow<'r, R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        let ConversationRow(conversation) = ConversationRow::from_row(row)?;
        let history: String = row.try_get("history")?;
        let history: Vec<(i64, String, String)> =
            serde_json::from_str(&history).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let history = history
            .into_iter()
            .map(|(id, role, content)| {
                Ok(HistoryMessage {
                    id,
                    role: parse_role(&role)?,
                    content,
                })
            })
            .collect::<sqlx::Result<_>>()?;
        Ok(Self(TurnContext {
            conversation,
            history,
            has_tools: row.try_get("has_tools")?,
            parent: None,
        }))
    }
}

/// A `pending_replies` row joined with its user message (the message's columns unprefixed)
/// and its conversation's owner.
pub(crate) struct PendingReplyRow(pub(crate) PendingReply);

impl<'r, R> FromRow<'r, R> for PendingReplyRow
where
    R: Row,
    &'r str: ColumnIndex<R>,
    MessageRow: FromRow<'r, R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        let MessageRow(user_message) = MessageRow::from_row(row)?;
        Ok(Self(PendingReply {
            generation: row.try_get("pending_generation")?,
            owner: row.try_get("pending_owner")?,
            started_at: from_micros(row.try_get("pending_started_at")?),
            user_message,
        }))
    }
}

/// An `mcp_servers` row, without its API key.
pub(crate) struct McpServerRow(pub(crate) McpServer);

impl<'r, R> FromRow<'r, R> for McpServerRow
where
    R: Row,
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Json<Value>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        let config: Option<Json<Value>> = row.try_get("config")?;
        Ok(Self(McpServer {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            server_url: row.try_get("server_url")?,
            is_active: row.try_get("is_active")?,
            config: config.map(|c| c.0),
            created_at: from_micros(row.try_get("created_at")?),
            updated_at: from_micros(row.try_get("updated_at")?),
        }))
    }
}

/// An `mcp_servers` row with its `api_key` column.
pub(crate) struct McpServerWithKeyRow(pub(crate) McpServerWithKey);

impl<'r, R> FromRow<'r, R> for McpServerWithKeyRow
where
    R: Row,
    &'r str: ColumnIndex<R>,
    McpServerRow: FromRow<'r, R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        let McpServerRow(server) = McpServerRow::from_row(row)?;
        let api_key: Option<String> = row.try_get("api_key")?;
        Ok(Self(McpServerWithKey {
            server,
            api_key: api_key.map(Secret::new),
        }))
    }
}

/// The aggregates of a conversation's messages, as `conversation_stats` names its columns.
pub(crate) struct StatsRow(pub(crate) ConversationStats);

impl<'r, R> FromRow<'r, R> for StatsRow
where
    R: Row,
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    f64: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        Ok(Self(ConversationStats {
            total_messages: row.try_get("total_messages")?,
            user_messages: row.try_get("user_messages")?,
            assistant_messages: row.try_get("assistant_messages")?,
            system_messages: row.try_get("system_messages")?,
            total_tokens: row.try_get("total_tokens")?,
            average_response_time: row.try_get("average_response_time")?,
            first_message_at: row
                .try_get::<Option<i64>, _>("first_message_at")?
                .map(from_micros),
            last_message_at: row
                .try_get::<Option<i64>, _>("last_message_at")?
                .map(from_micros),
        }))
    }
}

/// An `api_keys` row, without its hash.
pub(crate) struct ApiKeyRow(pub(crate) ApiKey);

impl<'r, R> FromRow<'r, R> for ApiKeyRow
where
    R: Row,
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        Ok(Self(ApiKey {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            name: row.try_get("name")?,
            prefix: row.try_get("prefix")?,
            created_at: from_micros(row.try_get("created_at")?),
            expires_at: row
                .try_get::<Option<i64>, _>("expires_at")?
                .map(from_micros),
            last_used_at: row
                .try_get::<Option<i64>, _>("last_used_at")?
                .map(from_micros),
        }))
    }
}

/// A live API key joined with its owner's row, as `API_KEY_OWNER_COLUMNS` names them.
pub(crate) struct ApiKeyOwnerRow(pub(crate) ApiKeyOwner);

impl<'r, R> FromRow<'r, R> for ApiKeyOwnerRow
where
    R: Row,
    &'r str: ColumnIndex<R>,
    ApiKeyRow: FromRow<'r, R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        let ApiKeyRow(key) = ApiKeyRow::from_row(row)?;
        let user = User {
            id: row.try_get("u_id")?,
            username: row.try_get("u_username")?,
            email: row.try_get("u_email")?,
            full_name: row.try_get("u_full_name")?,
            is_active: row.try_get("u_is_active")?,
            created_at: from_micros(row.try_get("u_created_at")?),
            updated_at: from_micros(row.try_get("u_updated_at")?),
        };
        Ok(Self(ApiKeyOwner { key, user }))
    }
}

fn parse_role(role: &str) -> sqlx::Result<MessageRole> {
    MessageRole::parse(role)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown message role {role}").into()))
}

/// A group of the usage ledger's sums.
pub(crate) struct UsageGroupRow(pub(crate) UsageGroup);

impl<'r, R> FromRow<'r, R> for UsageGroupRow
where
    R: Row,
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        Ok(Self(UsageGroup {
            number: row.try_get("number")?,
            text: row.try_get("text")?,
            prompt_tokens: row.try_get("prompt_tokens")?,
            completion_tokens: row.try_get("completion_tokens")?,
            requests: row.try_get("requests")?,
            estimated_tokens: row.try_get("estimated_tokens")?,
        }))
    }
}

/// A search hit, as both backends name its columns.
pub(crate) struct SearchHitRow(pub(crate) SearchRow);

impl<'r, R> FromRow<'r, R> for SearchHitRow
where
    R: Row,
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        let role: Option<String> = row.try_get("role")?;
        Ok(Self(SearchRow {
            conversation_id: row.try_get("conversation_id")?,
            conversation_title: row.try_get("conversation_title")?,
            message_id: row.try_get("message_id")?,
            role: role.as_deref().map(parse_role).transpose()?,
            timestamp: from_micros(row.try_get("timestamp")?),
            text: row.try_get("text")?,
            // Ranked by the caller, from the text.
            rank: 0.0,
        }))
    }
}
