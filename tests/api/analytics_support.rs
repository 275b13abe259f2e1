//! A server per test with analytics pointed at a real local receiver that records what
//! arrives, and a small Prometheus text parser.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONNECTION;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use chat_service::analytics::{Analytics, DeliveryOptions};
use chat_service::config::Settings;
use chat_service::startup::build_services;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::helpers::Server;
pub use crate::helpers::PATIENCE;

/// How analytics is set up for a test.
pub struct Setup {
    /// Where events go; `None` turns delivery off.
    pub url: Option<String>,
    /// Queue capacity.
    pub capacity: usize,
    /// Delivery options; `None` keeps the service's defaults (and its settings path).
    pub options: Option<DeliveryOptions>,
}

impl Setup {
    /// Delivery to `url` with the service's defaults.
    pub fn to(url: &str) -> Self {
        Self {
            url: Some(url.to_owned()),
            capacity: 1000,
            options: None,
        }
    }

    /// Delivery off.
    pub fn off() -> Self {
        Self {
            url: None,
            capacity: 1000,
            options: None,
        }
    }

    /// Fast retries, so failure tests finish quickly.
    pub fn quick_retries(mut self) -> Self {
        self.options = Some(DeliveryOptions {
            retry_base_delay: Duration::from_millis(10),
            ..self.options.unwrap_or_default()
        });
        self
    }
}

/// A running service; derefs to its [`Server`] (address, and the state with the analytics
/// handle, JWT keys and ID codec).
pub struct TestApp {
    server: Server,
    /// A client for the service.
    pub client: reqwest::Client,
    _dir: TempDir,
}

impl std::ops::Deref for TestApp {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

impl TestApp {
    /// Starts the service on a free port with a fresh SQLite database.
    pub async fn spawn(setup: Setup) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut env = BTreeMap::from([
            (
                "DATABASE_URL".to_owned(),
                format!("sqlite://{}", dir.path().join("chat.db").display()),
            ),
            (
                "AUTH_SECRET_KEY".to_owned(),
                "analytics-test-secret".to_owned(),
            ),
            ("HASHID_SALT".to_owned(), "analytics-test".to_owned()),
            (
                "ANALYTICS_QUEUE_CAPACITY".to_owned(),
                setup.capacity.to_string(),
            ),
        ]);
        if let (Some(url), None) = (&setup.url, &setup.options) {
            env.insert("ANALYTICS_SERVICE_URL".to_owned(), url.clone());
        }
        let settings = Settings::from_lookup(|name| env.get(name).cloned()).expect("settings");
        let mut state = build_services(settings).await.expect("state");
        if let (Some(url), Some(options)) = (&setup.url, setup.options) {
            state.analytics = Analytics::start(
                url,
                setup.capacity,
                options,
                state.ids.clone(),
                state.jwt.clone(),
            )
            .expect("analytics");
        }
        Self {
            server: Server::start(state).await,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// A token for `sub` with these roles and an email.
    pub fn token(&self, sub: &str, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
        self.state.jwt.mint(
            sub,
            &roles,
            Duration::from_secs(3600),
            Some(&format!("{sub}@example.com")),
        )
    }

    /// A request to `path` with an optional bearer token.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let builder = self
            .client
            .request(method, format!("{}{path}", self.address))
            .timeout(PATIENCE);
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// `GET path` answered as JSON, asserting the status.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let mut request = self.request(method, path, Some(token));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status().as_u16(), status, "{path}");
        response.json().await.expect("JSON body")
    }

    /// The caller's public ID.
    pub async fn my_id(&self, token: &str) -> String {
        let me = self
            .json(Method::GET, "/api/v1/users/me", token, None, 200)
            .await;
        me["id"].as_str().expect("id").to_owned()
    }

    /// Scrapes `/metrics` and parses it.
    pub async fn scrape(&self) -> Vec<Sample> {
        let response = self
            .request(Method::GET, "/metrics", None)
            .send()
            .await
            .expect("scrape");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        parse_prometheus(&response.text().await.expect("body")).expect("Prometheus text")
    }

