//! The test harness: [`spawn_app`] / [`spawn_app_with`] start the service on a free port with
//! a fresh database of its own, optionally talking to a fake LLM and a fake analytics
//! service, and return a [`TestApp`] with typed request helpers.
//!
//! Every item of the service that a test names is re-exported here, so a move in the crate is
//! a fix in this one file.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chat_service::analytics::Analytics;
use chat_service::startup::{build_services, serve};
use chat_service::state::AppState;
use reqwest::header::{HeaderMap, ACCEPT};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::fake_analytics::{Behaviour, Receiver};
use crate::fake_llm::FakeLlm;
use crate::scrape::Scrape;
use crate::test_database::TestDatabase;
use crate::ws_client::WsClient;

pub use chat_service::analytics::event::{
    API_USAGE_PATH, CONVERSATION_PATH, MESSAGE_PATH, SYNC_PROFILE_PATH, USERS_PATH,
};
pub use chat_service::analytics::DeliveryOptions;
pub use chat_service::chat::llm::{
    build_provider, collect, ChatRole, ChatTurn, CompletionRequest, LlmError, LlmEvent,
    LlmProvider, OpenAiProvider, ToolCall, ToolSpec, Usage,
};
pub use chat_service::config::{LlmSettings, Secret, Settings};
pub use chat_service::db;
pub use chat_service::ids::{IdCodec, LEGACY_SALT};
pub use chat_service::mcp::{HostLookup, McpSettings, McpTools};
pub use chat_service::metrics as service_metrics;

use db::{ConversationFilter, Message, MessageFilter, Page, Scope, UserFilter};

/// The shared secret the test servers verify tokens with.
pub const AUTH_SECRET_KEY: &str = "test-secret-key-for-the-api-suite";

/// Generous limit of anything a test waits for; only a hang reaches it.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Roles of the platform's tokens.
pub const USER: &[&str] = &["user"];
pub const MANAGER: &[&str] = &["manager"];
pub const ADMIN: &[&str] = &["admin"];

/// Where a test app sends analytics events.
enum AnalyticsTarget {
    /// A fake analytics service started for the app.
    Receiver(Behaviour),
    /// Any URL (a closed port, a receiver of the test's own).
    Url(String),
}

/// A settings change applied after the harness's own.
type SettingsChange = Box<dyn FnOnce(&mut Settings) + Send>;

/// How [`spawn_app_with`] sets up the service; the default is [`spawn_app`]'s: a fresh SQLite
/// database, the known secret, the offline LLM and no analytics.
#[derive(Default)]
pub struct TestOptions {
    database: Option<TestDatabase>,
    fake_llm: bool,
    analytics: Option<AnalyticsTarget>,
    delivery: Option<DeliveryOptions>,
    without_secret: bool,
    settings: Vec<SettingsChange>,
    mcp_lookup: Option<Arc<dyn HostLookup>>,
}

impl TestOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs on this database instead of a fresh SQLite one.
    pub fn database(mut self, database: TestDatabase) -> Self {
        self.database = Some(database);
        self
    }

    /// Points the service at a fake OpenAI-compatible server of its own ([`TestApp::llm`]).
    pub fn fake_llm(mut self) -> Self {
        self.fake_llm = true;
        self
    }

    /// Delivers analytics to a fake analytics service of its own ([`TestApp::receiver`]) that
    /// answers as `behaviour` says.
    pub fn analytics(mut self, behaviour: Behaviour) -> Self {
        self.analytics = Some(AnalyticsTarget::Receiver(behaviour));
        self
    }

    /// Delivers analytics to `url`.
    pub fn analytics_url(mut self, url: &str) -> Self {
        self.analytics = Some(AnalyticsTarget::Url(url.to_owned()));
        self
    }

    /// Changes the analytics delivery options (the defaults otherwise, through the settings).
    pub fn delivery(mut self, change: impl FnOnce(&mut DeliveryOptions)) -> Self {
        let mut options = self.delivery.take().unwrap_or_default();
        change(&mut options);
        self.delivery = Some(options);
        self
    }

    /// Fast analytics retries, so failure tests finish quickly.
    pub fn quick_retries(self) -> Self {
        self.delivery(|d| d.retry_base_delay = Duration::from_millis(10))
    }

    /// Runs on another app's database, as a second instance of the same deployment.
    pub fn shared_database(self, url: &str) -> Self {
        self.database(TestDatabase::Shared {
            url: url.to_owned(),
        })
    }

    /// Uses the Redis-backed hub at `url`, with keys under `prefix`.
    pub fn redis(self, url: &str, prefix: &str) -> Self {
        let (url, prefix) = (url.to_owned(), prefix.to_owned());
        self.settings(move |settings| {
            settings.live.redis_url = Some(Secret::new(url));
            settings.live.redis_prefix = prefix;
        })
    }

    /// No `AUTH_SECRET_KEY`: the service generates a key of its own.
    pub fn without_secret(mut self) -> Self {
        self.without_secret = true;
        self
    }

    /// Resolves MCP server names with `lookup` instead of the system's resolver.
    pub fn mcp_lookup(mut self, lookup: Arc<dyn HostLookup>) -> Self {
        self.mcp_lookup = Some(lookup);
        self
    }

    /// Changes the settings once the harness has set them up, before the service is built.
    pub fn settings(mut self, change: impl FnOnce(&mut Settings) + Send + 'static) -> Self {
        self.settings.push(Box::new(change));
        self
    }
}

