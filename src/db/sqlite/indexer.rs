//! Search indexing in batches, after the writes (migration `0009_search_queue`).
//!
//! A stored message only queues its key (`messages_search_queue`). FTS5 writes what it holds in
//! memory as a new index segment whenever a savepoint begins, and an insert made by a trigger
//! runs under one, so indexing each message as it was stored wrote and merged a segment per
//! message. Here one statement indexes a whole batch of queued messages, and the same write
//! takes them out of the queue: one segment per batch.
//!
//! A task indexes the queue a moment after writes wake it ([`Indexer`]); a search first indexes
//! what was queued before it began ([`catch_up`]), so it finds every message stored before it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::sqlite::SqliteConnection;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::writer::Writer;
use crate::db::StoreResult;

/// Most queued messages one write indexes, so a long queue does not hold the writer for long.
pub(super) const BATCH: i64 = 1000;

/// How long the task waits after a write wakes it: the messages stored meanwhile share the
/// batch.
const DELAY: Duration = Duration::from_millis(250);

/// Indexes a batch of queued messages with keys up to `?1`: the owned ones (an anonymous
/// conversation's are not indexed). The batch is chosen before the join, so that `DEQUEUE`
/// takes out the same keys.
const INDEX: &str = "INSERT INTO messages_search (rowid, content, owner) \
     SELECT m.id, m.content, 'u' || c.user_id \
     FROM (SELECT id FROM messages_search_queue WHERE id <= ?1 ORDER BY id LIMIT ?2) q \
     JOIN messages m ON m.id = q.id JOIN conversations c ON c.id = m.conversation_id \
     WHERE c.user_id IS NOT NULL";

/// Takes the batch that `INDEX` indexed out of the queue.
const DEQUEUE: &str = "DELETE FROM messages_search_queue WHERE id IN \
     (SELECT id FROM messages_search_queue WHERE id <= ?1 ORDER BY id LIMIT ?2)";

/// The newest queued key, if any.
const NEWEST: &str = "SELECT MAX(id) FROM messages_search_queue";

/// The readers of the store.
pub(super) type Readers = deadpool::unmanaged::Pool<SqliteConnection>;

/// The task that indexes the queue in the background: woken by writes, it waits [`DELAY`],
/// then indexes what is queued. It stops when [`Indexer::stop`] is called or the handle is
/// dropped, after the batch under way.
#[derive(Debug)]
pub(super) struct Indexer {
    wake: Arc<Notify>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Indexer {
    /// Starts the task, which first indexes what an earlier run left queued.
    pub(super) fn start(readers: Readers, writer: Writer) -> Self {
        let wake = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        wake.notify_one();
        let task = tokio::spawn(run(readers, writer, wake.clone(), stop.clone()));
        Self {
            wake,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// Tells the task that a write may have queued messages.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops the task and waits for it to end.
    pub(super) async fn stop(&self) {
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .expect("the task handle is never poisoned")
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The task: a round of indexing a moment after each wake-up, until stopped.
async fn run(readers: Readers, writer: Writer, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = wake.notified() => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(DELAY) => {}
        }
        let Some(newest) = newest(&readers).await.unwrap_or_else(|err| {
            tracing::warn!(error = %err, "could not read the search indexing queue");
            None
        }) else {
            continue;
        };
        while !stop.is_cancelled() {
            match index_batch(&writer, newest).await {
                Ok(indexed) if indexed < BATCH as u64 => break,
                Ok(_) => {}
                // Tried again after the next write; a search indexes the queue itself.
                Err(err) => {
                    tracing::warn!(error = %err, "could not index queued messages for search");
                    break;
                }
            }
        }
    }
}

/// Indexes every message queued so far, in batches; answers how many left the queue.
pub(super) async fn catch_up(readers: &Readers, writer: &Writer) -> StoreResult<u64> {
    let Some(newest) = newest(readers).await? else {
        return Ok(0);
    };
    let mut total = 0;
    loop {
        let indexed = index_batch(writer, newest).await?;
        total += indexed;
        if indexed < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// The newest queued key, read on a reader: `None` when nothing is queued.
async fn newest(readers: &Readers) -> StoreResult<Option<i64>> {
    let mut reader = super::take_reader(readers).await?;
    let (newest,): (Option<i64>,) = sqlx::query_as(NEWEST).fetch_one(&mut *reader).await?;
    Ok(newest)
}

/// Indexes up to [`BATCH`] queued messages with keys up to `newest` and takes them out of the
/// queue, both or neither; answers how many left the queue.
async fn index_batch(writer: &Writer, newest: i64) -> StoreResult<u64> {
    let mut lease = writer.lease().await?;
    let outcome = async {
        lease.all_or_nothing().await?;
        sqlx::query(INDEX)
            .bind(newest)
            .bind(BATCH)
            .execute(&mut *lease)
            .await?;
        let dequeued = sqlx::query(DEQUEUE)
            .bind(newest)
            .bind(BATCH)
            .execute(&mut *lease)
            .await?;
        Ok(dequeued.rows_affected())
    }
    .await;
    lease.settle(outcome).await
}
