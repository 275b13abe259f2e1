//! A fresh database per test: a SQLite file in a temporary folder, or a database of its own on
//! the test PostgreSQL server, gone when the test ends.
//!
//! PostgreSQL databases are created on the server at `CHAT_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432`). When the server cannot be reached the test fails,
//! unless `CHAT_TEST_SKIP_POSTGRES=1` is set.

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
                eprintln!("skipping a PostgreSQL test: {error}");
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
