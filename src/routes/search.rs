//! `/api/v1/search`: full-text search of the caller's messages and conversation titles.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{conversation_key, page, path_user, time_bound, Access, Listed};
use crate::auth::AuthUser;
use crate::db::{MessageRole, Scope, SearchFilter};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::ApiQuery;
use crate::openapi::{AuthErrors, QueryErrors};
use crate::search::snippet::Highlight;
use crate::service::conversations;
use crate::service::search::{self, SearchHit};
use crate::state::AppState;

/// Default page size of a search.
const DEFAULT_LIMIT: i64 = 20;
/// Largest page size of a search.
const MAX_LIMIT: i64 = 100;

/// Routes of this file.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(search_messages))
}

/// Parameters of a search.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// What to look for: words (all must match), `"exact phrases"`, `prefix*` (at least two
    /// letters before the star) and `-excluded` words or phrases. Case and accents do not
    /// matter (`cafe` finds `Café`); every other character separates words, so no query is
    /// a syntax error. 1 to 1,000 characters, at most 32 words.
    #[param(min_length = 1, max_length = 1000, pattern = "\\S")]
    pub q: String,
    /// Hits to skip.
    #[param(minimum = 0)]
    pub skip: Option<i64>,
    /// Hits to return (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Whose messages to search (public ID, `me` or username): the caller when absent;
    /// another user's for admins and managers only.
    pub user_id: Option<String>,
    /// Only this conversation (public ID).
    pub conversation_id: Option<String>,
    /// Only messages of this author; no title hits then.
    pub role: Option<MessageRole>,
    /// Only messages from this time on: an RFC 3339 time, or a date (from its start, UTC);
    /// no title hits then.
    #[param(format = Date)]
    pub from: Option<String>,
    /// Only messages before this time: an RFC 3339 time, or a date (up to its end, UTC); no
    /// title hits then. Before `from`: nothing.
    #[param(format = Date)]
    pub to: Option<String>,
}

/// A search hit: a message, or a conversation whose title matched (`message_id` null).
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHitOut {
    /// Conversation's public ID.
    pub conversation_id: String,
    /// The conversation's title.
    pub conversation_title: String,
    /// Message's public ID; null for a title hit.
    pub message_id: Option<String>,
    /// Message's author; null for a title hit.
    pub role: Option<MessageRole>,
    /// The message's time; for a title hit, the conversation's last activity.
    pub timestamp: DateTime<Utc>,
    /// Plain text (not HTML) of about 160 characters around the match: the message's content
    /// or the title, white space collapsed, `…` where it was cut.
    pub snippet: String,
    /// Where the matched words are in `snippet`, as UTF-16 code units (JavaScript string
    /// indexes: `snippet.slice(start, end)`); an emoji counts two.
    pub highlights: Vec<Highlight>,
    /// Relevance, higher is better; compares hits of one search only.
    pub rank: f64,
}

/// Search the caller's messages and conversation titles.
///
/// Title hits come first, then message hits, each best first. The syntax is in the
/// description of `q`; anything that is not part of it is read as plain words.
#[utoipa::path(get, path = "/search", tag = "search", security(("bearer" = [])),
    params(SearchParams),
    responses((status = 200, body = [SearchHitOut],
        headers(("x-total-count" = i64, description = "Hits in all"))),
        (status = 404, description = "No such user or conversation", body = ErrorBody),
        AuthErrors, QueryErrors))]
async fn search_messages(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> ApiResult<Listed<SearchHitOut>> {
    let page = page(params.skip, params.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let micros = |field, value: Option<&str>, end_of_day| {
        value
            .map(|value| time_bound(field, value, end_of_day).map(|t| t.timestamp_micros()))
            .transpose()
    };
    let from = micros("from", params.from.as_deref(), false)?;
    let to = micros("to", params.to.as_deref(), true)?;
    let owner = match params.user_id.as_deref() {
        Some(raw) => path_user(&state, &caller, raw, Access::Read).await?.id,
        None => caller.user.id,
    };
    let conversation_id = match params.conversation_id.as_deref() {
        Some(raw) => {
            let key = conversation_key(&state, raw)?;
            // Another user's conversation is as unknown as one that does not exist.
            conversations::load(&state, Scope::Owner(owner), key).await?;
            Some(key)
        }
        None => None,
    };
    let filter = SearchFilter {
        owner,
        conversation_id,
        role: params.role,
        from,
        to,
        page,
    };
    let (hits, total) = search::search(&state, &params.q, &filter).await?;
    let items = hits.into_iter().map(|hit| out(&state, hit)).collect();
    Ok(Listed(items, total))
}

fn out(state: &AppState, hit: SearchHit) -> SearchHitOut {
    let SearchHit { row, snippet } = hit;
    SearchHitOut {
        conversation_id: state.ids.conversation.encode(row.conversation_id),
        conversation_title: row.conversation_title,
        message_id: row.message_id.map(|id| state.ids.message.encode(id)),
        role: row.role,
        timestamp: row.timestamp,
        snippet: snippet.text,
        highlights: snippet.highlights,
        rank: row.rank,
    }
}
