//! The search benchmark of `BENCHMARKS.md` (driven by `scripts/bench.sh search`).
//!
//! - `fill --database URL`: applies the migrations, then writes users, conversations and
//!   messages straight into the database in large batches (PostgreSQL's generated column
//!   indexes them as they go; on SQLite the triggers queue them, and the store indexes the
//!   queue at the end, in its own batches). The text is made of generated words drawn with a Zipf
//!   distribution (exponent 1 over 50,000 words: a few words are in most messages, most words
//!   in a few), 5 to 40 words a message. Prints the words the queries use.
//! - `query --database URL --rare W --common W --phrase "W W"`: times searches of one user's
//!   messages through the store, with their snippets, beside `LIKE '%word%'` scans, and prints
//!   the index's size on disk.

use std::time::{Duration, Instant};

use chat_service::db::postgres::PostgresStore;
use chat_service::db::sqlite::SqliteStore;
use chat_service::db::{Page, SearchFilter, Store};
use chat_service::search::{snippet, SearchQuery};
use clap::{Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{Connection, Executor, PgConnection, Row, SqliteConnection};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fill an empty database.
    Fill {
        /// `sqlite://...` or `postgres://...`.
        #[arg(long)]
        database: String,
        #[arg(long, default_value_t = 1000)]
        users: i64,
        #[arg(long, default_value_t = 10)]
        conversations_per_user: i64,
        #[arg(long, default_value_t = 1_000_000)]
        messages: i64,
    },
    /// Time searches of one user.
    Query {
        #[arg(long)]
        database: String,
        /// The user whose messages are searched (a key).
        #[arg(long, default_value_t = SEARCHED_USER)]
        user: i64,
        #[arg(long)]
        rare: String,
        #[arg(long)]
        common: String,
        #[arg(long)]
        phrase: String,
        /// Timed runs of each search (after 10 untimed ones).
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// Timed runs of each scan of the whole table.
        #[arg(long, default_value_t = 5)]
        scan_samples: usize,
    },
}

/// Words in the vocabulary.
const VOCABULARY: usize = 50_000;
/// Rows written per statement.
const BATCH: usize = 500;
/// The user whose messages `query` searches by default.
const SEARCHED_USER: i64 = 500;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Fill {
            database,
            users,
            conversations_per_user,
            messages,
        } => fill(&database, users, conversations_per_user, messages).await,
        Command::Query {
            database,
            user,
            rare,
            common,
            phrase,
            samples,
            scan_samples,
        } => {
            let store = open(&database).await?;
            let searches = [
                ("rare word", rare.clone()),
                ("common word", common.clone()),
                ("phrase", format!("\"{phrase}\"")),
            ];
            for (name, q) in &searches {
                search(store.as_ref(), user, name, q, samples).await?;
            }
            let scans = [
                ("rare word", rare),
                ("common word", common),
                ("phrase", phrase),
            ];
            for (name, text) in &scans {
                like(&database, user, name, text, samples, scan_samples).await?;
            }
            sizes(&database).await
        }
    }
}

/// The store (which applies the migrations).
async fn open(database: &str) -> anyhow::Result<Box<dyn Store>> {
    Ok(if database.starts_with("sqlite:") {
        Box::new(SqliteStore::connect(database, "normal", 4).await?)
    } else {
        Box::new(PostgresStore::connect(database).await?)
    })
}

/// The word of a rank: syllables in base 85, so frequent words are short.
fn word(mut rank: usize) -> String {
    const CONSONANTS: &[u8] = b"bcdfghjklmnprstvz";
    const VOWELS: &[u8] = b"aeiou";
    let mut word = String::new();
    loop {
        let syllable = rank % 85;
        word.push(CONSONANTS[syllable / 5] as char);
        word.push(VOWELS[syllable % 5] as char);
        rank /= 85;
        if rank == 0 {
            return word;
        }
        rank -= 1;
    }
}