/// Starts a server with the default options.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestOptions::new()).await
}

/// Starts a server set up as `options` say.
pub async fn spawn_app_with(options: TestOptions) -> TestApp {
    let database = options.database.unwrap_or_else(TestDatabase::sqlite);
    let llm = match options.fake_llm {
        true => Some(FakeLlm::start().await),
        false => None,
    };
    let (receiver, analytics_url) = match options.analytics {
        Some(AnalyticsTarget::Receiver(behaviour)) => {
            let receiver = Receiver::start(behaviour).await;
            let url = receiver.url.clone();
            (Some(receiver), Some(url))
        }
        Some(AnalyticsTarget::Url(url)) => (None, Some(url)),
        None => (None, None),
    };

    let mut env = HashMap::from([("DATABASE_URL".to_owned(), database.url().to_owned())]);
    if !options.without_secret {
        env.insert("AUTH_SECRET_KEY".to_owned(), AUTH_SECRET_KEY.to_owned());
    }
    // Delivery options of the test's own replace the worker after the build; otherwise the
    // service starts it from its settings.
    if let (Some(url), None) = (&analytics_url, &options.delivery) {
        env.insert("ANALYTICS_SERVICE_URL".to_owned(), url.clone());
    }
    let mut settings = Settings::from_map(&env).expect("test settings");
    // Tests send messages faster than people do; the tests of the limits set them.
    settings.usage.messages_per_minute = 0;
    settings.usage.anon_messages_per_minute = 0;
    if let Some(llm) = &llm {
        settings.llm = llm.llm_settings();
    }
    // A title's extra LLM request and frame would change what other tests count; the tests of
    // titles turn them on.
    settings.titles.auto_title = false;
    for change in options.settings {
        change(&mut settings);
    }

    let mut services = build_services(settings).await.expect("the service builds");
    if let (Some(url), Some(delivery)) = (&analytics_url, options.delivery) {
        services.analytics = Analytics::start(
            url,
            services.settings.analytics_queue_capacity,
            delivery,
            services.ids.clone(),
            services.jwt.clone(),
        )
        .expect("analytics starts");
    }
    if let Some(lookup) = options.mcp_lookup {
        services.mcp = McpTools::with_lookup(McpSettings::from(&services.settings.mcp), lookup);
    }
    let state = AppState::new(services);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("free port");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let task = tokio::spawn(serve(listener, state.clone(), std::future::pending::<()>()));
    TestApp {
        address,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PATIENCE)
            .build()
            .expect("HTTP client"),
        state,
        llm,
        receiver,
        task: Some(task),
        database,
    }
}

/// A running service with a database of its own; stopped when dropped.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// One client for every request of the test.
    pub client: reqwest::Client,
    /// The server's state: its store, hub, analytics handle and keys.
    pub state: AppState,
    llm: Option<FakeLlm>,
    receiver: Option<Receiver>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    database: TestDatabase,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
    }
}

