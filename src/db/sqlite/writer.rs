//! Group commit on SQLite's one writer connection.
//!
//! A task owns the connection and lends it to one write at a time. The writes that queue while
//! a transaction is open or committing share the next transaction, so a batch of writes waits
//! for one disk flush instead of one each. A write is answered only once the transaction
//! holding it has committed, so with `synchronous = full` nothing acknowledged is lost on a
//! crash or power loss.
//!
//! A write that fails fails alone: SQLite undoes a failing statement and the transaction goes
//! on, so its companions still commit. A failure that ends the whole transaction (a full disk,
//! an I/O error) is caught by a savepoint taken when the batch begins, and fails every write of
//! the batch. A write of several statements that must hold all or none takes a savepoint of its
//! own ([`Lease::all_or_nothing`]), undone when it fails or is given up; single statements take
//! none, as it would cost every write one more round trip to the connection's thread (a fifth
//! to a third of the throughput, measured).

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::sqlite::SqliteConnection;
use sqlx::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::db::{StoreError, StoreResult};

/// Most writes one transaction holds, so a long queue still reaches the disk in steps.
const MAX_BATCH: usize = 256;

/// Writes waiting for the writer before a new one waits to join the queue.
const QUEUE_CAPACITY: usize = 1024;

/// Opens a transaction with the write lock taken, and a savepoint that is there as long as
/// the transaction is.
const BEGIN: &str = "BEGIN IMMEDIATE; SAVEPOINT batch";
/// Succeeds only while the transaction is open: after a write that failed or was given up,
/// whether SQLite ended the whole transaction.
const CHECK: &str = "RELEASE batch; SAVEPOINT batch";
/// The savepoint of one write whose statements hold all or none.
const WRITE: &str = "SAVEPOINT write";
/// Keeps such a write in the batch.
const KEEP_WRITE: &str = "RELEASE write";
/// Undoes such a write; fails, as `CHECK` does, when SQLite ended the whole transaction.
const UNDO_WRITE: &str = "ROLLBACK TO write; RELEASE write";

/// What the writer task is asked.
enum Request {
    /// The connection for one write, or why the writer cannot lend it.
    Write(oneshot::Sender<StoreResult<Lease>>),
    /// Commit what is under way, close the connection, then answer.
    Close(oneshot::Sender<()>),
}

/// How the transaction holding a write ended; shared by every write of the batch.
type Committed = Result<(), Arc<sqlx::Error>>;

/// The connection coming back from a write, with where to answer once its transaction has
/// ended (`None` for a write that failed or was given up), and whether the write holds a
/// savepoint of its own.
struct Returned {
    connection: SqliteConnection,
    committed: Option<oneshot::Sender<Committed>>,
    savepoint: bool,
}

/// A handle to the writer task; clones share it.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    requests: mpsc::Sender<Request>,
}

impl Writer {
    /// Starts the task that owns `connection`.
    pub(super) fn start(connection: SqliteConnection) -> Self {
        let (requests, queue) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(connection, queue));
        Self { requests }
    }

    /// The connection for one write, once the writes queued before it have had it.
    pub(super) async fn lease(&self) -> StoreResult<Lease> {
        let (lend, lent) = oneshot::channel();
        self.requests
            .send(Request::Write(lend))
            .await
            .map_err(|_| closed())?;
        lent.await.map_err(|_| closed())?
    }

    /// Lets the writes under way commit, then closes the connection; later writes fail.
    pub(super) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.requests.send(Request::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }
}

/// The writer connection, lent to one write. [`Lease::settle`] hands it back; dropped
/// unsettled (the caller gave up), it goes back too, and what the write did stays, as for a
/// write whose answer was lost (but for what it did under [`Lease::all_or_nothing`]).
pub struct Lease {
    connection: Option<SqliteConnection>,
    back: Option<oneshot::Sender<Returned>>,
    savepoint: bool,
}

impl Lease {
    /// Makes the statements this write runs from now on hold all or none: undone together
    /// when the write fails or is given up, without undoing the rest of the batch.
    pub(super) async fn all_or_nothing(&mut self) -> StoreResult<()> {
        sqlx::query(WRITE).execute(&mut **self).await?;
        self.savepoint = true;
        Ok(())
    }

