//! A fresh database per test: a SQLite file in a temporary folder, or a database of its own on
//! the test PostgreSQL server, gone when the test ends.
//!
//! PostgreSQL databases are created on the server at `CHAT_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432`). When the server cannot be reached the test fails,
//! unless `CHAT_TEST_SKIP_POSTGRES=1` is set: then the test ends early, and since the harness
//! counts it as passed, it says so on the process's own stderr.

use std::io::Write;

use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;

/// An empty database that goes away with this value.
pub enum TestDatabase {
    /// A SQLite file in a temporary folder.
    Sqlite {
        /// `sqlite://<folder>/chat.db`.
        url: String,
        _dir: TempDir,
    },
    /// A database of its own on the test PostgreSQL server.
    Postgres(PgDatabase),
    /// Another app's database (a second instance on it), left to its owner.
    Shared {
        /// Its `DATABASE_URL`.
        url: String,
    },
}

impl TestDatabase {
    /// A SQLite file in a new temporary folder (created on first connection).
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}", dir.path().join("chat.db").display());
        Self::Sqlite { url, _dir: dir }
    }

    /// A new PostgreSQL database; `None` only when PostgreSQL tests are skipped.
    pub async fn postgres() -> Option<Self> {
        PgDatabase::create().await.map(Self::Postgres)
    }

    /// The `DATABASE_URL` of this database.
    pub fn url(&self) -> &str {
        match self {
            Self::Sqlite { url, .. } => url,
            Self::Postgres(database) => &database.url,
            Self::Shared { url } => url,
        }
    }
}

/// A database of its own on the test PostgreSQL server, dropped on drop.
pub struct PgDatabase {
    /// URL of the database.
    pub url: String,
    name: String,
    server: String,
}

impl PgDatabase {
    /// Creates the database; `None` only when the server is unreachable and PostgreSQL tests
    /// are explicitly skipped, so a missing server cannot pass for a green run.
    pub async fn create() -> Option<Self> {
        let server = std::env::var("CHAT_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        let server = server.trim_end_matches('/').to_owned();
        let mut admin = match PgConnection::connect(&format!("{server}/postgres")).await {
            Ok(connection) => connection,
            Err(error) if std::env::var("CHAT_TEST_SKIP_POSTGRES").as_deref() == Ok("1") => {
                announce_skip(&error);
                return None;
            }
            Err(error) => panic!(
                "PostgreSQL at {server} is not reachable ({error}); \
                 set CHAT_TEST_SKIP_POSTGRES=1 to skip the PostgreSQL tests"
            ),
        };
        let name = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let _ = admin.close().await;
        Some(Self {
            url: format!("{server}/{name}"),
            name,
            server,
        })
    }

    /// Drops the database now, ending the connections to it: whoever uses it finds it gone.
    pub async fn drop_now(&self) {
        let mut admin = PgConnection::connect(&self.admin_url())
            .await
            .expect("the PostgreSQL server answers");
        admin
            .execute(self.drop_statement().as_str())
            .await
            .expect("the database drops");
        let _ = admin.close().await;
    }

    fn admin_url(&self) -> String {
        format!("{}/postgres", self.server)
    }

    /// FORCE ends the connections still open on the database.
    fn drop_statement(&self) -> String {
        format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)
    }
}

/// Writes a line that names the test being skipped straight to the process's stderr: the test
/// harness captures `eprintln!` and shows it only for failures, and a skip must never pass
/// unseen for a run of the whole suite.
fn announce_skip(error: &sqlx::Error) {
    // The harness runs each test on a thread named after it.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED (CHAT_TEST_SKIP_POSTGRES=1; PostgreSQL is not reachable: {error}): {test}"
    );
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop runs outside async code (and while unwinding from a failed assertion), so the
        // cleanup gets a thread and a runtime of its own.
        let admin_url = self.admin_url();
        let sql = self.drop_statement();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = admin.execute(sql.as_str()).await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A PostgreSQL test skipped for want of a server is reported on the test process's stderr,
/// past the harness's capture of a passing test's output.
#[test]
fn a_skipped_postgres_test_says_so() {
    let test = "store::postgres::provisioning_creates_a_user_once";
    let run = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", test])
        // A port where nothing listens.
        .env("CHAT_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:9")
        .env("CHAT_TEST_SKIP_POSTGRES", "1")
        .output()
        .expect("the test binary runs");
    assert!(run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.lines().any(
            |line| line.starts_with("SKIPPED (CHAT_TEST_SKIP_POSTGRES=1;")
                && line.ends_with(&format!("): {test}"))
        ),
        "stderr: {stderr}"
    );
}