impl TestApp {
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

    /// The fake LLM of an app started with [`TestOptions::fake_llm`].
    pub fn llm(&self) -> &FakeLlm {
        self.llm
            .as_ref()
            .expect("the app was started without the fake LLM")
    }

    /// The fake analytics service of an app started with [`TestOptions::analytics`].
    pub fn receiver(&self) -> &Receiver {
        self.receiver
            .as_ref()
            .expect("the app was started without an analytics receiver")
    }

    /// The app's `DATABASE_URL`, for a second instance on it.
    pub fn database_url(&self) -> String {
        self.database.url().to_owned()
    }

    /// Drops the app's PostgreSQL database under the running server.
    pub async fn drop_database(&self) {
        match &self.database {
            TestDatabase::Postgres(database) => database.drop_now().await,
            TestDatabase::Sqlite { .. } | TestDatabase::Shared { .. } => {
                panic!("only a PostgreSQL database of the app's own can be dropped")
            }
        }
    }

    /// Waits until every reply being generated in the background has finished and been stored.
    pub async fn replies_settled(&self) {
        let tasks = self.state.hub.tasks.clone();
        // A tracker's `wait` ends once it is closed and empty; reopening it lets later replies
        // be tracked as before.
        tasks.close();
        let settled = tokio::time::timeout(PATIENCE, tasks.wait()).await;
        tasks.reopen();
        settled.expect("replies never settled");
    }
}

/// Tokens.
impl TestApp {
    /// A valid token for `sub` with these roles.
    pub fn token(&self, sub: &str, roles: &[&str]) -> String {
        self.state
            .jwt
            .mint(sub, &owned(roles), Duration::from_secs(3600), None)
    }

    /// A valid token for `sub` with these roles and an email claim.
    pub fn token_with_email(&self, sub: &str, roles: &[&str], email: &str) -> String {
        self.state
            .jwt
            .mint(sub, &owned(roles), Duration::from_secs(3600), Some(email))
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
}

/// HTTP requests.
impl TestApp {
    /// A request builder for a path of this app.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.address))
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

    /// A request of any kind; `token` adds a bearer header, `body` a JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> TestResponse {
        let mut request = self.request(method, path);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request).await
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

    /// The caller's public ID; provisions the user on first use.
    pub async fn my_id(&self, token: &str) -> String {
        self.me(token).await["id"]
            .as_str()
            .expect("a public ID")
            .to_owned()
    }

    /// Creates a conversation for the token's user and returns it.
    pub async fn create_conversation(&self, token: &str, body: &Value) -> Value {
        self.post_json("/api/v1/users/me/conversations", token, body)
            .await
            .assert_status(201)
            .json()
    }

    /// Creates a conversation titled `chat` for the token's user and returns its public ID.
    pub async fn new_conversation(&self, token: &str) -> String {
        self.create_conversation(token, &json!({"title": "chat"}))
            .await["id"]
            .as_str()
            .expect("a public ID")
            .to_owned()
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

    /// The stored messages of a conversation, oldest first.
    pub async fn messages(&self, token: &str, conversation_id: &str) -> Vec<Value> {
        let path = format!("/api/v1/conversations/{conversation_id}/messages");
        let list = self.get(&path, token).await.assert_status(200).json();
        serde_json::from_value(list).expect("a JSON array")
    }

    /// Sends a chat message over REST (`POST /conversations/{id}/chat`), answered as JSON.
    pub async fn chat(&self, token: &str, conversation_id: &str, content: &str) -> TestResponse {
        self.post_json(
            &chat_path(conversation_id),
            token,
            &json!({ "content": content }),
        )
        .await
    }

    /// Sends a chat message over REST, answered as server-sent events.
    pub async fn chat_stream(
        &self,
        token: &str,
        conversation_id: &str,
        content: &str,
    ) -> TestResponse {
        let request = self
            .request(Method::POST, &chat_path(conversation_id))
            .bearer_auth(token)
            .header(ACCEPT, "text/event-stream")
            .json(&json!({ "content": content }));
        self.send(request).await
    }

    /// Scrapes `/metrics`, which must be Prometheus text.
    pub async fn scrape(&self) -> Scrape {
        let response = self.get_public("/metrics").await;
        response.assert_status(200);
        let content_type = response.header("content-type").unwrap_or_default();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        Scrape::parse(&response.text).expect("Prometheus text")
    }
}

fn chat_path(conversation_id: &str) -> String {
    format!("/api/v1/conversations/{conversation_id}/chat")
}

/// WebSockets.
impl TestApp {
    /// `ws://` URL of a path.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws{}{path}", self.address.trim_start_matches("http"))
    }