    /// Hands the connection back after a write that ended in `outcome`. A failed write
    /// answers at once; a successful one once its transaction is durable.
    pub(super) async fn settle<T>(mut self, outcome: StoreResult<T>) -> StoreResult<T> {
        let value = match outcome {
            Ok(value) => value,
            Err(err) => {
                drop(self);
                return Err(err);
            }
        };
        let (done, committed) = oneshot::channel();
        self.give_back(Some(done));
        match committed.await {
            Ok(Ok(())) => Ok(value),
            Ok(Err(err)) => Err(StoreError::Database(sqlx::Error::Io(
                std::io::Error::other(NotCommitted(err)),
            ))),
            Err(_) => Err(closed()),
        }
    }

    fn give_back(&mut self, committed: Option<oneshot::Sender<Committed>>) {
        if let (Some(connection), Some(back)) = (self.connection.take(), self.back.take()) {
            // The writer task waits for the connection; it is gone only if the task is.
            let _ = back.send(Returned {
                connection,
                committed,
                savepoint: self.savepoint,
            });
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.give_back(None);
    }
}

impl Deref for Lease {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.connection
            .as_ref()
            .expect("a lease holds the connection until it is handed back")
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.connection
            .as_mut()
            .expect("a lease holds the connection until it is handed back")
    }
}

/// A write whose transaction failed to commit (a companion's failure that undid the whole
/// transaction, a full disk, an I/O error).
#[derive(Debug, thiserror::Error)]
#[error("the transaction holding this write did not commit: {0}")]
struct NotCommitted(Arc<sqlx::Error>);

/// The error of a write after the writer has closed.
fn closed() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}

/// The writer task: a transaction per batch of queued writes, until the store closes.
async fn run(mut connection: SqliteConnection, mut queue: mpsc::Receiver<Request>) {
    let mut closing = None;
    while closing.is_none() {
        let Some(request) = queue.recv().await else {
            break;
        };
        let first = match request {
            Request::Write(lend) => lend,
            Request::Close(done) => {
                closing = Some(done);
                break;
            }
        };
        if let Err(err) = sqlx::query(BEGIN).execute(&mut connection).await {
            let _ = first.send(Err(err.into()));
            continue;
        }
        // Where to answer each kept write of the batch once the transaction has ended.
        let mut kept = Vec::new();
        // The transaction ended under a failed write: the batch is lost.
        let mut failure = None;
        let mut next = Some(first);
        while let Some(write) = next.take() {
            let Some(returned) = lend(connection, write).await else {
                tracing::error!("the SQLite writer connection was lost; writes fail from now on");
                return;
            };
            connection = returned.connection;
            let failed = returned.committed.is_none();
            kept.extend(returned.committed);
            // After a write that failed or was given up: undo what its savepoint holds, and
            // learn whether SQLite ended the whole transaction under it.
            let end = match (returned.savepoint, failed) {
                (false, false) => None,
                (false, true) => Some(CHECK),
                (true, false) => Some(KEEP_WRITE),
                (true, true) => Some(UNDO_WRITE),
            };
            if let Some(end) = end {
                if let Err(err) = sqlx::query(end).execute(&mut connection).await {
                    failure = Some(err);
                    break;
                }
            }
            if kept.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(Request::Write(write)) => next = Some(write),
                    // The batch commits before the writer closes.
                    Ok(Request::Close(done)) => closing = Some(done),
                    Err(_) => {}
                }
            }
        }
        let outcome = match failure {
            None => sqlx::query("COMMIT")
                .execute(&mut connection)
                .await
                .map(drop),
            Some(err) => Err(err),
        };
        if outcome.is_err() {
            // A failed COMMIT can leave the transaction open; whatever is left of it goes.
            let _ = sqlx::query("ROLLBACK").execute(&mut connection).await;
        }
        let outcome = outcome.map_err(Arc::new);
        for done in kept {
            let _ = done.send(outcome.clone());
        }
    }
    queue.close();
    let _ = connection.close().await;
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Lends the connection to one write and waits for it to come back; `None` if the lease was
/// lost without being dropped (it cannot come back).
async fn lend(
    connection: SqliteConnection,
    write: oneshot::Sender<StoreResult<Lease>>,
) -> Option<Returned> {
    let (back, returned) = oneshot::channel();
    let lease = Lease {
        connection: Some(connection),
        back: Some(back),
        savepoint: false,
    };
    // A caller that has gone drops the lease, which comes back unsettled.
    let _ = write.send(Ok(lease));
    returned.await.ok()
}
