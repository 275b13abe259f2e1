//! The search that both backends share: title hits first, then message hits, one page over
//! both, with the total of both. Each backend's [`Dialect`] writes the queries that match
//! (FTS5 on SQLite, `tsvector` on PostgreSQL); this file runs them and ranks what they find
//! (`crate::search::rank`).

use sqlx::database::HasStatementCache;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Row, Type};

use super::queries::{Dialect, Sql};
use super::rows::SearchHitRow;
use super::{Page, SearchFilter, SearchRow, StoreResult};
use crate::search::{relevance, SearchQuery};

/// Matches ranked by relevance in one search: the newest ones. Older matches follow them,
/// newest first, so a search costs at most this many texts to rank whatever the words.
pub(crate) const RANKED_MATCHES: i64 = 1000;

/// A page of the hits of `query` within `filter`, best first, and their total.
pub(crate) async fn search<DB>(
    connection: &mut DB::Connection,
    query: &SearchQuery,
    filter: &SearchFilter,
) -> StoreResult<(Vec<SearchRow>, i64)>
where
    DB: Dialect + HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'s> &'s str: ColumnIndex<DB::Row>,
    for<'r> SearchHitRow: FromRow<'r, DB::Row>,
{
    let mut page = filter.page;
    let mut hits = Vec::new();
    let mut total = 0;
    // A title names what a whole conversation is about: those hits come first.
    if filter.with_titles() {
        let (titles, count) = ranked::<DB>(
            connection,
            query,
            |sql| DB::title_hits(sql, query, filter),
            page,
        )
        .await?;
        total += count;
        page.limit -= titles.len() as i64;
        page.skip = (page.skip - count).max(0);
        hits.extend(titles);
    }
    let (messages, count) = ranked::<DB>(
        connection,
        query,
        |sql| DB::message_hits(sql, query, filter),
        page,
    )
    .await?;
    hits.extend(messages);
    Ok((hits, total + count))
}

/// A page of the hits that `hits` selects and their total: the newest
/// [`RANKED_MATCHES`] ranked by relevance (newest first among equals), then older ones by
/// time.
async fn ranked<DB>(
    connection: &mut DB::Connection,
    query: &SearchQuery,
    hits: impl Fn(&mut Sql<'_, DB>),
    page: Page,
) -> StoreResult<(Vec<SearchRow>, i64)>
where
    DB: Dialect + HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'s> &'s str: ColumnIndex<DB::Row>,
    for<'r> SearchHitRow: FromRow<'r, DB::Row>,
{
    if page.limit <= 0 {
        return Ok((Vec::new(), count::<DB>(connection, &hits).await?));
    }
    let mut candidates = newest::<DB>(connection, query, &hits, RANKED_MATCHES, 0).await?;
    let total = match candidates.len() as i64 {
        found if found < RANKED_MATCHES => found,
        _ => count::<DB>(connection, &hits).await?,
    };
    // A stable sort: among equal ranks the newest stays first.
    candidates.sort_by(|a, b| b.rank.total_cmp(&a.rank));
    let skip = usize::try_from(page.skip).unwrap_or(usize::MAX);
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let mut rows: Vec<SearchRow> = candidates.into_iter().skip(skip).take(limit).collect();
    let end = page.skip.saturating_add(page.limit);
    if end > RANKED_MATCHES && total > RANKED_MATCHES {
        let from = page.skip.max(RANKED_MATCHES);
        rows.extend(newest::<DB>(connection, query, &hits, end - from, from).await?);
    }
    Ok((rows, total))
}

/// Up to `limit` of the hits that `hits` selects, newest first from `offset`, with their
/// relevance.
///
/// Search statements are not kept prepared (here and in `count`): PostgreSQL plans a kept
/// statement once for any words after a few runs, and that plan reads a common word's whole
/// GIN posting list (330 ms at a million messages) where the plan for the words at hand
/// reads the user's messages (2 ms). Planning each search costs about a millisecond.
async fn newest<DB>(
    connection: &mut DB::Connection,
    query: &SearchQuery,
    hits: &impl Fn(&mut Sql<'_, DB>),
    limit: i64,
    offset: i64,
) -> StoreResult<Vec<SearchRow>>
where
    DB: Dialect + HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'s> &'s str: ColumnIndex<DB::Row>,
    for<'r> SearchHitRow: FromRow<'r, DB::Row>,
{
    let mut sql = Sql::new("SELECT hits.* FROM (");
    hits(&mut sql);
    sql.push(") hits ORDER BY timestamp DESC, conversation_id DESC, message_id DESC LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    let (sql, values) = sql.into_parts();
    let rows = sqlx::query_with(&sql, values)
        .persistent(false)
        .fetch_all(&mut *connection)
        .await?;
    rows.iter()
        .map(|row| {
            let SearchHitRow(mut hit) = SearchHitRow::from_row(row)?;
            hit.rank = relevance(&hit.text, query);
            Ok(hit)
        })
        .collect::<sqlx::Result<_>>()
        .map_err(Into::into)
}

/// How many hits `hits` selects.
async fn count<DB>(
    connection: &mut DB::Connection,
    hits: &impl Fn(&mut Sql<'_, DB>),
) -> StoreResult<i64>
where
    DB: Dialect + HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'s> &'s str: ColumnIndex<DB::Row>,
{
    let mut sql = Sql::new("SELECT COUNT(*) AS total FROM (");
    hits(&mut sql);
    sql.push(") hits");
    let (sql, values) = sql.into_parts();
    let row = sqlx::query_with(&sql, values)
        .persistent(false)
        .fetch_one(&mut *connection)
        .await?;
    Ok(row.try_get("total")?)
}

/// Adds the conditions of `filter` on the messages `m`.
pub(crate) fn push_message_filters<DB>(sql: &mut Sql<'_, DB>, filter: &SearchFilter)
where
    DB: Database,
    for<'a> i64: Encode<'a, DB> + Type<DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
{
    if let Some(conversation) = filter.conversation_id {
        sql.push(" AND m.conversation_id = ")
            .push_bind(conversation);
    }
    if let Some(role) = filter.role {
        sql.push(" AND m.role = ").push_bind(role.as_str());
    }
    if let Some(from) = filter.from {
        sql.push(" AND m.timestamp >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        sql.push(" AND m.timestamp < ").push_bind(to);
    }
}

/// The token that stands for the owner in SQLite's indexes (the `owner` column).
pub(crate) fn owner_token(owner: i64) -> String {
    format!("u{owner}")
}
