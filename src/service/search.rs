//! Full-text search of a user's messages and conversation titles: the query is parsed here
//! (never handed to a database as typed), the store finds and ranks the hits within the
//! owner's conversations, and each hit gets its snippet.

use super::{ServiceError, ServiceResult};
use crate::db::{SearchFilter, SearchRow};
use crate::search::{snippet, SearchQuery, Snippet};
use crate::state::AppState;

/// A hit with the part of its text to show.
#[derive(Debug, Clone)]
pub struct SearchHit {
    /// What matched, with its whole text.
    pub row: SearchRow,
    /// About 160 characters of the text around the match, with the matched words' ranges.
    pub snippet: Snippet,
}

/// A page of the hits of `q` within `filter`, best first, and their total. A query that is
/// blank, too long or only excludes is invalid; one without a single letter or digit finds
/// nothing.
pub async fn search(
    state: &AppState,
    q: &str,
    filter: &SearchFilter,
) -> ServiceResult<(Vec<SearchHit>, i64)> {
    let query = SearchQuery::parse(q).map_err(|err| ServiceError::Invalid(err.to_string()))?;
    if query.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let (rows, total) = state.store.search(&query, filter).await?;
    let hits = rows
        .into_iter()
        .map(|row| SearchHit {
            snippet: snippet(&row.text, &query),
            row,
        })
        .collect();
    Ok((hits, total))
}
