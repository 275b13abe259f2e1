//! The test harness: every test gets its own database and its own server.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chat_service::config::{Secret, Settings};
use chat_service::db::sqlite::SqliteStore;
use chat_service::jwt::JwtKeys;
use chat_service::startup::{build_services, serve};
use chat_service::state::{AppState, Services};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::{Row, SqlitePool};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The shared secret the test servers verify tokens with.
pub const AUTH_SECRET_KEY: &str = "test-secret-key-for-the-api-suite";

/// Generous limit of anything a test waits for; only a hang reaches it.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The service serving on a free port until stopped: what every test app runs.
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The server's state.
    pub state: AppState,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Serves `services` on a free port of 127.0.0.1.
    pub async fn start(services: Services) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("free port");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let state = AppState::new(services);
        let task = tokio::spawn(serve(listener, state.clone(), std::future::pending::<()>()));
        Self {
            address,
            state,
            task: Some(task),
        }
    }

    /// Signals shutdown and waits until the server has stopped (requests drained, replies
    /// stored, analytics flushed).
    pub async fn stop(mut self) {
        self.state.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("the server stops")
                .expect("server task")
                .expect("server stops cleanly");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
    }
}

/// A running server with its own SQLite database in a temporary folder.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// One client for every request of the test.
    pub client: reqwest::Client,
    /// A pool of the test's own on the server's database, for direct checks of what is
    /// stored.
    pub db: SqlitePool,
    /// The server's store, for closing it under the server.
    pub store: SqliteStore,
    keys: JwtKeys,
    server: Server,
    _dir: TempDir,
}

/// A response read to the end.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl TestResponse {
    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    /// The `detail` of an error body.
    pub fn detail(&self) -> String {
        match &self.json()["detail"] {
            Value::String(detail) => detail.clone(),
            other => panic!("no string detail in {other}: {}", self.text),
        }
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `X-Total-Count` header as a number.
    pub fn total(&self) -> i64 {
        self.header("x-total-count")
            .expect("X-Total-Count header")
            .parse()
            .expect("numeric X-Total-Count")
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn assert_status(&self, expected: u16) -> &Self {
        assert_eq!(self.status, expected, "body: {}", self.text);
        self
    }
}

/// Test settings: a fresh database in `dir` and the known secret; nothing else configured.
pub fn test_settings(dir: &TempDir) -> Settings {
    Settings {
        database_url: database_url(dir),
        auth_secret_key: Some(Secret::new(AUTH_SECRET_KEY)),
        host: "127.0.0.1".to_owned(),
        ..Settings::default()
    }
}

/// The URL of the database file inside `dir`.
pub fn database_url(dir: &TempDir) -> String {
    format!("sqlite://{}", dir.path().join("chat.db").display())
}

/// Starts a server with the test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server with the test settings changed by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut settings = test_settings(&dir);
    configure(&mut settings);
    let state = build_services(settings).await.expect("state builds");
    start(state, dir).await
}

/// Serves `state` on a free port; the database of `state` must live in `dir`.
pub async fn start(mut state: Services, dir: TempDir) -> TestApp {
    // The server's own store, kept so tests can close it; and a pool of the tests' own to
    // read the database with.
    let store = SqliteStore::connect(&state.settings.database_url, "full", 4)
        .await
        .expect("database opens");
    state.store = Arc::new(store.clone());
    let db = sqlx::SqlitePool::connect(&state.settings.database_url)
        .await
        .expect("database opens");
    let secret = state
        .settings
        .auth_secret_key
        .as_ref()
        .map(|s| s.expose().to_owned())
        .expect("build_services always sets a key");
    let keys = JwtKeys::from_settings(&state.settings, &secret);
    let server = Server::start(state).await;
    TestApp {
        address: server.address.clone(),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        db,
        store,
        keys,
        server,
        _dir: dir,
    }
}