    /// Opens a WebSocket; panics when refused.
    pub async fn connect(&self, path: &str) -> WsClient {
        WsClient::open(&self.address, path).await
    }

    /// The HTTP status of a refused upgrade.
    pub async fn refused_status(&self, path: &str) -> u16 {
        match tokio_tungstenite::connect_async(self.ws_url(path)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                response.status().as_u16()
            }
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("upgrade to {path} was accepted"),
        }
    }
}

/// What is stored, read through the server's own store.
impl TestApp {
    /// Every user, conversation and message, as text: equal snapshots mean nothing was
    /// written.
    pub async fn snapshot(&self) -> String {
        let store = &self.state.store;
        let (users, _) = store
            .list_users(&UserFilter {
                search: None,
                is_active: None,
                page: EVERYTHING,
            })
            .await
            .expect("users read");
        let conversations = self.conversations().await;
        let mut dump = format!("{users:#?}\n{conversations:#?}\n");
        for conversation in &conversations {
            dump.push_str(&format!(
                "{:#?}\n",
                self.stored_messages(conversation.id).await
            ));
        }
        dump
    }

    /// Number of stored `users`, `conversations` or `messages`.
    pub async fn count(&self, table: &str) -> usize {
        match table {
            "users" => {
                let filter = UserFilter {
                    search: None,
                    is_active: None,
                    page: EVERYTHING,
                };
                let (users, _) = self
                    .state
                    .store
                    .list_users(&filter)
                    .await
                    .expect("users read");
                users.len()
            }
            "conversations" => self.conversations().await.len(),
            "messages" => {
                let mut count = 0;
                for conversation in self.conversations().await {
                    count += self.stored_messages(conversation.id).await.len();
                }
                count
            }
            other => panic!("no table {other}"),
        }
    }

    /// Every conversation, anonymous ones included, by key.
    pub async fn conversations(&self) -> Vec<db::Conversation> {
        let filter = ConversationFilter {
            status: None,
            search: None,
            page: EVERYTHING,
        };
        let (mut conversations, _) = self
            .state
            .store
            .list_conversations(Scope::Anyone, &filter)
            .await
            .expect("conversations read");
        conversations.sort_by_key(|c| c.id);
        conversations
    }

    /// The messages of a conversation, by key, read through the server's store (which
    /// outlives the server when it stops).
    pub async fn stored_messages(&self, conversation: i64) -> Vec<Message> {
        let filter = MessageFilter {
            role: None,
            page: EVERYTHING,
        };
        let (messages, _) = self
            .state
            .store
            .list_messages(Scope::Anyone, conversation, &filter)
            .await
            .expect("messages read")
            .expect("a listed conversation");
        messages
    }
}

/// A page larger than anything a test stores.
const EVERYTHING: Page = Page {
    skip: 0,
    limit: 1_000_000,
};

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

fn owned(roles: &[&str]) -> Vec<String> {
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

/// Waits until `condition` holds, checking it again at short, growing intervals; for state
/// that offers no change notification. Panics naming `what` after `deadline`.
pub async fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + deadline;
    let mut pause = Duration::from_millis(1);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "never happened: {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Waits until the asynchronous `condition` holds, checking it again at short, growing
/// intervals; for state only a request can tell. Panics naming `what` after `deadline`.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    let mut pause = Duration::from_millis(1);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < give_up,
            "never happened: {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A URL where nothing listens: connections are refused.
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{address}")
}

/// Asserts an error body that names nothing internal.
#[track_caller]
pub fn assert_safe_error(response: &TestResponse) {
    let body = response.text.to_lowercase();
    for leak in [
        "sqlite",
        "sqlx",
        "postgres",
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