/// Draws word ranks with probability proportional to 1 / (rank + 1).
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(words: usize) -> Self {
        let mut total = 0.0;
        let cumulative = (0..words)
            .map(|rank| {
                total += 1.0 / (rank as f64 + 1.0);
                total
            })
            .collect::<Vec<_>>();
        let cumulative = cumulative.into_iter().map(|c| c / total).collect();
        Self { cumulative }
    }

    fn draw(&self, rng: &mut StdRng) -> usize {
        let x: f64 = rng.random();
        self.cumulative
            .partition_point(|c| *c < x)
            .min(self.cumulative.len() - 1)
    }
}

/// One generated message.
struct Generated {
    id: i64,
    conversation: i64,
    role: &'static str,
    content: String,
    time: i64,
}

async fn fill(
    database: &str,
    users: i64,
    conversations_per_user: i64,
    messages: i64,
) -> anyhow::Result<()> {
    drop(open(database).await?);
    let started = Instant::now();
    let zipf = Zipf::new(VOCABULARY);
    let words: Vec<String> = (0..VOCABULARY).map(word).collect();
    let mut rng = StdRng::seed_from_u64(7);
    let conversations = users * conversations_per_user;
    let per_conversation = messages / conversations;
    let base_time: i64 = 1_700_000_000_000_000;
    let mut users_sql = Vec::new();
    for user in 1..=users {
        users_sql.push(format!("({user}, 'user{user}', {base_time}, {base_time})"));
    }
    let mut conversations_sql = Vec::new();
    for conversation in 1..=conversations {
        let owner = (conversation - 1) / conversations_per_user + 1;
        let title: Vec<&str> = (0..3)
            .map(|_| words[zipf.draw(&mut rng)].as_str())
            .collect();
        conversations_sql.push(format!(
            "({conversation}, {owner}, '{}', {base_time}, {base_time})",
            title.join(" ")
        ));
    }
    let mut sqlite = None;
    let mut postgres = None;
    if database.starts_with("sqlite:") {
        let mut connection = SqliteConnection::connect(database).await?;
        connection.execute("PRAGMA synchronous = OFF").await?;
        sqlite = Some(connection);
    } else {
        postgres = Some(PgConnection::connect(database).await?);
    }
    for (table, rows) in [
        ("users (id, username, created_at, updated_at)", &users_sql),
        (
            "conversations (id, user_id, title, created_at, updated_at)",
            &conversations_sql,
        ),
    ] {
        for chunk in rows.chunks(BATCH) {
            let sql = format!("INSERT INTO {table} VALUES {}", chunk.join(", "));
            match (&mut sqlite, &mut postgres) {
                (Some(c), _) => sqlx::raw_sql(&sql).execute(c).await.map(drop)?,
                (_, Some(c)) => sqlx::raw_sql(&sql).execute(c).await.map(drop)?,
                _ => unreachable!(),
            }
        }
    }
    // How often each word is used, and the words of the user whose messages are searched.
    let mut uses = vec![0u32; VOCABULARY];
    let mut searched_user_words = Vec::new();
    // Messages go round the conversations, as they arrive in a busy service.
    let mut batch: Vec<Generated> = Vec::with_capacity(BATCH);
    let mut id = 0;
    for turn in 0..per_conversation {
        for conversation in 1..=conversations {
            id += 1;
            let length = rng.random_range(5..=40);
            let ranks: Vec<usize> = (0..length).map(|_| zipf.draw(&mut rng)).collect();
            for rank in &ranks {
                uses[*rank] += 1;
            }
            if (conversation - 1) / conversations_per_user + 1 == SEARCHED_USER {
                searched_user_words.extend(ranks.iter().copied());
            }
            let content: Vec<&str> = ranks.iter().map(|r| words[*r].as_str()).collect();
            batch.push(Generated {
                id,
                conversation,
                role: if turn % 2 == 0 { "user" } else { "assistant" },
                content: content.join(" "),
                time: base_time + id,
            });
            if batch.len() == BATCH {
                insert(&mut sqlite, &mut postgres, &batch).await?;
                batch.clear();
            }
        }
        if turn % 10 == 9 {
            eprintln!("{} messages in {:?}", id, started.elapsed());
        }
    }
    insert(&mut sqlite, &mut postgres, &batch).await?;
    if let Some(connection) = &mut postgres {
        connection.execute("VACUUM ANALYZE").await?;
    }
    if let Some(connection) = &mut sqlite {
        // The store's own background task shares the work once it starts.
        let stored = started.elapsed();
        let store = SqliteStore::connect(database, "off", 1).await?;
        store.index_queued().await?;
        store.close().await;
        println!(
            "stored {id} messages in {stored:.0?}, then indexed the queue in {:.0?}",
            started.elapsed() - stored
        );
        // What FTS5 does over time by itself, once, so every run reads the same index.
        connection
            .execute("INSERT INTO messages_search (messages_search) VALUES ('optimize')")
            .await?;
        connection.execute("ANALYZE").await?;
    }
    println!(
        "filled {users} users, {conversations} conversations, {id} messages in {:.0?}",
        started.elapsed()
    );
    // The rare word: of the user's words, the one least used by everyone, yet by someone else.
    let rare = searched_user_words
        .iter()
        .copied()
        .filter(|rank| uses[*rank] >= 3)
        .min_by_key(|rank| (uses[*rank], *rank))
        .unwrap_or(VOCABULARY - 1);
    println!(
        "the rare word is used {} times in all, the common word (the most used) {} times",
        uses[rare], uses[0]
    );
    println!(
        "words: --rare {} --common {} --phrase \"{} {}\"",
        words[rare], words[0], words[0], words[1]
    );
    Ok(())
}