impl TestApp {
    /// Signals shutdown and waits until the server has stopped.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// Roles of the platform's tokens.
pub const USER: &[&str] = &["user"];
pub const MANAGER: &[&str] = &["manager"];
pub const ADMIN: &[&str] = &["admin"];

fn roles(roles: &[&str]) -> Vec<String> {
    roles.iter().map(|r| (*r).to_owned()).collect()
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Signs arbitrary claims with HS256 and the test secret.
pub fn sign(claims: &Value) -> String {
    sign_with(jsonwebtoken::Algorithm::HS256, AUTH_SECRET_KEY, claims)
}

/// Signs arbitrary claims with any HMAC algorithm and key.
pub fn sign_with(algorithm: jsonwebtoken::Algorithm, key: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

/// An unsigned token with `alg: none`.
pub fn unsigned_token(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

impl TestApp {
    /// A valid token for `sub` with these roles (and the app's issuer and audience).
    pub fn token(&self, sub: &str, roles_: &[&str]) -> String {
        self.keys
            .mint(sub, &roles(roles_), Duration::from_secs(3600), None)
    }

    /// A valid token carrying an email claim.
    pub fn token_with_email(&self, sub: &str, email: &str) -> String {
        self.keys
            .mint(sub, &roles(USER), Duration::from_secs(3600), Some(email))
    }

    /// A token that expired well beyond the leeway.
    pub fn expired_token(&self, sub: &str) -> String {
        sign(&json!({ "sub": sub, "roles": ["admin"], "exp": now() - 3600 }))
    }

    /// A token for an admin signed with another key.
    pub fn forged_token(&self, sub: &str) -> String {
        sign_with(
            jsonwebtoken::Algorithm::HS256,
            "not-the-secret",
            &json!({ "sub": sub, "roles": ["admin"], "exp": now() + 3600 }),
        )
    }

    /// A request of any kind; `token` adds a bearer header, `body` a JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> TestResponse {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request).await
    }

    /// Sends a prepared request and reads the whole response.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> TestResponse {
        let response = request.send().await.expect("request reaches the server");
        TestResponse {
            status: response.status(),
            headers: response.headers().clone(),
            text: response.text().await.expect("body reads"),
        }
    }

    /// A request builder for a path of this app.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.address))
    }

    pub async fn get_public(&self, path: &str) -> TestResponse {
        self.call(Method::GET, path, None, None).await
    }

    pub async fn get(&self, path: &str, token: &str) -> TestResponse {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str) -> TestResponse {
        self.call(Method::POST, path, Some(token), None).await
    }

    pub async fn post_json(&self, path: &str, token: &str, body: &Value) -> TestResponse {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch_json(&self, path: &str, token: &str, body: &Value) -> TestResponse {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn put_json(&self, path: &str, token: &str, body: &Value) -> TestResponse {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> TestResponse {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// The caller's profile; provisions the user on first use.
    pub async fn me(&self, token: &str) -> Value {
        self.get("/api/v1/users/me", token)
            .await
            .assert_status(200)
            .json()
    }

    /// Creates a conversation for the token's user and returns it.
    pub async fn create_conversation(&self, token: &str, body: &Value) -> Value {
        self.post_json("/api/v1/users/me/conversations", token, body)
            .await
            .assert_status(201)
            .json()
    }

    /// Stores a message in a conversation and returns it.
    pub async fn add_message(&self, token: &str, conversation_id: &str, body: &Value) -> Value {
        let path = format!("/api/v1/conversations/{conversation_id}/messages");
        self.post_json(&path, token, body)
            .await
            .assert_status(201)
            .json()
    }

    /// Stores a plain message with a role and content.
    pub async fn say(
        &self,
        token: &str,
        conversation_id: &str,
        role: &str,
        content: &str,
    ) -> Value {
        self.add_message(
            token,
            conversation_id,
            &json!({ "role": role, "content": content }),
        )
        .await
    }

    /// Every row of every table, as text: equal snapshots mean nothing was written.
    pub async fn snapshot(&self) -> String {
        let mut dump = String::new();
        for table in ["users", "conversations", "messages"] {
            let rows = sqlx::query(&format!("SELECT * FROM {table} ORDER BY id"))
                .fetch_all(&self.db)
                .await
                .expect("table reads");
            for row in rows {
                let values: Vec<String> = (0..row.len())
                    .map(|i| {
                        row.try_get::<Option<String>, _>(i)
                            .map(|v| format!("{v:?}"))
                            .or_else(|_| row.try_get::<Option<i64>, _>(i).map(|v| format!("{v:?}")))
                            .or_else(|_| row.try_get::<Option<f64>, _>(i).map(|v| format!("{v:?}")))
                            .unwrap_or_else(|e| panic!("column {i} of {table}: {e}"))
                    })
                    .collect();
                dump.push_str(&format!("{table}: {}\n", values.join(", ")));
            }
        }
        dump
    }

    /// Number of rows in a table.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&self.db)
            .await
            .expect("count reads")
    }
}

/// Asserts an error body that names nothing internal.
#[track_caller]
pub fn assert_safe_error(response: &TestResponse) {
    let body = response.text.to_lowercase();
    for leak in [
        "sqlite",
        "sqlx",
        "select ",
        "insert ",
        "update ",
        "delete from",
        "constraint",
        "panick",
        "src/",
        ".rs:",
        "pool",
        "backtrace",
    ] {
        assert!(
            !body.contains(leak),
            "error body leaks `{leak}`: {}",
            response.text
        );
    }
    assert!(
        response.json().get("detail").is_some_and(Value::is_string),
        "error body without detail: {}",
        response.text
    );
}

/// A time field of a JSON body, which must be RFC 3339 in UTC.
#[track_caller]
pub fn time(value: &Value) -> chrono::DateTime<chrono::Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"));
    assert!(text.ends_with('Z'), "time without UTC zone: {text}");
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("not RFC 3339 ({e}): {text}"))
        .to_utc()
}
