//! The search that both backends share: title hits first, then message hits, one page over
//! both, with the total of both. Each backend's [`Dialect`] writes the queries that match
//! (FTS5 on SQLite, `tsvector` on PostgreSQL); this file runs them.

use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Row, Type};

use super::queries::{Dialect, Sql};
use super::rows::SearchHitRow;
use super::{Page, SearchFilter, SearchRow, StoreResult};
use crate::search::SearchQuery;

/// A page of the hits of `query` within `filter`, best first, and their total.
pub(crate) async fn search<DB>(
    connection: &mut DB::Connection,
    query: &SearchQuery,
    filter: &SearchFilter,
) -> StoreResult<(Vec<SearchRow>, i64)>
where
    DB: Dialect,
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
        let (titles, count) =
            ranked::<DB>(connection, |sql| DB::title_hits(sql, query, filter), page).await?;
        total += count;
        page.limit -= titles.len() as i64;
        page.skip = (page.skip - count).max(0);
        hits.extend(titles);
    }
    let (messages, count) =
        ranked::<DB>(connection, |sql| DB::message_hits(sql, query, filter), page).await?;
    hits.extend(messages);
    Ok((hits, total + count))
}

/// A page of the hits that `hits` selects, best first, and their total: the page's window
/// count, or a count of its own for an empty page.
async fn ranked<DB>(
    connection: &mut DB::Connection,
    hits: impl Fn(&mut Sql<'_, DB>),
    page: Page,
) -> StoreResult<(Vec<SearchRow>, i64)>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'s> &'s str: ColumnIndex<DB::Row>,
    for<'r> SearchHitRow: FromRow<'r, DB::Row>,
{
    let mut rows = Vec::new();
    if page.limit > 0 {
        let mut query = Sql::new("SELECT hits.*, COUNT(*) OVER () AS total FROM (");
        hits(&mut query);
        query
            .push(
                ") hits ORDER BY rank DESC, timestamp DESC, conversation_id DESC, \
                 message_id DESC LIMIT ",
            )
            .push_bind(page.limit)
            .push(" OFFSET ")
            .push_bind(page.skip);
        let (sql, values) = query.into_parts();
        rows = sqlx::query_with(&sql, values)
            .fetch_all(&mut *connection)
            .await?;
    }
    let total = match rows.first() {
        Some(row) => row.try_get("total")?,
        None if page.skip == 0 && page.limit > 0 => 0,
        None => {
            let mut count = Sql::new("SELECT COUNT(*) AS total FROM (");
            hits(&mut count);
            count.push(") hits");
            let (sql, values) = count.into_parts();
            let row = sqlx::query_with(&sql, values)
                .fetch_one(&mut *connection)
                .await?;
            row.try_get("total")?
        }
    };
    let hits = rows
        .iter()
        .map(|row| SearchHitRow::from_row(row).map(|r| r.0))
        .collect::<sqlx::Result<_>>()?;
    Ok((hits, total))
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