/// Writes a batch of messages in one statement.
async fn insert(
    sqlite: &mut Option<SqliteConnection>,
    postgres: &mut Option<PgConnection>,
    batch: &[Generated],
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let columns = "INSERT INTO messages (id, conversation_id, role, content, timestamp, \
                   updated_at) ";
    if let Some(connection) = sqlite {
        let mut sql = format!("{columns} VALUES ");
        sql.push_str(&vec!["(?, ?, ?, ?, ?, ?)"; batch.len()].join(", "));
        let mut query = sqlx::query(&sql);
        for m in batch {
            query = query
                .bind(m.id)
                .bind(m.conversation)
                .bind(m.role)
                .bind(m.content.as_str())
                .bind(m.time)
                .bind(m.time);
        }
        query.execute(&mut *connection).await?;
    } else if let Some(connection) = postgres {
        let sql = format!(
            "{columns} SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], \
             $4::TEXT[], $5::BIGINT[], $5::BIGINT[])"
        );
        sqlx::query(&sql)
            .bind(batch.iter().map(|m| m.id).collect::<Vec<_>>())
            .bind(batch.iter().map(|m| m.conversation).collect::<Vec<_>>())
            .bind(batch.iter().map(|m| m.role).collect::<Vec<_>>())
            .bind(batch.iter().map(|m| m.content.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|m| m.time).collect::<Vec<_>>())
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

/// p50 and p99 of `times`.
fn percentiles(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    let at = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    (at(0.50), at(0.99))
}

/// Times the first page (20 hits) of a search of `user`'s messages, snippets included.
async fn search(
    store: &dyn Store,
    user: i64,
    name: &str,
    q: &str,
    samples: usize,
) -> anyhow::Result<()> {
    let query = SearchQuery::parse(q)?;
    let filter = SearchFilter {
        owner: user,
        conversation_id: None,
        role: None,
        from: None,
        to: None,
        page: Page { skip: 0, limit: 20 },
    };
    let mut times = Vec::with_capacity(samples);
    let mut total = 0;
    for run in 0..samples + 10 {
        let started = Instant::now();
        let (rows, count) = store.search(&query, &filter).await?;
        let snippets: Vec<_> = rows.iter().map(|row| snippet(&row.text, &query)).collect();
        let elapsed = started.elapsed();
        std::hint::black_box(snippets);
        total = count;
        if run >= 10 {
            times.push(elapsed);
        }
    }
    let (p50, p99) = percentiles(&mut times);
    println!("search  {name:<12} q={q:<24} hits={total:<7} p50={p50:>10.2?} p99={p99:>10.2?}");
    Ok(())
}

/// Times `LIKE '%text%'` counts: over the user's messages, and over the whole table.
async fn like(
    database: &str,
    user: i64,
    name: &str,
    text: &str,
    samples: usize,
    scan_samples: usize,
) -> anyhow::Result<()> {
    let pattern = format!("%{text}%");
    let (scoped, whole) = if database.starts_with("sqlite:") {
        (
            "SELECT COUNT(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id \
             WHERE c.user_id = ? AND m.content LIKE ?",
            "SELECT COUNT(*) FROM messages WHERE content LIKE ?",
        )
    } else {
        (
            "SELECT COUNT(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id \
             WHERE c.user_id = $1 AND m.content ILIKE $2",
            "SELECT COUNT(*) FROM messages WHERE content ILIKE $1",
        )
    };
    let mut sqlite = None;
    let mut postgres = None;
    if database.starts_with("sqlite:") {
        sqlite = Some(SqliteConnection::connect(database).await?);
    } else {
        postgres = Some(PgConnection::connect(database).await?);
    }
    for (label, sql, runs, scoped) in [
        ("user's", scoped, samples, true),
        ("all", whole, scan_samples, false),
    ] {
        let mut times = Vec::with_capacity(runs);
        let mut count = 0i64;
        // The first run warms the cache and is not counted.
        for run in 0..runs + 1 {
            let started = Instant::now();
            let row: i64 = match (&mut sqlite, &mut postgres) {
                (Some(c), _) => {
                    let query = sqlx::query(sql);
                    let query = if scoped { query.bind(user) } else { query };
                    query.bind(&pattern).fetch_one(c).await?.get(0)
                }
                (_, Some(c)) => {
                    let query = sqlx::query(sql);
                    let query = if scoped { query.bind(user) } else { query };
                    query.bind(&pattern).fetch_one(c).await?.get(0)
                }
                _ => unreachable!(),
            };
            let elapsed = started.elapsed();
            count = row;
            if run > 0 {
                times.push(elapsed);
            }
        }
        let (p50, p99) = percentiles(&mut times);
        println!(
            "like    {name:<12} {label:<6} '%{text}%' rows={count:<7} p50={p50:>10.2?} \
             p99={p99:>10.2?} ({runs} runs)"
        );
    }
    Ok(())
}

/// The search indexes' size on disk.
async fn sizes(database: &str) -> anyhow::Result<()> {
    if database.starts_with("sqlite:") {
        let mut c = SqliteConnection::connect(database).await?;
        let rows = sqlx::query(
            "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY SUM(pgsize) DESC",
        )
        .fetch_all(&mut c)
        .await?;
        let mut search = 0i64;
        let mut all = 0i64;
        for row in &rows {
            let name: String = row.get(0);
            let size: i64 = row.get(1);
            all += size;
            if name.contains("_search") {
                search += size;
                println!("size    {name:<40} {:>8.1} MiB", size as f64 / 1048576.0);
            }
        }
        println!(
            "size    search indexes {:.1} MiB of a {:.1} MiB database",
            search as f64 / 1048576.0,
            all as f64 / 1048576.0
        );
    } else {
        let mut c = PgConnection::connect(database).await?;
        let row = sqlx::query(
            "SELECT pg_relation_size('messages_search'), \
             pg_relation_size('conversations_search'), \
             (SELECT SUM(pg_column_size(search)) FROM messages)::BIGINT, \
             pg_total_relation_size('messages'), pg_database_size(current_database())",
        )
        .fetch_one(&mut c)
        .await?;
        let mib = |i: usize| row.get::<i64, _>(i) as f64 / 1048576.0;
        println!(
            "size    GIN messages_search {:.1} MiB, GIN conversations_search {:.1} MiB, \
             tsvector column {:.1} MiB; messages with indexes {:.1} MiB, database {:.1} MiB",
            mib(0),
            mib(1),
            mib(2),
            mib(3),
            mib(4)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::word;

    #[test]
    fn words_are_distinct() {
        let words: std::collections::HashSet<String> = (0..50_000).map(word).collect();
        assert_eq!(words.len(), 50_000);
    }
}