    /// Signals shutdown and waits until the server has stopped and flushed analytics.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// How the receiver answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 at once.
    Accept,
    /// 500 at once.
    Fail,
    /// Accepts the connection and the request, never answers.
    Stall,
    /// Answers 200 once the gate opens.
    Gated(watch::Receiver<bool>),
    /// 200 with `Connection: close`: one request per connection.
    CloseEach,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method.
    pub method: Method,
    /// Path.
    pub path: String,
    /// Query parameters.
    pub query: BTreeMap<String, String>,
    /// JSON body, `Null` when empty.
    pub body: Value,
    /// `Authorization` header.
    pub authorization: Option<String>,
}

#[derive(Clone)]
struct ReceiverState {
    log: Arc<watch::Sender<Vec<Received>>>,
    behaviour: Behaviour,
}

/// A local analytics service that records every request.
pub struct Receiver {
    /// Its base URL.
    pub url: String,
    log: Arc<watch::Sender<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
}

impl Receiver {
    /// Starts a receiver on a free port.
    pub async fn start(behaviour: Behaviour) -> Self {
        let log = Arc::new(watch::channel(Vec::new()).0);
        let state = ReceiverState {
            log: log.clone(),
            behaviour,
        };
        let app = Router::new().fallback(record).with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let listener = listener.tap_io(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        tokio::spawn(axum::serve(listener, app).into_future());
        Self {
            url,
            log,
            connections,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.borrow().clone()
    }

    /// Waits until what was received satisfies `done`, and returns it.
    pub async fn wait_for(&self, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let mut log = self.log.subscribe();
        let result = tokio::time::timeout(PATIENCE, log.wait_for(|r| done(r))).await;
        match result {
            Ok(Ok(received)) => received.clone(),
            _ => panic!(
                "the receiver never got what was expected: {:#?}",
                self.received()
            ),
        }
    }

    /// Waits for a request to `path` whose body satisfies `matches`, and returns it.
    pub async fn wait_for_event(&self, path: &str, matches: impl Fn(&Value) -> bool) -> Received {
        let found = |r: &Received| r.path == path && matches(&r.body);
        let received = self.wait_for(|all| all.iter().any(found)).await;
        received.into_iter().find(found).expect("found")
    }
}

async fn record(
    State(state): State<ReceiverState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = Received {
        method,
        path: uri.path().to_owned(),
        query: uri
            .query()
            .map(|q| {
                url_pairs(q)
                    .into_iter()
                    .collect::<BTreeMap<String, String>>()
            })
            .unwrap_or_default(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    state.log.send_modify(|log| log.push(received));
    match state.behaviour {
        Behaviour::Accept => StatusCode::OK.into_response(),
        Behaviour::Fail => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Behaviour::Stall => std::future::pending().await,
        Behaviour::Gated(mut gate) => {
            let _ = gate.wait_for(|open| *open).await;
            StatusCode::OK.into_response()
        }
        Behaviour::CloseEach => ([(CONNECTION, "close")], StatusCode::OK).into_response(),
    }
}

/// A bare-TCP analytics service that answers the first request of each connection with a
/// chunked body and then hangs up, whatever else the connection carried. Counts the
/// requests it answered.
pub struct HangUpReceiver {
    /// Its base URL.
    pub url: String,
    answered: Arc<AtomicUsize>,
}

impl HangUpReceiver {
    /// Starts it on a free port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let answered = Arc::new(AtomicUsize::new(0));
        let count = answered.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(answer_one_and_hang_up(socket, count.clone()));
            }
        });
        Self { url, answered }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}

async fn answer_one_and_hang_up(mut socket: tokio::net::TcpStream, answered: Arc<AtomicUsize>) {
    let mut buffer = Vec::new();
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                break;
            }
        }
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    if socket.write_all(answer).await.is_err() {
        return;
    }
    answered.fetch_add(1, Ordering::Relaxed);
    // Half-close, then read until the client closes: closing with unread requests would
    // reset the connection and could destroy the answer before the client reads it.
    let _ = socket.shutdown().await;
    let mut sink = [0u8; 4096];
    while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Decodes `a=b&c=d` with percent escapes.
fn url_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .expect("query")
        .query_pairs()
        .into_owned()
        .collect()
}

/// A URL where nothing listens: connections are refused.
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{address}")
}

/// Polls `condition` until it holds; for state that has no change notification.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, with `_bucket`, `_sum` or `_count` for histograms.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// The value of the series `name` with exactly these labels, or 0 when absent.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == wanted)
        .map_or(0.0, |s| s.value)
}

/// Parses the Prometheus text exposition format (0.0.4): comments, `# HELP`, `# TYPE` and
/// samples with optional labels and timestamp. Any malformed line is an error.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let fail = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            match words.as_slice() {
                ["TYPE", name, kind] => {
                    if !is_metric_name(name) {
                        return Err(fail("bad metric name"));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(kind) {
                        return Err(fail("unknown type"));
                    }
                }
                ["TYPE", ..] => return Err(fail("bad TYPE line")),
                ["HELP", name, ..] if !is_metric_name(name) => return Err(fail("bad metric name")),
                _ => {}
            }
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| fail("no value"))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(fail("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let (parsed, after) = parse_labels(inner).map_err(|e| fail(&e))?;
            labels = parsed;
            rest = after;
        }
        let mut fields = rest.split_whitespace();
        let value = match fields.next().ok_or_else(|| fail("no value"))? {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| fail("bad value"))?,
        };
        if let Some(timestamp) = fields.next() {
            timestamp
                .parse::<i64>()
                .map_err(|_| fail("bad timestamp"))?;
        }
        if fields.next().is_some() {
            return Err(fail("trailing fields"));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the brace.
fn parse_labels(mut text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start();
        if let Some(after) = text.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = text.find('=').ok_or("label without value")?;
        let key = text[..eq].trim();
        if !is_metric_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        text = text[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value is not quoted")?;
        let mut value = String::new();
        let mut chars = text.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        text = &text[end + 1..];
        text = text.trim_start();
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

#[test]
fn the_parser_refuses_malformed_text() {
    assert!(parse_prometheus("a{b=\"c\"} 1\n# TYPE a counter\n").is_ok());
    assert!(parse_prometheus("a{b=\"c\\\"d\"} 2 1700000000\n").is_ok());
    for bad in [
        "a{b=c} 1",
        "a 1 2 3",
        "1a 1",
        "a{b=\"c\" 1",
        "a x",
        "# TYPE a thing",
    ] {
        assert!(parse_prometheus(bad).is_err(), "{bad}");
    }
}
